//! The run of an evaluation ([`run`]): options and settings, checking them and the dataset
//! before the model loads, resuming a previous run, choosing each category's prompts, scoring
//! every test image with a [`crate::detect`] mode and writing its result as soon as it is
//! scored, then the report. The dataset scan is in `dataset.rs`, the output folder's files in
//! `output.rs`, the metrics and tables in `report.rs`.
use super::dataset::{scan_dataset_as, select_references, TestImage};
use super::layouts::Layout;
use super::output::{
    read_finished, write_atomic, write_map, write_record, write_timing, ImageRecord, ImageTiming, OutDir,
};
use super::report::{
    category_metrics, markdown_table, mean_metrics, metrics_csv, metrics_json, scores_csv, write_worst_overlays,
    CategoryMetrics,
};
use super::Mode;
use crate::detect::adaptclip::{self, AdaptClip};
use crate::detect::prompts::{self, EnsembleKind};
use crate::detect::winclip::{self, WinClipConfig};
use crate::detect::{anomalyclip, fast, learned, musc, Detection, TextPair};
use crate::model::{CheckpointFiles, Clip};
use crate::preprocess::{self, ImageLimits, Normalize};
use crate::render;
use crate::tokenizer::ClipTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Prompt categories

/// How a dataset folder was mapped to a bundled prompt category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMatch {
    /// The folder name is a bundled category.
    Exact,
    /// A bundled category is a `_`-separated part of the folder name (`mvtec_bottle` → `bottle`).
    Part,
    /// No match: the generic `object` prompts.
    Fallback,
    /// Given explicitly (`--prompt-category`).
    Override,
}

/// Maps a dataset folder name to one of the `known` prompt category names: the name itself
/// (case-insensitive, `-` and spaces read as `_`); else the longest known name that is a run of
/// whole `_`-separated parts of it (`mvtec_bottle` → `bottle`, `visa_pipe_fryum` → `pipe_fryum`,
/// `magnetic_tile` → `tile`); else `object` ([`PromptMatch::Fallback`]).
pub fn match_prompt_category(folder: &str, known: &[&str]) -> (String, PromptMatch) {
    let f: String = folder
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == '-' || c == ' ' { '_' } else { c })
        .collect();
    if let Some(k) = known.iter().find(|k| **k == f) {
        return (k.to_string(), PromptMatch::Exact);
    }
    let padded = format!("_{f}_");
    let best = known
        .iter()
        .filter(|k| **k != "object" && !k.is_empty() && padded.contains(&format!("_{k}_")))
        .max_by_key(|k| k.len());
    match best {
        Some(k) => (k.to_string(), PromptMatch::Part),
        None => ("object".to_string(), PromptMatch::Fallback),
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and resuming

/// What makes two runs' per-image results interchangeable (checked by `--resume`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The model folder as given (recorded, not compared).
    pub model: String,
    /// SHA-256 of the weights file.
    pub model_sha256: String,
    /// Size of the weights file in bytes.
    pub model_bytes: u64,
    /// The dataset folder, canonicalised.
    pub dataset: String,
    /// The layout it was read in (detected or given; `mvtec` for runs recorded before layouts).
    #[serde(default)]
    pub layout: Layout,
    /// The detection mode.
    pub mode: Mode,
    /// Side of the square model input in pixels (maps are `size × size`).
    pub size: u32,
    /// Number of few-shot references (`Some` in fewshot mode, and in adaptclip mode when it is
    /// few-shot).
    pub shots: Option<usize>,
    /// Seed of the reference draw (recorded, and compared by `--resume`, in every mode).
    pub seed: u64,
    /// Fast mode's surgery layers K (`Some` in fast mode only).
    pub surgery_layers: Option<usize>,
    /// The `--prompt-category` override (`None`: matched per category folder).
    pub prompt_category: Option<String>,
    /// SHA-256 of the learned-prompt file (learned-prompt modes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_sha256: Option<String>,
}

