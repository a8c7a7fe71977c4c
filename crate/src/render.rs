//! Turning anomaly maps into pictures: a perceptual colormap, value ranges, RGBA heatmaps, overlays
//! with threshold outlines, report strips and PNG encoding.
//!
//! Shared by the CLI (`anoscope detect` writes `<stem>.overlay.png`), the evaluation report (worst
//! false positives / negatives) and the browser, which draws [`heatmap_rgba`]'s bytes on a canvas.
//! Everything here is pure and compiles for `wasm32`; only `save_png` touches the filesystem and
//! exists on native targets only.
//!
//! Conventions:
//! * maps are row-major `f32` slices of `width * height` values; NaN marks "no value" and is drawn
//!   as black in [`colormap`], transparent in [`heatmap_rgba`] and left untouched in [`overlay`];
//! * a [`Normalization`] maps raw map values to `[0, 1]` before colouring; thresholds are given in
//!   raw map units (the detector's units), not normalised ones.

use anyhow::{bail, ensure, Context, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};

// ---------------------------------------------------------------------------------------------
// Colormap

/// matplotlib's "inferno" colormap (van der Walt & Smith, the 256 published entries from
/// `matplotlib._cm_listed._inferno_data`), each channel `round(255 * c)`; the rounding error is at
/// most 0.5 levels. Its relative luminance rises strictly from the first entry to the last.
#[rustfmt::skip]
pub const INFERNO: [[u8; 3]; 256] = [
    [0, 0, 4], [1, 0, 5], [1, 1, 6], [1, 1, 8],
    [2, 1, 10], [2, 2, 12], [2, 2, 14], [3, 2, 16],
    [4, 3, 18], [4, 3, 20], [5, 4, 23], [6, 4, 25],
    [7, 5, 27], [8, 5, 29], [9, 6, 31], [10, 7, 34],
    [11, 7, 36], [12, 8, 38], [13, 8, 41], [14, 9, 43],
    [16, 9, 45], [17, 10, 48], [18, 10, 50], [20, 11, 52],
    [21, 11, 55], [22, 11, 57], [24, 12, 60], [25, 12, 62],
    [27, 12, 65], [28, 12, 67], [30, 12, 69], [31, 12, 72],
    [33, 12, 74], [35, 12, 76], [36, 12, 79], [38, 12, 81],
    [40, 11, 83], [41, 11, 85], [43, 11, 87], [45, 11, 89],
    [47, 10, 91], [49, 10, 92], [50, 10, 94], [52, 10, 95],
    [54, 9, 97], [56, 9, 98], [57, 9, 99], [59, 9, 100],
    [61, 9, 101], [62, 9, 102], [64, 10, 103], [66, 10, 104],
    [68, 10, 104], [69, 10, 105], [71, 11, 106], [73, 11, 106],
    [74, 12, 107], [76, 12, 107], [77, 13, 108], [79, 13, 108],
    [81, 14, 108], [82, 14, 109], [84, 15, 109], [85, 15, 109],
    [87, 16, 110], [89, 16, 110], [90, 17, 110], [92, 18, 110],
    [93, 18, 110], [95, 19, 110], [97, 19, 110], [98, 20, 110],
    [100, 21, 110], [101, 21, 110], [103, 22, 110], [105, 22, 110],
    [106, 23, 110], [108, 24, 110], [109, 24, 110], [111, 25, 110],
    [113, 25, 110], [114, 26, 110], [116, 26, 110], [117, 27, 110],
    [119, 28, 109], [120, 28, 109], [122, 29, 109], [124, 29, 109],
    [125, 30, 109], [127, 30, 108], [128, 31, 108], [130, 32, 108],
    [132, 32, 107], [133, 33, 107], [135, 33, 107], [136, 34, 106],
    [138, 34, 106], [140, 35, 105], [141, 35, 105], [143, 36, 105],
    [144, 37, 104], [146, 37, 104], [147, 38, 103], [149, 38, 103],
    [151, 39, 102], [152, 39, 102], [154, 40, 101], [155, 41, 100],
    [157, 41, 100], [159, 42, 99], [160, 42, 99], [162, 43, 98],
    [163, 44, 97], [165, 44, 96], [166, 45, 96], [168, 46, 95],
    [169, 46, 94], [171, 47, 94], [173, 48, 93], [174, 48, 92],
    [176, 49, 91], [177, 50, 90], [179, 50, 90], [180, 51, 89],
    [182, 52, 88], [183, 53, 87], [185, 53, 86], [186, 54, 85],
    [188, 55, 84], [189, 56, 83], [191, 57, 82], [192, 58, 81],
    [193, 58, 80], [195, 59, 79], [196, 60, 78], [198, 61, 77],
    [199, 62, 76], [200, 63, 75], [202, 64, 74], [203, 65, 73],
    [204, 66, 72], [206, 67, 71], [207, 68, 70], [208, 69, 69],
    [210, 70, 68], [211, 71, 67], [212, 72, 66], [213, 74, 65],
    [215, 75, 63], [216, 76, 62], [217, 77, 61], [218, 78, 60],
    [219, 80, 59], [221, 81, 58], [222, 82, 56], [223, 83, 55],
    [224, 85, 54], [225, 86, 53], [226, 87, 52], [227, 89, 51],
    [228, 90, 49], [229, 92, 48], [230, 93, 47], [231, 94, 46],
    [232, 96, 45], [233, 97, 43], [234, 99, 42], [235, 100, 41],
    [235, 102, 40], [236, 103, 38], [237, 105, 37], [238, 106, 36],
    [239, 108, 35], [239, 110, 33], [240, 111, 32], [241, 113, 31],
    [241, 115, 29], [242, 116, 28], [243, 118, 27], [243, 120, 25],
    [244, 121, 24], [245, 123, 23], [245, 125, 21], [246, 126, 20],
    [246, 128, 19], [247, 130, 18], [247, 132, 16], [248, 133, 15],
    [248, 135, 14], [248, 137, 12], [249, 139, 11], [249, 140, 10],
    [249, 142, 9], [250, 144, 8], [250, 146, 7], [250, 148, 7],
    [251, 150, 6], [251, 151, 6], [251, 153, 6], [251, 155, 6],
    [251, 157, 7], [252, 159, 7], [252, 161, 8], [252, 163, 9],
    [252, 165, 10], [252, 166, 12], [252, 168, 13], [252, 170, 15],
    [252, 172, 17], [252, 174, 18], [252, 176, 20], [252, 178, 22],
    [252, 180, 24], [251, 182, 26], [251, 184, 29], [251, 186, 31],
    [251, 188, 33], [251, 190, 35], [250, 192, 38], [250, 194, 40],
    [250, 196, 42], [250, 198, 45], [249, 199, 47], [249, 201, 50],
    [249, 203, 53], [248, 205, 55], [248, 207, 58], [247, 209, 61],
    [247, 211, 64], [246, 213, 67], [246, 215, 70], [245, 217, 73],
    [245, 219, 76], [244, 221, 79], [244, 223, 83], [244, 225, 86],
    [243, 227, 90], [243, 229, 93], [242, 230, 97], [242, 232, 101],
    [242, 234, 105], [241, 236, 109], [241, 237, 113], [241, 239, 117],
    [241, 241, 121], [242, 242, 125], [242, 244, 130], [243, 245, 134],
    [243, 246, 138], [244, 248, 142], [245, 249, 146], [246, 250, 150],
    [248, 251, 154], [249, 252, 157], [250, 253, 161], [252, 255, 164],
];

