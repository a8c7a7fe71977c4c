//! Exact anomaly-detection metrics: image-level AUROC / AP / F1-max and pixel-level
//! AUROC / AP / F1-max / AUPRO / AUPIMO, as pure functions.
//!
//! Every metric reproduces a reference implementation (see `tests/reference/METRICS.md`;
//! the golden tests in `crate/tests/metrics.rs` hold them to 1e-6 or better):
//!
//! | metric | reference |
//! | --- | --- |
//! | [`auroc`] | scikit-learn `roc_auc_score` |
//! | [`average_precision`] | scikit-learn `average_precision_score` (step-wise, no interpolation) |
//! | [`f1_max`] | anomalib `F1Max` (torchmetrics `BinaryPrecisionRecallCurve`, `thresholds=None`) |
//! | [`aupro`] | anomalib 2.7 `AUPRO` (8-connected regions, `fpr_limit` 0.3) |
//! | [`aupimo`] | anomalib 2.7 `AUPIMO` (300 000 thresholds, FPR bounds 1e-5 … 1e-4) |
//!
//! **Ties and thresholds.** The ranking metrics use every *distinct* score as a threshold
//! (predicted anomalous ⇔ `score >= threshold`), so tied scores enter the curves together,
//! exactly as `sklearn.metrics._ranking._binary_clf_curve` does. `-0.0` and `+0.0` are the
//! same threshold. AUPIMO alone uses a fixed grid of `num_thresholds` thresholds
//! ([`linspace_f32`], bit-identical to `torch.linspace` on CPU) between the minimum and the
//! maximum score of the normal images.
//!
//! **Precision.** Counts are integers and rates `f64`; AUROC uses exact integer trapezoids.
//! anomalib computes F1-max and AUPRO in `float32`, so those agree with it to ~1e-7 (the
//! golden tests also check float64 transcriptions of anomalib's code to 1e-12); AUROC, AP and
//! AUPIMO agree with their references to ~1e-15.
//!
//! **Undefined values are `None`.** AUROC / AP / F1-max need both classes; AUPRO needs at
//! least one anomalous region and one normal pixel; AUPIMO needs at least one normal and one
//! anomalous image (and everything anomalib checks before it integrates: see [`aupimo`]).
//! The references return `nan`, `0.0`, `1.0` or raise in those cases.
//!
//! **Memory.** [`PixelAccumulator`] keeps exactly one `f32` per pixel (each image in its own
//! exactly-sized boxed slice, so there is no `Vec` doubling), one *bit* per pixel for the mask
//! and a few words per image: 4.125 bytes per pixel ([`PixelAccumulator::heap_bytes`]).
//! [`PixelAccumulator::finish`] never makes a second score-sized array; it works in place:
//!
//! 1. AUPIMO first (it needs each image's pixels): per-threshold histograms of
//!    `num_thresholds + 1` counters, a threshold grid and a shared-FPR curve, about
//!    16 bytes per threshold (4.8 MB at the default 300 000), independent of the pixel count.
//! 2. Each anomalous image is labelled (8-connected components) and its scores are permuted,
//!    in their own slice, into one contiguous run per region followed by the normal pixels.
//!    Region membership then lives in a small per-region table (image, start, end, size)
//!    instead of a per-pixel id; the scratch for this is 12 bytes per pixel of *one* image.
//! 3. Every run is sorted in place (descending), and the runs are merged lazily with a heap
//!    of one entry per run. The merged stream, in descending score order, yields the ROC, PR
//!    and PRO curves at every distinct score in one pass.
//!
//! Peak during `finish`: `4.125 × pixels + max(16 × num_thresholds, 12 × largest image)`
//! bytes plus about 40 bytes per region and per image ([`PixelAccumulator::peak_bytes`]).
//! No `u32` index array over all pixels is ever allocated.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use anyhow::{ensure, Result};
use serde::Serialize;

// ------------------------------------------------------------------ ordering

/// Canonical score: `-0.0` becomes `+0.0`, so that equal scores have equal bits.
#[inline]
fn canonical(x: f32) -> f32 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// Order-preserving map of a non-NaN, canonical `f32` to `u32` (`a < b` ⇔ `key(a) < key(b)`).
#[inline]
fn key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

// ------------------------------------------------------------- ranking curves

/// ROC / PR statistics accumulated over thresholds taken in descending order.
///
/// `group(dtp, dfp)` is called once per distinct score with the number of positives and
/// negatives having exactly that score; after it, `tp` / `fp` are the counts of samples with
/// `score >= threshold` (the points of sklearn's `_binary_clf_curve`).
struct RankSweep {
    pos: u64,
    neg: u64,
    tp: u64,
    fp: u64,
    /// Twice the un-normalised ROC area, Σ Δfp·(tp_before + tp_after): exact integer trapezoids.
    auc2: u128,
    /// Σ Δtp · precision (sklearn's AP is this divided by the number of positives).
    ap: f64,
    f1: f64,
}

