//! AdaptCLIP against the official code (fixtures by tests/reference/make_adaptclip_fixtures.py,
//! which runs the official gaobb/AdaptCLIP modules on a tiny random CLIP of the ViT-L/14@336
//! family — AnomalyCLIP's fixture model — at 70 px, grid 10×10 from a 4×4 checkpoint grid): the
//! learned file read as published (`torch.save`) and as converted safetensors, both text pairs,
//! and the zero- and few-shot maps and scores from the official encoder's features.
mod common;

use anoscope::detect::adaptclip::{self, Features, Learned, References, TextPairs, FEATURE_LAYERS};
use anoscope::detect::TextPair;
use anoscope::model::Clip;
use anoscope::tokenizer::ClipTokenizer;
use candle_core::Tensor;
use common::{fixtures, flat};
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn expected() -> HashMap<String, Tensor> {
    common::load(&fixtures().join("adaptclip_tiny_expected.safetensors"))
}

fn model() -> Clip {
    Clip::load_dir(&fixtures().join("anomalyclip_tiny")).unwrap()
}

fn pth() -> std::path::PathBuf {
    fixtures().join("adaptclip_tiny").join("learned.pth")
}

fn learned(clip: &Clip) -> Learned {
    let t = Learned::read_tensors(&pth()).unwrap();
    Learned::from_tensors(&t, clip.cfg.embed_dim, clip.cfg.text.width).unwrap()
}

fn close(what: &str, ours: &[f32], want: &[f32]) {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    let max = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |Δ| = {max:.2e}");
    assert!(max <= TOL, "{what}: max |Δ| = {max}");
}

/// The official encoder's outputs for image `b` (`tokens_*` hold the class token first).
fn official_features(exp: &HashMap<String, Tensor>, prefix: &str, global: &str, b: usize) -> Features {
    let layers: Vec<Tensor> = FEATURE_LAYERS
        .iter()
        .map(|l| {
            let t = exp[&format!("{prefix}tokens_{l}")].get(b).unwrap();
            let n = t.dim(0).unwrap();
            t.narrow(0, 1, n - 1).unwrap()
        })
        .collect();
    Features {
        global: flat(&exp[global].get(b).unwrap()),
        layers,
        grid: (10, 10),
    }
}

fn text_pairs(clip: &Clip, l: &Learned) -> TextPairs {
    TextPairs::encode(clip, &ClipTokenizer::new().unwrap(), l).unwrap()
}

#[test]
fn text_pairs_match_the_official_static_and_learned_features() {
    let exp = expected();
    let clip = model();
    let l = learned(&clip);
    let ours = text_pairs(&clip, &l);
    let unit = |key: &str| {
        let t = exp[key].to_vec2::<f32>().unwrap();
        TextPair::new(t[0].clone(), t[1].clone()).unwrap()
    };
    let fixed = unit("static_text");
    let learned = unit("learned_text");
    close("static normal", &ours.fixed.normal, &fixed.normal);
    close("static anomalous", &ours.fixed.anomalous, &fixed.anomalous);
    close("learned normal", &ours.learned.normal, &learned.normal);
    close("learned anomalous", &ours.learned.anomalous, &learned.anomalous);
    // The learned prompt tokenises as the official one (end of text at position 14).
    let tok = ClipTokenizer::new().unwrap();
    let ids = tok
        .encode_padded(&adaptclip::learned_prompt(), anoscope::tokenizer::Padding::OpenClip)
        .unwrap();
    let want: Vec<i64> = exp["tokenized_prompts"].get(0).unwrap().to_vec1().unwrap();
    assert_eq!(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want);
}