/// Colour drawn by [`overlay`] around the regions at or above its threshold (cyan: inferno never
/// comes close to it).
pub const OUTLINE_COLOR: [u8; 3] = [0, 255, 255];

/// The inferno colour of `v` in `[0, 1]`, looked up like matplotlib's `Colormap.__call__` does for
/// floats: entry `floor(v * 256)`, with `1.0` mapped to the last entry. Values outside `[0, 1]`
/// clamp to the ends (including infinities); NaN gives black.
pub fn colormap(v: f32) -> [u8; 3] {
    if v.is_nan() {
        return [0, 0, 0];
    }
    let idx = (v.clamp(0.0, 1.0) * 256.0) as usize;
    INFERNO[idx.min(255)]
}

// ---------------------------------------------------------------------------------------------
// Value ranges

/// A linear map from raw values to `[0, 1]`: `lo` goes to 0 and `hi` to 1, values outside clamp.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// The raw value drawn as 0 (the colormap's lowest colour).
    pub lo: f32,
    /// The raw value drawn as 1 (the colormap's highest colour).
    pub hi: f32,
}

impl Normalization {
    /// `Normalization { lo, hi }`.
    pub const fn new(lo: f32, hi: f32) -> Self {
        Self { lo, hi }
    }

    /// Maps `v` to `[0, 1]` (computed in `f64`, so wide ranges do not overflow).
    ///
    /// NaN stays NaN. A degenerate range (`hi <= lo`, or a bound that is NaN or infinite) never
    /// divides: it becomes a step, `v > lo` → 1 and everything else → 0, so a constant map
    /// normalised with [`RangeMode::MinMax`] is drawn entirely in the colormap's lowest colour.
    pub fn normalize(&self, v: f32) -> f32 {
        if v.is_nan() {
            return f32::NAN;
        }
        let (lo, hi) = (f64::from(self.lo), f64::from(self.hi));
        let span = hi - lo;
        if span > 0.0 && span.is_finite() {
            ((f64::from(v) - lo) / span).clamp(0.0, 1.0) as f32
        } else if v > self.lo {
            1.0
        } else {
            0.0
        }
    }

