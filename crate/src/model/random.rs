//! Deterministic full-size random checkpoints (for benchmarks and full-size parity checks:
//! speed does not depend on the values, and fidelity can be checked on any values). The files
//! are written in the vision-first order of [`super::checkpoint::serialize_vision_first`].
use super::config::{ClipConfig, Layout};
use super::weights::MapSource;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::collections::HashMap;
use std::path::Path;

/// Architectures `random-weights` and `bench` know.
pub const ARCHS: [&str; 4] = ["vit-b-16", "vit-b-32", "vit-b-16-plus-240", "vit-l-14-336"];

/// The configuration file (name, JSON) of a known architecture, in the layout its published
/// checkpoints use: OpenAI ViT-B/16, B/32 and L/14@336 (`openai/clip-vit-large-patch14-336`,
/// the encoder of AnomalyCLIP and AdaptCLIP) as transformers' `config.json`, WinCLIP's
/// ViT-B-16-plus-240 as open_clip's `open_clip_config.json`.
pub fn arch_config(arch: &str) -> Result<(&'static str, String)> {
    let hf = |patch: usize| {
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": 512,
            "logit_scale_init_value": 2.6592,
            "text_config": {
                "hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512,
                "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1
            },
            "vision_config": {
                "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                "num_hidden_layers": 12, "patch_size": patch, "image_size": 224,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512
            }
        })
    };
    Ok(match arch {
        "vit-b-16" => ("config.json", serde_json::to_string_pretty(&hf(16))?),
        "vit-b-32" => ("config.json", serde_json::to_string_pretty(&hf(32))?),
        "vit-b-16-plus-240" => (
            "open_clip_config.json",
            serde_json::to_string_pretty(&serde_json::json!({
                "model_cfg": {
                    "embed_dim": 640,
                    "vision_cfg": {"image_size": 240, "layers": 12, "width": 896, "patch_size": 16},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 640, "heads": 10, "layers": 12}
                },
                "preprocess_cfg": {
                    "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711]
                }
            }))?,
        ),
        "vit-l-14-336" => (
            "config.json",
            serde_json::to_string_pretty(&serde_json::json!({
                "architectures": ["CLIPModel"],
                "model_type": "clip",
                "projection_dim": 768,
                "logit_scale_init_value": 2.6592,
                "text_config": {
                    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
                    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1
                },
                "vision_config": {
                    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                    "num_hidden_layers": 24, "patch_size": 14, "image_size": 336,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768
                }
            }))?,
        ),
        other => bail!("unknown architecture `{other}` (known: {})", ARCHS.join(", ")),
    })
}

/// How a parameter is initialised.
#[derive(Clone, Copy)]
enum Init {
    /// N(0, σ²)
    Normal(f32),
    /// 1 + N(0, σ²) (LayerNorm gains)
    OnePlus(f32),
}

