//! The dataset side of an evaluation: scanning a dataset folder (the MVTec AD layout here, the
//! other published layouts in `layouts.rs`; see the [`eval` docs](super)) into categories, test
//! images and their masks, with every file error raised before a model runs; reading masks at the
//! model's resolution; and drawing the few-shot references from the normal training images.
//! Nothing here scores images or writes files: the run is in `runner.rs`, the output folder in
//! `output.rs`, the metrics and tables in `report.rs`.
use super::layouts::{self, Layout, MaskRule};
use super::MEAN_KEY;
use crate::preprocess::{self, ImageLimits};
use anyhow::{anyhow, bail, Context, Result};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// File extensions (lowercase) read as images.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "gif"];

/// The folder of normal images under `train/` and `test/`.
pub const GOOD: &str = "good";

/// Largest relative difference of a mask's aspect ratio from its image's that is accepted
/// (rounding when a dataset was downscaled).
pub const ASPECT_TOLERANCE: f64 = 0.01;

// ---------------------------------------------------------------------------------------------
// Dataset scanning

/// One test image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestImage {
    /// The `test/` subfolder (`good` for normal images).
    pub defect: String,
    /// File name without its extension.
    pub stem: String,
    /// The image file.
    pub path: PathBuf,
    /// The mask files of an anomalous image, read as their union: one in MVTec AD, VisA and
    /// MVTec 3D-AD, one or more in MVTec LOCO AD (empty for good images and categories without
    /// masks).
    pub masks: Vec<PathBuf>,
    /// How a mask pixel is read as anomalous (the dataset layout's convention).
    pub mask_rule: MaskRule,
    /// Width and height from the file header.
    pub dims: (u32, u32),
}

impl TestImage {
    /// Whether the image is anomalous (not in `test/good`).
    pub fn anomalous(&self) -> bool {
        self.defect != GOOD
    }

    /// The image's ground truth at `w × h`: the union of its masks, each binarised with
    /// [`Self::mask_rule`] at its own resolution and resized with [`resize_mask_nearest`]; all
    /// normal when it has no mask.
    pub fn load_mask(&self, w: usize, h: usize) -> Result<Vec<bool>> {
        load_masks(&self.masks, self.mask_rule, w, h)
    }
}

/// One category of a dataset.
#[derive(Clone, Debug)]
pub struct CategoryData {
    /// The category folder's name.
    pub name: String,
    /// The category folder (`ROOT/<category>`, or `ROOT` itself for a single category).
    pub dir: PathBuf,
    /// `train/good` images sorted by file name (may be empty).
    pub train_good: Vec<PathBuf>,
    /// Test images sorted by defect folder, then file name.
    pub test: Vec<TestImage>,
    /// Whether `ground_truth/` exists (pixel metrics are computed only then).
    pub has_ground_truth: bool,
    /// Where the normal training images come from, for messages (`<category>/train/good`, or
    /// the rows of VisA's split file).
    pub train_source: String,
}

impl CategoryData {
    /// Normal test images.
    pub fn n_good(&self) -> usize {
        self.test.iter().filter(|t| !t.anomalous()).count()
    }

    /// Anomalous test images.
    pub fn n_anomalous(&self) -> usize {
        self.test.iter().filter(|t| t.anomalous()).count()
    }
}

/// A scanned dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The dataset folder as given.
    pub root: PathBuf,
    /// The categories found (only those asked for, when some were), sorted by name.
    pub categories: Vec<CategoryData>,
    /// Things that were skipped (extra files, folders without `test/`, missing `ground_truth/`).
    pub notes: Vec<String>,
    /// The layout it was read in (detected, or given).
    pub layout: Layout,
}

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One entry of a folder ([`list_dir`]).
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) is_dir: bool,
}

