//! The CLIP text tower (its weights are read by [`super::weights`]; tokenizing is
//! [`crate::tokenizer`]).
use super::checkpoint::TensorSource;
use super::config::ClipConfig;
use super::ops::{causal_mask, eot_positions};
use super::weights::TextWeights;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// The text tower of a CLIP model.
#[derive(Clone, Debug)]
pub struct TextTower {
    /// The model configuration (its text hyper-parameters and `embed_dim`).
    pub cfg: ClipConfig,
    /// The tower's weights.
    pub w: TextWeights,
}

impl TextTower {
    /// Reads the text tower's weights from `src` in the layout of `cfg`.
    pub fn load(src: &dyn TensorSource, cfg: &ClipConfig) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            w: TextWeights::load(src, cfg)?,
        })
    }

    /// Projected text embeddings `[T, P]` (not L2-normalised) of token id rows (each with an
    /// end-of-text token, the row's largest id). Because attention is causal, the sequence is
    /// cut after the last end-of-text position of the batch: padding cannot change the result.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let t = &self.cfg.text;
        if ids.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.cfg.embed_dim),
                candle_core::DType::F32,
                &Device::Cpu,
            )?);
        }
        for row in ids {
            if row.is_empty() || row.len() > t.context_length {
                bail!("token rows must have 1..={} ids, got {}", t.context_length, row.len());
            }
            if let Some(&bad) = row.iter().find(|&&i| i as usize >= t.vocab_size) {
                bail!("token id {bad} is outside the vocabulary of {}", t.vocab_size);
            }
        }
        let eot = eot_positions(ids);
        let len = eot.iter().copied().max().unwrap_or(0) + 1;
        let b = ids.len();
        let flat: Vec<u32> = ids
            .iter()
            .flat_map(|r| (0..len).map(|i| r.get(i).copied().unwrap_or(0)))
            .collect();
        let flat = Tensor::from_vec(flat, b * len, &Device::Cpu)?;
        let x = self
            .w
            .token_embedding
            .index_select(&flat, 0)?
            .reshape((b, len, t.width))?;
        let mut x = x.broadcast_add(&self.w.pos_embedding.narrow(0, 0, len)?)?;
        let mask = causal_mask(len)?;
        for blk in &self.w.blocks {
            x = blk.forward(&x, t.heads, t.act, Some(&mask), false)?.x;
        }
        let x = self.w.ln_final.forward(&x)?;
        let rows: Vec<Tensor> = eot
            .iter()
            .enumerate()
            .map(|(i, &p)| x.get(i)?.get(p))
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::stack(&rows, 0)?.matmul(&self.w.proj)?)
    }
}
