//! Small pure functions shared by the detection modes: window layouts, harmonic aggregation,
//! two-class scores and torch-compatible bilinear upsampling. Each has a worked example below
//! that doubles as a golden test.

/// Sliding `k × k` windows with stride `stride` over a `gh × gw` patch grid, as anomalib's
/// `make_masks` (an `unfold` of the index grid) orders them: windows row-major by their top-left
/// corner, patch indices row-major inside a window.
///
/// ```
/// use anoscope::detect::aggregate::make_windows;
/// assert_eq!(make_windows(3, 3, 2, 1), vec![vec![0, 1, 3, 4], vec![1, 2, 4, 5], vec![3, 4, 6, 7], vec![4, 5, 7, 8]]);
/// ```
pub fn make_windows(gh: usize, gw: usize, k: usize, stride: usize) -> Vec<Vec<usize>> {
    if k == 0 || stride == 0 || k > gh || k > gw {
        return Vec::new();
    }
    let mut out = Vec::new();
    for r in (0..=gh - k).step_by(stride) {
        for c in (0..=gw - k).step_by(stride) {
            out.push((0..k).flat_map(|i| (0..k).map(move |j| (r + i) * gw + c + j)).collect());
        }
    }
    out
}

/// Per patch, the harmonic mean of the scores of the windows covering it (WinCLIP eq. 3, as
/// anomalib's `harmonic_aggregation`: `count / Σ 1/score`; a patch no window covers gets 0, and a
/// zero score makes every patch it covers 0).
///
/// ```
/// use anoscope::detect::aggregate::{harmonic_aggregation, make_windows};
/// let windows = make_windows(3, 3, 2, 1);
/// let map = harmonic_aggregation(&[1.0, 0.75, 0.5, 0.25], &windows, 9);
/// let want = [1.0, 0.8571, 0.75, 0.6667, 0.48, 0.375, 0.5, 0.3333, 0.25];
/// assert!(map.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4));
/// ```
pub fn harmonic_aggregation(window_scores: &[f32], windows: &[Vec<usize>], n_patches: usize) -> Vec<f32> {
    let mut count = vec![0f32; n_patches];
    let mut inv = vec![0f32; n_patches];
    for (s, w) in window_scores.iter().zip(windows) {
        for &p in w {
            count[p] += 1.0;
            inv[p] += 1.0 / s;
        }
    }
    count
        .iter()
        .zip(&inv)
        .map(|(&c, &i)| {
            let v = c / i;
            if v.is_finite() {
                v
            } else {
                0.0
            }
        })
        .collect()
}

/// Harmonic mean across equally shaped maps, element-wise (`n / Σ 1/m`; 0 where any map is 0).
pub fn harmonic_mean_maps(maps: &[&[f32]]) -> Vec<f32> {
    let n = maps.len() as f32;
    (0..maps[0].len())
        .map(|i| {
            let v = n / maps.iter().map(|m| 1.0 / m[i]).sum::<f32>();
            if v.is_finite() {
                v
            } else {
                0.0
            }
        })
        .collect()
}

/// L2-normalises `v` in place (as `F.normalize`, with its 1e-12 floor on the norm).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The anomalous probability of a two-class softmax over cosine similarities divided by the
/// temperature (WinCLIP eq. 1): `softmax([cos(e, n), cos(e, a)] / τ)[1]`. `normal_unit` and
/// `anomalous_unit` must be unit vectors; `e` need not be.
///
/// ```
/// use anoscope::detect::aggregate::anomaly_probability;
/// // cos = (1, 0) at τ = 1: e^0 / (e^1 + e^0)
/// let p = anomaly_probability(&[2.0, 0.0], &[1.0, 0.0], &[0.0, 1.0], 1.0);
/// assert!((p - 1.0 / (1.0 + std::f32::consts::E)).abs() < 1e-6);
/// ```
pub fn anomaly_probability(e: &[f32], normal_unit: &[f32], anomalous_unit: &[f32], temperature: f32) -> f32 {
    let norm = dot(e, e).sqrt().max(1e-12);
    let cn = dot(e, normal_unit) / norm;
    let ca = dot(e, anomalous_unit) / norm;
    // softmax over two logits = sigmoid of their difference
    1.0 / (1.0 + ((cn - ca) / temperature).exp())
}

