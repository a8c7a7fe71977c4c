//! Evaluation on datasets in the MVTec AD folder layout (`anoscope eval`).
//!
//! # Dataset layout
//!
//! ```text
//! ROOT/<category>/train/good/*.png                        normal images (few-shot references)
//! ROOT/<category>/test/good/*.png                         normal test images (all-zero masks)
//! ROOT/<category>/test/<defect>/*.png                     anomalous test images
//! ROOT/<category>/ground_truth/<defect>/<stem>_mask.png   their masks (optional per category)
//! ```
//!
//! `ROOT` may also be a single category folder (it has `test/` itself); the category is then
//! named after the folder. Images are PNG, JPEG, BMP, TIFF, WebP or GIF in any colour layout that
//! [`crate::preprocess::load_image`] reads (grayscale, RGBA, 16-bit, palette); other files
//! (`README`, `.DS_Store`, …) are ignored with a note. A category without `ground_truth/` gets
//! image metrics only. Where it exists, every anomalous image needs its mask: a missing mask, or
//! a mask whose aspect ratio differs from its image's by more than 1 %, is an error naming the
//! file, raised while scanning (before any model runs).
//!
//! # Evaluation
//!
//! Test images are resized to a `size × size` square (the model input) and scored by one of the
//! [`crate::detect`] modes ([`Mode`]). Pixel metrics are computed at that resolution: each mask
//! is thresholded at `> 127` (on its brightest channel) at its own resolution, then resized to
//! `size × size` with nearest neighbour (half-pixel centres, [`resize_mask_nearest`]).
//!
//! # Output folder
//!
//! ```text
//! OUT/run.json                                   settings, references, versions, timings
//! OUT/records/<category>/<defect>/<stem>.json    one [`ImageRecord`] per finished image
//! OUT/maps/<category>/<defect>/<stem>.map.safetensors   `anomaly_map` [H,W] f32
//! OUT/scores.csv                                 category,defect,stem,label,score
//! OUT/metrics.json, OUT/metrics.csv, OUT/metrics.md
//! OUT/overlays/<category>/{fp,fn}_<rank>__<defect>__<stem>.png   image | overlay | mask
//! ```
//!
//! Each image's map and record are written as soon as it is scored, atomically (a temporary
//! name, then a rename; the record last), so an interrupted run leaves only complete results and
//! [`EvalOptions::resume`] skips them. Batch mode (MuSc) scores a category's test images
//! together, so it resumes per category. Everything needed to recompute the metrics
//! independently is in `scores.csv`, `maps/` and the dataset's masks; `metrics.json` holds the
//! values of [`crate::metrics`] on exactly these, pushed in `scores.csv` order.
use crate::detect::prompts::{self, EnsembleKind};
use crate::detect::winclip::{self, WinClipConfig};
use crate::detect::{fast, musc, Detection, TextPair};
use crate::metrics::{self, PixelAccumulator};
use crate::model::{CheckpointFiles, Clip};
use crate::preprocess::{self, ImageLimits, Normalize};
use crate::render;
use crate::tokenizer::ClipTokenizer;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// File extensions (lowercase) read as images.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "gif"];

/// The folder of normal images under `train/` and `test/`.
pub const GOOD: &str = "good";

/// Largest relative difference of a mask's aspect ratio from its image's that is accepted
/// (rounding when a dataset was downscaled).
pub const ASPECT_TOLERANCE: f64 = 0.01;

/// The key of the across-category row in `metrics.json` (so no category may have this name).
pub const MEAN_KEY: &str = "mean";

/// Names of the metric columns, in output order.
pub const METRIC_COLUMNS: [&str; 10] = [
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "aupro",
    "aupimo",
    "n_good",
    "n_anomalous",
];

// ---------------------------------------------------------------------------------------------
// Modes

pub use crate::detect::Mode;

// ---------------------------------------------------------------------------------------------
// Dataset scanning

/// One test image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestImage {
    /// The `test/` subfolder (`good` for normal images).
    pub defect: String,
    /// File name without its extension.
    pub stem: String,
    pub path: PathBuf,
    /// The mask of an anomalous image (`None` for good images and categories without masks).
    pub mask: Option<PathBuf>,
    /// Width and height from the file header.
    pub dims: (u32, u32),
}

impl TestImage {
    pub fn anomalous(&self) -> bool {
        self.defect != GOOD
    }
}

/// One category of a dataset.
#[derive(Clone, Debug)]
pub struct CategoryData {
    /// The category folder's name.
    pub name: String,
    pub dir: PathBuf,
    /// `train/good` images sorted by file name (may be empty).
    pub train_good: Vec<PathBuf>,
    /// Test images sorted by defect folder, then file name.
    pub test: Vec<TestImage>,
    /// Whether `ground_truth/` exists (pixel metrics are computed only then).
    pub has_ground_truth: bool,
}

impl CategoryData {
    pub fn n_good(&self) -> usize {
        self.test.iter().filter(|t| !t.anomalous()).count()
    }

    pub fn n_anomalous(&self) -> usize {
        self.test.iter().filter(|t| t.anomalous()).count()
    }
}

/// A scanned dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub categories: Vec<CategoryData>,
    /// Things that were skipped (extra files, folders without `test/`, missing `ground_truth/`).
    pub notes: Vec<String>,
}

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

struct Entry {
    name: String,
    path: PathBuf,
    is_dir: bool,
}

