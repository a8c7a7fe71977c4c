//! Model configuration for the two supported checkpoint layouts.
//!
//! * Hugging Face transformers: `config.json` (a `CLIPConfig`, `CLIPVisionConfig` is also
//!   accepted) + `model.safetensors`. Fields missing from the JSON take transformers' defaults,
//!   so `openai/clip-vit-base-patch32` and `openai/clip-vit-large-patch14-336` load from their
//!   config alone.
//! * open_clip as published on the Hugging Face hub: `open_clip_config.json`
//!   (`{"model_cfg": {...}, "preprocess_cfg": {...}}`) + `open_clip_model.safetensors`.
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Which key naming scheme a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face transformers: `config.json` + `model.safetensors`, `vision_model.…` keys.
    HuggingFace,
    /// open_clip: `open_clip_config.json` + `open_clip_model.safetensors`, `visual.…` keys.
    OpenClip,
}

impl Layout {
    /// The configuration file name of this layout.
    pub fn config_file(self) -> &'static str {
        match self {
            Layout::HuggingFace => "config.json",
            Layout::OpenClip => "open_clip_config.json",
        }
    }
    /// The weights file name of this layout.
    pub fn weights_file(self) -> &'static str {
        match self {
            Layout::HuggingFace => "model.safetensors",
            Layout::OpenClip => "open_clip_model.safetensors",
        }
    }
    /// Detects the layout from a configuration file name.
    pub fn from_config_file(name: &str) -> Result<Self> {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        match base {
            "config.json" => Ok(Layout::HuggingFace),
            "open_clip_config.json" => Ok(Layout::OpenClip),
            other => bail!(
                "unknown checkpoint layout: configuration file `{other}` (expected `config.json` \
                 for Hugging Face transformers or `open_clip_config.json` for open_clip)"
            ),
        }
    }
}

/// MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x / √2))` (torch `nn.GELU()`, transformers `"gelu"`).
    Gelu,
    /// tanh-approximated GELU (transformers `"gelu_new"` / `"gelu_pytorch_tanh"`).
    GeluTanh,
}

impl Activation {
    fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => bail!("unsupported hidden_act `{other}` (supported: quick_gelu, gelu, gelu_new)"),
        })
    }
}

/// How position embeddings are resampled when the input grid differs from the checkpoint's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PosInterp {
    /// `F.interpolate(mode="bicubic", align_corners=False)` without antialiasing (cubic
    /// convolution, A = -0.75): what transformers' `interpolate_pos_encoding` does.
    Bicubic,
    /// `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` (PIL's bicubic, a = -0.5,
    /// widened when shrinking): what open_clip's `resize_pos_embed` and timm do.
    BicubicAntialias,
    /// `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing: what the
    /// official AnomalyCLIP code does when it runs ViT-L/14@336 at 518 px (24×24 → 37×37).
    Bilinear,
}

/// Image tower hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// Width D of the residual stream (768 for ViT-B).
    pub width: usize,
    /// Number of transformer blocks (12 for ViT-B).
    pub layers: usize,
    /// Attention heads per block; must divide `width`.
    pub heads: usize,
    /// Hidden width of each block's MLP (usually 4 · `width`).
    pub mlp_width: usize,
    /// Side of a square patch in pixels (16 for ViT-B/16).
    pub patch_size: usize,
    /// Side of the square input the checkpoint was trained at, in pixels (224, 240, 336, …).
    pub image_size: usize,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Activation of the MLPs.
    pub act: Activation,
}

impl VisionConfig {
    /// Patch grid side of the checkpoint (position embeddings are `grid² + 1` long).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Width of one attention head (`width / heads`).
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

/// Text tower hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// Width Dt of the residual stream (512 for ViT-B CLIP).
    pub width: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention heads per block; must divide `width`.
    pub heads: usize,
    /// Hidden width of each block's MLP (usually 4 · `width`).
    pub mlp_width: usize,
    /// Rows of the token embedding (49 408 for CLIP's BPE vocabulary).
    pub vocab_size: usize,
    /// Most tokens per prompt, start- and end-of-text included (77 for CLIP).
    pub context_length: usize,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Activation of the MLPs.
    pub act: Activation,
}

