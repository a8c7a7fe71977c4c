//! The output folder of an evaluation: its paths ([`OutDir`]), the per-image records, anomaly
//! maps and timings, and atomic writes (a temporary name, then a rename), so an interrupted run
//! leaves only complete files and `--resume` can trust them ([`read_finished`]). What the
//! records and maps are turned into (CSV, metrics, tables, overlays) is in `report.rs`.
//!
//! Results (records, maps, and everything computed from them) hold nothing that depends on
//! when or in how many invocations they were computed, so a resumed run's files are
//! byte-identical to an uninterrupted one's; times live apart, in `timings/` and `run.json`.
use super::dataset::TestImage;
use crate::embed::to_safetensors;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One scored test image (`records/<category>/<defect>/<stem>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The dataset category ([`super::CategoryData::name`]).
    pub category: String,
    /// The `test/` subfolder (`good` for normal images).
    pub defect: String,
    /// File name without its extension.
    pub stem: String,
    /// The image file.
    pub path: String,
    /// The ground-truth label: `true` unless the image is in `test/good`.
    pub anomalous: bool,
    /// The image anomaly score ([`crate::detect::Detection::score`]).
    pub score: f32,
    /// Width of the stored anomaly map in pixels (the model input's).
    pub map_width: usize,
    /// Height of the stored anomaly map in pixels (the model input's).
    pub map_height: usize,
    /// Width of the original image file in pixels.
    pub image_width: u32,
    /// Height of the original image file in pixels.
    pub image_height: u32,
}

/// How long one test image took (`timings/<category>/<defect>/<stem>.json`), kept apart from its
/// [`ImageRecord`] so that results do not depend on the run that computed them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageTiming {
    /// Milliseconds to load, preprocess and score the image (batch mode: the category's time
    /// divided by its images).
    pub ms: f64,
}

/// Paths inside an output folder.
#[derive(Clone, Debug)]
pub struct OutDir {
    /// The output folder (`--out`).
    pub root: PathBuf,
}

impl OutDir {
    /// The output folder `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// `run.json`: settings, references, versions, timings.
    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// The record of one test image.
    pub fn record(&self, category: &str, defect: &str, stem: &str) -> PathBuf {
        self.root
            .join("records")
            .join(category)
            .join(defect)
            .join(format!("{stem}.json"))
    }

    /// The anomaly map of one test image.
    pub fn map(&self, category: &str, defect: &str, stem: &str) -> PathBuf {
        self.root
            .join("maps")
            .join(category)
            .join(defect)
            .join(format!("{stem}.map.safetensors"))
    }

    /// The detection time of one test image.
    pub fn timing(&self, category: &str, defect: &str, stem: &str) -> PathBuf {
        self.root
            .join("timings")
            .join(category)
            .join(defect)
            .join(format!("{stem}.json"))
    }

    /// The folder of a category's worst-case overlays.
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

/// Creates the folder `path` goes in.
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

/// Writes `anomaly_map` `[height, width]` f32 as safetensors, atomically ([`write_atomic`]:
/// serialised in memory by [`to_safetensors`], so the only temporary file is the one named after `path`, which the
/// next write of the same map replaces; candle's `save_safetensors` would go through a
/// randomly named temporary file that a killed run leaves behind).
pub fn write_map(path: &Path, map: &[f32], width: usize, height: usize) -> Result<()> {
    anyhow::ensure!(
        map.len() == width * height,
        "anomaly map of {} values is not {width}x{height}",
        map.len()
    );
    let map = Tensor::from_slice(map, (height, width), &Device::Cpu)?;
    write_atomic(path, &to_safetensors(&[("anomaly_map".to_string(), map)])?)
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

/// Writes an image's timing (before its record).
pub fn write_timing(path: &Path, t: &ImageTiming) -> Result<()> {
    write_atomic(path, (serde_json::to_string(t)? + "\n").as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

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
            masks: Vec::new(),
            mask_rule: Default::default(),
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
