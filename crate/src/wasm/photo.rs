//! Photo-true results for JS: the map resampled onto the photo (bounded), defect regions, tile
//! plans, stitching, the tiled score, and `ClipModel.detectTiled`. Thin wrappers over
//! [`crate::detect::geometry`], [`crate::detect::regions`] and [`crate::detect::tiles`], the
//! functions `anoscope detect` runs, so the page and the CLI give the same numbers.
use super::{js_err, ClipModel, Image};
use crate::detect::tiles::{self, TilePlan, TileSpec};
use crate::detect::{geometry, regions, winclip};
use crate::preprocess::Normalize;
use anyhow::{anyhow, bail, Result};
use wasm_bindgen::prelude::*;

/// A map at the photo's geometry: `width × height` values, row-major.
#[wasm_bindgen]
pub struct PhotoMap {
    width: usize,
    height: usize,
    map: Vec<f32>,
}

#[wasm_bindgen]
impl PhotoMap {
    /// Width in pixels (the photo's, or its bounded size).
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> usize {
        self.height
    }

    /// The values, `Float32Array [height·width]`.
    pub fn map(&self) -> Vec<f32> {
        self.map.clone()
    }
}

/// `maxSide` as given, 0 meaning the default bound [`geometry::MAX_PHOTO_SIDE`].
pub(super) fn bound(max_side: usize) -> usize {
    if max_side == 0 {
        geometry::MAX_PHOTO_SIDE
    } else {
        max_side
    }
}

/// `photoMap(map, mapWidth, mapHeight, photoWidth, photoHeight, maxSide)`: a detection's map (at
/// the model's input size) resampled onto the photo with the inverse of the squash resize
/// ([`geometry::to_photo_bounded`]), at the photo's size bounded to `maxSide` on the long side (0 =
/// 4096) keeping the aspect. Only the bounded map is allocated.
#[wasm_bindgen(js_name = photoMap)]
pub fn photo_map(
    map: &[f32],
    map_width: usize,
    map_height: usize,
    photo_width: usize,
    photo_height: usize,
    max_side: usize,
) -> Result<PhotoMap, JsError> {
    let (map, width, height) =
        geometry::to_photo_bounded(map, map_width, map_height, photo_width, photo_height, bound(max_side))
            .map_err(js_err)?;
    Ok(PhotoMap { width, height, map })
}

/// `boundedSize(width, height, maxSide)`: `[width, height]` of a photo drawn with its long side at
/// most `maxSide` (0 = 4096), aspect kept ([`geometry::bounded_size`]).
#[wasm_bindgen(js_name = boundedSize)]
pub fn bounded_size(width: usize, height: usize, max_side: usize) -> Result<Vec<u32>, JsError> {
    let (w, h) = geometry::bounded_size(width, height, bound(max_side)).map_err(js_err)?;
    Ok(vec![w as u32, h as u32])
}

/// `regions(map, width, height, threshold, minArea)`: the 8-connected regions of `map >=
/// threshold` as a JSON array of `{bbox: [x, y, w, h], area_px, area_pct, peak, mean, peak_xy:
/// [x, y]}`, sorted by decreasing peak ([`regions::regions`], as `<stem>.json`'s `regions`).
#[wasm_bindgen]
pub fn regions(map: &[f32], width: usize, height: usize, threshold: f32, min_area: usize) -> Result<String, JsError> {
    let r = regions::regions(map, width, height, threshold, min_area.max(1)).map_err(js_err)?;
    serde_json::to_string(&r).map_err(|e| js_err(e.into()))
}

/// `tilePlan(tiles, width, height, inputSize)`: the tiles for a photo as JSON `{width, height,
/// rows, cols, tiles: [{x, y, w, h}]}`; `tiles` is `auto`, `off` or `RxC` ([`tiles::plan`]).
#[wasm_bindgen(js_name = tilePlan)]
pub fn tile_plan(tiles: &str, width: usize, height: usize, input_size: usize) -> Result<String, JsError> {
    let run = || -> Result<String> {
        let spec: TileSpec = tiles.parse()?;
        Ok(serde_json::to_string(&tiles::plan(spec, width, height, input_size)?)?)
    };
    run().map_err(js_err)
}

/// `stitchTiles(plan, maps, mapWidth, mapHeight, outWidth, outHeight)`: the tiles' maps (all
/// `mapWidth × mapHeight`, concatenated in the plan's order) stitched into one `outWidth ×
/// outHeight` map of the photo ([`tiles::stitch`]). `plan` is `tilePlan`'s JSON.
#[wasm_bindgen(js_name = stitchTiles)]
pub fn stitch_tiles(
    plan: &str,
    maps: &[f32],
    map_width: usize,
    map_height: usize,
    out_width: usize,
    out_height: usize,
) -> Result<Vec<f32>, JsError> {
    let run = || -> Result<Vec<f32>> {
        let plan: TilePlan = serde_json::from_str(plan).map_err(|e| anyhow!("not a tile plan: {e}"))?;
        let per = map_width * map_height;
        if per == 0 || maps.len() != per * plan.tiles.len() {
            bail!(
                "maps hold {} values, expected {} tiles × {map_width}×{map_height}",
                maps.len(),
                plan.tiles.len()
            );
        }
        let maps: Vec<&[f32]> = maps.chunks(per).collect();
        tiles::stitch(&plan, &maps, map_width, map_height, out_width, out_height)
    };
    run().map_err(js_err)
}

/// `combineScores(whole, tileScores)`: the image score of a tiled run, `(whole + max tile) / 2`,
/// or `whole` without tiles ([`tiles::combine_scores`]).
#[wasm_bindgen(js_name = combineScores)]
pub fn combine_scores(whole: f32, tile_scores: &[f32]) -> f32 {
    tiles::combine_scores(whole, tile_scores)
}

