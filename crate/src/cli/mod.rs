//! The command line: the clap definitions, parsing and dispatch, and the subcommands that do not
//! have a file of their own yet.
mod detect;
mod eval;
use anoscope::embed::{embed_image, embed_text, to_safetensors, vision_flops};
use anoscope::model::random::{arch_config, random_source, write_random_checkpoint, StoreDtype, ARCHS};
use anoscope::model::{Clip, ClipConfig};
use anoscope::preprocess::{self, ImageLimits, Normalize};
use anoscope::tokenizer::ClipTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "anoscope", version, about = "Zero-shot visual anomaly detection with CLIP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preprocess {
    /// Shortest side to the size (bicubic), then center crop (CLIP / open_clip).
    Clip,
    /// Plain bicubic resize to a square (WinCLIP).
    Resize,
}

/// Which encoder runs the image tower.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BackendArg {
    /// The GPU (wgpu: Vulkan, Metal, DX12) when an adapter is available, else the CPU.
    Auto,
    /// The GPU; an error when there is no adapter.
    Gpu,
    /// The CPU.
    Cpu,
}

/// How the GPU stores the matrix weights (arithmetic is f32 either way).
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GpuWeightsArg {
    /// f16 when the checkpoint's matrices are f16 values and the adapter has shader-f16.
    Auto,
    F32,
    /// f16 (rounds an f32 checkpoint; needs shader-f16).
    F16,
}

/// The encoder options shared by embed, detect and bench.
#[derive(Args, Clone, Copy)]
pub(crate) struct BackendOpts {
    /// Encoder for the image tower (with bench and the GPU, the CPU is timed too, for the
    /// ratio).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// How the GPU stores the matrix weights.
    #[arg(long, value_enum, default_value = "auto")]
    gpu_weights: GpuWeightsArg,
}

/// Installs the chosen encoder on `clip` and says on stderr which one runs. Returns whether
/// the GPU runs. A GPU that fails later falls back to the CPU with a message.
pub(crate) fn use_backend(clip: &mut Clip, opts: BackendOpts) -> Result<bool> {
    let BackendOpts { backend, gpu_weights } = opts;
    #[cfg(feature = "gpu")]
    {
        use anoscope::gpu::{Backend, WeightStorage};
        let b = match backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Gpu => Backend::Gpu,
            BackendArg::Cpu => Backend::Cpu,
        };
        let w = match gpu_weights {
            GpuWeightsArg::Auto => WeightStorage::Auto,
            GpuWeightsArg::F32 => WeightStorage::F32,
            GpuWeightsArg::F16 => WeightStorage::F16,
        };
        eprintln!("{}", anoscope::gpu::attach(clip, b, w)?);
        Ok(clip.vision.accel.is_some())
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = (clip, gpu_weights);
        if let BackendArg::Gpu = backend {
            bail!("--backend gpu: this build has no GPU support (built without the `gpu` feature)");
        }
        eprintln!("encoder: CPU (built without the `gpu` feature)");
        Ok(false)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
}

#[derive(Subcommand)]
enum Cmd {
    /// Encode one image: image embedding, projected patch tokens, hidden states, v-v tokens.
    Embed {
        /// Checkpoint directory (Hugging Face or open_clip layout).
        #[arg(long)]
        model: PathBuf,
        /// Image file (PNG, JPEG, WebP, BMP, GIF, TIFF).
        #[arg(long, conflicts_with = "pixels", required_unless_present = "pixels")]
        image: Option<PathBuf>,
        /// Already-normalised input: safetensors with `pixel_values` [1,3,H,W].
        #[arg(long)]
        pixels: Option<PathBuf>,
        /// Input side in pixels for --image (default: the checkpoint's image size).
        #[arg(long, requires = "image")]
        size: Option<u32>,
        /// Preprocessing for --image.
        #[arg(long, value_enum, default_value = "clip", requires = "image")]
        preprocess: Preprocess,
        /// Run the value-to-value (CLIP Surgery) path in the last K blocks.
        #[arg(long, value_name = "K")]
        surgery_layers: Option<usize>,
        /// Also write these hidden states (0 = after ln_pre, i = output of block i).
        #[arg(long, value_delimiter = ',', value_name = "L,L,...")]
        hidden_layers: Vec<usize>,
        #[command(flatten)]
        backend: BackendOpts,
        #[arg(long)]
        out: PathBuf,
    },
    /// Encode prompts with the text tower.
    EmbedText {
        #[arg(long)]
        model: PathBuf,
        /// A prompt (repeat for several).
        #[arg(long, required = true)]
        text: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a deterministic full-size random checkpoint (benchmarks, full-size parity).
    RandomWeights {
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ARCHS))]
        arch: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time the encoder or a detection mode after a warm-up; median per image.
    Bench(BenchArgs),
    /// Convert a checkpoint's floating-point tensors to another storage type (f16 for the
    /// browser: half the download; computation stays f32).
    Convert {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_enum, default_value = "f16")]
        dtype: Dtype,
        #[arg(long)]
        out: PathBuf,
    },
    /// Score images: anomaly score, map and overlay per image.
    Detect(detect::DetectArgs),
    /// Evaluate a mode on a dataset in the MVTec AD layout: metrics, scores, maps, overlays.
    Eval(eval::EvalArgs),
    /// Bundled prompt sets.
    Prompts {
        #[command(subcommand)]
        cmd: PromptsCmd,
    },
    /// Serve a static directory on 127.0.0.1 with the cross-origin-isolation headers.
    Serve {
        #[arg(long, default_value = "www/dist")]
        dir: PathBuf,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
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
    /// Input side in pixels (default: the checkpoint's).
    #[arg(long)]
    size: Option<usize>,
    #[command(flatten)]
    backend: BackendOpts,
}

