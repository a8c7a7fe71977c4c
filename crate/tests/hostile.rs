//! Hostile and broken inputs (issue 8): every one gets a clear error naming the problem (and the
//! file, where there is one), never a panic, and limits are enforced before allocating.
mod common;

use anoscope::detect::prompts::{self, PromptBundle, MAX_BUNDLE_BYTES};
use anoscope::detect::{musc, winclip};
use anoscope::eval;
use anoscope::model::config::MAX_CONFIG_BYTES;
use anoscope::model::weights::MAX_CHECKPOINT_BYTES;
use anoscope::model::{Clip, ClipConfig};
use anoscope::preprocess::{decode_image, load_image, ImageLimits, MAX_IMAGE_PIXELS};
use anoscope::tokenizer::{ClipTokenizer, Padding, CONTEXT_LENGTH, EOT, SOT};
use common::{fixtures, repo, run};
use image::{DynamicImage, ImageFormat};
use std::path::{Path, PathBuf};

fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
}

fn has_any(msg: &str, parts: &[&str]) {
    assert!(
        parts.iter().any(|p| msg.contains(p)),
        "error `{msg}` should mention one of {parts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Images

fn bottle() -> DynamicImage {
    image::open(repo().join("tests/images/bottle_broken_large_000_64.png")).unwrap()
}

fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let img = match fmt {
        ImageFormat::Jpeg | ImageFormat::Gif => DynamicImage::ImageRgb8(img.to_rgb8()),
        _ => img.clone(),
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, fmt).unwrap();
    buf.into_inner()
}

/// A valid file of `fmt` whose header now claims `w × h` pixels (the pixel data is unchanged).
fn claim_size(fmt: ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let mut b = encode(&bottle(), fmt);
    match fmt {
        ImageFormat::Jpeg => {
            let i = b.windows(2).position(|m| m == [0xFF, 0xC0]).expect("baseline SOF0");
            b[i + 5..i + 7].copy_from_slice(&(h as u16).to_be_bytes());
            b[i + 7..i + 9].copy_from_slice(&(w as u16).to_be_bytes());
        }
        ImageFormat::Gif => {
            b[6..8].copy_from_slice(&(w as u16).to_le_bytes());
            b[8..10].copy_from_slice(&(h as u16).to_le_bytes());
        }
        ImageFormat::WebP => {
            assert_eq!(&b[12..16], b"VP8L");
            let old = u32::from_le_bytes(b[21..25].try_into().unwrap());
            let v = (old & !((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14);
            b[21..25].copy_from_slice(&v.to_le_bytes());
        }
        ImageFormat::Tiff => b = tiff_header(w, h),
        ImageFormat::Png => {
            b[16..20].copy_from_slice(&w.to_be_bytes());
            b[20..24].copy_from_slice(&h.to_be_bytes());
        }
        _ => unreachable!(),
    }
    b
}

/// A baseline grayscale TIFF header (one strip, uncompressed) claiming `w × h`, no pixel data.
fn tiff_header(w: u32, h: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, w),     // ImageWidth, LONG
        (257, 4, h),     // ImageLength
        (258, 3, 8),     // BitsPerSample, SHORT
        (259, 3, 1),     // Compression: none
        (262, 3, 1),     // PhotometricInterpretation: BlackIsZero
        (273, 4, 128),   // StripOffsets
        (277, 3, 1),     // SamplesPerPixel
        (278, 4, h),     // RowsPerStrip
        (279, 4, w * h), // StripByteCounts
    ];
    let mut b = b"II*\0".to_vec();
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, ty, v) in entries {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        if ty == 3 {
            b.extend_from_slice(&(v as u16).to_le_bytes());
            b.extend_from_slice(&[0, 0]);
        } else {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.resize(160, 0x80);
    b
}

#[test]
fn pixel_limit_holds_for_every_format() {
    // Headers claiming more than the 64 Mpx default: rejected from the header.
    for (fmt, w, h) in [
        (ImageFormat::Png, 30000, 30000),
        (ImageFormat::Jpeg, 65000, 65000),
        (ImageFormat::Gif, 65535, 65535),
        (ImageFormat::WebP, 16000, 16000),
        (ImageFormat::Tiff, 20000, 20000),
    ] {
        let bytes = claim_size(fmt, w, h);
        let msg = err(decode_image(&bytes, &ImageLimits::default()));
        eprintln!("{fmt:?}: {msg}");
        has(&msg, &[&format!("{fmt:?}")]);
        has_any(&msg, &[&format!("{w}x{h}"), "limit"]);
        has_any(&msg, &["too large", "exceeds the decoding limits"]);
    }
    // Every format is held to a custom limit too, exactly at the boundary.
    let img = bottle();
    for fmt in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Tiff,
        ImageFormat::Bmp,
    ] {
        let bytes = encode(&img, fmt);
        let msg = err(decode_image(&bytes, &ImageLimits::new(64 * 64 - 1)));
        has(&msg, &["64x64", "4096 pixels", "limit of 4095 pixels"]);
        assert_eq!(
            decode_image(&bytes, &ImageLimits::new(64 * 64)).unwrap().dimensions(),
            (64, 64)
        );
    }
    assert_eq!(MAX_IMAGE_PIXELS, 64 << 20);
}

#[test]
fn truncated_images_are_errors() {
    let img = bottle();
    for fmt in [ImageFormat::Png, ImageFormat::Jpeg] {
        let bytes = encode(&img, fmt);
        let n = bytes.len();
        // PNG: up to its 12-byte IEND trailer (cutting only into that loses no pixel).
        // JPEG: up to the last byte (the end-of-image marker).
        let last = if fmt == ImageFormat::Png { n - 12 } else { n - 1 };
        for cut in [1, 2, 8, 16, 30, 100, n / 4, n / 2, 3 * n / 4, n - 20, last] {
            let msg = err(decode_image(&bytes[..cut], &ImageLimits::default()));
            eprintln!("{fmt:?} cut {cut}/{n}: {msg}");
            has_any(
                &msg,
                &[
                    "truncated",
                    "corrupt",
                    "not a recognised image format",
                    "unexpected end",
                ],
            );
        }
    }
}

#[test]
fn complete_jpegs_with_trailing_bytes_still_decode() {
    let mut bytes = encode(&bottle(), ImageFormat::Jpeg);
    let clean = decode_image(&bytes, &ImageLimits::default()).unwrap();
    bytes.extend_from_slice(b"\0\0camera padding\xff\xff");
    assert_eq!(decode_image(&bytes, &ImageLimits::default()).unwrap(), clean);
}

#[test]
fn bit_flipped_images_never_panic() {
    let img = bottle();
    for fmt in [ImageFormat::Png, ImageFormat::Jpeg] {
        let bytes = encode(&img, fmt);
        let (mut ok, mut rejected) = (0, 0);
        for i in (0..bytes.len()).step_by(7) {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                match decode_image(&b, &ImageLimits::default()) {
                    Ok(d) => {
                        ok += 1;
                        assert!(
                            d.width() * d.height() <= 64 * 64 * 4,
                            "{fmt:?} flip at {i}: {:?}",
                            d.dimensions()
                        );
                    }
                    Err(e) => {
                        rejected += 1;
                        assert!(!format!("{e:#}").trim().is_empty());
                    }
                }
            }
        }
        eprintln!("{fmt:?}: {ok} decoded, {rejected} rejected");
        // PNG checks CRCs: almost every flip is caught.
        if fmt == ImageFormat::Png {
            assert!(rejected > 10 * ok, "{ok} {rejected}");
        }
    }
}