/// The entries of a folder sorted by name.
fn list_dir(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot read folder {}", dir.display()))?;
        let path = e.path();
        out.push(Entry {
            name: e.file_name().to_string_lossy().into_owned(),
            is_dir: path.is_dir(),
            path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Notes ignored entries of a folder; `what` is `(singular, plural)`.
fn note_ignored(notes: &mut Vec<String>, dir: &Path, names: &[String], what: (&str, &str)) {
    if names.is_empty() {
        return;
    }
    let mut shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        shown.push_str(", …");
    }
    let what = if names.len() == 1 { what.0 } else { what.1 };
    notes.push(format!("ignored {} {what} in {}: {shown}", names.len(), dir.display()));
}

/// The image files of a folder sorted by name, as (stem, path); other entries are noted.
fn image_files(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<(String, PathBuf)>> {
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    let mut ignored = Vec::new();
    for e in list_dir(dir)? {
        if !e.is_dir && is_image_path(&e.path) {
            let stem = e
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some((_, other)) = images.iter().find(|(s, _)| *s == stem) {
                bail!(
                    "two images with the stem `{stem}` in {}: {} and {} (results are stored per stem; remove one)",
                    dir.display(),
                    other.display(),
                    e.path.display()
                );
            }
            images.push((stem, e.path));
        } else {
            ignored.push(e.name);
        }
    }
    note_ignored(notes, dir, &ignored, ("non-image entry", "non-image entries"));
    Ok(images)
}

/// Width and height of an image file from its header (the format is guessed from the content).
pub fn image_dims(path: &Path) -> Result<(u32, u32)> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| anyhow!("cannot open image file {}: {e}", path.display()))?
        .into_dimensions()
        .map_err(|e| anyhow!("cannot read the size of image file {}: {e}", path.display()))
}

/// Errors when `mask`'s aspect ratio differs from `image`'s by more than [`ASPECT_TOLERANCE`].
pub fn check_mask_aspect(image: (u32, u32), mask: (u32, u32), image_path: &Path, mask_path: &Path) -> Result<()> {
    let ri = image.0 as f64 / image.1 as f64;
    let rm = mask.0 as f64 / mask.1 as f64;
    if (rm / ri - 1.0).abs() > ASPECT_TOLERANCE {
        bail!(
            "mask {} is {}x{} but its image {} is {}x{}: the aspect ratios differ ({rm:.4} vs {ri:.4})",
            mask_path.display(),
            mask.0,
            mask.1,
            image_path.display(),
            image.0,
            image.1
        );
    }
    Ok(())
}

/// The mask file of an anomalous image: `ground_truth/<defect>/<stem>_mask.<ext>`, PNG first.
fn find_mask(gt: &Path, defect: &str, stem: &str, image: &Path) -> Result<PathBuf> {
    let dir = gt.join(defect);
    let png = dir.join(format!("{stem}_mask.png"));
    if png.is_file() {
        return Ok(png);
    }
    for ext in IMAGE_EXTENSIONS {
        for e in [ext.to_string(), ext.to_ascii_uppercase()] {
            let p = dir.join(format!("{stem}_mask.{e}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "missing mask {} for the anomalous image {} (every anomalous image needs a mask when the category has a \
         ground_truth/ folder)",
        png.display(),
        image.display()
    )
}

fn scan_category(name: &str, dir: &Path, notes: &mut Vec<String>) -> Result<CategoryData> {
    if name == MEAN_KEY {
        bail!(
            "{}: a category may not be named `{MEAN_KEY}` (that key holds the averages in metrics.json)",
            dir.display()
        );
    }
    let test_dir = dir.join("test");
    let gt = dir.join("ground_truth");
    let has_ground_truth = gt.is_dir();
    if !has_ground_truth {
        notes.push(format!(
            "category {name}: no ground_truth/ folder in {}: image metrics only",
            dir.display()
        ));
    }
    let mut test = Vec::new();
    let mut stray = Vec::new();
    for e in list_dir(&test_dir)? {
        if !e.is_dir {
            stray.push(e.name);
            continue;
        }
        for (stem, path) in image_files(&e.path, notes)? {
            let dims = image_dims(&path)?;
            let mask = if e.name != GOOD && has_ground_truth {
                let m = find_mask(&gt, &e.name, &stem, &path)?;
                check_mask_aspect(dims, image_dims(&m)?, &path, &m)?;
                Some(m)
            } else {
                None
            };
            test.push(TestImage {
                defect: e.name.clone(),
                stem,
                path,
                mask,
                dims,
            });
        }
    }
    note_ignored(
        notes,
        &test_dir,
        &stray,
        ("file outside the defect folders", "files outside the defect folders"),
    );
    if test.is_empty() {
        bail!(
            "category {name}: no test images in {} (expected test/good/*.png and test/<defect>/*.png)",
            test_dir.display()
        );
    }
    let good_dir = dir.join("train").join(GOOD);
    let train_good = if good_dir.is_dir() {
        image_files(&good_dir, notes)?.into_iter().map(|(_, p)| p).collect()
    } else {
        Vec::new()
    };
    let cat = CategoryData {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        train_good,
        test,
        has_ground_truth,
    };
    if cat.n_good() == 0 || cat.n_anomalous() == 0 {
        notes.push(format!(
            "category {name} has {} good and {} anomalous test images: the metrics that need both are undefined",
            cat.n_good(),
            cat.n_anomalous()
        ));
    }
    Ok(cat)
}

/// Scans `root` (see the [module docs](self)). `only` restricts the categories (empty: all);
/// a requested category that is not there is an error listing those that are.
pub fn scan_dataset(root: &Path, only: &[String]) -> Result<Dataset> {
    if !root.exists() {
        bail!("dataset folder {} does not exist", root.display());
    }
    if !root.is_dir() {
        bail!("dataset {} is not a folder", root.display());
    }
    let mut notes = Vec::new();
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if root.join("test").is_dir() {
        let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let name = canonical
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into());
        candidates.push((name, root.to_path_buf()));
    } else {
        let entries = list_dir(root)?;
        if entries.is_empty() {
            bail!(
                "dataset folder {} is empty (expected ROOT/<category>/test/…, or ROOT/test/… for a single category)",
                root.display()
            );
        }
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        for e in entries {
            if !e.is_dir {
                files.push(e.name);
            } else if e.path.join("test").is_dir() {
                candidates.push((e.name, e.path));
            } else {
                dirs.push(e.name);
            }
        }
        note_ignored(&mut notes, root, &files, ("file", "files"));
        note_ignored(
            &mut notes,
            root,
            &dirs,
            ("folder without a test/ subfolder", "folders without a test/ subfolder"),
        );
        if candidates.is_empty() {
            bail!(
                "no category found in {}: expected ROOT/<category>/test/<defect>/*.png (MVTec AD layout) or \
                 ROOT/test/… for a single category",
                root.display()
            );
        }
    }
    if !only.is_empty() {
        for c in only {
            if !candidates.iter().any(|(n, _)| n == c) {
                bail!(
                    "category `{c}` is not in {} (found: {})",
                    root.display(),
                    candidates
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        candidates.retain(|(n, _)| only.contains(n));
    }
    let categories = candidates
        .iter()
        .map(|(name, dir)| scan_category(name, dir, &mut notes))
        .collect::<Result<_>>()?;
    Ok(Dataset {
        root: root.to_path_buf(),
        categories,
        notes,
    })
}

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
// Few-shot references

/// `k` distinct reference images drawn from `train_good` (taken in the given order, sorted by
/// name by [`scan_dataset`]) with ChaCha8 seeded by `seed`: a partial Fisher–Yates shuffle, step
/// `i` swapping position `i` with `i + next_u64() % (n − i)`; the first `k` in drawn order.
/// Deterministic across platforms and releases.
pub fn select_references(train_good: &[PathBuf], k: usize, seed: u64) -> Result<Vec<PathBuf>> {
    if k == 0 {
        bail!("few-shot mode needs at least one reference (--shots ≥ 1)");
    }
    let n = train_good.len();
    if k > n {
        bail!("--shots {k} needs {k} normal reference images, but train/good has {n}");
    }
    let mut pool = train_good.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..k {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(k);
    Ok(pool)
}

// ---------------------------------------------------------------------------------------------
// Masks

/// Nearest-neighbour resize of a `w × h` mask to `out_w × out_h` with half-pixel centres
/// (source index `⌊(2i + 1)·w / (2·out_w)⌋`, as PIL's `NEAREST` and torch's `nearest-exact`).
///
/// # Panics
/// If `mask.len() != w * h`, or the mask is empty while the output is not.
pub fn resize_mask_nearest(mask: &[bool], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<bool> {
    assert_eq!(mask.len(), w * h, "resize_mask_nearest: mask is not {w}x{h}");
    if out_w * out_h == 0 {
        return Vec::new();
    }
    assert!(w * h > 0, "resize_mask_nearest: empty mask");
    let xs: Vec<usize> = (0..out_w).map(|x| ((2 * x + 1) * w / (2 * out_w)).min(w - 1)).collect();
    let mut out = Vec::with_capacity(out_w * out_h);
    for y in 0..out_h {
        let sy = ((2 * y + 1) * h / (2 * out_h)).min(h - 1);
        out.extend(xs.iter().map(|&sx| mask[sy * w + sx]));
    }
    out
}

/// A mask file at its own resolution, thresholded: a pixel is anomalous when its brightest
/// channel is `> 127` (8-bit scale; 16-bit and palette masks are converted first).
pub fn read_mask(path: &Path) -> Result<(Vec<bool>, usize, usize)> {
    let img = preprocess::load_image(path, &ImageLimits::default())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mask = img.pixels().map(|p| p.0.iter().any(|&c| c > 127)).collect();
    Ok((mask, w, h))
}

/// A mask file thresholded ([`read_mask`]) and resized to `out_w × out_h`
/// ([`resize_mask_nearest`]).
pub fn load_mask(path: &Path, out_w: usize, out_h: usize) -> Result<Vec<bool>> {
    let (m, w, h) = read_mask(path)?;
    Ok(resize_mask_nearest(&m, w, h, out_w, out_h))
}

// ---------------------------------------------------------------------------------------------
// Output files

/// One scored test image (`records/<category>/<defect>/<stem>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub category: String,
    pub defect: String,
    pub stem: String,
    /// The image file.
    pub path: String,
    pub anomalous: bool,
    pub score: f32,
    pub map_width: usize,
    pub map_height: usize,
    pub image_width: u32,
    pub image_height: u32,
    /// Detection time (batch mode: the category's time divided by its images).
    pub ms: f64,
}

/// Paths inside an output folder.
#[derive(Clone, Debug)]
pub struct OutDir {
    pub root: PathBuf,
}

impl OutDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }

    pub fn record(&self, category: &str, defect: &str, stem: &str) -> PathBuf {
        self.root
            .join("records")
            .join(category)
            .join(defect)
            .join(format!("{stem}.json"))
    }

    pub fn map(&self, category: &str, defect: &str, stem: &str) -> PathBuf {
        self.root
            .join("maps")
            .join(category)
            .join(defect)
            .join(format!("{stem}.map.safetensors"))
    }

    pub fn overlays(&self, category: &str) -> PathBuf {
        self.root.join("overlays").join(category)
    }
}

/// `.<name>.tmp` next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary name next to `path`, then renames it over `path`: readers (and
/// an interrupted run) see the old file or the complete new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    create_parent(path)?;
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes `anomaly_map` `[height, width]` f32 as safetensors, atomically.
pub fn write_map(path: &Path, map: &[f32], width: usize, height: usize) -> Result<()> {
    create_parent(path)?;
    let tmp = temp_path(path);
    Tensor::from_slice(map, (height, width), &Device::Cpu)?
        .save_safetensors("anomaly_map", &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Reads `anomaly_map` `[H, W]` from a safetensors file: (values, width, height).
pub fn read_map(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read anomaly map {}", path.display()))?;
    let t = tensors
        .get("anomaly_map")
        .with_context(|| format!("{}: no `anomaly_map` tensor", path.display()))?;
    let (h, w) = t
        .dims2()
        .with_context(|| format!("{}: `anomaly_map` must be [H, W]", path.display()))?;
    let values = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((values, w, h))
}

/// Writes a record (after its map: the record marks the image as finished).
pub fn write_record(path: &Path, r: &ImageRecord) -> Result<()> {
    write_atomic(path, (serde_json::to_string_pretty(r)? + "\n").as_bytes())
}

/// A finished image's record, or `None` when the record or its map is missing or unreadable.
pub fn read_finished(out: &OutDir, category: &str, img: &TestImage) -> Option<ImageRecord> {
    let text = std::fs::read_to_string(out.record(category, &img.defect, &img.stem)).ok()?;
    let r: ImageRecord = serde_json::from_str(&text).ok()?;
    let ok = r.category == category && r.defect == img.defect && r.stem == img.stem;
    (ok && out.map(category, &img.defect, &img.stem).is_file()).then_some(r)
}

/// One CSV field, quoted (RFC 4180) when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `scores.csv`: header `category,defect,stem,label,score` (label 1 = anomalous), one row per
/// record in the given order; scores in Rust's shortest round-trip form of the f32.
pub fn scores_csv(records: &[ImageRecord]) -> String {
    let mut s = String::from("category,defect,stem,label,score\n");
    for r in records {
        let _ = writeln!(
            s,
            "{},{},{},{},{}",
            csv_field(&r.category),
            csv_field(&r.defect),
            csv_field(&r.stem),
            u8::from(r.anomalous),
            r.score
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The metrics of one category (or their mean): fractions in [0, 1], `None` where undefined.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryMetrics {
    pub image_auroc: Option<f64>,
    pub image_ap: Option<f64>,
    pub image_f1max: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub pixel_ap: Option<f64>,
    pub pixel_f1max: Option<f64>,
    pub aupro: Option<f64>,
    pub aupimo: Option<f64>,
    pub n_good: usize,
    pub n_anomalous: usize,
}

impl CategoryMetrics {
    /// The eight metric values in [`METRIC_COLUMNS`] order.
    pub fn values(&self) -> [Option<f64>; 8] {
        [
            self.image_auroc,
            self.image_ap,
            self.image_f1max,
            self.pixel_auroc,
            self.pixel_ap,
            self.pixel_f1max,
            self.aupro,
            self.aupimo,
        ]
    }

    fn from_values(v: [Option<f64>; 8], n_good: usize, n_anomalous: usize) -> Self {
        Self {
            image_auroc: v[0],
            image_ap: v[1],
            image_f1max: v[2],
            pixel_auroc: v[3],
            pixel_ap: v[4],
            pixel_f1max: v[5],
            aupro: v[6],
            aupimo: v[7],
            n_good,
            n_anomalous,
        }
    }
}

/// The image metrics of `records` ([`metrics::image_metrics`]); pixel metrics `None`.
pub fn image_level_metrics(records: &[ImageRecord]) -> CategoryMetrics {
    let scores: Vec<f32> = records.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = records.iter().map(|r| r.anomalous).collect();
    let m = metrics::image_metrics(&scores, &labels);
    CategoryMetrics {
        image_auroc: m.auroc,
        image_ap: m.ap,
        image_f1max: m.f1max,
        n_good: labels.iter().filter(|l| !**l).count(),
        n_anomalous: labels.iter().filter(|l| **l).count(),
        ..Default::default()
    }
}

/// The per-metric mean over categories (over those where it is defined; `None` when none is);
/// `n_good` and `n_anomalous` are totals.
pub fn mean_metrics(per: &[CategoryMetrics]) -> CategoryMetrics {
    let mut v = [None; 8];
    for (i, slot) in v.iter_mut().enumerate() {
        let defined: Vec<f64> = per.iter().filter_map(|m| m.values()[i]).collect();
        if !defined.is_empty() {
            *slot = Some(defined.iter().sum::<f64>() / defined.len() as f64);
        }
    }
    CategoryMetrics::from_values(
        v,
        per.iter().map(|m| m.n_good).sum(),
        per.iter().map(|m| m.n_anomalous).sum(),
    )
}

/// What [`category_metrics`] returns besides the metrics.
pub struct MetricsDetail {
    pub metrics: CategoryMetrics,
    /// Smallest and largest map value over the category (the overlay range of batch mode).
    pub map_range: (f32, f32),
    /// AUPIMO of each image in `records` order ([`metrics::PixelMetrics::aupimo_per_image`]);
    /// empty without masks.
    pub aupimo_per_image: Vec<Option<f64>>,
}

/// The metrics of a category from its records (in `scores.csv` order), the maps written for them
/// and the dataset's masks (all-zero for good images). Pixel metrics only when the category has
/// `ground_truth/`.
pub fn category_metrics(cat: &CategoryData, records: &[ImageRecord], out: &OutDir) -> Result<MetricsDetail> {
    let mut m = image_level_metrics(records);
    let mut acc = PixelAccumulator::new();
    let mut range = (f32::INFINITY, f32::NEG_INFINITY);
    for r in records {
        let path = out.map(&r.category, &r.defect, &r.stem);
        let (map, w, h) = read_map(&path)?;
        for &v in map.iter().filter(|v| v.is_finite()) {
            range = (range.0.min(v), range.1.max(v));
        }
        if !cat.has_ground_truth {
            continue;
        }
        let img = cat
            .test
            .iter()
            .find(|t| t.defect == r.defect && t.stem == r.stem)
            .with_context(|| format!("no test image {}/{} in category {}", r.defect, r.stem, cat.name))?;
        let mask = match &img.mask {
            Some(p) if r.anomalous => load_mask(p, w, h)?,
            _ => vec![false; w * h],
        };
        acc.push(&map, &mask, w, h)
            .with_context(|| format!("pixel metrics of {}", img.path.display()))?;
    }
    let mut aupimo_per_image = Vec::new();
    if cat.has_ground_truth {
        let p = acc.finish();
        m.pixel_auroc = p.auroc;
        m.pixel_ap = p.ap;
        m.pixel_f1max = p.f1max;
        m.aupro = p.aupro;
        m.aupimo = p.aupimo;
        aupimo_per_image = p.aupimo_per_image;
    }
    if range.0 > range.1 {
        range = (0.0, 1.0);
    }
    Ok(MetricsDetail {
        metrics: m,
        map_range: range,
        aupimo_per_image,
    })
}

/// `metrics.json`: `{"<category>": {…}, …, "mean": {…}}` in the given order, keys as
/// [`METRIC_COLUMNS`], `null` where undefined.
pub fn metrics_json(per: &[(String, CategoryMetrics)], mean: &CategoryMetrics) -> Result<String> {
    struct Report<'a>(&'a [(String, CategoryMetrics)], &'a CategoryMetrics);
    impl Serialize for Report<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(self.0.len() + 1))?;
            for (name, m) in self.0 {
                map.serialize_entry(name, m)?;
            }
            map.serialize_entry(MEAN_KEY, self.1)?;
            map.end()
        }
    }
    Ok(serde_json::to_string_pretty(&Report(per, mean))? + "\n")
}

/// `metrics.csv`: `category,` + [`METRIC_COLUMNS`], one row per category then `mean`; empty
/// fields where undefined.
pub fn metrics_csv(per: &[(String, CategoryMetrics)], mean: &CategoryMetrics) -> String {
    let mut s = format!("category,{}\n", METRIC_COLUMNS.join(","));
    for (name, m) in per.iter().map(|(n, m)| (n.as_str(), m)).chain([(MEAN_KEY, mean)]) {
        let vals: Vec<String> = m
            .values()
            .iter()
            .map(|v| v.map(|x| x.to_string()).unwrap_or_default())
            .collect();
        let _ = writeln!(
            s,
            "{},{},{},{}",
            csv_field(name),
            vals.join(","),
            m.n_good,
            m.n_anomalous
        );
    }
    s
}

/// A markdown table of the metrics in percent (one decimal), `–` where undefined.
pub fn markdown_table(per: &[(String, CategoryMetrics)], mean: &CategoryMetrics) -> String {
    let mut s = String::from(
        "| category | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AUPRO | AUPIMO | good | anomalous |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, m) in per.iter().map(|(n, m)| (n.as_str(), m)).chain([(MEAN_KEY, mean)]) {
        let vals: Vec<String> = m
            .values()
            .iter()
            .map(|v| v.map(|x| format!("{:.1}", 100.0 * x)).unwrap_or_else(|| "–".into()))
            .collect();
        let name = if name == MEAN_KEY {
            format!("**{name}**")
        } else {
            name.replace('|', "\\|")
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} |",
            vals.join(" | "),
            m.n_good,
            m.n_anomalous
        );
    }
    s.push_str("\nValues in percent; – = undefined (e.g. no masks, or only one class).\n");
    s
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
    pub model_bytes: u64,
    /// The dataset folder, canonicalised.
    pub dataset: String,
    pub mode: Mode,
    pub size: u32,
    pub shots: Option<usize>,
    pub seed: u64,
    pub surgery_layers: Option<usize>,
    pub prompt_category: Option<String>,
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
    pub model: PathBuf,
    pub dataset: PathBuf,
    /// Categories to evaluate (empty: all).
    pub categories: Vec<String>,
    pub mode: Mode,
    /// Few-shot references (fewshot only; default 1).
    pub shots: Option<usize>,
    /// Seed of the reference draw ([`select_references`]).
    pub seed: u64,
    /// Input side (default: the checkpoint's image size).
    pub size: Option<u32>,
    /// Prompt category for every dataset category (default: [`match_prompt_category`]).
    pub prompt_category: Option<String>,
    /// Fast mode's surgery layers (default [`fast::default_surgery_layers`]).
    pub surgery_layers: Option<usize>,
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
    pub categories: Vec<(String, CategoryMetrics)>,
    pub mean: CategoryMetrics,
    /// Images scored by this run.
    pub new_images: usize,
    /// Images taken over from a previous run (`--resume`).
    pub resumed_images: usize,
    pub seconds: f64,
    /// The markdown table (also written to `metrics.md`).
    pub markdown: String,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

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
}

impl Scorer<'_> {
    fn score_one(&self, path: &Path) -> Result<(Detection, (u32, u32))> {
        let (px, dims) = load_pixels(&[path], self.size, &self.norm)?;
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
        ms,
    };
    write_record(&out.record(cat, &img.defect, &img.stem), &r)?;
    Ok(r)
}

/// `image | overlay | mask` for one test image, as PNG at `path`.
fn write_overlay(path: &Path, img: &TestImage, map_path: &Path, norm: render::Normalization) -> Result<()> {
    let base = preprocess::load_image(&img.path, &ImageLimits::default())?;
    let (map, w, h) = read_map(map_path)?;
    let ov = render::overlay(&base, &map, w, h, norm, 0.5, None)?;
    let (iw, ih) = (base.width() as usize, base.height() as usize);
    let mask = match &img.mask {
        Some(p) => load_mask(p, iw, ih)?,
        None => vec![false; iw * ih],
    };
    let bytes: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    let mask_img = render::mask_to_rgb(&bytes, iw, ih);
    let strip = render::side_by_side(&[&base, &ov, &mask_img]);
    write_atomic(path, &render::encode_png(&strip)?)
}

/// Overlays of the `worst` highest-scored good (`fp_…`) and lowest-scored anomalous (`fn_…`)
/// images of a category; earlier `fp_*`/`fn_*` overlays in the folder are removed first.
fn write_worst_overlays(
    out: &OutDir,
    cat: &CategoryData,
    records: &[ImageRecord],
    worst: usize,
    norm: render::Normalization,
) -> Result<Vec<String>> {
    let dir = out.overlays(&cat.name);
    if dir.is_dir() {
        for e in list_dir(&dir)? {
            let ours = (e.name.starts_with("fp_") || e.name.starts_with("fn_")) && e.name.ends_with(".png");
            if !e.is_dir && ours {
                std::fs::remove_file(&e.path).with_context(|| format!("cannot remove {}", e.path.display()))?;
            }
        }
    }
    let mut good: Vec<&ImageRecord> = records.iter().filter(|r| !r.anomalous).collect();
    good.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut bad: Vec<&ImageRecord> = records.iter().filter(|r| r.anomalous).collect();
    bad.sort_by(|a, b| a.score.total_cmp(&b.score));
    let mut written = Vec::new();
    for (prefix, list) in [("fp", good), ("fn", bad)] {
        for (rank, r) in list.into_iter().take(worst).enumerate() {
            let img = cat
                .test
                .iter()
                .find(|t| t.defect == r.defect && t.stem == r.stem)
                .context("record without test image")?;
            let name = format!("{prefix}_{}__{}__{}.png", rank + 1, r.defect, r.stem);
            let path = dir.join(&name);
            write_overlay(&path, img, &out.map(&cat.name, &r.defect, &r.stem), norm)?;
            written.push(format!("overlays/{}/{name}", cat.name));
        }
    }
    Ok(written)
}

/// Runs an evaluation (see the [module docs](self)) and writes every output file.
pub fn run(opts: &EvalOptions, progress: &mut dyn Progress) -> Result<EvalSummary> {
    let t_start = Instant::now();
    let started = unix_now();
    // Options.
    let shots = match (opts.mode, opts.shots) {
        (Mode::Fewshot, s) => Some(s.unwrap_or(1)),
        (_, None) => None,
        (m, Some(_)) => bail!("--shots applies to --mode fewshot only (mode is {m})"),
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
    let known = prompts::categories()?;
    let known_names: Vec<&str> = known.iter().map(|c| c.name.as_str()).collect();
    if let Some(p) = &opts.prompt_category {
        if !known_names.contains(&p.as_str()) {
            bail!("unknown prompt category `{p}` (known: {})", known_names.join(", "));
        }
    }
    // Dataset (all file errors before the model loads).
    let dataset = scan_dataset(&opts.dataset, &opts.categories)?;
    for n in &dataset.notes {
        progress.note(n);
    }
    for cat in &dataset.categories {
        match opts.mode {
            Mode::Fewshot => {
                let k = shots.unwrap_or(1);
                if cat.train_good.len() < k {
                    bail!(
                        "category {}: --shots {k} needs {k} normal images in {}, found {}",
                        cat.name,
                        cat.dir.join("train").join(GOOD).display(),
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
    let clip = Clip::load_dir(&opts.model)?;
    let size = opts.size.unwrap_or(clip.cfg.vision.image_size as u32);
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
        mode: opts.mode,
        size,
        shots,
        seed: opts.seed,
        surgery_layers,
        prompt_category: opts.prompt_category.clone(),
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
        if opts.mode.uses_text() {
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
                let text = text_pair(&clip, tok.as_ref().context("tokenizer")?, &prompt_cat)?;
                text_s = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let refs_feats = if opts.mode == Mode::Fewshot {
                    let paths: Vec<&Path> = refs.iter().map(|p| p.as_path()).collect();
                    let (px, _) = load_pixels(&paths, size, &norm)?;
                    Some(winclip::references(&clip, &px, &cfg)?)
                } else {
                    None
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
            "prompt_category": if opts.mode.uses_text() { Some(&prompt_cat) } else { None },
            "prompt_match": if opts.mode.uses_text() { Some(how) } else { None },
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
    fn references_are_deterministic_distinct_and_checked() {
        let pool: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i:03}.png"))).collect();
        let a = select_references(&pool, 4, 7).unwrap();
        assert_eq!(a, select_references(&pool, 4, 7).unwrap());
        assert_eq!(a.len(), 4);
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 4);
        assert!(a.iter().all(|p| pool.contains(p)));
        // Other seeds give other draws (for some seed).
        assert!((0..20).any(|s| select_references(&pool, 4, s).unwrap() != a));
        // Everything when k == n.
        let mut all = select_references(&pool, 10, 3).unwrap();
        all.sort();
        assert_eq!(all, pool);
        assert!(select_references(&pool, 11, 0).unwrap_err().to_string().contains("11"));
        assert!(select_references(&pool, 0, 0).is_err());
    }

    #[test]
    fn nearest_resize_uses_half_pixel_centres() {
        // 4x1 → 2x1 takes source columns 1 and 3.
        let m = [false, true, false, true];
        assert_eq!(resize_mask_nearest(&m, 4, 1, 2, 1), vec![true, true]);
        // Identity.
        let m = [true, false, false, true];
        assert_eq!(resize_mask_nearest(&m, 2, 2, 2, 2), m.to_vec());
        // Upsampling 2x1 → 4x2 repeats pixels.
        assert_eq!(
            resize_mask_nearest(&[true, false], 2, 1, 4, 2),
            vec![true, true, false, false, true, true, false, false]
        );
        assert!(resize_mask_nearest(&[], 0, 0, 0, 0).is_empty());
    }

    #[test]
    fn mask_aspect_tolerates_rounding_only() {
        let (i, m) = (Path::new("img.png"), Path::new("img_mask.png"));
        assert!(check_mask_aspect((448, 448), (64, 64), i, m).is_ok());
        assert!(check_mask_aspect((250, 627), (125, 314), i, m).is_ok());
        let e = check_mask_aspect((64, 64), (64, 32), i, m).unwrap_err().to_string();
        assert!(e.contains("img_mask.png") && e.contains("aspect"), "{e}");
    }

    #[test]
    fn csv_and_tables() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        let r = ImageRecord {
            category: "c".into(),
            defect: "good".into(),
            stem: "0,1".into(),
            path: "x".into(),
            anomalous: false,
            score: 0.1,
            map_width: 2,
            map_height: 2,
            image_width: 2,
            image_height: 2,
            ms: 1.0,
        };
        assert_eq!(
            scores_csv(&[r]),
            "category,defect,stem,label,score\nc,good,\"0,1\",0,0.1\n"
        );
        let a = CategoryMetrics {
            image_auroc: Some(0.5),
            aupro: Some(1.0),
            n_good: 2,
            n_anomalous: 3,
            ..Default::default()
        };
        let b = CategoryMetrics {
            image_auroc: Some(1.0),
            n_good: 1,
            n_anomalous: 1,
            ..Default::default()
        };
        let mean = mean_metrics(&[a.clone(), b.clone()]);
        assert_eq!(mean.image_auroc, Some(0.75));
        assert_eq!(mean.aupro, Some(1.0));
        assert_eq!(mean.pixel_ap, None);
        assert_eq!((mean.n_good, mean.n_anomalous), (3, 4));
        let per = vec![("b".to_string(), a), ("a".to_string(), b)];
        let json: serde_json::Value = serde_json::from_str(&metrics_json(&per, &mean).unwrap()).unwrap();
        assert_eq!(json["b"]["image_auroc"], 0.5);
        assert!(json["b"]["pixel_auroc"].is_null());
        assert_eq!(json["mean"]["n_anomalous"], 4);
        let obj = json["b"].as_object().unwrap();
        assert_eq!(obj.len(), METRIC_COLUMNS.len());
        assert!(METRIC_COLUMNS.iter().all(|k| obj.contains_key(*k)));
        let text = metrics_json(&per, &mean).unwrap();
        assert!(
            text.find("\"b\"").unwrap() < text.find("\"a\"").unwrap(),
            "category order kept"
        );
        let csv = metrics_csv(&per, &mean);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1], "b,0.5,,,,,,1,,2,3");
        assert!(markdown_table(&per, &mean).contains("| b | 50.0 | – |"));
    }

    #[test]
    fn settings_mismatches_name_the_fields() {
        let s = Settings {
            model: "m".into(),
            model_sha256: "ab".into(),
            model_bytes: 10,
            dataset: "/d".into(),
            mode: Mode::Fast,
            size: 224,
            shots: None,
            seed: 0,
            surgery_layers: Some(6),
            prompt_category: None,
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
        assert_eq!(serde_json::from_value::<Settings>(json).unwrap(), s);
    }

    fn png(path: &Path, w: u32, h: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::new(w, h).save(path).unwrap();
    }

    #[test]
    fn scanning_finds_categories_masks_and_notes() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let c = r.join("mvtec_x");
        png(&c.join("train/good/b.png"), 8, 8);
        png(&c.join("train/good/a.png"), 8, 8);
        png(&c.join("test/good/000.png"), 8, 8);
        png(&c.join("test/crack/001.png"), 8, 8);
        png(&c.join("test/crack/000.png"), 8, 8);
        png(&c.join("ground_truth/crack/000_mask.png"), 4, 4);
        png(&c.join("ground_truth/crack/001_mask.png"), 8, 8);
        std::fs::write(c.join("test/good/.DS_Store"), b"x").unwrap();
        std::fs::write(r.join("README.md"), b"x").unwrap();
        std::fs::create_dir_all(r.join("notes")).unwrap();
        // A second category without masks.
        png(&r.join("plain/test/good/0.png"), 8, 4);
        png(&r.join("plain/test/bad/1.jpg"), 8, 4);
        let d = scan_dataset(r, &[]).unwrap();
        let names: Vec<&str> = d.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["mvtec_x", "plain"]);
        let x = &d.categories[0];
        assert!(x.has_ground_truth);
        assert_eq!(
            x.train_good.iter().map(|p| p.file_name().unwrap()).collect::<Vec<_>>(),
            ["a.png", "b.png"]
        );
        let keys: Vec<(String, String)> = x.test.iter().map(|t| (t.defect.clone(), t.stem.clone())).collect();
        assert_eq!(
            keys,
            [
                ("crack".into(), "000".into()),
                ("crack".into(), "001".into()),
                ("good".into(), "000".into())
            ]
        );
        assert!(x.test[0]
            .mask
            .as_ref()
            .unwrap()
            .ends_with("ground_truth/crack/000_mask.png"));
        assert!(x.test[2].mask.is_none());
        assert_eq!((x.n_good(), x.n_anomalous()), (1, 2));
        let plain = &d.categories[1];
        assert!(!plain.has_ground_truth && plain.test.iter().all(|t| t.mask.is_none()));
        let notes = d.notes.join("\n");
        assert!(
            notes.contains(".DS_Store") && notes.contains("README.md") && notes.contains("notes"),
            "{notes}"
        );
        assert!(notes.contains("plain: no ground_truth"), "{notes}");
        // Filtering, and an unknown category.
        assert_eq!(scan_dataset(r, &["plain".into()]).unwrap().categories.len(), 1);
        let e = scan_dataset(r, &["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("mvtec_x"), "{e}");
        // A single category folder as the root.
        let d = scan_dataset(&c, &[]).unwrap();
        assert_eq!(d.categories.len(), 1);
        assert_eq!(d.categories[0].name, "mvtec_x");
        // A missing mask, then a mask of another aspect ratio.
        std::fs::remove_file(c.join("ground_truth/crack/001_mask.png")).unwrap();
        let e = format!("{:#}", scan_dataset(r, &[]).unwrap_err());
        assert!(e.contains("001_mask.png") && e.contains("missing"), "{e}");
        png(&c.join("ground_truth/crack/001_mask.png"), 8, 5);
        let e = format!("{:#}", scan_dataset(r, &[]).unwrap_err());
        assert!(e.contains("001_mask.png") && e.contains("aspect"), "{e}");
    }

    #[test]
    fn scanning_rejects_empty_and_odd_datasets() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let e = scan_dataset(r, &[]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        std::fs::create_dir_all(r.join("cat/test/good")).unwrap();
        let e = scan_dataset(r, &[]).unwrap_err().to_string();
        assert!(e.contains("no test images"), "{e}");
        std::fs::create_dir_all(r.join("x/docs")).unwrap();
        let e = scan_dataset(&r.join("x"), &[]).unwrap_err().to_string();
        assert!(e.contains("no category"), "{e}");
        assert!(scan_dataset(&r.join("missing"), &[])
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        png(&r.join("mean/test/good/0.png"), 4, 4);
        let e = scan_dataset(r, &["mean".into()]).unwrap_err().to_string();
        assert!(e.contains("may not be named"), "{e}");
        png(&r.join("dup/test/good/0.png"), 4, 4);
        png(&r.join("dup/test/good/0.jpg"), 4, 4);
        let e = scan_dataset(r, &["dup".into()]).unwrap_err().to_string();
        assert!(e.contains("two images with the stem"), "{e}");
    }

    #[test]
    fn maps_and_records_round_trip_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::new(tmp.path());
        let p = out.map("c", "good", "000");
        write_map(&p, &[0.0, 0.5, 1.0, 0.25, 0.75, 0.125], 3, 2).unwrap();
        let (v, w, h) = read_map(&p).unwrap();
        assert_eq!((w, h), (3, 2));
        assert_eq!(v, [0.0, 0.5, 1.0, 0.25, 0.75, 0.125]);
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
        let img = TestImage {
            defect: "good".into(),
            stem: "000".into(),
            path: "x.png".into(),
            mask: None,
            dims: (4, 4),
        };
        assert!(read_finished(&out, "c", &img).is_none());
        let r = ImageRecord {
            category: "c".into(),
            defect: "good".into(),
            stem: "000".into(),
            path: "x.png".into(),
            anomalous: false,
            score: 0.3,
            map_width: 3,
            map_height: 2,
            image_width: 4,
            image_height: 4,
            ms: 2.0,
        };
        write_record(&out.record("c", "good", "000"), &r).unwrap();
        assert_eq!(read_finished(&out, "c", &img), Some(r));
        std::fs::remove_file(&p).unwrap();
        assert!(
            read_finished(&out, "c", &img).is_none(),
            "a record without its map is not finished"
        );
    }
}