/// Bilinear resampling of a row-major `ih × iw` map to `oh × ow`, exactly as
/// `F.interpolate(mode="bilinear", align_corners=False)` (source index `(o + ½)·in/out − ½`,
/// clamped at 0; the last row/column repeats).
///
/// ```
/// use anoscope::detect::aggregate::bilinear_resize;
/// // 1×2 → 1×4: torch gives [0, 0.25, 0.75, 1]
/// assert_eq!(bilinear_resize(&[0.0, 1.0], 1, 2, 1, 4), vec![0.0, 0.25, 0.75, 1.0]);
/// ```
pub fn bilinear_resize(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    bilinear(src, ih, iw, oh, ow, false)
}

/// As [`bilinear_resize`] with `align_corners=True` (source index `o·(in−1)/(out−1)`), the
/// upsampling of the official MuSc code.
///
/// ```
/// use anoscope::detect::aggregate::bilinear_resize_align_corners;
/// assert_eq!(bilinear_resize_align_corners(&[0.0, 1.0], 1, 2, 1, 3), vec![0.0, 0.5, 1.0]);
/// ```
pub fn bilinear_resize_align_corners(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    bilinear(src, ih, iw, oh, ow, true)
}

/// `(i0, i1, weight of i1)` for every output index along one axis.
pub fn bilinear_axis(inp: usize, out: usize, align_corners: bool) -> Vec<(usize, usize, f32)> {
    (0..out)
        .map(|o| {
            let s = if align_corners {
                if out > 1 {
                    o as f32 * (inp as f32 - 1.0) / (out as f32 - 1.0)
                } else {
                    0.0
                }
            } else {
                ((o as f32 + 0.5) * (inp as f32 / out as f32) - 0.5).max(0.0)
            };
            let i0 = (s.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

fn bilinear(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize, align_corners: bool) -> Vec<f32> {
    let ys = bilinear_axis(ih, oh, align_corners);
    let xs = bilinear_axis(iw, ow, align_corners);
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, ly) in &ys {
        for &(x0, x1, lx) in &xs {
            let top = (1.0 - lx) * src[y0 * iw + x0] + lx * src[y0 * iw + x1];
            let bottom = (1.0 - lx) * src[y1 * iw + x0] + lx * src[y1 * iw + x1];
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_for_winclip_at_240() {
        // ViT-B-16-plus-240: 15×15 grid → 196 2×2 and 169 3×3 windows (365 passes).
        assert_eq!(make_windows(15, 15, 2, 1).len(), 196);
        assert_eq!(make_windows(15, 15, 3, 1).len(), 169);
        assert_eq!(make_windows(15, 15, 3, 1)[1], vec![1, 2, 3, 16, 17, 18, 31, 32, 33]);
    }

    #[test]
    fn harmonic_mean_of_maps() {
        let a = [1.0, 0.5, 0.0];
        let b = [1.0, 0.25, 0.9];
        let m = harmonic_mean_maps(&[&a, &b]);
        assert_eq!(m[0], 1.0);
        assert!((m[1] - 2.0 / 6.0).abs() < 1e-6);
        assert_eq!(m[2], 0.0);
    }

    #[test]
    fn bilinear_identity_and_downscale() {
        let src: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(bilinear_resize(&src, 3, 4, 3, 4), src);
        // 2× downscale samples between pixels: mean of 2×2 blocks for align_corners=False.
        let d = bilinear_resize(&[0.0, 1.0, 2.0, 3.0], 2, 2, 1, 1);
        assert!((d[0] - 1.5).abs() < 1e-6);
    }
}