#[test]
fn empty_and_text_files_named_png() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    has(
        &err(load_image(&empty, &ImageLimits::default())),
        &["empty.png", "empty (0 bytes)"],
    );
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "this is a text file, not a picture\n").unwrap();
    has(
        &err(load_image(&text, &ImageLimits::default())),
        &["notes.png", "not a recognised image format"],
    );
    // And through the CLI.
    let model = fixtures().join("hf_tiny");
    let (ok, _, stderr) = run(&[
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
        text.to_str().unwrap(),
    ]);
    assert!(!ok);
    has(&stderr, &["notes.png", "not a recognised image format"]);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

struct Ckpt {
    config: String,
    weights: Vec<u8>,
}

fn hf_tiny() -> Ckpt {
    let d = fixtures().join("hf_tiny");
    Ckpt {
        config: std::fs::read_to_string(d.join("config.json")).unwrap(),
        weights: std::fs::read(d.join("model.safetensors")).unwrap(),
    }
}

fn load(config: &str, weights: &[u8]) -> anyhow::Result<Clip> {
    Clip::from_bytes("config.json", config, weights, "model.safetensors")
}

/// Byte range of a tensor's data in a safetensors file, and its dtype.
fn tensor_range(bytes: &[u8], name: &str) -> (std::ops::Range<usize>, safetensors::Dtype) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    (start..start + view.data().len(), view.dtype())
}

