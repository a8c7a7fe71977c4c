//! The published dataset layouts `anoscope eval` reads besides MVTec AD's (which is scanned in
//! `dataset.rs`): VisA, MVTec LOCO AD and MVTec 3D-AD (RGB), their detection ([`Layout::detect`])
//! and the mask conventions ([`MaskRule`]). Every layout is read into the same
//! [`CategoryData`] / [`TestImage`] items, so every detection mode evaluates on all of them.
use super::dataset::{
    check_category_name, check_mask_aspect, filter_categories, image_dims, image_files, is_image_path, list_dir,
    note_ignored, note_one_class, CategoryData, TestImage, GOOD,
};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// A dataset folder layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// MVTec AD: `<category>/test/<defect>/*.png`, `ground_truth/<defect>/<stem>_mask.png`.
    #[default]
    Mvtec,
    /// VisA as published: `split_csv/1cls.csv` naming `<category>/Data/Images/{Normal,Anomaly}/`
    /// and `<category>/Data/Masks/Anomaly/`.
    Visa,
    /// MVTec LOCO AD: `ground_truth/<defect>/<stem>/*.png`, several masks per image.
    Loco,
    /// MVTec 3D-AD, its RGB images: `test/<defect>/rgb/*.png` with `test/<defect>/gt/*.png`.
    Mvtec3d,
}

impl Layout {
    /// Every layout, in the order of the `--layout` values.
    pub const ALL: [Layout; 4] = [Layout::Mvtec, Layout::Visa, Layout::Loco, Layout::Mvtec3d];

    /// The `--layout` value (also the `run.json` spelling).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Mvtec => "mvtec",
            Layout::Visa => "visa",
            Layout::Loco => "loco",
            Layout::Mvtec3d => "mvtec3d",
        }
    }

    /// The dataset's published name.
    pub fn title(self) -> &'static str {
        match self {
            Layout::Mvtec => "MVTec AD",
            Layout::Visa => "VisA",
            Layout::Loco => "MVTec LOCO AD",
            Layout::Mvtec3d => "MVTec 3D-AD",
        }
    }

    /// The folder tree the layout expects, for messages.
    pub fn expected(self) -> &'static str {
        match self {
            Layout::Mvtec => {
                "ROOT/<category>/test/<defect>/*.png with ROOT/<category>/ground_truth/<defect>/<stem>_mask.png"
            }
            Layout::Visa => {
                "ROOT/split_csv/1cls.csv naming ROOT/<category>/Data/Images/{Normal,Anomaly}/* and \
                 ROOT/<category>/Data/Masks/Anomaly/*.png"
            }
            Layout::Loco => {
                "ROOT/<category>/test/<defect>/*.png with ROOT/<category>/ground_truth/<defect>/<stem>/*.png"
            }
            Layout::Mvtec3d => "ROOT/<category>/test/<defect>/rgb/*.png with ROOT/<category>/test/<defect>/gt/*.png",
        }
    }

    /// How the layout's masks are binarised.
    pub fn mask_rule(self) -> MaskRule {
        match self {
            Layout::Mvtec => MaskRule::Above127,
            Layout::Visa | Layout::Loco | Layout::Mvtec3d => MaskRule::NonZero,
        }
    }

    /// The layout of the dataset folder `root`:
    ///
    /// 1. VisA when `root/split_csv/1cls.csv` exists;
    /// 2. otherwise the category folders (`root` itself when it has `test/`, else its
    ///    subfolders with `test/`) are each classified — MVTec 3D-AD when some
    ///    `test/<defect>/rgb/` folder exists, MVTec LOCO AD when some
    ///    `ground_truth/<defect>/` holds a folder named after a test image of that defect
    ///    (`<stem>/`), else MVTec AD — and must agree.
    ///
    /// A tree that fits none is an error naming every layout's expected tree; categories that
    /// disagree are an error naming them (pick one with `--layout`).
    pub fn detect(root: &Path) -> Result<Layout> {
        if root.join("split_csv").join("1cls.csv").is_file() {
            return Ok(Layout::Visa);
        }
        if root.join("test").is_dir() {
            return classify_category(root);
        }
        let mut found: Vec<(String, Layout)> = Vec::new();
        let mut visa_like = false;
        let entries = list_dir(root)?;
        for e in &entries {
            if e.is_dir && e.path.join("test").is_dir() {
                found.push((e.name.clone(), classify_category(&e.path)?));
            } else if e.is_dir && e.path.join("Data").join("Images").is_dir() {
                visa_like = true;
            }
        }
        if root.join("Data").join("Images").is_dir() || (visa_like && found.is_empty()) {
            bail!(
                "{} looks like VisA but has no split_csv/1cls.csv: give the VisA root (the folder with split_csv/ \
                 and the category folders; pick categories with --categories). The VisA layout is {}",
                root.display(),
                Layout::Visa.expected()
            );
        }
        let Some((_, first)) = found.first().cloned() else {
            let what = if entries.is_empty() {
                "is empty"
            } else {
                "fits no layout (no category found)"
            };
            bail!("dataset folder {} {what}: {}", root.display(), expected_any());
        };
        if let Some((other, l)) = found.iter().find(|(_, l)| *l != first) {
            bail!(
                "the categories of {} are in different layouts ({} is {}, {other} is {}); evaluate them separately \
                 or choose one with --layout {}",
                root.display(),
                found[0].0,
                first.title(),
                l.title(),
                Layout::ALL.map(Layout::name).join("|")
            );
        }
        Ok(first)
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Layout::ALL.into_iter().find(|l| l.name() == s).with_context(|| {
            format!(
                "unknown layout `{s}` (known: {})",
                Layout::ALL.map(Layout::name).join(", ")
            )
        })
    }
}