    /// Whether [`Normalization::normalize`] is a step rather than a linear ramp.
    pub fn is_degenerate(&self) -> bool {
        let span = f64::from(self.hi) - f64::from(self.lo);
        !(span > 0.0 && span.is_finite())
    }
}

impl Default for Normalization {
    /// The identity range `[0, 1]`.
    fn default() -> Self {
        Self::new(0.0, 1.0)
    }
}

/// How [`map_range`] chooses a [`Normalization`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeMode {
    /// The given bounds, as they are (`Fixed(lo, hi)`).
    Fixed(f32, f32),
    /// The smallest and largest finite values of the map.
    MinMax,
    /// The `p_lo`-th and `p_hi`-th percentiles of the finite values, `p` in `[0, 100]` (clamped;
    /// NaN counts as 0), interpolated linearly like `numpy.percentile`'s default method.
    Percentile(f32, f32),
}

/// The range of `map` under `mode`. NaN and infinite values are ignored; a map with no finite value
/// gives `[0, 1]` for the data-driven modes. The result may be degenerate (`lo == hi`, e.g. a
/// constant map), which [`Normalization::normalize`] handles without dividing by zero.
pub fn map_range(map: &[f32], mode: RangeMode) -> Normalization {
    match mode {
        RangeMode::Fixed(lo, hi) => Normalization::new(lo, hi),
        RangeMode::MinMax => {
            let mut it = map.iter().copied().filter(|v| v.is_finite());
            let Some(first) = it.next() else {
                return Normalization::default();
            };
            let (lo, hi) = it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)));
            Normalization::new(lo, hi)
        }
        RangeMode::Percentile(p_lo, p_hi) => {
            let mut values: Vec<f32> = map.iter().copied().filter(|v| v.is_finite()).collect();
            if values.is_empty() {
                return Normalization::default();
            }
            values.sort_unstable_by(f32::total_cmp);
            Normalization::new(percentile_sorted(&values, p_lo), percentile_sorted(&values, p_hi))
        }
    }
}