#[test]
fn truncated_checkpoints_are_errors() {
    let c = hf_tiny();
    let n = c.weights.len();
    for cut in [0, 1, 7, 8, 9, 100, 1000, n / 3, n / 2, n - 1] {
        let msg = err(load(&c.config, &c.weights[..cut]));
        has(&msg, &["model.safetensors"]);
        has_any(&msg, &["empty", "not a valid safetensors file"]);
    }
}

#[test]
fn bit_flipped_checkpoints_never_panic() {
    let c = hf_tiny();
    let mut rejected = 0;
    let n = c.weights.len();
    // The header (every 3rd byte of the first 2 KB) and the data (spread over the file).
    let positions: Vec<usize> = (0..2048).step_by(3).chain((2048..n).step_by(n / 97)).collect();
    for &i in &positions {
        let mut b = c.weights.clone();
        b[i] ^= 0x40;
        if let Err(e) = load(&c.config, &b) {
            rejected += 1;
            has(&format!("{e:#}"), &["model.safetensors"]);
        }
    }
    eprintln!("{rejected} of {} flips rejected", positions.len());
    assert!(rejected > 0);
}

#[test]
fn non_finite_weights_are_detected() {
    let c = hf_tiny();
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let (range, dtype) = tensor_range(&c.weights, name);
    assert_eq!(dtype, safetensors::Dtype::F16);
    // f16: +Inf = 0x7C00, NaN = 0x7E00, -Inf = 0xFC00 (little-endian).
    for (bits, shown) in [(0x7C00u16, "inf"), (0x7E00, "NaN"), (0xFC00, "-inf")] {
        let mut b = c.weights.clone();
        let at = range.start + 2 * 5;
        b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        let msg = err(load(&c.config, &b));
        has(&msg, &["model.safetensors", name, "non-finite", shown, "flat index 5"]);
    }
}

#[test]
fn mismatched_dtypes_are_errors() {
    let c = hf_tiny();
    let st = safetensors::SafeTensors::deserialize(&c.weights).unwrap();
    let target = "vision_model.post_layernorm.weight";
    for (dtype, width) in [
        (safetensors::Dtype::I16, 2),
        (safetensors::Dtype::U8, 1),
        (safetensors::Dtype::I64, 8),
    ] {
        let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in st.tensors() {
            if name == target {
                let n: usize = view.shape().iter().product();
                tensors.push((name, dtype, view.shape().to_vec(), vec![1u8; n * width]));
            } else {
                tensors.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec()));
            }
        }
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let msg = err(load(&c.config, &bytes));
        has(
            &msg,
            &["model.safetensors", target, "unsupported dtype", &format!("{dtype:?}")],
        );
    }
}

#[test]
fn safetensors_headers_claiming_too_much() {
    let c = hf_tiny();
    for (len, what) in [
        (u64::MAX, "header length u64::MAX"),
        (100_000_001, "header over the safetensors crate's 100 MB limit"),
        (c.weights.len() as u64, "header longer than the file"),
    ] {
        let mut b = c.weights.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        let msg = err(load(&c.config, &b));
        has(&msg, &["model.safetensors", "not a valid safetensors file"]);
        eprintln!("{what}: {msg}");
    }
    // A header whose tensors claim 2^64 bytes of data.
    let header = br#"{"vision_model.post_layernorm.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(&[0; 16]);
    has(
        &err(load(&c.config, &b)),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn oversized_checkpoint_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("hf_tiny/config.json"), dir.path().join("config.json")).unwrap();
    // A sparse file: takes no disk space, and would take 4 GiB of memory if it were read.
    let f = std::fs::File::create(dir.path().join("model.safetensors")).unwrap();
    f.set_len(MAX_CHECKPOINT_BYTES + 1).unwrap();
    let msg = err(Clip::load_dir(dir.path()));
    has(
        &msg,
        &[
            "model.safetensors",
            "over the checkpoint size limit",
            &MAX_CHECKPOINT_BYTES.to_string(),
        ],
    );
    assert_eq!(MAX_CHECKPOINT_BYTES, 4 << 30);
    // Same for an oversized configuration file.
    let f = std::fs::File::create(dir.path().join("config.json")).unwrap();
    f.set_len(MAX_CONFIG_BYTES as u64 + 1).unwrap();
    has(
        &err(Clip::load_dir(dir.path())),
        &["config.json", "over the configuration size limit"],
    );
}

