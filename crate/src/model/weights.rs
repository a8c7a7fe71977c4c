//! Reading checkpoint tensors (safetensors, f32/f16/bf16) into the common weight structs of
//! the two towers, whatever the key naming of the layout: the whole-file reader
//! ([`SafetensorsSource`]), in-memory tensors ([`MapSource`]), the weight structs and their
//! loaders, and `anoscope convert`'s dtype rewrite ([`convert_safetensors`]). The size limits,
//! the [`TensorSource`] trait and the vision-first write order live in [`super::checkpoint`]
//! (re-exported here under their old paths). The streaming reader (`model::stream`) builds on
//! this module; this module does not use it.
use super::checkpoint::serialize_vision_first;
pub use super::checkpoint::{
    TensorSource, MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_BYTES_NATIVE, MAX_CHECKPOINT_BYTES_WASM,
    MAX_SAFETENSORS_HEADER_BYTES,
};
use super::config::{ClipConfig, Layout};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

/// Tensors read lazily from a safetensors buffer.
pub struct SafetensorsSource<'a> {
    st: SafeTensors<'a>,
    /// Shown in errors (the file name).
    origin: String,
}

impl<'a> SafetensorsSource<'a> {
    /// Parses the header of `bytes` (checked against [`MAX_CHECKPOINT_BYTES`]); `origin` names
    /// the file in errors.
    pub fn new(bytes: &'a [u8], origin: &str) -> Result<Self> {
        if bytes.is_empty() {
            bail!("{origin}: the file is empty (0 bytes), not a safetensors checkpoint");
        }
        if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
            bail!(
                "{origin}: {} bytes is over the checkpoint size limit of {} bytes",
                bytes.len(),
                MAX_CHECKPOINT_BYTES
            );
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("{origin}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
        Ok(Self {
            st,
            origin: origin.to_string(),
        })
    }

    /// The names of every tensor in the file.
    pub fn names(&self) -> Vec<String> {
        self.st.names().into_iter().map(|s| s.to_string()).collect()
    }
}

/// Decodes a safetensors tensor view to f32 values.
pub fn view_to_f32(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(view.shape().iter().product());
    super::checkpoint::decode_floats(view.dtype(), view.data(), &mut out)?;
    Ok(out)
}

fn check_finite(values: &[f32], what: &str) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{what} contains a non-finite value ({}) at flat index {i}", values[i]);
    }
    Ok(())
}

impl TensorSource for SafetensorsSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| anyhow::anyhow!("{}: missing tensor `{name}`", self.origin))?;
        if view.shape() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?} but the configuration implies {:?}",
                self.origin,
                view.shape(),
                shape
            );
        }
        let values = view_to_f32(&view).with_context(|| format!("{}: tensor `{name}`", self.origin))?;
        check_finite(&values, &format!("{}: tensor `{name}`", self.origin))?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }
}

/// Tensors held in memory (random weights for benchmarks).
pub struct MapSource(pub HashMap<String, Tensor>);

impl TensorSource for MapSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.0.get(name).with_context(|| format!("missing tensor `{name}`"))?;
        if t.dims() != shape {
            bail!(
                "tensor `{name}` has shape {:?} but the configuration implies {:?}",
                t.dims(),
                shape
            );
        }
        Ok(t.clone())
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// LayerNorm parameters.
#[derive(Clone, Debug)]
pub struct Norm {
    /// Per-channel scale (γ), `[D]`.
    pub weight: Tensor,
    /// Per-channel shift (β), `[D]`.
    pub bias: Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// A linear layer stored transposed (`[in, out]`, contiguous) so that `x @ w_t + b` is one gemm.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight matrix transposed, `[in, out]`, contiguous.
    pub w_t: Tensor,
    /// Added to every output row, `[out]` (`None`: no bias).
    pub bias: Option<Tensor>,
}

/// One pre-norm transformer block.
#[derive(Clone, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub ln_1: Norm,
    /// Fused q, k, v projection: `[D, 3D]`.
    pub qkv: Linear,
    /// Attention output projection, `[D, D]`.
    pub out: Linear,
    /// LayerNorm before the MLP.
    pub ln_2: Norm,
    /// First MLP layer, `[D, mlp_width]` (followed by the activation).
    pub fc1: Linear,
    /// Second MLP layer, `[mlp_width, D]`.
    pub fc2: Linear,
}