#[test]
fn zero_shot_maps_and_scores_match_the_official_test_py() {
    let exp = expected();
    let clip = model();
    let l = learned(&clip);
    let text = text_pairs(&clip, &l);
    for b in 0..2 {
        let f = official_features(&exp, "", "global", b);
        let parts = adaptclip::zero_shot_parts(&l, &text, &f).unwrap();
        close(
            &format!("visual score [{b}]"),
            &[parts.visual_score],
            &[flat(&exp["visual_score"])[b]],
        );
        close(
            &format!("textual score [{b}]"),
            &[parts.textual_score],
            &[flat(&exp["textual_score"])[b]],
        );
        let vl = anoscope::detect::aggregate::bilinear_resize(&parts.visual_grid, 10, 10, 70, 70);
        close(
            &format!("visual map [{b}]"),
            &vl,
            &flat(&exp["visual_map"].get(b).unwrap()),
        );
        let tl = anoscope::detect::aggregate::bilinear_resize(&parts.textual_grid, 10, 10, 70, 70);
        close(
            &format!("textual map [{b}]"),
            &tl,
            &flat(&exp["textual_map"].get(b).unwrap()),
        );
        let d = adaptclip::zero_shot(&l, &text, &f, (70, 70)).unwrap();
        assert_eq!((d.height, d.width, d.grid), (70, 70, (10, 10)));
        close(
            &format!("zero-shot map [{b}]"),
            &d.map,
            &flat(&exp["map_zero"].get(b).unwrap()),
        );
        close(
            &format!("zero-shot score [{b}]"),
            &[d.score],
            &[flat(&exp["score_zero"])[b]],
        );
    }
}

#[test]
fn few_shot_maps_and_scores_match_the_official_test_py() {
    let exp = expected();
    let clip = model();
    let l = learned(&clip);
    let text = text_pairs(&clip, &l);
    let refs: Vec<Features> = (0..2)
        .map(|s| official_features(&exp, "prompt_", "prompt_global", s))
        .collect();
    let refs = References::new(&refs).unwrap();
    assert_eq!(refs.count, 2);
    for b in 0..2 {
        let f = official_features(&exp, "", "global", b);
        let (s, map, align) = adaptclip::prompt_query(l.pq.as_ref().unwrap(), &f, &refs, (70, 70)).unwrap();
        close(&format!("pq score [{b}]"), &[s], &[flat(&exp["pq_score"])[b]]);
        close(&format!("pq map [{b}]"), &map, &flat(&exp["pq_map"].get(b).unwrap()));
        close(
            &format!("align map [{b}]"),
            &align,
            &flat(&exp["align_map"].get(b).unwrap()),
        );
        let d = adaptclip::few_shot(&l, &text, &f, &refs, (70, 70)).unwrap();
        close(
            &format!("few-shot map [{b}]"),
            &d.map,
            &flat(&exp["map_few"].get(b).unwrap()),
        );
        close(
            &format!("few-shot score [{b}]"),
            &[d.score],
            &[flat(&exp["score_few"])[b]],
        );
    }
}