/// Every layout's expected tree, for the error of a folder that fits none.
fn expected_any() -> String {
    let lines: Vec<String> = Layout::ALL
        .iter()
        .map(|l| format!("  {} (--layout {}): {}", l.title(), l.name(), l.expected()))
        .collect();
    format!(
        "expected one of these layouts (ROOT may also be one category folder, except for VisA):\n{}",
        lines.join("\n")
    )
}

/// The layout of one category folder (it has `test/`); see [`Layout::detect`].
fn classify_category(dir: &Path) -> Result<Layout> {
    for e in list_dir(&dir.join("test"))? {
        if e.is_dir && e.path.join("rgb").is_dir() {
            return Ok(Layout::Mvtec3d);
        }
    }
    // LOCO: a mask folder named after a test image of its defect (`ground_truth/<d>/000/` for
    // `test/<d>/000.png`); other folders there (`.ipynb_checkpoints`, …) do not count.
    let gt = dir.join("ground_truth");
    if gt.is_dir() {
        for d in list_dir(&gt)?.into_iter().filter(|e| e.is_dir) {
            let images = dir.join("test").join(&d.name);
            for sub in list_dir(&d.path)?.into_iter().filter(|e| e.is_dir) {
                let is_image = |e: &super::dataset::Entry| {
                    !e.is_dir && is_image_path(&e.path) && e.path.file_stem().is_some_and(|s| *s == *sub.name)
                };
                if images.is_dir() && list_dir(&images)?.iter().any(is_image) {
                    return Ok(Layout::Loco);
                }
            }
        }
    }
    Ok(Layout::Mvtec)
}

/// How a mask pixel (8-bit RGB) is read as anomalous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskRule {
    /// Brightest channel `> 127` (MVTec AD, as before; its masks are 0/255).
    #[default]
    Above127,
    /// Any channel non-zero: anomalib's VisA preparation (`mask[mask != 0] = 255` on the
    /// `cv2.imread` mask; VisA's masks hold small values such as 1 and 2, not 255 — they look
    /// black, as github.com/lewandofskee/DiAD issues 23 and 24 report) and its reading of
    /// MVTec LOCO AD and MVTec 3D-AD masks (`convert("L") > 0`, the same on their grey masks).
    NonZero,
}

