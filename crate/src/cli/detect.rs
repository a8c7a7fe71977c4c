//! `anoscope detect`: scores images (or normalised pixels) with one detection mode and writes a
//! score, map and overlay per image. The modes themselves are in [`anoscope::detect`]; the
//! `--mode` and encoder flags are shared with other subcommands in [`super::args`]; building a
//! prompt bundle for `--prompts` is `prompts build` ([`super::prompts`]).
use super::args::{use_backend, BackendOpts, ModeArg};
use anoscope::detect::prompts::{self, EnsembleKind, PromptBundle};
use anoscope::detect::tiles::{self, TileScoring, TileSpec};
use anoscope::detect::winclip::{self, WinClipConfig};
use anoscope::detect::{
    adaptclip, anomalyclip, fast, geometry, learned, musc, regions, score_image, Detection, Mode, TextPair,
};
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
    /// The learned prompts of --mode anomalyclip: the official checkpoint (`.pth`, e.g.
    /// `checkpoints/9_12_4_multiscale/epoch_15.pth`) or its conversion (`anoscope convert
    /// --learned`, safetensors). With --mode adaptclip: AdaptCLIP's official checkpoint (e.g.
    /// `12_4_128_train_on_mvtec_3adapters_batch8/epoch_15.pth`) or its conversion; --refs /
    /// --ref-pixels make it few-shot.
    #[arg(long)]
    learned: Option<PathBuf>,
    /// Add the category's fine-grained defect descriptions to the anomalous prompts.
    #[arg(long)]
    descriptions: bool,
    /// Input side in pixels (default: the checkpoint's; 518 for anomalyclip). Images are resized
    /// to a square.
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

/// The images to score: normalised pixels given as one tensor (`--pixels`), or photo files that
/// are decoded one at a time (a run over thousands of photos holds one photo at a time).
struct Inputs {
    source: Source,
    /// Output stems, distinct.
    stems: Vec<String>,
}

enum Source {
    Pixels(Tensor),
    Photos(Vec<PathBuf>),
}

/// One input: `pixel_values` [1,3,H,W] and, for a photo, the decoded photo (overlays, tiles).
struct Input {
    pixels: Tensor,
    photo: Option<image::RgbImage>,
}

impl Inputs {
    fn photos(paths: &[PathBuf]) -> Self {
        Self {
            source: Source::Photos(paths.to_vec()),
            stems: distinct_stems(paths),
        }
    }

    fn pixels(path: &Path) -> Result<Self> {
        let (values, shape) = preprocess::pixels_from_safetensors_file(path)?;
        Ok(Self {
            source: Source::Pixels(Tensor::from_vec(values, shape.to_vec(), &Device::Cpu)?),
            stems: (0..shape[0]).map(|i| i.to_string()).collect(),
        })
    }

    /// `(height, width)` of the model inputs.
    fn input_size(&self, size: u32) -> Result<(usize, usize)> {
        Ok(match &self.source {
            Source::Pixels(t) => {
                let (_, _, h, w) = t.dims4()?;
                (h, w)
            }
            Source::Photos(_) => (size as usize, size as usize),
        })
    }

    /// The `i`-th input (a photo is decoded and resized now).
    fn get(&self, i: usize, size: u32, norm: &Normalize) -> Result<Input> {
        Ok(match &self.source {
            Source::Pixels(t) => Input {
                pixels: t.narrow(0, i, 1)?,
                photo: None,
            },
            Source::Photos(paths) => {
                let (pixels, mut photos) = load_images(&paths[i..=i], size, norm)?;
                Input {
                    pixels,
                    photo: photos.pop(),
                }
            }
        })
    }

    /// Every input at once (batch mode, whose images score each other), with the photos.
    fn all(&self, size: u32, norm: &Normalize) -> Result<(Tensor, Vec<Option<image::RgbImage>>)> {
        Ok(match &self.source {
            Source::Pixels(t) => (t.clone(), vec![None; self.stems.len()]),
            Source::Photos(paths) => {
                let (pixels, photos) = load_images(paths, size, norm)?;
                (pixels, photos.into_iter().map(Some).collect())
            }
        })
    }
}

/// Decodes and squash-resizes `paths` into one normalised batch [N,3,size,size], keeping the photos.
fn load_images(paths: &[PathBuf], size: u32, norm: &Normalize) -> Result<(Tensor, Vec<image::RgbImage>)> {
    let mut data = Vec::new();
    let mut photos = Vec::new();
    for p in paths {
        let img = preprocess::load_image(p, &ImageLimits::default())?;
        data.extend(preprocess::resize_preprocess(&img, size, norm));
        photos.push(img);
    }
    let s = size as usize;
    Ok((Tensor::from_vec(data, (paths.len(), 3, s, s), &Device::Cpu)?, photos))
}

