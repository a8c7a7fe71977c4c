//! `anoscope detect|convert` with --mode adaptclip on the fixtures the official AdaptCLIP code
//! made (see tests/adaptclip.rs): the CLI's zero- and few-shot scores and maps equal the
//! official ones, from the torch checkpoint and from its safetensors conversion (which needs no
//! text tower); misuse is a clear error.
mod common;
use common::{fixtures, flat, load, run};
use std::path::{Path, PathBuf};

fn model() -> PathBuf {
    fixtures().join("anomalyclip_tiny")
}

fn pth() -> PathBuf {
    fixtures().join("adaptclip_tiny").join("learned.pth")
}

fn expected() -> PathBuf {
    fixtures().join("adaptclip_tiny_expected.safetensors")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `detect --mode adaptclip --pixels` (+ extra flags): scores and maps of the two queries.
fn detect(learned: &Path, out: &Path, extra: &[&str]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (m, e) = (model(), expected());
    let args = [
        &[
            "detect",
            "--mode",
            "adaptclip",
            "--model",
            s(&m),
            "--learned",
            s(learned),
            "--pixels",
            s(&e),
            "--out",
            s(out),
        ][..],
        extra,
    ]
    .concat();
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(!stderr.contains("skipping"), "{stderr}");
    let mut scores = Vec::new();
    let mut maps = Vec::new();
    for i in 0..2 {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("{i}.json"))).unwrap()).unwrap();
        assert_eq!(j["mode"], "adaptclip");
        assert_eq!((j["map_height"].as_u64(), j["grid"][0].as_u64()), (Some(70), Some(10)));
        scores.push(j["score"].as_f64().unwrap() as f32);
        maps.push(flat(&load(&out.join(format!("{i}.map.safetensors")))["anomaly_map"]));
    }
    (scores, maps)
}

fn check(scores: &[f32], maps: &[Vec<f32>], score_key: &str, map_key: &str, what: &str) {
    let exp = load(&expected());
    let want_scores = flat(&exp[score_key]);
    for i in 0..2 {
        assert!((scores[i] - want_scores[i]).abs() < 1e-4, "{what}: score {i}");
        let want = flat(&exp[map_key].get(i).unwrap());
        let max = maps[i]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-4, "{what}: map {i} off by {max}");
    }
}

/// The references as a pixel file (`pixel_values` = the fixture's prompt images).
fn ref_pixels(dir: &Path) -> PathBuf {
    let exp = load(&expected());
    let p = dir.join("refs.safetensors");
    let t = std::collections::HashMap::from([("pixel_values".to_string(), exp["prompt_pixel_values"].clone())]);
    candle_core::safetensors::save(&t, &p).unwrap();
    p
}

#[test]
fn detect_equals_the_official_code_zero_and_few_shot_from_the_pth_and_its_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let (sc, maps) = detect(&pth(), &tmp.path().join("zero"), &[]);
    check(&sc, &maps, "score_zero", "map_zero", "zero-shot from .pth");
    let refs = ref_pixels(tmp.path());
    let (sc, maps) = detect(&pth(), &tmp.path().join("few"), &["--ref-pixels", s(&refs)]);
    check(&sc, &maps, "score_few", "map_few", "2-shot from .pth");
    // Converted (f32): the same numbers, class pairs stored in the file.
    let conv = tmp.path().join("adaptclip.safetensors");
    let (ok, _, stderr) = run(&[
        "convert",
        "--learned",
        s(&pth()),
        "--model",
        s(&model()),
        "--dtype",
        "f32",
        "--out",
        s(&conv),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("AdaptCLIP with its class pairs"), "{stderr}");
    let (sc, maps) = detect(&conv, &tmp.path().join("conv"), &[]);
    check(&sc, &maps, "score_zero", "map_zero", "zero-shot from the conversion");
    let (sc, maps) = detect(&conv, &tmp.path().join("conv-few"), &["--ref-pixels", s(&refs)]);
    check(&sc, &maps, "score_few", "map_few", "2-shot from the conversion");
}

