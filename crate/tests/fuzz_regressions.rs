//! Replays the fuzz seed corpora (`fuzz/seeds/<target>/`) and every input a fuzzer ever crashed
//! on (`fuzz/regressions/<target>/`) through the fuzz target bodies in `anoscope::fuzzing`, on
//! stable Rust and every `cargo test` (the fuzzers themselves need nightly; see fuzz/README.md).
//!
//! `cargo test --test fuzz_regressions -- --ignored write_seeds` regenerates the seeds.
mod common;

use anoscope::detect::prompts::{BundleEntry, EnsembleKind, PromptBundle};
use anoscope::detect::TextPair;
use anoscope::fuzzing::{self, Outcome};
use anoscope::model::random::random_tensors;
use anoscope::model::{ClipConfig, Layout};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]) -> Outcome;

const TARGETS: [(&str, Target); 5] = [
    ("image", fuzzing::image),
    ("checkpoint", fuzzing::checkpoint),
    ("prompt_bundle", fuzzing::prompt_bundle),
    ("tokenizer", fuzzing::tokenizer),
    ("dataset", fuzzing::dataset),
];

fn fuzz_dir() -> PathBuf {
    common::repo().join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).unwrap().1
}

/// Runs every file of `fuzz/<kind>/<target>/`; returns (file name, outcome) pairs.
fn replay(kind: &str, name: &str) -> Vec<(String, Outcome)> {
    let f = target(name);
    files(&fuzz_dir().join(kind).join(name))
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let out = std::panic::catch_unwind(|| f(&data))
                .unwrap_or_else(|_| panic!("fuzz target {name} panicked on {}", p.display()));
            (name, out)
        })
        .collect()
}

fn accepted(results: &[(String, Outcome)]) -> Vec<&str> {
    results
        .iter()
        .filter(|(_, o)| *o == Outcome::Accepted)
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn image_seeds() {
    let r = replay("seeds", "image");
    let ok = accepted(&r);
    // Every seed is a valid image of a supported format…
    for fmt in ["png", "jpg", "gif", "bmp", "tiff", "webp"] {
        assert!(ok.iter().any(|n| n.ends_with(fmt)), "no accepted .{fmt} seed in {r:?}");
    }
    // …except the deliberately broken ones, rejected with a reason.
    for (n, o) in &r {
        if n.starts_with("bad_") {
            assert!(matches!(o, Outcome::Rejected(_)), "{n}: {o:?}");
        } else {
            assert_eq!(*o, Outcome::Accepted, "{n}");
        }
    }
}

#[test]
fn checkpoint_seeds() {
    let r = replay("seeds", "checkpoint");
    assert!(r.len() >= 4, "{r:?}");
    for (n, o) in &r {
        assert_eq!(*o, Outcome::Accepted, "{n}");
    }
}

#[test]
fn prompt_bundle_seeds() {
    let r = replay("seeds", "prompt_bundle");
    assert!(!r.is_empty());
    for (n, o) in &r {
        assert_eq!(*o, Outcome::Accepted, "{n}");
    }
}

#[test]
fn tokenizer_seeds() {
    let r = replay("seeds", "tokenizer");
    assert!(r.len() >= 20, "{}", r.len());
    assert_eq!(accepted(&r).len(), r.len());
}

#[test]
fn dataset_seeds() {
    let r = replay("seeds", "dataset");
    let get = |n: &str| {
        &r.iter()
            .find(|(f, _)| f == n)
            .unwrap_or_else(|| panic!("no seed {n}"))
            .1
    };
    assert_eq!(*get("tiny_mvtec.txt"), Outcome::Accepted);
    assert_eq!(*get("extra_files.txt"), Outcome::Accepted);
    match get("missing_mask.txt") {
        Outcome::Rejected(m) => assert!(m.contains("missing mask") && m.contains("001_mask.png"), "{m}"),
        o => panic!("{o:?}"),
    }
    // The other layouts (detected; the target checks their invariants when accepted).
    assert_eq!(*get("loco.txt"), Outcome::Accepted);
    assert_eq!(*get("mvtec3d.txt"), Outcome::Accepted);
    for (seed, text) in [("loco.txt", LOCO_SEED), ("mvtec3d.txt", MVTEC3D_SEED)] {
        assert_eq!(
            std::fs::read_to_string(fuzz_dir().join("seeds/dataset").join(seed)).unwrap(),
            text,
            "{seed}: regenerate the seeds"
        );
    }
}

/// Every input that ever crashed a fuzzer still runs without a panic.
#[test]
fn crash_regressions() {
    let mut n = 0;
    for (name, _) in TARGETS {
        n += replay("regressions", name).len();
    }
    eprintln!("{n} regression inputs replayed");
}

/// The dataset description format builds what it says.
#[test]
fn dataset_description_builds_files() {
    let dir = tempfile::tempdir().unwrap();
    fuzzing::build_dataset(
        "a/test/good/0.png png 3 4 200\na/x dir\n../evil text no\n/abs text no\na/t.png text hello world\na/h.png hdr 0 7",
        dir.path(),
    );
    let img = image::open(dir.path().join("a/test/good/0.png")).unwrap();
    assert_eq!((img.width(), img.height()), (4, 5));
    assert!(dir.path().join("a/x").is_dir());
    assert_eq!(std::fs::read(dir.path().join("a/t.png")).unwrap(), b"hello world");
    assert_eq!(std::fs::read(dir.path().join("a/h.png")).unwrap().len(), 33);
    assert!(!dir.path().join("../evil").exists() && !dir.path().join("abs").exists());
}

// ---------------------------------------------------------------------------------------------
// Seed generation

const TINY_HF: &str = r#"{"model_type":"clip","projection_dim":8,
"vision_config":{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"patch_size":4,"image_size":8},
"text_config":{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"vocab_size":16,"max_position_embeddings":8}}"#;
const TINY_OPENCLIP: &str = r#"{"model_cfg":{"embed_dim":8,"quick_gelu":true,
"vision_cfg":{"image_size":8,"layers":2,"width":8,"head_width":4,"patch_size":4},
"text_cfg":{"context_length":8,"vocab_size":16,"width":8,"heads":2,"layers":1}}}"#;

