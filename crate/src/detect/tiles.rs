//! High-resolution tiled inspection: a photo much larger than the model input is covered by
//! overlapping square tiles, each scored at the model's resolution, and the tile maps are
//! stitched back at photo resolution.
//!
//! * [`TileSpec`]: `auto`, `off` or `RxC` (rows × columns), the CLI's `--tiles`.
//! * [`plan`]: the tiles. Every tile but the untiled one is a **square** crop of the photo (so
//!   the model sees it at its true aspect when it is resized to the square input); neighbours
//!   overlap by at least a quarter of the tile side; tiles lie inside the photo and cover every
//!   pixel; positions are spread evenly (the first at 0, the last flush with the far edge). A
//!   one-tile plan is the whole photo, squash-resized exactly as untiled detection does.
//! * [`stitch`]: the tile maps resampled onto the photo (the inverse resize of
//!   [`super::geometry`], per tile) and blended where tiles overlap.
//! * [`combine_scores`]: the image score from the whole-image score and the tiles'.
//! * [`detect_tiled`]: the whole run, with a progress callback per pass and a cancel check
//!   between passes.
//!
//! Every per-image mode is tiled the same way, the learned ones included (AnomalyCLIP through its
//! class pair, AdaptCLIP through [`AdaptScoring`]); batch mode (MuSc) is not: see
//! [`detect_tiled`].
use super::geometry;
use super::{adaptclip, passes, score_image_on, winclip, Detection, Mode, TextPair};
use crate::model::Clip;
use crate::preprocess::{self, Normalize};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Most tiles `auto` picks (a 4×4 grid, 16 passes plus the whole-image pass).
pub const AUTO_MAX_TILES: usize = 16;

/// Most tiles an explicit `RxC` may ask for.
pub const MAX_TILES: usize = 64;

/// `auto` tiles only photos whose long side exceeds this many times the input side: below it the
/// untiled pass already sees the photo at half its resolution or better.
pub const AUTO_MIN_RATIO: usize = 2;

/// How to tile a photo (`--tiles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSpec {
    /// Pick the grid from the photo's size and the input size (see [`plan`]).
    Auto,
    /// No tiles: the whole photo, squash-resized (today's detection).
    Off,
    /// An explicit grid; `1x1` is the same as `off`.
    Grid {
        /// Tile rows (along the height).
        rows: usize,
        /// Tile columns (along the width).
        cols: usize,
    },
}

impl std::str::FromStr for TileSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => return Ok(TileSpec::Auto),
            "off" => return Ok(TileSpec::Off),
            _ => {}
        }
        let bad = || anyhow::anyhow!("tiles must be `auto`, `off` or ROWSxCOLS (e.g. `2x3`), got `{s}`");
        let (r, c) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let (rows, cols): (usize, usize) = (r.parse().map_err(|_| bad())?, c.parse().map_err(|_| bad())?);
        if rows == 0 || cols == 0 {
            bail!("tiles: rows and columns must be at least 1, got `{s}`");
        }
        if rows.saturating_mul(cols) > MAX_TILES {
            bail!("tiles: at most {MAX_TILES} tiles, got {rows}x{cols} = {}", rows * cols);
        }
        Ok(TileSpec::Grid { rows, cols })
    }
}

/// One tile: a crop of the photo, in photo pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tile {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width (the side of a square tile, or the photo's width for the one-tile plan).
    pub w: usize,
    /// Height (equal to `w` except for the one-tile plan).
    pub h: usize,
}

/// The tiles covering one photo, row-major (`rows × cols` tiles).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TilePlan {
    /// Photo width in pixels.
    pub width: usize,
    /// Photo height in pixels.
    pub height: usize,
    /// Tile rows.
    pub rows: usize,
    /// Tile columns.
    pub cols: usize,
    /// The tiles, row by row.
    pub tiles: Vec<Tile>,
}

impl TilePlan {
    /// The one-tile plan: the whole photo (untiled).
    pub fn whole(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            rows: 1,
            cols: 1,
            tiles: vec![Tile {
                x: 0,
                y: 0,
                w: width,
                h: height,
            }],
        }
    }

    /// Whether this is the untiled plan (one tile, the whole photo).
    pub fn is_whole(&self) -> bool {
        self.tiles.len() == 1
    }
}

