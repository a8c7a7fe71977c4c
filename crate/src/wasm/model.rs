//! `ClipModel`: a checkpoint, its prompt bundle and text pairs, plus the raw embedding calls the
//! parity tests use. Outputs of `embedImage` / `embedText` are safetensors bytes with the CLI's
//! tensor names, so the page, the tests and the CLI speak one format.
use super::{js_err, MAX_CHECKPOINT_BYTES};
use crate::detect::prompts::{self, EnsembleKind, PromptBundle};
use crate::detect::TextPair;
use crate::embed::{embed_image, embed_text, to_safetensors};
use crate::model::Clip;
use crate::tokenizer::ClipTokenizer;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use std::sync::atomic::{AtomicU32, Ordering};
use wasm_bindgen::prelude::*;

static NEXT_MODEL_ID: AtomicU32 = AtomicU32::new(1);

/// A CLIP model loaded from a checkpoint's configuration and safetensors bytes.
#[wasm_bindgen]
pub struct ClipModel {
    pub(crate) clip: Clip,
    tokenizer: Option<ClipTokenizer>,
    bundle: Option<PromptBundle>,
    /// The learned mode's class pair and size (`loadLearned`).
    pub(crate) learned: Option<LearnedPair>,
    /// Tells this model's few-shot references from another model's.
    pub(crate) id: u32,
}

/// A loaded learned file: AnomalyCLIP's class pair or AdaptCLIP's adapters and class pairs for
/// this model, and the side images are resized to.
pub(crate) struct LearnedPair {
    pub mode: crate::detect::Mode,
    /// AnomalyCLIP's class pair (for AdaptCLIP a placeholder: it scores with `adapt`).
    pub pair: TextPair,
    pub adapt: Option<std::rc::Rc<crate::detect::adaptclip::AdaptClip>>,
    pub size: usize,
}

/// The tokenizer in `slot`, created on first use (a free function, so that it borrows only the
/// tokenizer field while the model is borrowed too).
fn tokenizer(slot: &mut Option<ClipTokenizer>) -> Result<&ClipTokenizer> {
    if slot.is_none() {
        *slot = Some(ClipTokenizer::new()?);
    }
    Ok(slot.as_ref().expect("set above"))
}