#[test]
fn learned_file_reads_the_same_from_pth_and_safetensors() {
    let clip = model();
    let from_pth = Learned::read_tensors(&pth()).unwrap();
    // Every float tensor of the three learners; the int32 token ids and the int64 BatchNorm
    // counters are left out.
    assert!(from_pth.contains_key("textual_learner.ctx_pos"));
    assert!(from_pth.contains_key("visual_learner.local_adater.fc.1.running_var"));
    assert!(from_pth.contains_key("pq_learner.local_adapter.3.8.bias"));
    assert!(!from_pth
        .keys()
        .any(|k| k.contains("tokenized_prompts") || k.contains("num_batches")));
    let views: Vec<(String, Vec<u8>, Vec<usize>)> = from_pth
        .iter()
        .map(|(k, t)| {
            let v = flat(t);
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                t.dims().to_vec(),
            )
        })
        .collect();
    let st = safetensors::serialize(
        views.iter().map(|(k, b, s)| {
            (
                k.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        }),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learned.safetensors");
    std::fs::write(&path, st).unwrap();
    let from_st = Learned::read_tensors(&path).unwrap();
    assert_eq!(from_st.len(), from_pth.len());
    for (k, t) in &from_pth {
        assert_eq!(flat(&from_st[k]), flat(t), "{k}");
    }
    let a = Learned::from_tensors(&from_st, clip.cfg.embed_dim, clip.cfg.text.width).unwrap();
    assert_eq!(flat(&a.ctx_normal), flat(&learned(&clip).ctx_normal));
    // The buffers the official code concatenates around the context are our token embeddings.
    let tok = ClipTokenizer::new().unwrap();
    let ids = tok
        .encode_padded(&adaptclip::learned_prompt(), anoscope::tokenizer::Padding::OpenClip)
        .unwrap();
    let emb = &clip.text.as_ref().unwrap().w.token_embedding;
    let prefix = flat(&from_pth["textual_learner.token_prefix_pos"]);
    close("token prefix", &prefix, &flat(&emb.get(ids[0] as usize).unwrap()));
    let suffix = from_pth["textual_learner.token_suffix_neg"].flatten_all().unwrap();
    let w = clip.cfg.text.width;
    for (i, &id) in ids[13..].iter().enumerate() {
        let row = flat(&suffix.narrow(0, i * w, w).unwrap());
        close(
            &format!("token suffix {i}"),
            &row,
            &flat(&emb.get(id as usize).unwrap()),
        );
    }
}

#[test]
fn bad_learned_files_get_clear_errors() {
    let clip = model();
    let t = Learned::read_tensors(&pth()).unwrap();
    // Wrong model: the embedding width differs.
    let e = Learned::from_tensors(&t, 48, clip.cfg.text.width)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pq_learner.local_adapter.0.0.weight") && e.contains("48"),
        "{e}"
    );
    let zero_only: HashMap<String, Tensor> = t
        .iter()
        .filter(|(k, _)| !k.starts_with("pq_learner."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let e = Learned::from_tensors(&zero_only, 48, clip.cfg.text.width)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("visual_learner.global_adapter.fc.0.weight") && e.contains("48"),
        "{e}"
    );
    let e = Learned::from_tensors(&t, clip.cfg.embed_dim, 24)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("textual_learner.ctx_pos") && e.contains("text width 24"),
        "{e}"
    );
    // A missing tensor is named.
    let mut partial = t.clone();
    partial.remove("visual_learner.local_adater.fc.3.weight");
    let e = Learned::from_tensors(&partial, clip.cfg.embed_dim, clip.cfg.text.width)
        .unwrap_err()
        .to_string();
    assert!(e.contains("visual_learner.local_adater.fc.3.weight"), "{e}");
    // Without the prompt-query adapter the file is zero-shot only, and few-shot says why.
    let l = Learned::from_tensors(&zero_only, clip.cfg.embed_dim, clip.cfg.text.width).unwrap();
    assert!(l.pq.is_none());
    let exp = expected();
    let text = text_pairs(&clip, &l);
    let f = official_features(&exp, "", "global", 0);
    let refs = References::new(std::slice::from_ref(&f)).unwrap();
    let e = adaptclip::few_shot(&l, &text, &f, &refs, (70, 70))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pq_learner"), "{e}");
    // Not a checkpoint at all.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
    assert!(Learned::read_tensors(&junk).is_err());
    std::fs::write(&junk, b"hello").unwrap();
    let e = format!("{:#}", Learned::read_tensors(&junk).unwrap_err());
    assert!(e.contains("junk.pth"), "{e}");
    // The official AnomalyCLIP checkpoint is not taken for AdaptCLIP.
    let e = format!(
        "{:#}",
        Learned::read_tensors(&fixtures().join("anomalyclip_tiny").join("learned.pth")).unwrap_err()
    );
    assert!(e.contains("no `textual_learner` state dict"), "{e}");
    // Nor tensors named like AnomalyCLIP's.
    let mut other = HashMap::new();
    other.insert(
        "prompt_learner.ctx_pos".to_string(),
        t["textual_learner.ctx_pos"].clone(),
    );
    let e = Learned::from_tensors(&other, clip.cfg.embed_dim, clip.cfg.text.width)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an AdaptCLIP checkpoint"), "{e}");
}