impl MaskRule {
    /// Whether a pixel is anomalous.
    pub fn anomalous(self, rgb: [u8; 3]) -> bool {
        match self {
            MaskRule::Above127 => rgb.iter().any(|&c| c > 127),
            MaskRule::NonZero => rgb.iter().any(|&c| c != 0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MVTec LOCO AD

/// One MVTec LOCO AD category: `test/<defect>/*.png`; each anomalous image's masks are every
/// image in `ground_truth/<defect>/<stem>/` (one per defect region, read as their union, as
/// anomalib's `MVTecLOCODataset`); normal references from `train/good` (`validation/` is not
/// used).
pub(super) fn scan_loco_category(name: &str, dir: &Path, notes: &mut Vec<String>) -> Result<CategoryData> {
    let gt = dir.join("ground_truth");
    let has_ground_truth = gt.is_dir();
    if !has_ground_truth {
        notes.push(format!(
            "category {name}: no ground_truth/ folder in {}: image metrics only",
            dir.display()
        ));
    }
    let test_dir = dir.join("test");
    let mut test = Vec::new();
    let mut stray = Vec::new();
    for e in list_dir(&test_dir)? {
        if !e.is_dir {
            stray.push(e.name);
            continue;
        }
        for (stem, path) in image_files(&e.path, notes)? {
            let dims = image_dims(&path)?;
            let mut masks = Vec::new();
            if e.name != GOOD && has_ground_truth {
                let mdir = gt.join(&e.name).join(&stem);
                if !mdir.is_dir() {
                    bail!(
                        "missing mask folder {} for the anomalous image {} (MVTec LOCO AD keeps each anomalous \
                         image's masks in ground_truth/<defect>/<stem>/)",
                        mdir.display(),
                        path.display()
                    );
                }
                for (_, m) in image_files(&mdir, notes)? {
                    check_mask_aspect(dims, image_dims(&m)?, &path, &m)?;
                    masks.push(m);
                }
                if masks.is_empty() {
                    bail!(
                        "mask folder {} of the anomalous image {} has no mask image",
                        mdir.display(),
                        path.display()
                    );
                }
            }
            test.push(TestImage {
                defect: e.name.clone(),
                stem,
                path,
                masks,
                mask_rule: Layout::Loco.mask_rule(),
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
    finish_category(
        name,
        dir,
        test,
        dir.join("train").join(GOOD),
        has_ground_truth,
        Layout::Loco,
        notes,
    )
}

// ---------------------------------------------------------------------------------------------
// MVTec 3D-AD (RGB)

/// One MVTec 3D-AD category, its RGB images: `test/<defect>/rgb/*.png`, each anomalous image's
/// mask `test/<defect>/gt/<stem>.png` (as anomalib's `make_mvtec_3d_dataset`); normal
/// references from `train/good/rgb`. The point clouds (`xyz/`) and `validation/` are not used.
pub(super) fn scan_mvtec3d_category(name: &str, dir: &Path, notes: &mut Vec<String>) -> Result<CategoryData> {
    let test_dir = dir.join("test");
    let mut test = Vec::new();
    let mut stray = Vec::new();
    let mut has_ground_truth = false;
    let mut no_gt = Vec::new();
    for e in list_dir(&test_dir)? {
        if !e.is_dir {
            stray.push(e.name);
            continue;
        }
        let rgb = e.path.join("rgb");
        if !rgb.is_dir() {
            bail!(
                "{} has no rgb/ folder (MVTec 3D-AD keeps a defect's images in test/<defect>/rgb/ and its masks in \
                 test/<defect>/gt/)",
                e.path.display()
            );
        }
        let gt = e.path.join("gt");
        if e.name != GOOD {
            if gt.is_dir() {
                has_ground_truth = true;
            } else {
                no_gt.push(e.name.clone());
            }
        }
        for (stem, path) in image_files(&rgb, notes)? {
            let dims = image_dims(&path)?;
            let mut masks = Vec::new();
            if e.name != GOOD && gt.is_dir() {
                let m = gt.join(format!("{stem}.png"));
                if !m.is_file() {
                    bail!(
                        "missing mask {} for the anomalous image {}",
                        m.display(),
                        path.display()
                    );
                }
                check_mask_aspect(dims, image_dims(&m)?, &path, &m)?;
                masks.push(m);
            }
            test.push(TestImage {
                defect: e.name.clone(),
                stem,
                path,
                masks,
                mask_rule: Layout::Mvtec3d.mask_rule(),
                dims,
            });
        }
    }
    if has_ground_truth && !no_gt.is_empty() {
        bail!(
            "category {name}: the defect folders {} have no gt/ folder while others do (every anomalous image needs \
             its mask test/<defect>/gt/<stem>.png)",
            no_gt.join(", ")
        );
    }
    if !has_ground_truth {
        notes.push(format!(
            "category {name}: no test/<defect>/gt/ folder in {}: image metrics only",
            dir.display()
        ));
    }
    note_ignored(
        notes,
        &test_dir,
        &stray,
        ("file outside the defect folders", "files outside the defect folders"),
    );
    let train = dir.join("train").join(GOOD).join("rgb");
    finish_category(name, dir, test, train, has_ground_truth, Layout::Mvtec3d, notes)
}

/// The common end of a folder-per-category scan: at least one test image, the normal training
/// images of `train` (sorted; may be absent), the one-class note.
fn finish_category(
    name: &str,
    dir: &Path,
    test: Vec<TestImage>,
    train: PathBuf,
    has_ground_truth: bool,
    layout: Layout,
    notes: &mut Vec<String>,
) -> Result<CategoryData> {
    if test.is_empty() {
        bail!(
            "category {name}: no test images in {} (expected {})",
            dir.join("test").display(),
            layout.expected()
        );
    }
    let train_good = if train.is_dir() {
        image_files(&train, notes)?.into_iter().map(|(_, p)| p).collect()
    } else {
        Vec::new()
    };
    let cat = CategoryData {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        train_good,
        test,
        has_ground_truth,
        train_source: train.display().to_string(),
    };
    note_one_class(&cat, notes);
    Ok(cat)
}

// ---------------------------------------------------------------------------------------------
// VisA

/// The split file of the VisA layout, relative to its root.
pub const VISA_SPLIT: &str = "split_csv/1cls.csv";

/// Largest split file read (VisA's `1cls.csv` has about 10,800 rows, 1 MB).
const MAX_SPLIT_BYTES: u64 = 64 << 20;

/// The columns of [`VISA_SPLIT`].
const VISA_COLUMNS: [&str; 5] = ["object", "split", "label", "image", "mask"];

/// The fields of one line of a CSV file (RFC 4180: commas, double-quoted fields with `""` for a
/// quote; no line breaks inside fields, which VisA's split files never have).
fn csv_fields(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        bail!("text after a closing quote");
                    }
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                out.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            '"' if at_start => quoted = true,
            '"' => bail!("a quote inside an unquoted field"),
            _ => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        bail!("an unclosed quote");
    }
    out.push(field);
    Ok(out)
}

/// A path from the split file, relative to the VisA root: refused when absolute or when it
/// climbs out of the root (`..`).
fn visa_path(root: &Path, rel: &str, split: &Path, line: usize) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!(
            "{}:{line}: the path `{rel}` is not inside the dataset folder (paths in {VISA_SPLIT} are relative to it)",
            split.display()
        );
    }
    Ok(root.join(p))
}

/// A VisA dataset read as anomalib's VisA preparation reads it (`Visa.apply_cls1_split`): the
/// rows of `split_csv/1cls.csv` (`object,split,label,image,mask`, paths relative to `root`);
/// `split` `train` rows labelled `normal` are the references, `test` rows the test images,
/// `normal` → `good` and `anomaly` → `bad` (anomalib's folder names), each anomalous test image
/// with the mask its row names (a PNG next to the JPEG images, in `Data/Masks/Anomaly/`,
/// binarised with [`MaskRule::NonZero`]). Categories sorted by name, test images by label then
/// file name, references by file name.
pub(super) fn scan_visa(root: &Path, only: &[String], notes: &mut Vec<String>) -> Result<Vec<CategoryData>> {
    let split = root.join(VISA_SPLIT);
    if let Ok(meta) = std::fs::metadata(&split) {
        if meta.len() > MAX_SPLIT_BYTES {
            bail!(
                "{} is {} bytes, over the {MAX_SPLIT_BYTES} read (VisA's is about 1 MB): not a split file?",
                split.display(),
                meta.len()
            );
        }
    }
    let text = std::fs::read_to_string(&split).with_context(|| {
        format!(
            "VisA layout: cannot read {} (expected {})",
            split.display(),
            Layout::Visa.expected()
        )
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}')));
    let header = lines.find(|(_, l)| !l.trim().is_empty());
    let Some((hline, header)) = header else {
        bail!(
            "{} is empty (expected the header {})",
            split.display(),
            VISA_COLUMNS.join(",")
        );
    };
    let cols = csv_fields(header.trim_end()).with_context(|| format!("{}:{hline}", split.display()))?;
    if cols.iter().map(|c| c.trim()).ne(VISA_COLUMNS) {
        bail!(
            "{}:{hline}: the header is `{}`, expected `{}`",
            split.display(),
            header.trim_end(),
            VISA_COLUMNS.join(",")
        );
    }
    // (category, its test images, its train images)
    let mut cats: Vec<(String, Vec<TestImage>, Vec<PathBuf>)> = Vec::new();
    let mut skipped_train_anomalies = 0usize;
    for (n, line) in lines {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let f = csv_fields(line).with_context(|| format!("{}:{n}", split.display()))?;
        if f.len() != VISA_COLUMNS.len() {
            bail!(
                "{}:{n}: {} fields, expected {} ({})",
                split.display(),
                f.len(),
                VISA_COLUMNS.len(),
                VISA_COLUMNS.join(",")
            );
        }
        let (cat, split_name, label, image, mask) = (f[0].trim(), f[1].trim(), f[2].trim(), f[3].trim(), f[4].trim());
        if cat.is_empty() {
            bail!("{}:{n}: empty object (category) field", split.display());
        }
        let anomalous = match label {
            "normal" => false,
            "anomaly" => true,
            _ => bail!("{}:{n}: label `{label}`, expected normal or anomaly", split.display()),
        };
        let idx = match cats.iter().position(|(c, ..)| c == cat) {
            Some(i) => i,
            None => {
                cats.push((cat.to_string(), Vec::new(), Vec::new()));
                cats.len() - 1
            }
        };
        if !only.is_empty() && !only.iter().any(|o| o == cat) {
            continue;
        }
        let path = visa_path(root, image, &split, n)?;
        if !is_image_path(&path) {
            bail!("{}:{n}: `{image}` is not an image file name", split.display());
        }
        match split_name {
            "train" if anomalous => skipped_train_anomalies += 1,
            "train" => {
                if !path.is_file() {
                    bail!("{}:{n}: missing image {}", split.display(), path.display());
                }
                cats[idx].2.push(path);
            }
            "test" => {
                let dims = image_dims(&path).with_context(|| format!("{}:{n}", split.display()))?;
                let mut masks = Vec::new();
                if anomalous {
                    if mask.is_empty() {
                        bail!(
                            "{}:{n}: the anomalous test image {image} has no mask (its mask field is empty)",
                            split.display()
                        );
                    }
                    let m = visa_path(root, mask, &split, n)?;
                    if !m.is_file() {
                        bail!(
                            "{}:{n}: missing mask {} for the anomalous image {}",
                            split.display(),
                            m.display(),
                            path.display()
                        );
                    }
                    check_mask_aspect(dims, image_dims(&m)?, &path, &m)?;
                    masks.push(m);
                }
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let defect = if anomalous { "bad" } else { GOOD };
                if let Some(other) = cats[idx].1.iter().find(|t| t.defect == defect && t.stem == stem) {
                    bail!(
                        "{}:{n}: two {defect} test images of {cat} with the stem `{stem}`: {} and {} (results are \
                         stored per stem)",
                        split.display(),
                        other.path.display(),
                        path.display()
                    );
                }
                cats[idx].1.push(TestImage {
                    defect: defect.into(),
                    stem,
                    path,
                    masks,
                    mask_rule: Layout::Visa.mask_rule(),
                    dims,
                });
            }
            _ => bail!("{}:{n}: split `{split_name}`, expected train or test", split.display()),
        }
    }
    if cats.is_empty() {
        bail!("{} has no rows (expected one per image)", split.display());
    }
    if skipped_train_anomalies > 0 {
        notes.push(format!(
            "ignored {skipped_train_anomalies} anomalous train rows of {} (only normal images are references)",
            split.display()
        ));
    }
    cats.sort_by(|a, b| a.0.cmp(&b.0));
    let cats = filter_categories(root, cats.into_iter().map(|(c, t, r)| (c, (t, r))).collect(), only)?;
    let mut out = Vec::new();
    for (name, (mut test, mut train_good)) in cats {
        let dir = root.join(&name);
        check_category_name(&name, &dir)?;
        if test.is_empty() {
            bail!("category {name}: no test rows in {}", split.display());
        }
        test.sort_by(|a, b| (&a.defect, a.path.file_name()).cmp(&(&b.defect, b.path.file_name())));
        train_good.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let cat = CategoryData {
            train_source: format!("the `{name},train,normal` rows of {}", split.display()),
            name,
            dir,
            train_good,
            test,
            has_ground_truth: true,
        };
        note_one_class(&cat, notes);
        out.push(cat);
    }
    Ok(out)
}
