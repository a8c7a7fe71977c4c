//! AnomalyCLIP (Zhou et al., ICLR 2024) zero-shot, equal to the official code
//! (`zqhang/AnomalyCLIP`, `test.py` with its published arguments: `--features_list 24
//! --image_size 518 --depth 9 --n_ctx 12 --t_n_ctx 4 --sigma 4`).
//!
//! * **Learned prompts** ([`LearnedPrompts`]), read from the published checkpoint (a torch pickle
//!   `{"prompt_learner": state_dict}`, through candle's pickle reader) or from its conversion to
//!   safetensors ([`LearnedPrompts::to_safetensors`], `anoscope convert --learned`).
//! * **Text** ([`LearnedPrompts::text_pair`]): the prompts "X×12 object." and "X×12 damaged
//!   object." with token positions 1–12 replaced by the learned contexts `ctx_pos` / `ctx_neg`;
//!   before text blocks 1–8 (0-based) positions 1–4 are replaced by the deep prompts
//!   `compound_prompts_text.{0..7}` rounded through float16 (the official `.half()`); the
//!   end-of-text token → `ln_final` → projection → L2. Object-agnostic: computed once, it can be
//!   stored with the learned tensors (`text_features`), and then no text tower is needed.
//! * **Image** ([`detect`]): one DPAM pass ([`super::learned`]) at the input's own size; map =
//!   Gaussian(σ=4)(bilinear(per-patch `softmax(cos/0.07)[anomalous]`)); score =
//!   `softmax(cos(global, text)/0.07)[anomalous]` with the global feature taken without `ln_post`.
use super::learned::{dpam_on, patch_probabilities, smooth_map, SIGMA, TEMPERATURE};
use super::passes::{self, Passes};
use super::{Detection, TextPair};
use crate::model::ops::{causal_mask, eot_positions};
use crate::model::weights::view_to_f32;
use crate::model::Clip;
use crate::tokenizer::ClipTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// Key of the prompt learner's state dict in the published checkpoints.
pub const CHECKPOINT_KEY: &str = "prompt_learner";

/// Name of the stored `[2, P]` text features (normal, anomalous) in a converted learned file.
pub const TEXT_FEATURES: &str = "text_features";

/// Largest learned file accepted (the published ones are about 5 MB).
pub const MAX_LEARNED_BYTES: u64 = 256 << 20;

/// Most values one learned tensor may hold (the published deep-prompt projections are
/// 768×896; anything far larger is not an AnomalyCLIP prompt learner).
const MAX_TENSOR_VALUES: usize = 16 << 20;

/// AnomalyCLIP's learned prompt parameters.
#[derive(Clone, Debug)]
pub struct LearnedPrompts {
    /// `[n_ctx, Dt]` context of the normal prompt (`ctx_pos`).
    pub ctx_normal: Tensor,
    /// `[n_ctx, Dt]` context of the anomalous prompt (`ctx_neg`).
    pub ctx_anomalous: Tensor,
    /// `[t_n_ctx, Dt]` deep prompts entering text blocks 1, 2, … (`compound_prompts_text.i`).
    pub deep: Vec<Tensor>,
    /// The prompts' token embeddings stored by the official learner (`token_prefix_*`,
    /// `token_suffix_*`, `[1, Dt]` and `[77 − 1 − n_ctx, Dt]`), normal then anomalous; `None`
    /// when the file has none (then the text tower's token embedding is used).
    pub tokens: Option<[(Tensor, Tensor); 2]>,
    /// `[2, P]` text features stored with a converted file (normal, anomalous), when present.
    pub text_features: Option<Tensor>,
}