fn hf_config(vision: serde_json::Value) -> String {
    serde_json::json!({"model_type": "clip", "vision_config": vision}).to_string()
}

#[test]
fn absurd_configs_are_errors_before_allocating() {
    let hf = |v: serde_json::Value| err(ClipConfig::from_json("config.json", &hf_config(v)));
    has(
        &hf(serde_json::json!({"hidden_size": 100, "num_attention_heads": 3})),
        &["vision width 100 is not divisible by 3 heads"],
    );
    has(
        &hf(serde_json::json!({"patch_size": 64, "image_size": 32})),
        &["image size 32 is smaller than the patch size 64"],
    );
    has(
        &hf(serde_json::json!({"num_attention_heads": 0})),
        &["vision heads = 0"],
    );
    has(&hf(serde_json::json!({"image_size": 100000})), &["image size = 100000"]);
    has(
        &hf(serde_json::json!({"num_hidden_layers": 1000000})),
        &["vision layers = 1000000"],
    );
    has(
        &hf(serde_json::json!({"intermediate_size": 1u64 << 62})),
        &["vision mlp width"],
    );
    has(
        &hf(serde_json::json!({"hidden_size": -768})),
        &["hidden_size", "non-negative integer"],
    );
    has(
        &hf(serde_json::json!({"hidden_size": 76.5})),
        &["hidden_size", "non-negative integer"],
    );
    has(
        &hf(serde_json::json!({"hidden_size": "768"})),
        &["hidden_size", "non-negative integer"],
    );
    has(
        &hf(serde_json::json!({"layer_norm_eps": -1.0})),
        &["layer_norm_eps must be positive"],
    );
    has(
        &hf(serde_json::json!({"hidden_act": "relu6"})),
        &["unsupported hidden_act `relu6`"],
    );
    let e = err(ClipConfig::from_json(
        "config.json",
        &serde_json::json!({"model_type": "clip", "text_config": {"vocab_size": 0}}).to_string(),
    ));
    has(&e, &["vocab size = 0"]);

    let oc = |v: serde_json::Value| {
        let j = serde_json::json!({"model_cfg": {"vision_cfg": v, "text_cfg": {}}}).to_string();
        err(ClipConfig::from_json("open_clip_config.json", &j))
    };
    has(
        &oc(serde_json::json!({"head_width": 0})),
        &["head_width must be positive"],
    );
    has(
        &oc(serde_json::json!({"head_width": 1024, "width": 768})),
        &["vision heads = 0"],
    );
    has(&oc(serde_json::json!({"mlp_ratio": 1e30})), &["vision mlp width"]);
    has(&oc(serde_json::json!({"mlp_ratio": -4.0})), &["vision mlp width = 0"]);
    has(&oc(serde_json::json!({"image_size": [224, 112]})), &["must be square"]);
    has(&oc(serde_json::json!({"layers": [3, 4, 6, 3]})), &["ResNet"]);

    // Not JSON, empty, too deep, too big.
    for (json, expect) in [
        ("", "not valid JSON"),
        ("[1,2,3]", "expected a JSON object"),
        (&"[".repeat(100_000), "not valid JSON"),
    ] {
        has(
            &err(ClipConfig::from_json("config.json", json)),
            &["config.json", expect],
        );
    }
    let big = format!(
        "{{\"model_type\": \"clip\", \"pad\": \"{}\"}}",
        "x".repeat(MAX_CONFIG_BYTES)
    );
    has(
        &err(ClipConfig::from_json("config.json", &big)),
        &["config.json", "over the configuration size limit"],
    );
}

