//! `anoscope detect`: scores images (or normalised pixels) with one detection mode and writes a
//! score, map and overlay per image. The modes themselves are in [`anoscope::detect`]; the
//! `--mode` and encoder flags are shared with other subcommands in [`super::args`]; building a
//! prompt bundle for `--prompts` is `prompts build` ([`super::prompts`]).
use super::args::{use_backend, BackendOpts, ModeArg};
use anoscope::detect::prompts::{self, EnsembleKind, PromptBundle};
use anoscope::detect::winclip::{self, WinClipConfig};
use anoscope::detect::{fast, musc, score_image, Detection, Mode, TextPair};
use anoscope::model::{CheckpointFiles, Clip};
use anoscope::preprocess::{self, ImageLimits, Normalize};
use anoscope::render;
use anoscope::tokenizer::ClipTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The flags of `anoscope detect`.
#[derive(Args)]
pub struct DetectArgs {
    /// Checkpoint directory (Hugging Face or open_clip layout).
    #[arg(long)]
    model: PathBuf,
    /// Category of the bundled prompt set (MVTec AD / VisA names, or `object`).
    #[arg(long, default_value = "object")]
    category: String,
    /// Object name used in the prompts instead of the category's (custom objects).
    #[arg(long)]
    object: Option<String>,
    #[arg(long, value_enum, default_value = "fast")]
    mode: ModeArg,
    /// Normal reference images (few-shot).
    #[arg(long, num_args = 1..)]
    refs: Vec<PathBuf>,
    /// Normal references as normalised `pixel_values` [K,3,H,W] (few-shot).
    #[arg(long, conflicts_with = "refs")]
    ref_pixels: Option<PathBuf>,
    /// A bundled prompt file (`anoscope prompts build`): no text encoding at run time.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Add the category's fine-grained defect descriptions to the anomalous prompts.
    #[arg(long)]
    descriptions: bool,
    /// Input side in pixels (default: the checkpoint's). Images are resized to a square.
    #[arg(long)]
    size: Option<u32>,
    /// Surgery layers for fast mode (default: half the tower).
    #[arg(long)]
    surgery_layers: Option<usize>,
    /// Normalised inputs `pixel_values` [B,3,H,W] instead of images (stems 0, 1, ...).
    #[arg(long, conflicts_with = "images")]
    pixels: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendOpts,
    #[arg(long)]
    out: PathBuf,
    /// Images to score.
    images: Vec<PathBuf>,
}

/// Inputs as one normalised batch plus what is needed to draw overlays.
struct Inputs {
    pixels: Tensor,
    stems: Vec<String>,
    originals: Vec<Option<image::RgbImage>>,
}

fn load_images(paths: &[PathBuf], size: u32, norm: &Normalize) -> Result<Inputs> {
    let mut data = Vec::new();
    let mut stems = Vec::new();
    let mut originals = Vec::new();
    for p in paths {
        let img = preprocess::load_image(p, &ImageLimits::default())?;
        data.extend(preprocess::resize_preprocess(&img, size, norm));
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "image".into());
        stems.push(stem);
        originals.push(Some(img));
    }
    // Distinct stems (good/000.png and crack/000.png would overwrite each other's outputs):
    // prefix the parent folder, then number what still collides.
    for i in 0..stems.len() {
        if stems.iter().enumerate().any(|(j, s)| j != i && *s == stems[i]) {
            if let Some(parent) = paths[i].parent().and_then(|p| p.file_name()) {
                stems[i] = format!("{}_{}", parent.to_string_lossy(), stems[i]);
            }
        }
    }
    for i in 0..stems.len() {
        if stems[..i].contains(&stems[i]) {
            stems[i] = format!("{}_{i}", stems[i]);
        }
    }
    let s = size as usize;
    Ok(Inputs {
        pixels: Tensor::from_vec(data, (paths.len(), 3, s, s), &Device::Cpu)?,
        stems,
        originals,
    })
}

fn load_pixels(path: &Path) -> Result<Inputs> {
    let (values, shape) = preprocess::pixels_from_safetensors_file(path)?;
    let n = shape[0];
    Ok(Inputs {
        pixels: Tensor::from_vec(values, shape.to_vec(), &Device::Cpu)?,
        stems: (0..n).map(|i| i.to_string()).collect(),
        originals: vec![None; n],
    })
}