/// Everything needed to build and feed a CLIP model.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// The checkpoint's key naming scheme.
    pub layout: Layout,
    /// Image tower hyper-parameters.
    pub vision: VisionConfig,
    /// Text tower hyper-parameters (transformers' defaults for a vision-only configuration).
    pub text: TextConfig,
    /// Dimension of the joint image-text space (P).
    pub embed_dim: usize,
    /// Per-channel (RGB) mean of the input normalisation (default [`CLIP_MEAN`]).
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation of the input normalisation (default [`CLIP_STD`]).
    pub std: [f32; 3],
    /// How position embeddings are resampled for an input size other than `image_size`.
    pub pos_interp: PosInterp,
}

pub use crate::preprocess::{CLIP_MEAN, CLIP_STD};

/// Largest hyper-parameters accepted from a configuration file (guards against absurd sizes
/// before anything is allocated). This one bounds the tower widths, head counts and `embed_dim`
/// (MLP widths may be 8 times it).
pub const MAX_WIDTH: usize = 8192;
/// Most blocks a tower may have.
pub const MAX_LAYERS: usize = 128;
/// Largest image size and patch size accepted, in pixels.
pub const MAX_IMAGE: usize = 4096;
/// Largest text vocabulary accepted.
pub const MAX_VOCAB: usize = 1 << 20;
/// Largest text context length accepted, in tokens.
pub const MAX_CONTEXT: usize = 1024;

/// Largest configuration file accepted (bytes); real ones are under 10 KB.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

fn get_usize(obj: &Value, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|x| x as usize)
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as usize))
            .with_context(|| format!("`{key}` must be a non-negative integer, got {v}")),
    }
}

fn get_f64(obj: &Value, key: &str, default: f64) -> Result<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().with_context(|| format!("`{key}` must be a number, got {v}")),
    }
}

fn get_str<'a>(obj: &'a Value, key: &str, default: &'a str) -> Result<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_str().with_context(|| format!("`{key}` must be a string, got {v}")),
    }
}

fn rgb(obj: &Value, key: &str, default: [f32; 3]) -> Result<[f32; 3]> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, v) in out.iter_mut().zip(a) {
                *o = v.as_f64().with_context(|| format!("`{key}` must hold numbers"))? as f32;
            }
            Ok(out)
        }
        Some(v) => bail!("`{key}` must be a list of 3 numbers, got {v}"),
    }
}

