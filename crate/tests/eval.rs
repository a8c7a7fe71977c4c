//! `anoscope eval` end to end: the tiny random model on tests/data/tiny_mvtec (3 good and 4
//! anomalous bottle test images at 64×64), every mode; the metrics must equal the library's
//! metric functions recomputed from scores.csv, the written maps and the masks.
mod common;

use anoscope::metrics::{self, PixelAccumulator};
use candle_core::{Device, Tensor};
use common::{repo, run};
use serde_json::Value;
use std::path::{Path, PathBuf};

const KEYS: [&str; 10] = [
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "aupro",
    "aupimo",
    "n_good",
    "n_anomalous",
];

fn model() -> PathBuf {
    repo().join("tests/fixtures/winclip_tiny")
}

fn tiny() -> PathBuf {
    repo().join("tests/data/tiny_mvtec")
}

fn eval(dataset: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let (m, d, o) = (model(), dataset.to_path_buf(), out.to_path_buf());
    let mut args = vec![
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--dataset",
        d.to_str().unwrap(),
        "--out",
        o.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn eval_ok(dataset: &Path, out: &Path, extra: &[&str]) -> (String, String) {
    let (ok, stdout, stderr) = eval(dataset, out, extra);
    assert!(ok, "eval {extra:?} failed: {stderr}");
    (stdout, stderr)
}

fn eval_err(dataset: &Path, out: &Path, extra: &[&str]) -> String {
    let (ok, _, stderr) = eval(dataset, out, extra);
    assert!(!ok, "eval {extra:?} should fail");
    stderr
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

struct Row {
    category: String,
    defect: String,
    stem: String,
    label: bool,
    score: f32,
}

fn read_scores(out: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("category,defect,stem,label,score"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            Row {
                category: f[0].into(),
                defect: f[1].into(),
                stem: f[2].into(),
                label: match f[3] {
                    "1" => true,
                    "0" => false,
                    other => panic!("label {other}"),
                },
                score: f[4].parse().unwrap(),
            }
        })
        .collect()
}

/// `anomaly_map` as (values, width, height).
fn read_map(p: &Path) -> (Vec<f32>, usize, usize) {
    let t = candle_core::safetensors::load(p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let m: &Tensor = &t["anomaly_map"];
    let (h, w) = m.dims2().unwrap();
    (m.flatten_all().unwrap().to_vec1().unwrap(), w, h)
}

/// The source pixel of each of `n_out` outputs of Pillow's `Image.resize(…, Image.NEAREST)`
/// from `n_in`, written independently of the library from Pillow's `ImagingScaleAffine`: scale
/// `(double)(float)n_in / n_out`, a running f64 sum from half the scale, truncated.
fn pillow_nearest(n_in: usize, n_out: usize) -> Vec<usize> {
    let scale = n_in as f32 as f64 / n_out as f64;
    let mut x = scale / 2.0;
    let mut out = Vec::new();
    for _ in 0..n_out {
        out.push(x.trunc() as usize);
        x += scale;
    }
    assert!(out.iter().all(|&i| i < n_in));
    out
}

/// A mask thresholded at > 127 and resized with Pillow's nearest neighbour, written
/// independently of the library.
fn read_mask(p: &Path, w: usize, h: usize) -> Vec<bool> {
    let img = image::open(p).unwrap().to_luma8();
    let (xs, ys) = (
        pillow_nearest(img.width() as usize, w),
        pillow_nearest(img.height() as usize, h),
    );
    let mut out = Vec::with_capacity(w * h);
    for &sy in &ys {
        for &sx in &xs {
            out.push(img.get_pixel(sx as u32, sy as u32).0[0] > 127);
        }
    }
    out
}

fn close(a: Option<f64>, b: &Value, what: &str) {
    match a {
        None => assert!(b.is_null(), "{what}: expected null, got {b}"),
        Some(x) => {
            let y = b.as_f64().unwrap_or_else(|| panic!("{what}: expected {x}, got {b}"));
            assert!((x - y).abs() <= 1e-9, "{what}: recomputed {x}, metrics.json {y}");
        }
    }
}

/// Checks everything a run on the tiny bottle category writes, and recomputes the metrics.
fn check_run(out: &Path, mode: &str) -> Value {
    let bottle = tiny().join("bottle");
    let m = read_json(&out.join("metrics.json"));
    let obj = m.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["bottle", "mean"], "{mode}");
    for k in ["bottle", "mean"] {
        let e = m[k].as_object().unwrap();
        assert_eq!(e.len(), KEYS.len(), "{mode} {k}: {e:?}");
        for key in KEYS {
            let v = &e[key];
            if key.starts_with("n_") {
                continue;
            }
            assert!(
                v.is_null() || (0.0..=1.0).contains(&v.as_f64().unwrap()),
                "{mode} {k}.{key} = {v}"
            );
        }
        assert_eq!(e["n_good"], 3, "{mode}");
        assert_eq!(e["n_anomalous"], 4, "{mode}");
    }
    assert_eq!(m["mean"], m["bottle"], "one category: the mean is the category");

    // Image metrics from scores.csv.
    let rows = read_scores(out);
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().all(|r| r.category == "bottle"));
    assert_eq!(rows.iter().filter(|r| r.label).count(), 4);
    assert!(rows.iter().all(|r| r.label == (r.defect != "good")));
    let scores: Vec<f32> = rows.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.label).collect();
    let im = metrics::image_metrics(&scores, &labels);
    let b = &m["bottle"];
    assert!(im.auroc.is_some(), "{mode}: both classes present");
    close(im.auroc, &b["image_auroc"], "image_auroc");
    close(im.ap, &b["image_ap"], "image_ap");
    close(im.f1max, &b["image_f1max"], "image_f1max");
    close(metrics::auroc(&scores, &labels), &b["image_auroc"], "auroc()");

    // Pixel metrics from the maps and masks, in scores.csv order.
    let mut acc = PixelAccumulator::new();
    for r in &rows {
        let (map, w, h) = read_map(
            &out.join("maps/bottle")
                .join(&r.defect)
                .join(format!("{}.map.safetensors", r.stem)),
        );
        assert_eq!((w, h), (48, 48), "maps at the model input size");
        assert!(map.iter().all(|v| v.is_finite()));
        let mask = if r.label {
            read_mask(
                &bottle
                    .join("ground_truth")
                    .join(&r.defect)
                    .join(format!("{}_mask.png", r.stem)),
                w,
                h,
            )
        } else {
            vec![false; w * h]
        };
        if r.label {
            assert!(mask.iter().any(|&v| v), "{}/{}: empty mask", r.defect, r.stem);
        }
        acc.push(&map, &mask, w, h).unwrap();
        let rec = read_json(
            &out.join("records/bottle")
                .join(&r.defect)
                .join(format!("{}.json", r.stem)),
        );
        assert_eq!(rec["score"].as_f64().unwrap() as f32, r.score);
    }
    let pm = acc.finish();
    assert!(
        pm.auroc.is_some() && pm.aupro.is_some(),
        "{mode}: pixel metrics defined"
    );
    close(pm.auroc, &b["pixel_auroc"], "pixel_auroc");
    close(pm.ap, &b["pixel_ap"], "pixel_ap");
    close(pm.f1max, &b["pixel_f1max"], "pixel_f1max");
    close(pm.aupro, &b["aupro"], "aupro");
    close(pm.aupimo, &b["aupimo"], "aupimo");

    // The other outputs.
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(lines[0], format!("category,{}", KEYS.join(",")));
    assert!(lines[1].starts_with("bottle,") && lines[2].starts_with("mean,"));
    assert!(lines[1].ends_with(",3,4"));
    let mut overlays: Vec<String> = std::fs::read_dir(out.join("overlays/bottle"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    overlays.sort();
    assert_eq!(overlays.len(), 6, "{overlays:?}");
    assert_eq!(overlays.iter().filter(|n| n.starts_with("fp_")).count(), 3);
    assert!(overlays
        .iter()
        .filter(|n| n.starts_with("fn_"))
        .all(|n| !n.contains("__good__")));
    let strip = image::open(out.join("overlays/bottle").join(&overlays[0])).unwrap();
    assert_eq!((strip.width(), strip.height()), (3 * 64, 64), "image | overlay | mask");
    let run_json = read_json(&out.join("run.json"));
    assert_eq!(run_json["status"], "complete");
    assert_eq!(run_json["settings"]["mode"], mode);
    assert_eq!(run_json["settings"]["size"], 48);
    assert_eq!(run_json["settings"]["model_sha256"].as_str().unwrap().len(), 64);
    assert!(run_json["anoscope_version"].is_string());
    m
}

#[test]
fn every_mode_writes_metrics_that_recompute_from_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    for (mode, dataset, extra) in [
        ("fast", tiny(), vec![]),
        ("winclip", tiny().join("bottle"), vec![]),
        ("fewshot", tiny(), vec!["--shots", "1", "--seed", "3"]),
        ("batch", tiny(), vec![]),
    ] {
        let out = tmp.path().join(mode);
        let mut args = vec!["--mode", mode];
        args.extend(extra);
        let (stdout, stderr) = eval_ok(&dataset, &out, &args);
        assert!(
            stdout.contains("| bottle |") && stdout.contains("| **mean** |"),
            "{stdout}"
        );
        assert!(stdout.contains("7 images: 7 new, 0 resumed"), "{stdout}");
        if dataset == tiny() {
            assert!(stderr.contains("NOTICE.md"), "extra files are noted: {stderr}");
        }
        let m = check_run(&out, mode);
        let run_json = read_json(&out.join("run.json"));
        let cat = &run_json["categories"]["bottle"];
        let refs = cat["references"].as_array().unwrap();
        if mode == "fewshot" {
            assert_eq!(refs.len(), 1);
            assert!(refs[0].as_str().unwrap().contains("train/good/"), "{refs:?}");
            assert_eq!(run_json["settings"]["shots"], 1);
            assert_eq!(run_json["settings"]["seed"], 3);
        } else {
            assert!(refs.is_empty());
        }
        if mode == "batch" {
            assert!(cat["prompt_category"].is_null());
        } else {
            assert_eq!(cat["prompt_category"], "bottle");
            assert_eq!(cat["prompt_match"], "exact");
        }
        assert_eq!(m["bottle"]["n_good"], 3);
    }
}

#[test]
fn resume_skips_finished_images_and_checks_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    eval_ok(&tiny(), &out, &["--mode", "fast"]);
    let metrics = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();

    let e = eval_err(&tiny(), &out, &["--mode", "fast"]);
    assert!(e.contains("--resume"), "{e}");

    let (stdout, _) = eval_ok(&tiny(), &out, &["--mode", "fast", "--resume"]);
    assert!(stdout.contains("7 images: 0 new, 7 resumed"), "{stdout}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.json")).unwrap(), metrics);
    assert_eq!(std::fs::read_to_string(out.join("scores.csv")).unwrap(), scores);
    check_run(&out, "fast");

    // An interrupted run: one image without a record (its map may or may not be there).
    std::fs::remove_file(out.join("records/bottle/good/001.json")).unwrap();
    std::fs::write(out.join("records/bottle/good/.001.json.tmp"), b"{partial").unwrap();
    let (stdout, _) = eval_ok(&tiny(), &out, &["--mode", "fast", "--resume"]);
    assert!(stdout.contains("7 images: 1 new, 6 resumed"), "{stdout}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.json")).unwrap(), metrics);

    // Other settings are refused.
    let e = eval_err(&tiny(), &out, &["--mode", "fast", "--resume", "--size", "32"]);
    assert!(e.contains("size") && e.contains("48") && e.contains("32"), "{e}");
    let e = eval_err(&tiny(), &out, &["--mode", "winclip", "--resume"]);
    assert!(e.contains("mode"), "{e}");

    // Batch mode resumes whole categories.
    let out = tmp.path().join("batch");
    eval_ok(&tiny(), &out, &["--mode", "batch"]);
    let metrics = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    let (stdout, _) = eval_ok(&tiny(), &out, &["--mode", "batch", "--resume"]);
    assert!(stdout.contains("0 new, 7 resumed"), "{stdout}");
    std::fs::remove_file(out.join("records/bottle/broken_large/000.json")).unwrap();
    let (stdout, _) = eval_ok(&tiny(), &out, &["--mode", "batch", "--resume"]);
    assert!(stdout.contains("7 new, 0 resumed"), "{stdout}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.json")).unwrap(), metrics);
}