/// Output stems of `paths`, distinct (good/000.png and crack/000.png would overwrite each
/// other's outputs): the parent folder is prefixed, then what still collides is numbered.
fn distinct_stems(paths: &[PathBuf]) -> Vec<String> {
    let mut stems: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "image".into())
        })
        .collect();
    let mut count = std::collections::HashMap::<String, usize>::new();
    for s in &stems {
        *count.entry(s.clone()).or_default() += 1;
    }
    for (i, stem) in stems.iter_mut().enumerate() {
        if count[stem.as_str()] > 1 {
            if let Some(parent) = paths[i].parent().and_then(|p| p.file_name()) {
                *stem = format!("{}_{stem}", parent.to_string_lossy());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, stem) in stems.iter_mut().enumerate() {
        if !seen.insert(stem.clone()) {
            *stem = format!("{stem}_{i}");
            seen.insert(stem.clone());
        }
    }
    stems
}

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
    let mode = Mode::from(args.mode);
    match (&args.learned, mode.learned()) {
        (None, true) => {
            bail!("--mode {mode} needs its learned prompts: --learned FILE (.pth or converted safetensors)")
        }
        (Some(_), false) => bail!("--learned applies to --mode anomalyclip and adaptclip only (mode is {mode})"),
        _ => {}
    }
    let mut clip = Clip::load_dir(&args.model)?;
    if mode.learned() {
        // Before the accelerator takes its copy of the configuration.
        learned::use_official_pos_interp(&mut clip);
    }
    use_backend(&mut clip, args.backend)?;
    let size = args.size.unwrap_or(mode.default_size(&clip));
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
        (Some(p), _) => Inputs::pixels(p)?,
        (None, false) => Inputs::photos(&args.images),
        (None, true) => bail!("give images to score (or --pixels FILE)"),
    };
    let n = inputs.stems.len();
    if mode == Mode::Batch && n < 2 {
        bail!("batch mode (MuSc) needs at least 2 images, got {n}");
    }
    if mode == Mode::Fewshot && args.refs.is_empty() && args.ref_pixels.is_none() {
        bail!("few-shot mode needs at least one normal reference image (--refs IMG ... or --ref-pixels FILE)");
    }
    // AdaptCLIP's adapters and class pairs (the official .pth or its conversion).
    let ready = match (&args.learned, mode) {
        (Some(file), Mode::Adaptclip) => Some(adaptclip::AdaptClip::read_file(&clip, file)?),
        _ => None,
    };
    let text = if ready.is_some() {
        None
    } else if let (Some(file), true) = (&args.learned, mode.learned()) {
        Some(anomalyclip::text_pair_from_file(&clip, file)?)
    } else if mode.uses_text() {
        Some(text_pair(&clip, &args, &files.weights)?)
    } else {
        None
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let cfg = WinClipConfig::default();
    let (h, w) = inputs.input_size(size)?;
    let refs = if mode == Mode::Fewshot {
        let r = match &args.ref_pixels {
            Some(p) => Inputs::pixels(p)?.all(size, &norm)?.0,
            None => load_images(&args.refs, size, &norm)?.0,
        };
        let (_, _, rh, rw) = r.dims4()?;
        if (rh, rw) != (h, w) {
            bail!("reference inputs are {rh}×{rw} but the images are {h}×{w}");
        }
        Some(winclip::references(&clip, &r, &cfg)?)
    } else {
        None
    };
    // AdaptCLIP's normal references: few-shot when given.
    let adapt_refs = if mode == Mode::Adaptclip && (!args.refs.is_empty() || args.ref_pixels.is_some()) {
        let r = match &args.ref_pixels {
            Some(p) => Inputs::pixels(p)?.all(size, &norm)?.0,
            None => load_images(&args.refs, size, &norm)?.0,
        };
        let (_, _, rh, rw) = r.dims4()?;
        if (rh, rw) != (h, w) {
            bail!("reference inputs are {rh}×{rw} but the images are {h}×{w}");
        }
        Some(adaptclip::references(&clip, &r)?)
    } else {
        None
    };
    let photo_size = |photo: Option<&image::RgbImage>, det: &Detection| match photo {
        Some(img) => (img.width() as usize, img.height() as usize),
        None => (det.width, det.height),
    };
    let write = |i: usize, r: &Scored, input: &Input, batch_range: (f32, f32)| -> Result<()> {
        let o = Output {
            stem: &inputs.stems[i],
            det: &r.det,
            score: r.score,
            ms: r.ms,
            full: &r.full,
            width: r.size.0,
            height: r.size.1,
            photo: photo_size(input.photo.as_ref(), &r.det),
            tiles: r.tiles.clone(),
            original: input.photo.as_ref(),
        };
        write_outputs(&args, mode, &o, &input.pixels, &clip, batch_range)?;
        super::emit(&format!("{}\t{:.4}\t{:.0} ms", inputs.stems[i], r.score, r.ms));
        Ok(())
    };
    if mode == Mode::Batch {
        // The images score each other: all of them at once (at most musc::MAX_BATCH).
        let t0 = Instant::now();
        let (pixels, photos) = inputs.all(size, &norm)?;
        let out = musc::detect(&clip, &pixels, &musc::MuscConfig::default())?;
        let per = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
        let batch_range = musc::unit_range_maps(&mut out.detections.clone());
        for (i, (d, photo)) in out.detections.into_iter().zip(photos).enumerate() {
            let (pw, ph) = photo_size(photo.as_ref(), &d);
            let (full, fw, fh) = geometry::to_photo_bounded(&d.map, d.width, d.height, pw, ph, args.overlay_size)?;
            let score = d.score;
            let r = Scored::untiled(d, score, full, (fw, fh), per);
            let input = Input {
                pixels: pixels.narrow(0, i, 1)?,
                photo,
            };
            write(i, &r, &input, batch_range)?;
        }
        return Ok(());
    }
    // One image at a time: decoded, scored, written, dropped. A photo that cannot be read is
    // reported and skipped (the others are still scored); the run then fails naming them all.
    let adapt = |pixels: &Tensor| -> Result<Detection> {
        let ready = ready.as_ref().context("adaptclip needs its learned file")?;
        adaptclip::detect(&clip, ready, pixels, adapt_refs.as_ref())?
            .into_iter()
            .next()
            .context("no image in the input")
    };
    let pair = TextPair::new(vec![1.0], vec![0.0])?; // unused by adaptclip
    let text = match (&text, mode) {
        (_, Mode::Adaptclip) => &pair,
        (t, _) => t.as_ref().context("text modes need the class pair")?,
    };
    let k = args
        .surgery_layers
        .unwrap_or_else(|| fast::default_surgery_layers(&clip));
    let mut unreadable = Vec::new();
    for i in 0..n {
        let input = match inputs.get(i, size, &norm) {
            Ok(input) => input,
            Err(e) if n > 1 && matches!(inputs.source, Source::Photos(_)) => {
                eprintln!("error: skipped: {e:#}");
                unreadable.push(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let t = Instant::now(); // scoring time (decoding excluded)
        let r = match input.photo.as_ref().filter(|_| tiled) {
            // Untiled: today's detection on the squash-resized input.
            None => {
                let d = if mode == Mode::Adaptclip {
                    adapt(&input.pixels)?
                } else {
                    score_image(&clip, &input.pixels, mode, text, refs.as_ref(), k, &cfg)?
                };
                let (pw, ph) = photo_size(input.photo.as_ref(), &d);
                let (full, fw, fh) = geometry::to_photo_bounded(&d.map, d.width, d.height, pw, ph, args.overlay_size)?;
                let score = d.score;
                Scored::untiled(d, score, full, (fw, fh), t.elapsed().as_secs_f64() * 1e3)
            }
            Some(photo) => {
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
                    adapt: ready.as_ref().map(|ready| tiles::AdaptScoring {
                        ready,
                        refs: adapt_refs.as_ref(),
                    }),
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
                Scored {
                    det: td.whole,
                    score: td.score,
                    full: td.map,
                    size: (td.width, td.height),
                    tiles: tiles_json,
                    ms: t.elapsed().as_secs_f64() * 1e3,
                }
            }
        };
        write(i, &r, &input, (0.0, 1.0))?;
    }
    match unreadable.len() {
        0 => Ok(()),
        k => bail!(
            "{k} of {n} images could not be read (the others were scored); the first: {}",
            unreadable[0]
        ),
    }
}

fn tiles_name(spec: TileSpec) -> String {
    match spec {
        TileSpec::Auto => "auto".into(),
        TileSpec::Off => "off".into(),
        TileSpec::Grid { rows, cols } => format!("{rows}x{cols}"),
    }
}

#[cfg(test)]
mod tests {
    use super::distinct_stems;
    use std::path::PathBuf;

    #[test]
    fn stems_are_distinct() {
        let paths: Vec<PathBuf> = [
            "good/000.png",
            "crack/000.png",
            "a/x/1.png",
            "b/x/1.png",
            "c/1.png",
            "x.png",
            "y/x.png",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let got = distinct_stems(&paths);
        assert_eq!(got, ["good_000", "crack_000", "x_1", "x_1_3", "c_1", "x", "y_x"]);
        let set: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(set.len(), got.len());
    }
}