impl ClipModel {
    /// A model from an already built [`Clip`] (the streaming loader's image tower).
    pub(crate) fn from_clip(clip: Clip) -> ClipModel {
        ClipModel {
            clip,
            tokenizer: None,
            bundle: None,
            learned: None,
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Gives the model its text tower (loaded after the image tower).
    pub(crate) fn set_text(&mut self, text: Option<crate::model::TextTower>) {
        if text.is_some() {
            self.clip.text = text;
        }
    }

    /// See [`ClipModel::load_learned`].
    fn load_learned_impl(&mut self, bytes: &[u8], size: Option<usize>) -> Result<String> {
        use crate::detect::{adaptclip, anomalyclip, learned, Mode};
        if bytes.len() as u64 > anomalyclip::MAX_LEARNED_BYTES {
            bail!(
                "the learned file is {} bytes, over the limit of {} bytes",
                bytes.len(),
                anomalyclip::MAX_LEARNED_BYTES
            );
        }
        let size = size.unwrap_or(learned::RUN_SIZE as usize);
        if size == 0 || size > 4096 {
            bail!("the learned mode's size must be in 1..=4096 pixels, got {size}");
        }
        // AdaptCLIP's conversion carries its class pairs; AnomalyCLIP's anything else.
        let adapt_file = safetensors::SafeTensors::deserialize(bytes)
            .is_ok_and(|st| st.names().iter().any(|n| n.starts_with("adaptclip.")));
        let (mode, pair, adapt) = if crate::model::pth::is_torch_zip(bytes) {
            // The official checkpoint: its text features (AnomalyCLIP) or class pairs (AdaptCLIP)
            // are computed here with the model's text tower, as `anoscope convert` does.
            let origin = "the learned file (.pth)";
            let dicts = crate::model::pth::read_state_dicts_bytes(bytes, origin)?;
            let need_text = || {
                if self.clip.text.is_none() {
                    bail!(
                        "{origin}: reading the official checkpoint needs this model's text tower, and it is not \
                         loaded (vision-only weights); load its conversion instead: anoscope convert --learned \
                         FILE.pth --model DIR --out FILE.safetensors"
                    );
                }
                Ok(())
            };
            if dicts.keys().any(|k| k.starts_with(anomalyclip::CHECKPOINT_KEY)) {
                need_text()?;
                let t = anomalyclip::prompt_learner_tensors(dicts, origin)?;
                let prompts = anomalyclip::LearnedPrompts::from_tensors(&t, origin)?;
                (Mode::Anomalyclip, prompts.text_pair(&self.clip)?, None)
            } else {
                adaptclip::Learned::check_official(&dicts, origin)?;
                need_text()?;
                let ready = adaptclip::AdaptClip::from_tensors(&self.clip, &dicts)
                    .with_context(|| format!("{origin}: not AdaptCLIP parameters for this model"))?;
                let placeholder = TextPair::new(vec![1.0], vec![0.0])?;
                (Mode::Adaptclip, placeholder, Some(std::rc::Rc::new(ready)))
            }
        } else if adapt_file {
            let ready = adaptclip::AdaptClip::from_safetensors(&self.clip, bytes, "the learned file")?;
            let placeholder = TextPair::new(vec![1.0], vec![0.0])?;
            (Mode::Adaptclip, placeholder, Some(std::rc::Rc::new(ready)))
        } else {
            let prompts = anomalyclip::LearnedPrompts::from_safetensors(bytes, "the learned file")?;
            (Mode::Anomalyclip, prompts.text_pair(&self.clip)?, None)
        };
        // The GPU tower keeps the position-embedding settings it was uploaded with: a file loaded
        // after `useGpu` releases it (only now, the file being valid), and the caller uploads again.
        #[cfg(feature = "gpu")]
        super::gpu::forget(self.id);
        learned::use_official_pos_interp(&mut self.clip);
        self.learned = Some(LearnedPair {
            mode,
            pair,
            adapt,
            size,
        });
        Ok(mode.to_string())
    }

    /// See [`ClipModel::load_prompts`].
    fn load_prompts_impl(&mut self, bytes: &[u8], weights_sha256: Option<&str>) -> Result<Vec<String>> {
        let bundle = PromptBundle::from_bytes(bytes, None)?;
        if let Some(sha) = weights_sha256 {
            let sha = sha.trim().to_ascii_lowercase();
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("the checkpoint's sha256 must be 64 hex digits, got {sha:?}");
            }
            if sha != bundle.model_sha256 {
                bail!(
                    "this prompt file was built for another model (sha256 {}), not this checkpoint (sha256 {sha})",
                    bundle.model_sha256
                );
            }
        }
        let p = self.clip.cfg.embed_dim;
        if bundle.embed_dim != p {
            bail!(
                "this prompt file was built for another model: its text embeddings have {} dimensions, this \
                 checkpoint's have {p}",
                bundle.embed_dim
            );
        }
        self.bundle = Some(bundle);
        Ok(self.categories_impl())
    }

    fn categories_impl(&self) -> Vec<String> {
        match &self.bundle {
            Some(b) => {
                let mut names: Vec<String> = Vec::new();
                for e in &b.entries {
                    if !names.contains(&e.category) {
                        names.push(e.category.clone());
                    }
                }
                names
            }
            None => prompts::categories()
                .map(|cats| cats.into_iter().map(|c| c.name).collect())
                .unwrap_or_default(),
        }
    }

    /// See [`ClipModel::text_pair`].
    fn text_pair_impl(
        &mut self,
        category: &str,
        object: Option<String>,
        descriptions: bool,
        defects: Option<Vec<String>>,
        progress: Option<&js_sys::Function>,
    ) -> Result<TextPair> {
        let object = object.filter(|o| !o.trim().is_empty());
        let defects = defects.filter(|d| !d.is_empty());
        let kind = if descriptions || defects.is_some() {
            EnsembleKind::Descriptions
        } else {
            EnsembleKind::WinClip
        };
        if object.is_none() && defects.is_none() {
            if let Some(e) = self.bundle.as_ref().and_then(|b| b.get(category, kind)) {
                return Ok(e.text.clone());
            }
        }
        let cat = prompts::category(category)?.ok_or_else(|| {
            let known = self.categories_impl().join(", ");
            anyhow!("unknown category `{category}` (known: {known})")
        })?;
        let cat = prompts::Category::new(
            &cat.name,
            object.as_deref().unwrap_or(&cat.object),
            defects.as_deref().unwrap_or(&cat.defects),
        )?;
        if self.clip.text.is_none() {
            bail!("this checkpoint has no text tower; custom prompts need one");
        }
        let (normal, anomalous) = prompts::ensemble(&cat, kind);
        prompts::check_ensemble(&normal, &anomalous)?;
        let tok = tokenizer(&mut self.tokenizer)?;
        let mut report = |done: usize, total: usize| -> Result<()> {
            if let Some(f) = progress {
                f.call2(
                    &JsValue::NULL,
                    &JsValue::from(done as u32),
                    &JsValue::from(total as u32),
                )
                .map_err(|e| anyhow!("prompt encoding stopped: {}", super::js_message(&e)))?;
            }
            Ok(())
        };
        TextPair::from_prompts_with_progress(&self.clip, tok, &normal, &anomalous, &mut report)
    }
}

#[wasm_bindgen]
impl ClipModel {
    /// Loads a model from a whole checkpoint in memory (`ClipLoader` streams one instead).
    /// `configFileName` is `config.json` (Hugging Face) or `open_clip_config.json` (open_clip);
    /// `weights` the safetensors bytes (at most `limits().maxCheckpointBytes`).
    pub fn load(config_file_name: &str, config_json: &str, weights: &[u8]) -> Result<ClipModel, JsError> {
        console_error_panic_hook::set_once();
        if weights.len() > MAX_CHECKPOINT_BYTES {
            return Err(JsError::new(&format!(
                "the checkpoint is {:.0} MiB, more than the {} MiB the browser can load (wasm memory is 4 GiB); \
                 use a smaller model or convert it to f16 (anoscope convert --dtype f16)",
                weights.len() as f64 / (1 << 20) as f64,
                MAX_CHECKPOINT_BYTES >> 20
            )));
        }
        let clip = Clip::from_bytes(config_file_name, config_json, weights, "weights").map_err(js_err)?;
        Ok(ClipModel::from_clip(clip))
    }

