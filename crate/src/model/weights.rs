//! Reading checkpoint tensors (safetensors, f32/f16/bf16) into the common weight structs of
//! the two towers, whatever the key naming of the layout: the whole-file reader
//! ([`SafetensorsSource`]), in-memory tensors ([`MapSource`]), the weight structs and their
//! loaders, and `anoscope convert`'s dtype rewrite ([`convert_safetensors`]). The size limits,
//! the [`TensorSource`] trait and the vision-first write order live in [`super::checkpoint`]
//! (re-exported here under their old paths). The streaming reader (`model::stream`) builds on
//! this module; this module does not use it.
use super::checkpoint::serialize_vision_first;
use super::checkpoint::{dequantize_q8, q8_scales_shape, Q8_BLOCK, Q8_SCALES_SUFFIX};
pub use super::checkpoint::{
    TensorSource, MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_BYTES_NATIVE, MAX_CHECKPOINT_BYTES_WASM,
    MAX_SAFETENSORS_HEADER_BYTES,
};
use super::config::{ClipConfig, Layout};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
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
        let mut values = view_to_f32(&view).with_context(|| format!("{}: tensor `{name}`", self.origin))?;
        if view.dtype() == Dtype::I8 {
            let scales = self.q8_scales(name, shape)?;
            dequantize_q8(&mut values, &scales);
        }
        check_finite(&values, &format!("{}: tensor `{name}`", self.origin))?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }
}

impl SafetensorsSource<'_> {
    /// The block scales of the int8 tensor `name` of `shape` (checked: present, of the right
    /// shape and dtype, finite).
    fn q8_scales(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let origin = &self.origin;
        let want = q8_scales_shape(shape).with_context(|| format!("{origin}: tensor `{name}` (I8)"))?;
        let scales_name = format!("{name}{Q8_SCALES_SUFFIX}");
        let Ok(view) = self.st.tensor(&scales_name) else {
            bail!(
                "{origin}: tensor `{name}`: unsupported dtype I8 without its block scales \
                 `{scales_name}` (int8 tensors are read only as anoscope's q8 format)"
            );
        };
        if view.shape() != &want[..] || !matches!(view.dtype(), Dtype::F16 | Dtype::F32) {
            bail!(
                "{origin}: tensor `{scales_name}` is {:?} {:?}, expected F16 {want:?}",
                view.dtype(),
                view.shape()
            );
        }
        let values = view_to_f32(&view)?;
        check_finite(&values, &format!("{origin}: tensor `{scales_name}`"))?;
        Ok(values)
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
    /// The weight matrix transposed, `[in, out]`, contiguous. In a wasm build whose layer runs
    /// in int8 ([`Linear::packed`]) it is empty (`[0, out]`): the int8 weights are the only
    /// copy ([`Linear::weight_t`] scales them back for the GPU).
    pub w_t: Tensor,
    /// Added to every output row, `[out]` (`None`: no bias).
    pub bias: Option<Tensor>,
    /// The int8 form of `w_t` natively ([`Linear::quantize`]); when set, [`Linear::forward`]
    /// runs it instead of the f32 matmul (`w_t` stays, for the GPU and as the reference).
    pub q8: Option<QMatMul>,
    /// The int8 form in a wasm build ([`Linear::quantize`]): the packed panels of our own int8
    /// GEMM ([`super::wasm_qgemm`]), run by [`Linear::forward`].
    pub packed: Option<std::sync::Arc<super::wasm_qgemm::PackedQ8>>,
    /// The int8 form natively on an x86-64 CPU with AVX-512 VNNI or AVX2 ([`Linear::quantize`]):
    /// the packed panels of [`super::x86_qgemm`], run instead of `q8` (`w_t` stays, as with `q8`).
    pub x86: Option<std::sync::Arc<super::x86_qgemm::X86Q8>>,
}

