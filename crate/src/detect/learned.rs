//! Pieces shared by the learned-prompt detectors (AnomalyCLIP, AdaptCLIP): the DPAM image pass
//! of the official AnomalyCLIP code, the per-patch two-class map, and the Gaussian smoothing of
//! `scipy.ndimage.gaussian_filter`.
//!
//! **DPAM** (the official `VisionTransformer.DAPM_replace(20)`): the last [`DPAM_BLOCKS`] blocks
//! (6–24 of ViT-L/14) carry a second, value-to-value stream beside the plain one. It starts as the
//! residual entering the first of them; each adds `out_proj(softmax(v vᵀ / √d_head) v)` where `v`
//! is the block's value projection of `ln_1` of the *plain* stream, with no MLP and no `ln_2`.
//! This is exactly our v-v ("surgery") path with `surgery_layers = 19`
//! ([`crate::model::EncodeOptions`]). The patch tokens are `ln_post` of that stream after the last
//! block `@ proj`; the global feature is the plain stream's class token `@ proj` **without**
//! `ln_post` ([`global_features`]).
//!
//! Position embeddings are resampled bilinearly ([`crate::model::PosInterp::Bilinear`],
//! [`use_official_pos_interp`]) as the official code does when it runs at 518 px.
use super::aggregate::{anomaly_probability, bilinear_resize};
use super::passes::Passes;
use crate::model::{Clip, EncodeOptions, PosInterp, VisionOutput};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;

/// Blocks that run the v-v stream: the official `DAPM_replace(DPAM_layer=20)` replaces
/// `resblocks[-1]` … `resblocks[-19]`.
pub const DPAM_BLOCKS: usize = 19;

/// Softmax temperature of the learned-prompt maps and scores (`/0.07` in the official code).
pub const TEMPERATURE: f32 = 0.07;

/// The official input side of the learned-prompt modes (`--image_size 518`).
pub const RUN_SIZE: u32 = 518;

/// σ of the Gaussian smoothing of the maps (the official `--sigma 4`).
pub const SIGMA: f64 = 4.0;

/// `truncate` of `scipy.ndimage.gaussian_filter` (its default).
pub const TRUNCATE: f64 = 4.0;

/// Makes `clip` resample position embeddings as the official code does (bilinear,
/// `align_corners=False`, no antialias), in both its copies of the configuration. Call it
/// before handing the tower to an accelerator (which keeps its own copy).
pub fn use_official_pos_interp(clip: &mut Clip) {
    clip.cfg.pos_interp = PosInterp::Bilinear;
    clip.vision.cfg.pos_interp = PosInterp::Bilinear;
}

/// The encoder options of a DPAM pass.
pub fn dpam_options() -> EncodeOptions {
    EncodeOptions {
        hidden_layers: vec![],
        surgery_layers: DPAM_BLOCKS,
    }
}

/// What a DPAM pass gives the learned-prompt modes, per image of the batch.
#[derive(Clone, Debug)]
pub struct DpamFeatures {
    /// `[B][P]`: the plain stream's class token `@ proj`, without `ln_post`, not normalised.
    pub global: Vec<Vec<f32>>,
    /// `[B][N][P]`: the v-v stream's patch tokens through `ln_post` and `proj`, not normalised.
    pub patches: Vec<Vec<Vec<f32>>>,
    /// Patch grid `(rows, columns)`.
    pub grid: (usize, usize),
    /// The whole pass (its `patch_tokens` are the plain stream's, through `ln_post` and `proj`).
    pub output: VisionOutput,
}

/// `[B, P]`: the class token of `out.last_hidden_state` (the plain stream after the last block)
/// times the visual projection, without `ln_post`, as the official AnomalyCLIP code returns it.
pub fn global_features(clip: &Clip, out: &VisionOutput) -> Result<Vec<Vec<f32>>> {
    let cls = out.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
    Ok(cls.matmul(&clip.vision.w.proj)?.to_vec2::<f32>()?)
}

/// One DPAM pass over normalised `pixels: [B, 3, H, W]` at their own size (see the module
/// documentation). The model needs at least [`DPAM_BLOCKS`] blocks.
pub async fn dpam_on(clip: &Clip, tower: &impl Passes, pixels: &Tensor) -> Result<DpamFeatures> {
    let layers = clip.cfg.vision.layers;
    if layers < DPAM_BLOCKS {
        bail!(
            "the learned-prompt modes need an image tower of at least {DPAM_BLOCKS} blocks (DPAM runs in the \
             last {DPAM_BLOCKS}); this one has {layers} (use CLIP ViT-L/14@336)"
        );
    }
    let output = tower.forward(pixels, &dpam_options()).await?;
    let global = global_features(clip, &output)?;
    let patches = output
        .surgery_tokens
        .as_ref()
        .context("the DPAM pass returned no v-v tokens")?
        .to_vec3::<f32>()?;
    Ok(DpamFeatures {
        global,
        patches,
        grid: output.grid,
        output,
    })
}

/// Anomalous probability of every patch: `softmax([cos(t, normal), cos(t, anomalous)] / τ)[1]`
/// (the official `compute_similarity` with L2-normalised tokens and text).
pub fn patch_probabilities(
    tokens: &[Vec<f32>],
    normal_unit: &[f32],
    anomalous_unit: &[f32],
    temperature: f32,
) -> Vec<f32> {
    tokens
        .iter()
        .map(|t| anomaly_probability(t, normal_unit, anomalous_unit, temperature))
        .collect()
}

