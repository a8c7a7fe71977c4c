//! `ClipLoader`: the page's checkpoint loader. JS pushes the file's bytes in chunks (a fetch
//! body, slices of a dropped file); only the tensor being received is held, never the file
//! ([`crate::model::stream`]). Once the image tower is in (`visionReady`), `takeModel` gives a
//! `ClipModel` that scores images while the rest streams in; `attachText` later gives it the text
//! tower. The SHA-256 of every byte pushed is computed on the way (`sha256`).
use super::model::ClipModel;
use super::{js_err, MAX_CHECKPOINT_BYTES};
use crate::model::stream::{StreamLoader, Towers};
use crate::model::ClipConfig;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

/// An incremental checkpoint loader.
#[wasm_bindgen]
pub struct ClipLoader {
    inner: StreamLoader,
    hasher: Sha256,
}

#[wasm_bindgen]
impl ClipLoader {
    /// A loader for one checkpoint file, before its first byte.
    /// `configFileName` is `config.json` (Hugging Face) or `open_clip_config.json` (open_clip);
    /// `totalBytes` the file size when known (checked against the limit and the header before any
    /// tensor); `vision` / `text` select the towers to build (the other one's bytes are skipped).
    /// `origin` names the file in errors.
    #[wasm_bindgen(constructor)]
    pub fn new(
        config_file_name: &str,
        config_json: &str,
        origin: &str,
        total_bytes: Option<f64>,
        vision: bool,
        text: bool,
    ) -> Result<ClipLoader, JsError> {
        console_error_panic_hook::set_once();
        if let Some(n) = total_bytes {
            if n > MAX_CHECKPOINT_BYTES as f64 {
                return Err(JsError::new(&format!(
                    "the checkpoint is {:.0} MiB, more than the {} MiB the browser can load (wasm memory is 4 GiB); \
                     use a smaller model or convert it to f16 (anoscope convert --dtype f16)",
                    n / (1 << 20) as f64,
                    MAX_CHECKPOINT_BYTES >> 20
                )));
            }
        }
        let cfg = ClipConfig::from_json(config_file_name, config_json).map_err(js_err)?;
        let declared = total_bytes.filter(|n| n.is_finite() && *n >= 0.0).map(|n| n as u64);
        let inner = StreamLoader::new(cfg, origin, declared, Towers { vision, text }).map_err(js_err)?;
        Ok(ClipLoader {
            inner,
            hasher: Sha256::new(),
        })
    }

    /// Feeds the next bytes. Errors are final (later calls repeat them).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsError> {
        self.hasher.update(chunk);
        self.inner.push(chunk).map_err(js_err)
    }

    /// Ends the stream: the file must be exactly as long as its header says.
    pub fn finish(&mut self) -> Result<(), JsError> {
        self.inner.finish().map_err(js_err)
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> f64 {
        self.inner.received() as f64
    }

    /// Whether the image tower is built (`takeModel` may be called).
    #[wasm_bindgen(js_name = visionReady)]
    pub fn vision_ready(&self) -> bool {
        self.inner.vision_ready()
    }

    /// Whether the text tower is built (or the file has none).
    #[wasm_bindgen(js_name = textReady)]
    pub fn text_ready(&self) -> bool {
        self.inner.text_ready()
    }

    /// Whether the file holds a text tower; `undefined` until its header is in.
    #[wasm_bindgen(js_name = fileHasText)]
    pub fn file_has_text(&self) -> Option<bool> {
        self.inner.has_text()
    }

    /// The image tower as a model without a text tower (once `visionReady`).
    #[wasm_bindgen(js_name = takeModel)]
    pub fn take_model(&mut self) -> Result<ClipModel, JsError> {
        let clip = self.inner.take_vision().map_err(js_err)?;
        Ok(ClipModel::from_clip(clip))
    }

    /// Moves the text tower into `model` (once `textReady`; nothing when the file has none).
    #[wasm_bindgen(js_name = attachText)]
    pub fn attach_text(&mut self, model: &mut ClipModel) -> Result<(), JsError> {
        let text = self.inner.take_text().map_err(js_err)?;
        model.set_text(text);
        Ok(())
    }

    /// Lower-case hex SHA-256 of the bytes pushed so far.
    pub fn sha256(&self) -> String {
        self.hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
