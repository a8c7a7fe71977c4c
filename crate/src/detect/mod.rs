//! Detection modes on top of the CLIP encoders: zero-shot WinCLIP (accurate), zero-shot fast
//! dense (one pass, v-v tokens), few-shot WinCLIP+ (normal references) and batch MuSc. One
//! implementation serves the CLI, the tests and the browser.
//!
//! Here: the class pair ([`TextPair`]), the [`Mode`] choice, the per-image result
//! ([`Detection`]) and [`score_image`]. Each mode is in its own module; the prompt ensembles and
//! bundles are in [`prompts`], the shared arithmetic in [`aggregate`], the image-tower interface
//! in [`passes`]. Photo-true geometry (the map back on the photo) is in [`geometry`], tiled
//! high-resolution inspection in [`tiles`], defect regions in [`regions`]. Dataset evaluation
//! (`crate::eval`), metrics ([`crate::metrics`]) and drawing maps ([`crate::render`]) are not
//! here.
pub mod adaptclip;
pub mod aggregate;
pub mod anomalyclip;
pub mod fast;
pub mod geometry;
pub mod learned;
pub mod musc;
pub mod passes;
pub mod prompts;
pub mod regions;
pub mod tiles;
pub mod winclip;

use crate::model::Clip;
use crate::tokenizer::ClipTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// WinCLIP's softmax temperature (the CLIP paper's 0.07).
pub const TEMPERATURE: f32 = 0.07;

/// Prompts encoded per text-tower call by [`TextPair::from_prompts`].
pub const PROMPT_BATCH: usize = 64;

/// The two class embeddings a zero-shot score compares against, as unit vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct TextPair {
    /// Unit-length embedding of the normal class, `[P]` (the model's `embed_dim`).
    pub normal: Vec<f32>,
    /// Unit-length embedding of the anomalous class, `[P]`, the same length as `normal`.
    pub anomalous: Vec<f32>,
}

impl TextPair {
    /// Builds a pair from two (not necessarily normalised) vectors of equal length.
    pub fn new(mut normal: Vec<f32>, mut anomalous: Vec<f32>) -> Result<Self> {
        if normal.len() != anomalous.len() || normal.is_empty() {
            bail!(
                "text embeddings must be non-empty and of equal length ({} vs {})",
                normal.len(),
                anomalous.len()
            );
        }
        if normal.iter().chain(&anomalous).any(|v| !v.is_finite()) {
            bail!("text embeddings contain non-finite values");
        }
        aggregate::l2_normalize(&mut normal);
        aggregate::l2_normalize(&mut anomalous);
        Ok(Self { normal, anomalous })
    }

    /// Encodes two prompt ensembles as anomalib's WinCLIP does: every prompt through the text
    /// tower, the raw (unnormalised) embeddings averaged per side; the direction is what counts.
    pub fn from_prompts(
        clip: &Clip,
        tokenizer: &ClipTokenizer,
        normal: &[String],
        anomalous: &[String],
    ) -> Result<Self> {
        Self::from_prompts_with_progress(clip, tokenizer, normal, anomalous, &mut |_, _| Ok(()))
    }

    /// [`TextPair::from_prompts`], calling `progress(done, total)` (prompts encoded so far, all
    /// prompts) after each batch of [`PROMPT_BATCH`] prompts. An error from `progress` stops the
    /// encoding and is returned.
    pub fn from_prompts_with_progress(
        clip: &Clip,
        tokenizer: &ClipTokenizer,
        normal: &[String],
        anomalous: &[String],
        progress: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Self> {
        let total = normal.len() + anomalous.len();
        let mut done = 0;
        let mut mean = |prompts: &[String]| -> Result<Vec<f32>> {
            if prompts.is_empty() {
                bail!("a prompt ensemble must not be empty");
            }
            let mut sum = vec![0f32; clip.cfg.embed_dim];
            // Bounded batches keep the text tower's memory flat for large ensembles.
            for chunk in prompts.chunks(PROMPT_BATCH) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let (emb, _) = clip.encode_text(tokenizer, &refs)?;
                for row in emb.to_vec2::<f32>()? {
                    sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
                done += chunk.len();
                progress(done, total)?;
            }
            let n = prompts.len() as f32;
            Ok(sum.into_iter().map(|s| s / n).collect())
        };
        let normal = mean(normal)?;
        let anomalous = mean(anomalous)?;
        Self::new(normal, anomalous)
    }

    /// Errors unless the pair lives in `clip`'s embedding space.
    pub fn check_model(&self, clip: &Clip) -> Result<()> {
        if self.dim() != clip.cfg.embed_dim {
            bail!(
                "text embeddings have {} dimensions, the model {}",
                self.dim(),
                clip.cfg.embed_dim
            );
        }
        Ok(())
    }

    /// Embedding dimension P of the pair (must equal the model's `embed_dim`).
    pub fn dim(&self) -> usize {
        self.normal.len()
    }

    /// Anomalous probability of an embedding (see [`aggregate::anomaly_probability`]).
    pub fn score(&self, e: &[f32], temperature: f32) -> f32 {
        aggregate::anomaly_probability(e, &self.normal, &self.anomalous, temperature)
    }
}

/// A detection mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// [`fast::detect`]: one pass with v-v (CLIP Surgery) tokens.
    Fast,
    /// [`winclip::detect`] without references.
    Winclip,
    /// [`winclip::detect`] with normal references (WinCLIP+).
    Fewshot,
    /// [`musc::detect`]: the images of a batch score each other (no text).
    Batch,
    /// [`anomalyclip::detect`]: learned object-agnostic prompts (the class pair comes from the
    /// learned file, not from prompt ensembles), one DPAM pass at the input's own size.
    Anomalyclip,
    /// [`adaptclip::detect`]: AdaptCLIP's learned adapters (the learned file, not prompt
    /// ensembles), zero-shot, or few-shot with normal references; the input's own size.
    Adaptclip,
}