/// The result of `ClipModel.detectTiled`.
#[wasm_bindgen]
pub struct TiledResult {
    score: f32,
    whole_score: f32,
    tile_scores: Vec<f32>,
    plan: String,
    map: PhotoMap,
    input_map: Vec<f32>,
    input_size: usize,
}

impl TiledResult {
    pub(super) fn new(td: tiles::TiledDetection, input_size: usize) -> Result<Self> {
        Ok(TiledResult {
            score: td.score,
            whole_score: td.whole.score,
            tile_scores: td.tiles.iter().map(|d| d.score).collect(),
            plan: serde_json::to_string(&td.plan)?,
            map: PhotoMap {
                width: td.width,
                height: td.height,
                map: td.map,
            },
            input_map: td.whole.map,
            input_size,
        })
    }
}

/// `progress(done, total)` as a Rust callback; a throw stops the run with its message.
pub(super) fn tile_progress(progress: Option<&js_sys::Function>) -> impl FnMut(usize, usize) -> Result<()> + '_ {
    move |done, total| {
        if let Some(f) = progress {
            f.call2(
                &JsValue::NULL,
                &JsValue::from(done as u32),
                &JsValue::from(total as u32),
            )
            .map_err(|e| anyhow!("tiled detection stopped: {}", super::js_message(&e)))?;
        }
        Ok(())
    }
}

#[wasm_bindgen]
impl TiledResult {
    /// The image score ([`combineScores`](combine_scores) of the whole-photo and tile scores).
    #[wasm_bindgen(getter)]
    pub fn score(&self) -> f32 {
        self.score
    }

    /// The whole-photo (untiled) score.
    #[wasm_bindgen(getter, js_name = wholeScore)]
    pub fn whole_score(&self) -> f32 {
        self.whole_score
    }

    /// Each tile's score, in the plan's order (empty when untiled).
    #[wasm_bindgen(js_name = tileScores)]
    pub fn tile_scores(&self) -> Vec<f32> {
        self.tile_scores.clone()
    }

    /// The tiles that ran, as `tilePlan`'s JSON.
    #[wasm_bindgen(getter)]
    pub fn plan(&self) -> String {
        self.plan.clone()
    }

    /// Width of the photo map.
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> usize {
        self.map.width
    }

    /// Height of the photo map.
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> usize {
        self.map.height
    }

    /// The stitched map at the photo's (bounded) size, `Float32Array [height·width]`.
    pub fn map(&self) -> Vec<f32> {
        self.map.map.clone()
    }

    /// The whole-photo pass's map at the model's input size, `[inputSize²]`.
    #[wasm_bindgen(js_name = inputMap)]
    pub fn input_map(&self) -> Vec<f32> {
        self.input_map.clone()
    }

    /// The model's input side (the size of `inputMap`).
    #[wasm_bindgen(getter, js_name = inputSize)]
    pub fn input_size(&self) -> usize {
        self.input_size
    }
}

#[wasm_bindgen]
impl ClipModel {
    /// Tiled inspection of one photo ([`tiles::detect_tiled`]): `mode` = `fast`, `winclip`,
    /// `fewshot`, `anomalyclip` or `adaptclip` as in `detect` (the learned modes at their
    /// `learnedSize()`), `tiles` = `auto`, `off` or `RxC`, the map at the photo's size
    /// bounded to `maxSide` (0 = 4096). Calls `progress(done, total)` after each pass (the whole
    /// photo, then every tile); if `progress` throws, the run stops there with that message (the
    /// page's cancel). With a one-tile plan the result equals `detect`'s on the photo.
    #[wasm_bindgen(js_name = detectTiled)]
    #[allow(clippy::too_many_arguments)] // a positional JS signature, like `detect`'s
    pub fn detect_tiled(
        &self,
        mode: &str,
        image: &Image,
        text: &[f32],
        #[wasm_bindgen(unchecked_param_type = "References | undefined")] refs: JsValue,
        tiles: &str,
        max_side: usize,
        progress: Option<js_sys::Function>,
    ) -> Result<TiledResult, JsError> {
        let run = || -> Result<TiledResult> {
            let (args, plan) = self.tiled_args(mode, image, text, &refs, tiles)?;
            let size = args.size;
            let cfg = winclip::WinClipConfig::default();
            let scoring = args.tile_scoring(&cfg);
            let norm = Normalize {
                mean: self.clip.cfg.mean,
                std: self.clip.cfg.std,
            };
            let mut report = tile_progress(progress.as_ref());
            let td = tiles::detect_tiled(
                &self.clip,
                &image.img,
                &plan,
                size as u32,
                &norm,
                &scoring,
                bound(max_side),
                &mut report,
                &|| false,
            )?;
            TiledResult::new(td, size)
        };
        run().map_err(js_err)
    }
}

impl ClipModel {
    /// The checked arguments and the tile plan of a tiled detection (`detectTiled`,
    /// `detectTiledAsync`).
    pub(super) fn tiled_args(
        &self,
        mode: &str,
        image: &Image,
        text: &[f32],
        refs: &JsValue,
        tiles: &str,
    ) -> Result<(super::detect::ScoreArgs, TilePlan)> {
        let args = self.score_args(mode, text, refs, 0)?;
        let spec: TileSpec = tiles.parse()?;
        let (w, h) = (image.img.width() as usize, image.img.height() as usize);
        // The mode's own input side: the checkpoint's, or the learned mode's (518 by default).
        let plan = tiles::plan(spec, w, h, args.size)?;
        Ok((args, plan))
    }
}