    /// The checkpoint's input side in pixels.
    #[wasm_bindgen(js_name = imageSize)]
    pub fn image_size(&self) -> usize {
        self.clip.cfg.vision.image_size
    }

    /// Whether the image tower's block linear layers run in int8 (a q8 checkpoint, or after
    /// `quantizeInt8`), on our packed int8 GEMM (`model::wasm_qgemm`: faster than f32 here,
    /// docs/speed.md).
    #[wasm_bindgen(js_name = isInt8)]
    pub fn is_int8(&self) -> bool {
        self.clip.vision.w.is_q8()
    }

    /// The dot product the image tower's int8 layers run (`simd128` or `relaxed`, see
    /// `int8Dot`), `undefined` in f32.
    #[wasm_bindgen(js_name = int8Kernel)]
    pub fn int8_kernel(&self) -> Option<String> {
        let fc1 = &self.clip.vision.w.blocks.first()?.fc1;
        fc1.int8_kernel().map(String::from)
    }

    /// Runs the image tower's block linear layers in int8 from now on (weights quantized here,
    /// as a q8 checkpoint stores them, and their f32 copy freed; a no-op when they already
    /// are). A later `useGpu` uploads the int8 weights scaled back to f32.
    #[wasm_bindgen(js_name = quantizeInt8)]
    pub fn quantize_int8(&mut self) -> Result<(), JsError> {
        self.clip.quantize_vision().map_err(js_err)
    }

    /// Whether the checkpoint has a text tower.
    #[wasm_bindgen(js_name = hasText)]
    pub fn has_text(&self) -> bool {
        self.clip.text.is_some()
    }

    /// The dimension of the joint image-text space (a class pair holds twice as many values).
    #[wasm_bindgen(js_name = embedDim)]
    pub fn embed_dim(&self) -> usize {
        self.clip.cfg.embed_dim
    }

