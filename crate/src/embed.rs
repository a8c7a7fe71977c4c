//! The `embed` / `embed-text` operations with safetensors output: one implementation for the
//! CLI, the tests and the browser (wasm). Also the FLOP estimates `anoscope bench` reports
//! ([`vision_flops`], [`winclip_flops`]). The tower passes themselves are in [`crate::model`].
use crate::model::{Clip, EncodeOptions};
use crate::tokenizer::ClipTokenizer;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Serialises named tensors (f32 or i64/u32 → I64) to safetensors bytes.
pub fn to_safetensors(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in named {
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                flat.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            DType::I64 => (
                safetensors::Dtype::I64,
                flat.to_vec1::<i64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            DType::U32 => (
                safetensors::Dtype::I64,
                flat.to_vec1::<u32>()?
                    .iter()
                    .flat_map(|x| (*x as i64).to_le_bytes())
                    .collect(),
            ),
            other => bail!("cannot serialise tensor `{name}` of dtype {other:?}"),
        };
        data.push((name.clone(), dtype, shape, bytes));
    }
    let views = data
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, None)?)
}

/// Runs the image tower on normalised `pixels: [1, 3, H, W]` and returns the named outputs:
/// `image_embeds` `[1, P]`, `patch_tokens` `[1, N, P]`, `last_hidden_state` `[1, 1+N, D]`,
/// `surgery_tokens` `[1, N, P]` (when `surgery_layers > 0`) and `hidden_state_{i}`
/// `[1, 1+N, D]` for each requested layer.
pub fn embed_image(
    clip: &Clip,
    pixels: &Tensor,
    surgery_layers: usize,
    hidden_layers: &[usize],
) -> Result<Vec<(String, Tensor)>> {
    let opts = EncodeOptions {
        hidden_layers: hidden_layers.to_vec(),
        surgery_layers,
    };
    let out = clip.vision.forward(pixels, &opts)?;
    let mut named = vec![
        ("image_embeds".to_string(), out.image_embeds),
        ("patch_tokens".to_string(), out.patch_tokens),
        ("last_hidden_state".to_string(), out.last_hidden_state),
    ];
    if let Some(s) = out.surgery_tokens {
        named.push(("surgery_tokens".to_string(), s));
    }
    for (l, h) in out.hidden_states {
        named.push((format!("hidden_state_{l}"), h));
    }
    Ok(named)
}

/// Encodes `texts`: `text_embeds` `[T, P]` and `input_ids` `[T, 77]` (the checkpoint's own
/// padding).
pub fn embed_text(clip: &Clip, tokenizer: &ClipTokenizer, texts: &[&str]) -> Result<Vec<(String, Tensor)>> {
    if texts.is_empty() {
        bail!("no text given");
    }
    let (embeds, ids) = clip.encode_text(tokenizer, texts)?;
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    let ids = Tensor::from_vec(flat, (texts.len(), ids[0].len()), &candle_core::Device::Cpu)?;
    Ok(vec![
        ("text_embeds".to_string(), embeds),
        ("input_ids".to_string(), ids),
    ])
}

/// FLOPs (2 per multiply-add) of the transformer blocks on `tokens` tokens.
fn blocks_flops(clip_cfg: &crate::model::ClipConfig, tokens: usize) -> f64 {
    let v = &clip_cfg.vision;
    let t = tokens as f64;
    let d = v.width as f64;
    let m = v.mlp_width as f64;
    let per_layer = 2.0 * t * d * 3.0 * d + 4.0 * t * t * d + 2.0 * t * d * d + 4.0 * t * d * m;
    v.layers as f64 * per_layer
}

/// FLOPs (2 per multiply-add) of one full image-tower pass at `size`×`size`.
pub fn vision_flops(clip_cfg: &crate::model::ClipConfig, size: usize) -> f64 {
    let v = &clip_cfg.vision;
    let g = size / v.patch_size;
    let n = g * g;
    let patch = 2.0 * n as f64 * v.width as f64 * (3 * v.patch_size * v.patch_size) as f64;
    let proj = 2.0 * v.width as f64 * clip_cfg.embed_dim as f64;
    patch + blocks_flops(clip_cfg, n + 1) + proj
}

/// FLOPs of WinCLIP on one image: one full pass plus one pass per window (class token + s²
/// patches) for each scale, stride 1.
pub fn winclip_flops(clip_cfg: &crate::model::ClipConfig, size: usize, scales: &[usize]) -> f64 {
    let g = size / clip_cfg.vision.patch_size;
    let proj = 2.0 * clip_cfg.vision.width as f64 * clip_cfg.embed_dim as f64;
    let windows: f64 = scales
        .iter()
        .filter(|&&s| s <= g)
        .map(|&s| ((g - s + 1) * (g - s + 1)) as f64 * (blocks_flops(clip_cfg, s * s + 1) + proj))
        .sum();
    vision_flops(clip_cfg, size) + windows
}