fn tiny_weights(cfg: &ClipConfig, with_text: bool, f16: bool) -> Vec<u8> {
    let tensors = random_tensors(cfg, 3, with_text);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| {
            if f16 {
                v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        })
        .collect();
    let dtype = if f16 {
        safetensors::Dtype::F16
    } else {
        safetensors::Dtype::F32
    };
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn unit(dim: usize, seed: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|i| ((i * 7 + seed * 3) % 11) as f32 - 5.0).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Describes a dataset folder in the format of [`fuzzing::build_dataset`] (PNG sizes and the
/// mean gray level kept; other files as text).
fn describe(root: &Path, rel: &str, out: &mut String) {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if e.path().is_dir() {
            describe(root, &r, out);
        } else if name.ends_with(".png") {
            let img = image::open(e.path()).unwrap().to_luma8();
            let mean = img.pixels().map(|p| p.0[0] as u64).sum::<u64>() / (img.width() * img.height()) as u64;
            out.push_str(&format!("{r} png {} {} {mean}\n", img.width() - 1, img.height() - 1));
        }
    }
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand after changing a target's input format"]
fn write_seeds() {
    let seeds = fuzz_dir().join("seeds");
    // image: the test images, re-encoded in every supported format, and broken variants.
    let d = seeds.join("image");
    let src = common::repo().join("tests/images/bottle_64_pil_bicubic_40x24.png");
    let img = image::open(&src).unwrap();
    write(&d, "bottle_40x24.png", &std::fs::read(&src).unwrap());
    let small = img.resize_exact(16, 10, image::imageops::FilterType::Triangle);
    for (name, fmt) in [
        ("bottle_16x10.jpg", image::ImageFormat::Jpeg),
        ("bottle_16x10.gif", image::ImageFormat::Gif),
        ("bottle_16x10.bmp", image::ImageFormat::Bmp),
        ("bottle_16x10.tiff", image::ImageFormat::Tiff),
        ("bottle_16x10.webp", image::ImageFormat::WebP),
    ] {
        let mut buf = std::io::Cursor::new(Vec::new());
        let im = if fmt == image::ImageFormat::Jpeg || fmt == image::ImageFormat::Gif {
            image::DynamicImage::ImageRgb8(small.to_rgb8())
        } else {
            small.clone()
        };
        im.write_to(&mut buf, fmt).unwrap();
        write(&d, name, buf.get_ref());
    }
    let mask = common::repo().join("tests/data/tiny_mvtec/bottle/ground_truth/contamination/000_mask.png");
    write(&d, "mask.png", &std::fs::read(mask).unwrap());
    let png = std::fs::read(&src).unwrap();
    write(&d, "bad_truncated.png", &png[..png.len() / 2]);
    let mut huge = png[..33].to_vec();
    huge[16..24].copy_from_slice(&[0, 0, 0x40, 0, 0, 0, 0x40, 0]);
    write(&d, "bad_huge_header.png", &huge);

    // checkpoint: tiny configurations in both layouts, f32 and f16, with and without text.
    let d = seeds.join("checkpoint");
    for (tag, file, json) in [
        ("hf", "config.json", TINY_HF),
        ("openclip", "open_clip_config.json", TINY_OPENCLIP),
    ] {
        let cfg = ClipConfig::from_json(file, json).unwrap();
        let json = json.replace('\n', "");
        for (sub, text, f16) in [
            ("full_f32", true, false),
            ("full_f16", true, true),
            ("vision_f32", false, false),
        ] {
            let input = fuzzing::join_checkpoint_input(cfg.layout, &json, &tiny_weights(&cfg, text, f16));
            write(&d, &format!("{tag}_{sub}"), &input);
        }
        assert_eq!(Layout::from_config_file(file).unwrap(), cfg.layout);
    }

    // prompt_bundle: small bundles with one and two entries.
    let d = seeds.join("prompt_bundle");
    for (name, cats) in [("one", vec!["bottle"]), ("two", vec!["bottle", "metal_nut"])] {
        let entries = cats
            .iter()
            .enumerate()
            .map(|(i, c)| BundleEntry {
                category: c.to_string(),
                object: c.replace('_', " "),
                kind: EnsembleKind::ALL[i % 2],
                n_normal: 147,
                n_anomalous: 84,
                text: TextPair::new(unit(8, i), unit(8, i + 5)).unwrap(),
            })
            .collect();
        let b = PromptBundle {
            model_id: "tiny".into(),
            model_sha256: "ab".repeat(32),
            embed_dim: 8,
            entries,
        };
        write(&d, &format!("{name}.safetensors"), &b.to_bytes().unwrap());
    }

    // tokenizer: the reference tokenizer test strings.
    let d = seeds.join("tokenizer");
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("tokens.json")).unwrap()).unwrap();
    let mut n = 0;
    for e in tokens["entries"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        if text.len() <= 300 && n < 64 {
            write(&d, &format!("t{n:03}.txt"), text.as_bytes());
            n += 1;
        }
    }

    // dataset: the tiny MVTec dataset, with extra files, and with a mask missing.
    let d = seeds.join("dataset");
    let mut desc = String::new();
    describe(&common::repo().join("tests/data/tiny_mvtec"), "", &mut desc);
    write(&d, "tiny_mvtec.txt", desc.as_bytes());
    let extra = format!(
        "{desc}bottle/README.md text hello\nbottle/test/good/notes.txt text x\nbottle/test/stray.png text y\n\
         notes dir\nbottle/ground_truth/contamination/extra_mask.png png 3 3 0\n"
    );
    write(&d, "extra_files.txt", extra.as_bytes());
    let missing: String = desc
        .lines()
        .filter(|l| !l.starts_with("bottle/ground_truth/broken_large/001_mask.png"))
        .map(|l| format!("{l}\n"))
        .collect();
    write(&d, "missing_mask.txt", missing.as_bytes());
    // The other folder layouts eval detects (VisA's multi-line split file does not fit the
    // one-line `text` entries): MVTec LOCO AD with two masks for one image, MVTec 3D-AD.
    write(&d, "loco.txt", LOCO_SEED.as_bytes());
    write(&d, "mvtec3d.txt", MVTEC3D_SEED.as_bytes());
}

const LOCO_SEED: &str = "box/train/good/000.png png 31 31 100
box/test/good/000.png png 31 31 100
box/test/logical_anomalies/000.png png 31 31 120
box/test/structural_anomalies/000.png png 31 31 130
box/ground_truth/logical_anomalies/000/000.png png 31 31 255
box/ground_truth/logical_anomalies/000/001.png png 31 31 255
box/ground_truth/structural_anomalies/000/000.png png 31 31 1
box/defects_config.json text []
";

const MVTEC3D_SEED: &str = "bagel/train/good/rgb/000.png png 31 31 100
bagel/test/good/rgb/000.png png 31 31 100
bagel/test/good/gt/000.png png 31 31 0
bagel/test/crack/rgb/000.png png 31 31 100
bagel/test/crack/gt/000.png png 31 31 255
bagel/test/crack/xyz/000.tiff text x
";