impl RankSweep {
    fn new(pos: u64, neg: u64) -> Self {
        Self {
            pos,
            neg,
            tp: 0,
            fp: 0,
            auc2: 0,
            ap: 0.0,
            f1: 0.0,
        }
    }

    #[inline]
    fn group(&mut self, dtp: u64, dfp: u64) {
        let tp = self.tp + dtp;
        let fp = self.fp + dfp;
        self.auc2 += dfp as u128 * (self.tp + tp) as u128;
        if tp > 0 {
            let precision = tp as f64 / (tp + fp) as f64;
            let recall = tp as f64 / self.pos as f64;
            self.ap += dtp as f64 * precision;
            // anomalib: 2PR / (P + R + 1e-10) in float32, where the 1e-10 only matters at P = R = 0.
            self.f1 = self.f1.max(2.0 * precision * recall / (precision + recall));
        }
        self.tp = tp;
        self.fp = fp;
    }

    fn defined(&self) -> bool {
        self.pos > 0 && self.neg > 0
    }

    fn auroc(&self) -> Option<f64> {
        self.defined()
            .then(|| self.auc2 as f64 / (2.0 * self.pos as f64 * self.neg as f64))
    }

    fn ap(&self) -> Option<f64> {
        self.defined().then(|| self.ap / self.pos as f64)
    }

    fn f1(&self) -> Option<f64> {
        self.defined().then_some(self.f1)
    }
}

/// Sorts `(score, label)` pairs and sweeps them; `None` if a score is NaN.
fn sweep_slice(scores: &[f32], labels: &[bool]) -> Option<RankSweep> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "metrics: {} scores but {} labels",
        scores.len(),
        labels.len()
    );
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut pairs: Vec<(u32, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (key(canonical(s)), l))
        .collect();
    pairs.sort_unstable_by_key(|&(k, _)| Reverse(k));
    let pos = labels.iter().filter(|&&l| l).count() as u64;
    let mut sweep = RankSweep::new(pos, labels.len() as u64 - pos);
    let mut i = 0;
    while i < pairs.len() {
        let k = pairs[i].0;
        let (mut dtp, mut dfp) = (0, 0);
        while i < pairs.len() && pairs[i].0 == k {
            if pairs[i].1 {
                dtp += 1;
            } else {
                dfp += 1;
            }
            i += 1;
        }
        sweep.group(dtp, dfp);
    }
    Some(sweep)
}

/// Area under the ROC curve, as scikit-learn's `roc_auc_score`.
///
/// `labels[i]` is `true` for an anomalous sample; a higher score means more anomalous.
/// Ties count one half (the trapezoid between distinct thresholds). Computed with exact
/// integer trapezoids, so it equals the Mann–Whitney U statistic divided by `P·N`.
///
/// Returns `None` if either class is absent or a score is NaN.
///
/// # Panics
/// If `scores` and `labels` differ in length.
///
/// ```
/// use anoscope::metrics::auroc;
/// // pairs (anomalous, normal): (0.35, 0.1) ✓ (0.35, 0.4) ✗ (0.8, 0.1) ✓ (0.8, 0.4) ✓
/// assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
/// assert_eq!(auroc(&[0.1, 0.4], &[false, false]), None);
/// ```
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    sweep_slice(scores, labels)?.auroc()
}

/// Average precision, as scikit-learn's `average_precision_score`:
/// `Σ_k (R_k − R_{k−1}) · P_k` over the distinct scores in descending order (a step
/// function, no interpolation).
///
/// Returns `None` if either class is absent or a score is NaN (scikit-learn returns `0.0`
/// without positives and `1.0` without negatives).
///
/// # Panics
/// If `scores` and `labels` differ in length.
///
/// ```
/// use anoscope::metrics::average_precision;
/// // thresholds 0.8 (R ½, P 1), 0.4 (R ½, P ½), 0.35 (R 1, P ⅔): ½·1 + ½·⅔
/// let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
/// assert!((ap - 5.0 / 6.0).abs() < 1e-15);
/// ```
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Option<f64> {
    sweep_slice(scores, labels)?.ap()
}

