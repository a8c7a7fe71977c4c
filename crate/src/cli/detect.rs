//! `anoscope detect`: scores images (or normalised pixels) with one detection mode and writes a
//! score, map and overlay per image. The modes themselves are in [`anoscope::detect`]; the
//! `--mode` and encoder flags are shared with other subcommands in [`super::args`]; building a
//! prompt bundle for `--prompts` is `prompts build` ([`super::prompts`]).
use super::args::{use_backend, BackendOpts, ModeArg};
use anoscope::detect::prompts::{self, EnsembleKind, PromptBundle};
use anoscope::detect::tiles::{self, TileScoring, TileSpec};
use anoscope::detect::winclip::{self, WinClipConfig};
use anoscope::detect::{fast, geometry, musc, regions, score_image, Detection, Mode, TextPair};
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
    /// Tiled high-resolution inspection: `off` (the whole photo squash-resized to the input,
    /// today's scores, comparable across runs and with `eval`), `auto` (tiles when the photo's
    /// long side is over twice the input side, at most 16 square tiles) or ROWSxCOLS (e.g.
    /// `2x3`; `1x1` = off). Tiled scores are (whole + max tile) / 2. Not with batch mode or
    /// --pixels.
    #[arg(long, default_value = "off", value_parser = parse_tiles)]
    tiles: TileSpec,
    /// Long side bound (pixels) of the overlay and the full-resolution map: the photo's own size
    /// when it is smaller, else scaled down keeping the aspect.
    #[arg(long, default_value_t = geometry::MAX_PHOTO_SIDE)]
    overlay_size: usize,
    /// Also write `anomaly_map_full` (the map at the overlay's size) to <stem>.map.safetensors.
    #[arg(long)]
    full_map: bool,
    /// Threshold of the defect regions in <stem>.json (map units; batch mode: the batch's
    /// [0, 1] scale).
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// Smallest defect region kept, in pixels of the full-resolution map.
    #[arg(long, default_value_t = 1)]
    min_region_area: usize,
    #[command(flatten)]
    backend: BackendOpts,
    #[arg(long)]
    out: PathBuf,
    /// Images to score.
    images: Vec<PathBuf>,
}

fn parse_tiles(s: &str) -> Result<TileSpec> {
    s.parse()
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

/// One image's scores and maps, before they are written.
struct Scored {
    /// The detection at the model's input size (tiled: the whole-photo pass).
    det: Detection,
    /// The image score (tiled: combined).
    score: f32,
    /// The map at the photo's size (bounded).
    full: Vec<f32>,
    /// `(width, height)` of `full`.
    size: (usize, usize),
    /// `tiles` in the JSON.
    tiles: serde_json::Value,
    ms: f64,
}

impl Scored {
    fn untiled(det: Detection, score: f32, full: Vec<f32>, size: (usize, usize), ms: f64) -> Self {
        Self {
            det,
            score,
            full,
            size,
            tiles: serde_json::json!({"spec": "off", "count": 1}),
            ms,
        }
    }
}

/// One image's result as `detect` writes it.
struct Output<'a> {
    stem: &'a str,
    /// The detection at the model's input size (tiled: the whole-photo pass).
    det: &'a Detection,
    /// The image score (tiled: combined).
    score: f32,
    ms: f64,
    /// The map at the photo's size (bounded), `width × height`.
    full: &'a [f32],
    width: usize,
    height: usize,
    /// The photo's own size.
    photo: (usize, usize),
    /// `tiles` in the JSON.
    tiles: serde_json::Value,
    original: Option<&'a image::RgbImage>,
}

