//! The native helpers behind the page's wasm API (crate/src/wasm/): canvas RGBA in and out
//! (`preprocess::rgb_from_rgba`, `render::overlay_rgba`) and MuSc with progress
//! (`musc::detect_with_progress`). The wasm bindings themselves are tested by
//! tests/wasm/api.test.mjs on the built package.
mod common;

use anoscope::detect::musc::{self, MuscConfig, STAGE_ENCODING, STAGE_SCORING};
use anoscope::model::Clip;
use anoscope::preprocess::{rgb_from_rgba, ImageLimits};
use anoscope::render::{colormap, overlay_rgba, OUTLINE_COLOR};
use candle_core::{Device, Tensor};

fn rgba(w: usize, h: usize) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| [(i * 7) as u8, (i * 13 + 5) as u8, (i * 29 + 11) as u8, (i % 3) as u8])
        .collect()
}

#[test]
fn rgb_from_rgba_drops_alpha_and_keeps_order() {
    let data = rgba(3, 2);
    let img = rgb_from_rgba(&data, 3, 2, &ImageLimits::default()).unwrap();
    assert_eq!((img.width(), img.height()), (3, 2));
    let want: Vec<u8> = data.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    assert_eq!(img.as_raw(), &want);
    assert_eq!(img.get_pixel(2, 1).0, [data[20], data[21], data[22]]);
}

#[test]
fn rgb_from_rgba_rejects_bad_sizes() {
    let lim = ImageLimits::default();
    let e = rgb_from_rgba(&[0; 10], 2, 2, &lim).unwrap_err().to_string();
    assert_eq!(e, "the pixel buffer holds 10 bytes, but 2x2 RGBA needs 16");
    let e = rgb_from_rgba(&[], 0, 3, &lim).unwrap_err().to_string();
    assert!(e.contains("positive width and height"), "{e}");
    let e = rgb_from_rgba(&[0; 64], 4, 4, &ImageLimits::new(15))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4x4 = 16 pixels exceeds the limit of 15 pixels"), "{e}");
}

#[test]
fn overlay_rgba_opacity_ends_and_outline() {
    let (w, h) = (5, 4);
    let input = rgba(w, h);
    let map: Vec<f32> = (0..w * h).map(|i| i as f32 / (w * h - 1) as f32).collect();
    let zero = overlay_rgba(&input, &map, w, h, 0.0, None).unwrap();
    let one = overlay_rgba(&input, &map, w, h, 1.0, None).unwrap();
    for i in 0..w * h {
        assert_eq!(
            zero[4 * i..4 * i + 4],
            [input[4 * i], input[4 * i + 1], input[4 * i + 2], 255]
        );
        let [r, g, b] = colormap(map[i]);
        assert_eq!(one[4 * i..4 * i + 4], [r, g, b, 255]);
    }
    // Values >= 0.5 form the lower half (rows 2..4 from index 10 on): its inner boundary is cyan.
    let out = overlay_rgba(&input, &map, w, h, 0.3, Some(0.5)).unwrap();
    let plain = overlay_rgba(&input, &map, w, h, 0.3, None).unwrap();
    for i in 0..w * h {
        let px = &out[4 * i..4 * i + 3];
        if map[i] >= 0.5 {
            // Every pixel of a 2-row region touching the image edge is on its boundary.
            assert_eq!(px, OUTLINE_COLOR, "pixel {i}");
        } else {
            assert_eq!(px, &plain[4 * i..4 * i + 3], "pixel {i}");
        }
    }
}

#[test]
fn overlay_rgba_rejects_bad_input() {
    let input = rgba(2, 2);
    let e = overlay_rgba(&input, &[0.0; 3], 2, 2, 0.5, None)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "the anomaly map holds 3 values, but the image is 2x2 = 4 pixels");
    let e = overlay_rgba(&input[..12], &[0.0; 4], 2, 2, 0.5, None)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "the image holds 12 bytes, but 2x2 RGBA needs 16");
    for bad in [-0.1, 1.5, f32::NAN] {
        let e = overlay_rgba(&input, &[0.0; 4], 2, 2, bad, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("opacity must be a number from 0 to 1"), "{e}");
    }
}

#[test]
fn musc_progress_counts_every_step_and_can_stop_the_run() {
    let clip = Clip::load_dir(&common::fixtures().join("hf_tiny")).unwrap();
    let s = clip.cfg.vision.image_size;
    let n = 3;
    let data: Vec<f32> = (0..n * 3 * s * s)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let px = Tensor::from_vec(data, (n, 3, s, s), &Device::Cpu).unwrap();
    let cfg = MuscConfig::default();
    let mut calls = Vec::new();
    let out = musc::detect_with_progress(&clip, &px, &cfg, &mut |d, t, stage| {
        calls.push((d, t, stage.to_string()));
        Ok(())
    })
    .unwrap();
    let layers = musc::default_layers(clip.cfg.vision.layers).len();
    let total = n + cfg.r_list.len() * layers;
    let want: Vec<_> = (1..=total)
        .map(|d| {
            (
                d,
                total,
                if d <= n { STAGE_ENCODING } else { STAGE_SCORING }.to_string(),
            )
        })
        .collect();
    assert_eq!(calls, want);
    // Same results as without progress.
    let plain = musc::detect(&clip, &px, &cfg).unwrap();
    for (a, b) in out.detections.iter().zip(&plain.detections) {
        assert_eq!(a.score, b.score);
        assert_eq!(a.map, b.map);
    }
    let err = musc::detect_with_progress(&clip, &px, &cfg, &mut |d, _, _| {
        anyhow::ensure!(d < 2, "stopped by the caller");
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "stopped by the caller");
}

#[test]
fn text_pair_progress_counts_prompts_and_can_stop() {
    use anoscope::detect::{prompts, TextPair, PROMPT_BATCH};
    use anoscope::tokenizer::ClipTokenizer;
    let clip = Clip::load_dir(&common::fixtures().join("hf_tiny")).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let (n, a) = prompts::winclip_ensemble("ceramic mug");
    assert_eq!((n.len(), a.len(), PROMPT_BATCH), (147, 84, 64));
    let mut calls = Vec::new();
    let pair = TextPair::from_prompts_with_progress(&clip, &tok, &n, &a, &mut |d, t| {
        calls.push((d, t));
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, vec![(64, 231), (128, 231), (147, 231), (211, 231), (231, 231)]);
    assert_eq!(pair, TextPair::from_prompts(&clip, &tok, &n, &a).unwrap());
    let err = TextPair::from_prompts_with_progress(&clip, &tok, &n, &a, &mut |d, _| {
        anyhow::ensure!(d < 100, "cancelled");
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "cancelled");
}