/// Merges `obj[primary]` over `obj[fallback]` (transformers' old `*_config_dict` keys).
fn sub_config(obj: &Value, primary: &str, fallback: &str) -> Value {
    let mut merged = serde_json::Map::new();
    for key in [fallback, primary] {
        if let Some(Value::Object(m)) = obj.get(key) {
            for (k, v) in m {
                if !v.is_null() {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(merged)
}

impl ClipConfig {
    /// Parses a configuration file given its name (which selects the layout) and text.
    pub fn from_json(file_name: &str, json: &str) -> Result<Self> {
        let layout = Layout::from_config_file(file_name)?;
        if json.len() > MAX_CONFIG_BYTES {
            bail!(
                "`{file_name}` is {} bytes, over the configuration size limit of {MAX_CONFIG_BYTES} bytes",
                json.len()
            );
        }
        let value: Value = serde_json::from_str(json).with_context(|| format!("`{file_name}` is not valid JSON"))?;
        let cfg = match layout {
            Layout::HuggingFace => Self::from_hf(&value),
            Layout::OpenClip => Self::from_open_clip(&value),
        }
        .with_context(|| format!("invalid `{file_name}`"))?;
        cfg.validate().with_context(|| format!("invalid `{file_name}`"))?;
        Ok(cfg)
    }

    fn from_hf(root: &Value) -> Result<Self> {
        if !root.is_object() {
            bail!("expected a JSON object");
        }
        let model_type = get_str(root, "model_type", "clip")?;
        // A bare CLIPVisionConfig (vision-only checkpoint) is accepted as well.
        let (v, t) = if model_type == "clip_vision_model" {
            (root.clone(), Value::Object(Default::default()))
        } else if model_type == "clip" {
            (
                sub_config(root, "vision_config", "vision_config_dict"),
                sub_config(root, "text_config", "text_config_dict"),
            )
        } else {
            bail!("model_type `{model_type}` is not a CLIP model (expected `clip`)");
        };
        // transformers' CLIPVisionConfig / CLIPTextConfig defaults.
        let v_width = get_usize(&v, "hidden_size", 768)?;
        let vision = VisionConfig {
            width: v_width,
            layers: get_usize(&v, "num_hidden_layers", 12)?,
            heads: get_usize(&v, "num_attention_heads", 12)?,
            mlp_width: get_usize(&v, "intermediate_size", 3072)?,
            patch_size: get_usize(&v, "patch_size", 32)?,
            image_size: get_usize(&v, "image_size", 224)?,
            ln_eps: get_f64(&v, "layer_norm_eps", 1e-5)?,
            act: Activation::from_hf(get_str(&v, "hidden_act", "quick_gelu")?)?,
        };
        let text = TextConfig {
            width: get_usize(&t, "hidden_size", 512)?,
            layers: get_usize(&t, "num_hidden_layers", 12)?,
            heads: get_usize(&t, "num_attention_heads", 8)?,
            mlp_width: get_usize(&t, "intermediate_size", 2048)?,
            vocab_size: get_usize(&t, "vocab_size", 49408)?,
            context_length: get_usize(&t, "max_position_embeddings", 77)?,
            ln_eps: get_f64(&t, "layer_norm_eps", 1e-5)?,
            act: Activation::from_hf(get_str(&t, "hidden_act", "quick_gelu")?)?,
        };
        let embed_dim = match root.get("projection_dim") {
            Some(x) if !x.is_null() => get_usize(root, "projection_dim", 512)?,
            _ => get_usize(&v, "projection_dim", 512)?,
        };
        Ok(ClipConfig {
            layout: Layout::HuggingFace,
            vision,
            text,
            embed_dim,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            pos_interp: PosInterp::Bicubic,
        })
    }

    fn from_open_clip(root: &Value) -> Result<Self> {
        let m = root
            .get("model_cfg")
            .filter(|m| m.is_object())
            .context("missing object `model_cfg`")?;
        let v = m
            .get("vision_cfg")
            .filter(|x| x.is_object())
            .context("missing `model_cfg.vision_cfg`")?;
        let t = m
            .get("text_cfg")
            .filter(|x| x.is_object())
            .context("missing `model_cfg.text_cfg`")?;
        for (cfg, keys, what) in [
            (
                v,
                &["ls_init_value", "attentional_pool", "timm_model_name", "hf_model_name"][..],
                "vision_cfg",
            ),
            (
                t,
                &["ls_init_value", "hf_model_name", "embed_cls", "proj_bias"][..],
                "text_cfg",
            ),
        ] {
            for key in keys {
                match cfg.get(*key) {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                    Some(val) => {
                        bail!("{what}.{key} = {val} is not supported (only the standard open_clip ViT CLIP is)")
                    }
                }
            }
        }
        if let Some(p) = v.get("pool_type").and_then(Value::as_str) {
            if p != "tok" {
                bail!("vision_cfg.pool_type `{p}` is not supported (only `tok`)");
            }
        }
        let act = if m.get("quick_gelu").and_then(Value::as_bool).unwrap_or(false) {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let layers = match v.get("layers") {
            Some(Value::Array(_)) => bail!("vision_cfg.layers as a list (ResNet towers) is not supported"),
            _ => get_usize(v, "layers", 12)?,
        };
        let v_width = get_usize(v, "width", 768)?;
        let head_width = get_usize(v, "head_width", 64)?;
        if head_width == 0 {
            bail!("vision_cfg.head_width must be positive");
        }
        let v_mlp_ratio = get_f64(v, "mlp_ratio", 4.0)?;
        let vision = VisionConfig {
            width: v_width,
            layers,
            heads: v_width / head_width,
            mlp_width: (v_width as f64 * v_mlp_ratio) as usize,
            patch_size: get_usize(v, "patch_size", 16)?,
            image_size: match v.get("image_size") {
                Some(Value::Array(a)) => {
                    let sides: Vec<_> = a.iter().filter_map(Value::as_u64).collect();
                    if sides.len() != 2 || sides[0] != sides[1] {
                        bail!("vision_cfg.image_size must be square, got {a:?}");
                    }
                    sides[0] as usize
                }
                _ => get_usize(v, "image_size", 224)?,
            },
            ln_eps: 1e-5,
            act,
        };
        let t_width = get_usize(t, "width", 512)?;
        let text = TextConfig {
            width: t_width,
            layers: get_usize(t, "layers", 12)?,
            heads: get_usize(t, "heads", 8)?,
            mlp_width: (t_width as f64 * get_f64(t, "mlp_ratio", 4.0)?) as usize,
            vocab_size: get_usize(t, "vocab_size", 49408)?,
            context_length: get_usize(t, "context_length", 77)?,
            ln_eps: 1e-5,
            act,
        };
        let pre = root.get("preprocess_cfg").cloned().unwrap_or(Value::Null);
        Ok(ClipConfig {
            layout: Layout::OpenClip,
            vision,
            text,
            embed_dim: get_usize(m, "embed_dim", 512)?,
            mean: rgb(&pre, "mean", CLIP_MEAN)?,
            std: rgb(&pre, "std", CLIP_STD)?,
            pos_interp: PosInterp::BicubicAntialias,
        })
    }

    /// Rejects zero, inconsistent or absurd sizes before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let checks: [(&str, usize, usize); 12] = [
            ("vision width", v.width, MAX_WIDTH),
            ("vision layers", v.layers, MAX_LAYERS),
            ("vision heads", v.heads, MAX_WIDTH),
            ("vision mlp width", v.mlp_width, 8 * MAX_WIDTH),
            ("patch size", v.patch_size, MAX_IMAGE),
            ("image size", v.image_size, MAX_IMAGE),
            ("text width", t.width, MAX_WIDTH),
            ("text layers", t.layers, MAX_LAYERS),
            ("text heads", t.heads, MAX_WIDTH),
            ("text mlp width", t.mlp_width, 8 * MAX_WIDTH),
            ("vocab size", t.vocab_size, MAX_VOCAB),
            ("context length", t.context_length, MAX_CONTEXT),
        ];
        for (name, value, max) in checks {
            if value == 0 || value > max {
                bail!("{name} = {value} is out of range (1..={max})");
            }
        }
        if self.embed_dim == 0 || self.embed_dim > MAX_WIDTH {
            bail!(
                "embedding dimension = {} is out of range (1..={MAX_WIDTH})",
                self.embed_dim
            );
        }
        if !v.width.is_multiple_of(v.heads) {
            bail!("vision width {} is not divisible by {} heads", v.width, v.heads);
        }
        if !t.width.is_multiple_of(t.heads) {
            bail!("text width {} is not divisible by {} heads", t.width, t.heads);
        }
        if v.image_size < v.patch_size {
            bail!(
                "image size {} is smaller than the patch size {}",
                v.image_size,
                v.patch_size
            );
        }
        if v.ln_eps.is_nan() || t.ln_eps.is_nan() || v.ln_eps <= 0.0 || t.ln_eps <= 0.0 {
            bail!("layer_norm_eps must be positive");
        }
        if self.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            bail!("preprocess std must be positive, got {:?}", self.std);
        }
        Ok(())
    }

    /// Number of image tower parameters (saturating: no overflow on 32-bit targets).
    pub fn vision_params(&self) -> u64 {
        let v = &self.vision;
        let (d, mlp, p, g) = (v.width as u64, v.mlp_width as u64, v.patch_size as u64, v.grid() as u64);
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let layer = [mul(4 * d, d), 4 * d, mul(2 * d, mlp), mlp, d, 4 * d]
            .into_iter()
            .fold(0u64, u64::saturating_add);
        [
            mul(mul(3 * p, p), d),
            d,
            mul(mul(g, g).saturating_add(1), d),
            4 * d,
            mul(v.layers as u64, layer),
            mul(d, self.embed_dim as u64),
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }

    /// Rejects weights too small to hold the image tower this configuration describes (at one
    /// byte per parameter, a q8 file's int8), before any tensor is read: a
    /// configuration that belongs to a bigger model gets one clear error instead of a shape
    /// mismatch deep inside the file.
    pub fn check_weights_size(&self, weights_bytes: u64, origin: &str) -> Result<()> {
        let params = self.vision_params();
        // One byte per parameter: the smallest storage read (a q8 file's int8 blocks).
        if weights_bytes < params {
            bail!(
                "{origin}: the configuration describes an image tower of {params} parameters (at least \
                 {params} bytes even in int8), but the weights file has only {weights_bytes} bytes: the \
                 configuration and the weights do not belong together (or the file is truncated)"
            );
        }
        Ok(())
    }
}
