//! Evaluation on the published benchmark layouts (`anoscope eval`).
//!
//! # Dataset layouts
//!
//! The layout is detected ([`Layout::detect`]) or given ([`EvalOptions::layout`]); each is read
//! into the same [`CategoryData`] / [`TestImage`] items, so every mode evaluates on all of them.
//! MVTec AD:
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
//! The others ([`Layout`]; the same checks, masks binarised with [`MaskRule::NonZero`]):
//!
//! ```text
//! VisA           ROOT/split_csv/1cls.csv (object,split,label,image,mask; anomalib's reading:
//!                train/normal rows = references, test rows normal → good, anomaly → bad)
//!                ROOT/<category>/Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png
//! MVTec LOCO AD  ROOT/<category>/test/<defect>/*.png
//!                ROOT/<category>/ground_truth/<defect>/<stem>/*.png   several masks, one union
//! MVTec 3D-AD    ROOT/<category>/test/<defect>/rgb/*.png, test/<defect>/gt/<stem>.png,
//!                train/good/rgb/*.png (xyz/ and validation/ are not read)
//! ```
//!
//! # Evaluation
//!
//! Test images are resized to a `size × size` square (the model input) and scored by one of the
//! [`crate::detect`] modes ([`Mode`]). Pixel metrics are computed at that resolution: each mask
//! is binarised at its own resolution (MVTec AD: `> 127` on its brightest channel; the other
//! layouts: non-zero, [`MaskRule`]), then resized to `size × size` with nearest neighbour
//! picking exactly the source pixels of Pillow's `Image.resize(…, Image.NEAREST)`
//! ([`resize_mask_nearest`], [`nearest_source_indices`]); an image's several masks (LOCO) are
//! then OR-ed ([`load_masks`]).
//!
//! # Output folder
//!
//! ```text
//! OUT/run.json                                   settings, references, versions, timings
//! OUT/records/<category>/<defect>/<stem>.json    one [`ImageRecord`] per finished image
//! OUT/maps/<category>/<defect>/<stem>.map.safetensors   `anomaly_map` [H,W] f32
//! OUT/timings/<category>/<defect>/<stem>.json    `{"ms": …}`: its detection time ([`ImageTiming`])
//! OUT/scores.csv                                 category,defect,stem,label,score
//! OUT/metrics.json, OUT/metrics.csv, OUT/metrics.md
//! OUT/overlays/<category>/{fp,fn}_<rank>__<defect>__<stem>.png   image | overlay | mask
//! ```
//!
//! Each image's map, timing and record are written as soon as it is scored, atomically (a
//! temporary name `.<file>.tmp` next to the file, then a rename; the record last), so an
//! interrupted run leaves only complete results and [`EvalOptions::resume`] skips them. Batch
//! mode (MuSc) scores a category's test images together, so it resumes per category. A run
//! killed at any point and resumed until it completes leaves every file byte-identical to an
//! uninterrupted run's, except `timings/` and, in `run.json`, the times and the new / resumed
//! counts of the invocations (`crate/tests/eval_resume.rs`). Everything needed to recompute the metrics
//! independently is in `scores.csv`, `maps/` and the dataset's masks; `metrics.json` holds the
//! values of [`crate::metrics`] on exactly these, pushed in `scores.csv` order.
//!
//! # Where things are
//!
//! * `dataset.rs`: scanning ([`scan_dataset`], [`scan_dataset_as`]; the MVTec AD layout),
//!   masks ([`load_mask`], [`load_masks`]), and the few-shot reference draw
//!   ([`select_references`]).
//! * `layouts.rs`: [`Layout`] and its detection, [`MaskRule`], and the VisA, MVTec LOCO AD and
//!   MVTec 3D-AD scans.
//! * `runner.rs`: [`run`] with its options, settings, progress callbacks and prompt-category
//!   matching ([`match_prompt_category`]).
//! * `output.rs`: the output folder's paths ([`OutDir`]), records and maps, atomic writes.
//! * `report.rs`: `scores.csv`, the metrics ([`CategoryMetrics`]), `metrics.json`,
//!   `metrics.csv`, `metrics.md` and the worst-case overlays.
//!
//! Everything public is re-exported here (`anoscope::eval::…`); the detection modes themselves
//! are in [`crate::detect`], the metric definitions in [`crate::metrics`], and the command-line
//! flags in the `anoscope` binary.
mod dataset;
mod layouts;
mod output;
mod report;
mod runner;

pub use dataset::{
    check_mask_aspect, image_dims, is_image_path, load_mask, load_masks, nearest_source_indices, read_mask,
    read_mask_as, resize_mask_nearest, scan_dataset, scan_dataset_as, select_references, CategoryData, Dataset,
    TestImage, ASPECT_TOLERANCE, GOOD, IMAGE_EXTENSIONS,
};
pub use layouts::{Layout, MaskRule, VISA_SPLIT};
pub use output::{
    read_finished, read_map, write_atomic, write_map, write_record, write_timing, ImageRecord, ImageTiming, OutDir,
};
pub use report::{
    category_metrics, csv_field, image_level_metrics, markdown_table, mean_metrics, metrics_csv, metrics_json,
    scores_csv, CategoryMetrics, MetricsDetail, METRIC_COLUMNS,
};
pub use runner::{
    file_sha256, match_prompt_category, run, EvalOptions, EvalSummary, NoProgress, Progress, PromptMatch, Settings,
};

/// The key of the across-category row in `metrics.json` (so no category may have this name).
pub const MEAN_KEY: &str = "mean";

/// The detection mode an evaluation runs (the one of [`crate::detect`]).
pub use crate::detect::Mode;
