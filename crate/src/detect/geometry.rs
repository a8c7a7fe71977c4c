//! Photo-true geometry: an anomaly map computed on the model's square input, resampled back onto
//! the photo's own width, height and aspect.
//!
//! The model sees the photo squash-resized to `size × size` (WinCLIP / anomalib's `Resize((size,
//! size))`, [`crate::preprocess::resize_preprocess`], Pillow's bicubic resampler), so input pixel
//! `i` (of `n`) along an axis is centred on photo coordinate `(i + ½)·L/n − ½` (Pillow's and
//! torch's half-pixel centre convention, `align_corners=False`). The inverse is the same
//! convention the other way round: photo pixel `X` (of `L`) reads the map at input coordinate
//! `(X + ½)·n/L − ½`, bilinearly, clamped at the borders (the first and last rows and columns
//! repeat). This is [`crate::render::resize_bilinear`]; here it gets the names and the bounds the
//! photo views need. Scores are never recomputed: only the map is resampled.
//!
//! Huge photos are drawn at a bounded size ([`bounded_size`], [`to_photo_bounded`]): the map is
//! resampled straight to the bounded size (the same inverse resize, for the photo scaled down to
//! that size), so no buffer larger than the bound is ever allocated.
use anyhow::{bail, Result};

/// The default bound on the long side of a photo-resolution map or overlay (pixels): 4096, so a
/// bounded map holds at most 16 Mi values (64 MiB of `f32`).
pub const MAX_PHOTO_SIDE: usize = 4096;

/// The map at the photo's own size: the `map_w × map_h` map (row-major, the model input's size)
/// resampled to `photo_w × photo_h` with the inverse of the squash resize (see the [module
/// docs](self)). Identity when the sizes match; a constant map stays exactly constant.
///
/// Errors if `map.len() != map_w * map_h`, the map is empty, or the photo is empty.
///
/// ```
/// use anoscope::detect::geometry::to_photo;
/// // A 1×2 map onto a 1×4 photo: photo pixels read input x = -0.25 (clamped), 0.25, 0.75, 1.25.
/// assert_eq!(to_photo(&[0.0, 1.0], 2, 1, 4, 1).unwrap(), vec![0.0, 0.25, 0.75, 1.0]);
/// ```
pub fn to_photo(map: &[f32], map_w: usize, map_h: usize, photo_w: usize, photo_h: usize) -> Result<Vec<f32>> {
    if photo_w == 0 || photo_h == 0 {
        bail!("the photo must have a positive size, got {photo_w}x{photo_h}");
    }
    if map_w == 0 || map_h == 0 {
        bail!("the anomaly map must have a positive size, got {map_w}x{map_h}");
    }
    crate::render::resize_bilinear(map, map_w, map_h, photo_w, photo_h)
}

/// The size a `photo_w × photo_h` photo is drawn at when its long side may be at most `max_side`
/// pixels: the photo's own size when it fits, else scaled down keeping the aspect (the long side
/// becomes `max_side`, the short side is rounded and at least 1). Returns `(width, height)`.
///
/// Errors for an empty photo or `max_side == 0`.
///
/// ```
/// use anoscope::detect::geometry::bounded_size;
/// assert_eq!(bounded_size(6000, 4000, 4096).unwrap(), (4096, 2731));
/// assert_eq!(bounded_size(250, 627, 4096).unwrap(), (250, 627));
/// ```
pub fn bounded_size(photo_w: usize, photo_h: usize, max_side: usize) -> Result<(usize, usize)> {
    if photo_w == 0 || photo_h == 0 {
        bail!("the photo must have a positive size, got {photo_w}x{photo_h}");
    }
    if max_side == 0 {
        bail!("the bound on the long side must be positive");
    }
    let long = photo_w.max(photo_h);
    if long <= max_side {
        return Ok((photo_w, photo_h));
    }
    // Integer rounding of short · max / long (u128: no overflow for any usize sizes).
    let scale = |short: usize| -> usize {
        let v = (short as u128 * max_side as u128 * 2 + long as u128) / (2 * long as u128);
        (v as usize).clamp(1, max_side)
    };
    Ok(if photo_w >= photo_h {
        (max_side, scale(photo_h))
    } else {
        (scale(photo_w), max_side)
    })
}

