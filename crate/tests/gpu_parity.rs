//! The image tower on the GPU (wgpu; Mesa's lavapipe CPU Vulkan adapter in CI) against the CPU
//! tower and the reference fixtures, the detection modes on the GPU, and the CPU fallback.
//!
//! Without any adapter the GPU tests print why and pass, unless `ANOSCOPE_REQUIRE_GPU=1` (CI),
//! where a missing adapter fails them.
#![cfg(feature = "gpu")]
mod common;

use anoscope::detect::musc::{self, MuscConfig};
use anoscope::detect::winclip::{self, WinClipConfig};
use anoscope::detect::{fast, TextPair, TEMPERATURE};
use anoscope::gpu::{GpuContext, GpuVision, WeightStorage};
use anoscope::model::{Clip, EncodeOptions, VisionAccel, VisionOutput};
use candle_core::{Device, Tensor};
use common::{fixtures, flat, load};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// GPU against CPU (f32 weights, f32 arithmetic in another order).
const TOL: f32 = 1e-3;
/// GPU with an f32 checkpoint's matrices rounded to f16 against the CPU, relative to the largest
/// |value| of the output.
const F16_REL_TOL: f32 = 1e-2;

fn expected(layout: &str) -> HashMap<String, Tensor> {
    load(&fixtures().join(format!("{layout}_expected.safetensors")))
}

fn model(name: &str) -> Clip {
    Clip::load_dir(&fixtures().join(name)).unwrap()
}

