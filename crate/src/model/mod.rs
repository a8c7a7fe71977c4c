//! CLIP encoders (image and text towers) on candle, loaded from Hugging Face transformers or
//! open_clip checkpoints: the [`Clip`] model and [`CheckpointFiles`] here, the towers, weights,
//! configuration and loaders in the submodules. The checkpoint limits and format details that the
//! whole-file reader ([`weights`]) and the streaming reader ([`stream`]) share are in
//! [`checkpoint`]. Detection on top of the encoders is in [`crate::detect`], not here.
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod interrupt;
pub mod ops;
pub mod pth;
pub mod random;
pub mod stream;
pub mod text;
pub mod vision;
#[cfg(target_arch = "wasm32")]
pub mod wasm_gemm;
pub mod wasm_qgemm;
pub mod weights;
pub mod x86_qgemm;

pub use checkpoint::TensorSource;
pub use config::{Activation, ClipConfig, Layout, PosInterp, TextConfig, VisionConfig};
pub use text::TextTower;
pub use vision::{AsyncVisionAccel, EncodeOptions, VisionAccel, VisionOutput, VisionTower};
pub use weights::{MapSource, SafetensorsSource};

use crate::tokenizer::{ClipTokenizer, Padding};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// A loaded CLIP model: the image tower, and the text tower when the checkpoint has one.
#[derive(Clone, Debug)]
pub struct Clip {
    /// The configuration both towers were built from.
    pub cfg: ClipConfig,
    /// The image tower.
    pub vision: VisionTower,
    /// The text tower; `None` for a vision-only checkpoint or a model still streaming in.
    pub text: Option<TextTower>,
    /// `exp(logit_scale)` of the checkpoint, when stored.
    pub logit_scale: Option<f32>,
}

/// The two files of a checkpoint directory.
#[derive(Clone, Debug)]
pub struct CheckpointFiles {
    /// The layout the file names identify.
    pub layout: Layout,
    /// The configuration file (`config.json` or `open_clip_config.json`).
    pub config: PathBuf,
    /// The safetensors weights file (`model.safetensors` or `open_clip_model.safetensors`).
    pub weights: PathBuf,
}

impl CheckpointFiles {
    /// Detects the layout of `dir` from the files in it.
    pub fn detect(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            bail!("model directory {} does not exist", dir.display());
        }
        if !dir.is_dir() {
            bail!("--model must be a checkpoint directory, {} is a file", dir.display());
        }
        for layout in [Layout::OpenClip, Layout::HuggingFace] {
            let config = dir.join(layout.config_file());
            if config.is_file() {
                let weights = dir.join(layout.weights_file());
                if !weights.is_file() {
                    bail!(
                        "{}: found {} but not {} (only safetensors weights are read; convert \
                         .bin/.pt checkpoints to safetensors first)",
                        dir.display(),
                        layout.config_file(),
                        layout.weights_file()
                    );
                }
                return Ok(Self {
                    layout,
                    config,
                    weights,
                });
            }
        }
        bail!(
            "{}: unknown checkpoint layout: expected config.json + model.safetensors (Hugging Face \
             transformers) or open_clip_config.json + open_clip_model.safetensors (open_clip)",
            dir.display()
        )
    }
}

impl Clip {
    /// Builds a model from a configuration (file name selects the layout) and safetensors bytes.
    /// `origin` names the weights in error messages.
    pub fn from_bytes(config_file: &str, config_json: &str, weights: &[u8], origin: &str) -> Result<Self> {
        let cfg = ClipConfig::from_json(config_file, config_json)?;
        let src = SafetensorsSource::new(weights, origin)?;
        cfg.check_weights_size(weights.len() as u64, origin)?;
        Self::from_source(&cfg, &src)
    }

    /// Builds a model from any tensor source.
    pub fn from_source(cfg: &ClipConfig, src: &dyn TensorSource) -> Result<Self> {
        let vision = VisionTower::load(src, cfg)?;
        let text = if weights::TextWeights::present(src, cfg.layout) {
            Some(TextTower::load(src, cfg)?)
        } else {
            None
        };
        let logit_scale = if src.contains("logit_scale") {
            let t = src.get("logit_scale", &[]).or_else(|_| src.get("logit_scale", &[1]))?;
            Some(t.flatten_all()?.to_vec1::<f32>()?[0].exp())
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            text,
            logit_scale,
        })
    }

    /// Loads `dir` (layout detected from its files). Errors name the offending file.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let files = CheckpointFiles::detect(dir)?;
        let config_size = std::fs::metadata(&files.config)
            .with_context(|| format!("cannot read {}", files.config.display()))?
            .len();
        if config_size > config::MAX_CONFIG_BYTES as u64 {
            bail!(
                "{}: {config_size} bytes is over the configuration size limit of {} bytes",
                files.config.display(),
                config::MAX_CONFIG_BYTES
            );
        }
        let json = std::fs::read_to_string(&files.config)
            .with_context(|| format!("cannot read {}", files.config.display()))?;
        let cfg = ClipConfig::from_json(files.layout.config_file(), &json)
            .with_context(|| format!("{}", files.config.display()))?;
        let size = std::fs::metadata(&files.weights)
            .with_context(|| format!("cannot read {}", files.weights.display()))?
            .len();
        if size > checkpoint::MAX_CHECKPOINT_BYTES {
            bail!(
                "{}: {size} bytes is over the checkpoint size limit of {} bytes",
                files.weights.display(),
                checkpoint::MAX_CHECKPOINT_BYTES
            );
        }
        let bytes =
            std::fs::read(&files.weights).with_context(|| format!("cannot read {}", files.weights.display()))?;
        let origin = files.weights.display().to_string();
        let src = SafetensorsSource::new(&bytes, &origin)?;
        cfg.check_weights_size(size, &origin)?;
        Self::from_source(&cfg, &src)
    }

    /// Runs the image tower's block linear layers in int8 from now on
    /// ([`weights::VisionWeights::quantize`]); a no-op when they already are (a q8 checkpoint is
    /// loaded that way).
    pub fn quantize_vision(&mut self) -> Result<()> {
        if !self.vision.w.is_q8() {
            self.vision.w.quantize()?;
        }
        Ok(())
    }

    /// The token padding convention of the checkpoint's own library.
    pub fn padding(&self) -> Padding {
        match self.cfg.layout {
            Layout::HuggingFace => Padding::Hf,
            Layout::OpenClip => Padding::OpenClip,
        }
    }

    /// Tokenizes and encodes `texts`: returns the projected embeddings `[T, P]` (not normalised)
    /// and the padded token ids (77 per row).
    pub fn encode_text(&self, tokenizer: &ClipTokenizer, texts: &[&str]) -> Result<(Tensor, Vec<Vec<u32>>)> {
        let text = self
            .text
            .as_ref()
            .context("this checkpoint has no text tower (vision-only weights)")?;
        let ids = texts
            .iter()
            .map(|t| tokenizer.encode_padded(t, self.padding()).map(|r| r.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        Ok((text.forward(&ids)?, ids))
    }
}