#[test]
fn dpam_encoder_features_match_the_official_encode_image() {
    let exp = expected();
    let mut clip = model();
    anoscope::detect::learned::use_official_pos_interp(&mut clip);
    let ours = adaptclip::encode(&clip, &exp["pixel_values"]).unwrap();
    let last =
        anoscope::detect::passes::now(adaptclip::encode_last_on(&clip, &clip.vision, &exp["pixel_values"])).unwrap();
    assert_eq!(ours.len(), 2);
    for (b, f) in ours.iter().enumerate() {
        assert_eq!(f.grid, (10, 10));
        let want = official_features(&exp, "", "global", b);
        close(&format!("global [{b}]"), &f.global, &want.global);
        for (l, (a, w)) in FEATURE_LAYERS.iter().zip(f.layers.iter().zip(&want.layers)) {
            close(&format!("layer {l} tokens [{b}]"), &flat(a), &flat(w));
        }
        // The shared (accelerator-capable) DPAM pass gives the same zero-shot features.
        assert_eq!(last[b].global, f.global);
        assert_eq!(flat(&last[b].layers[0]), flat(&f.layers[3]));
    }
    // End to end from pixels: zero- and few-shot maps and scores.
    let l = learned(&clip);
    let text = text_pairs(&clip, &l);
    let refs = References::new(&adaptclip::encode(&clip, &exp["prompt_pixel_values"]).unwrap()).unwrap();
    for (b, f) in ours.iter().enumerate() {
        let d = adaptclip::zero_shot(&l, &text, &last[b], (70, 70)).unwrap();
        close(
            &format!("pixels → zero-shot map [{b}]"),
            &d.map,
            &flat(&exp["map_zero"].get(b).unwrap()),
        );
        close(
            &format!("pixels → zero-shot score [{b}]"),
            &[d.score],
            &[flat(&exp["score_zero"])[b]],
        );
        let d = adaptclip::few_shot(&l, &text, f, &refs, (70, 70)).unwrap();
        close(
            &format!("pixels → few-shot map [{b}]"),
            &d.map,
            &flat(&exp["map_few"].get(b).unwrap()),
        );
        close(
            &format!("pixels → few-shot score [{b}]"),
            &[d.score],
            &[flat(&exp["score_few"])[b]],
        );
    }
    // Zero-shot features cannot serve few-shot; a model of another depth is refused.
    let e = adaptclip::few_shot(&l, &text, &last[0], &refs, (70, 70))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 layers"), "{e}");
    let small = Clip::load_dir(&fixtures().join("winclip_tiny")).unwrap();
    let e = adaptclip::encode(&small, &exp["pixel_values"]).unwrap_err().to_string();
    assert!(e.contains("24-block"), "{e}");
}