    /// Loads a learned file for `detect("anomalyclip" | "adaptclip", …)` (zero-shot), as
    /// `anoscope convert --learned FILE --model DIR` writes it: AnomalyCLIP's prompts with the
    /// two text features, or AdaptCLIP's adapters with its class pairs (safetensors; then a
    /// vision-only model needs no text tower), or the official `.pth` itself (its text features
    /// or class pairs are then computed with the model's text tower, which must be attached).
    /// From then on the model resamples position embeddings bilinearly as the official code
    /// does (the other modes, which run at the checkpoint's own size, need no resampling). `size` is the side images are
    /// resized to in that mode (default 518, the official size). Returns the mode's name. Call it
    /// before `useGpu`: a file loaded after it releases the GPU's copy of the image tower (it
    /// resamples with the old settings), so call `useGpu` again. On error the previously loaded
    /// file (and the GPU tower) stays.
    #[wasm_bindgen(js_name = loadLearned)]
    pub fn load_learned(&mut self, bytes: &[u8], size: Option<usize>) -> Result<String, JsError> {
        self.load_learned_impl(bytes, size).map_err(js_err)
    }

    /// The side images are resized to in the learned mode (0 when no learned file is loaded).
    #[wasm_bindgen(js_name = learnedSize)]
    pub fn learned_size(&self) -> usize {
        self.learned.as_ref().map_or(0, |l| l.size)
    }

    /// Loads a prompt bundle made by `anoscope prompts build` for this checkpoint. With
    /// `weightsSha256` (hex SHA-256 of the checkpoint's weights file) the bundle must have been
    /// built for exactly these weights. Returns the bundle's categories. On error the previously
    /// loaded bundle stays.
    #[wasm_bindgen(js_name = loadPrompts)]
    pub fn load_prompts(&mut self, bundle: &[u8], weights_sha256: Option<String>) -> Result<Vec<String>, JsError> {
        self.load_prompts_impl(bundle, weights_sha256.as_deref())
            .map_err(js_err)
    }

    /// Whether the loaded prompt file answers `textPair` with these arguments, so that no text
    /// tower is needed (the page then loads the text tower only for custom prompts).
    #[wasm_bindgen(js_name = promptFileCovers)]
    pub fn prompt_file_covers(
        &self,
        category: &str,
        object: Option<String>,
        descriptions: bool,
        defects: Option<Vec<String>>,
    ) -> bool {
        let custom = object.is_some_and(|o| !o.trim().is_empty()) || defects.is_some_and(|d| !d.is_empty());
        let kind = if descriptions {
            EnsembleKind::Descriptions
        } else {
            EnsembleKind::WinClip
        };
        !custom && self.bundle.as_ref().and_then(|b| b.get(category, kind)).is_some()
    }

    /// The loaded bundle's categories, else the built-in list (MVTec AD, VisA and `object`).
    pub fn categories(&self) -> Vec<String> {
        self.categories_impl()
    }

    /// The WinCLIP class pair of a category: `Float32Array [2·P]` (normal row, then anomalous
    /// row; unit vectors). `object` replaces the category's object name in the prompts;
    /// `descriptions` adds the category's defect phrases; `defects` (non-empty) replaces them and
    /// implies `descriptions`. Without `object` and `defects` the loaded prompt bundle answers
    /// when it has the entry; otherwise the text tower encodes the prompts, calling
    /// `progress(done, total)` (prompts encoded) as it goes; if `progress` throws, encoding stops
    /// with that message.
    #[wasm_bindgen(js_name = textPair)]
    pub fn text_pair(
        &mut self,
        category: &str,
        object: Option<String>,
        descriptions: bool,
        defects: Option<Vec<String>>,
        progress: Option<js_sys::Function>,
    ) -> Result<Vec<f32>, JsError> {
        let pair = self
            .text_pair_impl(category, object, descriptions, defects, progress.as_ref())
            .map_err(js_err)?;
        Ok([pair.normal, pair.anomalous].concat())
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

    /// Tokenizes and encodes prompts. Returns safetensors bytes with `text_embeds` `[T, P]` and
    /// `input_ids` `[T, 77]`.
    #[wasm_bindgen(js_name = embedText)]
    pub fn embed_text(&mut self, texts: Vec<String>) -> Result<Vec<u8>, JsError> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = tokenizer(&mut self.tokenizer).map_err(js_err)?;
        let named = embed_text(&self.clip, tok, &refs).map_err(js_err)?;
        to_safetensors(&named).map_err(js_err)
    }
}

/// Frees the model's GPU tower with it.
impl Drop for ClipModel {
    fn drop(&mut self) {
        #[cfg(feature = "gpu")]
        super::gpu::forget(self.id);
    }
}
