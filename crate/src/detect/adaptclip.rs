//! AdaptCLIP (Gao et al., "AdaptCLIP: Adapting CLIP for Universal Visual Anomaly Detection",
//! AAAI 2026): three small learned adapters on a frozen CLIP ViT-L/14@336 run with DPAM, equal
//! to the official `test.py` with its published arguments (`--features_list 6 12 18 24 --n_ctx
//! 12 --vl_reduction 4 --pq_mid_dim 128 --pq_context`, σ = 4, average fusion).
//!
//! * **Textual adapter**: two learned contexts of [`N_CTX`] token vectors, each in the prompt
//!   `"X X … X."` in place of the X's; their text features are the learned class pair.
//! * **Static prompts**: the 7 normal / 4 anomalous states × 21 templates for the object
//!   `"object"` (WinCLIP's ensemble, [`super::prompts::winclip_ensemble`]), the raw features
//!   averaged per side, then L2-normalised.
//! * **Visual adapter**: two residual MLPs (`x + W₂ ReLU(BN(W₁ x))`, BatchNorm in eval mode), one
//!   on the un-normalised global feature, one on every layer-24 patch token, compared with the
//!   static pair.
//! * **Prompt-query adapter** (few-shot): each query patch is aligned to its nearest normal
//!   reference patch (cosine) at layers 6, 12, 18, 24; the residual `q + |q − r|` goes through a
//!   BatchNorm and a small conv / transposed-conv head (patch map) and an MLP (image logit).
//!
//! Zero-shot: map = Gaussian σ=4 of the mean of the visual and textual maps; score = mean of the
//! visual score, the textual score and the map's maximum. Few-shot (k normal references): the
//! map is the harmonic mean of the mean of the visual, textual and prompt-query maps with the
//! alignment distance map (harmonic over the four layers), then the Gaussian; the score the
//! harmonic mean of the mean of the three image scores with the map's maximum.
//!
//! The image features ([`Features`]) are those of the DPAM encoder: the global feature is the
//! class token of the plain stream through the projection (no `ln_post`), the layer tokens the
//! value-to-value stream through `ln_post` and the projection.
use super::aggregate::{bilinear_resize, harmonic_mean_maps};
use super::learned::{dpam_on, gaussian_filter, DPAM_BLOCKS, TEMPERATURE};
use super::passes::Passes;
use super::{Detection, TextPair};
use crate::model::{Clip, TextTower};
use crate::tokenizer::{ClipTokenizer, Padding};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use std::collections::HashMap;

/// Learned context tokens per prompt (`--n_ctx 12`).
pub const N_CTX: usize = 12;
/// The layers whose tokens AdaptCLIP reads (`--features_list 6 12 18 24`, 1-based block outputs);
/// the adapters on text read the last one.
pub const FEATURE_LAYERS: [usize; 4] = [6, 12, 18, 24];
pub use super::learned::SIGMA;
/// The object name of the static prompts.
pub const OBJECT: &str = "object";
/// Patches averaged with the mean for the prompt-query adapter's image feature (`topk(10)`).
pub const PQ_TOPK: usize = 10;
/// BatchNorm's ε (PyTorch's default, which the official modules use).
pub const BN_EPS: f64 = 1e-5;

/// The prompt the learned contexts are written into: `"X X … X."` with [`N_CTX`] X's.
pub fn learned_prompt() -> String {
    let mut s = ["X"; N_CTX].join(" ");
    s.push('.');
    s
}

/// The static ensemble: `(normal, anomalous)` prompts for [`OBJECT`] (147 and 84).
pub fn static_prompts() -> (Vec<String>, Vec<String>) {
    super::prompts::winclip_ensemble(OBJECT)
}

fn tensor<'a>(t: &'a HashMap<String, Tensor>, name: &str, shape: &[usize]) -> Result<&'a Tensor> {
    let v = t
        .get(name)
        .with_context(|| format!("the learned file has no tensor `{name}`"))?;
    if v.dims() != shape {
        bail!("learned tensor `{name}` has shape {:?}, expected {:?}", v.dims(), shape);
    }
    Ok(v)
}

fn dims_of(t: &HashMap<String, Tensor>, name: &str, rank: usize) -> Result<Vec<usize>> {
    let v = t
        .get(name)
        .with_context(|| format!("the learned file has no tensor `{name}`"))?;
    if v.rank() != rank {
        bail!("learned tensor `{name}` has shape {:?}, expected rank {rank}", v.dims());
    }
    Ok(v.dims().to_vec())
}

/// A BatchNorm in eval mode folded to a per-channel affine map: `y = x·scale + shift` with
/// `scale = γ / √(var + ε)`, `shift = β − mean·scale`.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// `[C]`.
    pub scale: Tensor,
    /// `[C]`.
    pub shift: Tensor,
}

impl BatchNorm {
    fn load(t: &HashMap<String, Tensor>, prefix: &str, c: usize) -> Result<Self> {
        let get = |n: &str| -> Result<Vec<f64>> {
            Ok(tensor(t, &format!("{prefix}.{n}"), &[c])?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect())
        };
        let (w, b, m, v) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        if let Some(i) = v.iter().position(|&x| x < 0.0) {
            bail!("learned tensor `{prefix}.running_var` is negative at {i}");
        }
        let scale: Vec<f64> = w.iter().zip(&v).map(|(w, v)| w / (v + BN_EPS).sqrt()).collect();
        let shift: Vec<f32> = b
            .iter()
            .zip(&m)
            .zip(&scale)
            .map(|((b, m), s)| (b - m * s) as f32)
            .collect();
        let scale: Vec<f32> = scale.into_iter().map(|s| s as f32).collect();
        Ok(Self {
            scale: Tensor::from_vec(scale, c, &Device::Cpu)?,
            shift: Tensor::from_vec(shift, c, &Device::Cpu)?,
        })
    }

    /// Applies it to `x: [M, C]` (channels last).
    pub fn rows(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?)
    }

    /// Applies it to `x: [B, C, H, W]` (channels first).
    pub fn planes(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.scale.dim(0)?;
        Ok(x.broadcast_mul(&self.scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.shift.reshape((1, c, 1, 1))?)?)
    }
}