/// Linear-interpolation percentile of a sorted, non-empty slice (numpy's default `"linear"`).
fn percentile_sorted(sorted: &[f32], p: f32) -> f32 {
    let p = if p.is_nan() {
        0.0
    } else {
        f64::from(p).clamp(0.0, 100.0)
    };
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let i0 = rank.floor() as usize;
    let i1 = (i0 + 1).min(sorted.len() - 1);
    let t = rank - i0 as f64;
    let (a, b) = (f64::from(sorted[i0]), f64::from(sorted[i1]));
    if t == 0.0 {
        sorted[i0]
    } else {
        (a + (b - a) * t) as f32
    }
}

// ---------------------------------------------------------------------------------------------
// Heatmaps and overlays

/// `x` clamped to `[0, 1]`, NaN → 0.
fn unit(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// `width * height`, or an error naming what was measured.
fn area(width: usize, height: usize, what: &str) -> Result<usize> {
    width
        .checked_mul(height)
        .with_context(|| format!("{what} size {width}x{height} overflows"))
}

/// The map as RGBA bytes, row-major, 4 bytes a pixel (the layout of a canvas `ImageData`): each
/// value normalised with `norm`, coloured with [`colormap`], with alpha `round(255 * alpha)`
/// (`alpha` clamped to `[0, 1]`). NaN values become fully transparent black.
///
/// # Panics
/// If `map.len() != width * height`.
pub fn heatmap_rgba(map: &[f32], width: usize, height: usize, norm: Normalization, alpha: f32) -> Vec<u8> {
    assert_eq!(
        width.checked_mul(height),
        Some(map.len()),
        "heatmap_rgba: map has {} values, not {width}x{height}",
        map.len()
    );
    let a = (unit(alpha) * 255.0).round() as u8;
    let mut out = Vec::with_capacity(map.len() * 4);
    for &v in map {
        let t = norm.normalize(v);
        if t.is_nan() {
            out.extend_from_slice(&[0, 0, 0, 0]);
        } else {
            let [r, g, b] = colormap(t);
            out.extend_from_slice(&[r, g, b, a]);
        }
    }
    out
}

/// `a + (b - a) * t`, exactly `a` when `t == 0` (so a NaN neighbour with no weight does not leak).
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    if t == 0.0 {
        a
    } else {
        a + (b - a) * t
    }
}

/// Resizes a `width x height` map to `out_w x out_h` with bilinear interpolation and half-pixel
/// centres (`align_corners=False`, edges clamped). Same size is the identity, a constant map stays
/// exactly constant. Errors if `map.len() != width * height`, or if the map is empty but the output
/// is not.
pub fn resize_bilinear(map: &[f32], width: usize, height: usize, out_w: usize, out_h: usize) -> Result<Vec<f32>> {
    let n = area(width, height, "map")?;
    ensure!(
        map.len() == n,
        "anomaly map has {} values, not {width}x{height} = {n}",
        map.len()
    );
    let out_n = area(out_w, out_h, "output")?;
    if out_n == 0 {
        return Ok(Vec::new());
    }
    if n == 0 {
        bail!("cannot resize an empty {width}x{height} anomaly map to {out_w}x{out_h}");
    }
    if (width, height) == (out_w, out_h) {
        return Ok(map.to_vec());
    }
    let xs = crate::detect::aggregate::bilinear_axis(width, out_w, false);
    let ys = crate::detect::aggregate::bilinear_axis(height, out_h, false);
    let mut out = Vec::with_capacity(out_n);
    for &(y0, y1, ty) in &ys {
        let (r0, r1) = (&map[y0 * width..][..width], &map[y1 * width..][..width]);
        for &(x0, x1, tx) in &xs {
            let top = lerp(r0[x0], r0[x1], tx);
            let bottom = lerp(r1[x0], r1[x1], tx);
            out.push(lerp(top, bottom, ty));
        }
    }
    Ok(out)
}