/// Maximum F1 score over all thresholds, as anomalib's `F1Max`: the maximum of
/// `2PR / (P + R)` over the points of the precision–recall curve (every distinct score is a
/// threshold; `F1 = 0` where `P + R = 0`).
///
/// anomalib computes this in `float32` (agreement ≈ 1e-7); this is the exact value in `f64`.
/// Returns `None` if either class is absent or a score is NaN.
///
/// # Panics
/// If `scores` and `labels` differ in length.
///
/// ```
/// use anoscope::metrics::f1_max;
/// // best threshold 0.35: P = ⅔, R = 1, F1 = 0.8
/// let f1 = f1_max(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
/// assert!((f1 - 0.8).abs() < 1e-15);
/// ```
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Option<f64> {
    sweep_slice(scores, labels)?.f1()
}

/// Image-level metrics (one score and one label per image).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ImageMetrics {
    /// [`auroc`] of the scores, in [0, 1].
    pub auroc: Option<f64>,
    /// [`average_precision`] of the scores, in [0, 1].
    pub ap: Option<f64>,
    /// [`f1_max`] of the scores, in [0, 1].
    pub f1max: Option<f64>,
}

/// [`auroc`], [`average_precision`] and [`f1_max`] from one sort.
///
/// # Panics
/// If `scores` and `labels` differ in length.
///
/// ```
/// use anoscope::metrics::image_metrics;
/// let m = image_metrics(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]);
/// assert_eq!(m.auroc, Some(0.75));
/// assert!((m.ap.unwrap() - 5.0 / 6.0).abs() < 1e-15 && (m.f1max.unwrap() - 0.8).abs() < 1e-15);
/// assert_eq!(image_metrics(&[0.5], &[true]), Default::default()); // one class: all None
/// ```
pub fn image_metrics(scores: &[f32], labels: &[bool]) -> ImageMetrics {
    match sweep_slice(scores, labels) {
        Some(s) => ImageMetrics {
            auroc: s.auroc(),
            ap: s.ap(),
            f1max: s.f1(),
        },
        None => ImageMetrics::default(),
    }
}

// ------------------------------------------------------------------- options

/// AUPIMO settings; the defaults are anomalib's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AupimoOptions {
    /// Number of linearly spaced thresholds between the normal images' minimum and maximum
    /// score (anomalib: 300 000).
    pub num_thresholds: usize,
    /// Integration range of the shared FPR, `(lower, upper)` with `0 < lower < upper ≤ 1`
    /// (anomalib: `(1e-5, 1e-4)`).
    pub fpr_bounds: (f64, f64),
    /// Integrate even if the range holds ≤ 30 thresholds (anomalib's `force`).
    pub force: bool,
}

impl Default for AupimoOptions {
    fn default() -> Self {
        Self {
            num_thresholds: 300_000,
            fpr_bounds: (1e-5, 1e-4),
            force: false,
        }
    }
}

/// Settings of [`PixelAccumulator`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PixelOptions {
    /// AUPRO's false-positive-rate limit (anomalib: 0.3).
    pub aupro_fpr_limit: f64,
    /// Settings of the AUPIMO computation.
    pub aupimo: AupimoOptions,
}

impl Default for PixelOptions {
    fn default() -> Self {
        Self {
            aupro_fpr_limit: 0.3,
            aupimo: AupimoOptions::default(),
        }
    }
}

// --------------------------------------------------------------- accumulator

/// One pushed image: its scores (one exactly-sized allocation) and its mask as bits.
struct Image {
    scores: Box<[f32]>,
    mask: Box<[u8]>,
    width: usize,
    height: usize,
    /// Number of anomalous pixels (0: a normal image).
    positives: usize,
}

impl Image {
    #[inline]
    fn bit(&self, i: usize) -> bool {
        self.mask[i >> 3] & (1 << (i & 7)) != 0
    }
}

/// Pixel-level metrics over a set of anomaly maps.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PixelMetrics {
    /// Pixel AUROC (all pixels of all images pooled).
    pub auroc: Option<f64>,
    /// Pixel average precision.
    pub ap: Option<f64>,
    /// Pixel F1-max.
    pub f1max: Option<f64>,
    /// AUPRO up to the accumulator's `aupro_fpr_limit`.
    pub aupro: Option<f64>,
    /// Mean AUPIMO over the anomalous images.
    pub aupimo: Option<f64>,
    /// AUPIMO of every pushed image, in push order; `None` for normal images (and for all
    /// images when AUPIMO is undefined).
    pub aupimo_per_image: Vec<Option<f64>>,
}

/// Pixel-level accumulator: one `f32` copy of all scores at most (see the module docs for the
/// memory layout), the masks as bits.
///
/// ```
/// use anoscope::metrics::PixelAccumulator;
/// let mut acc = PixelAccumulator::new();
/// // 2×2 images: an anomaly in the top-left corner, scored highest, and a normal image
/// acc.push(&[0.9, 0.2, 0.1, 0.3], &[true, false, false, false], 2, 2).unwrap();
/// acc.push(&[0.2, 0.4, 0.1, 0.0], &[false; 4], 2, 2).unwrap();
/// assert_eq!(acc.len(), 8);
/// let m = acc.finish();
/// assert_eq!((m.auroc, m.aupro), (Some(1.0), Some(1.0)));
/// assert_eq!(m.aupimo, None); // too few normal pixels to reach a shared FPR of 1e-5
/// ```
#[derive(Default)]
pub struct PixelAccumulator {
    images: Vec<Image>,
    pixels: usize,
    options: PixelOptions,
}