#[derive(Subcommand)]
enum PromptsCmd {
    /// Encode every category's ensembles once into one file (safetensors + JSON index).
    Build(detect::PromptsBuildArgs),
}

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
    /// Every mode above, one line (or JSON object) each.
    All,
}

/// Prints a line on stdout; a closed pipe (`anoscope … | head`) ends the program quietly
/// instead of panicking as `println!` would.
pub(crate) fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

pub fn run() -> i32 {
    anoscope::model::ops::init_cpu_threads();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match dispatch(cli.cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn write_out(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let bytes = to_safetensors(named)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Embed {
            model,
            image,
            pixels,
            size,
            preprocess,
            surgery_layers,
            hidden_layers,
            backend,
            out,
        } => {
            let mut clip = Clip::load_dir(&model)?;
            let input = match (image, pixels) {
                (Some(path), _) => {
                    let img = preprocess::load_image(&path, &ImageLimits::default())?;
                    let s = size.unwrap_or(clip.cfg.vision.image_size as u32);
                    if s == 0 || s > 4096 {
                        bail!("--size must be in 1..=4096, got {s}");
                    }
                    let norm = Normalize {
                        mean: clip.cfg.mean,
                        std: clip.cfg.std,
                    };
                    let chw = match preprocess {
                        Preprocess::Clip => preprocess::clip_preprocess(&img, s, &norm),
                        Preprocess::Resize => preprocess::resize_preprocess(&img, s, &norm),
                    };
                    Tensor::from_vec(chw, (1, 3, s as usize, s as usize), &Device::Cpu)?
                }
                (None, Some(path)) => {
                    let (values, shape) = preprocess::pixels_from_safetensors_file(&path)?;
                    if shape[0] != 1 {
                        bail!(
                            "{}: `pixel_values` must hold one image ([1,3,H,W]), got {:?}",
                            path.display(),
                            shape
                        );
                    }
                    Tensor::from_vec(values, shape.to_vec(), &Device::Cpu)?
                }
                (None, None) => bail!("give --image or --pixels"),
            };
            use_backend(&mut clip, backend)?;
            let named = embed_image(&clip, &input, surgery_layers.unwrap_or(0), &hidden_layers)?;
            write_out(&out, &named)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Cmd::EmbedText { model, text, out } => {
            let clip = Clip::load_dir(&model)?;
            let tok = ClipTokenizer::new()?;
            let texts: Vec<&str> = text.iter().map(String::as_str).collect();
            let named = embed_text(&clip, &tok, &texts)?;
            write_out(&out, &named)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Cmd::RandomWeights { arch, seed, dtype, out } => {
            let dtype = match dtype {
                Dtype::F32 => StoreDtype::F32,
                Dtype::F16 => StoreDtype::F16,
            };
            let cfg = write_random_checkpoint(&arch, seed, &out, dtype)?;
            eprintln!(
                "wrote a random {arch} checkpoint (seed {seed}, {} layout) to {}",
                match cfg.layout {
                    anoscope::model::Layout::HuggingFace => "Hugging Face",
                    anoscope::model::Layout::OpenClip => "open_clip",
                },
                out.display()
            );
            Ok(())
        }
        Cmd::Bench(args) => bench(args),
        Cmd::Convert { model, dtype, out } => convert(&model, dtype, &out),
        Cmd::Detect(args) => detect::detect(args),
        Cmd::Eval(args) => eval::eval(args),
        Cmd::Prompts {
            cmd: PromptsCmd::Build(args),
        } => detect::prompts_build(args),
        Cmd::Serve { dir, port } => anoscope::serve::serve(&dir, port),
    }
}

fn convert(model: &Path, dtype: Dtype, out: &Path) -> Result<()> {
    let files = anoscope::model::CheckpointFiles::detect(model)?;
    // Validate the whole checkpoint before writing anything.
    Clip::load_dir(model)?;
    let bytes = std::fs::read(&files.weights).with_context(|| format!("cannot read {}", files.weights.display()))?;
    let st_dtype = match dtype {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::F16 => safetensors::Dtype::F16,
    };
    let converted =
        anoscope::model::weights::convert_safetensors(&bytes, &files.weights.display().to_string(), st_dtype)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cfg_name = files.layout.config_file();
    std::fs::copy(&files.config, out.join(cfg_name))
        .with_context(|| format!("cannot write {}", out.join(cfg_name).display()))?;
    let dst = out.join(files.layout.weights_file());
    std::fs::write(&dst, &converted).with_context(|| format!("cannot write {}", dst.display()))?;
    eprintln!(
        "wrote {} ({} bytes, was {})",
        dst.display(),
        converted.len(),
        bytes.len()
    );
    Ok(())
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

fn bench(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        arch,
        model,
        threads,
        runs,
        json,
        mode,
        batch,
        size,
        backend,
    } = args;
    let (arch, model) = (arch.as_str(), model.as_deref());
    use anoscope::detect::{fast, musc, prompts, winclip, TextPair, TEMPERATURE};
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
    let size = size.unwrap_or(clip.cfg.vision.image_size);
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