/// Tiles of side `s` needed along an axis of `len` pixels with overlap ≥ s/4 (the stride is at
/// most `s − ⌈s/4⌉`), or `None` when impossible (`s == 1` on a longer axis).
fn count(len: usize, s: usize) -> Option<usize> {
    if len <= s {
        return Some(1);
    }
    let stride = s - s.div_ceil(4);
    (stride > 0).then(|| 1 + (len - s).div_ceil(stride))
}

/// `n` positions of a side-`s` tile along `len`, spread evenly: 0 first, `len − s` last.
fn positions(len: usize, s: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![0];
    }
    let span = len - s;
    (0..n).map(|i| (i * span + (n - 1) / 2) / (n - 1)).collect()
}

fn grid(width: usize, height: usize, s: usize, rows: usize, cols: usize) -> TilePlan {
    let xs = positions(width, s, cols);
    let ys = positions(height, s, rows);
    let tiles = ys
        .iter()
        .flat_map(|&y| xs.iter().map(move |&x| Tile { x, y, w: s, h: s }))
        .collect();
    TilePlan {
        width,
        height,
        rows,
        cols,
        tiles,
    }
}

/// The tiles for a `width × height` photo and a model input of `input × input` pixels.
///
/// * `off` and `1x1`: one tile, the whole photo (untiled).
/// * `RxC`: square tiles of the smallest side with which `C` columns and `R` rows cover the photo
///   with ≥ 1/4 overlap; an error when no side up to the photo's short side does (e.g. `1x3` on
///   a tall photo, anything but `1x1` on a 1-pixel sliver) or the tiles would coincide.
/// * `auto` (the rule): untiled when the photo's long side is at most [`AUTO_MIN_RATIO`] × the
///   input side (the untiled pass loses at most half the resolution). Otherwise square tiles of
///   the smallest side, starting at the input side (one photo pixel per input pixel: the most
///   detail the model can see) and growing up to the photo's short side, whose grid needs at most
///   [`AUTO_MAX_TILES`] tiles; untiled when none does (extreme slivers such as 1×5000, where
///   square tiles cannot help within that budget).
///
/// Errors for an empty photo or input.
pub fn plan(spec: TileSpec, width: usize, height: usize, input: usize) -> Result<TilePlan> {
    if width == 0 || height == 0 {
        bail!("the photo must have a positive size, got {width}x{height}");
    }
    if input == 0 {
        bail!("the model input size must be positive");
    }
    let short = width.min(height);
    match spec {
        TileSpec::Off | TileSpec::Grid { rows: 1, cols: 1 } => Ok(TilePlan::whole(width, height)),
        TileSpec::Grid { rows, cols } => {
            let fits =
                |s: usize| matches!((count(width, s), count(height, s)), (Some(c), Some(r)) if c <= cols && r <= rows);
            let Some(s) = (1..=short).find(|&s| fits(s)) else {
                bail!(
                    "a {width}x{height} photo cannot be covered by {rows}x{cols} square tiles overlapping by \
                     at least 1/4 (they would exceed its short side, {short} px): add rows or columns along \
                     the long side, or use `auto` or `off`"
                );
            };
            let distinct = |len: usize, n: usize| n == 1 || len >= s + (n - 1);
            if !distinct(width, cols) || !distinct(height, rows) {
                bail!(
                    "{rows}x{cols} tiles do not fit a {width}x{height} photo: {s}-px square tiles would \
                     repeat along one side; use fewer rows or columns there, or `auto`"
                );
            }
            Ok(grid(width, height, s, rows, cols))
        }
        TileSpec::Auto => {
            if width.max(height) <= AUTO_MIN_RATIO.saturating_mul(input) {
                return Ok(TilePlan::whole(width, height));
            }
            let found = (input.min(short)..=short).find_map(|s| {
                let (c, r) = (count(width, s)?, count(height, s)?);
                (c * r <= AUTO_MAX_TILES).then_some((s, r, c))
            });
            Ok(match found {
                Some((_, 1, 1)) | None => TilePlan::whole(width, height),
                Some((s, rows, cols)) => grid(width, height, s, rows, cols),
            })
        }
    }
}