impl Settings {
    /// The settings that differ from `previous`, as `name: previous → now` (the model path is
    /// not compared: the same weights may move).
    pub fn mismatches(&self, previous: &Settings) -> Vec<String> {
        fn cmp<T: PartialEq + std::fmt::Debug>(out: &mut Vec<String>, name: &str, prev: &T, now: &T) {
            if prev != now {
                out.push(format!("{name}: {prev:?} → {now:?}"));
            }
        }
        let mut out = Vec::new();
        cmp(&mut out, "model sha256", &previous.model_sha256, &self.model_sha256);
        cmp(&mut out, "model bytes", &previous.model_bytes, &self.model_bytes);
        cmp(&mut out, "dataset", &previous.dataset, &self.dataset);
        cmp(&mut out, "layout", &previous.layout, &self.layout);
        cmp(&mut out, "mode", &previous.mode, &self.mode);
        cmp(&mut out, "size", &previous.size, &self.size);
        cmp(&mut out, "shots", &previous.shots, &self.shots);
        cmp(&mut out, "seed", &previous.seed, &self.seed);
        cmp(
            &mut out,
            "surgery layers",
            &previous.surgery_layers,
            &self.surgery_layers,
        );
        cmp(
            &mut out,
            "prompt category",
            &previous.prompt_category,
            &self.prompt_category,
        );
        cmp(
            &mut out,
            "learned sha256",
            &previous.learned_sha256,
            &self.learned_sha256,
        );
        out
    }
}

/// Hex SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

// ---------------------------------------------------------------------------------------------
// The runner

/// Options of [`run`] (the `anoscope eval` flags).
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The checkpoint folder ([`CheckpointFiles::detect`]).
    pub model: PathBuf,
    /// The dataset folder in one of the [`Layout`]s (see the [module docs](super)).
    pub dataset: PathBuf,
    /// Its layout (`None`: detected, [`Layout::detect`]).
    pub layout: Option<Layout>,
    /// Categories to evaluate (empty: all).
    pub categories: Vec<String>,
    /// The detection mode.
    pub mode: Mode,
    /// Few-shot references (fewshot: default 1; adaptclip: few-shot with this many, zero-shot
    /// without).
    pub shots: Option<usize>,
    /// Seed of the reference draw ([`select_references`]).
    pub seed: u64,
    /// Input side (default: the checkpoint's image size).
    pub size: Option<u32>,
    /// Prompt category for every dataset category (default: [`match_prompt_category`]).
    pub prompt_category: Option<String>,
    /// Fast mode's surgery layers (default [`fast::default_surgery_layers`]).
    pub surgery_layers: Option<usize>,
    /// The learned-prompt file of the learned-prompt modes (`--learned`).
    pub learned: Option<PathBuf>,
    /// The output folder (see the [module docs](super)).
    pub out: PathBuf,
    /// Continue a previous run in `out` (same settings), skipping finished images.
    pub resume: bool,
    /// Overlays per category for the highest-scored good and lowest-scored anomalous images.
    pub worst: usize,
}

