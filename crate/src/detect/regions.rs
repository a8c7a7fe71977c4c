//! Defect regions: the connected parts of an anomaly map at or above a threshold, measured at the
//! map's own resolution (the photo's, after [`super::geometry::to_photo`]).
//!
//! Connectivity is 8 (diagonal neighbours join a region), as OpenCV's `connectedComponents` with
//! connectivity 8 that anomalib's AUPRO uses (and [`crate::metrics`]' labelling): a defect drawn
//! as a thin diagonal line stays one region. A pixel is in when `value >= threshold` (so a
//! threshold equal to a value selects it); NaN values and a NaN threshold select nothing.
//! Regions come sorted by decreasing peak score (ties: larger area first, then raster order of
//! the first pixel), so the first is the most anomalous.
use anyhow::{bail, Result};
use serde::Serialize;

/// One connected region of `map >= threshold`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Region {
    /// Bounding box `[x, y, width, height]` in map pixels (x, y: the top-left pixel).
    pub bbox: [usize; 4],
    /// Number of pixels in the region.
    pub area_px: usize,
    /// The region's share of the map, in percent (`100 · area_px / (width · height)`).
    pub area_pct: f64,
    /// The highest map value in the region.
    pub peak: f32,
    /// The mean map value over the region's pixels.
    pub mean: f32,
    /// `[x, y]` of the region's peak (the first such pixel in raster order).
    pub peak_xy: [usize; 2],
}

/// The 8-connected regions of `map >= threshold` (row-major `width × height`) with at least
/// `min_area` pixels, sorted by decreasing peak (see the [module docs](self)).
///
/// Errors if `map.len() != width * height`.
///
/// ```
/// use anoscope::detect::regions::regions;
/// let map = [0.9, 0.0, 0.0,
///            0.0, 0.6, 0.0,
///            0.0, 0.0, 0.0];
/// let r = regions(&map, 3, 3, 0.5, 1).unwrap();
/// assert_eq!(r.len(), 1); // diagonal neighbours are one region
/// assert_eq!((r[0].bbox, r[0].area_px, r[0].peak_xy), ([0, 0, 2, 2], 2, [0, 0]));
/// ```
pub fn regions(map: &[f32], width: usize, height: usize, threshold: f32, min_area: usize) -> Result<Vec<Region>> {
    if width.checked_mul(height) != Some(map.len()) {
        bail!("anomaly map has {} values, not {width}x{height}", map.len());
    }
    let total = map.len();
    let inside = |p: usize| map[p] >= threshold;
    let mut seen = vec![false; total];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    for start in 0..total {
        if seen[start] || !inside(start) {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        let (mut area, mut sum, mut peak, mut peak_at) = (0usize, 0f64, f32::NEG_INFINITY, start);
        while let Some(p) = stack.pop() {
            let (x, y) = (p % width, p / width);
            area += 1;
            sum += f64::from(map[p]);
            // Raster-first peak: a later pixel wins only with a higher value or an earlier index.
            if map[p] > peak || (map[p] == peak && p < peak_at) {
                peak = map[p];
                peak_at = p;
            }
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let q = ny * width + nx;
                    if !seen[q] && inside(q) {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        if area < min_area {
            continue;
        }
        out.push((
            start,
            Region {
                bbox: [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                area_px: area,
                area_pct: 100.0 * area as f64 / total as f64,
                peak,
                mean: (sum / area as f64) as f32,
                peak_xy: [peak_at % width, peak_at / width],
            },
        ));
    }
    out.sort_by(|(sa, a), (sb, b)| {
        b.peak
            .total_cmp(&a.peak)
            .then(b.area_px.cmp(&a.area_px))
            .then(sa.cmp(sb))
    });
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map from a picture: `.` = 0, digits = tenths.
    fn map(rows: &[&str]) -> (Vec<f32>, usize, usize) {
        let w = rows[0].len();
        let v = rows
            .iter()
            .flat_map(|r| {
                assert_eq!(r.len(), w);
                r.chars().map(|c| c.to_digit(10).map_or(0.0, |d| d as f32 / 10.0))
            })
            .collect();
        (v, w, rows.len())
    }

    #[test]
    fn two_blobs_measured_and_sorted_by_peak() {
        let (m, w, h) = map(&[
            "55......", //
            "56....8.", //
            "......99", //
            "......7.", //
        ]);
        let r = regions(&m, w, h, 0.5, 1).unwrap();
        assert_eq!(r.len(), 2);
        // First: the right blob (peak 0.9, first 0.9 in raster order at (6, 2)).
        assert_eq!(r[0].bbox, [6, 1, 2, 3]);
        assert_eq!(r[0].area_px, 4);
        assert!((r[0].area_pct - 12.5).abs() < 1e-12);
        assert_eq!(r[0].peak, 0.9);
        assert_eq!(r[0].peak_xy, [6, 2]);
        assert!((r[0].mean - (0.8 + 0.9 + 0.9 + 0.7) / 4.0).abs() < 1e-6);
        // Second: the left blob.
        assert_eq!(r[1].bbox, [0, 0, 2, 2]);
        assert_eq!(r[1].area_px, 4);
        assert_eq!(r[1].peak, 0.6);
        assert_eq!(r[1].peak_xy, [1, 1]);
        assert!((r[1].mean - 0.525).abs() < 1e-6);
    }

    #[test]
    fn diagonal_touching_is_one_region_and_4_apart_are_two() {
        let (m, w, h) = map(&[
            "9...", //
            ".9..", //
            "..9.", //
            "....", //
            "9..9", //
        ]);
        let r = regions(&m, w, h, 0.9, 1).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].bbox, [0, 0, 3, 3]);
        assert_eq!(r[0].area_px, 3);
        // Equal peaks and areas: raster order of the first pixel.
        assert_eq!(r[1].bbox, [0, 4, 1, 1]);
        assert_eq!(r[2].bbox, [3, 4, 1, 1]);
    }

    #[test]
    fn threshold_equal_to_a_value_selects_it_and_border_blobs_are_whole() {
        let (m, w, h) = map(&[
            "333", //
            "3.2", //
            "...", //
        ]);
        let r = regions(&m, w, h, 0.3, 1).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].bbox, r[0].area_px), ([0, 0, 3, 2], 4));
        let r = regions(&m, w, h, 0.2, 1).unwrap();
        assert_eq!((r[0].bbox, r[0].area_px), ([0, 0, 3, 2], 5));
        // The whole map above the threshold: one region touching every border.
        let r = regions(&[0.5; 12], 4, 3, 0.5, 1).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].bbox, r[0].area_px, r[0].area_pct), ([0, 0, 4, 3], 12, 100.0));
    }

    #[test]
    fn empty_results_min_area_and_nan() {
        let (m, w, h) = map(&["1.2", "...", "..9"]);
        assert!(regions(&m, w, h, 0.95, 1).unwrap().is_empty());
        assert!(regions(&m, w, h, f32::NAN, 1).unwrap().is_empty());
        // min_area 2 drops the single pixels.
        let (m, w, h) = map(&["9..", "...", ".88"]);
        let r = regions(&m, w, h, 0.5, 2).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].bbox, [1, 2, 2, 1]);
        let mut m = vec![0.0, f32::NAN, 0.7, 0.0];
        assert_eq!(regions(&m, 2, 2, 0.5, 1).unwrap().len(), 1);
        m[2] = f32::NAN;
        assert!(regions(&m, 2, 2, 0.5, 1).unwrap().is_empty());
        assert!(regions(&m, 3, 2, 0.5, 1).is_err());
        assert!(regions(&[], 0, 0, 0.5, 1).unwrap().is_empty());
    }
}
