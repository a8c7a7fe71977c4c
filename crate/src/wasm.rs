//! JavaScript bindings (wasm-bindgen): a thin model type over the same code the CLI runs.
//! Outputs are safetensors bytes with the CLI's tensor names, so the page, the tests and the
//! CLI speak one format.
use crate::embed::{embed_image, embed_text, to_safetensors};
use crate::model::Clip;
use crate::tokenizer::ClipTokenizer;
use candle_core::{Device, Tensor};
use wasm_bindgen::prelude::*;

fn js_err(e: anyhow::Error) -> JsError {
    JsError::new(&format!("{e:#}"))
}

/// `initThreadPool(n)`: starts `n` Web Workers sharing this module's memory (threaded build only;
/// needs a cross-origin isolated page).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Threads the model's work is spread over (1 in the single-threaded build).
#[wasm_bindgen]
pub fn threads() -> usize {
    if cfg!(feature = "threads") {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The crate version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// A CLIP model loaded from a checkpoint's configuration and safetensors bytes.
#[wasm_bindgen]
pub struct ClipModel {
    clip: Clip,
    tokenizer: Option<ClipTokenizer>,
}

#[wasm_bindgen]
impl ClipModel {
    /// `configFileName` is `config.json` (Hugging Face) or `open_clip_config.json` (open_clip).
    pub fn load(config_file_name: &str, config_json: &str, weights: &[u8]) -> Result<ClipModel, JsError> {
        console_error_panic_hook::set_once();
        let clip = Clip::from_bytes(config_file_name, config_json, weights, "weights").map_err(js_err)?;
        Ok(ClipModel { clip, tokenizer: None })
    }

    /// The checkpoint's input side in pixels.
    #[wasm_bindgen(js_name = imageSize)]
    pub fn image_size(&self) -> usize {
        self.clip.cfg.vision.image_size
    }

    /// Whether the checkpoint has a text tower.
    #[wasm_bindgen(js_name = hasText)]
    pub fn has_text(&self) -> bool {
        self.clip.text.is_some()
    }

    /// Encodes normalised pixels `[1, 3, height, width]` (CHW). Returns safetensors bytes with
    /// `image_embeds`, `patch_tokens`, `last_hidden_state` and, when `surgery_layers > 0`,
    /// `surgery_tokens`.
    #[wasm_bindgen(js_name = embedImage)]
    pub fn embed_image(
        &self,
        pixels: &[f32],
        height: usize,
        width: usize,
        surgery_layers: usize,
    ) -> Result<Vec<u8>, JsError> {
        if pixels.len() != 3 * height * width {
            return Err(JsError::new(&format!(
                "pixels hold {} values, but 3×{height}×{width} = {} were expected",
                pixels.len(),
                3 * height * width
            )));
        }
        let t = Tensor::from_slice(pixels, (1, 3, height, width), &Device::Cpu).map_err(|e| js_err(e.into()))?;
        let named = embed_image(&self.clip, &t, surgery_layers, &[]).map_err(js_err)?;
        to_safetensors(&named).map_err(js_err)
    }

    /// Tokenizes and encodes prompts. Returns safetensors bytes with `text_embeds` [T,P] and
    /// `input_ids` [T,77].
    #[wasm_bindgen(js_name = embedText)]
    pub fn embed_text(&mut self, texts: Vec<String>) -> Result<Vec<u8>, JsError> {
        if self.tokenizer.is_none() {
            self.tokenizer = Some(ClipTokenizer::new().map_err(js_err)?);
        }
        let tok = self.tokenizer.as_ref().expect("set above");
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let named = embed_text(&self.clip, tok, &refs).map_err(js_err)?;
        to_safetensors(&named).map_err(js_err)
    }
}

/// Detection in the browser: the same functions the CLI calls.
#[wasm_bindgen]
impl ClipModel {
    /// The WinCLIP class pair for a bundled category (`object` for custom objects) and an
    /// optional custom object name, through the text tower: `Float32Array [2·P]` (normal row,
    /// then anomalous row; unit vectors). `descriptions` adds the category's defect phrases.
    #[wasm_bindgen(js_name = textPair)]
    pub fn text_pair(
        &mut self,
        category: &str,
        object: Option<String>,
        descriptions: bool,
    ) -> Result<Vec<f32>, JsError> {
        use crate::detect::prompts;
        let cat = prompts::category(category)
            .map_err(js_err)?
            .ok_or_else(|| JsError::new(&format!("unknown category `{category}`")))?;
        let cat = match object {
            Some(o) => prompts::Category::new(&cat.name, &o, &cat.defects).map_err(js_err)?,
            None => cat,
        };
        let kind = if descriptions {
            prompts::EnsembleKind::Descriptions
        } else {
            prompts::EnsembleKind::WinClip
        };
        let (normal, anomalous) = prompts::ensemble(&cat, kind);
        if self.tokenizer.is_none() {
            self.tokenizer = Some(ClipTokenizer::new().map_err(js_err)?);
        }
        let tok = self.tokenizer.as_ref().expect("set above");
        let pair = crate::detect::TextPair::from_prompts(&self.clip, tok, &normal, &anomalous).map_err(js_err)?;
        Ok([pair.normal, pair.anomalous].concat())
    }

    /// Scores one normalised image `[1, 3, height, width]` with `mode` = `fast` or `winclip`
    /// against a class pair (`[2·P]`, as [`ClipModel::text_pair`] returns). Returns
    /// `Float32Array [score, map...]` with the map `height × width` row-major. `surgery_layers`
    /// (fast mode) 0 = half the tower.
    pub fn detect(
        &self,
        mode: &str,
        pixels: &[f32],
        height: usize,
        width: usize,
        text: &[f32],
        surgery_layers: usize,
    ) -> Result<Vec<f32>, JsError> {
        use crate::detect::{fast, winclip, TextPair};
        let p = self.clip.cfg.embed_dim;
        if text.len() != 2 * p {
            return Err(JsError::new(&format!(
                "the class pair must hold 2×{p} values, got {}",
                text.len()
            )));
        }
        if pixels.len() != 3 * height * width {
            return Err(JsError::new(&format!(
                "pixels hold {} values, expected 3×{height}×{width}",
                pixels.len()
            )));
        }
        let pair = TextPair::new(text[..p].to_vec(), text[p..].to_vec()).map_err(js_err)?;
        let t = Tensor::from_slice(pixels, (1, 3, height, width), &Device::Cpu).map_err(|e| js_err(e.into()))?;
        let mode: crate::detect::Mode = mode.parse().map_err(js_err)?;
        if !matches!(mode, crate::detect::Mode::Fast | crate::detect::Mode::Winclip) {
            return Err(JsError::new(&format!("unknown mode `{mode}` here (fast, winclip)")));
        }
        let k = if surgery_layers == 0 {
            fast::default_surgery_layers(&self.clip)
        } else {
            surgery_layers
        };
        let d = crate::detect::score_image(&self.clip, &t, mode, &pair, None, k, &winclip::WinClipConfig::default())
            .map_err(js_err)?;
        Ok(std::iter::once(d.score).chain(d.map.iter().copied()).collect())
    }
}