/// Reads `name` from `map` as an f32 tensor of `rank`-compatible shape (leading ones dropped).
fn take(map: &HashMap<String, Tensor>, name: &str, origin: &str) -> Result<Option<Tensor>> {
    let Some(t) = map.get(name) else {
        return Ok(None);
    };
    let t = t.to_dtype(DType::F32)?;
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if v.iter().any(|x| !x.is_finite()) {
        bail!("{origin}: tensor `{name}` has non-finite values");
    }
    // Drop the leading singleton dimensions of the official shapes ([1, 1, n, D] → [n, D]).
    let dims: Vec<usize> = t.dims().to_vec();
    let keep = dims.len().saturating_sub(2);
    if dims[..keep].iter().any(|&d| d != 1) {
        bail!("{origin}: tensor `{name}` has shape {dims:?}, expected [.., n, D] with one prompt per class");
    }
    Ok(Some(t.reshape(&dims[keep..])?))
}

impl LearnedPrompts {
    /// Builds the prompts from named tensors (the learner's state dict, any float dtype).
    /// `compound_prompt_projections.*`, `tokenized_prompts_*` and unknown names are ignored.
    pub fn from_tensors(map: &HashMap<String, Tensor>, origin: &str) -> Result<Self> {
        let need = |name: &str| -> Result<Tensor> {
            take(map, name, origin)?.with_context(|| {
                format!(
                    "{origin}: missing tensor `{name}` (not an AnomalyCLIP prompt learner: expected ctx_pos, \
                     ctx_neg and compound_prompts_text.*)"
                )
            })
        };
        let ctx_normal = need("ctx_pos")?;
        let ctx_anomalous = need("ctx_neg")?;
        if ctx_normal.dims().len() != 2 || ctx_normal.dims() != ctx_anomalous.dims() {
            bail!(
                "{origin}: ctx_pos {:?} and ctx_neg {:?} must both be [n_ctx, D]",
                ctx_normal.dims(),
                ctx_anomalous.dims()
            );
        }
        let (n_ctx, d) = ctx_normal.dims2()?;
        let mut deep = Vec::new();
        while let Some(t) = take(map, &format!("compound_prompts_text.{}", deep.len()), origin)? {
            if t.dims().len() != 2 || t.dim(1)? != d || t.dim(0)? == 0 {
                bail!(
                    "{origin}: compound_prompts_text.{} is {:?}, expected [t_n_ctx, {d}]",
                    deep.len(),
                    t.dims()
                );
            }
            if let Some(first) = deep.first() {
                let first: &Tensor = first;
                if first.dims() != t.dims() {
                    bail!(
                        "{origin}: the deep prompts differ in shape ({:?} vs {:?})",
                        first.dims(),
                        t.dims()
                    );
                }
            }
            deep.push(t);
        }
        if deep.is_empty() {
            bail!("{origin}: missing tensor `compound_prompts_text.0` (AnomalyCLIP's deep text prompts)");
        }
        if deep[0].dim(0)? > n_ctx {
            bail!(
                "{origin}: deep prompts of {} tokens exceed the {n_ctx}-token context",
                deep[0].dim(0)?
            );
        }
        let names = [
            "token_prefix_pos",
            "token_suffix_pos",
            "token_prefix_neg",
            "token_suffix_neg",
        ];
        let found = names.iter().map(|n| take(map, n, origin)).collect::<Result<Vec<_>>>()?;
        let tokens = match found.as_slice() {
            [Some(pp), Some(sp), Some(pn), Some(sn)] => {
                for (n, t) in names.iter().zip([pp, sp, pn, sn]) {
                    if t.dims().len() != 2 || t.dim(1)? != d {
                        bail!("{origin}: `{n}` is {:?}, expected [.., {d}]", t.dims());
                    }
                }
                if pp.dim(0)? != 1 || pn.dim(0)? != 1 || sp.dim(0)? != sn.dim(0)? {
                    bail!("{origin}: token prefixes must be one token and the suffixes equally long");
                }
                Some([(pp.clone(), sp.clone()), (pn.clone(), sn.clone())])
            }
            [None, None, None, None] => None,
            _ => bail!("{origin}: only some of {} are present", names.join(", ")),
        };
        let text_features = take(map, TEXT_FEATURES, origin)?;
        if let Some(t) = &text_features {
            if t.dims().len() != 2 || t.dim(0)? != 2 {
                bail!("{origin}: `{TEXT_FEATURES}` is {:?}, expected [2, P]", t.dims());
            }
        }
        Ok(Self {
            ctx_normal,
            ctx_anomalous,
            deep,
            tokens,
            text_features,
        })
    }

