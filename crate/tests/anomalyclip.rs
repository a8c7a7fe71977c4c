//! AnomalyCLIP equals the official code (`zqhang/AnomalyCLIP`) on the fixtures that
//! `tests/reference/make_learned_fixtures.py` made with it: a tiny random 24-block CLIP, random
//! learned prompts saved in the official checkpoint format, run at 42 px (checkpoint grid 4×4,
//! run grid 6×6). Text features, global features, DPAM tokens, maps before and after the
//! Gaussian and the scores within 1e-4; the learned file read from the torch pickle and from its
//! safetensors conversion.
mod common;
use anoscope::detect::anomalyclip::{detect, LearnedPrompts, TEXT_FEATURES};
use anoscope::detect::learned::{dpam_on, use_official_pos_interp};
use anoscope::detect::passes::now;
use anoscope::model::Clip;
use candle_core::Tensor;
use common::{fixtures, flat, load};
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    eprintln!("max |Δ| = {d:.2e} over {} values", a.len());
    d
}

fn model() -> Clip {
    let mut clip = Clip::load_dir(&fixtures().join("anomalyclip_tiny")).unwrap();
    use_official_pos_interp(&mut clip);
    clip
}

fn expected() -> HashMap<String, Tensor> {
    load(&fixtures().join("anomalyclip_tiny_expected.safetensors"))
}

fn pth() -> std::path::PathBuf {
    fixtures().join("anomalyclip_tiny/learned.pth")
}

#[test]
fn text_features_equal_the_official_code() {
    let clip = model();
    let exp = flat(&expected()["text_features"]);
    let learned = LearnedPrompts::read_file(&pth()).unwrap();
    assert_eq!(learned.ctx_normal.dims(), &[12, 8]);
    assert_eq!(learned.deep.len(), 8);
    assert_eq!(learned.deep[0].dims(), &[4, 8]);
    assert!(learned.tokens.is_some() && learned.text_features.is_none());
    let pair = learned.text_pair(&clip).unwrap();
    let got = [pair.normal.clone(), pair.anomalous.clone()].concat();
    let d = max_diff(&got, &exp);
    assert!(d < TOL, "text features max |Δ| {d}");
    // Without the stored token embeddings, the text tower's own table gives the same prompts.
    let mut no_tokens = learned.clone();
    no_tokens.tokens = None;
    let p2 = no_tokens.text_pair(&clip).unwrap();
    let d = max_diff(&[p2.normal, p2.anomalous].concat(), &exp);
    assert!(d < TOL, "text features (token table) max |Δ| {d}");
    // The deep prompts matter, and so does their float16 rounding.
    let mut shallow = learned.clone();
    shallow.deep.iter_mut().for_each(|t| *t = (&*t * 1.001).unwrap());
    let p3 = shallow.compute_text_pair(&clip).unwrap();
    let d = max_diff(&[p3.normal, p3.anomalous].concat(), &exp);
    assert!(d > 1e-5, "perturbed deep prompts changed nothing ({d})");
}

#[test]
fn maps_and_scores_equal_the_official_code() {
    check_maps_and_scores(&model());
}

/// The DPAM features, maps and scores of `clip` (CPU, or with an accelerator) against the
/// official outputs.
fn check_maps_and_scores(clip: &Clip) {
    let exp = expected();
    let pixels = &exp["pixel_values"];
    let learned = LearnedPrompts::read_file(&pth()).unwrap();
    let pair = learned.text_pair(clip).unwrap();
    // The encoder pieces first.
    let f = now(dpam_on(clip, &clip.vision, pixels)).unwrap();
    assert_eq!(f.grid, (6, 6));
    let d = max_diff(&f.global.concat(), &flat(&exp["image_features"]));
    assert!(d < TOL, "global features max |Δ| {d}");
    let toks: Vec<f32> = f.patches.iter().flatten().flatten().copied().collect();
    let d = max_diff(&toks, &flat(&exp["patch_tokens"]));
    assert!(d < TOL, "DPAM patch tokens max |Δ| {d}");
    // Then the mode.
    let dets = detect(clip, pixels, &pair).unwrap();
    assert_eq!(dets.len(), 2);
    let raw = flat(&exp["maps_raw"]);
    let maps = flat(&exp["maps"]);
    let scores = flat(&exp["scores"]);
    for (i, det) in dets.iter().enumerate() {
        assert_eq!((det.height, det.width, det.grid), (42, 42, (6, 6)));
        let up = anoscope::detect::aggregate::bilinear_resize(&det.grid_map, 6, 6, 42, 42);
        let d = max_diff(&up, &raw[i * 1764..(i + 1) * 1764]);
        assert!(d < TOL, "image {i}: map before the Gaussian max |Δ| {d}");
        let d = max_diff(&det.map, &maps[i * 1764..(i + 1) * 1764]);
        assert!(d < TOL, "image {i}: map max |Δ| {d}");
        assert!(
            (det.score - scores[i]).abs() < TOL,
            "image {i}: score {} vs {}",
            det.score,
            scores[i]
        );
    }
    // The maps are not flat, so the comparison means something.
    let spread = maps.iter().fold(f32::MIN, |a, &b| a.max(b)) - maps.iter().fold(f32::MAX, |a, &b| a.min(b));
    assert!(spread > 0.01, "{spread}");
}