#[test]
fn dataset_problems_are_clear_errors_or_notes() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let d = tmp.path().join(name);
        copy_dir(&tiny(), &d);
        d
    };
    let out = |name: &str| tmp.path().join(format!("out_{name}"));

    // A mask of another aspect ratio.
    let d = fresh("aspect");
    image::GrayImage::new(64, 32)
        .save(d.join("bottle/ground_truth/broken_large/000_mask.png"))
        .unwrap();
    let e = eval_err(&d, &out("aspect"), &[]);
    assert!(e.contains("broken_large/000_mask.png") && e.contains("aspect"), "{e}");

    // A missing mask.
    let d = fresh("missing");
    std::fs::remove_file(d.join("bottle/ground_truth/contamination/001_mask.png")).unwrap();
    let e = eval_err(&d, &out("missing"), &[]);
    assert!(e.contains("contamination/001_mask.png") && e.contains("missing"), "{e}");

    // An empty dataset folder, and one with no category.
    let d = tmp.path().join("empty");
    std::fs::create_dir_all(&d).unwrap();
    let e = eval_err(&d, &out("empty"), &[]);
    assert!(e.contains("empty"), "{e}");
    std::fs::create_dir_all(d.join("stuff")).unwrap();
    let e = eval_err(&d, &out("empty"), &[]);
    assert!(e.contains("no category"), "{e}");

    // Extra files are noted and ignored; without ground_truth/ only image metrics.
    let d = fresh("extra");
    std::fs::write(d.join("bottle/test/good/.DS_Store"), b"\0\0").unwrap();
    std::fs::write(d.join("bottle/test/good/README.txt"), b"notes").unwrap();
    std::fs::remove_dir_all(d.join("bottle/ground_truth")).unwrap();
    let (_, stderr) = eval_ok(&d, &out("extra"), &["--categories", "bottle"]);
    assert!(
        stderr.contains(".DS_Store") && stderr.contains("README.txt"),
        "{stderr}"
    );
    assert!(stderr.contains("image metrics only"), "{stderr}");
    let m = read_json(&out("extra").join("metrics.json"));
    assert!(m["bottle"]["image_auroc"].is_f64());
    for k in ["pixel_auroc", "pixel_ap", "pixel_f1max", "aupro", "aupimo"] {
        assert!(m["bottle"][k].is_null(), "{k}: {}", m["bottle"][k]);
    }

    // Option errors.
    let e = eval_err(&tiny(), &out("shots"), &["--mode", "fewshot", "--shots", "3"]);
    assert!(e.contains("--shots 3") && e.contains("train/good"), "{e}");
    let e = eval_err(&tiny(), &out("shots2"), &["--mode", "fast", "--shots", "1"]);
    assert!(e.contains("fewshot"), "{e}");
    let e = eval_err(&tiny(), &out("cat"), &["--categories", "cable"]);
    assert!(e.contains("cable") && e.contains("bottle"), "{e}");
    let e = eval_err(&tiny(), &out("prompt"), &["--prompt-category", "nonsense"]);
    assert!(e.contains("nonsense"), "{e}");
}