    #[cfg(not(target_arch = "wasm32"))] // reads files (torch checkpoints): native only
    /// Reads a learned file: the official torch checkpoint (`.pth`/`.pt`, a zip pickle with the
    /// state dict under `"prompt_learner"`) or its safetensors conversion (any other name).
    pub fn read_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read learned prompts {origin}"))?
            .len();
        if size > MAX_LEARNED_BYTES {
            bail!("{origin}: {size} bytes is over the learned-file size limit of {MAX_LEARNED_BYTES} bytes");
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ext == "pth" || ext == "pt" {
            Self::from_tensors(&read_torch_checkpoint(path)?, &origin)
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {origin}"))?;
            Self::from_safetensors(&bytes, &origin)
        }
    }

    /// Reads the safetensors form ([`LearnedPrompts::to_safetensors`]).
    pub fn from_safetensors(bytes: &[u8], origin: &str) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            anyhow::anyhow!("{origin}: not a valid safetensors file (truncated or corrupt, or a .pth renamed?): {e}")
        })?;
        let mut map = HashMap::new();
        for name in st.names() {
            let view = st.tensor(name)?;
            if view.shape().iter().product::<usize>() > MAX_TENSOR_VALUES {
                bail!(
                    "{origin}: tensor `{name}` {:?} is too large for a prompt learner",
                    view.shape()
                );
            }
            if !matches!(
                view.dtype(),
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16 | safetensors::Dtype::F64
            ) {
                continue;
            }
            let v = view_to_f32(&view).with_context(|| format!("{origin}: tensor `{name}`"))?;
            map.insert(name.to_string(), Tensor::from_vec(v, view.shape(), &Device::Cpu)?);
        }
        Self::from_tensors(&map, origin)
    }

    /// The learned tensors (names as in the official state dict, the unused
    /// `compound_prompt_projections` left out) and, when given, the computed `[2, P]`
    /// [`TEXT_FEATURES`], as safetensors with floats stored as `dtype` (F16 or F32).
    pub fn to_safetensors(&self, dtype: safetensors::Dtype, text: Option<&TextPair>) -> Result<Vec<u8>> {
        if !matches!(dtype, safetensors::Dtype::F16 | safetensors::Dtype::F32) {
            bail!("learned prompts are stored as F16 or F32, not {dtype:?}");
        }
        let mut tensors: Vec<(String, Tensor)> = vec![
            ("ctx_pos".into(), self.ctx_normal.clone()),
            ("ctx_neg".into(), self.ctx_anomalous.clone()),
        ];
        for (i, t) in self.deep.iter().enumerate() {
            tensors.push((format!("compound_prompts_text.{i}"), t.clone()));
        }
        if let Some([(pp, sp), (pn, sn)]) = &self.tokens {
            for (n, t) in [
                ("token_prefix_pos", pp),
                ("token_suffix_pos", sp),
                ("token_prefix_neg", pn),
                ("token_suffix_neg", sn),
            ] {
                tensors.push((n.into(), t.clone()));
            }
        }
        let text = match (text, &self.text_features) {
            (Some(p), _) => Some(Tensor::from_vec(
                [p.normal.clone(), p.anomalous.clone()].concat(),
                (2, p.dim()),
                &Device::Cpu,
            )?),
            (None, t) => t.clone(),
        };
        if let Some(t) = text {
            tensors.push((TEXT_FEATURES.into(), t));
        }
        super::learned::serialize(&tensors, dtype)
    }

    /// The two prompt texts of the official learner with `n_ctx` placeholders.
    pub fn prompt_texts(&self) -> Result<[String; 2]> {
        let x = vec!["X"; self.ctx_normal.dim(0)?].join(" ");
        Ok([format!("{x} object."), format!("{x} damaged object.")])
    }

    /// The normal / anomalous text features: stored ones when the file has them, otherwise
    /// computed with `clip`'s text tower (see the module documentation).
    pub fn text_pair(&self, clip: &Clip) -> Result<TextPair> {
        let pair = match &self.text_features {
            Some(t) => {
                let rows = t.to_vec2::<f32>()?;
                TextPair::new(rows[0].clone(), rows[1].clone())?
            }
            None => self.compute_text_pair(clip)?,
        };
        pair.check_model(clip)
            .context("the learned prompts do not belong to this model")?;
        Ok(pair)
    }

    /// Runs the text tower on the learned prompts (ignores stored `text_features`).
    pub fn compute_text_pair(&self, clip: &Clip) -> Result<TextPair> {
        let text = clip
            .text
            .as_ref()
            .context("computing AnomalyCLIP's text features needs the model's text tower (vision-only weights)")?;
        let tc = &clip.cfg.text;
        let (n_ctx, d) = self.ctx_normal.dims2()?;
        if d != tc.width {
            bail!("the learned prompts are {d} wide, the model's text tower {}", tc.width);
        }
        // The deep prompts replace tokens before text blocks 1..=n (0-based): a text tower with
        // fewer blocks is not the one they were learned for (the official learner fails there).
        if self.deep.len() >= text.w.blocks.len() {
            bail!(
                "the learned prompts have deep prompts for text blocks 1 to {}, the model's text tower has {} blocks",
                self.deep.len(),
                text.w.blocks.len()
            );
        }
        let n_deep = self.deep[0].dim(0)?;
        let tokenizer = ClipTokenizer::shared()?;
        let texts = self.prompt_texts()?;
        let mut rows = Vec::with_capacity(2);
        for (side, (text_str, ctx)) in texts.iter().zip([&self.ctx_normal, &self.ctx_anomalous]).enumerate() {
            let ids = tokenizer.encode(text_str)?;
            let eot = eot_positions(std::slice::from_ref(&ids))[0];
            let len = eot + 1;
            if len > tc.context_length {
                bail!(
                    "the prompt needs {len} tokens, the text tower takes {}",
                    tc.context_length
                );
            }
            // [prefix, ctx, suffix] as the official learner concatenates them, cut after the
            // end-of-text token (attention is causal: later positions cannot change it).
            let (prefix, suffix) = match &self.tokens {
                Some(t) => (t[side].0.clone(), t[side].1.clone()),
                None => {
                    let idx = Tensor::from_vec(ids.clone(), ids.len(), &Device::Cpu)?;
                    let emb = text.w.token_embedding.index_select(&idx, 0)?;
                    (emb.narrow(0, 0, 1)?, emb.narrow(0, 1 + n_ctx, ids.len() - 1 - n_ctx)?)
                }
            };
            if 1 + n_ctx + suffix.dim(0)? < len {
                bail!("the stored token suffix is too short for the prompt `{text_str}`");
            }
            let x = Tensor::cat(&[&prefix, ctx, &suffix], 0)?.narrow(0, 0, len)?;
            let mut x = x
                .broadcast_add(&text.w.pos_embedding.narrow(0, 0, len)?)?
                .unsqueeze(0)?;
            let mask = causal_mask(len)?;
            for (i, blk) in text.w.blocks.iter().enumerate() {
                if i >= 1 && i <= self.deep.len() {
                    let deep = self.deep[i - 1].to_dtype(DType::F16)?.to_dtype(DType::F32)?;
                    x = Tensor::cat(
                        &[
                            &x.narrow(1, 0, 1)?,
                            &deep.unsqueeze(0)?,
                            &x.narrow(1, 1 + n_deep, len - 1 - n_deep)?,
                        ],
                        1,
                    )?;
                }
                x = blk.forward(&x, tc.heads, tc.act, Some(&mask), false)?.x;
            }
            let x = text.w.ln_final.forward(&x.get(0)?.get(eot)?.unsqueeze(0)?)?;
            rows.push(x.matmul(&text.w.proj)?.squeeze(0)?.to_vec1::<f32>()?);
        }
        let anomalous = rows.pop().expect("two rows");
        let normal = rows.pop().expect("two rows");
        TextPair::new(normal, anomalous)
    }
}