/// The 1-pixel inner boundary of the region `map >= threshold`: a pixel is on it when it is in the
/// region and one of its 4 neighbours is not, or it lies on the image edge (so regions touching the
/// edge still get closed outlines). A NaN threshold or NaN values select nothing.
///
/// # Panics
/// If `map.len() != width * height`.
pub fn threshold_outline(map: &[f32], width: usize, height: usize, threshold: f32) -> Vec<bool> {
    assert_eq!(
        width.checked_mul(height),
        Some(map.len()),
        "threshold_outline: map has {} values, not {width}x{height}",
        map.len()
    );
    let inside = |x: usize, y: usize| map[y * width + x] >= threshold;
    let mut out = vec![false; map.len()];
    for y in 0..height {
        for x in 0..width {
            if !inside(x, y) {
                continue;
            }
            let on_edge = x == 0 || y == 0 || x + 1 == width || y + 1 == height;
            out[y * width + x] =
                on_edge || !inside(x - 1, y) || !inside(x + 1, y) || !inside(x, y - 1) || !inside(x, y + 1);
        }
    }
    out
}

/// `base + (top - base) * a`, rounded: exactly `base` at `a = 0` and exactly `top` at `a = 1`.
fn blend(base: u8, top: u8, a: f32) -> u8 {
    let (b, t) = (f32::from(base), f32::from(top));
    (b + (t - b) * a).round().clamp(0.0, 255.0) as u8
}

/// The anomaly map drawn over `image`: the `map_w x map_h` map is resized to the image size with
/// [`resize_bilinear`], normalised with `norm`, coloured with [`colormap`] and blended over the
/// image with `opacity` (clamped to `[0, 1]`; 0 returns the image unchanged, 1 the colours alone).
/// Pixels whose resized value is NaN keep the image's colour.
///
/// With `Some(threshold)` (raw map units), the [`threshold_outline`] of the resized map is then
/// drawn in [`OUTLINE_COLOR`] at full strength.
///
/// Errors if `map.len() != map_w * map_h`, or the map is empty while the image is not.
pub fn overlay(
    image: &RgbImage,
    map: &[f32],
    map_w: usize,
    map_h: usize,
    norm: Normalization,
    opacity: f32,
    threshold: Option<f32>,
) -> Result<RgbImage> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let values = resize_bilinear(map, map_w, map_h, w, h).context("overlaying the anomaly map")?;
    let opacity = unit(opacity);
    let mut out = image.clone();
    for (px, &v) in out.pixels_mut().zip(&values) {
        let t = norm.normalize(v);
        if t.is_nan() {
            continue;
        }
        for (channel, top) in px.0.iter_mut().zip(colormap(t)) {
            *channel = blend(*channel, top, opacity);
        }
    }
    if let Some(threshold) = threshold {
        let outline = threshold_outline(&values, w, h, threshold);
        for (px, on) in out.pixels_mut().zip(outline) {
            if on {
                px.0 = OUTLINE_COLOR;
            }
        }
    }
    Ok(out)
}

/// [`overlay`] on canvas data, as the page draws it: `rgba` is a `width x height` RGBA image
/// (alpha ignored), `map` a same-sized map drawn with the fixed range `[0, 1]` (so colours mean
/// the same across images), `opacity` in `[0, 1]`, and with `Some(threshold)` the outline of
/// `map >= threshold` on top. Returns RGBA bytes with alpha 255.
///
/// Errors when the buffer sizes do not match `width x height` or `opacity` is not in `[0, 1]`.
pub fn overlay_rgba(
    rgba: &[u8],
    map: &[f32],
    width: usize,
    height: usize,
    opacity: f32,
    threshold: Option<f32>,
) -> Result<Vec<u8>> {
    let n = area(width, height, "image")?;
    ensure!(
        (0.0..=1.0).contains(&opacity),
        "opacity must be a number from 0 to 1, got {opacity}"
    );
    ensure!(
        n.checked_mul(4) == Some(rgba.len()),
        "the image holds {} bytes, but {width}x{height} RGBA needs {}",
        rgba.len(),
        n.saturating_mul(4)
    );
    ensure!(
        map.len() == n,
        "the anomaly map holds {} values, but the image is {width}x{height} = {n} pixels",
        map.len()
    );
    let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    let (w, h) = (
        u32::try_from(width).context("image width")?,
        u32::try_from(height).context("image height")?,
    );
    let img = RgbImage::from_raw(w, h, rgb).context("image buffer")?;
    let out = overlay(
        &img,
        map,
        width,
        height,
        Normalization::new(0.0, 1.0),
        opacity,
        threshold,
    )?;
    Ok(out.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect())
}