impl Mode {
    /// Every mode, for parsing and listing (`fast`, `winclip`, `fewshot`, `batch`,
    /// `anomalyclip`).
    pub const ALL: [Mode; 6] = [
        Mode::Fast,
        Mode::Winclip,
        Mode::Fewshot,
        Mode::Batch,
        Mode::Anomalyclip,
        Mode::Adaptclip,
    ];

    /// The mode's name on the command line and in `run.json` (`"fast"`, `"winclip"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Winclip => "winclip",
            Mode::Fewshot => "fewshot",
            Mode::Batch => "batch",
            Mode::Anomalyclip => "anomalyclip",
            Mode::Adaptclip => "adaptclip",
        }
    }

    /// Whether the class pair comes from a learned-prompt file (not from prompt ensembles).
    pub fn learned(self) -> bool {
        matches!(self, Mode::Anomalyclip | Mode::Adaptclip)
    }

    /// The default input side of the mode for `clip`: the official 518 px of the learned-prompt
    /// modes, the checkpoint's own size otherwise.
    pub fn default_size(self, clip: &Clip) -> u32 {
        if self.learned() {
            learned::RUN_SIZE
        } else {
            clip.cfg.vision.image_size as u32
        }
    }

    /// Whether the mode compares against the text class pair.
    pub fn uses_text(self) -> bool {
        self != Mode::Batch
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .with_context(|| format!("unknown mode `{s}` (fast, winclip, fewshot, batch, anomalyclip, adaptclip)"))
    }
}

/// Scores one normalised image `pixels: [1, 3, H, W]` in a per-image mode (every mode but
/// batch). `refs` is required for few-shot; `surgery_layers` is fast mode's K. In the
/// learned-prompt modes `text` is the learned pair and `clip` must resample position embeddings
/// as the official code does ([`learned::use_official_pos_interp`]).
pub fn score_image(
    clip: &Clip,
    pixels: &Tensor,
    mode: Mode,
    text: &TextPair,
    refs: Option<&winclip::References>,
    surgery_layers: usize,
    cfg: &winclip::WinClipConfig,
) -> Result<Detection> {
    passes::now(score_image_on(
        clip,
        &clip.vision,
        pixels,
        mode,
        text,
        refs,
        surgery_layers,
        cfg,
    ))
}

/// [`score_image`] with the image tower's passes run by `tower` (see [`passes::Passes`]).
#[allow(clippy::too_many_arguments)] // score_image's arguments and the tower
pub async fn score_image_on(
    clip: &Clip,
    tower: &impl passes::Passes,
    pixels: &Tensor,
    mode: Mode,
    text: &TextPair,
    refs: Option<&winclip::References>,
    surgery_layers: usize,
    cfg: &winclip::WinClipConfig,
) -> Result<Detection> {
    let dets = match mode {
        Mode::Fast => fast::detect_on(clip, tower, pixels, text, surgery_layers, TEMPERATURE).await?,
        Mode::Winclip => winclip::detect_on(clip, tower, pixels, text, None, cfg).await?,
        Mode::Fewshot => {
            let refs = refs.context("few-shot mode needs at least one normal reference image")?;
            winclip::detect_on(clip, tower, pixels, text, Some(refs), cfg).await?
        }
        Mode::Batch => bail!("batch mode scores a whole batch together (musc::detect), not one image"),
        Mode::Anomalyclip => anomalyclip::detect_on(clip, tower, pixels, text).await?,
        Mode::Adaptclip => bail!("adaptclip scores with its adapters (adaptclip::detect), not with one class pair"),
    };
    dets.into_iter().next().context("no image in the input")
}

/// The result for one image.
#[derive(Clone, Debug)]
pub struct Detection {
    /// Image anomaly score, higher = more anomalous: a probability in [0, 1] in the text modes, a
    /// batch-relative RsCIN score (normally in [0, 1]) in batch mode.
    pub score: f32,
    /// Anomaly map at the input resolution, row-major `height × width`: in [0, 1] for the text
    /// modes; batch mode's holds raw patch distances (see [`musc::unit_range_maps`]).
    pub map: Vec<f32>,
    /// Height of `map` in pixels (the model input's, not the original image's).
    pub height: usize,
    /// Width of `map` in pixels (the model input's, not the original image's).
    pub width: usize,
    /// The map on the patch grid before upsampling, row-major `grid.0 × grid.1`.
    pub grid_map: Vec<f32>,
    /// Patch grid `(rows, columns)` of `grid_map`.
    pub grid: (usize, usize),
}