/// Progress callbacks of [`run`] (all optional).
pub trait Progress {
    /// Before the first image: images to score, and finished ones found in `out`.
    fn begin(&mut self, _to_score: usize, _resumed: usize) {}
    /// A category starts.
    fn category(&mut self, _name: &str) {}
    /// `n` more images were scored.
    fn advance(&mut self, _n: usize) {}
    /// Something the user should know (skipped files, mappings, …).
    fn note(&mut self, _msg: &str) {}
    /// All images are scored (metrics and overlays follow).
    fn done_scoring(&mut self) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What [`run`] returns.
#[derive(Clone, Debug)]
pub struct EvalSummary {
    /// Each category's name and metrics, in dataset order.
    pub categories: Vec<(String, CategoryMetrics)>,
    /// The across-category mean ([`mean_metrics`]).
    pub mean: CategoryMetrics,
    /// Images scored by this run.
    pub new_images: usize,
    /// Images taken over from a previous run (`--resume`).
    pub resumed_images: usize,
    /// Wall time of the whole run in seconds.
    pub seconds: f64,
    /// The markdown table (also written to `metrics.md`).
    pub markdown: String,
}

/// Seconds since the Unix epoch (0 when the clock is before it).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A path as text for `run.json` and the records.
fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Normalised `[n, 3, size, size]` pixels of image files (square resize).
fn load_pixels(paths: &[&Path], size: u32, norm: &Normalize) -> Result<(Tensor, Vec<(u32, u32)>)> {
    let mut data = Vec::with_capacity(paths.len() * 3 * (size * size) as usize);
    let mut dims = Vec::with_capacity(paths.len());
    for p in paths {
        let img = preprocess::load_image(p, &ImageLimits::default())?;
        dims.push((img.width(), img.height()));
        data.extend(preprocess::resize_preprocess(&img, size, norm));
    }
    let s = size as usize;
    Ok((Tensor::from_vec(data, (paths.len(), 3, s, s), &Device::Cpu)?, dims))
}

/// The class pair of a prompt category (WinCLIP ensemble through the text tower).
fn text_pair(clip: &Clip, tok: &ClipTokenizer, name: &str) -> Result<TextPair> {
    let cat = prompts::category(name)?.with_context(|| format!("unknown prompt category `{name}`"))?;
    let (normal, anomalous) = prompts::ensemble(&cat, EnsembleKind::WinClip);
    TextPair::from_prompts(clip, tok, &normal, &anomalous)
}

/// Everything a category's per-image loop needs.
struct Scorer<'a> {
    clip: &'a Clip,
    mode: Mode,
    size: u32,
    norm: Normalize,
    surgery_layers: usize,
    cfg: WinClipConfig,
    text: Option<TextPair>,
    refs: Option<winclip::References>,
    /// AdaptCLIP's adapters and class pairs (`--mode adaptclip`).
    adapt: Option<&'a AdaptClip>,
    /// AdaptCLIP's normal references (`--mode adaptclip --shots K`; `None`: zero-shot).
    adapt_refs: Option<adaptclip::References>,
}

impl Scorer<'_> {
    /// Loads and scores one image file: the detection and the image's size.
    fn score_one(&self, path: &Path) -> Result<(Detection, (u32, u32))> {
        let (px, dims) = load_pixels(&[path], self.size, &self.norm)?;
        if let Some(ready) = self.adapt {
            let det = adaptclip::detect(self.clip, ready, &px, self.adapt_refs.as_ref())?
                .into_iter()
                .next()
                .context("no image in the input")?;
            return Ok((det, dims[0]));
        }
        let text = self.text.as_ref().context("text modes need the class pair")?;
        let det = crate::detect::score_image(
            self.clip,
            &px,
            self.mode,
            text,
            self.refs.as_ref(),
            self.surgery_layers,
            &self.cfg,
        )?;
        Ok((det, dims[0]))
    }
}

/// Writes one image's map, its timing, then its record (which marks it finished); returns the
/// record.
fn save_result(
    out: &OutDir,
    cat: &str,
    img: &TestImage,
    det: &Detection,
    dims: (u32, u32),
    ms: f64,
) -> Result<ImageRecord> {
    write_map(&out.map(cat, &img.defect, &img.stem), &det.map, det.width, det.height)?;
    let r = ImageRecord {
        category: cat.to_string(),
        defect: img.defect.clone(),
        stem: img.stem.clone(),
        path: path_str(&img.path),
        anomalous: img.anomalous(),
        score: det.score,
        map_width: det.width,
        map_height: det.height,
        image_width: dims.0,
        image_height: dims.1,
    };
    write_timing(&out.timing(cat, &img.defect, &img.stem), &ImageTiming { ms })?;
    write_record(&out.record(cat, &img.defect, &img.stem), &r)?;
    Ok(r)
}

