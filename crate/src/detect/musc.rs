//! Batch zero-shot MuSc (Li et al., ICLR 2024): every image of an unlabeled batch is scored by
//! its patches' distances to the patches of the other images — anomalies are rare, so a patch
//! that no other image resembles is anomalous. Training-free, no text.
//!
//! Steps (the official algorithm; tests/reference/DETECTION.md has the worked definitions):
//! 1. Features: the raw outputs of several blocks (no `ln_post`, no projection), patches only.
//! 2. LNAMD, for each r in `r_list`: a LayerNorm over all `N·D` values of each image and layer
//!    (no affine), an `r × r` mean over the patch grid with zero padding (divisor always r²),
//!    then each vector L2-normalised.
//! 3. MSM, per (r, layer): for patch p of image i, `d_ij(p) = min_q ‖Z_i[p] − Z_j[q]‖` for every
//!    other image j; the score is the mean of the `⌊(n−1)·0.3⌋` smallest (at least 1).
//! 4. The patch scores are averaged over layers and r, upsampled bilinearly
//!    (`align_corners=True`, as the official code) to the input; the raw image score is the
//!    maximum of the upsampled map.
//! 5. RsCIN: raw scores min-max normalised over the batch, then for each k in `k_list` each image's
//!    score is the similarity-weighted mean over its k most similar images (cosine of the
//!    L2-normalised CLIP image embeddings, itself included); the final score is the mean over k.
//!
//! Memory: features are `n × |r| × |layers| × N × D` floats; distances are computed one image
//! against the batch at a time (`N × n·N` similarities), never the whole `nN × nN` matrix.
use super::aggregate::bilinear_resize_align_corners;
use super::passes::{self, Passes};
use super::Detection;
use crate::model::{Clip, EncodeOptions};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// MuSc settings.
#[derive(Clone, Debug)]
pub struct MuscConfig {
    /// Blocks whose outputs are used (1-based). Empty = [`default_layers`].
    pub layers: Vec<usize>,
    /// LNAMD neighbourhood sides (odd).
    pub r_list: Vec<usize>,
    /// Fraction of the other images whose smallest distances are averaged.
    pub topmin_max: f64,
    /// RsCIN neighbourhood sizes (official: [1, 2, 3] for MVTec AD, [1, 8, 9] for VisA).
    pub k_list: Vec<usize>,
}

impl Default for MuscConfig {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            r_list: vec![1, 3, 5],
            topmin_max: 0.3,
            k_list: vec![1, 2, 3],
        }
    }
}

/// Largest batch accepted: features take `n · |r| · |layers| · N · D` f32 (7.2 MB per image for
/// ViT-B/16 at 224 with the defaults, 1.8 GB at 256 images); time grows quadratically.
pub const MAX_BATCH: usize = 256;

/// Four evenly spaced blocks ending at the last one (ViT-B: 3, 6, 9, 12; ViT-L: 6, 12, 18, 24).
pub fn default_layers(depth: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=4)
        .map(|i| ((depth * i) as f64 / 4.0).round().max(1.0) as usize)
        .collect();
    v.dedup();
    v
}

/// LNAMD for one image and layer: `tokens` is `[N, D]` row-major on a `gh × gw` grid. Returns
/// `[N, D]` L2-normalised aggregated features.
pub fn lnamd(tokens: &[f32], gh: usize, gw: usize, d: usize, r: usize) -> Vec<f32> {
    let n = gh * gw;
    // LayerNorm over all N·D values (biased variance, eps 1e-5, weight 1, bias 0).
    let count = (n * d) as f64;
    let mean = tokens.iter().map(|&x| x as f64).sum::<f64>() / count;
    let var = tokens.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / count;
    let inv = 1.0 / (var + 1e-5).sqrt();
    let normed: Vec<f32> = tokens.iter().map(|&x| ((x as f64 - mean) * inv) as f32).collect();
    let half = (r / 2) as isize;
    let mut out = vec![0f32; n * d];
    let area = (r * r) as f32;
    for y in 0..gh as isize {
        for x in 0..gw as isize {
            let dst = &mut out[(y as usize * gw + x as usize) * d..][..d];
            for dy in -half..=half {
                for dx in -half..=half {
                    let (yy, xx) = (y + dy, x + dx);
                    if yy < 0 || xx < 0 || yy >= gh as isize || xx >= gw as isize {
                        continue; // zero padding
                    }
                    let src = &normed[(yy as usize * gw + xx as usize) * d..][..d];
                    dst.iter_mut().zip(src).for_each(|(o, s)| *o += s);
                }
            }
            let norm = dst
                .iter()
                .map(|v| (v / area) * (v / area))
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            dst.iter_mut().for_each(|v| *v = *v / area / norm);
        }
    }
    out
}