/// The image score of a tiled run: `½ · (whole + max over tiles)`, or `whole` when there are no
/// tiles (untiled: the one-tile plan *is* the whole image, so this is today's score exactly).
///
/// Why this formula. An anomaly is local, so the tiles are pooled with a **max** (an image is
/// anomalous if any part of it is: the multiple-instance view that WinCLIP's own window scores and
/// every max-of-map image score in the field take). A max over many tiles, though, also picks up
/// the most unusual-looking crop of a *normal* photo — a tile lacks the context that makes a part
/// look normal — and that inflation grows with the tile count. So the max is **averaged with the
/// whole-image score**, as WinCLIP+ averages its zero-shot image score with the max of its
/// few-shot map (`(zero-shot + max) / 2`, Jeong et al., CVPR 2023; anomalib's `WinClipModel`), and
/// fast mode its global and max-patch scores: a defect that only a tile sees still moves the
/// score by half its tile score, a normal photo's score is raised by at most half its worst tile.
/// Scores stay in the modes' `[0, 1]` range, and the untiled score is unchanged. (A plain max of
/// the two would be 1 whenever any tile is; a plain mean over tiles would dilute a one-tile
/// defect by the tile count.)
pub fn combine_scores(whole: f32, tiles: &[f32]) -> f32 {
    match tiles.iter().copied().reduce(f32::max) {
        Some(top) => 0.5 * (whole + top),
        None => whole,
    }
}

/// `a + (b − a)·t`, exactly `a` at `t = 0` (as [`crate::render::resize_bilinear`]).
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    if t == 0.0 {
        a
    } else {
        a + (b - a) * t
    }
}

/// Per output index along one axis inside a tile's footprint: `(output index, i0, i1, t, weight)`.
///
/// `len`: the photo axis, `out`: the output axis (`len` or a bounded size), `pos`/`side`: the
/// tile along the photo axis, `n`: the tile map's size along it. Output pixel `o` is centred at
/// photo coordinate `c = (o + ½)·len/out` (edges at integers); it belongs to the tile when
/// `pos ≤ c < pos + side`, and reads the tile map at `(c − pos)·n/side − ½` (the inverse resize,
/// clamped). The weight ramps linearly from 0 to 1 over `⌈side/4⌉` photo pixels from every tile
/// edge that is inside the photo (the minimum overlap, so a ramp always lies where a neighbour
/// covers) and is 1 elsewhere, including at the photo's own edges.
fn stitch_axis(len: usize, out: usize, pos: usize, side: usize, n: usize) -> Vec<(usize, usize, usize, f32, f32)> {
    let scale = len as f32 / out as f32;
    let ramp = side.div_ceil(4) as f32;
    let (near, far) = (pos > 0, pos + side < len);
    let (lo, hi) = (pos as f32, (pos + side) as f32);
    // Output indices whose centre may fall in [pos, pos + side).
    let first = ((lo / scale - 0.5).floor().max(0.0) as usize).min(out);
    let last = ((hi / scale + 0.5).ceil().max(0.0) as usize).min(out);
    (first..last)
        .filter_map(|o| {
            let c = (o as f32 + 0.5) * scale;
            if c < lo || c >= hi {
                return None;
            }
            let u = c - lo;
            let s = (u * (n as f32 / side as f32) - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let mut w = 1f32;
            if near {
                w = w.min(u / ramp);
            }
            if far {
                w = w.min((side as f32 - u) / ramp);
            }
            Some((o, i0, i1, s - i0 as f32, w))
        })
        .collect()
}

/// Stitches the tiles' maps (each `map_w × map_h`, the model input's size, in `plan.tiles`
/// order) into one `out_w × out_h` map of the photo (the photo's own size, or a bounded size of
/// the same aspect from [`geometry::bounded_size`]).
///
/// Each tile's map is resampled onto its footprint with the inverse resize, and every output
/// pixel is the weighted mean `Σ wₜ·vₜ / Σ wₜ` of the tiles covering it, with separable weights
/// `wₜ = wx·wy` that ramp linearly from a tile's inner edges over a quarter tile (see
/// `stitch_axis`). Where one tile covers a pixel its weight is 1 and the pixel is exactly that
/// tile's own resampled map; the one-tile plan gives exactly [`geometry::to_photo`].
///
/// Errors if the number of maps or their sizes do not match, any size is zero, or a tile is
/// empty or reaches outside the photo.
pub fn stitch(
    plan: &TilePlan,
    maps: &[&[f32]],
    map_w: usize,
    map_h: usize,
    out_w: usize,
    out_h: usize,
) -> Result<Vec<f32>> {
    if maps.len() != plan.tiles.len() {
        bail!("{} tile maps for {} tiles", maps.len(), plan.tiles.len());
    }
    if map_w == 0 || map_h == 0 || out_w == 0 || out_h == 0 {
        bail!("stitching needs positive sizes (maps {map_w}x{map_h}, output {out_w}x{out_h})");
    }
    if plan.width == 0 || plan.height == 0 || plan.tiles.is_empty() {
        bail!(
            "the tile plan is empty ({}x{} photo, {} tiles)",
            plan.width,
            plan.height,
            plan.tiles.len()
        );
    }
    if let Some(t) = plan
        .tiles
        .iter()
        .find(|t| t.w == 0 || t.h == 0 || t.x + t.w > plan.width || t.y + t.h > plan.height)
    {
        bail!(
            "tile {t:?} is empty or outside the {}x{} photo",
            plan.width,
            plan.height
        );
    }
    if let Some(m) = maps.iter().find(|m| m.len() != map_w * map_h) {
        bail!("a tile map has {} values, not {map_w}x{map_h}", m.len());
    }
    if plan.is_whole() {
        return geometry::to_photo(maps[0], map_w, map_h, out_w, out_h);
    }
    let n = out_w.checked_mul(out_h).context("output size overflows")?;
    let mut sum = vec![0f32; n];
    let mut wsum = vec![0f32; n];
    for (t, map) in plan.tiles.iter().zip(maps) {
        let xs = stitch_axis(plan.width, out_w, t.x, t.w, map_w);
        let ys = stitch_axis(plan.height, out_h, t.y, t.h, map_h);
        for &(oy, y0, y1, ty, wy) in &ys {
            let (r0, r1) = (&map[y0 * map_w..][..map_w], &map[y1 * map_w..][..map_w]);
            let row = oy * out_w;
            for &(ox, x0, x1, tx, wx) in &xs {
                let v = lerp(lerp(r0[x0], r0[x1], tx), lerp(r1[x0], r1[x1], tx), ty);
                let w = wx * wy;
                sum[row + ox] += w * v;
                wsum[row + ox] += w;
            }
        }
    }
    if wsum.iter().any(|&w| w <= 0.0) {
        bail!("the tiles do not cover the {out_w}x{out_h} output");
    }
    sum.iter_mut().zip(&wsum).for_each(|(s, w)| *s /= w);
    Ok(sum)
}

/// AdaptCLIP's side of a tiled run: its adapters and class pairs and, few-shot, the normal
/// references. The references are those of the untiled run (the reference photos squash-resized
/// to the input, as WinCLIP+'s in tiled few-shot): every tile and the whole photo are compared
/// with the same references.
#[derive(Clone, Copy)]
pub struct AdaptScoring<'a> {
    /// The adapters and class pairs.
    pub ready: &'a adaptclip::AdaptClip,
    /// Normal references (few-shot); `None`: zero-shot.
    pub refs: Option<&'a adaptclip::References>,
}

