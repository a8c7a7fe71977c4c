//! Fidelity of the detection modes: WinCLIP / WinCLIP+ against anomalib's own `WinClipModel`,
//! the fast dense mode against its Python transcription, MuSc against a transcription of the
//! official code (fixtures by tests/reference/make_detection_fixtures.py).
mod common;

use anoscope::detect::musc::{self, MuscConfig};
use anoscope::detect::prompts::winclip_ensemble;
use anoscope::detect::winclip::{self, References, WinClipConfig};
use anoscope::detect::{fast, TextPair, TEMPERATURE};
use anoscope::model::Clip;
use anoscope::tokenizer::{ClipTokenizer, Padding};
use candle_core::{DType, Tensor};
use common::{fixtures, flat};
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn load(name: &str) -> HashMap<String, Tensor> {
    common::load(&fixtures().join(name))
}

fn model() -> Clip {
    Clip::load_dir(&fixtures().join("winclip_tiny")).unwrap()
}

fn close(what: &str, ours: &[f32], want: &[f32]) {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    let max = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |Δ| = {max:.2e}");
    assert!(max <= TOL, "{what}: max |Δ| = {max}");
}

fn fixture_text(exp: &HashMap<String, Tensor>) -> TextPair {
    let t = exp["text_embeddings"].to_vec2::<f32>().unwrap();
    TextPair::new(t[0].clone(), t[1].clone()).unwrap()
}

#[test]
fn prompt_ensemble_tokens_and_text_embeddings_match_anomalib() {
    let exp = load("winclip_tiny_expected.safetensors");
    let clip = model();
    let tok = ClipTokenizer::new().unwrap();
    let (normal, anomalous) = winclip_ensemble("bottle");
    for (prompts, key) in [(&normal, "normal_input_ids"), (&anomalous, "anomalous_input_ids")] {
        let want: Vec<Vec<i64>> = exp[key].to_vec2().unwrap();
        assert_eq!(want.len(), prompts.len());
        for (p, w) in prompts.iter().zip(&want) {
            let ids: Vec<i64> = tok
                .encode_padded(p, Padding::OpenClip)
                .unwrap()
                .iter()
                .map(|&i| i as i64)
                .collect();
            assert_eq!(&ids, w, "{p}");
        }
    }
    let ours = TextPair::from_prompts(&clip, &tok, &normal, &anomalous).unwrap();
    let want = fixture_text(&exp);
    close("text normal (unit)", &ours.normal, &want.normal);
    close("text anomalous (unit)", &ours.anomalous, &want.anomalous);
}

#[test]
fn winclip_zero_and_few_shot_match_anomalib() {
    let exp = load("winclip_tiny_expected.safetensors");
    let clip = model();
    let text = fixture_text(&exp);
    let cfg = WinClipConfig {
        window_batch: 7,
        ..Default::default()
    };
    let feats = winclip::features(&clip, &exp["pixel_values"], &cfg).unwrap();
    let refs_all = winclip::features(&clip, &exp["ref_pixel_values"], &cfg).unwrap();
    let r1 = References::new(&refs_all[..1]).unwrap();
    let r2 = References::new(&refs_all).unwrap();
    for (b, f) in feats.iter().enumerate() {
        close(
            &format!("image_embeddings[{b}]"),
            &f.image_embed,
            &flat(&exp["image_embeddings"].get(b).unwrap()),
        );
        close(
            &format!("patch_embeddings[{b}]"),
            &flat(&f.patch_tokens),
            &flat(&exp["patch_embeddings"].get(b).unwrap()),
        );
        for (s, name) in [(0, "window_embeddings_2"), (1, "window_embeddings_3")] {
            let ours = flat(&f.windows[s]);
            close(&format!("{name}[{b}]"), &ours, &flat(&exp[name].get(b).unwrap()));
            // anomalib with open_clip >= 2.26 collapses all windows of a scale to one value; ours
            // must not: the windows of one image differ.
            let rows = f.windows[s].to_vec2::<f32>().unwrap();
            let min_gap = (1..rows.len())
                .map(|j| {
                    rows[0]
                        .iter()
                        .zip(&rows[j])
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max)
                })
                .fold(f32::MAX, f32::min);
            assert!(min_gap > 1e-2, "{name}[{b}]: windows collapse (min gap {min_gap})");
        }
        let (score, grid) = winclip::zero_shot(f, &text, &cfg).unwrap();
        close(
            &format!("zs_image_scores[{b}]"),
            &[score],
            &[flat(&exp["zs_image_scores"])[b]],
        );
        close(
            &format!("zs_grid_map[{b}]"),
            &grid,
            &flat(&exp["zs_grid_map"].get(b).unwrap()),
        );
        let det = winclip::detect_features(f, &text, None, &cfg).unwrap();
        assert_eq!((det.height, det.width), (48, 48));
        close(
            &format!("zs_maps[{b}]"),
            &det.map,
            &flat(&exp["zs_maps"].get(b).unwrap()),
        );
        for (refs, p) in [(&r1, "fs1"), (&r2, "fs2")] {
            let fs = winclip::few_shot_map(f, refs, &cfg).unwrap();
            close(
                &format!("{p}_fewshot_grid[{b}]"),
                &fs,
                &flat(&exp[&format!("{p}_fewshot_grid")].get(b).unwrap()),
            );
            let det = winclip::detect_features(f, &text, Some(refs), &cfg).unwrap();
            close(
                &format!("{p}_image_scores[{b}]"),
                &[det.score],
                &[flat(&exp[&format!("{p}_image_scores")])[b]],
            );
            close(
                &format!("{p}_maps[{b}]"),
                &det.map,
                &flat(&exp[&format!("{p}_maps")].get(b).unwrap()),
            );
        }
    }
    // Window scores per scale, through the public scoring function.
    let ws2: Vec<f32> = feats[1].windows[0]
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|e| text.score(e, TEMPERATURE))
        .collect();
    close(
        "zs_window_scores_2[1]",
        &ws2,
        &flat(&exp["zs_window_scores_2"].get(1).unwrap()),
    );
}