#[test]
fn safetensors_conversion_keeps_the_outputs_and_drops_the_projections() {
    let clip = model();
    let exp = flat(&expected()["text_features"]);
    let learned = LearnedPrompts::read_file(&pth()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (dtype, with_text) in [(safetensors::Dtype::F32, false), (safetensors::Dtype::F16, true)] {
        let pair = learned.text_pair(&clip).unwrap();
        let bytes = learned.to_safetensors(dtype, with_text.then_some(&pair)).unwrap();
        let path = dir.path().join("learned.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let names: Vec<String> = load(&path).into_keys().collect();
        assert!(
            names.iter().all(|n| !n.starts_with("compound_prompt_projections")),
            "{names:?}"
        );
        assert!(names.contains(&"compound_prompts_text.7".to_string()));
        assert_eq!(names.contains(&TEXT_FEATURES.to_string()), with_text);
        let back = LearnedPrompts::read_file(&path).unwrap();
        assert_eq!(back.text_features.is_some(), with_text);
        // float16 storage loses nothing that matters: ctx and token buffers were float16
        // already and the deep prompts are rounded through float16 by the model itself.
        let p = back.compute_text_pair(&clip).unwrap();
        let d = max_diff(&[p.normal, p.anomalous].concat(), &exp);
        assert!(d < TOL, "{dtype:?}: text features max |Δ| {d}");
        if with_text {
            let p = back.text_pair(&clip).unwrap();
            let d = max_diff(&[p.normal, p.anomalous].concat(), &exp);
            assert!(d < 2e-3, "stored f16 text features max |Δ| {d}");
        }
    }
}

#[test]
fn bad_learned_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("x.pth");
    std::fs::write(&garbage, b"not a zip").unwrap();
    let e = format!("{:#}", LearnedPrompts::read_file(&garbage).unwrap_err());
    assert!(e.contains("not a torch checkpoint"), "{e}");
    let st = dir.path().join("x.safetensors");
    std::fs::write(&st, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    let e = format!("{:#}", LearnedPrompts::read_file(&st).unwrap_err());
    assert!(e.contains("missing tensor `ctx_pos`"), "{e}");
    let e = format!(
        "{:#}",
        LearnedPrompts::read_file(&dir.path().join("none.pth")).unwrap_err()
    );
    assert!(e.contains("cannot read"), "{e}");
    // Prompts of another width than the text tower.
    let mut m = HashMap::new();
    let dev = candle_core::Device::Cpu;
    m.insert(
        "ctx_pos".into(),
        Tensor::zeros((1, 1, 12, 12), candle_core::DType::F32, &dev).unwrap(),
    );
    m.insert(
        "ctx_neg".into(),
        Tensor::zeros((1, 1, 12, 12), candle_core::DType::F32, &dev).unwrap(),
    );
    m.insert(
        "compound_prompts_text.0".into(),
        Tensor::zeros((4, 12), candle_core::DType::F32, &dev).unwrap(),
    );
    let l = LearnedPrompts::from_tensors(&m, "m").unwrap();
    let e = format!("{:#}", l.text_pair(&model()).unwrap_err());
    assert!(e.contains("12 wide"), "{e}");
    m.remove("compound_prompts_text.0");
    let e = format!("{:#}", LearnedPrompts::from_tensors(&m, "m").unwrap_err());
    assert!(e.contains("compound_prompts_text.0"), "{e}");
}

/// The GPU path (wgpu; lavapipe where there is no GPU) against the same official outputs.
#[cfg(feature = "gpu")]
#[test]
fn the_gpu_path_equals_the_official_code() {
    use anoscope::gpu::{GpuContext, GpuVision};
    use anoscope::model::VisionAccel;
    use std::sync::Arc;
    // The official resize is set before the accelerator copies the configuration.
    let mut clip = model();
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
    check_maps_and_scores(&clip);
    assert!(!g.disabled(), "the GPU must not have fallen back to the CPU");
}
