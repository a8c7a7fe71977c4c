//! `anoscope bench`: times the image tower or a detection mode (random weights of a named
//! architecture, or a checkpoint) after a warm-up, and prints the median per image as text or
//! JSON. The detection modes themselves are in [`anoscope::detect`].
use super::args::{use_backend, BackendOpts};
use super::emit;
use anoscope::embed::vision_flops;
use anoscope::model::random::{arch_config, random_source, ARCHS};
use anoscope::model::{Clip, ClipConfig};
use anoscope::tokenizer::ClipTokenizer;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::ValueEnum;
use std::path::PathBuf;
use std::time::Instant;

/// The flags of `anoscope bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "vit-b-16", value_parser = clap::builder::PossibleValuesParser::new(ARCHS))]
    arch: String,
    /// Use this checkpoint instead of random weights.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Threads for the matrix kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// What to time.
    #[arg(long, value_enum, default_value = "encode")]
    mode: BenchMode,
    /// Images per call: for --mode musc the batch (default 16); for encode the batch the
    /// tower runs at once (default 1), reported per image.
    #[arg(long)]
    batch: Option<usize>,
    /// Input side in pixels (default: the checkpoint's; 518 for anomalyclip and adaptclip).
    #[arg(long)]
    size: Option<usize>,
    /// Run the image tower's block linear layers in int8 (quantized at load; a q8 checkpoint
    /// always runs in int8).
    #[arg(long)]
    q8: bool,
    #[command(flatten)]
    backend: BackendOpts,
}

/// What `--mode` times.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchMode {
    /// The image tower alone.
    Encode,
    /// Fast dense mode (one pass with v-v tokens).
    Fast,
    /// WinCLIP zero-shot (full pass + all windows).
    Winclip,
    /// Text setup of one class (231 WinCLIP prompts).
    Text,
    /// MuSc over a batch (--batch images), reported per image.
    Musc,
    /// AnomalyCLIP (one DPAM pass, maps and Gaussian; default 518 px; needs ≥ 19 blocks, e.g.
    /// --arch vit-l-14-336). Not part of `all`.
    Anomalyclip,
    /// AdaptCLIP zero-shot (one DPAM pass, adapters, maps and Gaussian), with the 1-shot time
    /// (every layer's tokens on the CPU, prompt-query adapter) as `one_shot_ms`; random adapters
    /// of the published shapes; default 518 px; needs 24 blocks (--arch vit-l-14-336). Not part
    /// of `all`.
    Adaptclip,
    /// Every mode above, one line (or JSON object) each.
    All,
}

/// Median of `runs` timings (ms) after one warm-up call.
fn time_median(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = if runs % 2 == 1 {
        times[runs / 2]
    } else {
        0.5 * (times[runs / 2 - 1] + times[runs / 2])
    };
    Ok((median, times[0], times[runs - 1]))
}