impl Linear {
    /// A layer with f32 weights only.
    pub fn new(w_t: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            w_t,
            bias,
            q8: None,
            packed: None,
            x86: None,
        }
    }

    /// Whether the layer has an int8 form ([`Linear::quantize`] or [`Linear::quantize_packed`]).
    pub fn is_int8(&self) -> bool {
        self.q8.is_some() || self.packed.is_some() || self.x86.is_some()
    }

    /// Which int8 GEMM runs the layer (`None` in f32): `avx512-vnni` or `avx2` (ours, natively),
    /// `candle` (candle's `QMatMul`), `simd128` or `relaxed` (our packed GEMM of
    /// [`super::wasm_qgemm`] with that dot product).
    pub fn int8_kernel(&self) -> Option<&'static str> {
        match (&self.x86, &self.packed, &self.q8) {
            (Some(x), _, _) => Some(x.kernel().name()),
            (None, Some(p), _) => Some(p.dot().name()),
            (None, None, Some(_)) => Some("candle"),
            (None, None, None) => None,
        }
    }

    /// Adds the int8 form of the weights, Q8_0 blocks (per output channel, one f16 scale per
    /// [`Q8_BLOCK`] input values; activations quantized per row block at run time, i32
    /// accumulation): natively our x86-64 GEMM ([`super::x86_qgemm`]: AVX-512 VNNI, else AVX2)
    /// where the CPU has either, else candle's `QMatMul`; in wasm our packed GEMM
    /// ([`super::wasm_qgemm`]), which then holds the only copy of the weights (`w_t` is
    /// emptied, 4 bytes a weight freed for about 1.2). Re-quantizing weights read from a q8
    /// checkpoint gives back its exact blocks. Errors when the input width is not a multiple
    /// of [`Q8_BLOCK`].
    pub fn quantize(&mut self) -> Result<()> {
        let (k, _) = self.w_t.dims2()?;
        if k % Q8_BLOCK != 0 {
            bail!("cannot quantize a linear layer with {k} inputs to int8 (not a multiple of {Q8_BLOCK})");
        }
        if cfg!(target_arch = "wasm32") {
            return self.quantize_packed();
        }
        if super::x86_qgemm::available() {
            let n = self.w_t.dim(1)?;
            let w = self.w_t.flatten_all()?.to_vec1::<f32>()?;
            self.x86 = Some(std::sync::Arc::new(super::x86_qgemm::X86Q8::quantize(&w, k, n)?));
            return Ok(());
        }
        let w = self.w_t.t()?.contiguous()?; // [out, in]: blocks run along the inputs
        self.q8 = Some(QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?);
        Ok(())
    }

    /// [`Linear::quantize`] as the wasm build does it, on any target: the packed int8 GEMM of
    /// [`super::wasm_qgemm`] (off wasm its micro-kernel is plain scalar code with the same
    /// arithmetic: slow, for testing the wasm path's accuracy natively), `w_t` emptied.
    pub fn quantize_packed(&mut self) -> Result<()> {
        let (k, n) = self.w_t.dims2()?;
        let w = self.w_t.flatten_all()?.to_vec1::<f32>()?;
        self.packed = Some(std::sync::Arc::new(super::wasm_qgemm::PackedQ8::quantize(&w, k, n)?));
        self.w_t = Tensor::zeros((0, n), candle_core::DType::F32, &Device::Cpu)?;
        Ok(())
    }

    /// Outputs of the layer.
    pub fn out_dim(&self) -> Result<usize> {
        Ok(self.w_t.dim(1)?)
    }

    /// Inputs of the layer.
    pub fn in_dim(&self) -> Result<usize> {
        match &self.packed {
            Some(p) => Ok(p.k()),
            None => Ok(self.w_t.dim(0)?),
        }
    }

    /// The weights as f32 `[in, out]`: `w_t`, or where only the int8 form is held, its values
    /// scaled back (exactly the f32 weights of a q8 checkpoint).
    pub fn weight_t(&self) -> Result<Tensor> {
        match &self.packed {
            Some(p) if self.w_t.dim(0)? == 0 => Ok(Tensor::from_vec(p.dequantize_t(), (p.k(), p.n()), &Device::Cpu)?),
            _ => Ok(self.w_t.clone()),
        }
    }
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
    Ok(Linear::new(
        w.t()?.contiguous()?,
        Some(src.get(&format!("{prefix}.bias"), &[out_dim])?),
    ))
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
                qkv: Linear::new(w.t()?.contiguous()?, Some(Tensor::cat(&[qb, kb, vb], 0)?)),
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
                qkv: Linear::new(
                    w.t()?.contiguous()?,
                    Some(src.get(&format!("{prefix}.attn.in_proj_bias"), &[3 * d])?),
                ),
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
        // A q8 checkpoint (its block weights stored as int8): run them in int8 (natively our
        // VNNI GEMM or candle's QMatMul, in wasm our packed int8 GEMM: docs/speed.md).
        let q8 = src.is_q8(&match cfg.layout {
            Layout::HuggingFace => format!("{blocks}.0.mlp.fc1.weight"),
            Layout::OpenClip => format!("{blocks}.0.mlp.c_fc.weight"),
        });
        let patch = src.get(conv, &[d, 3, p, p])?;
        let proj = match cfg.layout {
            Layout::HuggingFace => src
                .get("visual_projection.weight", &[cfg.embed_dim, d])?
                .t()?
                .contiguous()?,
            Layout::OpenClip => src.get("visual.proj", &[d, cfg.embed_dim])?,
        };
        let w = Self {
            patch_w_t: patch.reshape((d, 3 * p * p))?.t()?.contiguous()?,
            class_embedding: src.get(cls, &[d])?,
            pos_embedding: src.get(pos, &[g * g + 1, d])?,
            ln_pre: norm(src, ln_pre, d, v.ln_eps)?,
            // Each block quantized as soon as it is read: in wasm its f32 weights are freed
            // before the next block's are made.
            blocks: (0..v.layers)
                .map(|i| {
                    let mut b = block(src, cfg.layout, &format!("{blocks}.{i}"), d, v.mlp_width, v.ln_eps)?;
                    if q8 {
                        quantize_block(&mut b)?;
                    }
                    Ok(b)
                })
                .collect::<Result<_>>()?,
            ln_post: norm(src, ln_post, d, v.ln_eps)?,
            proj,
        };
        Ok(w)
    }

    /// Gives every block's linear layers (q, k, v, output projection, MLP) their int8 form
    /// ([`Linear::quantize`]). The patch embedding and the final projection stay f32 (under 1 %
    /// of the work), as does a layer whose input width is not a multiple of [`Q8_BLOCK`].
    pub fn quantize(&mut self) -> Result<()> {
        self.blocks.iter_mut().try_for_each(quantize_block)
    }

    /// [`VisionWeights::quantize`] with the wasm build's int8 GEMM on any target
    /// ([`Linear::quantize_packed`]; natively slow, for tests).
    pub fn quantize_packed(&mut self) -> Result<()> {
        for b in &mut self.blocks {
            for l in [&mut b.qkv, &mut b.out, &mut b.fc1, &mut b.fc2] {
                if !l.is_int8() && l.w_t.dim(0)? % Q8_BLOCK == 0 {
                    l.quantize_packed()?;
                }
            }
        }
        Ok(())
    }

    /// Whether the blocks run in int8 ([`VisionWeights::quantize`]).
    pub fn is_q8(&self) -> bool {
        self.blocks.first().is_some_and(|b| b.fc1.is_int8())
    }

    /// Gives every layer that holds only its int8 form (wasm) its f32 `w_t` back, scaled from
    /// the int8 values ([`Linear::weight_t`]): what the GPU tower uploads.
    pub fn restore_f32(&mut self) -> Result<()> {
        for b in &mut self.blocks {
            for l in [&mut b.qkv, &mut b.out, &mut b.fc1, &mut b.fc2] {
                l.w_t = l.weight_t()?;
            }
        }
        Ok(())
    }
}

