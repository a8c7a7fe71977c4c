//! Bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly) kept in the library so that the
//! stable test `crate/tests/fuzz_regressions.rs` replays the seed corpora and every crash file
//! on each `cargo test`. Each function takes arbitrary bytes, runs a loader on them and panics
//! only when an invariant of a successful result is broken (or the loader itself panics);
//! a rejected input is a normal outcome and returns [`Outcome::Rejected`] with the message.
//!
//! Not part of the public API.
use crate::detect::prompts::{self, PromptBundle};
use crate::eval;
use crate::model::weights::{convert_safetensors, SafetensorsSource};
use crate::model::{Clip, EncodeOptions, Layout};
use crate::preprocess::{self, ImageLimits, Normalize};
use crate::tokenizer::{self, ClipTokenizer, Padding};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a fuzz target made of its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input was accepted and every invariant on the result held.
    Accepted,
    /// The input was rejected with this (non-empty) error message.
    Rejected(String),
}

fn outcome<T>(r: Result<T>) -> (Option<T>, Outcome) {
    match r {
        Ok(v) => (Some(v), Outcome::Accepted),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(!msg.trim().is_empty(), "an error without a message");
            (None, Outcome::Rejected(msg))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// Pixel limit of the image target: the production limit ([`preprocess::MAX_IMAGE_PIXELS`],
/// 64 Mpx) goes through the same checks, but a fuzzer needs small allocations to stay fast.
pub const IMAGE_MAX_PIXELS: u64 = 1 << 20;

/// Decodes `data` as an image (any supported format) with [`IMAGE_MAX_PIXELS`], then runs both
/// preprocessing transforms on it.
pub fn image(data: &[u8]) -> Outcome {
    let limits = ImageLimits::new(IMAGE_MAX_PIXELS);
    let (img, out) = outcome(preprocess::decode_image(data, &limits));
    if let Some(img) = img {
        let (w, h) = img.dimensions();
        assert!(w > 0 && h > 0, "decoded an empty {w}x{h} image");
        assert!(
            u64::from(w) * u64::from(h) <= IMAGE_MAX_PIXELS,
            "{w}x{h} passed the pixel limit"
        );
        let norm = Normalize::clip();
        for px in [
            preprocess::clip_preprocess(&img, 16, &norm),
            preprocess::resize_preprocess(&img, 12, &norm),
        ] {
            assert!(
                px.len() == 3 * 16 * 16 || px.len() == 3 * 12 * 12,
                "wrong length {}",
                px.len()
            );
            assert!(px.iter().all(|v| v.is_finite()), "non-finite pixel value");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

/// Splits a checkpoint target input: byte 0 selects the layout (bit 0: open_clip), bytes 1..3
/// are the little-endian length `n` of the configuration JSON that follows, the rest is the
/// safetensors file.
pub fn split_checkpoint_input(data: &[u8]) -> Option<(Layout, &[u8], &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let n = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let rest = &rest[2..];
    if rest.len() < n {
        return None;
    }
    let layout = if flags & 1 == 0 {
        Layout::HuggingFace
    } else {
        Layout::OpenClip
    };
    Some((layout, &rest[..n], &rest[n..]))
}

/// Builds a checkpoint target input (see [`split_checkpoint_input`]).
pub fn join_checkpoint_input(layout: Layout, config_json: &str, weights: &[u8]) -> Vec<u8> {
    let n = u16::try_from(config_json.len()).expect("configuration under 64 KiB");
    let mut out = vec![u8::from(layout == Layout::OpenClip)];
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(config_json.as_bytes());
    out.extend_from_slice(weights);
    out
}

/// Loads a configuration + safetensors pair ([`Clip::from_bytes`]); when the model is small
/// enough, runs the image tower (with the surgery path and hidden states) and the text tower
/// and checks the output shapes. Also converts the weights to f16 and back.
pub fn checkpoint(data: &[u8]) -> Outcome {
    let Some((layout, json, weights)) = split_checkpoint_input(data) else {
        return Outcome::Rejected("input too short for the checkpoint target".into());
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return Outcome::Rejected("configuration is not UTF-8".into());
    };
    if let Ok(f16) = convert_safetensors(weights, "fuzz", safetensors::Dtype::F16) {
        let a = SafetensorsSource::new(weights, "fuzz").expect("converted, so it parses");
        let b = SafetensorsSource::new(&f16, "fuzz f16").expect("conversion output must parse");
        let (mut na, mut nb) = (a.names(), b.names());
        na.sort();
        nb.sort();
        assert_eq!(na, nb, "conversion changed the tensor names");
    }
    let (clip, out) = outcome(Clip::from_bytes(layout.config_file(), json, weights, "fuzz"));
    if let Some(clip) = clip {
        assert_eq!(clip.cfg.layout, layout);
        run_small_model(&clip).expect("a loaded model must run");
    }
    out
}

fn run_small_model(clip: &Clip) -> Result<()> {
    let v = &clip.cfg.vision;
    let p = clip.cfg.embed_dim;
    if v.grid() <= 4 && v.width <= 64 && v.mlp_width <= 256 && v.layers <= 4 && v.image_size <= 64 && p <= 64 {
        let s = v.image_size;
        let pixels = Tensor::zeros((1, 3, s, s), DType::F32, &Device::Cpu)?;
        let opts = EncodeOptions {
            hidden_layers: vec![0, v.layers],
            surgery_layers: 1,
        };
        let out = clip.vision.forward(&pixels, &opts)?;
        let g = v.grid();
        assert_eq!(out.image_embeds.dims(), &[1, p]);
        assert_eq!(out.patch_tokens.dims(), &[1, g * g, p]);
        assert_eq!(out.hidden_states.len(), 2);
        assert_eq!(
            out.surgery_tokens.as_ref().map(|t| t.dims().to_vec()),
            Some(vec![1, g * g, p])
        );
    }
    if let Some(text) = &clip.text {
        let t = &clip.cfg.text;
        if t.width <= 64 && t.mlp_width <= 256 && t.layers <= 4 && t.vocab_size >= 3 && t.context_length >= 3 && p <= 64
        {
            let v = t.vocab_size as u32;
            let e = text.forward(&[vec![0, 1, v - 1], vec![v - 1]])?;
            assert_eq!(e.dims(), &[2, p]);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prompt bundles

/// An arbitrary sha256 that no fuzzed bundle is expected to claim.
const OTHER_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Reads `data` as a prompt bundle ([`PromptBundle::from_bytes`]); an accepted bundle must
/// round-trip through [`PromptBundle::to_bytes`], load with its own model hash and be rejected
/// for another model's.
pub fn prompt_bundle(data: &[u8]) -> Outcome {
    let (bundle, out) = outcome(PromptBundle::from_bytes(data, None));
    if let Some(b) = bundle {
        let bytes = b.to_bytes().expect("a loaded bundle must serialise");
        let again = PromptBundle::from_bytes(&bytes, Some(&b.model_sha256)).expect("round trip");
        assert_eq!(again, b, "bundle changed in a round trip");
        if b.model_sha256 != OTHER_SHA256 {
            let e = PromptBundle::from_bytes(data, Some(OTHER_SHA256)).expect_err("sha256 mismatch accepted");
            assert!(format!("{e:#}").contains("built for model sha256"), "{e:#}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// Tokenizes `data` (when it is UTF-8) and checks the id invariants: SOT first, EOT last, every
/// id in the vocabulary, exactly 77 ids after padding (either convention) with an EOT kept.
/// Also checks the ensemble limits on the text as a prompt.
pub fn tokenizer(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Rejected("not UTF-8".into());
    };
    let tok = ClipTokenizer::shared().expect("the embedded tokenizer loads");
    let (ids, out) = outcome(tok.encode(text));
    if let Some(ids) = ids {
        assert!(ids.len() >= 2);
        assert_eq!(ids[0], tokenizer::SOT);
        assert_eq!(*ids.last().unwrap(), tokenizer::EOT);
        assert!(
            ids.iter().all(|&i| (i as usize) < tokenizer::VOCAB_SIZE),
            "id out of the vocabulary"
        );
        for padding in [Padding::Hf, Padding::OpenClip] {
            let padded = tok.encode_padded(text, padding).expect("encode succeeded once");
            assert_eq!(padded.len(), tokenizer::CONTEXT_LENGTH);
            assert_eq!(padded[0], tokenizer::SOT);
            assert!(padded.contains(&tokenizer::EOT));
            // Truncation may split a character's bytes: decoding may fail, but not panic.
            let _ = tok.decode(&padded);
        }
        let _ = tok.decode(&ids);
    }
    let _ = tokenizer::clean_text(text);
    let _ = tokenizer::html_unescape(text);
    let _ = prompts::check_category_name(text);
    let _ = prompts::winclip_ensemble(text);
    out
}

// ---------------------------------------------------------------------------------------------
// MVTec-layout datasets

/// Most entries, path depth, name length and image side of a fuzzed dataset description.
const DATASET_MAX_ENTRIES: usize = 48;
const DATASET_MAX_DEPTH: usize = 6;
const DATASET_MAX_NAME: usize = 64;
const DATASET_MAX_SIDE: u32 = 64;

/// Creates the dataset a description holds under `root` (which must exist). One entry per line:
/// `PATH dir`, `PATH png W H V` (a gray PNG of `W×H` (taken modulo 64, plus 1) filled with `V`),
/// `PATH hdr W H` (a PNG signature and IHDR claiming `W×H`, no pixel data) or `PATH text …`
/// (the rest of the line as the file's content). Unusable lines are skipped.
pub fn build_dataset(description: &str, root: &Path) {
    for line in description.lines().take(DATASET_MAX_ENTRIES) {
        let mut parts = line.split(' ');
        let (Some(rel), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let comps: Vec<&str> = rel.split('/').collect();
        if comps.len() > DATASET_MAX_DEPTH
            || comps
                .iter()
                .any(|c| c.is_empty() || *c == "." || *c == ".." || c.len() > DATASET_MAX_NAME || c.contains('\0'))
        {
            continue;
        }
        let path: PathBuf = comps.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let mut num = |m: u32| parts.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1) % m;
        let content: Option<Vec<u8>> = match kind {
            "dir" => {
                let _ = std::fs::create_dir_all(&path);
                None
            }
            "png" => {
                let (w, h, v) = (num(DATASET_MAX_SIDE) + 1, num(DATASET_MAX_SIDE) + 1, num(256) as u8);
                let img = image::GrayImage::from_pixel(w, h, image::Luma([v]));
                let mut buf = std::io::Cursor::new(Vec::new());
                img.write_to(&mut buf, image::ImageFormat::Png)
                    .expect("encoding a PNG in memory");
                Some(buf.into_inner())
            }
            "hdr" => {
                let (w, h) = (num(u32::MAX), num(u32::MAX));
                let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
                b.extend_from_slice(&w.to_be_bytes());
                b.extend_from_slice(&h.to_be_bytes());
                b.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
                Some(b)
            }
            "text" => Some(parts.collect::<Vec<_>>().join(" ").into_bytes()),
            _ => None,
        };
        if let Some(bytes) = content {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&path, bytes);
        }
    }
}

/// Builds the dataset described by `data` ([`build_dataset`]) in a fresh temporary folder and
/// scans it ([`eval::scan_dataset`]); for an accepted dataset checks that every listed file
/// exists where the layout says, that anomalous images have masks exactly when the category
/// has `ground_truth/`, reads every mask, draws references and rescans each category alone.
pub fn dataset(data: &[u8]) -> Outcome {
    let Ok(description) = std::str::from_utf8(data) else {
        return Outcome::Rejected("not UTF-8".into());
    };
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("anoscope-fuzz-dataset-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("creating the temporary dataset folder");
    build_dataset(description, &root);
    let result = check_dataset(&root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn check_dataset(root: &Path) -> Outcome {
    let (ds, out) = outcome(eval::scan_dataset(root, &[]));
    let Some(ds) = ds else { return out };
    assert!(!ds.categories.is_empty(), "an accepted dataset without categories");
    for cat in &ds.categories {
        assert!(
            !cat.test.is_empty(),
            "category {} accepted without test images",
            cat.name
        );
        for t in &cat.test {
            match ds.layout {
                eval::Layout::Mvtec => assert!(t.path.starts_with(cat.dir.join("test").join(&t.defect)), "{t:?}"),
                eval::Layout::Visa => assert!(t.path.starts_with(root), "{t:?}"),
                eval::Layout::Loco | eval::Layout::Mvtec3d => assert!(t.path.starts_with(&cat.dir), "{t:?}"),
            }
            assert!(t.path.is_file() && eval::is_image_path(&t.path), "{t:?}");
            assert_eq!(!t.masks.is_empty(), t.anomalous() && cat.has_ground_truth, "{t:?}");
            assert_eq!(t.mask_rule, ds.layout.mask_rule());
            for m in &t.masks {
                assert!(m.is_file() && m.starts_with(root), "{m:?}");
                if ds.layout == eval::Layout::Mvtec {
                    assert!(m.starts_with(cat.dir.join("ground_truth").join(&t.defect)), "{m:?}");
                }
            }
            if let Ok(mask) = t.load_mask(8, 6) {
                assert_eq!(mask.len(), 48);
            }
        }
        for (i, a) in cat.test.iter().enumerate() {
            for b in &cat.test[i + 1..] {
                assert!(a.defect != b.defect || a.stem != b.stem, "duplicate stem {a:?} {b:?}");
            }
        }
        let n = cat.train_good.len();
        if n > 0 {
            let k = n.min(3);
            let refs = eval::select_references(&cat.train_good, k, 7).expect("k ≤ n references");
            assert_eq!(refs.len(), k);
            for (i, r) in refs.iter().enumerate() {
                assert!(cat.train_good.contains(r) && !refs[i + 1..].contains(r));
            }
        }
        assert!(eval::select_references(&cat.train_good, n + 1, 7).is_err());
        if root.join(&cat.name) == cat.dir {
            let one = eval::scan_dataset(root, std::slice::from_ref(&cat.name)).expect("rescanning one category");
            assert_eq!(one.categories.len(), 1);
            assert_eq!(one.categories[0].test, cat.test);
        }
    }
    out
}