/// A bias-free linear layer stored transposed, `[in, out]`.
fn linear_t(t: &HashMap<String, Tensor>, name: &str, out: usize, inp: usize) -> Result<Tensor> {
    Ok(tensor(t, name, &[out, inp])?.t()?.contiguous()?)
}

/// The visual adapter's residual MLP: `x + W₂ ReLU(BN(W₁ x))` (no biases).
#[derive(Clone, Debug)]
pub struct ResMlp {
    /// `W₁ᵀ`, `[D, D/r]`.
    pub down_t: Tensor,
    /// The BatchNorm after `W₁`.
    pub bn: BatchNorm,
    /// `W₂ᵀ`, `[D/r, D]`.
    pub up_t: Tensor,
}

impl ResMlp {
    fn load(t: &HashMap<String, Tensor>, prefix: &str, d: usize) -> Result<Self> {
        let dims = dims_of(t, &format!("{prefix}.fc.0.weight"), 2)?;
        let hidden = dims[0];
        if hidden == 0 || dims[1] != d {
            bail!(
                "learned tensor `{prefix}.fc.0.weight` has shape {dims:?}, expected [hidden, {d}] (the \
                 model's embedding width is {d})"
            );
        }
        Ok(Self {
            down_t: linear_t(t, &format!("{prefix}.fc.0.weight"), hidden, d)?,
            bn: BatchNorm::load(t, &format!("{prefix}.fc.1"), hidden)?,
            up_t: linear_t(t, &format!("{prefix}.fc.3.weight"), d, hidden)?,
        })
    }

    /// `x: [M, D]` → `[M, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn.rows(&x.matmul(&self.down_t)?)?.relu()?;
        Ok((x + h.matmul(&self.up_t)?)?)
    }
}

/// The visual adapter: one residual MLP for the global feature, one for the patch tokens.
#[derive(Clone, Debug)]
pub struct VisualAdapter {
    /// On the un-normalised global feature (`global_adapter`).
    pub global: ResMlp,
    /// On every layer-24 token (`local_adater`, sic, in the official state dict).
    pub local: ResMlp,
}

/// One layer's prompt-query head (`sharebn.{l}`, `local_adapter.{l}`, `global_adapter.{l}`).
#[derive(Clone, Debug)]
pub struct PqLayer {
    /// BatchNorm on the aligned residual, `[P]` channels.
    pub share_bn: BatchNorm,
    /// 3×3 conv P → mid, no bias: `[mid, P, 3, 3]`.
    pub conv1: Tensor,
    /// BatchNorm on `mid` channels.
    pub bn1: BatchNorm,
    /// 2×2 stride-2 transposed conv mid → mid: `[mid, mid, 2, 2]` and bias `[mid]`.
    pub up1: (Tensor, Tensor),
    /// 3×3 conv mid → mid/2, no bias.
    pub conv2: Tensor,
    /// BatchNorm on `mid/2` channels.
    pub bn2: BatchNorm,
    /// 2×2 stride-2 transposed conv mid/2 → mid/2, with bias.
    pub up2: (Tensor, Tensor),
    /// 1×1 conv mid/2 → 2, with bias.
    pub head: (Tensor, Tensor),
    /// Image MLP: `[P, mid]`ᵀ, BN, `[mid, mid/2]`ᵀ, BN, `[mid/2, 2]`ᵀ (no biases).
    pub mlp: (Tensor, BatchNorm, Tensor, BatchNorm, Tensor),
}

/// The prompt-query adapter (few-shot), one head per layer of [`FEATURE_LAYERS`].
#[derive(Clone, Debug)]
pub struct PqAdapter {
    /// Heads for layers 6, 12, 18, 24.
    pub layers: Vec<PqLayer>,
}