/// Gives a block's linear layers their int8 form ([`Linear::quantize`]), but a layer whose
/// input width is not a multiple of [`Q8_BLOCK`] (no ViT config has one), which stays f32.
fn quantize_block(b: &mut Block) -> Result<()> {
    for l in [&mut b.qkv, &mut b.out, &mut b.fc1, &mut b.fc2] {
        if !l.is_int8() && l.w_t.dim(0)? % Q8_BLOCK == 0 {
            l.quantize()?;
        }
    }
    Ok(())
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
/// (`F16` halves the browser download; `F32` undoes it); int8 tensors of a q8 file are scaled
/// back to floats and their scales dropped. Other tensors are copied unchanged.
/// The image tower's data comes first, so that the page can use it before the text tower is in.
pub fn convert_safetensors(bytes: &[u8], origin: &str, dtype: Dtype) -> Result<Vec<u8>> {
    if !matches!(dtype, Dtype::F16 | Dtype::F32) {
        bail!("conversion target must be F16 or F32, got {dtype:?}");
    }
    rewrite(bytes, origin, dtype, false)
}

/// Rewrites a safetensors buffer as a q8 checkpoint: the weights of the image tower's block
/// linear layers (q, k, v, output projection, MLP) as int8 blocks with their f16 scales (see
/// [`super::checkpoint::Q8_SCALES_SUFFIX`]), every other floating-point tensor (patch embedding,
/// norms, projection, the whole text tower) in f16. Loading it runs those layers in int8.
pub fn quantize_safetensors(bytes: &[u8], origin: &str) -> Result<Vec<u8>> {
    rewrite(bytes, origin, Dtype::F16, true)
}

/// Whether `name` is the weight of a block linear layer of the image tower, in either layout
/// (what a q8 checkpoint stores as int8).
pub fn is_vision_block_linear(name: &str) -> bool {
    const HF: [&str; 6] = [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.out_proj.weight",
        "mlp.fc1.weight",
        "mlp.fc2.weight",
    ];
    const OPEN_CLIP: [&str; 4] = [
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    ];
    (name.starts_with("vision_model.encoder.layers.") && HF.iter().any(|s| name.ends_with(s)))
        || (name.starts_with("visual.transformer.resblocks.") && OPEN_CLIP.iter().any(|s| name.ends_with(s)))
}

/// Candle's Q8_0 blocks of `values` (`[rows, cols]`, cols a multiple of [`Q8_BLOCK`]), split
/// into the int8 values and the f16 scales, as little-endian bytes.
fn q8_blocks(values: Vec<f32>, rows: usize, cols: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
    let q = QTensor::quantize(&t, GgmlDType::Q8_0)?;
    let raw = q.data()?;
    const BLOCK_BYTES: usize = 2 + Q8_BLOCK; // BlockQ8_0: f16 scale, then 32 int8
    let blocks = rows * cols / Q8_BLOCK;
    if raw.len() != blocks * BLOCK_BYTES {
        bail!("unexpected Q8_0 storage: {} bytes for {blocks} blocks", raw.len());
    }
    let mut ints = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(blocks * 2);
    for b in raw.chunks_exact(BLOCK_BYTES) {
        scales.extend_from_slice(&b[..2]);
        ints.extend_from_slice(&b[2..]);
    }
    Ok((ints, scales))
}

fn rewrite(bytes: &[u8], origin: &str, dtype: Dtype, q8: bool) -> Result<Vec<u8>> {
    let src = SafetensorsSource::new(bytes, origin)?;
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let names = src.names();
    for name in &names {
        let view = src.st.tensor(name)?;
        let shape = view.shape().to_vec();
        if name.ends_with(Q8_SCALES_SUFFIX) && names.contains(&name[..name.len() - Q8_SCALES_SUFFIX.len()].to_string())
        {
            continue; // written again (q8) or applied (f16/f32) with its tensor
        }
        let is_float = matches!(
            view.dtype(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 | Dtype::I8
        );
        if !is_float || (view.dtype() == Dtype::I8 && !src.is_q8(name)) {
            data.push((name.clone(), view.dtype(), shape, view.data().to_vec()));
            continue;
        }
        // Floats, checked, with int8 tensors scaled back.
        let v = src.get(name, &shape)?.flatten_all()?.to_vec1::<f32>()?;
        let quantize = q8 && is_vision_block_linear(name) && q8_scales_shape(&shape).is_ok();
        if quantize {
            let (ints, scales) = q8_blocks(v, shape[0], shape[1])?;
            let scales_shape = q8_scales_shape(&shape)?.to_vec();
            data.push((format!("{name}{Q8_SCALES_SUFFIX}"), Dtype::F16, scales_shape, scales));
            data.push((name.clone(), Dtype::I8, shape, ints));
            continue;
        }
        let b: Vec<u8> = match dtype {
            Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        data.push((name.clone(), dtype, shape, b));
    }
    let views = data
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    serialize_vision_first(&views)
}
