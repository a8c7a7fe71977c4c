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
    // Tiles are not offered for this mode yet.
    let (ok, _, e) = run(&[
        "detect",
        "--mode",
        "adaptclip",
        "--model",
        s(&model()),
        "--learned",
        s(&pth()),
        "--tiles",
        "2x2",
        "--out",
        tmp.path().to_str().unwrap(),
        "x.png",
    ]);
    assert!(!ok && e.contains("adaptclip is not tiled"), "{e}");
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
