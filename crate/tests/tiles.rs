//! Photo-true results and tiled inspection end to end on the tiny test model: the tiled driver
//! against untiled detection and per-tile scoring, and `anoscope detect` on a real non-square
//! photo (a 250×627 KolektorSDD strip, `tests/images/ksdd_defect_134.png`).
mod common;

use anoscope::detect::adaptclip::{self, AdaptClip};
use anoscope::detect::tiles::{self, AdaptScoring, TilePlan, TileScoring, TileSpec};
use anoscope::detect::winclip::WinClipConfig;
use anoscope::detect::{geometry, learned, regions, score_image, Mode, TextPair};
use anoscope::model::Clip;
use anoscope::preprocess::{self, ImageLimits, Normalize};
use candle_core::{Device, Tensor};
use common::{fixtures, flat, load, repo, run};
use image::RgbImage;
use std::cell::Cell;
use std::path::{Path, PathBuf};

const SIZE: u32 = 48; // the tiny model's input

fn model() -> Clip {
    Clip::load_dir(&fixtures().join("winclip_tiny")).unwrap()
}

fn text() -> TextPair {
    let exp = load(&fixtures().join("winclip_tiny_expected.safetensors"));
    let t = exp["text_embeddings"].to_vec2::<f32>().unwrap();
    TextPair::new(t[0].clone(), t[1].clone()).unwrap()
}

fn strip_path() -> PathBuf {
    repo().join("tests/images/ksdd_defect_134.png")
}

fn photo(path: &Path) -> RgbImage {
    preprocess::load_image(path, &ImageLimits::default()).unwrap()
}

fn norm(clip: &Clip) -> Normalize {
    Normalize {
        mean: clip.cfg.mean,
        std: clip.cfg.std,
    }
}

/// Today's untiled detection of `img` (as `anoscope detect` without tiles).
fn untiled(clip: &Clip, img: &RgbImage, mode: Mode, text: &TextPair) -> anoscope::detect::Detection {
    let s = SIZE as usize;
    let px = Tensor::from_vec(
        preprocess::resize_preprocess(img, SIZE, &norm(clip)),
        (1, 3, s, s),
        &Device::Cpu,
    )
    .unwrap();
    score_image(clip, &px, mode, text, None, 2, &WinClipConfig::default()).unwrap()
}

/// `tiles::detect_tiled` of `img` under `plan` (no references, 2 surgery layers, never
/// cancelled), with the `(done, total)` progress calls it made.
fn tiled(
    clip: &Clip,
    img: &RgbImage,
    plan: &TilePlan,
    mode: Mode,
    text: &TextPair,
) -> (tiles::TiledDetection, Vec<(usize, usize)>) {
    let cfg = WinClipConfig::default();
    let scoring = TileScoring {
        mode,
        text,
        refs: None,
        surgery_layers: 2,
        cfg: &cfg,
        adapt: None,
    };
    let mut calls = Vec::new();
    let td = tiles::detect_tiled(
        clip,
        img,
        plan,
        SIZE,
        &norm(clip),
        &scoring,
        4096,
        &mut |d, t| {
            calls.push((d, t));
            Ok(())
        },
        &|| false,
    )
    .unwrap();
    (td, calls)
}