/// Image tower weights.
#[derive(Clone, Debug)]
pub struct VisionWeights {
    /// Patch embedding as a matmul: `[3·p·p, D]` (channel-major, then rows, then columns).
    pub patch_w_t: Tensor,
    /// The learned class token, `[D]`.
    pub class_embedding: Tensor,
    /// `[grid² + 1, D]` as stored in the checkpoint.
    pub pos_embedding: Tensor,
    /// LayerNorm on the embedded tokens before the first block.
    pub ln_pre: Norm,
    /// The transformer blocks, first to last.
    pub blocks: Vec<Block>,
    /// LayerNorm on the last block's output, before the projection.
    pub ln_post: Norm,
    /// `[D, P]`.
    pub proj: Tensor,
}

/// Text tower weights.
#[derive(Clone, Debug)]
pub struct TextWeights {
    /// Token embedding table, `[vocab_size, Dt]`.
    pub token_embedding: Tensor,
    /// Position embeddings, `[context_length, Dt]`.
    pub pos_embedding: Tensor,
    /// The transformer blocks, first to last.
    pub blocks: Vec<Block>,
    /// LayerNorm on the last block's output, before the projection.
    pub ln_final: Norm,
    /// `[Dt, P]`.
    pub proj: Tensor,
}

fn norm(src: &dyn TensorSource, prefix: &str, d: usize, eps: f64) -> Result<Norm> {
    Ok(Norm {
        weight: src.get(&format!("{prefix}.weight"), &[d])?,
        bias: src.get(&format!("{prefix}.bias"), &[d])?,
        eps: eps as f32,
    })
}

fn linear(src: &dyn TensorSource, prefix: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
    let w = src.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
    Ok(Linear {
        w_t: w.t()?.contiguous()?,
        bias: Some(src.get(&format!("{prefix}.bias"), &[out_dim])?),
    })
}

/// Key names of one block in each layout.
fn block(src: &dyn TensorSource, layout: Layout, prefix: &str, d: usize, mlp: usize, eps: f64) -> Result<Block> {
    match layout {
        Layout::HuggingFace => {
            let q = src.get(&format!("{prefix}.self_attn.q_proj.weight"), &[d, d])?;
            let k = src.get(&format!("{prefix}.self_attn.k_proj.weight"), &[d, d])?;
            let v = src.get(&format!("{prefix}.self_attn.v_proj.weight"), &[d, d])?;
            let qb = src.get(&format!("{prefix}.self_attn.q_proj.bias"), &[d])?;
            let kb = src.get(&format!("{prefix}.self_attn.k_proj.bias"), &[d])?;
            let vb = src.get(&format!("{prefix}.self_attn.v_proj.bias"), &[d])?;
            let w = Tensor::cat(&[q, k, v], 0)?;
            Ok(Block {
                ln_1: norm(src, &format!("{prefix}.layer_norm1"), d, eps)?,
                qkv: Linear {
                    w_t: w.t()?.contiguous()?,
                    bias: Some(Tensor::cat(&[qb, kb, vb], 0)?),
                },
                out: linear(src, &format!("{prefix}.self_attn.out_proj"), d, d)?,
                ln_2: norm(src, &format!("{prefix}.layer_norm2"), d, eps)?,
                fc1: linear(src, &format!("{prefix}.mlp.fc1"), mlp, d)?,
                fc2: linear(src, &format!("{prefix}.mlp.fc2"), d, mlp)?,
            })
        }
        Layout::OpenClip => {
            let w = src.get(&format!("{prefix}.attn.in_proj_weight"), &[3 * d, d])?;
            Ok(Block {
                ln_1: norm(src, &format!("{prefix}.ln_1"), d, eps)?,
                qkv: Linear {
                    w_t: w.t()?.contiguous()?,
                    bias: Some(src.get(&format!("{prefix}.attn.in_proj_bias"), &[3 * d])?),
                },
                out: linear(src, &format!("{prefix}.attn.out_proj"), d, d)?,
                ln_2: norm(src, &format!("{prefix}.ln_2"), d, eps)?,
                fc1: linear(src, &format!("{prefix}.mlp.c_fc"), mlp, d)?,
                fc2: linear(src, &format!("{prefix}.mlp.c_proj"), d, mlp)?,
            })
        }
    }
}