#[test]
fn adaptclip_misuse_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, x) = (model(), expected());
    let base = [
        "detect",
        "--model",
        s(&m),
        "--pixels",
        s(&x),
        "--out",
        tmp.path().to_str().unwrap(),
    ];
    let (ok, _, e) = run(&[&base[..], &["--mode", "adaptclip"]].concat());
    assert!(!ok && e.contains("--learned FILE"), "{e}");
    // AnomalyCLIP's checkpoint is not AdaptCLIP's.
    let anomaly = fixtures().join("anomalyclip_tiny").join("learned.pth");
    let (ok, _, e) = run(&[&base[..], &["--mode", "adaptclip", "--learned", s(&anomaly)]].concat());
    assert!(!ok && e.contains("no `textual_learner` state dict"), "{e}");
    // Another model's width.
    let other = fixtures().join("winclip_tiny");
    let (ok, _, e) = run(&[
        "detect",
        "--mode",
        "adaptclip",
        "--model",
        s(&other),
        "--learned",
        s(&pth()),
        "--size",
        "48",
        "--out",
        tmp.path().to_str().unwrap(),
        s(&fixtures()
            .join("..")
            .join("images")
            .join("bottle_broken_large_000_64.png")),
    ]);
    assert!(!ok && e.contains("not AdaptCLIP parameters for this model"), "{e}");
    // Tiles need the photos, not --pixels.
    let (ok, _, e) = run(&[
        &base[..],
        &["--mode", "adaptclip", "--learned", s(&pth()), "--tiles", "2x2"],
    ]
    .concat());
    assert!(!ok && e.contains("--tiles needs the photos"), "{e}");
    // Converting an AdaptCLIP file needs the model (its class pairs are stored).
    let (ok, _, e) = run(&["convert", "--learned", s(&pth()), "--out", s(&tmp.path().join("c"))]);
    assert!(!ok && e.contains("needs --model DIR"), "{e}");
}

