//! `anoscope detect|eval|bench|convert` with --mode anomalyclip on the fixtures that the
//! official AnomalyCLIP code made (see tests/anomalyclip.rs): the CLI's scores and maps equal
//! the official ones from the torch checkpoint and from its safetensors conversion; photos,
//! tiles, eval and bench run; missing or misplaced --learned is a clear error.
mod common;
use common::{fixtures, flat, load, repo, run};
use std::path::{Path, PathBuf};

fn model() -> PathBuf {
    fixtures().join("anomalyclip_tiny")
}

fn pth() -> PathBuf {
    model().join("learned.pth")
}

fn expected() -> PathBuf {
    fixtures().join("anomalyclip_tiny_expected.safetensors")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn detect_pixels(learned: &Path, out: &Path) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (ok, stdout, stderr) = run(&[
        "detect",
        "--mode",
        "anomalyclip",
        "--model",
        s(&model()),
        "--learned",
        s(learned),
        "--pixels",
        s(&expected()),
        "--out",
        s(out),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let mut scores = Vec::new();
    let mut maps = Vec::new();
    for i in 0..2 {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("{i}.json"))).unwrap()).unwrap();
        assert_eq!(j["mode"], "anomalyclip");
        assert_eq!((j["map_height"].as_u64(), j["grid"][0].as_u64()), (Some(42), Some(6)));
        scores.push(j["score"].as_f64().unwrap() as f32);
        maps.push(flat(&load(&out.join(format!("{i}.map.safetensors")))["anomaly_map"]));
        assert!(out.join(format!("{i}.overlay.png")).is_file());
    }
    (scores, maps)
}

fn check_against_official(scores: &[f32], maps: &[Vec<f32>], what: &str) {
    let exp = load(&expected());
    let want_scores = flat(&exp["scores"]);
    let want_maps = flat(&exp["maps"]);
    for i in 0..2 {
        assert!((scores[i] - want_scores[i]).abs() < 1e-4, "{what}: score {i}");
        let d = maps[i]
            .iter()
            .zip(&want_maps[i * 1764..(i + 1) * 1764])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{what}: map {i} max |Δ| {d}");
    }
}

#[test]
fn detect_equals_the_official_code_from_the_pth_and_its_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let pth = pth();
    let m = model();
    let (scores, maps) = detect_pixels(&pth, &tmp.path().join("pth"));
    check_against_official(&scores, &maps, "pth");
    // convert → safetensors (f16, with the text features computed by the model) → same results.
    for (extra, name) in [
        (vec![], "plain.safetensors"),
        (vec!["--model", s(&m)], "text.safetensors"),
    ] {
        let out = tmp.path().join(name);
        let mut args = vec!["convert", "--learned", s(&pth), "--out", s(&out)];
        args.extend(extra.iter().copied());
        let (ok, _, stderr) = run(&args);
        assert!(ok, "{stderr}");
        let names: Vec<String> = load(&out).into_keys().collect();
        assert!(
            names.iter().all(|n| !n.starts_with("compound_prompt_projections")),
            "{names:?}"
        );
        assert_eq!(names.iter().any(|n| n == "text_features"), name == "text.safetensors");
        let (scores, maps) = detect_pixels(&out, &tmp.path().join(format!("{name}.out")));
        // Stored f16 text features move the outputs by float16 rounding only.
        if name == "plain.safetensors" {
            check_against_official(&scores, &maps, name);
        } else {
            let want = flat(&load(&expected())["scores"]);
            assert!(
                scores.iter().zip(&want).all(|(a, b)| (a - b).abs() < 2e-3),
                "{scores:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn photos_tiles_eval_and_bench_run() {
    let tmp = tempfile::tempdir().unwrap();
    let img = repo().join("tests/browser/images/bottle_broken_large_000.png");
    let out = tmp.path().join("photo");
    let (ok, _, stderr) = run(&[
        "detect",
        "--mode",
        "anomalyclip",
        "--model",
        s(&model()),
        "--learned",
        s(&pth()),
        "--size",
        "56",
        "--tiles",
        "2x2",
        "--full-map",
        "--out",
        s(&out),
        s(&img),
    ]);
    assert!(ok, "{stderr}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bottle_broken_large_000.json")).unwrap()).unwrap();
    assert_eq!(j["mode"], "anomalyclip");
    assert_eq!(j["map_height"], 56);
    assert_eq!(j["tiles"]["count"], 4);
    let score = j["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{score}");
    // Default size is the official 518 px (checked on the JSON, without running it: --size is
    // given above); eval over the tiny MVTec tree at a small size.
    let out = tmp.path().join("eval");
    let (ok, stdout, stderr) = run(&[
        "eval",
        "--mode",
        "anomalyclip",
        "--model",
        s(&model()),
        "--learned",
        s(&pth()),
        "--size",
        "42",
        "--dataset",
        s(&repo().join("tests/data/tiny_mvtec")),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| bottle |"), "{stdout}");
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["settings"]["mode"], "anomalyclip");
    assert_eq!(run_json["settings"]["learned_sha256"].as_str().unwrap().len(), 64);
    assert!(run_json["categories"]["bottle"]["prompt_category"].is_null());
    // Resuming with another learned file is refused.
    let other = tmp.path().join("other.safetensors");
    assert!(run(&["convert", "--learned", s(&pth()), "--out", s(&other)]).0);
    let (ok, _, stderr) = run(&[
        "eval",
        "--mode",
        "anomalyclip",
        "--model",
        s(&model()),
        "--learned",
        s(&other),
        "--size",
        "42",
        "--dataset",
        s(&repo().join("tests/data/tiny_mvtec")),
        "--out",
        s(&out),
        "--resume",
    ]);
    assert!(!ok && stderr.contains("learned sha256"), "{stderr}");
    let (ok, stdout, stderr) = run(&[
        "bench",
        "--mode",
        "anomalyclip",
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
    assert_eq!(
        (b["mode"].as_str(), b["size"].as_u64(), b["dpam_blocks"].as_u64()),
        (Some("anomalyclip"), Some(42), Some(19))
    );
}

#[test]
fn learned_flag_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let px = expected();
    let m = model();
    let base = ["detect", "--model", s(&m), "--pixels", s(&px), "--out", s(tmp.path())];
    let (ok, _, e) = run(&[&base[..], &["--mode", "anomalyclip"]].concat());
    assert!(!ok && e.contains("--learned FILE"), "{e}");
    let (ok, _, e) = run(&[&base[..], &["--mode", "fast", "--learned", s(&pth())]].concat());
    assert!(!ok && e.contains("--learned applies to --mode anomalyclip"), "{e}");
    let missing = tmp.path().join("none.pth");
    let (ok, _, e) = run(&[&base[..], &["--mode", "anomalyclip", "--learned", s(&missing)]].concat());
    assert!(!ok && e.contains("none.pth"), "{e}");
    // A 12-block model is refused: DPAM needs 19 blocks (its 2-block text tower is refused
    // first: the deep prompts need text blocks 1 to 8).
    let (ok, _, e) = run(&[
        "detect",
        "--mode",
        "anomalyclip",
        "--model",
        s(&fixtures().join("openclip_tiny")),
        "--learned",
        s(&pth()),
        "--pixels",
        s(&px),
        "--out",
        s(tmp.path()),
    ]);
    assert!(
        !ok && (e.contains("wide") || e.contains("19 blocks") || e.contains("deep prompts for text blocks 1 to 8")),
        "{e}"
    );
    let (ok, _, e) = run(&["convert", "--out", s(&tmp.path().join("x"))]);
    assert!(!ok && e.contains("--learned FILE"), "{e}");
}