/// What [`detect_tiled`] scores with: the per-image mode and its inputs (as [`super::score_image`]).
#[derive(Clone, Copy)]
pub struct TileScoring<'a> {
    /// A per-image mode (fast, winclip, fewshot, anomalyclip, adaptclip).
    pub mode: Mode,
    /// The class pair (AnomalyCLIP: the learned one; unused by AdaptCLIP).
    pub text: &'a TextPair,
    /// Normal references (few-shot).
    pub refs: Option<&'a winclip::References>,
    /// Fast mode's surgery layers K.
    pub surgery_layers: usize,
    /// WinCLIP's settings.
    pub cfg: &'a winclip::WinClipConfig,
    /// AdaptCLIP's adapters and references (required in the adaptclip mode, else unused).
    pub adapt: Option<AdaptScoring<'a>>,
}

/// The result of [`detect_tiled`].
#[derive(Clone, Debug)]
pub struct TiledDetection {
    /// The tiles that ran.
    pub plan: TilePlan,
    /// The whole photo, squash-resized: today's untiled detection (its map at input size).
    pub whole: Detection,
    /// Each tile's detection (map at input size), in `plan.tiles` order; empty when untiled.
    pub tiles: Vec<Detection>,
    /// [`combine_scores`] of the whole-image and tile scores.
    pub score: f32,
    /// The photo-resolution map, `width × height` row-major: the stitched tile maps (untiled:
    /// the whole-image map through [`geometry::to_photo`]).
    pub map: Vec<f32>,
    /// Width of `map`: the photo's, or its bounded size.
    pub width: usize,
    /// Height of `map`.
    pub height: usize,
}

