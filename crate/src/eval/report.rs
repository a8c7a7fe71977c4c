//! The report of an evaluation, computed from the records and maps in the output folder:
//! `scores.csv`, the per-category and mean metrics ([`crate::metrics`] on exactly those scores,
//! maps and masks), `metrics.json` / `metrics.csv` / `metrics.md`, and the worst-case overlays.
//! Scoring and the order of the work are in `runner.rs`; reading and writing the output folder's
//! files in `output.rs`.
use super::dataset::{list_dir, CategoryData, TestImage};
use super::output::{read_map, write_atomic, ImageRecord, OutDir};
use super::MEAN_KEY;
use crate::metrics::{self, PixelAccumulator};
use crate::preprocess::{self, ImageLimits};
use crate::render;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

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
    /// Image-level AUROC of the scores ([`metrics::auroc`]).
    pub image_auroc: Option<f64>,
    /// Image-level average precision ([`metrics::average_precision`]).
    pub image_ap: Option<f64>,
    /// Image-level best F1 over thresholds ([`metrics::f1_max`]).
    pub image_f1max: Option<f64>,
    /// Pixel-level AUROC of the maps against the masks (`None` without `ground_truth/`).
    pub pixel_auroc: Option<f64>,
    /// Pixel-level average precision (`None` without `ground_truth/`).
    pub pixel_ap: Option<f64>,
    /// Pixel-level best F1 over thresholds (`None` without `ground_truth/`).
    pub pixel_f1max: Option<f64>,
    /// Area under the per-region overlap curve up to FPR 0.3, normalised ([`metrics::aupro`]).
    pub aupro: Option<f64>,
    /// Mean per-image AUPIMO over the anomalous images ([`metrics::aupimo`]).
    pub aupimo: Option<f64>,
    /// Number of normal test images (a total in the mean row).
    pub n_good: usize,
    /// Number of anomalous test images (a total in the mean row).
    pub n_anomalous: usize,
}

impl CategoryMetrics {
    /// The eight metric values, in the order of the first eight [`METRIC_COLUMNS`] (the two counts
    /// are not included).
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

    /// The inverse of [`Self::values`].
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
    /// The category's metrics.
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
        let mask = if r.anomalous {
            img.load_mask(w, h)?
        } else {
            vec![false; w * h]
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
// Overlays

/// `image | overlay | mask` for one test image, as PNG at `path`.
fn write_overlay(path: &Path, img: &TestImage, map_path: &Path, norm: render::Normalization) -> Result<()> {
    let base = preprocess::load_image(&img.path, &ImageLimits::default())?;
    let (map, w, h) = read_map(map_path)?;
    let ov = render::overlay(&base, &map, w, h, norm, 0.5, None)?;
    let (iw, ih) = (base.width() as usize, base.height() as usize);
    let mask = img.load_mask(iw, ih)?;
    let bytes: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    let mask_img = render::mask_to_rgb(&bytes, iw, ih);
    let strip = render::side_by_side(&[&base, &ov, &mask_img]);
    write_atomic(path, &render::encode_png(&strip)?)
}

/// Overlays of the `worst` highest-scored good (`fp_…`) and lowest-scored anomalous (`fn_…`)
/// images of a category; earlier `fp_*`/`fn_*` overlays in the folder are removed first.
pub(super) fn write_worst_overlays(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