/// A GPU context, or `None` (after saying why) when this machine has no adapter.
fn context() -> Option<GpuContext> {
    match pollster::block_on(GpuContext::new()) {
        Ok(ctx) => {
            eprintln!("GPU adapter: {}", ctx.describe());
            Some(ctx)
        }
        Err(e) => {
            if std::env::var("ANOSCOPE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("ANOSCOPE_REQUIRE_GPU=1 but {e:#} (install mesa-vulkan-drivers for lavapipe)");
            }
            eprintln!("SKIPPED: {e:#} (install mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}

fn gpu(clip: &Clip) -> Option<GpuVision> {
    let ctx = context()?;
    Some(pollster::block_on(GpuVision::new(ctx, &clip.vision)).unwrap())
}

/// Asserts equal shapes and max |Δ| ≤ `tol` on a reference that is not (near) zero.
fn close(what: &str, ours: &Tensor, want: &Tensor, tol: f32) -> f32 {
    assert_eq!(ours.dims(), want.dims(), "{what}: shape");
    let (a, b) = (flat(ours), flat(want));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
    eprintln!("{what}: max |Δ| = {max:.3e} (max |value| {scale:.3})");
    assert!(max.is_finite() && max <= tol, "{what}: max |Δ| = {max} > {tol}");
    assert!(
        scale > 1e-3,
        "{what}: reference is (near) zero, the test would prove nothing"
    );
    max
}

/// The image tower's main outputs of `out` against `cpu` under the f16-storage bound (relative
/// to each output's largest |value|); returns each output's max |Δ|.
fn close_f16(what: &str, out: &VisionOutput, cpu: &VisionOutput) -> Vec<f32> {
    let pairs = [
        ("image_embeds", &out.image_embeds, &cpu.image_embeds),
        ("patch_tokens", &out.patch_tokens, &cpu.patch_tokens),
        (
            "surgery_tokens",
            out.surgery_tokens.as_ref().unwrap(),
            cpu.surgery_tokens.as_ref().unwrap(),
        ),
        ("last_hidden_state", &out.last_hidden_state, &cpu.last_hidden_state),
    ];
    pairs
        .into_iter()
        .map(|(name, a, b)| {
            let scale = flat(b).iter().map(|x| x.abs()).fold(0f32, f32::max);
            close(&format!("{what} f16-stored {name}"), a, b, F16_REL_TOL * scale)
        })
        .collect()
}

/// `f16_checkpoint`: the layout's fixture stores f16 weights, so `WeightStorage::Auto` keeps them
/// in f16 on the GPU (where the adapter has `shader-f16`; lavapipe has) at no loss.
fn check_tower(layout: &str, f16_checkpoint: bool) {
    let clip = model(layout);
    let Some(g) = gpu(&clip) else { return };
    eprintln!("{layout}: weights stored in {}", if g.half() { "f16" } else { "f32" });
    assert_eq!(g.half(), f16_checkpoint && g.ctx().has_f16());
    let exp = expected(layout);
    let pixels = &exp["pixel_values"];
    for (surgery, hidden) in [(2, vec![0, 1]), (1, vec![])] {
        let opts = EncodeOptions {
            hidden_layers: hidden,
            surgery_layers: surgery,
        };
        let cpu = clip.vision.forward(pixels, &opts).unwrap();
        let out = pollster::block_on(g.forward(pixels, &opts)).unwrap();
        assert_eq!(out.grid, cpu.grid);
        let name = |s: &str| format!("{layout} k{surgery} {s}");
        close(&name("image_embeds"), &out.image_embeds, &cpu.image_embeds, TOL);
        close(
            &name("image_embeds vs reference"),
            &out.image_embeds,
            &exp["image_embeds"],
            TOL,
        );
        close(&name("patch_tokens"), &out.patch_tokens, &cpu.patch_tokens, TOL);
        close(
            &name("patch_tokens vs reference"),
            &out.patch_tokens,
            &exp["patch_tokens"],
            TOL,
        );
        close(
            &name("last_hidden_state"),
            &out.last_hidden_state,
            &cpu.last_hidden_state,
            TOL,
        );
        let s = out.surgery_tokens.as_ref().unwrap();
        close(&name("surgery_tokens"), s, cpu.surgery_tokens.as_ref().unwrap(), TOL);
        close(
            &name("surgery_tokens vs reference"),
            s,
            &exp[&format!("surgery_tokens_k{surgery}")],
            TOL,
        );
        assert_eq!(out.hidden_states.len(), cpu.hidden_states.len());
        for ((l, h), (lc, hc)) in out.hidden_states.iter().zip(&cpu.hidden_states) {
            assert_eq!(l, lc);
            close(&name(&format!("hidden_state_{l}")), h, hc, TOL);
            close(
                &name(&format!("hidden_state_{l} vs reference")),
                h,
                &exp[&format!("hidden_state_{l}")],
                TOL,
            );
        }
    }
    // Another input size: resampled position embeddings, grown scratch buffers.
    let out = pollster::block_on(g.forward(&exp["pixel_values_48"], &EncodeOptions::default())).unwrap();
    assert_eq!(out.grid, (6, 6));
    close(
        &format!("{layout} image_embeds_48"),
        &out.image_embeds,
        &exp["image_embeds_48"],
        TOL,
    );
    close(
        &format!("{layout} patch_tokens_48"),
        &out.patch_tokens,
        &exp["patch_tokens_48"],
        TOL,
    );
    assert!(out.surgery_tokens.is_none() && out.hidden_states.is_empty());
    // Back to the first size: the reused buffers give the same numbers again.
    let opts = EncodeOptions::default();
    let again = pollster::block_on(g.forward(pixels, &opts)).unwrap();
    close(
        &format!("{layout} image_embeds after resizing"),
        &again.image_embeds,
        &exp["image_embeds"],
        TOL,
    );
    // Token-subset passes (WinCLIP windows), from the CPU embeddings.
    let idx: Vec<i64> = exp["window_indices"].flatten_all().unwrap().to_vec1().unwrap();
    let k = exp["window_indices"].dim(1).unwrap();
    let subsets: Vec<Vec<usize>> = idx.chunks(k).map(|c| c.iter().map(|&i| i as usize).collect()).collect();
    for b in 0..pixels.dim(0).unwrap() {
        let emb = clip.vision.embed(&pixels.narrow(0, b, 1).unwrap()).unwrap();
        let got = pollster::block_on(g.forward_subsets(&emb, &subsets)).unwrap();
        let cpu = clip.vision.forward_subsets(&emb, &subsets, 4).unwrap();
        close(&format!("{layout} window_embeds[{b}]"), &got, &cpu, TOL);
        close(
            &format!("{layout} window_embeds[{b}] vs reference"),
            &got,
            &exp["window_embeds"].get(b).unwrap(),
            TOL,
        );
        // And a full pass from the same embeddings.
        let grid = clip
            .vision
            .grid_for(pixels.dim(2).unwrap(), pixels.dim(3).unwrap())
            .unwrap();
        let full = pollster::block_on(g.forward_embedded(&emb, grid, &EncodeOptions::default())).unwrap();
        close(
            &format!("{layout} forward_embedded[{b}]"),
            &full.image_embeds,
            &exp["image_embeds"].narrow(0, b, 1).unwrap(),
            TOL,
        );
    }
}

#[test]
fn hf_tower_on_the_gpu_matches_the_cpu_and_transformers() {
    check_tower("hf_tiny", true);
}

#[test]
fn openclip_tower_on_the_gpu_matches_the_cpu_and_open_clip() {
    check_tower("openclip_tiny", false);
}

/// f16 weight storage forced on an f32 checkpoint rounds the matrices: a looser bound, relative to
/// the outputs' scale; f32 storage forced on an f16 checkpoint changes nothing.
#[test]
fn f16_weight_storage_has_a_stated_bound_and_f32_can_be_forced() {
    let Some(ctx) = context() else { return };
    if !ctx.has_f16() {
        eprintln!("SKIPPED: {} has no shader-f16", ctx.describe());
        return;
    }
    let clip = model("openclip_tiny");
    let exp = expected("openclip_tiny");
    let pixels = &exp["pixel_values"];
    let opts = EncodeOptions {
        hidden_layers: vec![],
        surgery_layers: 2,
    };
    let cpu = clip.vision.forward(pixels, &opts).unwrap();
    let g = pollster::block_on(GpuVision::with_storage(ctx.clone(), &clip.vision, WeightStorage::F16)).unwrap();
    assert!(g.half());
    let out = pollster::block_on(g.forward(pixels, &opts)).unwrap();
    for max in close_f16("openclip_tiny", &out, &cpu) {
        // f16 rounding shows: the test would pass for the wrong reason if it did not.
        assert!(max > 1e-7, "f16 storage left no trace ({max:e})");
    }
    let hf = model("hf_tiny");
    let exp = expected("hf_tiny");
    let g = pollster::block_on(GpuVision::with_storage(ctx, &hf.vision, WeightStorage::F32)).unwrap();
    assert!(!g.half());
    let out = pollster::block_on(g.forward(&exp["pixel_values"], &EncodeOptions::default())).unwrap();
    close(
        "f32-stored hf_tiny image_embeds",
        &out.image_embeds,
        &exp["image_embeds"],
        TOL,
    );
}

#[test]
fn detection_modes_on_the_gpu_match_the_cpu() {
    let exp = load(&fixtures().join("winclip_tiny_expected.safetensors"));
    let cpu = model("winclip_tiny");
    let Some(g) = gpu(&cpu) else { return };
    let mut on_gpu = cpu.clone();
    let g: Arc<dyn VisionAccel> = Arc::new(g);
    on_gpu.vision.accel = Some(g.clone());
    let t = exp["text_embeddings"].to_vec2::<f32>().unwrap();
    let text = TextPair::new(t[0].clone(), t[1].clone()).unwrap();
    let pixels = &exp["pixel_values"];
    let maps = |what: &str, a: &[anoscope::detect::Detection], b: &[anoscope::detect::Detection]| {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (x.score - y.score).abs();
            eprintln!("{what}[{i}] score: |Δ| = {d:.3e}");
            assert!(d <= TOL, "{what}[{i}] score: {} vs {}", x.score, y.score);
            let gm = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
            close(
                &format!("{what}[{i}] grid map"),
                &gm(&x.grid_map),
                &gm(&y.grid_map),
                TOL,
            );
            close(&format!("{what}[{i}] map"), &gm(&x.map), &gm(&y.map), TOL);
        }
    };
    let k = fast::default_surgery_layers(&cpu);
    maps(
        "fast",
        &fast::detect(&on_gpu, pixels, &text, k, TEMPERATURE).unwrap(),
        &fast::detect(&cpu, pixels, &text, k, TEMPERATURE).unwrap(),
    );
    let cfg = WinClipConfig::default();
    maps(
        "winclip",
        &winclip::detect(&on_gpu, pixels, &text, None, &cfg).unwrap(),
        &winclip::detect(&cpu, pixels, &text, None, &cfg).unwrap(),
    );
    // MuSc: a batch with hidden states from several layers.
    let musc_px = &load(&fixtures().join("musc_tiny_expected.safetensors"))["musc_pixel_values"];
    let cfg = MuscConfig {
        layers: vec![1, 2, 3],
        ..Default::default()
    };
    let (a, b) = (
        musc::detect(&on_gpu, musc_px, &cfg).unwrap(),
        musc::detect(&cpu, musc_px, &cfg).unwrap(),
    );
    maps("musc", &a.detections, &b.detections);
    assert!(!g.disabled(), "the GPU must not have fallen back to the CPU");
}

#[test]
fn bad_inputs_are_clear_errors_on_the_gpu() {
    let clip = model("hf_tiny");
    let Some(g) = gpu(&clip) else { return };
    let two = Tensor::zeros((1, 2, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = pollster::block_on(g.forward(&two, &EncodeOptions::default())).unwrap_err();
    assert!(format!("{e:#}").contains("3 channels"), "{e:#}");
    let tiny = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = pollster::block_on(g.forward(&tiny, &EncodeOptions::default())).unwrap_err();
    assert!(format!("{e:#}").contains("smaller than one"), "{e:#}");
    let emb = clip
        .vision
        .embed(&Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let e = pollster::block_on(g.forward_subsets(&emb, &[vec![0, 1], vec![2]])).unwrap_err();
    assert!(format!("{e:#}").contains("one length"), "{e:#}");
    let e = pollster::block_on(g.forward_subsets(&emb, &[vec![0, 10_000]])).unwrap_err();
    assert!(format!("{e:#}").contains("below"), "{e:#}");
    let ok = pollster::block_on(g.forward_subsets(&emb, &[])).unwrap();
    assert_eq!(ok.dims(), &[0, clip.cfg.embed_dim]);
}

/// Runs the binary with extra environment variables: (success, stderr).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_anoscope"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    (out.status.success(), stderr)
}

/// `anoscope embed` of the first fixture image (v-v path on) with `backend` into `dir/name`.
fn embed(
    dir: &Path,
    name: &str,
    backend: &str,
    env: &[(&str, &str)],
) -> (bool, String, Option<HashMap<String, Tensor>>) {
    let px = dir.join("px.safetensors");
    if !px.exists() {
        let exp = expected("hf_tiny");
        let one = exp["pixel_values"].narrow(0, 0, 1).unwrap();
        std::fs::write(
            &px,
            anoscope::embed::to_safetensors(&[("pixel_values".into(), one)]).unwrap(),
        )
        .unwrap();
    }
    let out = dir.join(name);
    let model = fixtures().join("hf_tiny");
    let (ok, err) = run_env(
        &[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--pixels",
            px.to_str().unwrap(),
            "--surgery-layers",
            "1",
            "--backend",
            backend,
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    );
    (ok, err, ok.then(|| load(&out)))
}

fn same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut keys: Vec<_> = a.keys().collect();
    keys.sort();
    assert_eq!(keys, {
        let mut k: Vec<_> = b.keys().collect();
        k.sort();
        k
    });
    for k in keys {
        assert_eq!(flat(&a[k]), flat(&b[k]), "{k} differs from the CPU path");
    }
}

#[test]
fn without_an_adapter_auto_runs_on_the_cpu_and_gpu_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fail = [("ANOSCOPE_GPU_FAIL", "adapter")];
    let (ok, err, cpu) = embed(dir.path(), "cpu.safetensors", "cpu", &[]);
    assert!(ok, "{err}");
    assert!(err.contains("encoder: CPU"), "{err}");
    let (ok, err, auto) = embed(dir.path(), "auto.safetensors", "auto", &fail);
    assert!(ok, "{err}");
    assert!(err.contains("encoder: CPU (no usable GPU: no GPU adapter"), "{err}");
    same(&auto.unwrap(), cpu.as_ref().unwrap());
    let (ok, err, _) = embed(dir.path(), "gpu.safetensors", "gpu", &fail);
    assert!(!ok);
    assert!(err.contains("--backend gpu: no GPU adapter"), "{err}");
    assert!(!dir.path().join("gpu.safetensors").exists());
}

#[test]
fn a_failing_gpu_falls_back_to_the_cpu_with_a_message() {
    let Some(ctx) = context() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ok, err, cpu) = embed(dir.path(), "cpu.safetensors", "cpu", &[]);
    assert!(ok, "{err}");
    let cpu = cpu.unwrap();
    // `auto` takes a hardware adapter, and leaves a software one (lavapipe) for the CPU path.
    let (ok, err, auto) = embed(dir.path(), "auto.safetensors", "auto", &[]);
    assert!(ok, "{err}");
    if ctx.adapter.device_type == wgpu::DeviceType::Cpu {
        assert!(err.contains("encoder: CPU (no usable GPU: the only adapter"), "{err}");
        same(&auto.unwrap(), &cpu);
    } else {
        assert!(err.contains("encoder: GPU"), "{err}");
    }
    // A working GPU: says so, and agrees with the CPU within the tolerance.
    let (ok, err, on_gpu) = embed(dir.path(), "gpu.safetensors", "gpu", &[]);
    assert!(ok, "{err}");
    assert!(err.contains("encoder: GPU"), "{err}");
    // hf_tiny's checkpoint is f16: stored so on the GPU where the adapter allows.
    let want = if ctx.has_f16() { "f16 weights" } else { "f32 weights" };
    assert!(
        err.lines().any(|l| l.starts_with("encoder: GPU") && l.ends_with(want)),
        "{err}"
    );
    let model = fixtures().join("hf_tiny");
    let bench_gpu = |weights: &str| {
        let args = [
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "gpu",
            "--runs",
            "1",
        ];
        run_env(&[&args[..], &["--gpu-weights", weights]].concat(), &[])
    };
    let (ok, err) = bench_gpu("f32");
    assert!(ok, "{err}");
    assert!(err.contains("encoder: GPU") && err.contains("f32 weights"), "{err}");
    let (ok, err) = bench_gpu("f8");
    assert!(!ok && err.contains("invalid value 'f8'"), "{err}");
    let on_gpu = on_gpu.unwrap();
    for (k, t) in &cpu {
        close(&format!("cli {k}"), &on_gpu[k], t, TOL);
    }
    // A GPU lost at the first pass: the message, then exactly the CPU's numbers.
    let (ok, err, fell_back) = embed(
        dir.path(),
        "lost.safetensors",
        "gpu",
        &[("ANOSCOPE_GPU_FAIL", "forward")],
    );
    assert!(ok, "{err}");
    assert!(err.contains("encoder: GPU"), "{err}");
    assert!(
        err.contains("GPU device lost (forced by ANOSCOPE_GPU_FAIL=forward)); falling back to the CPU"),
        "{err}"
    );
    same(&fell_back.unwrap(), &cpu);
}

/// Full-size ViT-B/16 (random weights) on the GPU against the CPU. Slow on a CPU adapter:
/// `cargo test --release --test gpu_parity -- --ignored --nocapture`.
#[test]
#[ignore]
fn vit_b16_on_the_gpu_matches_the_cpu() {
    use anoscope::model::random::{arch_config, random_source};
    use anoscope::model::ClipConfig;
    let (file, json) = arch_config("vit-b-16").unwrap();
    let cfg = ClipConfig::from_json(file, &json).unwrap();
    let clip = Clip::from_source(&cfg, &random_source(&cfg, 0, false).unwrap()).unwrap();
    let Some(g) = gpu(&clip) else { return };
    let pixels = Tensor::randn(0f32, 1f32, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let opts = EncodeOptions {
        hidden_layers: vec![6],
        surgery_layers: 6,
    };
    let cpu = clip.vision.forward(&pixels, &opts).unwrap();
    let out = pollster::block_on(g.forward(&pixels, &opts)).unwrap();
    close("vit-b-16 image_embeds", &out.image_embeds, &cpu.image_embeds, TOL);
    close("vit-b-16 patch_tokens", &out.patch_tokens, &cpu.patch_tokens, TOL);
    close(
        "vit-b-16 surgery_tokens",
        out.surgery_tokens.as_ref().unwrap(),
        cpu.surgery_tokens.as_ref().unwrap(),
        TOL,
    );
    close(
        "vit-b-16 hidden_state_6",
        &out.hidden_states[0].1,
        &cpu.hidden_states[0].1,
        TOL,
    );
    close(
        "vit-b-16 last_hidden_state",
        &out.last_hidden_state,
        &cpu.last_hidden_state,
        TOL,
    );
    // WinCLIP windows (3×3 of the 14×14 grid, first 64).
    let emb = clip.vision.embed(&pixels).unwrap();
    let subsets: Vec<Vec<usize>> = (0..64)
        .map(|w| {
            let (r, c) = (w / 8, w % 8);
            (0..9).map(|i| (r + i / 3) * 14 + c + i % 3).collect()
        })
        .collect();
    let got = pollster::block_on(g.forward_subsets(&emb, &subsets)).unwrap();
    let want = clip.vision.forward_subsets(&emb, &subsets, 64).unwrap();
    close("vit-b-16 window_embeds", &got, &want, TOL);
    // The f32 checkpoint's matrices rounded to f16 on the GPU (where the adapter allows).
    if !g.ctx().has_f16() {
        eprintln!(
            "vit-b-16 f16 storage: SKIPPED ({} has no shader-f16)",
            g.ctx().describe()
        );
        return;
    }
    drop(g);
    let ctx = context().unwrap();
    let g = pollster::block_on(GpuVision::with_storage(ctx, &clip.vision, WeightStorage::F16)).unwrap();
    let out = pollster::block_on(g.forward(&pixels, &opts)).unwrap();
    close_f16("vit-b-16", &out, &cpu);
    let got = pollster::block_on(g.forward_subsets(&emb, &subsets)).unwrap();
    let scale = flat(&want).iter().map(|x| x.abs()).fold(0f32, f32::max);
    close("vit-b-16 f16-stored window_embeds", &got, &want, F16_REL_TOL * scale);
}