#[cfg(not(target_arch = "wasm32"))] // reads files (torch checkpoints): native only
/// The class pair of a learned file ([`LearnedPrompts::read_file`], then
/// [`LearnedPrompts::text_pair`]).
pub fn text_pair_from_file(clip: &Clip, path: &Path) -> Result<TextPair> {
    LearnedPrompts::read_file(path)?.text_pair(clip)
}

#[cfg(not(target_arch = "wasm32"))] // reads files (torch checkpoints): native only
/// The prompt learner's float tensors of an official checkpoint (`torch.save({"prompt_learner":
/// state_dict})`, torch's zip format), read by [`crate::model::pth::read_state_dicts`] (candle's
/// pickle reader; integer buffers such as `tokenized_prompts_*` skipped quietly), without the
/// unused `compound_prompt_projections`.
pub fn read_torch_checkpoint(path: &Path) -> Result<HashMap<String, Tensor>> {
    prompt_learner_tensors(crate::model::pth::read_state_dicts(path)?, &path.display().to_string())
}

/// The prompt learner's tensors among an official checkpoint's state dicts
/// ([`crate::model::pth::read_state_dicts`]), named as in its state dict, without the unused
/// `compound_prompt_projections`; `origin` names the file in errors.
pub fn prompt_learner_tensors(dicts: HashMap<String, Tensor>, origin: &str) -> Result<HashMap<String, Tensor>> {
    let prefix = format!("{CHECKPOINT_KEY}.");
    let map: HashMap<String, Tensor> = dicts
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(&prefix)?.to_string(), t)))
        .filter(|(name, _)| !name.starts_with("compound_prompt_projections.") && !name.starts_with("tokenized_prompts"))
        .collect();
    if map.is_empty() {
        bail!(
            "{origin}: no float tensors under `{CHECKPOINT_KEY}` (the official AnomalyCLIP format: \
             torch.save({{\"{CHECKPOINT_KEY}\": state_dict}}))"
        );
    }
    Ok(map)
}

/// Scores every image of normalised `pixels: [B, 3, H, W]` at their own size.
pub fn detect(clip: &Clip, pixels: &Tensor, text: &TextPair) -> Result<Vec<Detection>> {
    passes::now(detect_on(clip, &clip.vision, pixels, text))
}

/// [`detect`] with the image tower's passes run by `tower` (see [`Passes`]).
pub async fn detect_on(clip: &Clip, tower: &impl Passes, pixels: &Tensor, text: &TextPair) -> Result<Vec<Detection>> {
    text.check_model(clip)?;
    let (_, _, h, w) = pixels.dims4()?;
    let f = dpam_on(clip, tower, pixels).await?;
    let mut dets = Vec::with_capacity(f.global.len());
    for (global, tokens) in f.global.iter().zip(&f.patches) {
        let grid_map = patch_probabilities(tokens, &text.normal, &text.anomalous, TEMPERATURE);
        dets.push(Detection {
            score: text.score(global, TEMPERATURE),
            map: smooth_map(&grid_map, f.grid, h, w, SIGMA)?,
            height: h,
            width: w,
            grid_map,
            grid: f.grid,
        });
    }
    Ok(dets)
}