impl std::fmt::Debug for PixelAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelAccumulator")
            .field("images", &self.images.len())
            .field("pixels", &self.pixels)
            .field("options", &self.options)
            .finish()
    }
}

impl PixelAccumulator {
    /// An empty accumulator with anomalib's default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty accumulator with the given settings.
    pub fn with_options(options: PixelOptions) -> Self {
        Self {
            images: Vec::new(),
            pixels: 0,
            options,
        }
    }

    /// One image: its map and mask (`true` = anomalous pixel), row-major, both of length
    /// `width·height`. The image's class (normal / anomalous, for AUPIMO) is whether its mask
    /// has any anomalous pixel, as anomalib's `images_classes_from_masks`.
    ///
    /// Errors on a shape mismatch, an empty image, more than `u32::MAX` pixels in one image,
    /// or a non-finite score (nothing is added then).
    pub fn push(&mut self, map: &[f32], mask: &[bool], width: usize, height: usize) -> Result<()> {
        let n = width.saturating_mul(height);
        ensure!(width > 0 && height > 0, "metrics: empty image ({width}x{height})");
        ensure!(
            n <= u32::MAX as usize,
            "metrics: image of {width}x{height} pixels is too large"
        );
        ensure!(
            map.len() == n && mask.len() == n,
            "metrics: {width}x{height} image but the map has {} values and the mask {}",
            map.len(),
            mask.len()
        );
        if let Some(i) = map.iter().position(|s| !s.is_finite()) {
            anyhow::bail!(
                "metrics: non-finite score {} at pixel {i} of image {}",
                map[i],
                self.images.len()
            );
        }
        let scores: Box<[f32]> = map.iter().map(|&s| canonical(s)).collect();
        let mut bits = vec![0u8; n.div_ceil(8)].into_boxed_slice();
        let mut positives = 0;
        for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
            bits[i >> 3] |= 1 << (i & 7);
            positives += 1;
        }
        self.images.push(Image {
            scores,
            mask: bits,
            width,
            height,
            positives,
        });
        self.pixels += n;
        Ok(())
    }

    /// Number of pixels pushed so far.
    pub fn len(&self) -> usize {
        self.pixels
    }

    /// Whether no image has been pushed.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Number of images pushed so far.
    pub fn num_images(&self) -> usize {
        self.images.len()
    }

    /// Bytes held on the heap now: 4 per pixel (scores) + ⌈pixels/8⌉ (mask bits) + the
    /// per-image records.
    pub fn heap_bytes(&self) -> usize {
        self.images.capacity() * std::mem::size_of::<Image>()
            + self
                .images
                .iter()
                .map(|im| im.scores.len() * 4 + im.mask.len())
                .sum::<usize>()
    }

    /// Upper bound of the bytes held while [`finish`](Self::finish) runs: [`heap_bytes`](Self::heap_bytes)
    /// plus the larger of the AUPIMO tables (16 bytes per threshold) and the labelling scratch
    /// of the largest image (12 bytes per pixel), plus the run table and merge heap (36 bytes
    /// per image and per region; the region count, unknown before labelling, is bounded here
    /// pessimistically by the number of anomalous pixels).
    pub fn peak_bytes(&self) -> usize {
        let largest = self.images.iter().map(|im| im.scores.len()).max().unwrap_or(0);
        let aupimo = 16 * (self.options.aupimo.num_thresholds + 1);
        let regions: usize = self.images.iter().map(|im| im.positives).sum();
        // run record + cursor + heap entry
        let runs = (self.images.len() + regions) * (std::mem::size_of::<Run>() + 4 + 8);
        self.heap_bytes() + aupimo.max(12 * largest) + runs
    }

    /// Computes every pixel metric (AUPIMO first, then the ranking metrics and AUPRO in one
    /// merged pass; see the module docs).
    pub fn finish(mut self) -> PixelMetrics {
        let pimo = aupimo_of(&self.images, &self.options.aupimo);
        let r = ranking_of(&mut self.images, self.options.aupro_fpr_limit);
        PixelMetrics {
            auroc: r.sweep.auroc(),
            ap: r.sweep.ap(),
            f1max: r.sweep.f1(),
            aupro: r.aupro,
            aupimo: pimo.mean,
            aupimo_per_image: pimo.per_image,
        }
    }
}