/// MSM for one (r, layer): `feats[i]` is image i's `[N, D]` features. Returns `[n][N]` scores.
pub fn mutual_scores(feats: &[Tensor], topmin_max: f64) -> Result<Vec<Vec<f32>>> {
    let n = feats.len();
    if n < 2 {
        bail!("mutual scoring needs at least 2 images, got {n}");
    }
    let k = (((n - 1) as f64 * topmin_max) as usize).clamp(1, n - 1);
    let sq: Vec<Tensor> = feats
        .iter()
        .map(|f| f.sqr()?.sum_keepdim(1))
        .collect::<candle_core::Result<_>>()?;
    let all = Tensor::cat(feats, 0)?; // [n·N, D]
    let all_sq = Tensor::cat(&sq, 0)?.t()?; // [1, n·N]
    let np = feats[0].dim(0)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // Squared distances ‖a‖² + ‖b‖² − 2 a·b, [N, n·N].
        let d2 = feats[i]
            .matmul(&all.t()?)?
            .affine(-2.0, 0.0)?
            .broadcast_add(&sq[i])?
            .broadcast_add(&all_sq)?;
        let d2 = d2.reshape((np, n, np))?.min(2)?.to_vec2::<f32>()?; // [N, n]: nearest patch per image
        let mut scores = Vec::with_capacity(np);
        for row in d2 {
            let mut d: Vec<f32> = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &v)| v.max(0.0).sqrt())
                .collect();
            d.sort_by(f32::total_cmp);
            scores.push(d[..k].iter().sum::<f32>() / k as f32);
        }
        out.push(scores);
    }
    Ok(out)
}

/// RsCIN: re-scores raw image scores with the image-level neighbourhood. `embeds` are the
/// images' CLIP embeddings (any norm). Returns (final scores, per-k scores).
pub fn rscin(raw: &[f32], embeds: &[Vec<f32>], k_list: &[usize]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let n = raw.len();
    let (lo, hi) = raw.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    // All equal: nothing to rank; every image gets 0 (the official code divides by zero).
    let s: Vec<f32> = raw
        .iter()
        .map(|&v| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 })
        .collect();
    let unit: Vec<Vec<f32>> = embeds
        .iter()
        .map(|e| {
            let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            e.iter().map(|x| x / norm).collect()
        })
        .collect();
    let w: Vec<Vec<f32>> = unit
        .iter()
        .map(|a| unit.iter().map(|b| super::aggregate::dot(a, b)).collect())
        .collect();
    let per_k: Vec<Vec<f32>> = k_list
        .iter()
        .map(|&k| {
            let k = k.clamp(1, n);
            (0..n)
                .map(|i| {
                    let mut idx: Vec<usize> = (0..n).collect();
                    // Largest similarities first; ties by index (stable).
                    idx.sort_by(|&a, &b| w[i][b].total_cmp(&w[i][a]));
                    let (num, den) = idx[..k]
                        .iter()
                        .fold((0f32, 0f32), |(num, den), &j| (num + w[i][j] * s[j], den + w[i][j]));
                    num / den
                })
                .collect()
        })
        .collect();
    let fin = (0..n)
        .map(|i| per_k.iter().map(|v| v[i]).sum::<f32>() / per_k.len() as f32)
        .collect();
    (fin, per_k)
}

/// Intermediate results of a MuSc run (for tests and inspection).
#[derive(Clone, Debug)]
pub struct MuscOutput {
    /// One result per input image, in input order: the RsCIN score and the raw (unscaled) map.
    pub detections: Vec<Detection>,
    /// `[n][N]` patch scores averaged over layers and r.
    pub patch_scores: Vec<Vec<f32>>,
    /// `[r][layer][n][N]` MSM scores.
    pub msm: Vec<Vec<Vec<Vec<f32>>>>,
    /// Raw image scores (max of the upsampled map), before RsCIN.
    pub raw_scores: Vec<f32>,
    /// RsCIN scores per k.
    pub rscin_per_k: Vec<Vec<f32>>,
    /// LNAMD features `[r][layer][image] -> [N·D]`.
    pub lnamd: Vec<Vec<Vec<Vec<f32>>>>,
}