impl PqAdapter {
    fn load(t: &HashMap<String, Tensor>, p: usize) -> Result<Self> {
        let dims = dims_of(t, "pq_learner.local_adapter.0.0.weight", 4)?;
        let mid = dims[0];
        if mid < 2 || mid % 2 != 0 || dims[1..] != [p, 3, 3] {
            bail!(
                "learned tensor `pq_learner.local_adapter.0.0.weight` has shape {dims:?}, expected [mid, \
                 {p}, 3, 3] with an even mid"
            );
        }
        let half = mid / 2;
        let layers = (0..FEATURE_LAYERS.len())
            .map(|l| {
                // The official adapter repeats one head module for every layer (one set of
                // weights); a converted file keeps layer 0 only.
                let shared = |part: &str| {
                    if t.contains_key(&format!("pq_learner.{part}.{l}.0.weight")) {
                        l
                    } else {
                        0
                    }
                };
                let (ll, gl) = (shared("local_adapter"), shared("global_adapter"));
                let loc = |i: usize, n: &str| format!("pq_learner.local_adapter.{ll}.{i}.{n}");
                let glo = |i: usize, n: &str| format!("pq_learner.global_adapter.{gl}.{i}.{n}");
                Ok(PqLayer {
                    share_bn: BatchNorm::load(t, &format!("pq_learner.sharebn.{l}"), p)?,
                    conv1: tensor(t, &loc(0, "weight"), &[mid, p, 3, 3])?.clone(),
                    bn1: BatchNorm::load(t, &format!("pq_learner.local_adapter.{ll}.1"), mid)?,
                    up1: (
                        tensor(t, &loc(3, "weight"), &[mid, mid, 2, 2])?.clone(),
                        tensor(t, &loc(3, "bias"), &[mid])?.clone(),
                    ),
                    conv2: tensor(t, &loc(4, "weight"), &[half, mid, 3, 3])?.clone(),
                    bn2: BatchNorm::load(t, &format!("pq_learner.local_adapter.{ll}.5"), half)?,
                    up2: (
                        tensor(t, &loc(7, "weight"), &[half, half, 2, 2])?.clone(),
                        tensor(t, &loc(7, "bias"), &[half])?.clone(),
                    ),
                    head: (
                        tensor(t, &loc(8, "weight"), &[2, half, 1, 1])?.clone(),
                        tensor(t, &loc(8, "bias"), &[2])?.clone(),
                    ),
                    mlp: (
                        linear_t(t, &glo(0, "weight"), mid, p)?,
                        BatchNorm::load(t, &format!("pq_learner.global_adapter.{gl}.1"), mid)?,
                        linear_t(t, &glo(3, "weight"), half, mid)?,
                        BatchNorm::load(t, &format!("pq_learner.global_adapter.{gl}.4"), half)?,
                        linear_t(t, &glo(6, "weight"), 2, half)?,
                    ),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }
}

/// The learned parameters of an AdaptCLIP checkpoint (`textual_learner`, `visual_learner` and,
/// when present, `pq_learner`), read from the official `.pth` or its converted safetensors
/// (same tensor names, `<learner>.<name>`).
#[derive(Clone, Debug)]
pub struct Learned {
    /// Normal context (`textual_learner.ctx_pos`), `[N_CTX, Dt]`.
    pub ctx_normal: Tensor,
    /// Anomalous context (`textual_learner.ctx_neg`), `[N_CTX, Dt]`.
    pub ctx_anomalous: Tensor,
    /// The visual adapter.
    pub visual: VisualAdapter,
    /// The prompt-query adapter; `None` in a zero-shot-only file.
    pub pq: Option<PqAdapter>,
}

/// The top-level keys of the official checkpoint.
pub const LEARNERS: [&str; 3] = ["textual_learner", "visual_learner", "pq_learner"];

impl Learned {
    /// Builds the learned parts from named tensors (`textual_learner.ctx_pos`, …) for a model
    /// with embedding width `embed_dim` (P) and text width `text_width` (Dt). Errors name the
    /// missing or misshapen tensor.
    pub fn from_tensors(t: &HashMap<String, Tensor>, embed_dim: usize, text_width: usize) -> Result<Self> {
        let ctx = |name: &str| -> Result<Tensor> {
            let full = format!("textual_learner.{name}");
            let v = t
                .get(&full)
                .with_context(|| format!("the learned file has no tensor `{full}` (not an AdaptCLIP checkpoint?)"))?;
            if v.elem_count() != N_CTX * text_width || v.dims().last() != Some(&text_width) {
                bail!(
                    "learned tensor `{full}` has shape {:?}, expected {N_CTX} context vectors of the text \
                     width {text_width} ([1, 1, {N_CTX}, {text_width}])",
                    v.dims()
                );
            }
            Ok(v.reshape((N_CTX, text_width))?)
        };
        let pq = if t.keys().any(|k| k.starts_with("pq_learner.")) {
            Some(PqAdapter::load(t, embed_dim)?)
        } else {
            None
        };
        Ok(Self {
            ctx_normal: ctx("ctx_pos")?,
            ctx_anomalous: ctx("ctx_neg")?,
            visual: VisualAdapter {
                global: ResMlp::load(t, "visual_learner.global_adapter", embed_dim)?,
                local: ResMlp::load(t, "visual_learner.local_adater", embed_dim)?,
            },
            pq,
        })
    }

    /// Reads the learned tensors from safetensors bytes (a converted file).
    pub fn tensors_from_safetensors(bytes: &[u8], origin: &str) -> Result<HashMap<String, Tensor>> {
        use crate::model::TensorSource;
        let src = crate::model::SafetensorsSource::new(bytes, origin)?;
        let st = safetensors::SafeTensors::deserialize(bytes)?;
        let mut out = HashMap::new();
        for (name, view) in st.tensors() {
            let float = matches!(
                view.dtype(),
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16 | safetensors::Dtype::F64
            );
            if float {
                out.insert(name.clone(), src.get(&name, view.shape())?);
            }
        }
        Ok(out)
    }

    /// Checks that the state dicts of a `torch.save` file (`origin` in errors) hold the official
    /// checkpoint's textual and visual learners.
    pub fn check_official(t: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        for key in &LEARNERS[..2] {
            if !t
                .keys()
                .any(|k| k.strip_prefix(key).is_some_and(|r| r.starts_with('.')))
            {
                bail!(
                    "{origin}: no `{key}` state dict (not an official AdaptCLIP checkpoint, which holds {})",
                    LEARNERS.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Reads a learned file: the official `torch.save` checkpoint or its safetensors conversion
    /// (told apart by their first bytes).
    #[cfg(not(target_arch = "wasm32"))]
    #[cfg(not(target_arch = "wasm32"))] // reads files (torch checkpoints): native only
    pub fn read_tensors(path: &std::path::Path) -> Result<HashMap<String, Tensor>> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if crate::model::pth::is_torch_zip(&bytes) {
            let t = crate::model::pth::read_state_dicts(path)?;
            Self::check_official(&t, &path.display().to_string())?;
            Ok(t)
        } else {
            Self::tensors_from_safetensors(&bytes, &path.display().to_string())
        }
    }
}

impl AdaptClip {
    /// Random adapters and class pairs of the published shapes (reduction 4, prompt-query width
    /// 128) for a model of embedding width `p`: what `anoscope bench` times (the numbers cost the
    /// same as real ones).
    pub fn random(p: usize, text_width: usize) -> Result<Self> {
        fn put(t: &mut HashMap<String, Tensor>, name: String, dims: &[usize], std: f32) -> Result<()> {
            t.insert(name, Tensor::randn(0f32, std, dims, &Device::Cpu)?);
            Ok(())
        }
        fn bn(t: &mut HashMap<String, Tensor>, prefix: &str, c: usize) -> Result<()> {
            for n in ["weight", "bias", "running_mean"] {
                put(t, format!("{prefix}.{n}"), &[c], 0.1)?;
            }
            t.insert(
                format!("{prefix}.running_var"),
                Tensor::ones(c, candle_core::DType::F32, &Device::Cpu)?,
            );
            Ok(())
        }
        let mut t = HashMap::new();
        put(
            &mut t,
            "textual_learner.ctx_pos".into(),
            &[1, 1, N_CTX, text_width],
            0.02,
        )?;
        put(
            &mut t,
            "textual_learner.ctx_neg".into(),
            &[1, 1, N_CTX, text_width],
            0.02,
        )?;
        let r = (p / 4).max(1);
        for side in ["global_adapter", "local_adater"] {
            put(&mut t, format!("visual_learner.{side}.fc.0.weight"), &[r, p], 0.05)?;
            bn(&mut t, &format!("visual_learner.{side}.fc.1"), r)?;
            put(&mut t, format!("visual_learner.{side}.fc.3.weight"), &[p, r], 0.05)?;
        }
        let (mid, half) = (128, 64);
        for l in 0..FEATURE_LAYERS.len() {
            bn(&mut t, &format!("pq_learner.sharebn.{l}"), p)?;
        }
        let loc = |i: usize, n: &str| format!("pq_learner.local_adapter.0.{i}.{n}");
        put(&mut t, loc(0, "weight"), &[mid, p, 3, 3], 0.02)?;
        bn(&mut t, "pq_learner.local_adapter.0.1", mid)?;
        put(&mut t, loc(3, "weight"), &[mid, mid, 2, 2], 0.05)?;
        put(&mut t, loc(3, "bias"), &[mid], 0.05)?;
        put(&mut t, loc(4, "weight"), &[half, mid, 3, 3], 0.05)?;
        bn(&mut t, "pq_learner.local_adapter.0.5", half)?;
        put(&mut t, loc(7, "weight"), &[half, half, 2, 2], 0.05)?;
        put(&mut t, loc(7, "bias"), &[half], 0.05)?;
        put(&mut t, loc(8, "weight"), &[2, half, 1, 1], 0.05)?;
        put(&mut t, loc(8, "bias"), &[2], 0.05)?;
        let glo = |i: usize| format!("pq_learner.global_adapter.0.{i}.weight");
        put(&mut t, glo(0), &[mid, p], 0.05)?;
        bn(&mut t, "pq_learner.global_adapter.0.1", mid)?;
        put(&mut t, glo(3), &[half, mid], 0.05)?;
        bn(&mut t, "pq_learner.global_adapter.0.4", half)?;
        put(&mut t, glo(6), &[2, half], 0.05)?;
        let pair = || -> Result<TextPair> {
            TextPair::new(
                Tensor::randn(0f32, 1f32, p, &Device::Cpu)?.to_vec1()?,
                Tensor::randn(0f32, 1f32, p, &Device::Cpu)?.to_vec1()?,
            )
        };
        Ok(Self {
            learned: Learned::from_tensors(&t, p, text_width)?,
            text: TextPairs {
                fixed: pair()?,
                learned: pair()?,
            },
        })
    }
}

/// Whether `path` is an AdaptCLIP learned file (an official checkpoint with a
/// `textual_learner`, or a conversion with its tensors), for commands that take either learned
/// format.
#[cfg(not(target_arch = "wasm32"))]
#[cfg(not(target_arch = "wasm32"))] // reads files (torch checkpoints): native only
pub fn is_adaptclip_file(path: &std::path::Path) -> Result<bool> {
    match Learned::read_tensors(path) {
        Ok(t) => Ok(t.keys().any(|k| k.starts_with("textual_learner."))),
        Err(_) => Ok(false),
    }
}

/// Projected text feature `[P]` (not normalised) of a prompt whose token embeddings at positions
/// `1..=N_CTX` are replaced by `ctx: [N_CTX, Dt]` (the official `encode_text_learn`).
pub fn encode_with_context(text: &TextTower, tokenizer: &ClipTokenizer, ctx: &Tensor) -> Result<Vec<f32>> {
    let w = &text.w;
    let dt = text.cfg.text.width;
    let ids = tokenizer.encode_padded(&learned_prompt(), Padding::OpenClip)?.to_vec();
    let eot = crate::model::ops::eot_positions(std::slice::from_ref(&ids))[0];
    if eot < N_CTX + 1 {
        bail!("the learned prompt tokenised to {} tokens", eot + 1);
    }
    let len = eot + 1;
    let ids = Tensor::from_vec(ids[..len].to_vec(), len, &Device::Cpu)?;
    let emb = w.token_embedding.index_select(&ids, 0)?;
    let emb = Tensor::cat(
        &[
            emb.narrow(0, 0, 1)?,
            ctx.clone(),
            emb.narrow(0, N_CTX + 1, len - N_CTX - 1)?,
        ],
        0,
    )?;
    let mut x = (emb + w.pos_embedding.narrow(0, 0, len)?)?.reshape((1, len, dt))?;
    let mask = crate::model::ops::causal_mask(len)?;
    for blk in &w.blocks {
        x = blk
            .forward(&x, text.cfg.text.heads, text.cfg.text.act, Some(&mask), false)?
            .x;
    }
    let x = w.ln_final.forward(&x)?;
    Ok(x.get(0)?
        .get(eot)?
        .reshape((1, dt))?
        .matmul(&w.proj)?
        .flatten_all()?
        .to_vec1()?)
}

/// The two class pairs AdaptCLIP compares against: the static ensemble and the learned prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct TextPairs {
    /// The static ensemble (the visual adapter's reference).
    pub fixed: TextPair,
    /// The learned prompts (the textual adapter).
    pub learned: TextPair,
}

impl TextPairs {
    /// Encodes both pairs with `clip`'s text tower.
    pub fn encode(clip: &Clip, tokenizer: &ClipTokenizer, learned: &Learned) -> Result<Self> {
        let text = clip
            .text
            .as_ref()
            .context("AdaptCLIP needs the text tower (this checkpoint is vision-only)")?;
        let (n, a) = static_prompts();
        let fixed = TextPair::from_prompts(clip, tokenizer, &n, &a)?;
        let learned = TextPair::new(
            encode_with_context(text, tokenizer, &learned.ctx_normal)?,
            encode_with_context(text, tokenizer, &learned.ctx_anomalous)?,
        )?;
        Ok(Self { fixed, learned })
    }
}

/// Name of the static pair in a converted file: `[2, P]`, unit rows (normal, anomalous).
pub const STATIC_TEXT: &str = "adaptclip.static_text";
/// Name of the learned pair in a converted file: `[2, P]`, unit rows (normal, anomalous).
pub const LEARNED_TEXT: &str = "adaptclip.learned_text";
/// Largest learned file accepted, in bytes (the published one is about 8 MB).
pub const MAX_LEARNED_BYTES: u64 = 256 << 20;

/// The learned side of a ready AdaptCLIP detector: the adapters and both class pairs.
#[derive(Clone, Debug)]
pub struct AdaptClip {
    /// The adapters.
    pub learned: Learned,
    /// The static and the learned class pair.
    pub text: TextPairs,
}

fn stored_pair(t: &HashMap<String, Tensor>, name: &str, dim: usize) -> Result<Option<TextPair>> {
    let Some(v) = t.get(name) else {
        return Ok(None);
    };
    if v.dims() != [2, dim] {
        bail!(
            "`{name}` has shape {:?}, expected [2, {dim}] (another model's file?)",
            v.dims()
        );
    }
    let rows = v.to_vec2::<f32>()?;
    Ok(Some(TextPair::new(rows[0].clone(), rows[1].clone())?))
}

impl AdaptClip {
    /// From named tensors (official names): the class pairs stored in a converted file when it
    /// has them (then the text tower is not needed), otherwise encoded with `clip`'s text tower.
    pub fn from_tensors(clip: &Clip, t: &HashMap<String, Tensor>) -> Result<Self> {
        let dim = clip.cfg.embed_dim;
        let learned = Learned::from_tensors(t, dim, clip.cfg.text.width)?;
        let text = match (stored_pair(t, STATIC_TEXT, dim)?, stored_pair(t, LEARNED_TEXT, dim)?) {
            (Some(fixed), Some(learned)) => TextPairs { fixed, learned },
            (None, None) => TextPairs::encode(clip, ClipTokenizer::shared()?, &learned)?,
            _ => bail!("a converted AdaptCLIP file needs both `{STATIC_TEXT}` and `{LEARNED_TEXT}`"),
        };
        Ok(Self { learned, text })
    }

    /// From the bytes of a converted (safetensors) file.
    pub fn from_safetensors(clip: &Clip, bytes: &[u8], origin: &str) -> Result<Self> {
        if bytes.len() as u64 > MAX_LEARNED_BYTES {
            bail!("{origin}: over the learned-file size limit of {MAX_LEARNED_BYTES} bytes");
        }
        Self::from_tensors(clip, &Learned::tensors_from_safetensors(bytes, origin)?)
            .with_context(|| format!("{origin}: not AdaptCLIP parameters for this model"))
    }

    /// Reads `--learned FILE`: the official `.pth` or its conversion.
    #[cfg(not(target_arch = "wasm32"))]
    #[cfg(not(target_arch = "wasm32"))] // reads files (torch checkpoints): native only
    pub fn read_file(clip: &Clip, path: &std::path::Path) -> Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if size > MAX_LEARNED_BYTES {
            bail!(
                "{}: {size} bytes is over the learned-file size limit of {MAX_LEARNED_BYTES} bytes",
                path.display()
            );
        }
        Self::from_tensors(clip, &Learned::read_tensors(path)?)
            .with_context(|| format!("{}: not AdaptCLIP parameters for this model", path.display()))
    }
}

/// The converted form of a learned file: the learned floats under their official names, stored as
/// `dtype` (F16 or F32), without the token-embedding buffers (`token_prefix_*`, `token_suffix_*`:
/// the CLIP's own token embeddings) and with one copy of the prompt-query heads the official
/// module repeats for every layer, plus both class pairs ([`STATIC_TEXT`], [`LEARNED_TEXT`]) so
/// that the page needs no text tower. `t` is checked to be a valid AdaptCLIP file first.
pub fn convert(clip: &Clip, t: &HashMap<String, Tensor>, dtype: safetensors::Dtype) -> Result<Vec<u8>> {
    if !matches!(dtype, safetensors::Dtype::F16 | safetensors::Dtype::F32) {
        bail!("learned parameters are stored as F16 or F32, not {dtype:?}");
    }
    let ready = AdaptClip::from_tensors(clip, t)?;
    let same = |a: &Tensor, b: &Tensor| -> Result<bool> {
        Ok(a.dims() == b.dims() && a.flatten_all()?.to_vec1::<f32>()? == b.flatten_all()?.to_vec1::<f32>()?)
    };
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    for name in names {
        if name.starts_with("textual_learner.token_") || name == STATIC_TEXT || name == LEARNED_TEXT {
            continue;
        }
        let repeat = ["pq_learner.local_adapter.", "pq_learner.global_adapter."]
            .iter()
            .find_map(|p| name.strip_prefix(p).map(|rest| (p, rest)))
            .and_then(|(p, rest)| {
                let (layer, tail) = rest.split_once('.')?;
                (layer != "0").then(|| format!("{p}0.{tail}"))
            });
        if let Some(first) = repeat {
            if let Some(f) = t.get(&first) {
                if same(f, &t[name])? {
                    continue;
                }
            }
        }
        out.push((name.clone(), t[name].clone()));
    }
    for (name, pair) in [(STATIC_TEXT, &ready.text.fixed), (LEARNED_TEXT, &ready.text.learned)] {
        let rows = [pair.normal.clone(), pair.anomalous.clone()].concat();
        out.push((name.to_string(), Tensor::from_vec(rows, (2, pair.dim()), &Device::Cpu)?));
    }
    super::learned::serialize(&out, dtype)
}

/// The DPAM encoder's features of one image that AdaptCLIP reads.
#[derive(Clone, Debug)]
pub struct Features {
    /// The global feature `[P]`, not normalised (plain stream's class token @ proj, no ln_post).
    pub global: Vec<f32>,
    /// Patch tokens `[N, P]` (class token excluded) at each of [`FEATURE_LAYERS`], in order.
    pub layers: Vec<Tensor>,
    /// Patch grid `(rows, columns)`, `N = rows·columns`.
    pub grid: (usize, usize),
}

impl Features {
    /// Checks the shapes against the embedding width `dim`; `all_layers`: every layer of
    /// [`FEATURE_LAYERS`] must be there (few-shot), otherwise the last one suffices (zero-shot).
    fn check(&self, dim: usize, all_layers: bool) -> Result<()> {
        if self.global.len() != dim {
            bail!(
                "global feature has {} dimensions, the learned parts {dim}",
                self.global.len()
            );
        }
        if self.layers.is_empty() || (all_layers && self.layers.len() != FEATURE_LAYERS.len()) {
            bail!(
                "AdaptCLIP needs tokens of {} layers, got {}",
                if all_layers { FEATURE_LAYERS.len() } else { 1 },
                self.layers.len()
            );
        }
        let n = self.grid.0 * self.grid.1;
        for t in &self.layers {
            if t.dims() != [n, dim] {
                bail!("layer tokens have shape {:?}, expected [{n}, {dim}]", t.dims());
            }
        }
        Ok(())
    }
}

fn check_tower(clip: &Clip) -> Result<()> {
    let layers = clip.cfg.vision.layers;
    let deepest = FEATURE_LAYERS[FEATURE_LAYERS.len() - 1];
    if layers != deepest {
        bail!(
            "AdaptCLIP reads blocks {FEATURE_LAYERS:?} of a {deepest}-block image tower (CLIP ViT-L/14@336) with \
             DPAM in the last {DPAM_BLOCKS}; this one has {layers} blocks"
        );
    }
    Ok(())
}

/// The features of every image of normalised `pixels: [B, 3, H, W]` at every layer of
/// [`FEATURE_LAYERS`] (few-shot needs them all), from one DPAM pass on the CPU: the plain and the
/// value-to-value stream run side by side as in [`super::learned`], and the v-v stream (the plain
/// one before DPAM starts) is projected after each of those blocks, as the official
/// `encode_image(…, features_list, DPAM_layer=20)` returns it. Position embeddings are resampled
/// as `clip`'s configuration says ([`super::learned::use_official_pos_interp`]).
pub fn encode(clip: &Clip, pixels: &Tensor) -> Result<Vec<Features>> {
    check_tower(clip)?;
    let tower = &clip.vision;
    let v = &tower.cfg.vision;
    let (_, _, h, w) = pixels
        .dims4()
        .map_err(|_| anyhow::anyhow!("pixels must be [B, 3, H, W], got {:?}", pixels.dims()))?;
    let grid = tower.grid_for(h, w)?;
    let n = grid.0 * grid.1;
    let mut x = tower.w.ln_pre.forward(&tower.embed(pixels)?)?;
    let first_vv = v.layers - DPAM_BLOCKS;
    let mut vv: Option<Tensor> = None;
    let mut kept: Vec<Tensor> = Vec::new();
    for (i, blk) in tower.w.blocks.iter().enumerate() {
        let dual = i >= first_vv;
        if dual && vv.is_none() {
            vv = Some(x.clone());
        }
        let out = blk.forward(&x, v.heads, v.act, None, dual)?;
        crate::model::interrupt::check()?;
        if let (Some(s), Some(a)) = (vv.as_mut(), out.vv) {
            *s = (&*s + a)?;
        }
        x = out.x;
        if FEATURE_LAYERS.contains(&(i + 1)) {
            let stream = vv.as_ref().unwrap_or(&x);
            kept.push(tower.project(&stream.narrow(1, 1, n)?)?);
        }
    }
    let global = x.narrow(1, 0, 1)?.squeeze(1)?.matmul(&tower.w.proj)?.to_vec2::<f32>()?;
    global
        .into_iter()
        .enumerate()
        .map(|(b, g)| {
            Ok(Features {
                global: g,
                layers: kept.iter().map(|t| t.get(b)).collect::<candle_core::Result<_>>()?,
                grid,
            })
        })
        .collect()
}

/// The zero-shot features (global and layer-24 tokens) of every image of `pixels`, from the
/// shared DPAM pass ([`super::learned::dpam_on`]), which an accelerator can run.
pub async fn encode_last_on(clip: &Clip, tower: &impl Passes, pixels: &Tensor) -> Result<Vec<Features>> {
    check_tower(clip)?;
    let f = dpam_on(clip, tower, pixels).await?;
    let tokens = f
        .output
        .surgery_tokens
        .as_ref()
        .context("the DPAM pass returned no v-v tokens")?;
    f.global
        .into_iter()
        .enumerate()
        .map(|(b, g)| {
            Ok(Features {
                global: g,
                layers: vec![tokens.get(b)?],
                grid: f.grid,
            })
        })
        .collect()
}

/// Rows of `x: [M, D]` scaled to unit length (`F.normalize`, floor 1e-12).
fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&n)?)
}

/// Anomalous probability of each row of `x: [N, P]` against a pair.
fn row_scores(x: &Tensor, pair: &TextPair) -> Result<Vec<f32>> {
    Ok(x.to_vec2::<f32>()?.iter().map(|r| pair.score(r, TEMPERATURE)).collect())
}

/// The zero-shot branches of one image before fusion.
#[derive(Clone, Debug)]
pub struct ZeroShotParts {
    /// Visual adapter's image score.
    pub visual_score: f32,
    /// Textual adapter's image score.
    pub textual_score: f32,
    /// Visual adapter's patch map on the grid.
    pub visual_grid: Vec<f32>,
    /// Textual adapter's patch map on the grid.
    pub textual_grid: Vec<f32>,
}

/// The visual and textual branches (scores and grid maps) of one image.
pub fn zero_shot_parts(learned: &Learned, text: &TextPairs, f: &Features) -> Result<ZeroShotParts> {
    let dim = text.fixed.dim();
    f.check(dim, false)?;
    let g = Tensor::from_vec(f.global.clone(), (1, dim), &Device::Cpu)?;
    let adapted = learned.visual.global.forward(&g)?.flatten_all()?.to_vec1::<f32>()?;
    let tokens = f.layers.last().expect("checked");
    let local = learned.visual.local.forward(tokens)?;
    Ok(ZeroShotParts {
        visual_score: text.fixed.score(&adapted, TEMPERATURE),
        textual_score: text.learned.score(&f.global, TEMPERATURE),
        visual_grid: row_scores(&local, &text.fixed)?,
        textual_grid: row_scores(tokens, &text.learned)?,
    })
}

fn check_size(f: &Features, size: (usize, usize)) -> Result<()> {
    if size.0 == 0 || size.1 == 0 {
        bail!("the map size must be positive, got {}×{}", size.0, size.1);
    }
    if f.grid.0 == 0 || f.grid.1 == 0 {
        bail!("empty patch grid");
    }
    Ok(())
}

/// Zero-shot AdaptCLIP on one image's features; the map is `size = (height, width)` (the input's).
pub fn zero_shot(learned: &Learned, text: &TextPairs, f: &Features, size: (usize, usize)) -> Result<Detection> {
    check_size(f, size)?;
    let p = zero_shot_parts(learned, text, f)?;
    let (gh, gw) = f.grid;
    let (h, w) = size;
    let vl = bilinear_resize(&p.visual_grid, gh, gw, h, w);
    let tl = bilinear_resize(&p.textual_grid, gh, gw, h, w);
    let raw: Vec<f32> = vl.iter().zip(&tl).map(|(a, b)| (a + b) / 2.0).collect();
    let map = gaussian_filter(&raw, h, w, SIGMA)?;
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let score = (p.visual_score + p.textual_score + max) / 3.0;
    Ok(Detection {
        score,
        map,
        height: h,
        width: w,
        grid_map: p
            .visual_grid
            .iter()
            .zip(&p.textual_grid)
            .map(|(a, b)| (a + b) / 2.0)
            .collect(),
        grid: f.grid,
    })
}

/// Normal reference features for few-shot AdaptCLIP: per layer, every reference patch token,
/// unit-normalised, stacked `[S·N, P]`.
#[derive(Clone, Debug)]
pub struct References {
    /// One `[S·N, P]` matrix per layer of [`FEATURE_LAYERS`].
    pub layers: Vec<Tensor>,
    /// Number of reference images S.
    pub count: usize,
}

impl References {
    /// Collects the references' features (at least one image; all of one grid).
    pub fn new(feats: &[Features]) -> Result<Self> {
        let first = feats
            .first()
            .context("few-shot AdaptCLIP needs at least one normal reference image")?;
        if feats.iter().any(|f| f.layers.len() != FEATURE_LAYERS.len()) {
            bail!("AdaptCLIP references need tokens of {} layers", FEATURE_LAYERS.len());
        }
        if feats.iter().any(|f| f.grid != first.grid) {
            bail!("reference images must share one patch grid (same input size)");
        }
        let layers = (0..FEATURE_LAYERS.len())
            .map(|l| {
                let rows: Vec<Tensor> = feats.iter().map(|f| f.layers[l].clone()).collect();
                normalize_rows(&Tensor::cat(&rows, 0)?)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            count: feats.len(),
        })
    }
}

/// The prompt-query branch of one image: `(image score, patch map at size, alignment map at size)`.
pub fn prompt_query(
    pq: &PqAdapter,
    f: &Features,
    refs: &References,
    size: (usize, usize),
) -> Result<(f32, Vec<f32>, Vec<f32>)> {
    f.check(refs.layers[0].dim(1)?, true)?;
    if pq.layers.len() != FEATURE_LAYERS.len() || refs.layers.len() != FEATURE_LAYERS.len() {
        bail!(
            "the prompt-query adapter and the references need {} layers",
            FEATURE_LAYERS.len()
        );
    }
    let (gh, gw) = f.grid;
    let (h, w) = size;
    let n = gh * gw;
    let mut maps: Vec<Vec<f32>> = Vec::new();
    let mut aligns: Vec<Vec<f32>> = Vec::new();
    let mut probs = Vec::new();
    for (l, head) in pq.layers.iter().enumerate() {
        let q = normalize_rows(&f.layers[l])?;
        let r = &refs.layers[l];
        if r.dim(1)? != q.dim(1)? {
            bail!(
                "reference tokens have {} dimensions, the query {}",
                r.dim(1)?,
                q.dim(1)?
            );
        }
        // Nearest reference patch by cosine distance (first on ties).
        let dist = (1.0 - q.matmul(&r.t()?)?)?.to_vec2::<f32>()?;
        let mut align = Vec::with_capacity(n);
        let mut idx = Vec::with_capacity(n);
        for row in &dist {
            let (i, d) = row.iter().enumerate().fold(
                (0, f32::INFINITY),
                |(bi, bd), (i, &d)| if d < bd { (i, d) } else { (bi, bd) },
            );
            align.push(d);
            idx.push(i as u32);
        }
        aligns.push(bilinear_resize(&align, gh, gw, h, w));
        let nearest = r.index_select(&Tensor::from_vec(idx, n, &Device::Cpu)?, 0)?;
        let fused = (&q + (&q - &nearest)?.abs()?)?;
        let fused = head.share_bn.rows(&fused)?; // [N, P]
        let p = fused.dim(1)?;
        // Patch head on the grid.
        let x = fused.t()?.contiguous()?.reshape((1, p, gh, gw))?;
        let x = head.bn1.planes(&x.conv2d(&head.conv1, 1, 1, 1, 1)?)?.relu()?;
        let x = x.conv_transpose2d(&head.up1.0, 0, 0, 2, 1)?;
        let x = x.broadcast_add(&head.up1.1.reshape((1, (), 1, 1))?)?;
        let x = head.bn2.planes(&x.conv2d(&head.conv2, 1, 1, 1, 1)?)?.relu()?;
        let x = x.conv_transpose2d(&head.up2.0, 0, 0, 2, 1)?;
        let x = x.broadcast_add(&head.up2.1.reshape((1, (), 1, 1))?)?;
        let x = x.conv2d(&head.head.0, 0, 1, 1, 1)?;
        let x = x.broadcast_add(&head.head.1.reshape((1, 2, 1, 1))?)?;
        let (_, _, oh, ow) = x.dims4()?;
        let x = candle_nn::ops::softmax(&x, 1)?;
        let anomalous = x.get(0)?.get(1)?.flatten_all()?.to_vec1::<f32>()?;
        maps.push(bilinear_resize(&anomalous, oh, ow, h, w));
        // Image head: per channel, the mean of the patch mean and the mean of the top 10.
        let cols = fused.t()?.contiguous()?.to_vec2::<f32>()?; // [P, N]
        let k = PQ_TOPK.min(n);
        let pooled: Vec<f32> = cols
            .iter()
            .map(|c| {
                let mean = c.iter().sum::<f32>() / n as f32;
                let mut s = c.clone();
                s.sort_by(|a, b| b.total_cmp(a));
                let top = s[..k].iter().sum::<f32>() / k as f32;
                (mean + top) / 2.0
            })
            .collect();
        let (w1, b1, w2, b2, w3) = &head.mlp;
        let v = Tensor::from_vec(pooled, (1, p), &Device::Cpu)?;
        let v = b1.rows(&v.matmul(w1)?)?.relu()?;
        let v = b2.rows(&v.matmul(w2)?)?.relu()?;
        let logits = v.matmul(w3)?.flatten_all()?.to_vec1::<f32>()?;
        probs.push(1.0 / (1.0 + (logits[0] - logits[1]).exp()));
    }
    let layers = pq.layers.len() as f32;
    let score = probs.iter().sum::<f32>() / layers;
    let map: Vec<f32> = (0..h * w)
        .map(|i| maps.iter().map(|m| m[i]).sum::<f32>() / layers)
        .collect();
    let refs: Vec<&[f32]> = aligns.iter().map(Vec::as_slice).collect();
    Ok((score, map, harmonic_mean_maps(&refs)))
}

/// Few-shot AdaptCLIP on one image's features with normal references.
pub fn few_shot(
    learned: &Learned,
    text: &TextPairs,
    f: &Features,
    refs: &References,
    size: (usize, usize),
) -> Result<Detection> {
    check_size(f, size)?;
    let pq = learned
        .pq
        .as_ref()
        .context("this learned file has no prompt-query adapter (pq_learner): few-shot AdaptCLIP needs it")?;
    let p = zero_shot_parts(learned, text, f)?;
    let (gh, gw) = f.grid;
    let (h, w) = size;
    let (pq_score, pq_map, align) = prompt_query(pq, f, refs, size)?;
    let vl = bilinear_resize(&p.visual_grid, gh, gw, h, w);
    let tl = bilinear_resize(&p.textual_grid, gh, gw, h, w);
    let mean: Vec<f32> = (0..h * w).map(|i| (vl[i] + tl[i] + pq_map[i]) / 3.0).collect();
    let raw = harmonic_mean_maps(&[&mean, &align]);
    let map = gaussian_filter(&raw, h, w, SIGMA)?;
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let image = (p.visual_score + p.textual_score + pq_score) / 3.0;
    let score = harmonic_mean_maps(&[&[image], &[max]])[0];
    Ok(Detection {
        score,
        map,
        height: h,
        width: w,
        grid_map: p
            .visual_grid
            .iter()
            .zip(&p.textual_grid)
            .map(|(a, b)| (a + b) / 2.0)
            .collect(),
        grid: f.grid,
    })
}

/// Scores every image of normalised `pixels: [B, 3, H, W]` at their own size: zero-shot, or
/// few-shot when `refs` are given (then the features of every layer come from the CPU pass,
/// [`encode`]; zero-shot uses the shared DPAM pass, which an accelerator can run). `clip` must
/// resample position embeddings as the official code does
/// ([`super::learned::use_official_pos_interp`]).
pub fn detect(clip: &Clip, ready: &AdaptClip, pixels: &Tensor, refs: Option<&References>) -> Result<Vec<Detection>> {
    let (_, _, h, w) = pixels
        .dims4()
        .map_err(|_| anyhow::anyhow!("pixels must be [B, 3, H, W], got {:?}", pixels.dims()))?;
    if refs.is_none() {
        return super::passes::now(detect_zero_shot_on(clip, &clip.vision, ready, pixels));
    }
    let feats = encode(clip, pixels)?;
    feats
        .iter()
        .map(|f| match refs {
            Some(r) => {
                if r.layers[0].dim(0)? != r.count * f.grid.0 * f.grid.1 {
                    bail!("the reference images and the query must share one input size");
                }
                few_shot(&ready.learned, &ready.text, f, r, (h, w))
            }
            None => zero_shot(&ready.learned, &ready.text, f, (h, w)),
        })
        .collect()
}

/// Zero-shot [`detect`] with the shared DPAM pass run by `tower` (see [`Passes`]): what the
/// page runs, on the CPU or on WebGPU.
pub async fn detect_zero_shot_on(
    clip: &Clip,
    tower: &impl Passes,
    ready: &AdaptClip,
    pixels: &Tensor,
) -> Result<Vec<Detection>> {
    let (_, _, h, w) = pixels
        .dims4()
        .map_err(|_| anyhow::anyhow!("pixels must be [B, 3, H, W], got {:?}", pixels.dims()))?;
    let feats = encode_last_on(clip, tower, pixels).await?;
    feats
        .iter()
        .map(|f| zero_shot(&ready.learned, &ready.text, f, (h, w)))
        .collect()
}

/// One image of normalised `pixels: [1, 3, H, W]`: zero-shot with the DPAM pass run by `tower`
/// ([`detect_zero_shot_on`]), or few-shot with `refs` (the CPU pass of [`detect`], which reads
/// every layer of [`FEATURE_LAYERS`]). What tiled runs score each tile with.
pub async fn detect_one_on(
    clip: &Clip,
    tower: &impl Passes,
    ready: &AdaptClip,
    pixels: &Tensor,
    refs: Option<&References>,
) -> Result<Detection> {
    let dets = match refs {
        None => detect_zero_shot_on(clip, tower, ready, pixels).await?,
        Some(_) => detect(clip, ready, pixels, refs)?,
    };
    dets.into_iter().next().context("no image in the input")
}

/// The normal references of few-shot AdaptCLIP from normalised `pixels: [S, 3, H, W]` (the
/// queries' size).
pub fn references(clip: &Clip, pixels: &Tensor) -> Result<References> {
    References::new(&encode(clip, pixels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_prompt_has_twelve_placeholders() {
        assert_eq!(learned_prompt(), "X X X X X X X X X X X X.");
        let (n, a) = static_prompts();
        assert_eq!((n.len(), a.len()), (147, 84));
        assert_eq!(n[0], "a cropped photo of the object.");
        assert_eq!(a[0], "a cropped photo of the damaged object.");
    }
}