// -------------------------------------------------- connected components, runs

/// A sorted run of scores inside one image: one region's pixels, or the image's normal pixels.
struct Run {
    image: u32,
    start: u32,
    end: u32,
    /// 1 / region size for a region, 0.0 for normal pixels.
    weight: f64,
}

/// Labels the 8-connected components of the anomalous pixels (as OpenCV's
/// `connectedComponents`, connectivity 8, which anomalib uses). `labels[p]` = 0 for a normal
/// pixel, else the component (1-based, raster order of first pixel). Returns each component's
/// size, index 0 holding the normal-pixel count.
fn label_components(img: &Image, labels: &mut Vec<u32>, stack: &mut Vec<u32>) -> Vec<u32> {
    let (w, h) = (img.width, img.height);
    labels.clear();
    labels.resize(w * h, 0);
    let mut sizes = vec![0u32];
    for p in 0..w * h {
        if !img.bit(p) {
            sizes[0] += 1;
            continue;
        }
        if labels[p] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut size = 0u32;
        labels[p] = label;
        stack.push(p as u32);
        while let Some(q) = stack.pop() {
            size += 1;
            let (x, y) = (q as usize % w, q as usize / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let r = ny * w + nx;
                    if labels[r] == 0 && img.bit(r) {
                        labels[r] = label;
                        stack.push(r as u32);
                    }
                }
            }
        }
        sizes.push(size);
    }
    sizes
}

struct Ranking {
    sweep: RankSweep,
    aupro: Option<f64>,
}

/// Streaming trapezoid of anomalib's PRO curve, clipped at `limit` with linear interpolation
/// and normalised by its last FPR.
struct ProArea {
    limit: f64,
    f: f64,
    p: f64,
    area: f64,
    end: Option<f64>,
}

impl ProArea {
    fn point(&mut self, f: f64, p: f64) {
        if self.end.is_some() {
            return;
        }
        if f <= self.limit {
            self.area += (f - self.f) * (p + self.p) / 2.0;
            (self.f, self.p) = (f, p);
        } else if self.f < self.limit {
            let p_lim = self.p + (p - self.p) * (self.limit - self.f) / (f - self.f);
            self.area += (self.limit - self.f) * (p_lim + self.p) / 2.0;
            self.end = Some(self.limit);
        } else {
            self.end = Some(self.f);
        }
    }

    fn value(&self) -> f64 {
        self.area / self.end.unwrap_or(self.f)
    }
}