#[test]
fn a_one_tile_plan_is_exactly_the_untiled_result() {
    let clip = model();
    let text = text();
    for (path, mode) in [
        (strip_path(), Mode::Fast),
        (strip_path(), Mode::Winclip),
        (repo().join("tests/images/bottle_broken_large_000_64.png"), Mode::Fast),
    ] {
        let img = photo(&path);
        let (w, h) = (img.width() as usize, img.height() as usize);
        // `off`, `1x1` and (for the 64-px photo, under twice the input) `auto` are one tile.
        let mut specs = vec![TileSpec::Off, TileSpec::Grid { rows: 1, cols: 1 }];
        if w.max(h) <= 2 * SIZE as usize {
            specs.push(TileSpec::Auto);
        }
        let want = untiled(&clip, &img, mode, &text);
        let want_full = geometry::to_photo(&want.map, want.width, want.height, w, h).unwrap();
        for spec in specs {
            let plan = tiles::plan(spec, w, h, SIZE as usize).unwrap();
            assert!(plan.is_whole(), "{spec:?}");
            let (got, calls) = tiled(&clip, &img, &plan, mode, &text);
            assert_eq!(calls, vec![(1, 1)]);
            assert_eq!(got.score, want.score, "{path:?} {mode:?} {spec:?}");
            assert_eq!(got.whole.map, want.map);
            assert!(got.tiles.is_empty());
            assert_eq!((got.width, got.height), (w, h));
            assert_eq!(got.map, want_full);
        }
    }
}

#[test]
fn tiled_detection_scores_each_tile_and_stitches_them() {
    let clip = model();
    let text = text();
    let img = photo(&strip_path());
    let (w, h) = (img.width() as usize, img.height() as usize);
    assert_eq!((w, h), (250, 627));
    let plan = tiles::plan(TileSpec::Auto, w, h, SIZE as usize).unwrap();
    assert!(plan.tiles.len() > 1 && plan.tiles.len() <= tiles::AUTO_MAX_TILES);
    let (td, calls) = tiled(&clip, &img, &plan, Mode::Fast, &text);
    let total = plan.tiles.len() + 1;
    assert_eq!(calls, (1..=total).map(|d| (d, total)).collect::<Vec<_>>());
    // The whole-photo pass is today's detection; every tile is its crop's own detection.
    let whole = untiled(&clip, &img, Mode::Fast, &text);
    assert_eq!(td.whole.score, whole.score);
    let mut covered = vec![Vec::new(); w * h];
    for (i, (t, d)) in plan.tiles.iter().zip(&td.tiles).enumerate() {
        let crop = image::imageops::crop_imm(&img, t.x as u32, t.y as u32, t.w as u32, t.h as u32).to_image();
        let own = untiled(&clip, &crop, Mode::Fast, &text);
        assert_eq!(d.score, own.score, "tile {i}");
        assert_eq!(d.map, own.map, "tile {i}");
        for y in t.y..t.y + t.h {
            for x in t.x..t.x + t.w {
                covered[y * w + x].push(i);
            }
        }
    }
    // The score formula.
    let top = td.tiles.iter().map(|d| d.score).fold(f32::MIN, f32::max);
    assert_eq!(td.score, 0.5 * (whole.score + top));
    // Where one tile covers a pixel, the stitched map is that tile's own map on the photo;
    // elsewhere it lies between the covering tiles' values.
    let own: Vec<Vec<f32>> = plan
        .tiles
        .iter()
        .zip(&td.tiles)
        .map(|(t, d)| geometry::to_photo(&d.map, d.width, d.height, t.w, t.h).unwrap())
        .collect();
    let (mut single, mut multi) = (0, 0);
    for y in 0..h {
        for x in 0..w {
            let cov = &covered[y * w + x];
            assert!(!cov.is_empty());
            let vals: Vec<f32> = cov
                .iter()
                .map(|&i| {
                    let t = plan.tiles[i];
                    own[i][(y - t.y) * t.w + (x - t.x)]
                })
                .collect();
            let v = td.map[y * w + x];
            if vals.len() == 1 {
                assert_eq!(v, vals[0], "({x},{y})");
                single += 1;
            } else {
                let lo = vals.iter().copied().fold(f32::MAX, f32::min);
                let hi = vals.iter().copied().fold(f32::MIN, f32::max);
                assert!(v >= lo - 1e-6 && v <= hi + 1e-6, "({x},{y}) {v} not in [{lo}, {hi}]");
                multi += 1;
            }
        }
    }
    assert!(single > 1000 && multi > 1000, "{single} {multi}");
}