// ---------------------------------------------------------------------------------------------
// Report pictures

/// The images placed left to right, top-aligned, with no gap; the strip is as tall as the tallest
/// image and shorter ones are padded with black below. No images give a 0x0 image.
pub fn side_by_side(images: &[&RgbImage]) -> RgbImage {
    let width = images.iter().fold(0u32, |acc, img| acc.saturating_add(img.width()));
    let height = images.iter().map(|img| img.height()).max().unwrap_or(0);
    let mut out = RgbImage::new(width, height);
    let mut x = 0i64;
    for img in images {
        image::imageops::replace(&mut out, *img, x, 0);
        x += i64::from(img.width());
    }
    out
}

/// A binary mask (row-major, `0` = background, anything else = foreground, so both 0/1 and 0/255
/// masks work) as a black-and-white image.
///
/// # Panics
/// If `mask.len() != w * h` or a side exceeds `u32::MAX`.
pub fn mask_to_rgb(mask: &[u8], w: usize, h: usize) -> RgbImage {
    assert_eq!(
        w.checked_mul(h),
        Some(mask.len()),
        "mask_to_rgb: mask has {} values, not {w}x{h}",
        mask.len()
    );
    let raw = mask
        .iter()
        .flat_map(|&m| if m == 0 { [0u8; 3] } else { [255u8; 3] })
        .collect();
    let (w, h) = (
        u32::try_from(w).expect("mask width"),
        u32::try_from(h).expect("mask height"),
    );
    RgbImage::from_raw(w, h, raw).expect("buffer length matches w * h * 3")
}

/// Undoes a per-channel normalisation `(v / 255 - mean) / std` of CHW data (length `3 * h * w`):
/// `round(255 * (x * std + mean))`, clamped to `[0, 255]`; NaN becomes 0. For inputs given as
/// normalised tensors (e.g. `pixel_values` with [`crate::preprocess::CLIP_MEAN`] / `CLIP_STD`).
///
/// # Panics
/// If `chw.len() != 3 * h * w` or a side exceeds `u32::MAX`.
pub fn normalized_pixels_to_rgb(chw: &[f32], h: usize, w: usize, mean: [f32; 3], std: [f32; 3]) -> RgbImage {
    let plane = h.checked_mul(w).expect("normalized_pixels_to_rgb: size overflows");
    assert_eq!(
        plane.checked_mul(3),
        Some(chw.len()),
        "normalized_pixels_to_rgb: tensor has {} values, not 3x{h}x{w}",
        chw.len()
    );
    let mut raw = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for c in 0..3 {
            let v = (chw[c * plane + i] * std[c] + mean[c]) * 255.0;
            raw.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    let (w, h) = (
        u32::try_from(w).expect("image width"),
        u32::try_from(h).expect("image height"),
    );
    RgbImage::from_raw(w, h, raw).expect("buffer length matches h * w * 3")
}

// ---------------------------------------------------------------------------------------------
// PNG

/// The image as PNG bytes (8-bit RGB).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
        .with_context(|| format!("encoding a {}x{} PNG", img.width(), img.height()))?;
    Ok(buf)
}

/// Writes the image to `path` as PNG; errors name the path.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_png(img: &RgbImage, path: &std::path::Path) -> Result<()> {
    let bytes = encode_png(img).with_context(|| format!("saving {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("writing PNG {}", path.display()))
}