/// Pixel AUROC / AP / F1-max and AUPRO. Reorders each image's scores in place (regions first,
/// then normal pixels, each run sorted descending) and merges the runs.
fn ranking_of(images: &mut [Image], fpr_limit: f64) -> Ranking {
    // 1. runs: per image, permute the scores into [region 1 | region 2 | … | normal pixels]
    let mut runs: Vec<Run> = Vec::new();
    let (mut pos, mut neg, mut regions) = (0u64, 0u64, 0u64);
    {
        let (mut labels, mut stack, mut scratch) = (Vec::new(), Vec::new(), Vec::<f32>::new());
        for (ii, img) in images.iter_mut().enumerate() {
            let n = img.scores.len();
            pos += img.positives as u64;
            neg += (n - img.positives) as u64;
            if img.positives == 0 {
                runs.push(Run {
                    image: ii as u32,
                    start: 0,
                    end: n as u32,
                    weight: 0.0,
                });
                continue;
            }
            let sizes = label_components(img, &mut labels, &mut stack);
            let r = sizes.len() - 1;
            regions += r as u64;
            // destination offsets: regions 1..=r, then the normal pixels
            let mut next = Vec::with_capacity(r + 1);
            let mut off = 0u32;
            for &s in sizes[1..].iter().chain(std::iter::once(&sizes[0])) {
                next.push(off);
                off += s;
            }
            for (l, &s) in sizes.iter().enumerate().skip(1) {
                let start = next[l - 1];
                runs.push(Run {
                    image: ii as u32,
                    start,
                    end: start + s,
                    weight: 1.0 / s as f64,
                });
            }
            if sizes[0] > 0 {
                runs.push(Run {
                    image: ii as u32,
                    start: next[r],
                    end: n as u32,
                    weight: 0.0,
                });
            }
            scratch.clear();
            scratch.resize(n, 0.0);
            for (p, &l) in labels.iter().enumerate() {
                let slot = if l == 0 { r } else { l as usize - 1 };
                scratch[next[slot] as usize] = img.scores[p];
                next[slot] += 1;
            }
            img.scores.copy_from_slice(&scratch);
        }
    }
    // 2. sort every run in place, descending
    for run in &runs {
        images[run.image as usize].scores[run.start as usize..run.end as usize].sort_unstable_by(|a, b| b.total_cmp(a));
    }
    // 3. merge: heap of (head key, run), consume a run while it stays >= the next best head
    let mut sweep = RankSweep::new(pos, neg);
    let limit_ok = fpr_limit > 0.0; // NaN fails too
    let mut pro = ProArea {
        limit: fpr_limit,
        f: 0.0,
        p: 0.0,
        area: 0.0,
        end: None,
    };
    let mut cursor: Vec<u32> = runs.iter().map(|r| r.start).collect();
    let mut heap: BinaryHeap<(u32, u32)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.start < r.end)
        .map(|(i, r)| (key(images[r.image as usize].scores[r.start as usize]), i as u32))
        .collect();
    let (mut group, mut dtp, mut dfp, mut pro_sum, mut dpro) = (None::<u32>, 0u64, 0u64, 0.0f64, 0.0f64);
    let emit = |sweep: &mut RankSweep, pro: &mut ProArea, dtp: u64, dfp: u64, pro_sum: f64| {
        sweep.group(dtp, dfp);
        if neg > 0 && regions > 0 {
            let f = (sweep.fp as f64 / neg as f64).min(1.0);
            pro.point(f, (pro_sum / regions as f64).min(1.0));
        }
    };
    while let Some((_, ri)) = heap.pop() {
        let next_best = heap.peek().map(|&(k, _)| k).unwrap_or(0);
        let run = &runs[ri as usize];
        let scores = &images[run.image as usize].scores;
        let mut c = cursor[ri as usize] as usize;
        while c < run.end as usize {
            let k = key(scores[c]);
            if k < next_best {
                break;
            }
            if group != Some(k) {
                if group.is_some() {
                    pro_sum += dpro;
                    emit(&mut sweep, &mut pro, dtp, dfp, pro_sum);
                }
                (group, dtp, dfp, dpro) = (Some(k), 0, 0, 0.0);
            }
            if run.weight > 0.0 {
                dtp += 1;
                dpro += run.weight;
            } else {
                dfp += 1;
            }
            c += 1;
        }
        cursor[ri as usize] = c as u32;
        if c < run.end as usize {
            heap.push((key(scores[c]), ri));
        }
    }
    if group.is_some() {
        pro_sum += dpro;
        emit(&mut sweep, &mut pro, dtp, dfp, pro_sum);
    }
    let aupro = (neg > 0 && regions > 0 && limit_ok).then(|| pro.value());
    Ranking { sweep, aupro }
}