#[test]
fn cancel_between_tiles_and_batch_is_refused() {
    let clip = model();
    let text = text();
    let cfg = WinClipConfig::default();
    let img = photo(&strip_path());
    let plan = tiles::plan(TileSpec::Auto, 250, 627, SIZE as usize).unwrap();
    let done = Cell::new(0);
    let scoring = TileScoring {
        mode: Mode::Fast,
        text: &text,
        refs: None,
        surgery_layers: 2,
        cfg: &cfg,
        adapt: None,
    };
    let e = tiles::detect_tiled(
        &clip,
        &img,
        &plan,
        SIZE,
        &norm(&clip),
        &scoring,
        4096,
        &mut |d, _| {
            done.set(d);
            Ok(())
        },
        &|| done.get() >= 3,
    )
    .unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert_eq!(done.get(), 3, "stopped after the third pass");
    // An error from progress stops the run too.
    let e = tiles::detect_tiled(
        &clip,
        &img,
        &plan,
        SIZE,
        &norm(&clip),
        &scoring,
        4096,
        &mut |_, _| anyhow::bail!("stop here"),
        &|| false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("stop here"));
    let batch = TileScoring {
        mode: Mode::Batch,
        ..scoring
    };
    let e = tiles::detect_tiled(
        &clip,
        &img,
        &plan,
        SIZE,
        &norm(&clip),
        &batch,
        4096,
        &mut |_, _| Ok(()),
        &|| false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch mode"), "{e}");
    // A plan for another photo size.
    let other = TilePlan::whole(10, 10);
    assert!(tiles::detect_tiled(
        &clip,
        &img,
        &other,
        SIZE,
        &norm(&clip),
        &scoring,
        4096,
        &mut |_, _| Ok(()),
        &|| false
    )
    .is_err());
}

// --------------------------------------------------------------------- AdaptCLIP (learned adapters)

/// AdaptCLIP's input side on the tiny DPAM model (patch 14: a 4×4 grid).
const ADAPT_SIZE: u32 = 56;

/// The tiny 24-block model of the learned fixtures, resampling position embeddings as the official code does.
fn adapt_model() -> Clip {
    let mut clip = Clip::load_dir(&fixtures().join("anomalyclip_tiny")).unwrap();
    learned::use_official_pos_interp(&mut clip);
    clip
}

fn adapt_ready(clip: &Clip) -> AdaptClip {
    AdaptClip::read_file(clip, &fixtures().join("adaptclip_tiny/learned.pth")).unwrap()
}

fn adapt_pixels(clip: &Clip, img: &RgbImage) -> Tensor {
    let s = ADAPT_SIZE as usize;
    Tensor::from_vec(
        preprocess::resize_preprocess(img, ADAPT_SIZE, &norm(clip)),
        (1, 3, s, s),
        &Device::Cpu,
    )
    .unwrap()
}

/// AdaptCLIP's untiled detection of `img` (as `anoscope detect --mode adaptclip`).
fn adapt_untiled(
    clip: &Clip,
    ready: &AdaptClip,
    img: &RgbImage,
    refs: Option<&adaptclip::References>,
) -> anoscope::detect::Detection {
    let px = adapt_pixels(clip, img);
    adaptclip::detect(clip, ready, &px, refs).unwrap().remove(0)
}

fn adapt_tiled(
    clip: &Clip,
    ready: &AdaptClip,
    img: &RgbImage,
    plan: &TilePlan,
    refs: Option<&adaptclip::References>,
) -> tiles::TiledDetection {
    let cfg = WinClipConfig::default();
    let unused = TextPair::new(vec![1.0], vec![0.0]).unwrap();
    let scoring = TileScoring {
        mode: Mode::Adaptclip,
        text: &unused,
        refs: None,
        surgery_layers: 0,
        cfg: &cfg,
        adapt: Some(AdaptScoring { ready, refs }),
    };
    tiles::detect_tiled(
        clip,
        img,
        plan,
        ADAPT_SIZE,
        &norm(clip),
        &scoring,
        4096,
        &mut |_, _| Ok(()),
        &|| false,
    )
    .unwrap()
}

/// One normal reference for few-shot AdaptCLIP (a bottle photo, squash-resized to the input).
fn adapt_refs(clip: &Clip) -> adaptclip::References {
    let img = photo(&repo().join("tests/browser/images/bottle_good_000.jpg"));
    adaptclip::references(clip, &adapt_pixels(clip, &img)).unwrap()
}

#[test]
fn adaptclip_one_tile_plans_are_exactly_the_untiled_result_zero_and_few_shot() {
    let clip = adapt_model();
    let ready = adapt_ready(&clip);
    let refs = adapt_refs(&clip);
    let img = photo(&strip_path());
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut few_scores = Vec::new();
    for r in [None, Some(&refs)] {
        let want = adapt_untiled(&clip, &ready, &img, r);
        let want_full = geometry::to_photo(&want.map, want.width, want.height, w, h).unwrap();
        for spec in [TileSpec::Off, TileSpec::Grid { rows: 1, cols: 1 }] {
            let plan = tiles::plan(spec, w, h, ADAPT_SIZE as usize).unwrap();
            assert!(plan.is_whole());
            let got = adapt_tiled(&clip, &ready, &img, &plan, r);
            assert_eq!(got.score, want.score, "{spec:?}, refs {}", r.is_some());
            assert_eq!(got.whole.map, want.map);
            assert!(got.tiles.is_empty());
            assert_eq!(got.map, want_full);
        }
        few_scores.push(want.score);
    }
    // The references are used: few-shot is another score than zero-shot.
    assert_ne!(few_scores[0], few_scores[1]);
}

#[test]
fn adaptclip_tiles_are_each_crops_own_detection_stitched_zero_and_few_shot() {
    let clip = adapt_model();
    let ready = adapt_ready(&clip);
    let refs = adapt_refs(&clip);
    let img = photo(&strip_path());
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plan = tiles::plan(TileSpec::Auto, w, h, ADAPT_SIZE as usize).unwrap();
    assert!(
        plan.tiles.len() > 1 && plan.tiles.len() <= tiles::AUTO_MAX_TILES,
        "{plan:?}"
    );
    let mut stitched = Vec::new();
    for r in [None, Some(&refs)] {
        let td = adapt_tiled(&clip, &ready, &img, &plan, r);
        let whole = adapt_untiled(&clip, &ready, &img, r);
        assert_eq!(td.whole.score, whole.score);
        assert_eq!(td.whole.map, whole.map);
        assert_eq!(td.tiles.len(), plan.tiles.len());
        // Every tile: a manual run on its crop, with the same references.
        let mut maps = Vec::new();
        for (i, (t, d)) in plan.tiles.iter().zip(&td.tiles).enumerate() {
            let crop = image::imageops::crop_imm(&img, t.x as u32, t.y as u32, t.w as u32, t.h as u32).to_image();
            let own = adapt_untiled(&clip, &ready, &crop, r);
            assert_eq!(d.score, own.score, "tile {i}");
            assert_eq!(d.map, own.map, "tile {i}");
            assert_eq!((d.width, d.height), (ADAPT_SIZE as usize, ADAPT_SIZE as usize));
            maps.push(own.map);
        }
        // The stitched map is the manual tile maps stitched; the score (whole + max tile) / 2.
        let refs_maps: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
        let s = ADAPT_SIZE as usize;
        let want = tiles::stitch(&plan, &refs_maps, s, s, w, h).unwrap();
        assert_eq!(td.map, want);
        assert_eq!((td.width, td.height), (w, h));
        let top = td.tiles.iter().map(|d| d.score).fold(f32::MIN, f32::max);
        assert_eq!(td.score, 0.5 * (whole.score + top));
        // A real map: it varies over the photo.
        let (lo, hi) = td
            .map
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo > 1e-3, "{lo}..{hi}");
        stitched.push(td.map);
    }
    assert_ne!(stitched[0], stitched[1], "few-shot tiles use the references");
}