#[test]
fn config_of_a_bigger_model_than_the_weights() {
    // ViT-B/16's configuration with the tiny fixture's weights: refused from the sizes alone.
    let c = hf_tiny();
    let json = serde_json::json!({"model_type": "clip", "vision_config": {"patch_size": 16}}).to_string();
    let msg = err(load(&json, &c.weights));
    has(
        &msg,
        &[
            "model.safetensors",
            "the configuration and the weights do not belong together",
            "parameters",
        ],
    );
    let cfg = ClipConfig::from_json("config.json", &json).unwrap();
    assert!(
        (85_000_000..87_000_000).contains(&cfg.vision_params()),
        "{}",
        cfg.vision_params()
    );
}

// ---------------------------------------------------------------------------------------------
// Prompt files

fn small_bundle(sha: &str) -> Vec<u8> {
    use anoscope::detect::prompts::{BundleEntry, EnsembleKind};
    use anoscope::detect::TextPair;
    let mut n = vec![0.0f32; 4];
    n[0] = 1.0;
    let mut a = vec![0.0f32; 4];
    a[1] = 1.0;
    PromptBundle {
        model_id: "m".into(),
        model_sha256: sha.into(),
        embed_dim: 4,
        entries: vec![BundleEntry {
            category: "bottle".into(),
            object: "bottle".into(),
            kind: EnsembleKind::WinClip,
            n_normal: 1,
            n_anomalous: 1,
            text: TextPair::new(n, a).unwrap(),
        }],
    }
    .to_bytes()
    .unwrap()
}

#[test]
fn prompt_files_empty_foreign_text_or_huge() {
    let dir = tempfile::tempdir().unwrap();
    let mine = prompts::sha256_hex(b"my weights");
    let theirs = prompts::sha256_hex(b"other weights");
    let p = dir.path().join("prompts.safetensors");
    std::fs::write(&p, small_bundle(&theirs)).unwrap();
    has(
        &err(PromptBundle::read_file(&p, Some(&mine))),
        &["prompts.safetensors", "built for model sha256", &theirs, &mine],
    );
    assert_eq!(PromptBundle::read_file(&p, Some(&theirs)).unwrap().entries.len(), 1);

    std::fs::write(&p, b"").unwrap();
    has(
        &err(PromptBundle::read_file(&p, None)),
        &["prompts.safetensors", "empty (0 bytes)"],
    );
    std::fs::write(&p, "bottle: a photo of a bottle\n").unwrap();
    has(
        &err(PromptBundle::read_file(&p, None)),
        &["prompts.safetensors", "not a valid safetensors prompt file"],
    );
    // A model checkpoint is not a prompt file.
    let w = std::fs::read(fixtures().join("hf_tiny/model.safetensors")).unwrap();
    has(
        &err(PromptBundle::from_bytes(&w, None)),
        &["not an anoscope prompt file"],
    );
    std::fs::File::create(&p)
        .unwrap()
        .set_len(MAX_BUNDLE_BYTES + 1)
        .unwrap();
    has(
        &err(PromptBundle::read_file(&p, None)),
        &["prompts.safetensors", "over the limit"],
    );
    has(
        &err(PromptBundle::read_file(&dir.path().join("missing.safetensors"), None)),
        &["missing.safetensors", "cannot read"],
    );
}

#[test]
fn prompt_limits() {
    // Prompts are truncated to CLIP's 77 tokens (as open_clip does), EOT kept last.
    let tok = ClipTokenizer::new().unwrap();
    let long = "a photo of a scratched bottle ".repeat(40);
    assert!(tok.encode(&long).unwrap().len() > 200);
    for padding in [Padding::Hf, Padding::OpenClip] {
        let ids = tok.encode_padded(&long, padding).unwrap();
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!((ids[0], ids[CONTEXT_LENGTH - 1]), (SOT, EOT));
    }
    // Names and descriptions: at most 1000 characters; at most 4096 prompts per side.
    let long_name = "x".repeat(prompts::MAX_PROMPT_CHARS + 1);
    has(
        &err(prompts::Category::new("c", &long_name, &[])),
        &["too long", "1001 characters", "at most 1000"],
    );
    let many: Vec<String> = (0..=prompts::MAX_PROMPTS_PER_SIDE).map(|i| format!("p{i}")).collect();
    has(
        &err(prompts::check_ensemble(&many, &many[..1])),
        &["normal", "4097 prompts", "at most 4096"],
    );
    has(
        &err(prompts::check_ensemble(&many[..1], &[])),
        &["anomalous prompt ensemble is empty"],
    );
}