/// The 1-D Gaussian weights of `scipy.ndimage.gaussian_filter` (order 0): radius
/// `int(truncate·σ + 0.5)`, `exp(-x²/(2σ²))` normalised to sum 1.
pub fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f64> {
    let radius = (truncate * sigma + 0.5) as i64;
    let w: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|v| v / total).collect()
}

/// scipy's `mode="reflect"` (half-sample symmetric, `d c b a | a b c d | d c b a`, repeated for
/// any distance): the in-range index an out-of-range one reads.
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m >= n { period - 1 - m } else { m }) as usize
}

/// `scipy.ndimage.gaussian_filter(map, sigma)` on a row-major `h × w` float32 map with scipy's
/// defaults (`mode="reflect"`, `truncate=4.0`): one 1-D correlation per axis, rows' axis (0)
/// first, accumulated in f64 and stored as f32 after each axis, as scipy does for float32 input.
pub fn gaussian_filter(map: &[f32], h: usize, w: usize, sigma: f64) -> Result<Vec<f32>> {
    if map.len() != h * w || h == 0 || w == 0 {
        bail!("a {h}×{w} map needs {} values, got {}", h * w, map.len());
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        bail!("the Gaussian σ must be positive, got {sigma}");
    }
    let k = gaussian_kernel(sigma, TRUNCATE);
    let r = (k.len() / 2) as i64;
    // Axis 0 (along columns).
    let mut tmp = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f64;
            for (j, kj) in k.iter().enumerate() {
                let yy = reflect(y as i64 + j as i64 - r, h);
                acc += kj * map[yy * w + x] as f64;
            }
            tmp[y * w + x] = acc as f32;
        }
    }
    // Axis 1 (along rows).
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        let row = &tmp[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0f64;
            for (j, kj) in k.iter().enumerate() {
                acc += kj * row[reflect(x as i64 + j as i64 - r, w)] as f64;
            }
            out[y * w + x] = acc as f32;
        }
    }
    Ok(out)
}

/// A patch-grid map brought to the run size: bilinear (`align_corners=False`) from `grid` up to
/// `h × w`, then [`gaussian_filter`] with `sigma`.
pub fn smooth_map(grid_map: &[f32], grid: (usize, usize), h: usize, w: usize, sigma: f64) -> Result<Vec<f32>> {
    if grid_map.len() != grid.0 * grid.1 {
        bail!(
            "a {grid:?} grid needs {} values, got {}",
            grid.0 * grid.1,
            grid_map.len()
        );
    }
    gaussian_filter(&bilinear_resize(grid_map, grid.0, grid.1, h, w), h, w, sigma)
}

/// Named f32 tensors as one safetensors file in `dtype` (F16, else F32): the converted learned
/// files of AnomalyCLIP and AdaptCLIP (`anoscope convert --learned`).
pub fn serialize(tensors: &[(String, Tensor)], dtype: safetensors::Dtype) -> Result<Vec<u8>> {
    let dtype = match dtype {
        safetensors::Dtype::F16 => safetensors::Dtype::F16,
        _ => safetensors::Dtype::F32,
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            let b = match dtype {
                safetensors::Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            Ok((n.clone(), t.dims().to_vec(), b))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_scipys() {
        // scipy: radius int(4·4 + 0.5) = 16, 33 taps; `_gaussian_kernel1d(4, 0, 16)[16]`.
        let k = gaussian_kernel(4.0, 4.0);
        assert_eq!(k.len(), 33);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((k[16] - 0.099_739_099_530_986_34).abs() < 1e-15, "{}", k[16]);
        assert_eq!(k[0], k[32]);
    }

    #[test]
    fn reflect_repeats_the_edge_and_wraps() {
        let got: Vec<usize> = (-4..7).map(|i| reflect(i, 3)).collect();
        assert_eq!(got, vec![2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]);
    }

    #[test]
    fn constant_map_stays_constant_and_mass_is_kept() {
        let m = vec![0.25f32; 5 * 7];
        let g = gaussian_filter(&m, 5, 7, 4.0).unwrap();
        assert!(g.iter().all(|v| (v - 0.25).abs() < 1e-6));
        // An impulse in a large map spreads with unit mass.
        let mut m = vec![0f32; 41 * 41];
        m[20 * 41 + 20] = 1.0;
        let g = gaussian_filter(&m, 41, 41, 4.0).unwrap();
        let total: f32 = g.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(g[20 * 41 + 20] > g[20 * 41 + 21] && g[20 * 41 + 21] > g[20 * 41 + 22]);
    }

    #[test]
    fn small_map_matches_scipy() {
        // m = zeros((5, 7), float32); m[1, 2] = 1; m[4, 6] = 0.5; gaussian_filter(m, 4)
        // (the radius 16 exceeds both sides: the reflection wraps several times).
        let mut m = vec![0f32; 35];
        m[9] = 1.0;
        m[34] = 0.5;
        let g = gaussian_filter(&m, 5, 7, 4.0).unwrap();
        for (i, want) in [
            (0, 0.043146762996912),
            (9, 0.04294159263372421),
            (34, 0.04383140429854393),
        ] {
            assert!((g[i] as f64 - want).abs() < 1e-8, "{i}: {} vs {want}", g[i]);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(gaussian_filter(&[0.0; 5], 2, 3, 4.0).is_err());
        assert!(gaussian_filter(&[0.0; 6], 2, 3, 0.0).is_err());
        assert!(smooth_map(&[0.0; 3], (2, 2), 8, 8, 4.0).is_err());
    }
}