/// The entries of a folder sorted by name.
pub(super) fn list_dir(dir: &Path) -> Result<Vec<Entry>> {
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
pub(super) fn note_ignored(notes: &mut Vec<String>, dir: &Path, names: &[String], what: (&str, &str)) {
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
pub(super) fn image_files(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<(String, PathBuf)>> {
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

/// One category folder (`ROOT/<category>`): its test images with masks, and `train/good`.
fn scan_category(name: &str, dir: &Path, notes: &mut Vec<String>) -> Result<CategoryData> {
    check_category_name(name, dir)?;
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
            let masks = if e.name != GOOD && has_ground_truth {
                let m = find_mask(&gt, &e.name, &stem, &path)?;
                check_mask_aspect(dims, image_dims(&m)?, &path, &m)?;
                vec![m]
            } else {
                Vec::new()
            };
            test.push(TestImage {
                defect: e.name.clone(),
                stem,
                path,
                masks,
                mask_rule: MaskRule::Above127,
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
        train_source: good_dir.display().to_string(),
    };
    note_one_class(&cat, notes);
    Ok(cat)
}

/// Notes a category whose test images are all good or all anomalous.
pub(super) fn note_one_class(cat: &CategoryData, notes: &mut Vec<String>) {
    if cat.n_good() == 0 || cat.n_anomalous() == 0 {
        notes.push(format!(
            "category {} has {} good and {} anomalous test images: the metrics that need both are undefined",
            cat.name,
            cat.n_good(),
            cat.n_anomalous()
        ));
    }
}

/// Errors for a category named like the across-category key of `metrics.json`.
pub(super) fn check_category_name(name: &str, dir: &Path) -> Result<()> {
    if name == MEAN_KEY {
        bail!(
            "{}: a category may not be named `{MEAN_KEY}` (that key holds the averages in metrics.json)",
            dir.display()
        );
    }
    Ok(())
}

/// Scans `root` in its detected layout ([`Layout::detect`]; see the [module docs](super)).
/// `only` restricts the categories (empty: all); a requested category that is not there is an
/// error listing those that are.
pub fn scan_dataset(root: &Path, only: &[String]) -> Result<Dataset> {
    scan_dataset_as(root, only, None)
}

/// [`scan_dataset`] in the given layout (`None`: detected with [`Layout::detect`]).
pub fn scan_dataset_as(root: &Path, only: &[String], layout: Option<Layout>) -> Result<Dataset> {
    if !root.exists() {
        bail!("dataset folder {} does not exist", root.display());
    }
    if !root.is_dir() {
        bail!("dataset {} is not a folder", root.display());
    }
    let layout = match layout {
        Some(l) => l,
        None => Layout::detect(root)?,
    };
    let mut notes = Vec::new();
    let categories = match layout {
        Layout::Visa => layouts::scan_visa(root, only, &mut notes)?,
        Layout::Mvtec | Layout::Loco | Layout::Mvtec3d => {
            let candidates = filter_categories(root, category_folders(root, layout, &mut notes)?, only)?;
            let mut out = Vec::new();
            for (name, dir) in &candidates {
                check_category_name(name, dir)?;
                out.push(match layout {
                    Layout::Loco => layouts::scan_loco_category(name, dir, &mut notes)?,
                    Layout::Mvtec3d => layouts::scan_mvtec3d_category(name, dir, &mut notes)?,
                    _ => scan_category(name, dir, &mut notes)?,
                });
            }
            out
        }
    };
    Ok(Dataset {
        root: root.to_path_buf(),
        categories,
        notes,
        layout,
    })
}

/// The category folders of a dataset in a folder-per-category layout: `root` itself when it has
/// `test/` (named after the folder), else its subfolders that have `test/` (others are noted).
pub(super) fn category_folders(root: &Path, layout: Layout, notes: &mut Vec<String>) -> Result<Vec<(String, PathBuf)>> {
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if root.join("test").is_dir() {
        let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let name = canonical
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into());
        candidates.push((name, root.to_path_buf()));
        return Ok(candidates);
    }
    let entries = list_dir(root)?;
    if entries.is_empty() {
        bail!(
            "dataset folder {} is empty (expected {}, or ROOT/test/… for a single category)",
            root.display(),
            layout.expected()
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
    note_ignored(notes, root, &files, ("file", "files"));
    note_ignored(
        notes,
        root,
        &dirs,
        ("folder without a test/ subfolder", "folders without a test/ subfolder"),
    );
    if candidates.is_empty() {
        bail!(
            "no category found in {}: expected {} ({} layout), or ROOT/test/… for a single category",
            root.display(),
            layout.expected(),
            layout.title()
        );
    }
    Ok(candidates)
}

/// Keeps the categories named in `only` (all when it is empty); a name that is not there is an
/// error listing those that are.
pub(super) fn filter_categories<T>(
    root: &Path,
    mut candidates: Vec<(String, T)>,
    only: &[String],
) -> Result<Vec<(String, T)>> {
    if only.is_empty() {
        return Ok(candidates);
    }
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
    Ok(candidates)
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

/// The source index along one axis of each of `n_out` output pixels in a nearest-neighbour
/// resize from `n_in` pixels, exactly as Pillow's `Image.resize(…, Image.NEAREST)` (Pillow
/// 13.0.0: `_resize_impl` in `_imaging.c` → `ImagingScaleAffine` in `libImaging/Geometry.c`):
/// the scale `a = (double)(float)n_in / n_out` (the box is `float`), the first source
/// coordinate `xo = a · 0.5`, then `xo += a` per output pixel (an f64 running sum, not
/// `(i + ½)·a`), and the index `(int)xo` (truncation; `-1` for `xo < 0`). `None` where that
/// index is outside `0..n_in` (Pillow fills those pixels with 0; mirrored, though it does not
/// happen at sizes that fit in memory).
///
/// Where the exact centre `(i + ½)·n_in / n_out` is an integer (a tie between two source
/// pixels) the rounding of `a` and of the running sum decides: 448 → 40 takes 27 for output 2
/// (exact 28.0), 195 for output 17 (exact 196.0), but 84 for output 7 (exact 84.0). The exact
/// rational `⌊(2i + 1)·n_in / (2·n_out)⌋` (used before) takes the upper pixel at every tie, and
/// so, by its formula, does torch's `interpolate(mode="nearest-exact")` (`⌊(i + ½)·s⌋` in f32,
/// `s = n_in / n_out`) at 448 → 40; torch's `nearest` (`⌊i·s⌋`, no half-pixel offset) is
/// another convention again.
pub fn nearest_source_indices(n_in: usize, n_out: usize) -> Vec<Option<usize>> {
    // `a[0] = (double)(box[2] - box[0]) / xsize` with `float box[4] = {0, 0, xsize_in, …}`.
    let a = f64::from(n_in as f32) / n_out as f64;
    // `xo = a[2] + a[0] * 0.5` with `a[2] = box[0] = 0`.
    let mut xo = 0.0 + a * 0.5;
    (0..n_out)
        .map(|_| {
            // `COORD(v) ((v) < 0.0 ? -1 : ((int)(v)))`
            let i = if xo < 0.0 { -1 } else { xo as i64 };
            xo += a;
            usize::try_from(i).ok().filter(|&i| i < n_in)
        })
        .collect()
}

/// Nearest-neighbour resize of a `w × h` mask to `out_w × out_h` picking exactly the source
/// pixels Pillow's `Image.resize((out_w, out_h), Image.NEAREST)` picks
/// ([`nearest_source_indices`] on each axis; outputs whose source is outside the mask are
/// normal, as Pillow's zero fill).
///
/// # Panics
/// If `mask.len() != w * h`, or the mask is empty while the output is not.
pub fn resize_mask_nearest(mask: &[bool], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<bool> {
    assert_eq!(mask.len(), w * h, "resize_mask_nearest: mask is not {w}x{h}");
    if out_w * out_h == 0 {
        return Vec::new();
    }
    assert!(w * h > 0, "resize_mask_nearest: empty mask");
    let xs = nearest_source_indices(w, out_w);
    let mut out = Vec::with_capacity(out_w * out_h);
    for sy in nearest_source_indices(h, out_h) {
        out.extend(
            xs.iter()
                .map(|sx| matches!((sy, sx), (Some(sy), Some(sx)) if mask[sy * w + sx])),
        );
    }
    out
}

/// A mask file at its own resolution, thresholded: a pixel is anomalous when its brightest
/// channel is `> 127` (8-bit scale; 16-bit and palette masks are converted first). This is the
/// MVTec AD rule ([`MaskRule::Above127`]); [`read_mask_as`] takes the rule.
pub fn read_mask(path: &Path) -> Result<(Vec<bool>, usize, usize)> {
    read_mask_as(path, MaskRule::Above127)
}

/// A mask file at its own resolution, binarised with `rule` on its 8-bit RGB pixels (16-bit and
/// palette masks are converted first).
pub fn read_mask_as(path: &Path, rule: MaskRule) -> Result<(Vec<bool>, usize, usize)> {
    let img = preprocess::load_image(path, &ImageLimits::default())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mask = img.pixels().map(|p| rule.anomalous(p.0)).collect();
    Ok((mask, w, h))
}

/// A mask file thresholded ([`read_mask`]) and resized to `out_w × out_h`
/// ([`resize_mask_nearest`]).
pub fn load_mask(path: &Path, out_w: usize, out_h: usize) -> Result<Vec<bool>> {
    let (m, w, h) = read_mask(path)?;
    Ok(resize_mask_nearest(&m, w, h, out_w, out_h))
}

/// The union of mask files at `out_w × out_h`: each binarised with `rule` at its own
/// resolution ([`read_mask_as`]) and resized ([`resize_mask_nearest`]), then OR-ed (for masks
/// of one size the same as resizing their union). No files: all normal.
pub fn load_masks(paths: &[PathBuf], rule: MaskRule, out_w: usize, out_h: usize) -> Result<Vec<bool>> {
    let mut out = vec![false; out_w * out_h];
    for p in paths {
        let (m, w, h) = read_mask_as(p, rule)?;
        for (o, v) in out.iter_mut().zip(resize_mask_nearest(&m, w, h, out_w, out_h)) {
            *o |= v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn nearest_resize_uses_pillows_source_pixels() {
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
        // 448 → 40: at the exact ties 28.0 and 196.0 Pillow's running f64 sum lands just below
        // (27, 195), at 84.0 on it (84); the exact rational takes the upper pixel every time.
        let s = nearest_source_indices(448, 40);
        assert_eq!((s[2], s[7], s[17], s[39]), (Some(27), Some(84), Some(195), Some(442)));
        assert_eq!(s[0], Some(5));
        // Upsampling by an integer factor has no ties.
        let s: Vec<usize> = nearest_source_indices(3, 6).into_iter().map(Option::unwrap).collect();
        assert_eq!(s, [0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn mask_aspect_tolerates_rounding_only() {
        let (i, m) = (Path::new("img.png"), Path::new("img_mask.png"));
        assert!(check_mask_aspect((448, 448), (64, 64), i, m).is_ok());
        assert!(check_mask_aspect((250, 627), (125, 314), i, m).is_ok());
        let e = check_mask_aspect((64, 64), (64, 32), i, m).unwrap_err().to_string();
        assert!(e.contains("img_mask.png") && e.contains("aspect"), "{e}");
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
        assert_eq!(x.test[0].masks.len(), 1);
        assert!(x.test[0].masks[0].ends_with("ground_truth/crack/000_mask.png"));
        assert!(x.test[2].masks.is_empty());
        assert_eq!(d.layout, Layout::Mvtec);
        assert!(x.test.iter().all(|t| t.mask_rule == MaskRule::Above127));
        assert_eq!((x.n_good(), x.n_anomalous()), (1, 2));
        let plain = &d.categories[1];
        assert!(!plain.has_ground_truth && plain.test.iter().all(|t| t.masks.is_empty()));
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
}