// --------------------------------------------------------------------- AUPIMO

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU, bit for bit: the step is
/// `(end − start) / (steps − 1)` in `f32`, the first half is `fma(step, i, start)` and the
/// second half `fma(−step, steps − 1 − i, end)` (PyTorch's scalar kernel, whose
/// `start + step * i` the compiler contracts to a fused multiply-add on x86-64 builds).
///
/// ```
/// use anoscope::metrics::linspace_f32;
/// assert_eq!(linspace_f32(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
/// ```
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let half = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < half {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((steps - 1 - i) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// AUPIMO of a set of images: the mean over the anomalous images and every image's value.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AupimoScores {
    /// Mean AUPIMO over the anomalous images.
    pub mean: Option<f64>,
    /// One entry per image, `None` for normal images (and for all when undefined).
    pub per_image: Vec<Option<f64>>,
}

/// Number of thresholds `<= s` in the strictly increasing grid `t` (so `s >= t[k]` ⇔ `k < result`).
#[inline]
fn count_le(t: &[f32], s: f32, t0: f64, inv_step: f64) -> usize {
    let guess = ((s as f64 - t0) * inv_step).floor() + 1.0;
    let mut i = guess.clamp(0.0, t.len() as f64) as usize;
    while i < t.len() && t[i] <= s {
        i += 1;
    }
    while i > 0 && t[i - 1] > s {
        i -= 1;
    }
    i
}

/// Per-threshold counts of `score >= t[k]` for the selected pixels, as `count[k]`.
fn counts_ge(t: &[f32], scores: impl Iterator<Item = f32>, hist: &mut [u32]) {
    let (t0, inv) = (
        t[0] as f64,
        (t.len() - 1) as f64 / (t[t.len() - 1] as f64 - t[0] as f64),
    );
    hist.fill(0);
    for s in scores {
        hist[count_le(t, s, t0, inv)] += 1;
    }
    // hist[b] = pixels with exactly b thresholds <= s; count(k) = Σ_{b > k} hist[b]
    let mut c = 0u32;
    for k in (0..t.len()).rev() {
        c += hist[k + 1];
        hist[k + 1] = c;
    }
}

/// anomalib's `thresh_at_shared_fpr_level`: index of the FPR closest to `level` (first one on
/// ties), or the last index with FPR 1 for `level == 1`.
fn thresh_index(fpr: &[f64], level: f64) -> usize {
    if level == 1.0 {
        return fpr.iter().rposition(|&v| v == 1.0).unwrap_or(0);
    }
    let mut best = 0;
    for (k, &v) in fpr.iter().enumerate() {
        if (v - level).abs() < (fpr[best] - level).abs() {
            best = k;
        }
    }
    best
}

fn aupimo_of(images: &[Image], opt: &AupimoOptions) -> AupimoScores {
    let mut out = AupimoScores {
        mean: None,
        per_image: vec![None; images.len()],
    };
    let (lo, hi) = opt.fpr_bounds;
    let k_n = opt.num_thresholds;
    if k_n < 2 || !(lo > 0.0 && lo < 1.0 && hi > 0.0 && hi <= 1.0 && lo < hi) {
        return out;
    }
    let normal: Vec<&Image> = images.iter().filter(|im| im.positives == 0).collect();
    if normal.is_empty() || normal.len() == images.len() {
        return out;
    }
    // thresholds: linspace(min, max) of the normal images' scores, strictly increasing
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for s in normal.iter().flat_map(|im| im.scores.iter()) {
        min = min.min(*s);
        max = max.max(*s);
    }
    if min >= max {
        return out;
    }
    let t = linspace_f32(min, max, k_n);
    if t.windows(2).any(|w| w[0] >= w[1]) {
        return out; // anomalib: "Expected thresholds to be strictly increasing"
    }
    // shared FPR: mean over normal images of the per-image FPR
    let mut hist = vec![0u32; k_n + 1];
    let mut fpr = vec![0f64; k_n];
    for im in &normal {
        counts_ge(&t, im.scores.iter().copied(), &mut hist);
        let n = im.scores.len() as f64;
        for (f, &c) in fpr.iter_mut().zip(&hist[1..]) {
            *f += c as f64 / n;
        }
    }
    let n_normal = normal.len() as f64;
    fpr.iter_mut().for_each(|f| *f /= n_normal);
    let (fmin, fmax) = fpr
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if lo < fmin || lo > fmax || hi < fmin || hi > fmax {
        return out; // anomalib: "Invalid `fpr_level` because it's out of the range of `shared_fpr`"
    }
    let (k_lo, k_hi) = (thresh_index(&fpr, hi), thresh_index(&fpr, lo));
    if k_lo >= k_hi {
        return out;
    }
    // integration points: thresholds k_hi down to k_lo (FPR ascending), dropping ln(0) = -inf.
    // The shared FPR is non-increasing in k, so the finite points are k_lo..=k_top; their
    // log-FPR overwrites the FPR in place (no extra table).
    let Some(k_top) = (k_lo..=k_hi).rev().find(|&k| fpr[k] > 0.0) else {
        return out;
    };
    if k_top - k_lo < 30 && !opt.force {
        return out; // anomalib: "doesn't have enough points" (≤ 30)
    }
    let x = &mut fpr[k_lo..=k_top];
    x.iter_mut().for_each(|v| *v = v.ln());
    let norm = (hi / lo).ln();
    let (mut sum, mut count) = (0.0, 0usize);
    for (i, im) in images.iter().enumerate().filter(|(_, im)| im.positives > 0) {
        let positive = im
            .scores
            .iter()
            .enumerate()
            .filter(|&(p, _)| im.bit(p))
            .map(|(_, &s)| s);
        counts_ge(&t, positive, &mut hist);
        let p = im.positives as f64;
        let tpr = |j: usize| hist[k_lo + j + 1] as f64 / p;
        // trapezoids in anomalib's order: from k_top (lowest FPR) down to k_lo
        let mut area = 0.0;
        for j in (0..x.len() - 1).rev() {
            area += (x[j] - x[j + 1]) * (tpr(j + 1) + tpr(j)) / 2.0;
        }
        let v = (area / norm).clamp(0.0, 1.0);
        out.per_image[i] = Some(v);
        sum += v;
        count += 1;
    }
    out.mean = Some(sum / count as f64);
    out
}

// ------------------------------------------------------------ standalone forms

/// An accumulator holding `maps` / `masks` (all `width × height`); panics on invalid input.
fn accumulate(maps: &[&[f32]], masks: &[&[bool]], width: usize, height: usize) -> PixelAccumulator {
    assert_eq!(
        maps.len(),
        masks.len(),
        "metrics: {} maps but {} masks",
        maps.len(),
        masks.len()
    );
    let mut acc = PixelAccumulator::new();
    for (map, mask) in maps.iter().zip(masks) {
        if let Err(e) = acc.push(map, mask, width, height) {
            panic!("{e}");
        }
    }
    acc
}

/// Area under the per-region-overlap curve up to `fpr_limit`, normalised to `[0, 1]`, as
/// anomalib 2.7's `AUPRO` (default `fpr_limit` 0.3).
///
/// `maps[i]` and `masks[i]` are image `i`, row-major `width × height`. Regions are the
/// 8-connected components of each mask. One global curve: at every distinct score `t`
/// (descending), FPR = normal pixels `>= t` / all normal pixels (of all images) and
/// PRO = mean over regions of the region's fraction `>= t`; `(0, 0)` is prepended, the curve
/// is cut at the last FPR `<= fpr_limit` and, if that is below the limit, linearly
/// interpolated to it; the trapezoidal area is divided by the curve's last FPR.
///
/// Returns `None` without anomalous region or normal pixel (anomalib returns 0), or if
/// `fpr_limit` is not positive. (anomalib keeps `fpr_limit` in a `float32` buffer, so its
/// 0.3 is 0.30000001192…; here the limit is used as given, a difference of ~1e-8.)
///
/// # Panics
/// If `maps` and `masks` differ in length, an image is not `width × height`, or a score is
/// not finite.
///
/// ```
/// use anoscope::metrics::aupro;
/// // one 2-pixel region (scores 0.9, 0.1) and 4 normal pixels (0.5, 0.2, 0.3, 0.4):
/// // PRO is ½ from FPR 0 up to FPR 1, so the normalised area is ½ at any limit
/// let (map, mask) = ([0.9, 0.1, 0.5, 0.2, 0.3, 0.4], [true, true, false, false, false, false]);
/// assert_eq!(aupro(&[&map], &[&mask], 3, 2, 0.3), Some(0.5));
/// assert_eq!(aupro(&[&map], &[&[false; 6]], 3, 2, 0.3), None);
/// ```
pub fn aupro(maps: &[&[f32]], masks: &[&[bool]], width: usize, height: usize, fpr_limit: f64) -> Option<f64> {
    let mut acc = accumulate(maps, masks, width, height);
    ranking_of(&mut acc.images, fpr_limit).aupro
}

/// Area under the per-image-overlap curve, as anomalib 2.7's `AUPIMO` (`pimo` module).
///
/// `maps[i]` and `masks[i]` are image `i`, row-major `width × height` (anomalib needs one
/// shape; [`PixelAccumulator`] also takes mixed sizes). Images whose mask is empty are normal,
/// the others anomalous. Thresholds: `num_thresholds`
/// values [`linspace_f32`] between the minimum and maximum score of the normal images. Shared
/// FPR: the mean over normal images of each image's fraction of pixels `>= threshold`. For
/// each anomalous image, its TPR (fraction of its anomalous pixels `>= threshold`) is
/// integrated with the trapezoidal rule against `ln(shared FPR)` between the thresholds whose
/// shared FPR is closest to the two bounds (points with FPR 0 are dropped), divided by
/// `ln(upper / lower)` and clipped to `[0, 1]`. The mean is over the anomalous images.
///
/// Undefined (all `None`) where anomalib raises: no normal or no anomalous image, normal
/// scores all equal, a threshold grid that is not strictly increasing in `f32`, an FPR bound
/// outside the shared FPR's range (too few normal pixels: the smallest shared FPR must be
/// `<= lower`), bounds that select the same threshold, or ≤ 30 integration points without
/// `force`.
///
/// # Panics
/// As [`aupro`].
///
/// ```
/// use anoscope::metrics::{aupimo, AupimoOptions};
/// // a normal 10×10 map scoring 0.00..0.99, and an anomalous one whose 4 anomalous pixels
/// // all score above every normal pixel: its TPR is 1 over the whole FPR range
/// let normal: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
/// let mut anomalous = vec![0.5f32; 100];
/// let mut mask = vec![false; 100];
/// for p in [44, 45, 54, 55] {
///     (anomalous[p], mask[p]) = (2.0, true);
/// }
/// let opts = AupimoOptions { num_thresholds: 1000, fpr_bounds: (0.01, 0.1), force: false };
/// let a = aupimo(&[&normal, &anomalous], &[&[false; 100], &mask], 10, 10, &opts);
/// assert_eq!(a.per_image[0], None); // normal image
/// assert!((a.per_image[1].unwrap() - 1.0).abs() < 1e-12 && a.mean == a.per_image[1]);
/// ```
pub fn aupimo(
    maps: &[&[f32]],
    masks: &[&[bool]],
    width: usize,
    height: usize,
    options: &AupimoOptions,
) -> AupimoScores {
    let acc = accumulate(maps, masks, width, height);
    aupimo_of(&acc.images, options)
}
