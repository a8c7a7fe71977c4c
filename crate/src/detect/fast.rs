//! Zero-shot fast dense mode: one encoder pass with the value-to-value ("CLIP Surgery") path in
//! the last K blocks.
//!
//! For surgery patch tokens `s_i` (projected), the class pair `(t_n, t_a)` and τ = 0.07:
//! * patch probability `p_i = softmax([cos(s_i, t_n), cos(s_i, t_a)] / τ)[1]` on the grid;
//! * map = `p` upsampled bilinearly to the input (torch `align_corners=False`);
//! * image score = `(g + max_i p_i) / 2` with `g` the same probability for the global image
//!   embedding.
//!
//! CLIP Surgery's "feature surgery" (subtracting the class-mean feature) changes nothing for two
//! classes under softmax — it subtracts the same amount from both logits — so it is not applied.
use super::aggregate::bilinear_resize;
use super::passes::{self, Passes};
use super::{Detection, TextPair};
use crate::model::{Clip, EncodeOptions};
use anyhow::{bail, Result};
use candle_core::Tensor;

/// Default number of final blocks on the v-v path: half the tower (6 of 12 for ViT-B).
pub fn default_surgery_layers(clip: &Clip) -> usize {
    (clip.cfg.vision.layers / 2).max(1)
}

/// Scores every image of normalised `pixels: [B, 3, H, W]`.
pub fn detect(
    clip: &Clip,
    pixels: &Tensor,
    text: &TextPair,
    surgery_layers: usize,
    temperature: f32,
) -> Result<Vec<Detection>> {
    passes::now(detect_on(clip, &clip.vision, pixels, text, surgery_layers, temperature))
}

/// [`detect`] with the image tower's passes run by `tower` (see [`Passes`]).
pub async fn detect_on(
    clip: &Clip,
    tower: &impl Passes,
    pixels: &Tensor,
    text: &TextPair,
    surgery_layers: usize,
    temperature: f32,
) -> Result<Vec<Detection>> {
    text.check_model(clip)?;
    if surgery_layers == 0 {
        bail!("fast mode needs at least one surgery layer");
    }
    let (_, _, h, w) = pixels.dims4()?;
    let out = tower
        .forward(
            pixels,
            &EncodeOptions {
                hidden_layers: vec![],
                surgery_layers,
            },
        )
        .await?;
    let grid = out.grid;
    let images = out.image_embeds.to_vec2::<f32>()?;
    let tokens = out.surgery_tokens.expect("surgery requested").to_vec3::<f32>()?;
    let mut dets = Vec::with_capacity(images.len());
    for (img, toks) in images.iter().zip(&tokens) {
        let grid_map: Vec<f32> = toks.iter().map(|t| text.score(t, temperature)).collect();
        let g = text.score(img, temperature);
        let top = grid_map.iter().copied().fold(0f32, f32::max);
        dets.push(Detection {
            score: 0.5 * (g + top),
            map: bilinear_resize(&grid_map, grid.0, grid.1, h, w),
            height: h,
            width: w,
            grid_map,
            grid,
        });
    }
    Ok(dets)
}