#[test]
fn fast_mode_matches_its_transcription() {
    let exp = load("winclip_tiny_expected.safetensors");
    let clip = model();
    let text = fixture_text(&exp);
    let dets = fast::detect(&clip, &exp["pixel_values"], &text, 2, TEMPERATURE).unwrap();
    for (b, d) in dets.iter().enumerate() {
        close(
            &format!("fast_grid[{b}]"),
            &d.grid_map,
            &flat(&exp["fast_grid"].get(b).unwrap()),
        );
        close(
            &format!("fast_maps[{b}]"),
            &d.map,
            &flat(&exp["fast_maps"].get(b).unwrap()),
        );
        close(
            &format!("fast_image_scores[{b}]"),
            &[d.score],
            &[flat(&exp["fast_image_scores"])[b]],
        );
    }
}

#[test]
fn musc_matches_the_official_algorithm() {
    let exp = load("musc_tiny_expected.safetensors");
    let clip = model();
    let cfg = MuscConfig {
        layers: vec![1, 2, 3],
        ..Default::default()
    };
    let out = musc::detect(&clip, &exp["musc_pixel_values"], &cfg).unwrap();
    for (ri, name) in ["musc_lnamd_r1", "musc_lnamd_r3", "musc_lnamd_r5"].iter().enumerate() {
        // Fixture layout [1, N, layer, D]; ours [r][layer][image] -> [N·D].
        let want = exp[*name]
            .squeeze(0)
            .unwrap()
            .permute((1, 0, 2))
            .unwrap()
            .contiguous()
            .unwrap();
        for li in 0..3 {
            close(
                &format!("{name} layer {}", li + 1),
                &out.lnamd[ri][li][0],
                &flat(&want.get(li).unwrap()),
            );
        }
    }
    let msm = exp["musc_msm_per_r_layer"].to_dtype(DType::F32).unwrap();
    for ri in 0..3 {
        for li in 0..3 {
            let ours: Vec<f32> = out.msm[ri][li].concat();
            close(
                &format!("msm r{} layer {}", [1, 3, 5][ri], li + 1),
                &ours,
                &flat(&msm.get(ri).unwrap().get(li).unwrap()),
            );
        }
    }
    close(
        "msm_patch_scores",
        &out.patch_scores.concat(),
        &flat(&exp["msm_patch_scores"]),
    );
    let maps: Vec<f32> = out.detections.iter().flat_map(|d| d.map.clone()).collect();
    close("musc_maps", &maps, &flat(&exp["musc_maps"]));
    close(
        "musc_image_scores_raw",
        &out.raw_scores,
        &flat(&exp["musc_image_scores_raw"]),
    );
    close(
        "musc_rscin_per_k",
        &out.rscin_per_k.concat(),
        &flat(&exp["musc_rscin_per_k"]),
    );
    let scores: Vec<f32> = out.detections.iter().map(|d| d.score).collect();
    close("musc_image_scores", &scores, &flat(&exp["musc_image_scores"]));
}

#[test]
fn mode_errors_are_clear() {
    let exp = load("winclip_tiny_expected.safetensors");
    let clip = model();
    let one = exp["pixel_values"].narrow(0, 0, 1).unwrap();
    let e = musc::detect(&clip, &one, &MuscConfig::default()).unwrap_err();
    assert!(format!("{e:#}").contains("at least 2 images"));
    let e = References::new(&[]).unwrap_err();
    assert!(format!("{e:#}").contains("at least one normal reference"));
    let wrong = TextPair::new(vec![1.0; 7], vec![0.5; 7]).unwrap();
    let e = fast::detect(&clip, &one, &wrong, 2, TEMPERATURE).unwrap_err();
    assert!(format!("{e:#}").contains("dimensions"));
}