#[test]
fn converted_file_carries_the_text_pairs_and_one_copy_of_the_shared_heads() {
    let exp = expected();
    let clip = model();
    let t = Learned::read_tensors(&pth()).unwrap();
    let from_pth = adaptclip::AdaptClip::from_tensors(&clip, &t).unwrap();
    let bytes = adaptclip::convert(&clip, &t, safetensors::Dtype::F32).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(names.iter().any(|n| n == "pq_learner.local_adapter.0.0.weight"));
    assert!(names.iter().any(|n| n == "pq_learner.sharebn.3.running_var"));
    assert!(!names.iter().any(|n| n.starts_with("pq_learner.local_adapter.1.")));
    assert!(!names.iter().any(|n| n.starts_with("pq_learner.global_adapter.2.")));
    assert!(!names.iter().any(|n| n.starts_with("textual_learner.token_")));
    assert!(names.iter().any(|n| n == adaptclip::STATIC_TEXT) && names.iter().any(|n| n == adaptclip::LEARNED_TEXT));
    // The page has no text tower: the converted file does not need one.
    let mut vision_only = clip.clone();
    vision_only.text = None;
    let conv = adaptclip::AdaptClip::from_safetensors(&vision_only, &bytes, "converted").unwrap();
    // Stored unit vectors, normalised again on reading (a last-bit difference at most).
    for (a, b) in [
        (&conv.text.fixed, &from_pth.text.fixed),
        (&conv.text.learned, &from_pth.text.learned),
    ] {
        close("stored text normal", &a.normal, &b.normal);
        close("stored text anomalous", &a.anomalous, &b.anomalous);
    }
    let refs = References::new(&[
        official_features(&exp, "prompt_", "prompt_global", 0),
        official_features(&exp, "prompt_", "prompt_global", 1),
    ])
    .unwrap();
    let f = official_features(&exp, "", "global", 1);
    for ready in [&from_pth, &conv] {
        let d = adaptclip::few_shot(&ready.learned, &ready.text, &f, &refs, (70, 70)).unwrap();
        close("converted few-shot map", &d.map, &flat(&exp["map_few"].get(1).unwrap()));
    }
    // f16 storage: within f16 rounding of the official outputs.
    let half = adaptclip::convert(&clip, &t, safetensors::Dtype::F16).unwrap();
    assert!(half.len() < bytes.len() * 6 / 10, "{} vs {}", half.len(), bytes.len());
    let h = adaptclip::AdaptClip::from_safetensors(&vision_only, &half, "f16").unwrap();
    let d = adaptclip::zero_shot(&h.learned, &h.text, &f, (70, 70)).unwrap();
    let want = flat(&exp["map_zero"].get(1).unwrap());
    let max = d.map.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max < 5e-3, "f16 zero-shot map off by {max}");
    // A converted file of another model is refused by name.
    let e = format!(
        "{:#}",
        adaptclip::AdaptClip::from_safetensors(
            &Clip::load_dir(&fixtures().join("winclip_tiny")).unwrap(),
            &bytes,
            "x.safetensors"
        )
        .unwrap_err()
    );
    assert!(
        e.contains("x.safetensors") && e.contains("not AdaptCLIP parameters for this model"),
        "{e}"
    );
}

/// The GPU path (wgpu; lavapipe where there is no GPU): zero-shot runs the shared DPAM pass on
/// the accelerator; its maps and scores against the official outputs.
#[cfg(feature = "gpu")]
#[test]
fn the_gpu_path_equals_the_official_code_zero_shot() {
    use anoscope::gpu::{GpuContext, GpuVision};
    use anoscope::model::VisionAccel;
    use std::sync::Arc;
    let exp = expected();
    let mut clip = model();
    // The official resize is set before the accelerator copies the configuration.
    anoscope::detect::learned::use_official_pos_interp(&mut clip);
    let ctx = match pollster::block_on(GpuContext::new()) {
        Ok(ctx) => ctx,
        Err(e) => {
            if std::env::var("ANOSCOPE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("ANOSCOPE_REQUIRE_GPU=1 but {e:#}");
            }
            eprintln!("SKIPPED: {e:#} (install mesa-vulkan-drivers for lavapipe)");
            return;
        }
    };
    eprintln!("GPU adapter: {}", ctx.describe());
    let g: Arc<dyn VisionAccel> = Arc::new(pollster::block_on(GpuVision::new(ctx, &clip.vision)).unwrap());
    clip.vision.accel = Some(g.clone());
    let ready = adaptclip::AdaptClip::read_file(&clip, &pth()).unwrap();
    let dets = adaptclip::detect(&clip, &ready, &exp["pixel_values"], None).unwrap();
    assert!(!g.disabled(), "the accelerator failed and the CPU took over");
    for (b, d) in dets.iter().enumerate() {
        close(
            &format!("GPU zero-shot map [{b}]"),
            &d.map,
            &flat(&exp["map_zero"].get(b).unwrap()),
        );
        close(
            &format!("GPU zero-shot score [{b}]"),
            &[d.score],
            &[flat(&exp["score_zero"])[b]],
        );
    }
}
