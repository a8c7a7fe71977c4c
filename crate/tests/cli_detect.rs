//! `anoscope detect` and `anoscope prompts build` end to end, against the reference fixtures.
mod common;

use candle_core::Tensor;
use common::{fixtures, flat, load, run};
use std::path::Path;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn score(dir: &Path, stem: &str) -> f32 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap()).unwrap();
    v["score"].as_f64().unwrap() as f32
}

fn save(t: &Tensor, p: &Path) {
    t.save_safetensors("pixel_values", p).unwrap();
}

#[test]
fn detect_modes_match_the_references_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = load(&fixtures().join("winclip_tiny_expected.safetensors"));
    let model = fixtures().join("winclip_tiny");
    let m = model.to_str().unwrap();
    let pix = tmp.path().join("pix.safetensors");
    save(&exp["pixel_values"], &pix);
    let refs = tmp.path().join("refs.safetensors");
    save(&exp["ref_pixel_values"], &refs);
    let p = pix.to_str().unwrap();
    for (mode, extra, scores, maps) in [
        ("winclip", vec![], "zs_image_scores", "zs_maps"),
        (
            "fewshot",
            vec!["--ref-pixels", refs.to_str().unwrap()],
            "fs2_image_scores",
            "fs2_maps",
        ),
        ("fast", vec!["--surgery-layers", "2"], "fast_image_scores", "fast_maps"),
    ] {
        let out = tmp.path().join(mode);
        let mut args = vec![
            "detect",
            "--model",
            m,
            "--category",
            "bottle",
            "--mode",
            mode,
            "--pixels",
            p,
        ];
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, _, err) = run(&args);
        assert!(ok, "{mode}: {err}");
        for b in 0..4 {
            let want = flat(&exp[scores])[b];
            assert!((score(&out, &b.to_string()) - want).abs() < 1e-4, "{mode} score {b}");
            let map = load(&out.join(format!("{b}.map.safetensors")));
            assert_eq!(map["anomaly_map"].dims(), &[48, 48]);
            let d = max_diff(&flat(&map["anomaly_map"]), &flat(&exp[maps].get(b).unwrap()));
            assert!(d < 1e-4, "{mode} map {b}: {d}");
            assert!(out.join(format!("{b}.overlay.png")).is_file());
        }
    }
    // MuSc over its fixture batch.
    let musc = load(&fixtures().join("musc_tiny_expected.safetensors"));
    let mp = tmp.path().join("musc.safetensors");
    save(&musc["musc_pixel_values"], &mp);
    let out = tmp.path().join("batch");
    let (ok, _, err) = run(&[
        "detect",
        "--model",
        m,
        "--mode",
        "batch",
        "--pixels",
        mp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for b in 0..8 {
        assert!(
            (score(&out, &b.to_string()) - flat(&musc["musc_image_scores"])[b]).abs() < 1e-4,
            "musc {b}"
        );
    }
}

#[test]
fn bundled_prompts_give_the_same_scores_and_check_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("winclip_tiny");
    let m = model.to_str().unwrap();
    let bundle = tmp.path().join("prompts.safetensors");
    let (ok, _, err) = run(&[
        "prompts",
        "build",
        "--model",
        m,
        "--categories",
        "bottle,object",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let exp = load(&fixtures().join("winclip_tiny_expected.safetensors"));
    let pix = tmp.path().join("pix.safetensors");
    save(&exp["pixel_values"].narrow(0, 1, 1).unwrap(), &pix);
    let mut scores = Vec::new();
    for (name, with_bundle) in [("direct", false), ("bundle", true)] {
        let out = tmp.path().join(name);
        let mut args = vec![
            "detect",
            "--model",
            m,
            "--category",
            "bottle",
            "--pixels",
            pix.to_str().unwrap(),
        ];
        if with_bundle {
            args.extend(["--prompts", bundle.to_str().unwrap()]);
        }
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, _, err) = run(&args);
        assert!(ok, "{err}");
        scores.push(score(&out, "0"));
    }
    assert!((scores[0] - scores[1]).abs() < 1e-5, "{scores:?}");
    // The same file for another model is refused.
    let other = fixtures().join("openclip_tiny");
    let (ok, _, err) = run(&[
        "detect",
        "--model",
        other.to_str().unwrap(),
        "--pixels",
        pix.to_str().unwrap(),
        "--prompts",
        bundle.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("sha256"), "{err}");
}

#[test]
fn detect_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("winclip_tiny");
    let m = model.to_str().unwrap();
    let img = tmp.path().join("a.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90]))
        .save(&img)
        .unwrap();
    let i = img.to_str().unwrap();
    let o = tmp.path().join("o");
    let o = o.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["detect", "--model", m, "--mode", "batch", "--out", o, i],
            "at least 2 images",
        ),
        (
            vec!["detect", "--model", m, "--mode", "fewshot", "--out", o, i],
            "at least one normal reference",
        ),
        (vec!["detect", "--model", m, "--out", o], "give images"),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Unknown category: a warning, then the generic prompts.
    let (ok, stdout, err) = run(&["detect", "--model", m, "--category", "spaceship", "--out", o, i]);
    assert!(ok, "{err}");
    assert!(err.contains("unknown category `spaceship`"), "{err}");
    assert!(stdout.starts_with("a\t"), "{stdout}");
}

#[test]
fn detect_scores_one_photo_at_a_time_and_skips_an_unreadable_one() {
    // Photos are decoded one at a time: an unreadable photo in the middle is named, the others
    // are scored and written (in order, with distinct stems), and the run fails at the end.
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("winclip_tiny");
    let m = model.to_str().unwrap();
    let (a, b) = (tmp.path().join("good"), tmp.path().join("crack"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let p1 = a.join("000.png");
    let p2 = tmp.path().join("notes.png");
    let p3 = b.join("000.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90]))
        .save(&p1)
        .unwrap();
    image::RgbImage::from_fn(30, 50, |x, y| image::Rgb([90, (x * 7) as u8, (y * 5) as u8]))
        .save(&p3)
        .unwrap();
    std::fs::write(&p2, "this is text, not a picture").unwrap();
    let o = tmp.path().join("o");
    let args = |files: &[&Path]| {
        let mut v = vec!["detect", "--model", m, "--out", o.to_str().unwrap()];
        v.extend(files.iter().map(|p| p.to_str().unwrap()));
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let all = args(&[&p1, &p2, &p3]);
    let (ok, stdout, err) = run(&all.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "an unreadable photo fails the run");
    assert!(
        err.contains("notes.png") && err.contains("not a recognised image format"),
        "{err}"
    );
    assert!(
        err.contains("1 of 3 images could not be read (the others were scored)"),
        "{err}"
    );
    let stems: Vec<&str> = stdout.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(stems, ["good_000", "crack_000"], "{stdout}");
    // Each written result equals the photo scored alone.
    for (p, stem) in [(&p1, "good_000"), (&p3, "crack_000")] {
        let alone = tmp.path().join(format!("alone_{stem}"));
        let (ok, _, err) = run(&[
            "detect",
            "--model",
            m,
            "--out",
            alone.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert_eq!(score(&o, stem), score(&alone, "000"), "{stem}");
        assert!(o.join(format!("{stem}.overlay.png")).exists());
        let png = image::open(o.join(format!("{stem}.overlay.png"))).unwrap();
        let photo = image::open(p).unwrap();
        assert_eq!((png.width(), png.height()), (photo.width(), photo.height()));
    }
    // A single unreadable photo is its own error, as before.
    let (ok, _, err) = run(&args(&[&p2]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(
        err.lines().any(|l| l.starts_with("error: ") && l.contains("notes.png")),
        "{err}"
    );
    assert!(!err.contains("could not be read (the others"), "{err}");
}