fn write_outputs(
    args: &DetectArgs,
    mode: Mode,
    o: &Output,
    pixels: &Tensor,
    clip: &Clip,
    batch_range: (f32, f32),
) -> Result<()> {
    let (w, h) = (o.width, o.height);
    // Regions on the drawn scale: probabilities as they are, MuSc distances on the batch's [0, 1].
    let regions = if mode == Mode::Batch {
        let (lo, hi) = batch_range;
        let span = if hi > lo { hi - lo } else { 1.0 };
        let unit: Vec<f32> = o.full.iter().map(|v| (v - lo) / span).collect();
        regions::regions(&unit, w, h, args.threshold as f32, args.min_region_area)?
    } else {
        regions::regions(o.full, w, h, args.threshold as f32, args.min_region_area)?
    };
    let json = serde_json::json!({
        "score": o.score,
        "mode": mode.as_str(),
        "category": args.category,
        "map_height": o.det.height,
        "map_width": o.det.width,
        "grid": [o.det.grid.0, o.det.grid.1],
        "image_width": o.photo.0,
        "image_height": o.photo.1,
        "full_map_width": w,
        "full_map_height": h,
        "tiles": o.tiles,
        "threshold": args.threshold,
        "regions": regions,
        "timing_ms": o.ms,
    });
    let p = args.out.join(format!("{}.json", o.stem));
    std::fs::write(&p, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", p.display()))?;
    let mut tensors = vec![(
        "anomaly_map",
        Tensor::from_slice(&o.det.map, (o.det.height, o.det.width), &Device::Cpu)?,
    )];
    if args.full_map {
        tensors.push(("anomaly_map_full", Tensor::from_slice(o.full, (h, w), &Device::Cpu)?));
    }
    let p = args.out.join(format!("{}.map.safetensors", o.stem));
    let tensors: std::collections::HashMap<&str, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&tensors, &p).with_context(|| format!("cannot write {}", p.display()))?;
    let base = match o.original {
        Some(img) if (img.width() as usize, img.height() as usize) == (w, h) => img.clone(),
        // Display copy of a photo over the bound (the map is already at this size).
        Some(img) => image::imageops::resize(img, w as u32, h as u32, image::imageops::FilterType::Triangle),
        None => {
            let chw = pixels.flatten_all()?.to_vec1::<f32>()?;
            render::normalized_pixels_to_rgb(&chw, o.det.height, o.det.width, clip.cfg.mean, clip.cfg.std)
        }
    };
    // Probability maps are drawn on a fixed [0, 1] scale; MuSc's distance maps on their range.
    let range = if mode == Mode::Batch {
        render::RangeMode::MinMax
    } else {
        render::RangeMode::Fixed(0.0, 1.0)
    };
    let norm = render::map_range(&o.det.map, range);
    let img = render::overlay(&base, o.full, w, h, norm, 0.5, None)?;
    render::save_png(&img, &args.out.join(format!("{}.overlay.png", o.stem)))
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
    if args.overlay_size == 0 {
        bail!("--overlay-size must be at least 1 pixel");
    }
    let tiled = args.tiles != TileSpec::Off;
    if tiled && Mode::from(args.mode) == Mode::Batch {
        bail!(
            "--tiles: batch mode (MuSc) is not tiled (its images score each other position by position, \
             which needs one size and tile plan for the whole batch); use --tiles off"
        );
    }
    if tiled && args.pixels.is_some() {
        bail!("--tiles needs the photos themselves (IMG …), not --pixels");
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
    // (detection at input size, image score, full map, its size, tiles JSON, ms)
    let mut results: Vec<Scored> = Vec::new();
    let photo_size = |i: usize, det: &Detection| match &inputs.originals[i] {
        Some(img) => (img.width() as usize, img.height() as usize),
        None => (det.width, det.height),
    };
    let mut batch_range = (0.0, 1.0);
    match mode {
        Mode::Batch => {
            let out = musc::detect(&clip, &inputs.pixels, &musc::MuscConfig::default())?;
            let per = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
            batch_range = musc::unit_range_maps(&mut out.detections.clone());
            for (i, d) in out.detections.into_iter().enumerate() {
                let (pw, ph) = photo_size(i, &d);
                let (full, w, h) = geometry::to_photo_bounded(&d.map, d.width, d.height, pw, ph, args.overlay_size)?;
                let score = d.score;
                results.push(Scored::untiled(d, score, full, (w, h), per));
            }
        }
        mode => {
            let text = text.as_ref().context("text modes need the class pair")?;
            let k = args
                .surgery_layers
                .unwrap_or_else(|| fast::default_surgery_layers(&clip));
            for i in 0..n {
                let t = Instant::now();
                let photo = inputs.originals[i].as_ref().filter(|_| tiled);
                let Some(photo) = photo else {
                    // Untiled: today's detection on the squash-resized input.
                    let px = inputs.pixels.narrow(0, i, 1)?;
                    let d = score_image(&clip, &px, mode, text, refs.as_ref(), k, &cfg)?;
                    let (pw, ph) = photo_size(i, &d);
                    let (full, w, h) =
                        geometry::to_photo_bounded(&d.map, d.width, d.height, pw, ph, args.overlay_size)?;
                    let score = d.score;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    results.push(Scored::untiled(d, score, full, (w, h), ms));
                    continue;
                };
                let plan = tiles::plan(
                    args.tiles,
                    photo.width() as usize,
                    photo.height() as usize,
                    size as usize,
                )?;
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} passes (whole + tiles)  {elapsed}  {msg}",
                    )
                    .expect("valid template"),
                );
                bar.set_message(inputs.stems[i].clone());
                let scoring = TileScoring {
                    mode,
                    text,
                    refs: refs.as_ref(),
                    surgery_layers: k,
                    cfg: &cfg,
                };
                let td = tiles::detect_tiled(
                    &clip,
                    photo,
                    &plan,
                    size,
                    &norm,
                    &scoring,
                    args.overlay_size,
                    &mut |done, total| {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64);
                        Ok(())
                    },
                    &|| false,
                )?;
                bar.finish_and_clear();
                let tiles_json = serde_json::json!({
                    "spec": tiles_name(args.tiles),
                    "rows": plan.rows,
                    "cols": plan.cols,
                    "count": plan.tiles.len(),
                    "tiles": plan.tiles,
                    "whole_score": td.whole.score,
                    "tile_scores": td.tiles.iter().map(|d| d.score).collect::<Vec<_>>(),
                });
                let ms = t.elapsed().as_secs_f64() * 1e3;
                results.push(Scored {
                    det: td.whole,
                    score: td.score,
                    full: td.map,
                    size: (td.width, td.height),
                    tiles: tiles_json,
                    ms,
                });
            }
        }
    }
    for (i, r) in results.iter().enumerate() {
        let px = inputs.pixels.narrow(0, i, 1)?;
        let o = Output {
            stem: &inputs.stems[i],
            det: &r.det,
            score: r.score,
            ms: r.ms,
            full: &r.full,
            width: r.size.0,
            height: r.size.1,
            photo: photo_size(i, &r.det),
            tiles: r.tiles.clone(),
            original: inputs.originals[i].as_ref(),
        };
        write_outputs(&args, mode, &o, &px, &clip, batch_range)?;
        super::emit(&format!("{}\t{:.4}\t{:.0} ms", inputs.stems[i], r.score, r.ms));
    }
    Ok(())
}

fn tiles_name(spec: TileSpec) -> String {
    match spec {
        TileSpec::Auto => "auto".into(),
        TileSpec::Off => "off".into(),
        TileSpec::Grid { rows, cols } => format!("{rows}x{cols}"),
    }
}