/// Names, shapes and initialisations of every parameter of `cfg` in its layout's key names.
fn parameter_table(cfg: &ClipConfig, with_text: bool) -> Vec<(String, Vec<usize>, Init)> {
    let mut out: Vec<(String, Vec<usize>, Init)> = Vec::new();
    let w = Init::Normal(0.02);
    let b = Init::Normal(0.01);
    let g = Init::OnePlus(0.05);
    let v = &cfg.vision;
    let t = &cfg.text;
    let p = cfg.embed_dim;
    let mut add = |name: String, shape: Vec<usize>, init: Init| out.push((name, shape, init));
    let blocks = |add: &mut dyn FnMut(String, Vec<usize>, Init), prefix: &str, n: usize, d: usize, mlp: usize| {
        for i in 0..n {
            let pre = format!("{prefix}.{i}");
            match cfg.layout {
                Layout::HuggingFace => {
                    for ln in ["layer_norm1", "layer_norm2"] {
                        add(format!("{pre}.{ln}.weight"), vec![d], g);
                        add(format!("{pre}.{ln}.bias"), vec![d], b);
                    }
                    for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                        add(format!("{pre}.self_attn.{proj}.weight"), vec![d, d], w);
                        add(format!("{pre}.self_attn.{proj}.bias"), vec![d], b);
                    }
                    add(format!("{pre}.mlp.fc1.weight"), vec![mlp, d], w);
                    add(format!("{pre}.mlp.fc1.bias"), vec![mlp], b);
                    add(format!("{pre}.mlp.fc2.weight"), vec![d, mlp], w);
                    add(format!("{pre}.mlp.fc2.bias"), vec![d], b);
                }
                Layout::OpenClip => {
                    for ln in ["ln_1", "ln_2"] {
                        add(format!("{pre}.{ln}.weight"), vec![d], g);
                        add(format!("{pre}.{ln}.bias"), vec![d], b);
                    }
                    add(format!("{pre}.attn.in_proj_weight"), vec![3 * d, d], w);
                    add(format!("{pre}.attn.in_proj_bias"), vec![3 * d], b);
                    add(format!("{pre}.attn.out_proj.weight"), vec![d, d], w);
                    add(format!("{pre}.attn.out_proj.bias"), vec![d], b);
                    add(format!("{pre}.mlp.c_fc.weight"), vec![mlp, d], w);
                    add(format!("{pre}.mlp.c_fc.bias"), vec![mlp], b);
                    add(format!("{pre}.mlp.c_proj.weight"), vec![d, mlp], w);
                    add(format!("{pre}.mlp.c_proj.bias"), vec![d], b);
                }
            }
        }
    };
    let (d, ps, n) = (v.width, v.patch_size, v.grid() * v.grid() + 1);
    let emb = Init::Normal(0.1);
    match cfg.layout {
        Layout::HuggingFace => {
            add(
                "vision_model.embeddings.patch_embedding.weight".into(),
                vec![d, 3, ps, ps],
                w,
            );
            add("vision_model.embeddings.class_embedding".into(), vec![d], emb);
            add(
                "vision_model.embeddings.position_embedding.weight".into(),
                vec![n, d],
                emb,
            );
            add("vision_model.pre_layrnorm.weight".into(), vec![d], g);
            add("vision_model.pre_layrnorm.bias".into(), vec![d], b);
            blocks(&mut add, "vision_model.encoder.layers", v.layers, d, v.mlp_width);
            add("vision_model.post_layernorm.weight".into(), vec![d], g);
            add("vision_model.post_layernorm.bias".into(), vec![d], b);
            add("visual_projection.weight".into(), vec![p, d], w);
            if with_text {
                let dt = t.width;
                add(
                    "text_model.embeddings.token_embedding.weight".into(),
                    vec![t.vocab_size, dt],
                    w,
                );
                add(
                    "text_model.embeddings.position_embedding.weight".into(),
                    vec![t.context_length, dt],
                    Init::Normal(0.01),
                );
                blocks(&mut add, "text_model.encoder.layers", t.layers, dt, t.mlp_width);
                add("text_model.final_layer_norm.weight".into(), vec![dt], g);
                add("text_model.final_layer_norm.bias".into(), vec![dt], b);
                add("text_projection.weight".into(), vec![p, dt], w);
            }
        }
        Layout::OpenClip => {
            add("visual.conv1.weight".into(), vec![d, 3, ps, ps], w);
            add("visual.class_embedding".into(), vec![d], emb);
            add("visual.positional_embedding".into(), vec![n, d], emb);
            add("visual.ln_pre.weight".into(), vec![d], g);
            add("visual.ln_pre.bias".into(), vec![d], b);
            blocks(&mut add, "visual.transformer.resblocks", v.layers, d, v.mlp_width);
            add("visual.ln_post.weight".into(), vec![d], g);
            add("visual.ln_post.bias".into(), vec![d], b);
            add("visual.proj".into(), vec![d, p], w);
            if with_text {
                let dt = t.width;
                add("token_embedding.weight".into(), vec![t.vocab_size, dt], w);
                add(
                    "positional_embedding".into(),
                    vec![t.context_length, dt],
                    Init::Normal(0.01),
                );
                blocks(&mut add, "transformer.resblocks", t.layers, dt, t.mlp_width);
                add("ln_final.weight".into(), vec![dt], g);
                add("ln_final.bias".into(), vec![dt], b);
                add("text_projection".into(), vec![dt, p], w);
            }
        }
    }
    out
}

/// Deterministic random values for every parameter (ChaCha8 seeded with `seed`; stable across
/// platforms and releases of this crate). `logit_scale` is ln(100) as in trained CLIP models.
pub fn random_tensors(cfg: &ClipConfig, seed: u64, with_text: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let std_normal = Normal::new(0f32, 1f32).expect("valid normal");
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = parameter_table(cfg, with_text)
        .into_iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let values = (0..n)
                .map(|_| {
                    let z = std_normal.sample(&mut rng);
                    match init {
                        Init::Normal(s) => s * z,
                        Init::OnePlus(s) => 1.0 + s * z,
                    }
                })
                .collect();
            (name, shape, values)
        })
        .collect();
    out.push(("logit_scale".into(), vec![], vec![100f32.ln()]));
    out
}

/// Random weights as an in-memory tensor source (no file), e.g. for `bench`.
pub fn random_source(cfg: &ClipConfig, seed: u64, with_text: bool) -> Result<MapSource> {
    let mut map = HashMap::new();
    for (name, shape, values) in random_tensors(cfg, seed, with_text) {
        map.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(MapSource(map))
}

/// Storage type of a written checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDtype {
    /// 32-bit floats (exact).
    F32,
    /// 16-bit IEEE half floats (values rounded to nearest; half the size).
    F16,
}

/// Writes tensors as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: StoreDtype) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            StoreDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StoreDtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        })
        .collect();
    let st_dtype = match dtype {
        StoreDtype::F32 => safetensors::Dtype::F32,
        StoreDtype::F16 => safetensors::Dtype::F16,
    };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(st_dtype, shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = super::checkpoint::serialize_vision_first(&views)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes a deterministic random checkpoint of `arch` into `dir` in its published layout.
/// Returns the configuration.
pub fn write_random_checkpoint(arch: &str, seed: u64, dir: &Path, dtype: StoreDtype) -> Result<ClipConfig> {
    let (config_file, json) = arch_config(arch)?;
    let cfg = ClipConfig::from_json(config_file, &json)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(config_file), &json)
        .with_context(|| format!("cannot write {}", dir.join(config_file).display()))?;
    let tensors = random_tensors(&cfg, seed, true);
    write_safetensors(&dir.join(cfg.layout.weights_file()), &tensors, dtype)?;
    Ok(cfg)
}