impl VisionWeights {
    /// Reads the image tower's weights in the layout of `cfg`.
    pub fn load(src: &dyn TensorSource, cfg: &ClipConfig) -> Result<Self> {
        let v = &cfg.vision;
        let (d, p, g) = (v.width, v.patch_size, v.grid());
        let (conv, cls, pos, ln_pre, blocks, ln_post) = match cfg.layout {
            Layout::HuggingFace => (
                "vision_model.embeddings.patch_embedding.weight",
                "vision_model.embeddings.class_embedding",
                "vision_model.embeddings.position_embedding.weight",
                "vision_model.pre_layrnorm",
                "vision_model.encoder.layers",
                "vision_model.post_layernorm",
            ),
            Layout::OpenClip => (
                "visual.conv1.weight",
                "visual.class_embedding",
                "visual.positional_embedding",
                "visual.ln_pre",
                "visual.transformer.resblocks",
                "visual.ln_post",
            ),
        };
        let patch = src.get(conv, &[d, 3, p, p])?;
        let proj = match cfg.layout {
            Layout::HuggingFace => src
                .get("visual_projection.weight", &[cfg.embed_dim, d])?
                .t()?
                .contiguous()?,
            Layout::OpenClip => src.get("visual.proj", &[d, cfg.embed_dim])?,
        };
        Ok(Self {
            patch_w_t: patch.reshape((d, 3 * p * p))?.t()?.contiguous()?,
            class_embedding: src.get(cls, &[d])?,
            pos_embedding: src.get(pos, &[g * g + 1, d])?,
            ln_pre: norm(src, ln_pre, d, v.ln_eps)?,
            blocks: (0..v.layers)
                .map(|i| block(src, cfg.layout, &format!("{blocks}.{i}"), d, v.mlp_width, v.ln_eps))
                .collect::<Result<_>>()?,
            ln_post: norm(src, ln_post, d, v.ln_eps)?,
            proj,
        })
    }
}

impl TextWeights {
    /// Whether the source holds a text tower at all (vision-only checkpoints do not).
    pub fn present(src: &dyn TensorSource, layout: Layout) -> bool {
        src.contains(match layout {
            Layout::HuggingFace => "text_model.embeddings.token_embedding.weight",
            Layout::OpenClip => "token_embedding.weight",
        })
    }

    /// Reads the text tower's weights in the layout of `cfg`.
    pub fn load(src: &dyn TensorSource, cfg: &ClipConfig) -> Result<Self> {
        let t = &cfg.text;
        let d = t.width;
        let (tok, pos, blocks, ln_final) = match cfg.layout {
            Layout::HuggingFace => (
                "text_model.embeddings.token_embedding.weight",
                "text_model.embeddings.position_embedding.weight",
                "text_model.encoder.layers",
                "text_model.final_layer_norm",
            ),
            Layout::OpenClip => (
                "token_embedding.weight",
                "positional_embedding",
                "transformer.resblocks",
                "ln_final",
            ),
        };
        let proj = match cfg.layout {
            Layout::HuggingFace => src
                .get("text_projection.weight", &[cfg.embed_dim, d])?
                .t()?
                .contiguous()?,
            Layout::OpenClip => src.get("text_projection", &[d, cfg.embed_dim])?,
        };
        Ok(Self {
            token_embedding: src.get(tok, &[t.vocab_size, d])?,
            pos_embedding: src.get(pos, &[t.context_length, d])?,
            blocks: (0..t.layers)
                .map(|i| block(src, cfg.layout, &format!("{blocks}.{i}"), d, t.mlp_width, t.ln_eps))
                .collect::<Result<_>>()?,
            ln_final: norm(src, ln_final, d, t.ln_eps)?,
            proj,
        })
    }
}

/// Rewrites a safetensors buffer with every floating-point tensor stored as `dtype`
/// (`F16` halves the browser download; `F32` undoes it). Other tensors are copied unchanged.
/// The image tower's data comes first, so that the page can use it before the text tower is in.
pub fn convert_safetensors(bytes: &[u8], origin: &str, dtype: Dtype) -> Result<Vec<u8>> {
    if !matches!(dtype, Dtype::F16 | Dtype::F32) {
        bail!("conversion target must be F16 or F32, got {dtype:?}");
    }
    let src = SafetensorsSource::new(bytes, origin)?;
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in src.names() {
        let view = src.st.tensor(&name)?;
        let is_float = matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64);
        let (d, b) = if is_float {
            let v = view_to_f32(&view).with_context(|| format!("{origin}: tensor `{name}`"))?;
            check_finite(&v, &format!("{origin}: tensor `{name}`"))?;
            let b: Vec<u8> = match dtype {
                Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            (dtype, b)
        } else {
            (view.dtype(), view.data().to_vec())
        };
        data.push((name, d, view.shape().to_vec(), b));
    }
    let views = data
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    serialize_vision_first(&views)
}