/// Scores a batch of normalised `pixels: [n, 3, H, W]` (n ≥ 2) against itself.
pub fn detect(clip: &Clip, pixels: &Tensor, cfg: &MuscConfig) -> Result<MuscOutput> {
    detect_with_progress(clip, pixels, cfg, &mut |_, _, _| Ok(()))
}

/// Progress stage of [`detect_with_progress`]'s callback while the images are encoded.
pub const STAGE_ENCODING: &str = "encoding";
/// Progress stage of [`detect_with_progress`]'s callback while the (r, layer) pairs are scored.
pub const STAGE_SCORING: &str = "scoring";

/// [`detect`], calling `progress(done, total, stage)` after each step: one per image encoded
/// ([`STAGE_ENCODING`]), then one per (r, layer) pair scored ([`STAGE_SCORING`]);
/// `total = n + |r_list| · |layers|`. An error from `progress` stops the run and is returned.
pub fn detect_with_progress(
    clip: &Clip,
    pixels: &Tensor,
    cfg: &MuscConfig,
    progress: &mut dyn FnMut(usize, usize, &str) -> Result<()>,
) -> Result<MuscOutput> {
    passes::now(detect_with_progress_on(clip, &clip.vision, pixels, cfg, progress))
}

/// [`detect_with_progress`] with the image tower's passes run by `tower` (see [`Passes`]).
pub async fn detect_with_progress_on(
    clip: &Clip,
    tower: &impl Passes,
    pixels: &Tensor,
    cfg: &MuscConfig,
    progress: &mut dyn FnMut(usize, usize, &str) -> Result<()>,
) -> Result<MuscOutput> {
    let (n, _, h, w) = pixels.dims4()?;
    if n < 2 {
        bail!("batch mode (MuSc) needs at least 2 images, got {n}");
    }
    if n > MAX_BATCH {
        bail!("batch mode takes at most {MAX_BATCH} images, got {n}");
    }
    let depth = clip.cfg.vision.layers;
    let layers = if cfg.layers.is_empty() {
        default_layers(depth)
    } else {
        cfg.layers.clone()
    };
    if let Some(&bad) = layers.iter().find(|&&l| l == 0 || l > depth) {
        bail!("MuSc layer {bad} does not exist (blocks 1..={depth})");
    }
    if cfg.r_list.is_empty() || cfg.r_list.iter().any(|r| r % 2 == 0) {
        bail!("LNAMD sides must be odd and at least one, got {:?}", cfg.r_list);
    }
    let d = clip.cfg.vision.width;
    let total = n + cfg.r_list.len() * layers.len();
    let mut done = 0;
    // feats[r][layer][image] = [N, D] tensor
    let mut feats: Vec<Vec<Vec<Tensor>>> = vec![vec![Vec::with_capacity(n); layers.len()]; cfg.r_list.len()];
    let mut lnamd_out: Vec<Vec<Vec<Vec<f32>>>> = vec![vec![Vec::with_capacity(n); layers.len()]; cfg.r_list.len()];
    let mut embeds = Vec::with_capacity(n);
    let mut grid = (0, 0);
    for i in 0..n {
        let out = tower
            .forward(
                &pixels.narrow(0, i, 1)?,
                &EncodeOptions {
                    hidden_layers: layers.clone(),
                    surgery_layers: 0,
                },
            )
            .await?;
        grid = out.grid;
        let np = grid.0 * grid.1;
        embeds.push(out.image_embeds.squeeze(0)?.to_vec1::<f32>()?);
        for (li, (_, hs)) in out.hidden_states.iter().enumerate() {
            let tokens = hs.squeeze(0)?.narrow(0, 1, np)?.flatten_all()?.to_vec1::<f32>()?;
            for (ri, &r) in cfg.r_list.iter().enumerate() {
                let z = lnamd(&tokens, grid.0, grid.1, d, r);
                feats[ri][li].push(Tensor::from_slice(&z, (np, d), &Device::Cpu)?);
                lnamd_out[ri][li].push(z);
            }
        }
        done += 1;
        progress(done, total, STAGE_ENCODING)?;
    }
    let np = grid.0 * grid.1;
    let mut msm = Vec::with_capacity(cfg.r_list.len());
    let mut patch_scores = vec![vec![0f32; np]; n];
    let terms = (cfg.r_list.len() * layers.len()) as f32;
    for per_layer in &feats {
        let mut per_r = Vec::with_capacity(layers.len());
        for f in per_layer {
            let s = mutual_scores(f, cfg.topmin_max)?;
            for (acc, row) in patch_scores.iter_mut().zip(&s) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v / terms);
            }
            per_r.push(s);
            done += 1;
            progress(done, total, STAGE_SCORING)?;
        }
        msm.push(per_r);
    }
    let mut detections = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    for ps in &patch_scores {
        let map = bilinear_resize_align_corners(ps, grid.0, grid.1, h, w);
        raw.push(map.iter().copied().fold(f32::MIN, f32::max));
        detections.push(Detection {
            score: 0.0,
            map,
            height: h,
            width: w,
            grid_map: ps.clone(),
            grid,
        });
    }
    let (scores, rscin_per_k) = rscin(&raw, &embeds, &cfg.k_list);
    for (det, s) in detections.iter_mut().zip(&scores) {
        det.score = *s;
    }
    Ok(MuscOutput {
        detections,
        patch_scores,
        msm,
        raw_scores: raw,
        rscin_per_k,
        lnamd: lnamd_out,
    })
}