#[test]
fn photos_eval_and_bench_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = common::repo();
    // A photo at a small size, 1-shot with a photo reference.
    let img = repo.join("tests/browser/images/bottle_broken_large_000.png");
    let out = tmp.path().join("photo");
    let (ok, _, stderr) = run(&[
        "detect",
        "--mode",
        "adaptclip",
        "--model",
        s(&model()),
        "--learned",
        s(&pth()),
        "--size",
        "56",
        "--refs",
        s(&img),
        "--out",
        s(&out),
        s(&img),
    ]);
    assert!(ok, "{stderr}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bottle_broken_large_000.json")).unwrap()).unwrap();
    assert_eq!(
        (j["mode"].as_str(), j["map_height"].as_u64()),
        (Some("adaptclip"), Some(56))
    );
    let score = j["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{score}");
    // eval over the tiny MVTec tree (zero-shot).
    let out = tmp.path().join("eval");
    let (ok, stdout, stderr) = run(&[
        "eval",
        "--mode",
        "adaptclip",
        "--model",
        s(&model()),
        "--learned",
        s(&pth()),
        "--size",
        "42",
        "--dataset",
        s(&repo.join("tests/data/tiny_mvtec")),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| bottle |"), "{stdout}");
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["settings"]["mode"], "adaptclip");
    assert_eq!(run_json["settings"]["learned_sha256"].as_str().unwrap().len(), 64);
    let (ok, stdout, stderr) = run(&[
        "bench",
        "--mode",
        "adaptclip",
        "--model",
        s(&model()),
        "--size",
        "42",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let b: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((b["mode"].as_str(), b["size"].as_u64()), (Some("adaptclip"), Some(42)));
    assert!(b["one_shot_ms"].as_f64().unwrap() > 0.0);
}

/// `detect --mode adaptclip --size 56 --full-map --tiles SPEC` on the 250×627 strip (+ extra):
/// the JSON and the maps file.
fn detect_strip(
    out: &Path,
    spec: &str,
    extra: &[&str],
) -> (
    serde_json::Value,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let strip = common::repo().join("tests/images/ksdd_defect_134.png");
    let (m, l) = (model(), pth());
    // `extra` (--refs takes every path that follows) before the flags that end it.
    let args = [
        &["detect"][..],
        extra,
        &[
            "--mode",
            "adaptclip",
            "--model",
            s(&m),
            "--learned",
            s(&l),
            "--size",
            "56",
            "--full-map",
            "--backend",
            "cpu",
            "--tiles",
            spec,
            "--out",
            s(out),
            s(&strip),
        ],
    ]
    .concat();
    let (ok, _, stderr) = run(&args);
    assert!(ok, "{stderr}");
    let j = serde_json::from_str(&std::fs::read_to_string(out.join("ksdd_defect_134.json")).unwrap()).unwrap();
    (j, load(&out.join("ksdd_defect_134.map.safetensors")))
}

#[test]
fn detect_tiles_zero_and_few_shot_equal_a_manual_run_per_tile() {
    use anoscope::detect::{adaptclip, learned, tiles};
    use anoscope::preprocess::{self, ImageLimits, Normalize};
    let tmp = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let reference = repo.join("tests/browser/images/bottle_good_000.jpg");
    let strip =
        preprocess::load_image(&repo.join("tests/images/ksdd_defect_134.png"), &ImageLimits::default()).unwrap();
    let mut clip = anoscope::model::Clip::load_dir(&model()).unwrap();
    learned::use_official_pos_interp(&mut clip);
    let ready = adaptclip::AdaptClip::read_file(&clip, &pth()).unwrap();
    let norm = Normalize {
        mean: clip.cfg.mean,
        std: clip.cfg.std,
    };
    let px = |img: &image::RgbImage| {
        candle_core::Tensor::from_vec(
            preprocess::resize_preprocess(img, 56, &norm),
            (1, 3, 56, 56),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let ref_img = preprocess::load_image(&reference, &ImageLimits::default()).unwrap();
    let refs = adaptclip::references(&clip, &px(&ref_img)).unwrap();
    for (name, extra, r) in [
        ("zero", vec![], None),
        ("few", vec!["--refs", s(&reference)], Some(&refs)),
    ] {
        let (off, off_maps) = detect_strip(&tmp.path().join(format!("{name}-off")), "off", &extra);
        let (one, one_maps) = detect_strip(&tmp.path().join(format!("{name}-1x1")), "1x1", &extra);
        // 1x1 is off exactly.
        assert_eq!(one["score"], off["score"], "{name}");
        assert_eq!(
            flat(&one_maps["anomaly_map_full"]),
            flat(&off_maps["anomaly_map_full"]),
            "{name}"
        );
        let (auto, maps) = detect_strip(&tmp.path().join(format!("{name}-auto")), "auto", &extra);
        assert_eq!(auto["mode"], "adaptclip");
        let plan: tiles::TilePlan = tiles::plan(tiles::TileSpec::Auto, 250, 627, 56).unwrap();
        let rects: Vec<tiles::Tile> = serde_json::from_value(auto["tiles"]["tiles"].clone()).unwrap();
        assert_eq!(rects, plan.tiles, "{name}: the tile plan");
        assert!(plan.tiles.len() > 1);
        assert_eq!(
            auto["tiles"]["whole_score"], off["score"],
            "{name}: the whole-photo pass is the untiled run"
        );
        assert_eq!(flat(&maps["anomaly_map"]), flat(&off_maps["anomaly_map"]));
        // Every tile by hand: its crop squash-resized to 56 px, scored alone (same references).
        let mut tile_maps = Vec::new();
        let mut top = f32::MIN;
        let listed = auto["tiles"]["tile_scores"].as_array().unwrap();
        for (i, t) in plan.tiles.iter().enumerate() {
            let crop = image::imageops::crop_imm(&strip, t.x as u32, t.y as u32, t.w as u32, t.h as u32).to_image();
            let d = adaptclip::detect(&clip, &ready, &px(&crop), r).unwrap().remove(0);
            assert_eq!(listed[i].as_f64().unwrap() as f32, d.score, "{name}: tile {i}");
            top = top.max(d.score);
            tile_maps.push(d.map);
        }
        let views: Vec<&[f32]> = tile_maps.iter().map(Vec::as_slice).collect();
        let want = tiles::stitch(&plan, &views, 56, 56, 250, 627).unwrap();
        assert_eq!(maps["anomaly_map_full"].dims(), &[627, 250]);
        assert_eq!(flat(&maps["anomaly_map_full"]), want, "{name}: the stitched map");
        let whole = off["score"].as_f64().unwrap() as f32;
        assert_eq!(auto["score"].as_f64().unwrap() as f32, 0.5 * (whole + top), "{name}");
        // Regions come from the stitched map.
        assert!(auto["regions"].is_array());
    }
}

/// A small MVTec-layout tree built from the tiny bottle set: category `widget`, three normal
/// training images, two good and two broken test images with masks.
fn widget_tree(root: &Path) -> PathBuf {
    let src = common::repo().join("tests/data/tiny_mvtec/bottle");
    let cat = root.join("widget");
    for (from, to) in [
        ("train/good/000.png", "train/good/a.png"),
        ("train/good/001.png", "train/good/b.png"),
        ("test/good/002.png", "train/good/c.png"),
        ("test/good/000.png", "test/good/000.png"),
        ("test/good/001.png", "test/good/001.png"),
        ("test/broken_large/000.png", "test/broken/000.png"),
        ("test/broken_large/001.png", "test/broken/001.png"),
        (
            "ground_truth/broken_large/000_mask.png",
            "ground_truth/broken/000_mask.png",
        ),
        (
            "ground_truth/broken_large/001_mask.png",
            "ground_truth/broken/001_mask.png",
        ),
    ] {
        let dst = cat.join(to);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src.join(from), &dst).unwrap();
    }
    root.to_path_buf()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn eval_few_shot_draws_the_references_as_fewshot_and_scores_with_them() {
    use anoscope::detect::{adaptclip, learned};
    use anoscope::preprocess::{self, ImageLimits, Normalize};
    let tmp = tempfile::tempdir().unwrap();
    let data = widget_tree(&tmp.path().join("data"));
    let (m, l) = (model(), pth());
    let eval = |out: &Path, extra: &[&str]| {
        let args = [
            &[
                "eval",
                "--mode",
                "adaptclip",
                "--model",
                s(&m),
                "--learned",
                s(&l),
                "--size",
                "42",
                "--dataset",
                s(&data),
                "--worst",
                "0",
                "--out",
                s(out),
            ][..],
            extra,
        ]
        .concat();
        run(&args)
    };
    let few = tmp.path().join("few");
    let (ok, stdout, stderr) = eval(&few, &["--shots", "2", "--seed", "5"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| widget |"), "{stdout}");
    let run_json = read_json(&few.join("run.json"));
    assert_eq!(run_json["settings"]["mode"], "adaptclip");
    assert_eq!(run_json["settings"]["shots"], 2);
    let listed: Vec<String> = run_json["categories"]["widget"]["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 2);
    // The same draw as the WinCLIP+ few-shot eval (same tree, shots and seed).
    let ws = tmp.path().join("winclip-few");
    let wm = fixtures().join("winclip_tiny");
    let (ok, _, stderr) = run(&[
        "eval",
        "--mode",
        "fewshot",
        "--model",
        s(&wm),
        "--dataset",
        s(&data),
        "--shots",
        "2",
        "--seed",
        "5",
        "--worst",
        "0",
        "--out",
        s(&ws),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        read_json(&ws.join("run.json"))["categories"]["widget"]["references"],
        run_json["categories"]["widget"]["references"]
    );
    // Every test image's score: few-shot AdaptCLIP with exactly those references, by hand.
    let mut clip = anoscope::model::Clip::load_dir(&m).unwrap();
    learned::use_official_pos_interp(&mut clip);
    let ready = adaptclip::AdaptClip::read_file(&clip, &l).unwrap();
    let norm = Normalize {
        mean: clip.cfg.mean,
        std: clip.cfg.std,
    };
    let px = |paths: &[PathBuf]| {
        let mut v = Vec::new();
        for p in paths {
            let img = preprocess::load_image(p, &ImageLimits::default()).unwrap();
            v.extend(preprocess::resize_preprocess(&img, 42, &norm));
        }
        candle_core::Tensor::from_vec(v, (paths.len(), 3, 42, 42), &candle_core::Device::Cpu).unwrap()
    };
    let refs = adaptclip::references(&clip, &px(&listed.iter().map(PathBuf::from).collect::<Vec<_>>())).unwrap();
    let zero = tmp.path().join("zero");
    let (ok, _, stderr) = eval(&zero, &[]);
    assert!(ok, "{stderr}");
    assert!(read_json(&zero.join("run.json"))["settings"]["shots"].is_null());
    let mut differ = 0;
    for (defect, stem) in [("good", "000"), ("good", "001"), ("broken", "000"), ("broken", "001")] {
        let rec = |dir: &Path| read_json(&dir.join(format!("records/widget/{defect}/{stem}.json")));
        let img = data.join(format!("widget/test/{defect}/{stem}.png"));
        let want = adaptclip::detect(&clip, &ready, &px(&[img]), Some(&refs))
            .unwrap()
            .remove(0);
        let got = rec(&few)["score"].as_f64().unwrap() as f32;
        assert_eq!(got, want.score, "{defect}/{stem}");
        let z = rec(&zero)["score"].as_f64().unwrap() as f32;
        differ += usize::from(z != got);
    }
    assert_eq!(differ, 4, "few-shot scores differ from zero-shot ones");
    // Misuse: more shots than train/good holds; --shots with another learned mode.
    let (ok, _, e) = eval(&tmp.path().join("e1"), &["--shots", "4"]);
    assert!(!ok && e.contains("--shots 4") && e.contains("train/good"), "{e}");
    let (ok, _, e) = run(&[
        "eval",
        "--mode",
        "anomalyclip",
        "--model",
        s(&m),
        "--learned",
        s(&l),
        "--dataset",
        s(&data),
        "--shots",
        "1",
        "--out",
        s(&tmp.path().join("e2")),
    ]);
    assert!(
        !ok && e.contains("--shots applies to --mode fewshot and adaptclip only"),
        "{e}"
    );
    // Resuming with other shots is refused.
    let (ok, _, e) = eval(&few, &["--shots", "1", "--seed", "5", "--resume"]);
    assert!(!ok && e.contains("shots"), "{e}");
}
