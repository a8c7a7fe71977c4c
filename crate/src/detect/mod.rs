//! Detection modes on top of the CLIP encoders: zero-shot WinCLIP (accurate), zero-shot fast
//! dense (one pass, v-v tokens), few-shot WinCLIP+ (normal references) and batch MuSc. One
//! implementation serves the CLI, the tests and the browser.
pub mod aggregate;
pub mod fast;
pub mod musc;
pub mod prompts;
pub mod winclip;

use crate::model::Clip;
use crate::tokenizer::ClipTokenizer;
use anyhow::{bail, Result};

/// WinCLIP's softmax temperature (the CLIP paper's 0.07).
pub const TEMPERATURE: f32 = 0.07;

/// The two class embeddings a zero-shot score compares against, as unit vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct TextPair {
    pub normal: Vec<f32>,
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
        let mean = |prompts: &[String]| -> Result<Vec<f32>> {
            if prompts.is_empty() {
                bail!("a prompt ensemble must not be empty");
            }
            let mut sum = vec![0f32; clip.cfg.embed_dim];
            // Bounded batches keep the text tower's memory flat for large ensembles.
            for chunk in prompts.chunks(64) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let (emb, _) = clip.encode_text(tokenizer, &refs)?;
                for row in emb.to_vec2::<f32>()? {
                    sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
            }
            let n = prompts.len() as f32;
            Ok(sum.into_iter().map(|s| s / n).collect())
        };
        Self::new(mean(normal)?, mean(anomalous)?)
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

    pub fn dim(&self) -> usize {
        self.normal.len()
    }

    /// Anomalous probability of an embedding (see [`aggregate::anomaly_probability`]).
    pub fn score(&self, e: &[f32], temperature: f32) -> f32 {
        aggregate::anomaly_probability(e, &self.normal, &self.anomalous, temperature)
    }
}

/// The result for one image.
#[derive(Clone, Debug)]
pub struct Detection {
    /// Image anomaly score in [0, 1].
    pub score: f32,
    /// Anomaly map at the input resolution, row-major `height × width`, values in [0, 1].
    pub map: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// The map on the patch grid before upsampling, row-major.
    pub grid_map: Vec<f32>,
    pub grid: (usize, usize),
}