fn photo_tensor(img: &RgbImage, size: u32, norm: &Normalize) -> Result<Tensor> {
    let s = size as usize;
    Ok(Tensor::from_vec(
        preprocess::resize_preprocess(img, size, norm),
        (1, 3, s, s),
        &Device::Cpu,
    )?)
}

/// Scores `photo` untiled and tile by tile, stitches the tile maps and combines the scores.
///
/// The whole photo is scored first exactly as untiled detection does (squash resize to `size`,
/// [`super::score_image`]), then each tile of `plan` (a square crop resized to `size × size`, so the
/// model sees it at its true aspect). With a one-tile plan only the whole-photo pass runs and the
/// result is exactly the untiled one. The map comes back at the photo's size bounded to
/// `max_side` on the long side ([`geometry::bounded_size`]).
///
/// `progress(done, total)` is called after every pass (`total` = tiles + 1); `cancelled()` is
/// checked before every pass and stops the run with an error. Errors from `progress` stop it too.
///
/// Batch mode (MuSc) is refused: its images score each other patch by patch, so tiling by
/// position needs every image of the batch to share one size and one plan, and multiplies its
/// quadratic mutual scoring by the tile count; not done this time.
#[allow(clippy::too_many_arguments)] // the photo, how to preprocess and score it, and the callbacks
pub fn detect_tiled(
    clip: &Clip,
    photo: &RgbImage,
    plan: &TilePlan,
    size: u32,
    norm: &Normalize,
    scoring: &TileScoring<'_>,
    max_side: usize,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
    cancelled: &dyn Fn() -> bool,
) -> Result<TiledDetection> {
    passes::now(detect_tiled_on(
        clip,
        &clip.vision,
        photo,
        plan,
        size,
        norm,
        scoring,
        max_side,
        progress,
        cancelled,
    ))
}

