//! The CLI contract: names, shapes and values of `embed` / `embed-text` outputs, and clean
//! errors (non-zero exit, a message on stderr, never a panic) for bad input.
mod common;

use candle_core::Tensor;
use common::{fixtures, load};
use std::process::Command;

fn anoscope(args: &[&str]) -> (bool, String) {
    let (ok, _, stderr) = common::run(args);
    (ok, stderr)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (common::flat(a), common::flat(b));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn embed_pixels_writes_the_contract_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    for layout in ["hf_tiny", "openclip_tiny"] {
        let exp = load(&fixtures().join(format!("{layout}_expected.safetensors")));
        let pix = tmp.path().join("pix.safetensors");
        let one = exp["pixel_values"].narrow(0, 1, 1).unwrap();
        one.save_safetensors("pixel_values", &pix).unwrap();
        let out = tmp.path().join(format!("{layout}.safetensors"));
        let model = fixtures().join(layout);
        let (ok, err) = anoscope(&[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--pixels",
            pix.to_str().unwrap(),
            "--surgery-layers",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let got = load(&out);
        let mut names: Vec<_> = got.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            ["image_embeds", "last_hidden_state", "patch_tokens", "surgery_tokens"]
        );
        assert_eq!(got["image_embeds"].dims(), &[1, 48]);
        assert_eq!(got["patch_tokens"].dims(), &[1, 16, 48]);
        assert_eq!(got["last_hidden_state"].dims(), &[1, 17, 64]);
        assert_eq!(got["surgery_tokens"].dims(), &[1, 16, 48]);
        for (name, want) in [
            ("image_embeds", "image_embeds"),
            ("patch_tokens", "patch_tokens"),
            ("last_hidden_state", "last_hidden_state"),
            ("surgery_tokens", "surgery_tokens_k2"),
        ] {
            let d = max_diff(&got[name], &exp[want].narrow(0, 1, 1).unwrap());
            assert!(d <= 1e-4, "{layout} {name}: {d}");
        }
    }
}

#[test]
fn embed_image_file() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 128]))
        .save(&img)
        .unwrap();
    let out = tmp.path().join("o.safetensors");
    let model = fixtures().join("hf_tiny");
    let (ok, err) = anoscope(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--size",
        "48",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let got = load(&out);
    assert_eq!(got["patch_tokens"].dims(), &[1, 36, 48]);
}

#[test]
fn embed_text_writes_embeds_and_ids() {
    let tmp = tempfile::tempdir().unwrap();
    for (layout, pad) in [("hf_tiny", 49407i64), ("openclip_tiny", 0)] {
        let out = tmp.path().join("t.safetensors");
        let model = fixtures().join(layout);
        let (ok, err) = anoscope(&[
            "embed-text",
            "--model",
            model.to_str().unwrap(),
            "--text",
            "a photo of a flawless bottle.",
            "--text",
            "a photo of a damaged bottle.",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let got = load(&out);
        assert_eq!(got["text_embeds"].dims()[0], 2);
        assert_eq!(got["input_ids"].dims(), &[2, 77]);
        let ids: Vec<Vec<i64>> = got["input_ids"].to_vec2().unwrap();
        assert_eq!(ids[0][0], 49406);
        assert_eq!(ids[0][76], pad, "{layout} padding");
        // "flawless" and "damaged" prompts must not embed identically.
        let e: Vec<Vec<f32>> = got["text_embeds"].to_vec2().unwrap();
        assert!(e[0].iter().zip(&e[1]).any(|(a, b)| (a - b).abs() > 1e-4));
    }
}

#[test]
fn bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("hf_tiny");
    let m = model.to_str().unwrap();
    let out = tmp.path().join("o.safetensors");
    let o = out.to_str().unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "this is text, not a picture").unwrap();
    let empty = tmp.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec![
                "embed",
                "--model",
                "/no/such/dir",
                "--image",
                text.to_str().unwrap(),
                "--out",
                o,
            ],
            vec!["/no/such/dir"],
        ),
        (
            vec!["embed", "--model", m, "--image", "/no/such.png", "--out", o],
            vec!["/no/such.png"],
        ),
        (
            vec!["embed", "--model", m, "--image", text.to_str().unwrap(), "--out", o],
            vec!["notes.png"],
        ),
        (
            vec!["embed", "--model", m, "--image", empty.to_str().unwrap(), "--out", o],
            vec!["empty.png"],
        ),
        (
            vec!["embed", "--model", m, "--pixels", text.to_str().unwrap(), "--out", o],
            vec!["notes.png"],
        ),
        (
            vec![
                "embed",
                "--model",
                m,
                "--pixels",
                text.to_str().unwrap(),
                "--surgery-layers",
                "9",
                "--out",
                o,
            ],
            vec!["notes.png"],
        ),
        (
            vec![
                "embed-text",
                "--model",
                tmp.path().to_str().unwrap(),
                "--text",
                "x",
                "--out",
                o,
            ],
            vec!["unknown checkpoint layout"],
        ),
    ];
    for (args, needles) in cases {
        let (ok, err) = anoscope(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{err}` should mention {n}");
        }
    }
    assert!(!out.exists(), "no output may be written on error");
}

#[test]
fn surgery_layers_beyond_depth_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = load(&fixtures().join("hf_tiny_expected.safetensors"));
    let pix = tmp.path().join("pix.safetensors");
    exp["pixel_values"]
        .narrow(0, 0, 1)
        .unwrap()
        .save_safetensors("pixel_values", &pix)
        .unwrap();
    let model = fixtures().join("hf_tiny");
    let (ok, err) = anoscope(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--pixels",
        pix.to_str().unwrap(),
        "--surgery-layers",
        "9",
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("surgery layers 9 exceeds the 3 layers"), "{err}");
}

#[test]
fn bench_all_modes_reports_each_mode() {
    let model = fixtures().join("winclip_tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_anoscope"))
        .args([
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--mode",
            "all",
            "--runs",
            "1",
            "--batch",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let modes: Vec<&str> = lines.iter().map(|v| v["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["encode", "fast", "winclip", "musc", "text"]);
    for v in &lines {
        assert_eq!(v["size"], 48);
        assert!(v["ms"].as_f64().unwrap() > 0.0 && v["images_per_s"].as_f64().unwrap() > 0.0);
    }
    assert!(lines[0]["encode_ms"].as_f64().is_some() && lines[0]["gflops"].as_f64().unwrap() > 0.0);
}
