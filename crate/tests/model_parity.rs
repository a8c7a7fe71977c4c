//! Fidelity: our towers against transformers' and open_clip's outputs on tiny random
//! checkpoints (fixtures written by tests/reference/make_fixtures.py).
mod common;

use anoscope::model::{Clip, EncodeOptions};
use candle_core::Tensor;
use common::{fixtures, flat, load};
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn expected(layout: &str) -> HashMap<String, Tensor> {
    load(&fixtures().join(format!("{layout}_expected.safetensors")))
}

fn model(layout: &str) -> Clip {
    Clip::load_dir(&fixtures().join(layout)).unwrap()
}

/// Asserts equal shapes and max |Δ| ≤ TOL; returns max |Δ|.
fn assert_close(what: &str, ours: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(ours.dims(), want.dims(), "{what}: shape");
    let (a, b) = (flat(ours), flat(want));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |Δ| = {max:.3e} (max |value| {scale:.3})");
    assert!(max <= TOL, "{what}: max |Δ| = {max} > {TOL}");
    assert!(
        scale > 1e-3,
        "{what}: reference is (near) zero, the test would prove nothing"
    );
    max
}

fn check_image(layout: &str) {
    let clip = model(layout);
    let exp = expected(layout);
    let pixels = &exp["pixel_values"];
    let opts = EncodeOptions {
        hidden_layers: vec![0, 1],
        surgery_layers: 2,
    };
    let out = clip.vision.forward(pixels, &opts).unwrap();
    assert_close(
        &format!("{layout} image_embeds"),
        &out.image_embeds,
        &exp["image_embeds"],
    );
    assert_close(
        &format!("{layout} patch_tokens"),
        &out.patch_tokens,
        &exp["patch_tokens"],
    );
    assert_close(
        &format!("{layout} last_hidden_state"),
        &out.last_hidden_state,
        &exp["last_hidden_state"],
    );
    assert_close(
        &format!("{layout} hidden_state_0"),
        &out.hidden_states[0].1,
        &exp["hidden_state_0"],
    );
    assert_close(
        &format!("{layout} hidden_state_1"),
        &out.hidden_states[1].1,
        &exp["hidden_state_1"],
    );
    assert_close(
        &format!("{layout} surgery_tokens_k2"),
        out.surgery_tokens.as_ref().unwrap(),
        &exp["surgery_tokens_k2"],
    );
    let k1 = clip
        .vision
        .forward(
            pixels,
            &EncodeOptions {
                hidden_layers: vec![],
                surgery_layers: 1,
            },
        )
        .unwrap();
    assert_close(
        &format!("{layout} surgery_tokens_k1"),
        k1.surgery_tokens.as_ref().unwrap(),
        &exp["surgery_tokens_k1"],
    );
    // The surgery path must not disturb the ordinary outputs.
    assert_close(
        &format!("{layout} image_embeds (with k1)"),
        &k1.image_embeds,
        &exp["image_embeds"],
    );
}

fn check_windows(layout: &str) {
    let clip = model(layout);
    let exp = expected(layout);
    let idx: Vec<i64> = exp["window_indices"].flatten_all().unwrap().to_vec1().unwrap();
    let k = exp["window_indices"].dim(1).unwrap();
    let subsets: Vec<Vec<usize>> = idx.chunks(k).map(|c| c.iter().map(|&i| i as usize).collect()).collect();
    let pixels = &exp["pixel_values"];
    for b in 0..pixels.dim(0).unwrap() {
        let emb = clip.vision.embed(&pixels.narrow(0, b, 1).unwrap()).unwrap();
        // Batch size 4 so that the last chunk is partial.
        let got = clip.vision.forward_subsets(&emb, &subsets, 4).unwrap();
        let want = exp["window_embeds"].get(b).unwrap();
        assert_close(&format!("{layout} window_embeds[{b}]"), &got, &want);
    }
}

fn check_interpolated(layout: &str) {
    let clip = model(layout);
    let exp = expected(layout);
    let out = clip
        .vision
        .forward(&exp["pixel_values_48"], &EncodeOptions::default())
        .unwrap();
    assert_eq!(out.grid, (6, 6));
    assert_close(
        &format!("{layout} image_embeds_48"),
        &out.image_embeds,
        &exp["image_embeds_48"],
    );
    assert_close(
        &format!("{layout} patch_tokens_48"),
        &out.patch_tokens,
        &exp["patch_tokens_48"],
    );
}

fn check_text(layout: &str) {
    let clip = model(layout);
    let exp = expected(layout);
    let ids: Vec<i64> = exp["input_ids"].flatten_all().unwrap().to_vec1().unwrap();
    let rows: Vec<Vec<u32>> = ids.chunks(77).map(|r| r.iter().map(|&i| i as u32).collect()).collect();
    let got = clip.text.as_ref().unwrap().forward(&rows).unwrap();
    assert_close(&format!("{layout} text_embeds"), &got, &exp["text_embeds"]);
    let ls = flat(&exp["logit_scale"])[0];
    let ours = clip.logit_scale.unwrap();
    assert!((ours.ln() - ls).abs() < 1e-5, "logit_scale {ours} vs exp({ls})");
}

#[test]
fn hf_image_tower_matches_transformers() {
    check_image("hf_tiny");
}
#[test]
fn openclip_image_tower_matches_open_clip() {
    check_image("openclip_tiny");
}
#[test]
fn hf_token_subsets_match_winclip_windows() {
    check_windows("hf_tiny");
}
#[test]
fn openclip_token_subsets_match_winclip_windows() {
    check_windows("openclip_tiny");
}
#[test]
fn hf_interpolated_position_embeddings() {
    check_interpolated("hf_tiny");
}
#[test]
fn openclip_interpolated_position_embeddings() {
    check_interpolated("openclip_tiny");
}
#[test]
fn hf_text_tower_matches_transformers() {
    check_text("hf_tiny");
}
#[test]
fn openclip_text_tower_matches_open_clip() {
    check_text("openclip_tiny");
}