#[test]
fn adaptclip_tiles_without_adapters_are_an_error() {
    let clip = adapt_model();
    let img = photo(&strip_path());
    let plan = tiles::plan(TileSpec::Auto, 250, 627, ADAPT_SIZE as usize).unwrap();
    let cfg = WinClipConfig::default();
    let unused = TextPair::new(vec![1.0], vec![0.0]).unwrap();
    let scoring = TileScoring {
        mode: Mode::Adaptclip,
        text: &unused,
        refs: None,
        surgery_layers: 0,
        cfg: &cfg,
        adapt: None,
    };
    let e = tiles::detect_tiled(
        &clip,
        &img,
        &plan,
        ADAPT_SIZE,
        &norm(&clip),
        &scoring,
        4096,
        &mut |_, _| Ok(()),
        &|| false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs its adapters"), "{e}");
}

// ------------------------------------------------------------------------------------- the CLI

fn json(dir: &Path, stem: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap()).unwrap()
}

fn png_size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap()
}

fn detect(out: &Path, extra: &[&str]) -> (bool, String) {
    let model = fixtures().join("winclip_tiny");
    let strip = strip_path();
    let mut args = vec![
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--surgery-layers",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    args.push(strip.to_str().unwrap());
    let (ok, _, err) = run(&args);
    (ok, err)
}

const STEM: &str = "ksdd_defect_134";

#[test]
fn cli_writes_photo_resolution_overlays_maps_and_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let off = tmp.path().join("off");
    let (ok, err) = detect(&off, &["--full-map", "--tiles", "off"]);
    assert!(ok, "{err}");
    assert_eq!(png_size(&off.join(format!("{STEM}.overlay.png"))), (250, 627));
    let maps = load(&off.join(format!("{STEM}.map.safetensors")));
    assert_eq!(maps["anomaly_map"].dims(), &[48, 48]);
    assert_eq!(maps["anomaly_map_full"].dims(), &[627, 250]);
    let small = flat(&maps["anomaly_map"]);
    let full = flat(&maps["anomaly_map_full"]);
    assert_eq!(full, geometry::to_photo(&small, 48, 48, 250, 627).unwrap());
    let j = json(&off, STEM);
    assert_eq!(
        (j["image_width"].as_u64(), j["image_height"].as_u64()),
        (Some(250), Some(627))
    );
    assert_eq!(j["tiles"]["count"].as_u64(), Some(1));

    // Regions at a threshold that splits the map: the 97th percentile of the full map.
    let mut sorted = full.clone();
    sorted.sort_by(f32::total_cmp);
    let thr = sorted[sorted.len() * 97 / 100];
    let reg = tmp.path().join("reg");
    let (ok, err) = detect(&reg, &["--full-map", "--threshold", &thr.to_string()]);
    assert!(ok, "{err}");
    let j = json(&reg, STEM);
    let listed = j["regions"].as_array().unwrap();
    assert!(!listed.is_empty());
    let want = regions::regions(&full, 250, 627, thr, 1).unwrap();
    assert_eq!(listed.len(), want.len());
    let mut area = 0;
    let mut last_peak = f64::INFINITY;
    for (r, w) in listed.iter().zip(&want) {
        let bbox: Vec<usize> = r["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let peak_xy: Vec<usize> = r["peak_xy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(bbox, w.bbox.to_vec());
        assert_eq!(peak_xy, w.peak_xy.to_vec());
        assert_eq!(r["area_px"].as_u64().unwrap() as usize, w.area_px);
        // Consistent with the full map itself.
        let peak = r["peak"].as_f64().unwrap();
        assert_eq!(peak as f32, full[peak_xy[1] * 250 + peak_xy[0]]);
        assert!(peak as f32 >= thr && peak <= last_peak);
        last_peak = peak;
        assert!(peak_xy[0] >= bbox[0] && peak_xy[0] < bbox[0] + bbox[2]);
        assert!(peak_xy[1] >= bbox[1] && peak_xy[1] < bbox[1] + bbox[3]);
        let pct = r["area_pct"].as_f64().unwrap();
        assert!((pct - 100.0 * w.area_px as f64 / (250.0 * 627.0)).abs() < 1e-9);
        area += w.area_px;
    }
    assert_eq!(area, full.iter().filter(|&&v| v >= thr).count());

    // `--tiles 1x1` is `off`, file for file (timings aside).
    let one = tmp.path().join("one");
    let (ok, err) = detect(&one, &["--full-map", "--tiles", "1x1"]);
    assert!(ok, "{err}");
    let (a, b) = (json(&off, STEM), json(&one, STEM));
    assert_eq!(a["score"], b["score"]);
    assert_eq!(a["regions"], b["regions"]);
    assert_eq!(
        std::fs::read(off.join(format!("{STEM}.map.safetensors"))).unwrap(),
        std::fs::read(one.join(format!("{STEM}.map.safetensors"))).unwrap()
    );
    assert_eq!(
        std::fs::read(off.join(format!("{STEM}.overlay.png"))).unwrap(),
        std::fs::read(one.join(format!("{STEM}.overlay.png"))).unwrap()
    );

    // `auto`: tiles, the photo's size kept, the score formula.
    let auto = tmp.path().join("auto");
    let (ok, err) = detect(&auto, &["--full-map", "--tiles", "auto"]);
    assert!(ok, "{err}");
    assert_eq!(png_size(&auto.join(format!("{STEM}.overlay.png"))), (250, 627));
    let j = json(&auto, STEM);
    let count = j["tiles"]["count"].as_u64().unwrap();
    assert!(count > 1 && count <= 16, "{count}");
    assert_eq!(j["tiles"]["whole_score"], a["score"]);
    let top = j["tiles"]["tile_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .fold(f32::MIN, f32::max);
    let whole = a["score"].as_f64().unwrap() as f32;
    assert_eq!(j["score"].as_f64().unwrap() as f32, 0.5 * (whole + top));
    let maps = load(&auto.join(format!("{STEM}.map.safetensors")));
    assert_eq!(
        flat(&maps["anomaly_map"]),
        small,
        "anomaly_map stays the whole-photo pass"
    );
    assert_eq!(maps["anomaly_map_full"].dims(), &[627, 250]);

    // A bounded overlay keeps the aspect: 250×627 at long side 100 → 40×100.
    let bounded = tmp.path().join("bounded");
    let (ok, err) = detect(&bounded, &["--full-map", "--overlay-size", "100"]);
    assert!(ok, "{err}");
    assert_eq!(png_size(&bounded.join(format!("{STEM}.overlay.png"))), (40, 100));
    let maps = load(&bounded.join(format!("{STEM}.map.safetensors")));
    assert_eq!(maps["anomaly_map_full"].dims(), &[100, 40]);
    assert!(!maps.is_empty());
    let without = tmp.path().join("without");
    let (ok, err) = detect(&without, &[]);
    assert!(ok, "{err}");
    let maps = load(&without.join(format!("{STEM}.map.safetensors")));
    assert!(!maps.contains_key("anomaly_map_full"), "only with --full-map");
}

#[test]
fn cli_tile_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, msg) in [
        (vec!["--tiles", "1x3"], "cannot be covered"),
        (vec!["--tiles", "9x9"], "at most 64 tiles"),
        (vec!["--tiles", "big"], "auto"),
        (vec!["--tiles", "auto", "--mode", "batch"], "batch mode"),
        (vec!["--overlay-size", "0"], "--overlay-size"),
    ] {
        let (ok, err) = detect(&tmp.path().join("e"), &extra);
        assert!(!ok, "{extra:?} should fail");
        assert!(err.contains(msg), "{extra:?}: {err}");
    }
}