/// Runs an evaluation (see the [module docs](super)) and writes every output file.
pub fn run(opts: &EvalOptions, progress: &mut dyn Progress) -> Result<EvalSummary> {
    let t_start = Instant::now();
    let started = unix_now();
    // Options.
    let shots = match (opts.mode, opts.shots) {
        (Mode::Fewshot, s) => Some(s.unwrap_or(1)),
        // AdaptCLIP: few-shot (its prompt-query adapter) with --shots, zero-shot without.
        (Mode::Adaptclip, s) => s,
        (_, None) => None,
        (m, Some(_)) => bail!("--shots applies to --mode fewshot and adaptclip only (mode is {m})"),
    };
    if shots == Some(0) {
        bail!("--shots must be at least 1");
    }
    if let Some(k) = shots.filter(|&k| k > winclip::MAX_REFERENCES) {
        bail!(
            "--shots {k} is over the limit of {} reference images",
            winclip::MAX_REFERENCES
        );
    }
    if opts.surgery_layers.is_some() && opts.mode != Mode::Fast {
        bail!("--surgery-layers applies to --mode fast only (mode is {})", opts.mode);
    }
    match (&opts.learned, opts.mode.learned()) {
        (None, true) => bail!(
            "--mode {} needs its learned prompts: --learned FILE (.pth or converted safetensors)",
            opts.mode
        ),
        (Some(_), false) => bail!(
            "--learned applies to --mode anomalyclip and adaptclip only (mode is {})",
            opts.mode
        ),
        (Some(p), true) if !p.is_file() => bail!("learned prompts {} not found", p.display()),
        _ => {}
    }
    let known = prompts::categories()?;
    let known_names: Vec<&str> = known.iter().map(|c| c.name.as_str()).collect();
    if let Some(p) = &opts.prompt_category {
        if !known_names.contains(&p.as_str()) {
            bail!("unknown prompt category `{p}` (known: {})", known_names.join(", "));
        }
    }
    // Dataset (all file errors before the model loads).
    let dataset = scan_dataset_as(&opts.dataset, &opts.categories, opts.layout)?;
    for n in &dataset.notes {
        progress.note(n);
    }
    for cat in &dataset.categories {
        match opts.mode {
            Mode::Fewshot | Mode::Adaptclip if shots.is_some() => {
                let k = shots.unwrap_or(1);
                if cat.train_good.len() < k {
                    bail!(
                        "category {}: --shots {k} needs {k} normal images in {}, found {}",
                        cat.name,
                        cat.train_source,
                        cat.train_good.len()
                    );
                }
            }
            Mode::Batch => {
                let n = cat.test.len();
                if n < 2 {
                    bail!(
                        "category {}: batch mode (MuSc) needs at least 2 test images, found {n}",
                        cat.name
                    );
                }
                if n > musc::MAX_BATCH {
                    bail!(
                        "category {}: batch mode (MuSc) scores all {n} test images of a category at once and takes at \
                         most {} (its features take about 7.2 MB per image for ViT-B/16 at 224 px and time grows \
                         quadratically); split the category into folders of at most {} images or use another mode",
                        cat.name,
                        musc::MAX_BATCH,
                        musc::MAX_BATCH
                    );
                }
            }
            _ => {}
        }
    }
    // Model and settings.
    let files = CheckpointFiles::detect(&opts.model)?;
    let model_bytes = std::fs::metadata(&files.weights)
        .with_context(|| format!("cannot read {}", files.weights.display()))?
        .len();
    let model_sha256 = file_sha256(&files.weights)?;
    let mut clip = Clip::load_dir(&opts.model)?;
    // The learned-prompt modes: one class pair for every category, read before any scoring.
    let mut adapt = None;
    let learned = match &opts.learned {
        Some(p) if opts.mode == Mode::Adaptclip => {
            learned::use_official_pos_interp(&mut clip);
            let ready = AdaptClip::read_file(&clip, p)?;
            if shots.is_some() && ready.learned.pq.is_none() {
                bail!(
                    "{}: no prompt-query adapter (pq_learner): --shots needs it (few-shot AdaptCLIP); \
                     leave --shots out for zero-shot",
                    p.display()
                );
            }
            // The learned pair stands in for the class pair; the adapters do the scoring.
            let pair = ready.text.learned.clone();
            adapt = Some(ready);
            Some((pair, file_sha256(p)?))
        }
        Some(p) => {
            learned::use_official_pos_interp(&mut clip);
            Some((anomalyclip::text_pair_from_file(&clip, p)?, file_sha256(p)?))
        }
        None => None,
    };
    let clip = clip;
    let size = opts.size.unwrap_or(opts.mode.default_size(&clip));
    if size == 0 || size > 4096 {
        bail!("--size must be in 1..=4096, got {size}");
    }
    let surgery_layers = match opts.mode {
        Mode::Fast => Some(
            opts.surgery_layers
                .unwrap_or_else(|| fast::default_surgery_layers(&clip)),
        ),
        _ => None,
    };
    let settings = Settings {
        model: path_str(&opts.model),
        model_sha256,
        model_bytes,
        dataset: path_str(&opts.dataset.canonicalize().unwrap_or_else(|_| opts.dataset.clone())),
        layout: dataset.layout,
        mode: opts.mode,
        size,
        shots,
        seed: opts.seed,
        surgery_layers,
        prompt_category: opts.prompt_category.clone(),
        learned_sha256: learned.as_ref().map(|(_, sha)| sha.clone()),
    };
    let out = OutDir::new(&opts.out);
    let mut previous_categories = serde_json::Map::new();
    // Finished records are taken over only from a run whose settings were checked.
    let resuming = out.run_json().is_file();
    if resuming {
        if !opts.resume {
            bail!(
                "{} already holds the results of a run: pass --resume to continue it, or choose another --out",
                opts.out.display()
            );
        }
        let text = std::fs::read_to_string(out.run_json())
            .with_context(|| format!("cannot read {}", out.run_json().display()))?;
        let prev: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run.json written by anoscope eval", out.run_json().display()))?;
        let prev_settings: Settings = serde_json::from_value(prev["settings"].clone())
            .with_context(|| format!("{}: no readable settings to resume from", out.run_json().display()))?;
        let diff = settings.mismatches(&prev_settings);
        if !diff.is_empty() {
            bail!(
                "cannot resume: {} was written with different settings ({}); rerun with the same settings or choose \
                 another --out",
                opts.out.display(),
                diff.join("; ")
            );
        }
        if let Some(c) = prev["categories"].as_object() {
            previous_categories = c.clone();
        }
    } else if opts.resume {
        progress.note(&format!(
            "nothing to resume in {}: starting a new run",
            opts.out.display()
        ));
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;

    // Which images are finished (batch mode: whole categories only).
    let mut finished: Vec<Vec<Option<ImageRecord>>> = Vec::new();
    for cat in &dataset.categories {
        let mut f: Vec<Option<ImageRecord>> = if resuming {
            cat.test.iter().map(|t| read_finished(&out, &cat.name, t)).collect()
        } else {
            vec![None; cat.test.len()]
        };
        if opts.mode == Mode::Batch && f.iter().any(|r| r.is_none()) {
            f = vec![None; cat.test.len()];
        }
        finished.push(f);
    }
    let resumed: usize = finished.iter().flatten().filter(|r| r.is_some()).count();
    let total: usize = dataset.categories.iter().map(|c| c.test.len()).sum();
    let to_score = total - resumed;

    // References (deterministic, so also checked against a resumed run's).
    let mut references: Vec<Vec<PathBuf>> = Vec::new();
    for cat in &dataset.categories {
        let refs = match shots {
            Some(k) => {
                select_references(&cat.train_good, k, opts.seed).with_context(|| format!("category {}", cat.name))?
            }
            None => Vec::new(),
        };
        if let Some(prev) = previous_categories
            .get(&cat.name)
            .and_then(|c| c["references"].as_array())
        {
            let now: Vec<String> = refs.iter().map(|p| path_str(p)).collect();
            let before: Vec<String> = prev.iter().filter_map(|v| v.as_str().map(String::from)).collect();
            if now != before {
                bail!(
                    "cannot resume: category {} drew the references {:?} but the previous run used {:?} (train/good \
                     changed?); choose another --out",
                    cat.name,
                    now,
                    before
                );
            }
        }
        references.push(refs);
    }

    let mut run_json = serde_json::json!({
        "anoscope_version": env!("CARGO_PKG_VERSION"),
        "status": "running",
        "settings": settings,
        "model_layout": format!("{:?}", files.layout),
        "model_weights": path_str(&files.weights),
        "model_image_size": clip.cfg.vision.image_size,
        "started_unix": started,
        "notes": dataset.notes,
        "categories": previous_categories,
    });
    write_atomic(
        &out.run_json(),
        (serde_json::to_string_pretty(&run_json)? + "\n").as_bytes(),
    )?;

    progress.begin(to_score, resumed);
    let tok = if opts.mode.uses_text() {
        Some(ClipTokenizer::new()?)
    } else {
        None
    };
    let norm = Normalize {
        mean: clip.cfg.mean,
        std: clip.cfg.std,
    };
    let cfg = WinClipConfig::default();
    let mut all_records: Vec<ImageRecord> = Vec::new();
    let mut per_metrics: Vec<(String, CategoryMetrics)> = Vec::new();
    let mut cat_info: Vec<serde_json::Value> = Vec::new();
    let mut details = Vec::new();
    for ((cat, done), refs) in dataset.categories.iter().zip(finished).zip(&references) {
        progress.category(&cat.name);
        let (prompt_cat, how) = match &opts.prompt_category {
            Some(p) => (p.clone(), PromptMatch::Override),
            None => match_prompt_category(&cat.name, &known_names),
        };
        if opts.mode.uses_text() && !opts.mode.learned() {
            match how {
                PromptMatch::Fallback => progress.note(&format!(
                    "warning: category {} matches no prompt category: using the generic `object` prompts \
                     (--prompt-category NAME to choose one of: {})",
                    cat.name,
                    known_names.join(", ")
                )),
                PromptMatch::Part => progress.note(&format!(
                    "category {}: using the `{prompt_cat}` prompts (--prompt-category overrides)",
                    cat.name
                )),
                _ => {}
            }
        }
        let pending: Vec<usize> = (0..cat.test.len()).filter(|&i| done[i].is_none()).collect();
        let mut records: Vec<Option<ImageRecord>> = done;
        let (mut text_s, mut refs_s, mut score_s) = (0.0, 0.0, 0.0);
        if !pending.is_empty() {
            if opts.mode == Mode::Batch {
                let t = Instant::now();
                let paths: Vec<&Path> = cat.test.iter().map(|t| t.path.as_path()).collect();
                let (px, dims) = load_pixels(&paths, size, &norm)?;
                let outcome = musc::detect(&clip, &px, &musc::MuscConfig::default())
                    .with_context(|| format!("batch mode on category {}", cat.name))?;
                let per = t.elapsed().as_secs_f64() * 1e3 / cat.test.len() as f64;
                for (i, det) in outcome.detections.iter().enumerate() {
                    records[i] = Some(save_result(&out, &cat.name, &cat.test[i], det, dims[i], per)?);
                }
                progress.advance(cat.test.len());
                score_s = t.elapsed().as_secs_f64();
            } else {
                let t = Instant::now();
                let text = match &learned {
                    Some((pair, _)) => pair.clone(),
                    None => text_pair(&clip, tok.as_ref().context("tokenizer")?, &prompt_cat)?,
                };
                text_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let refs_feats = if opts.mode == Mode::Fewshot {
                    let paths: Vec<&Path> = refs.iter().map(|p| p.as_path()).collect();
                    let (px, _) = load_pixels(&paths, size, &norm)?;
                    Some(winclip::references(&clip, &px, &cfg)?)
                } else {
                    None
                };
                // AdaptCLIP few-shot: the same draw, squash-resized to the input as the queries.
                let adapt_refs = match (&adapt, shots) {
                    (Some(_), Some(_)) => {
                        let paths: Vec<&Path> = refs.iter().map(|p| p.as_path()).collect();
                        let (px, _) = load_pixels(&paths, size, &norm)?;
                        Some(adaptclip::references(&clip, &px)?)
                    }
                    _ => None,
                };
                refs_s = t.elapsed().as_secs_f64();
                let scorer = Scorer {
                    clip: &clip,
                    mode: opts.mode,
                    size,
                    norm,
                    surgery_layers: surgery_layers.unwrap_or(1),
                    cfg: cfg.clone(),
                    text: Some(text),
                    refs: refs_feats,
                    adapt: adapt.as_ref(),
                    adapt_refs,
                };
                let t_all = Instant::now();
                for &i in &pending {
                    let img = &cat.test[i];
                    let t = Instant::now();
                    let (det, dims) = scorer.score_one(&img.path)?;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    records[i] = Some(save_result(&out, &cat.name, img, &det, dims, ms)?);
                    progress.advance(1);
                }
                score_s = t_all.elapsed().as_secs_f64();
            }
        }
        let records: Vec<ImageRecord> = records.into_iter().map(|r| r.expect("every image scored")).collect();
        let t = Instant::now();
        let detail = category_metrics(cat, &records, &out)?;
        let metrics_s = t.elapsed().as_secs_f64();
        let n_new = pending.len();
        cat_info.push(serde_json::json!({
            "name": cat.name,
            "dir": path_str(&cat.dir),
            "prompt_category": if opts.mode.uses_text() && !opts.mode.learned() { Some(&prompt_cat) } else { None },
            "prompt_match": if opts.mode.uses_text() && !opts.mode.learned() { Some(how) } else { None },
            "references": refs.iter().map(|p| path_str(p)).collect::<Vec<_>>(),
            "has_ground_truth": cat.has_ground_truth,
            "n_images": cat.test.len(),
            "n_new": n_new,
            "n_resumed": cat.test.len() - n_new,
            "text_seconds": text_s,
            "references_seconds": refs_s,
            "scoring_seconds": score_s,
            "images_per_second": if score_s > 0.0 { Some(n_new as f64 / score_s) } else { None },
            "metrics_seconds": metrics_s,
        }));
        per_metrics.push((cat.name.clone(), detail.metrics.clone()));
        details.push((detail, records.clone()));
        all_records.extend(records);
        if let Some(c) = run_json["categories"].as_object_mut() {
            c.insert(cat.name.clone(), cat_info.last().cloned().unwrap_or_default());
        }
        write_atomic(
            &out.run_json(),
            (serde_json::to_string_pretty(&run_json)? + "\n").as_bytes(),
        )?;
    }
    progress.done_scoring();

    // Overlays of the worst cases.
    for ((cat, (detail, records)), info) in dataset.categories.iter().zip(&details).zip(&mut cat_info) {
        let t = Instant::now();
        let norm = if opts.mode == Mode::Batch {
            render::Normalization::new(detail.map_range.0, detail.map_range.1)
        } else {
            render::Normalization::new(0.0, 1.0)
        };
        let written = write_worst_overlays(&out, cat, records, opts.worst, norm)?;
        info["overlays"] = written.into();
        info["overlay_seconds"] = t.elapsed().as_secs_f64().into();
        if !detail.aupimo_per_image.is_empty() {
            let per: BTreeMap<String, Option<f64>> = records
                .iter()
                .zip(&detail.aupimo_per_image)
                .map(|(r, v)| (format!("{}/{}", r.defect, r.stem), *v))
                .collect();
            info["aupimo_per_image"] = serde_json::to_value(per)?;
        }
        if let Some(c) = run_json["categories"].as_object_mut() {
            c.insert(cat.name.clone(), info.clone());
        }
    }

    let mean = mean_metrics(&per_metrics.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>());
    let markdown = markdown_table(&per_metrics, &mean);
    write_atomic(&opts.out.join("scores.csv"), scores_csv(&all_records).as_bytes())?;
    write_atomic(
        &opts.out.join("metrics.json"),
        metrics_json(&per_metrics, &mean)?.as_bytes(),
    )?;
    write_atomic(
        &opts.out.join("metrics.csv"),
        metrics_csv(&per_metrics, &mean).as_bytes(),
    )?;
    write_atomic(&opts.out.join("metrics.md"), markdown.as_bytes())?;
    let seconds = t_start.elapsed().as_secs_f64();
    run_json["status"] = "complete".into();
    run_json["finished_unix"] = unix_now().into();
    run_json["seconds"] = seconds.into();
    run_json["new_images"] = to_score.into();
    run_json["resumed_images"] = resumed.into();
    run_json["evaluated_categories"] = dataset
        .categories
        .iter()
        .map(|c| c.name.clone())
        .collect::<Vec<_>>()
        .into();
    write_atomic(
        &out.run_json(),
        (serde_json::to_string_pretty(&run_json)? + "\n").as_bytes(),
    )?;
    Ok(EvalSummary {
        categories: per_metrics,
        mean,
        new_images: to_score,
        resumed_images: resumed,
        seconds,
        markdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<&'static str> {
        vec!["object", "bottle", "metal_nut", "tile", "pcb1", "fryum", "pipe_fryum"]
    }

    #[test]
    fn prompt_categories_map_folder_names() {
        let k = known();
        let m = |f: &str| match_prompt_category(f, &k);
        assert_eq!(m("bottle"), ("bottle".into(), PromptMatch::Exact));
        assert_eq!(m("Bottle"), ("bottle".into(), PromptMatch::Exact));
        assert_eq!(m("metal-nut"), ("metal_nut".into(), PromptMatch::Exact));
        assert_eq!(m("mvtec_bottle"), ("bottle".into(), PromptMatch::Part));
        assert_eq!(m("bottle_v2"), ("bottle".into(), PromptMatch::Part));
        assert_eq!(m("my_metal_nut_set"), ("metal_nut".into(), PromptMatch::Part));
        assert_eq!(m("visa_pipe_fryum"), ("pipe_fryum".into(), PromptMatch::Part));
        assert_eq!(m("visa_pcb1"), ("pcb1".into(), PromptMatch::Part));
        assert_eq!(m("magnetic_tile"), ("tile".into(), PromptMatch::Part));
        assert_eq!(m("mpdd_metal_plate"), ("object".into(), PromptMatch::Fallback));
        assert_eq!(m("ksdd"), ("object".into(), PromptMatch::Fallback));
        assert_eq!(m("bottles"), ("object".into(), PromptMatch::Fallback));
        assert_eq!(m("tiles_x"), ("object".into(), PromptMatch::Fallback));
        assert_eq!(m("object"), ("object".into(), PromptMatch::Exact));
    }

    #[test]
    fn bundled_categories_map_mvtec_names() {
        let all = prompts::categories().unwrap();
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(match_prompt_category("mvtec_bottle", &names).0, "bottle");
        assert_eq!(match_prompt_category("mpdd_metal_plate", &names).0, "object");
        assert_eq!(match_prompt_category("ksdd", &names).0, "object");
        assert_eq!(match_prompt_category("metal_nut", &names).1, PromptMatch::Exact);
    }

    #[test]
    fn settings_mismatches_name_the_fields() {
        let s = Settings {
            model: "m".into(),
            model_sha256: "ab".into(),
            model_bytes: 10,
            dataset: "/d".into(),
            layout: Layout::Mvtec,
            mode: Mode::Fast,
            size: 224,
            shots: None,
            seed: 0,
            surgery_layers: Some(6),
            prompt_category: None,
            learned_sha256: None,
        };
        let mut t = s.clone();
        t.model = "elsewhere".into();
        assert!(s.mismatches(&t).is_empty());
        t.size = 240;
        t.mode = Mode::Winclip;
        let d = s.mismatches(&t);
        assert_eq!(d.len(), 2);
        assert!(d[0].starts_with("mode") && d[1].starts_with("size"), "{d:?}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["mode"], "fast");
        assert_eq!(json["layout"], "mvtec");
        assert_eq!(serde_json::from_value::<Settings>(json.clone()).unwrap(), s);
        // A run recorded before layouts read MVTec AD.
        let mut old = json;
        old.as_object_mut().unwrap().remove("layout");
        assert_eq!(serde_json::from_value::<Settings>(old).unwrap().layout, Layout::Mvtec);
        t = s.clone();
        t.layout = Layout::Loco;
        let d = s.mismatches(&t);
        assert_eq!(d, ["layout: Loco → Mvtec"], "previous → now");
    }
}