/// [`to_photo`] at [`bounded_size`]`(photo_w, photo_h, max_side)`: the map of the photo as drawn
/// with its long side at most `max_side`. Allocates only the bounded output. Returns `(map,
/// width, height)`; equals [`to_photo`] when the photo fits the bound.
pub fn to_photo_bounded(
    map: &[f32],
    map_w: usize,
    map_h: usize,
    photo_w: usize,
    photo_h: usize,
    max_side: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    let (w, h) = bounded_size(photo_w, photo_h, max_side)?;
    Ok((to_photo(map, map_w, map_h, w, h)?, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn two_by_two_onto_a_six_by_four_photo_by_hand() {
        // Map (w=2, h=2): [[0, 1], [2, 3]]. Photo 6 wide, 4 high.
        // x: X → (X + ½)·2/6 − ½ = -1/3, 0, 1/3, 2/3, 1, 4/3 → clamped 0, 0, 1/3, 2/3, 1, 1.
        // y: Y → (Y + ½)·2/4 − ½ = -1/4, 1/4, 3/4, 5/4 → clamped 0, 1/4, 3/4, 1.
        // value = x + 2·y.
        let out = to_photo(&[0.0, 1.0, 2.0, 3.0], 2, 2, 6, 4).unwrap();
        assert_eq!(out.len(), 24);
        let xs = [0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0];
        let ys = [0.0, 0.25, 0.75, 1.0];
        for (y, fy) in ys.iter().enumerate() {
            for (x, fx) in xs.iter().enumerate() {
                let want = fx + 2.0 * fy;
                assert!(close(out[y * 6 + x], want), "({x}, {y}): {} vs {want}", out[y * 6 + x]);
            }
        }
        // Corners are the map's corners exactly.
        assert_eq!((out[0], out[5], out[18], out[23]), (0.0, 1.0, 2.0, 3.0));
    }

    #[test]
    fn identity_when_the_sizes_match_and_constants_stay_constant() {
        let map: Vec<f32> = (0..12).map(|v| v as f32 * 0.1).collect();
        assert_eq!(to_photo(&map, 4, 3, 4, 3).unwrap(), map);
        let c = vec![0.37f32; 7 * 5];
        for (w, h) in [(250, 627), (1, 1), (13, 2), (1, 5000)] {
            assert!(to_photo(&c, 7, 5, w, h).unwrap().iter().all(|&v| v == 0.37), "{w}x{h}");
        }
    }

    #[test]
    fn a_planted_peak_lands_on_the_right_photo_pixel() {
        // 8×8 map, a single 1.0 at input (x=5, y=2); a 250×627 photo (squashed 31.25× / 78.375×
        // per input pixel). Input centre (5, 2) sits at photo ((5 + ½)·250/8 − ½, (2 + ½)·627/8 − ½)
        // = (171.375, 195.4375), so the photo's maximum is at the pixel nearest it, (171, 195).
        let mut map = vec![0f32; 64];
        map[2 * 8 + 5] = 1.0;
        let out = to_photo(&map, 8, 8, 250, 627).unwrap();
        let (arg, &max) = out.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        assert_eq!((arg % 250, arg / 250), (171, 195));
        assert!(max > 0.97 && max <= 1.0, "{max}");
        // Far from the peak the photo reads 0.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[626 * 250 + 249], 0.0);
    }

    #[test]
    fn bounded_sizes_keep_the_aspect() {
        assert_eq!(bounded_size(8000, 2000, 4096).unwrap(), (4096, 1024));
        assert_eq!(bounded_size(2000, 8000, 4096).unwrap(), (1024, 4096));
        assert_eq!(bounded_size(5000, 1, 4096).unwrap(), (4096, 1));
        assert_eq!(bounded_size(4096, 4096, 4096).unwrap(), (4096, 4096));
        assert_eq!(bounded_size(3, 7, 4).unwrap(), (2, 4)); // 3·4/7 = 1.71 → 2
        assert!(bounded_size(0, 7, 4).is_err());
        assert!(bounded_size(3, 7, 0).is_err());
        // Aspect within one rounding step for many sizes.
        for (w, h) in [(6000, 4000), (12345, 777), (250, 62700), (4097, 4095)] {
            let (bw, bh) = bounded_size(w, h, 4096).unwrap();
            assert_eq!(bw.max(bh), 4096);
            let want = w as f64 / h as f64;
            let lo = (bw as f64 - 0.5) / (bh as f64 + 0.5);
            let hi = (bw as f64 + 0.5) / (bh as f64 - 0.5).max(0.5);
            assert!(lo <= want && want <= hi, "{w}x{h} → {bw}x{bh}");
        }
    }

    #[test]
    fn the_bounded_map_is_the_map_of_the_scaled_photo() {
        let map: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let (m, w, h) = to_photo_bounded(&map, 4, 4, 8000, 2000, 400).unwrap();
        assert_eq!((w, h, m.len()), (400, 100, 40_000));
        assert_eq!(m, to_photo(&map, 4, 4, 400, 100).unwrap());
        // Within the bound: the photo's own size.
        let (m, w, h) = to_photo_bounded(&map, 4, 4, 30, 20, 400).unwrap();
        assert_eq!((w, h), (30, 20));
        assert_eq!(m, to_photo(&map, 4, 4, 30, 20).unwrap());
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(to_photo(&[1.0; 3], 2, 2, 4, 4).is_err());
        assert!(to_photo(&[], 0, 0, 4, 4).is_err());
        assert!(to_photo(&[1.0], 1, 1, 0, 4).is_err());
    }
}