/// The class pair for `category` (bundled file when given, else the text encoder).
fn text_pair(clip: &Clip, args: &DetectArgs, weights: &Path) -> Result<TextPair> {
    let kind = if args.descriptions {
        EnsembleKind::Descriptions
    } else {
        EnsembleKind::WinClip
    };
    let cat = match prompts::category(&args.category)? {
        Some(c) => c,
        None => {
            eprintln!(
                "warning: unknown category `{}`: using the generic `object` prompts (known: {})",
                args.category,
                prompts::categories()?
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            prompts::category("object")?.context("the generic `object` category is missing")?
        }
    };
    if let (Some(file), None) = (&args.prompts, &args.object) {
        let sha =
            prompts::sha256_hex(&std::fs::read(weights).with_context(|| format!("cannot read {}", weights.display()))?);
        let bundle = PromptBundle::read_file(file, Some(&sha))?;
        return match bundle.get(&cat.name, kind) {
            Some(e) => Ok(e.text.clone()),
            None => bail!(
                "{}: no `{}` prompts for category `{}`",
                file.display(),
                kind.as_str(),
                cat.name
            ),
        };
    }
    let cat = match &args.object {
        Some(o) => prompts::Category::new(&cat.name, o, &cat.defects)?,
        None => cat,
    };
    let (normal, anomalous) = prompts::ensemble(&cat, kind);
    let tok = ClipTokenizer::new()?;
    TextPair::from_prompts(clip, &tok, &normal, &anomalous)
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    out: &Path,
    stem: &str,
    det: &Detection,
    mode: Mode,
    category: &str,
    ms: f64,
    original: Option<&image::RgbImage>,
    pixels: &Tensor,
    clip: &Clip,
) -> Result<()> {
    let json = serde_json::json!({
        "score": det.score,
        "mode": mode.as_str(),
        "category": category,
        "map_height": det.height,
        "map_width": det.width,
        "grid": [det.grid.0, det.grid.1],
        "timing_ms": ms,
    });
    let p = out.join(format!("{stem}.json"));
    std::fs::write(&p, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", p.display()))?;
    let map = Tensor::from_slice(&det.map, (det.height, det.width), &Device::Cpu)?;
    let p = out.join(format!("{stem}.map.safetensors"));
    map.save_safetensors("anomaly_map", &p)
        .with_context(|| format!("cannot write {}", p.display()))?;
    let base = match original {
        Some(img) => img.clone(),
        None => {
            let chw = pixels.flatten_all()?.to_vec1::<f32>()?;
            render::normalized_pixels_to_rgb(&chw, det.height, det.width, clip.cfg.mean, clip.cfg.std)
        }
    };
    // Probability maps are drawn on a fixed [0, 1] scale; MuSc's distance maps on their range.
    let range = if mode == Mode::Batch {
        render::RangeMode::MinMax
    } else {
        render::RangeMode::Fixed(0.0, 1.0)
    };
    let norm = render::map_range(&det.map, range);
    let img = render::overlay(&base, &det.map, det.width, det.height, norm, 0.5, None)?;
    render::save_png(&img, &out.join(format!("{stem}.overlay.png")))
}

/// Runs `anoscope detect`.
pub fn detect(args: DetectArgs) -> Result<()> {
    let files = CheckpointFiles::detect(&args.model)?;
    let mut clip = Clip::load_dir(&args.model)?;
    use_backend(&mut clip, args.backend)?;
    let size = args.size.unwrap_or(clip.cfg.vision.image_size as u32);
    if size == 0 || size > 4096 {
        bail!("--size must be in 1..=4096, got {size}");
    }
    // Counts are checked before any image is decoded.
    if Mode::from(args.mode) == Mode::Batch && args.images.len() > musc::MAX_BATCH {
        bail!(
            "batch mode takes at most {} images, got {}",
            musc::MAX_BATCH,
            args.images.len()
        );
    }
    if args.refs.len() > winclip::MAX_REFERENCES {
        bail!(
            "few-shot mode takes at most {} reference images, got {}",
            winclip::MAX_REFERENCES,
            args.refs.len()
        );
    }
    let norm = Normalize {
        mean: clip.cfg.mean,
        std: clip.cfg.std,
    };
    let inputs = match (&args.pixels, args.images.is_empty()) {
        (Some(p), _) => load_pixels(p)?,
        (None, false) => load_images(&args.images, size, &norm)?,
        (None, true) => bail!("give images to score (or --pixels FILE)"),
    };
    let n = inputs.stems.len();
    let mode = Mode::from(args.mode);
    if mode == Mode::Batch && n < 2 {
        bail!("batch mode (MuSc) needs at least 2 images, got {n}");
    }
    if mode == Mode::Fewshot && args.refs.is_empty() && args.ref_pixels.is_none() {
        bail!("few-shot mode needs at least one normal reference image (--refs IMG ... or --ref-pixels FILE)");
    }
    let text = if mode.uses_text() {
        Some(text_pair(&clip, &args, &files.weights)?)
    } else {
        None
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let cfg = WinClipConfig::default();
    let (_, _, h, w) = inputs.pixels.dims4()?;
    let refs = if mode == Mode::Fewshot {
        let r = match &args.ref_pixels {
            Some(p) => load_pixels(p)?.pixels,
            None => load_images(&args.refs, size, &norm)?.pixels,
        };
        let (_, _, rh, rw) = r.dims4()?;
        if (rh, rw) != (h, w) {
            bail!("reference inputs are {rh}×{rw} but the images are {h}×{w}");
        }
        Some(winclip::references(&clip, &r, &cfg)?)
    } else {
        None
    };
    let t0 = Instant::now();
    let dets: Vec<(Detection, f64)> = match mode {
        Mode::Batch => {
            let out = musc::detect(&clip, &inputs.pixels, &musc::MuscConfig::default())?;
            let per = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
            out.detections.into_iter().map(|d| (d, per)).collect()
        }
        mode => {
            let text = text.as_ref().context("text modes need the class pair")?;
            let k = args
                .surgery_layers
                .unwrap_or_else(|| fast::default_surgery_layers(&clip));
            (0..n)
                .map(|i| {
                    let t = Instant::now();
                    let px = inputs.pixels.narrow(0, i, 1)?;
                    let d = score_image(&clip, &px, mode, text, refs.as_ref(), k, &cfg)?;
                    Ok((d, t.elapsed().as_secs_f64() * 1e3))
                })
                .collect::<Result<_>>()?
        }
    };
    for (i, (det, ms)) in dets.iter().enumerate() {
        let px = inputs.pixels.narrow(0, i, 1)?;
        write_outputs(
            &args.out,
            &inputs.stems[i],
            det,
            mode,
            &args.category,
            *ms,
            inputs.originals[i].as_ref(),
            &px,
            &clip,
        )?;
        super::emit(&format!("{}\t{:.4}\t{:.0} ms", inputs.stems[i], det.score, ms));
    }
    Ok(())
}