/// The exact-rational half-pixel convention used before (`⌊(2i + 1)·n_in / (2·n_out)⌋`), to show
/// that the fixtures exercise ties where it and Pillow pick different pixels.
fn rational_nearest(n_in: usize, n_out: usize) -> Vec<usize> {
    (0..n_out).map(|i| (2 * i + 1) * n_in / (2 * n_out)).collect()
}

/// A mask resized by picking `xs` × `ys`.
fn pick(mask: &[bool], w: usize, xs: &[usize], ys: &[usize]) -> Vec<bool> {
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| mask[y * w + x]))
        .collect()
}

#[test]
fn masks_resize_as_pillow_nearest() {
    // tests/fixtures/mask_resize: written by tests/reference/make_mask_resize_fixtures.py.
    let dir = repo().join("tests/fixtures/mask_resize");
    let r = read_json(&dir.join("reference.json"));

    // Source indices: every table, and the ties of 448 → 40 where the exact rational differs.
    let tables = r["indices"].as_array().unwrap();
    assert!(tables.len() >= 50);
    let mut ties = 0;
    for t in tables {
        let (n_in, n_out) = (
            t["n_in"].as_u64().unwrap() as usize,
            t["n_out"].as_u64().unwrap() as usize,
        );
        let want: Vec<Option<usize>> = t["src"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| Some(v.as_u64().unwrap() as usize))
            .collect();
        assert_eq!(
            anoscope::eval::nearest_source_indices(n_in, n_out),
            want,
            "{n_in} → {n_out}"
        );
        let want: Vec<usize> = want.into_iter().map(Option::unwrap).collect();
        assert_eq!(pillow_nearest(n_in, n_out), want, "test helper {n_in} → {n_out}");
        let rational = rational_nearest(n_in, n_out);
        ties += rational.iter().zip(&want).filter(|(a, b)| a != b).count();
        if (n_in, n_out) == (448, 40) {
            let diff: Vec<usize> = (0..n_out).filter(|&i| rational[i] != want[i]).collect();
            assert_eq!(
                diff,
                [2, 17, 22, 27, 32, 37],
                "448 → 40: the ties Pillow resolves downwards"
            );
        }
    }
    assert!(ties > 0);

    // A real MVTec AD bottle mask (448×448) at every fixture size: bit for bit as Pillow, and
    // at 40×40 (the case) the old convention differs.
    let masks = r["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 1);
    let m = &masks[0];
    let src = repo().join(m["source"].as_str().unwrap());
    assert_eq!(
        anoscope::eval::file_sha256(&src).unwrap(),
        m["sha256"].as_str().unwrap()
    );
    let (full, w, h) = anoscope::eval::read_mask(&src).unwrap();
    assert_eq!((w, h), (448, 448));
    let mut old_differs = Vec::new();
    for o in m["outputs"].as_array().unwrap() {
        let (ow, oh) = (
            o["width"].as_u64().unwrap() as usize,
            o["height"].as_u64().unwrap() as usize,
        );
        let pil: Vec<bool> = image::open(dir.join(o["file"].as_str().unwrap()))
            .unwrap()
            .to_luma8()
            .pixels()
            .map(|p| p.0[0] > 127)
            .collect();
        assert_eq!(pil.len(), ow * oh);
        assert_eq!(
            pil.iter().filter(|&&v| v).count() as u64,
            o["anomalous"].as_u64().unwrap()
        );
        let ours = anoscope::eval::load_mask(&src, ow, oh).unwrap();
        assert!(
            ours == pil,
            "{ow}x{oh}: {} pixels differ from Pillow",
            ours.iter().zip(&pil).filter(|(a, b)| a != b).count()
        );
        assert_eq!(read_mask(&src, ow, oh), pil, "test helper {ow}x{oh}");
        let old = pick(&full, w, &rational_nearest(w, ow), &rational_nearest(h, oh));
        let n = old.iter().zip(&pil).filter(|(a, b)| a != b).count();
        if n > 0 {
            old_differs.push((ow, oh, n));
        }
    }
    assert!(
        old_differs.iter().any(|&(w, h, _)| (w, h) == (40, 40)),
        "the real mask must exercise a tie at 40×40: {old_differs:?}"
    );
}