/// Rescales the maps of one batch to `[0, 1]` with one range for all of them (the smallest and
/// largest finite value over the batch), so the maps can be drawn on a fixed scale and still
/// compare across the batch. A constant batch becomes all zeros; NaN stays NaN. Returns the
/// `(lo, hi)` range used.
pub fn unit_range_maps(detections: &mut [Detection]) -> (f32, f32) {
    let (lo, hi) = detections
        .iter()
        .flat_map(|d| d.map.iter())
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 0.0);
    }
    let span = f64::from(hi) - f64::from(lo);
    for v in detections.iter_mut().flat_map(|d| d.map.iter_mut()) {
        if v.is_nan() {
            continue;
        }
        *v = if span > 0.0 {
            ((f64::from(*v) - f64::from(lo)) / span).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layers_match_the_official_configs() {
        assert_eq!(default_layers(12), vec![3, 6, 9, 12]);
        assert_eq!(default_layers(24), vec![6, 12, 18, 24]);
        assert_eq!(default_layers(3), vec![1, 2, 3]);
    }

    #[test]
    fn rscin_worked_example() {
        // cos(0,1) = 0.8, cos(0,2) = 0, cos(1,2) = 0.6; normalised raw scores s = [0, 1, 0.5].
        let raw = [2.0, 4.0, 3.0];
        let e = vec![vec![1.0, 0.0], vec![0.8, 0.6], vec![0.0, 1.0]];
        let (fin, per_k) = rscin(&raw, &e, &[1, 2]);
        assert_eq!(per_k[0], vec![0.0, 1.0, 0.5]); // k = 1: itself
        let want = [0.8 / 1.8, 1.0 / 1.8, (0.5 + 0.6) / 1.6];
        for (a, b) in per_k[1].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!((fin[0] - 0.5 * want[0]).abs() < 1e-6);
    }

    #[test]
    fn unit_range_maps_uses_one_range_for_the_batch() {
        let det = |map: Vec<f32>| Detection {
            score: 0.0,
            height: 1,
            width: map.len(),
            grid_map: map.clone(),
            grid: (1, map.len()),
            map,
        };
        let mut dets = vec![det(vec![2.0, 3.0]), det(vec![4.0, f32::NAN, 6.0])];
        assert_eq!(unit_range_maps(&mut dets), (2.0, 6.0));
        assert_eq!(dets[0].map, vec![0.0, 0.25]);
        assert_eq!(dets[1].map[0], 0.5);
        assert!(dets[1].map[1].is_nan());
        assert_eq!(dets[1].map[2], 1.0);
        let mut flat = vec![det(vec![3.0, 3.0]), det(vec![3.0])];
        assert_eq!(unit_range_maps(&mut flat), (3.0, 3.0));
        assert!(flat.iter().all(|d| d.map.iter().all(|&v| v == 0.0)));
    }

    #[test]
    fn align_corners_upsampling_keeps_corners() {
        let m = bilinear_resize_align_corners(&[0.0, 1.0, 2.0, 3.0], 2, 2, 3, 3);
        assert_eq!(m, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    }
}