/// Runs `anoscope bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        arch,
        model,
        threads,
        runs,
        json,
        mode,
        batch,
        size,
        q8,
        backend,
    } = args;
    let (arch, model) = (arch.as_str(), model.as_deref());
    use anoscope::detect::{adaptclip, anomalyclip, fast, learned, musc, prompts, winclip, TextPair, TEMPERATURE};
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's CPU kernels size their thread pools from RAYON_NUM_THREADS; nothing has
        // run yet, so this takes effect.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let threads = candle_core::utils::get_num_threads();
    let mut clip = match model {
        Some(dir) => Clip::load_dir(dir)?,
        None => {
            let (file, json) = arch_config(arch)?;
            let cfg = ClipConfig::from_json(file, &json)?;
            Clip::from_source(
                &cfg,
                &random_source(&cfg, 0, matches!(mode, BenchMode::Text | BenchMode::All))?,
            )?
        }
    };
    if q8 {
        clip.quantize_vision()?;
    }
    let learned_mode = matches!(mode, BenchMode::Anomalyclip | BenchMode::Adaptclip);
    if learned_mode {
        learned::use_official_pos_interp(&mut clip);
    }
    let size = size.unwrap_or(if learned_mode {
        learned::RUN_SIZE as usize
    } else {
        clip.cfg.vision.image_size
    });
    if size < clip.cfg.vision.patch_size || size > 4096 {
        bail!("--size must be in {}..=4096, got {size}", clip.cfg.vision.patch_size);
    }
    let encode_batch = match mode {
        BenchMode::Encode => batch.unwrap_or(1),
        _ => 1,
    };
    if encode_batch == 0 || encode_batch > 256 {
        bail!("--batch must be in 1..=256, got {encode_batch}");
    }
    let batch = batch.unwrap_or(16);
    let pixels = Tensor::randn(0f32, 1f32, (1, 3, size, size), &Device::Cpu)?;
    let encode_pixels = match encode_batch {
        1 => pixels.clone(),
        b => Tensor::randn(0f32, 1f32, (b, 3, size, size), &Device::Cpu)?,
    };
    let p = clip.cfg.embed_dim;
    let text = TextPair::new(
        Tensor::randn(0f32, 1f32, p, &Device::Cpu)?.to_vec1()?,
        Tensor::randn(0f32, 1f32, p, &Device::Cpu)?.to_vec1()?,
    )?;
    let cpu_clip = clip.clone();
    let on_gpu = use_backend(&mut clip, backend)?;
    let encode = |clip: &Clip, pixels: &Tensor| -> Result<()> {
        let out = clip
            .vision
            .forward(pixels, &anoscope::model::EncodeOptions::default())?;
        out.image_embeds.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    };
    let modes = match mode {
        BenchMode::All => {
            let mut v = vec![BenchMode::Encode, BenchMode::Fast, BenchMode::Winclip, BenchMode::Musc];
            if clip.text.is_some() {
                v.push(BenchMode::Text);
            }
            v
        }
        m => vec![m],
    };
    type Timed = (&'static str, f64, (f64, f64, f64));
    let time_mode =
        |clip: &Clip, m: BenchMode, extra: &mut serde_json::Map<String, serde_json::Value>| -> Result<Timed> {
            Ok(match m {
                BenchMode::Encode => {
                    let (m, lo, hi) = time_median(runs, || encode(clip, &encode_pixels))?;
                    let b = encode_batch as f64;
                    extra.insert("batch".into(), encode_batch.into());
                    ("encode", vision_flops(&clip.cfg, size), (m / b, lo / b, hi / b))
                }
                BenchMode::Fast => {
                    let k = fast::default_surgery_layers(clip);
                    let (enc, _, _) = time_median(runs, || encode(clip, &pixels))?;
                    let t = time_median(runs, || fast::detect(clip, &pixels, &text, k, TEMPERATURE).map(|_| ()))?;
                    extra.insert("encode_ms".into(), enc.into());
                    extra.insert("ratio_vs_encode".into(), (t.0 / enc).into());
                    extra.insert("surgery_layers".into(), k.into());
                    ("fast", vision_flops(&clip.cfg, size), t)
                }
                BenchMode::Winclip => {
                    let cfg = winclip::WinClipConfig::default();
                    let t = time_median(runs, || winclip::detect(clip, &pixels, &text, None, &cfg).map(|_| ()))?;
                    (
                        "winclip",
                        anoscope::embed::winclip_flops(&clip.cfg, size, &cfg.scales),
                        t,
                    )
                }
                BenchMode::Text => {
                    let tok = ClipTokenizer::new()?;
                    let (n, a) = prompts::winclip_ensemble("bottle");
                    extra.insert("prompts".into(), (n.len() + a.len()).into());
                    (
                        "text",
                        0.0,
                        time_median(runs, || TextPair::from_prompts(clip, &tok, &n, &a).map(|_| ()))?,
                    )
                }
                BenchMode::Anomalyclip => {
                    // The class pair is random: it costs the same as the learned one.
                    let t = time_median(runs, || anomalyclip::detect(clip, &pixels, &text).map(|_| ()))?;
                    extra.insert("dpam_blocks".into(), learned::DPAM_BLOCKS.into());
                    ("anomalyclip", vision_flops(&clip.cfg, size), t)
                }
                BenchMode::Adaptclip => {
                    let ready = adaptclip::AdaptClip::random(clip.cfg.embed_dim, clip.cfg.text.width)?;
                    let t = time_median(runs, || adaptclip::detect(clip, &ready, &pixels, None).map(|_| ()))?;
                    let refs = adaptclip::references(clip, &pixels)?;
                    let (one, _, _) = time_median(runs, || {
                        adaptclip::detect(clip, &ready, &pixels, Some(&refs)).map(|_| ())
                    })?;
                    extra.insert("one_shot_ms".into(), one.into());
                    ("adaptclip", vision_flops(&clip.cfg, size), t)
                }
                BenchMode::All => unreachable!("expanded above"),
                BenchMode::Musc => {
                    if batch < 2 {
                        bail!("--batch must be at least 2 for MuSc");
                    }
                    let px = Tensor::randn(0f32, 1f32, (batch, 3, size, size), &Device::Cpu)?;
                    let cfg = musc::MuscConfig::default();
                    let (m, lo, hi) = time_median(runs, || musc::detect(clip, &px, &cfg).map(|_| ()))?;
                    extra.insert("batch".into(), batch.into());
                    extra.insert("batch_ms".into(), m.into());
                    let b = batch as f64;
                    ("musc", 0.0, (m / b, lo / b, hi / b))
                }
            })
        };
    for m in modes {
        let mut extra = serde_json::Map::new();
        let (label, flops, (median, lo, hi)) = time_mode(&clip, m, &mut extra)?;
        extra.insert("backend".into(), if on_gpu { "gpu" } else { "cpu" }.into());
        extra.insert("int8".into(), clip.vision.w.is_q8().into());
        if let Some(kernel) = clip.vision.w.blocks.first().and_then(|b| b.fc1.int8_kernel()) {
            extra.insert("int8_kernel".into(), kernel.into());
        }
        if on_gpu && m != BenchMode::Text {
            // The baseline, measured in the same run.
            let (_, _, (cpu, _, _)) = time_mode(&cpu_clip, m, &mut serde_json::Map::new())?;
            extra.insert("cpu_ms".into(), cpu.into());
            extra.insert("speedup_vs_cpu".into(), (cpu / median).into());
        }
        let gflops = if flops > 0.0 {
            flops / (median * 1e-3) / 1e9
        } else {
            0.0
        };
        let arch_name = match model {
            Some(dir) => format!("checkpoint {}", dir.display()),
            None => arch.to_string(),
        };
        if json {
            let mut obj = serde_json::json!({
                "arch": arch_name, "mode": label, "size": size, "threads": threads, "runs": runs, "ms": median,
                "gflops": gflops, "images_per_s": 1e3 / median,
            });
            if m == BenchMode::Encode {
                obj["encode_ms"] = median.into();
            }
            let map = obj.as_object_mut().expect("object");
            map.extend(extra);
            emit(&obj.to_string());
        } else {
            let per = if m == BenchMode::Text { "per class" } else { "per image" };
            emit(&format!(
                "{arch_name} {label} at {size}px, {threads} thread(s): median {median:.1} ms {per} ({:.2}/s) over \
                 {runs} runs (min {lo:.1}, max {hi:.1}){}{}",
                1e3 / median,
                if flops > 0.0 {
                    format!("; {:.1} GFLOP, {gflops:.1} GFLOP/s", flops / 1e9)
                } else {
                    String::new()
                },
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("; {}", serde_json::Value::Object(extra))
                }
            ));
        }
    }
    Ok(())
}