#[test]
fn batch_and_reference_counts_are_checked_before_decoding() {
    // The files do not exist: the count alone is refused, nothing is read.
    let model = fixtures().join("winclip_tiny");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let images: Vec<String> = (0..=musc::MAX_BATCH).map(|i| format!("/nonexistent/{i}.png")).collect();
    let mut args = vec![
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--mode",
        "batch",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    let (ok, _, stderr) = run(&args);
    assert!(!ok);
    has(&stderr, &["batch mode takes at most 256 images, got 257"]);

    let refs: Vec<String> = (0..=winclip::MAX_REFERENCES)
        .map(|i| format!("/nonexistent/r{i}.png"))
        .collect();
    let mut args = vec![
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--mode",
        "fewshot",
        "--out",
        out.to_str().unwrap(),
        "/nonexistent/q.png",
        "--refs",
    ];
    args.extend(refs.iter().map(String::as_str));
    let (ok, _, stderr) = run(&args);
    assert!(!ok);
    has(&stderr, &["at most 64 reference images, got 65"]);
    assert!(!out.exists(), "nothing may be written");
}

// ---------------------------------------------------------------------------------------------
// Datasets

fn tiny_copy(dir: &Path) -> PathBuf {
    let d = dir.join("ds");
    copy_dir(&repo().join("tests/data/tiny_mvtec"), &d);
    d
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn dataset_missing_masks_and_broken_images_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tiny_copy(tmp.path());
    std::fs::remove_file(d.join("bottle/ground_truth/broken_large/001_mask.png")).unwrap();
    has(
        &err(eval::scan_dataset(&d, &[])),
        &[
            "missing mask",
            "ground_truth/broken_large/001_mask.png",
            "test/broken_large/001.png",
        ],
    );

    for (file, content) in [
        ("bottle/test/good/000.png", &b""[..]),
        ("bottle/test/good/000.png", &b"I am text in a .png file"[..]),
        ("bottle/ground_truth/contamination/000_mask.png", &b"not a mask"[..]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tiny_copy(tmp.path());
        std::fs::write(d.join(file), content).unwrap();
        let msg = err(eval::scan_dataset(&d, &[]));
        has(&msg, &[file]);
        has_any(&msg, &["cannot read the size of image file", "cannot open image file"]);
    }
}

#[test]
fn dataset_extra_files_are_skipped_with_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tiny_copy(tmp.path());
    std::fs::write(d.join("bottle/test/good/Thumbs.db"), b"\0\x01").unwrap();
    std::fs::write(d.join("bottle/test/README"), b"hi").unwrap();
    std::fs::write(d.join("LICENSE.txt"), b"text").unwrap();
    std::fs::create_dir_all(d.join("scratch")).unwrap();
    // A mask whose image does not exist: unused, ignored.
    image::GrayImage::new(64, 64)
        .save(d.join("bottle/ground_truth/contamination/009_mask.png"))
        .unwrap();
    let ds = eval::scan_dataset(&d, &[]).unwrap();
    assert_eq!(ds.categories.len(), 1);
    let cat = &ds.categories[0];
    assert_eq!((cat.n_good(), cat.n_anomalous()), (3, 4));
    let notes = ds.notes.join("\n");
    for name in ["Thumbs.db", "README", "LICENSE.txt", "scratch"] {
        assert!(notes.contains(name), "{name} not noted: {notes}");
    }
    // The eval reader's count limit for few-shot references.
    let e = format!("{:#}", eval::select_references(&cat.train_good, 3, 0).unwrap_err());
    has(&e, &["--shots 3", "train/good has 2"]);
}