/// [`detect_tiled`] with the image tower's passes run by `tower` (see [`passes::Passes`]; the
/// browser's WebGPU tower).
#[allow(clippy::too_many_arguments)] // detect_tiled's arguments and the tower
pub async fn detect_tiled_on(
    clip: &Clip,
    tower: &impl passes::Passes,
    photo: &RgbImage,
    plan: &TilePlan,
    size: u32,
    norm: &Normalize,
    scoring: &TileScoring<'_>,
    max_side: usize,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
    cancelled: &dyn Fn() -> bool,
) -> Result<TiledDetection> {
    if scoring.mode == Mode::Batch {
        bail!(
            "tiles: batch mode (MuSc) is not tiled — its images score each other position by position, \
             which needs one size and plan for the whole batch; use --tiles off"
        );
    }
    let (pw, ph) = (photo.width() as usize, photo.height() as usize);
    if (plan.width, plan.height) != (pw, ph) {
        bail!(
            "the tile plan is for a {}x{} photo, the photo is {pw}x{ph}",
            plan.width,
            plan.height
        );
    }
    if size == 0 {
        bail!("the model input size must be positive");
    }
    let tiled = !plan.is_whole();
    let total = if tiled { plan.tiles.len() + 1 } else { 1 };
    let score = |img: &RgbImage| -> Result<Tensor> {
        if cancelled() {
            bail!("cancelled");
        }
        photo_tensor(img, size, norm)
    };
    let run = |px: Tensor| async move {
        if scoring.mode == Mode::Adaptclip {
            let a = scoring
                .adapt
                .context("tiles: the adaptclip mode needs its adapters (TileScoring::adapt)")?;
            return adaptclip::detect_one_on(clip, tower, a.ready, &px, a.refs).await;
        }
        score_image_on(
            clip,
            tower,
            &px,
            scoring.mode,
            scoring.text,
            scoring.refs,
            scoring.surgery_layers,
            scoring.cfg,
        )
        .await
    };
    let whole = run(score(photo)?).await?;
    progress(1, total)?;
    let mut tiles = Vec::new();
    if tiled {
        for (i, t) in plan.tiles.iter().enumerate() {
            let crop = image::imageops::crop_imm(photo, t.x as u32, t.y as u32, t.w as u32, t.h as u32).to_image();
            tiles.push(run(score(&crop)?).await?);
            progress(i + 2, total)?;
        }
    }
    let (w, h) = geometry::bounded_size(pw, ph, max_side)?;
    let map = if tiled {
        let maps: Vec<&[f32]> = tiles.iter().map(|d| d.map.as_slice()).collect();
        stitch(plan, &maps, whole.width, whole.height, w, h)?
    } else {
        geometry::to_photo(&whole.map, whole.width, whole.height, w, h)?
    };
    let tile_scores: Vec<f32> = tiles.iter().map(|d| d.score).collect();
    Ok(TiledDetection {
        plan: plan.clone(),
        score: combine_scores(whole.score, &tile_scores),
        whole,
        tiles,
        map,
        width: w,
        height: h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_coverage(p: &TilePlan) {
        let (w, h) = (p.width, p.height);
        assert_eq!(p.tiles.len(), p.rows * p.cols);
        let mut covered = vec![0u16; w * h];
        for t in &p.tiles {
            assert!(t.x + t.w <= w && t.y + t.h <= h, "{t:?} outside {w}x{h}");
            assert!(t.w > 0 && t.h > 0);
            if !p.is_whole() {
                assert_eq!(t.w, t.h, "tiles are square");
            }
            for y in t.y..t.y + t.h {
                for x in t.x..t.x + t.w {
                    covered[y * w + x] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&c| c > 0), "{w}x{h}: a pixel is not covered");
        // Neighbours overlap by ≥ 1/4 tile and are distinct.
        let s = p.tiles[0].w;
        for r in 0..p.rows {
            for c in 0..p.cols {
                let t = p.tiles[r * p.cols + c];
                if c + 1 < p.cols {
                    let n = p.tiles[r * p.cols + c + 1];
                    assert!(n.x > t.x && 4 * (t.x + s - n.x) >= s, "{w}x{h}: x overlap {t:?} {n:?}");
                }
                if r + 1 < p.rows {
                    let n = p.tiles[(r + 1) * p.cols + c];
                    assert!(n.y > t.y && 4 * (t.y + s - n.y) >= s, "{w}x{h}: y overlap {t:?} {n:?}");
                }
            }
        }
    }

    #[test]
    fn parse_specs() {
        assert_eq!("auto".parse::<TileSpec>().unwrap(), TileSpec::Auto);
        assert_eq!("off".parse::<TileSpec>().unwrap(), TileSpec::Off);
        assert_eq!("2x3".parse::<TileSpec>().unwrap(), TileSpec::Grid { rows: 2, cols: 3 });
        assert_eq!("4X1".parse::<TileSpec>().unwrap(), TileSpec::Grid { rows: 4, cols: 1 });
        for bad in ["", "x", "2x", "0x3", "3x0", "axb", "9x9", "2x3x4", "-1x2", "on"] {
            let e = bad.parse::<TileSpec>().unwrap_err().to_string();
            assert!(e.contains("tiles"), "{bad}: {e}");
        }
    }

    #[test]
    fn worked_plans() {
        // A 250×627 KolektorSDD strip at input 224: 224-px tiles, 2 columns × 4 rows.
        let p = plan(TileSpec::Auto, 250, 627, 224).unwrap();
        assert_eq!((p.rows, p.cols), (4, 2));
        let xs: Vec<usize> = p.tiles[..2].iter().map(|t| t.x).collect();
        let ys: Vec<usize> = p.tiles.iter().step_by(2).map(|t| t.y).collect();
        assert_eq!(xs, vec![0, 26]);
        assert_eq!(ys, vec![0, 134, 269, 403]); // 403·i/3 rounded
        assert!(p.tiles.iter().all(|t| t.w == 224 && t.h == 224));
        check_coverage(&p);
        // Small photos and slivers: untiled.
        assert!(plan(TileSpec::Auto, 448, 300, 224).unwrap().is_whole());
        assert!(plan(TileSpec::Auto, 1, 5000, 224).unwrap().is_whole());
        assert!(plan(TileSpec::Auto, 100, 100, 224).unwrap().is_whole());
        assert_eq!(
            plan(TileSpec::Off, 4000, 3000, 224).unwrap(),
            TilePlan::whole(4000, 3000)
        );
        assert_eq!(
            plan(TileSpec::Grid { rows: 1, cols: 1 }, 250, 627, 224).unwrap(),
            TilePlan::whole(250, 627)
        );
        // A 12-Mpx photo: at most 16 tiles.
        let p = plan(TileSpec::Auto, 4000, 3000, 224).unwrap();
        assert!(p.tiles.len() <= AUTO_MAX_TILES && p.tiles.len() > 1);
        check_coverage(&p);
        // An explicit 2x2 on 100×100: side s smallest with count ≤ 2: stride s − ⌈s/4⌉ ≥ 100 − s.
        let p = plan(TileSpec::Grid { rows: 2, cols: 2 }, 100, 100, 224).unwrap();
        assert_eq!(p.tiles[0].w, 58); // 58 − 15 = 43 ≥ 42; 57 − 15 = 42 < 43
        assert_eq!(
            p.tiles[3],
            Tile {
                x: 42,
                y: 42,
                w: 58,
                h: 58
            }
        );
        check_coverage(&p);
    }

    #[test]
    fn impossible_grids_are_clear_errors() {
        let e = plan(TileSpec::Grid { rows: 1, cols: 3 }, 250, 627, 224).unwrap_err();
        assert!(e.to_string().contains("cannot be covered"), "{e}");
        let e = plan(TileSpec::Grid { rows: 3, cols: 1 }, 1, 5000, 224).unwrap_err();
        assert!(e.to_string().contains("cannot be covered"), "{e}");
        let e = plan(TileSpec::Grid { rows: 8, cols: 8 }, 5, 5, 224).unwrap_err();
        assert!(e.to_string().contains("repeat"), "{e}");
        assert!(plan(TileSpec::Auto, 0, 5, 224).is_err());
        assert!(plan(TileSpec::Auto, 5, 5, 0).is_err());
    }

    #[test]
    fn coverage_of_awkward_sizes() {
        let sizes = [
            (250, 627),
            (627, 250),
            (1, 5000),
            (5000, 1),
            (2, 997),
            (997, 2),
            (1009, 1013),
            (449, 449),
            (3, 3),
            (1, 1),
            (7919, 13),
            (4096, 4097),
        ];
        for &(w, h) in &sizes {
            for input in [32, 48, 224] {
                check_coverage(&plan(TileSpec::Auto, w, h, input).unwrap());
            }
        }
        // Property loop: every explicit grid either errors or gives a valid plan.
        let mut ok = 0;
        for w in (1..200).step_by(7).chain([211, 223, 257, 401, 997]) {
            for h in [1, 2, 3, 13, 97, 101, 199, 333, 1024] {
                check_coverage(&plan(TileSpec::Auto, w, h, 16).unwrap());
                for (r, c) in [(1, 2), (2, 1), (2, 2), (3, 5), (4, 4), (8, 2)] {
                    if let Ok(p) = plan(TileSpec::Grid { rows: r, cols: c }, w, h, 16) {
                        assert_eq!((p.rows, p.cols), (r, c));
                        check_coverage(&p);
                        ok += 1;
                    }
                }
            }
        }
        assert!(ok > 200, "{ok} grids planned");
    }

    /// Two 8-px tiles side by side on a 12×8 photo (overlap 4 px, x = 4..8).
    fn pair() -> TilePlan {
        TilePlan {
            width: 12,
            height: 8,
            rows: 1,
            cols: 2,
            tiles: vec![Tile { x: 0, y: 0, w: 8, h: 8 }, Tile { x: 4, y: 0, w: 8, h: 8 }],
        }
    }

    #[test]
    fn stitching_a_worked_example() {
        // Constant tile maps 0 and 1 (2×2 each). Ramp = ⌈8/4⌉ = 2 px from the inner edges:
        // left tile's right edge at x = 8, weight min(1, (8 − u)/2) with u = x + ½;
        // right tile's left edge at x = 4, weight min(1, (x + ½ − 4)/2).
        let p = pair();
        let (a, b) = (vec![0.0f32; 4], vec![1.0f32; 4]);
        let out = stitch(&p, &[&a, &b], 2, 2, 12, 8).unwrap();
        let wl = |x: f32| ((8.0 - (x + 0.5)) / 2.0).min(1.0);
        let wr = |x: f32| ((x + 0.5 - 4.0) / 2.0).min(1.0);
        for y in 0..8 {
            for x in 0..12 {
                let v = out[y * 12 + x];
                let want = match x {
                    0..=3 => 0.0,
                    8..=11 => 1.0,
                    _ => wr(x as f32) / (wl(x as f32) + wr(x as f32)),
                };
                assert!((v - want).abs() < 1e-6, "({x},{y}) {v} vs {want}");
            }
        }
        // x = 4: wl 1, wr ¼ → 0.2; x = 5: 1, ¾ → 3/7; x = 6: ¾, 1 → 4/7; x = 7: ¼, 1 → 0.8.
        let row: Vec<f32> = out[4..8].to_vec();
        for (v, want) in row.iter().zip([0.2, 3.0 / 7.0, 4.0 / 7.0, 0.8]) {
            assert!((v - want).abs() < 1e-6, "{row:?}");
        }
        // Symmetric about the overlap's centre; monotone.
        assert!(row.windows(2).all(|p| p[0] < p[1]));
    }

    #[test]
    fn stitched_maps_equal_each_tiles_own_map_outside_the_overlaps() {
        let p = pair();
        let a: Vec<f32> = (0..9).map(|v| v as f32 / 8.0).collect();
        let b: Vec<f32> = (0..9).map(|v| 1.0 - v as f32 / 10.0).collect();
        let out = stitch(&p, &[&a, &b], 3, 3, 12, 8).unwrap();
        let own_a = geometry::to_photo(&a, 3, 3, 8, 8).unwrap();
        let own_b = geometry::to_photo(&b, 3, 3, 8, 8).unwrap();
        for y in 0..8 {
            for x in 0..4 {
                assert_eq!(out[y * 12 + x], own_a[y * 8 + x], "({x},{y})");
            }
            for x in 8..12 {
                assert_eq!(out[y * 12 + x], own_b[y * 8 + x - 4], "({x},{y})");
            }
            for x in 4..8 {
                let (va, vb) = (own_a[y * 8 + x], own_b[y * 8 + x - 4]);
                let v = out[y * 12 + x];
                assert!(v >= va.min(vb) - 1e-6 && v <= va.max(vb) + 1e-6, "blend in range");
            }
        }
        // The one-tile plan is exactly the inverse resize.
        let whole = TilePlan::whole(12, 8);
        assert_eq!(
            stitch(&whole, &[&a], 3, 3, 12, 8).unwrap(),
            geometry::to_photo(&a, 3, 3, 12, 8).unwrap()
        );
        // Bad inputs.
        let mut outside = pair();
        outside.tiles[1].x = 5;
        assert!(stitch(&outside, &[&a, &b], 3, 3, 12, 8).is_err());
        outside.tiles[1] = Tile { x: 0, y: 0, w: 0, h: 0 };
        assert!(stitch(&outside, &[&a, &b], 3, 3, 12, 8).is_err());
        assert!(stitch(&p, &[&a], 3, 3, 12, 8).is_err());
        assert!(stitch(&p, &[&a, &b[..8]], 3, 3, 12, 8).is_err());
        assert!(stitch(&p, &[&a, &b], 3, 3, 0, 8).is_err());
    }

    #[test]
    fn stitching_real_plans_keeps_constants_and_bounds() {
        for (w, h, input) in [(250, 627, 48), (997, 130, 32), (640, 480, 64)] {
            let p = plan(TileSpec::Auto, w, h, input).unwrap();
            assert!(!p.is_whole(), "{w}x{h}");
            let maps: Vec<Vec<f32>> = (0..p.tiles.len()).map(|_| vec![0.25f32; 16]).collect();
            let refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
            let full = stitch(&p, &refs, 4, 4, w, h).unwrap();
            assert_eq!(full.len(), w * h);
            assert!(full.iter().all(|&v| (v - 0.25).abs() < 1e-6), "{w}x{h}");
            // Bounded output (every output pixel still covered).
            let (bw, bh) = geometry::bounded_size(w, h, 100).unwrap();
            let small = stitch(&p, &refs, 4, 4, bw, bh).unwrap();
            assert!(small.iter().all(|&v| (v - 0.25).abs() < 1e-6), "{w}x{h} bounded");
        }
    }

    #[test]
    fn combined_scores() {
        assert_eq!(combine_scores(0.3, &[]), 0.3);
        assert_eq!(combine_scores(0.3, &[0.1, 0.9, 0.5]), 0.6);
        assert_eq!(combine_scores(0.8, &[0.2]), 0.5);
    }
}
