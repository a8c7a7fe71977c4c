//! The dataset layouts `anoscope eval` reads besides MVTec AD's: VisA (`split_csv/1cls.csv`),
//! MVTec LOCO AD (several masks per image) and MVTec 3D-AD (RGB). Each test builds a small tree
//! of its layout in a temporary folder (a few 48×48 PNG/JPEG images and masks) and checks the
//! images, labels and (merged) masks read, the detection, `--layout` and the errors; the last
//! tests run `anoscope eval` on each tree with the tiny model and recompute the pixel metrics
//! from the written maps and the masks drawn here.
mod common;

use anoscope::eval::{self, Layout, MaskRule};
use anoscope::metrics::PixelAccumulator;
use candle_core::{Device, Tensor};
use common::{repo, run};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Side of every image and mask (the tiny model's input size, so masks are compared unresized).
const S: u32 = 48;

fn mkdir_for(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
}

/// An RGB test image with a pattern that depends on `seed` (PNG or JPEG by the extension).
fn image(path: &Path, seed: u32) {
    mkdir_for(path);
    image::RgbImage::from_fn(S, S, |x, y| {
        image::Rgb([
            ((x * 5 + seed * 37) % 256) as u8,
            ((y * 7 + seed * 11) % 256) as u8,
            ((x * y + seed) % 256) as u8,
        ])
    })
    .save(path)
    .unwrap();
}

/// A grey mask with `value` inside the rectangle `x0..x1 × y0..y1`, 0 elsewhere.
fn mask(path: &Path, value: u8, (x0, y0, x1, y1): (u32, u32, u32, u32)) {
    mkdir_for(path);
    image::GrayImage::from_fn(S, S, |x, y| {
        image::Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            value
        } else {
            0
        }])
    })
    .save(path)
    .unwrap();
}

/// The pixels of a rectangle as a mask at `S × S`.
fn rect((x0, y0, x1, y1): (u32, u32, u32, u32)) -> Vec<bool> {
    (0..S)
        .flat_map(|y| (0..S).map(move |x| (x0..x1).contains(&x) && (y0..y1).contains(&y)))
        .collect()
}

fn or(a: &[bool], b: &[bool]) -> Vec<bool> {
    a.iter().zip(b).map(|(x, y)| *x || *y).collect()
}

fn err(r: anyhow::Result<eval::Dataset>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` not in: {msg}");
    }
}

fn keys(cat: &eval::CategoryData) -> Vec<(String, String)> {
    cat.test.iter().map(|t| (t.defect.clone(), t.stem.clone())).collect()
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Trees

/// The regions of the masks drawn below, so the tests know the ground truth independently.
const A: (u32, u32, u32, u32) = (4, 4, 20, 16);
const B: (u32, u32, u32, u32) = (30, 28, 44, 46);

/// VisA as published: two categories in `split_csv/1cls.csv` (plus one row of a third category
/// whose files are absent, as when only some categories were extracted), JPEG images, PNG masks
/// holding small class values (1 and 2), not 255.
fn visa_tree(root: &Path) {
    let rows = [
        "object,split,label,image,mask",
        "candle,train,normal,candle/Data/Images/Normal/0001.JPG,",
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,",
        "candle,test,normal,candle/Data/Images/Normal/0002.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,",
        "pcb1,test,normal,pcb1/Data/Images/Normal/0001.JPG,",
        "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png",
    ];
    mkdir_for(&root.join("split_csv/1cls.csv"));
    std::fs::write(root.join("split_csv/1cls.csv"), rows.join("\r\n") + "\r\n").unwrap();
    std::fs::write(
        root.join("split_csv/2cls_fewshot.csv"),
        "object,split,label,image,mask\n",
    )
    .unwrap();
    std::fs::write(root.join("LICENSE-DATASET"), "CC BY-NC-SA 4.0").unwrap();
    for (i, cat) in ["candle", "pcb1"].iter().enumerate() {
        let c = root.join(cat);
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("image_anno.csv"), "image,label,mask\n").unwrap();
        for n in 0..3 {
            image(&c.join(format!("Data/Images/Normal/{n:04}.JPG")), (i * 10 + n) as u32);
        }
        image(&c.join("Data/Images/Anomaly/000.JPG"), 100 + i as u32);
        mask(&c.join("Data/Masks/Anomaly/000.png"), 1, A);
    }
    image(&root.join("candle/Data/Images/Anomaly/001.JPG"), 200);
    mask(&root.join("candle/Data/Masks/Anomaly/001.png"), 2, B);
}

/// MVTec LOCO AD: one category; the logical anomaly has two masks (A and B, value 255), the
/// structural one a single mask (B); `validation/` and `defects_config.json` as published.
fn loco_tree(root: &Path) {
    let c = root.join("breakfast_box");
    image(&c.join("train/good/000.png"), 1);
    image(&c.join("train/good/001.png"), 2);
    image(&c.join("validation/good/000.png"), 3);
    image(&c.join("test/good/000.png"), 4);
    image(&c.join("test/good/001.png"), 5);
    image(&c.join("test/logical_anomalies/000.png"), 6);
    image(&c.join("test/structural_anomalies/000.png"), 7);
    mask(&c.join("ground_truth/logical_anomalies/000/000.png"), 255, A);
    mask(&c.join("ground_truth/logical_anomalies/000/001.png"), 255, B);
    mask(&c.join("ground_truth/structural_anomalies/000/000.png"), 255, B);
    std::fs::write(c.join("defects_config.json"), "[]").unwrap();
    std::fs::write(root.join("license.txt"), "CC BY-NC-SA 4.0").unwrap();
}

/// MVTec 3D-AD: one category; RGB images with masks in `gt/` next to `rgb/` (good images have
/// all-zero masks there too), point clouds in `xyz/` (stand-ins: not read).
fn mvtec3d_tree(root: &Path) {
    let c = root.join("bagel");
    image(&c.join("train/good/rgb/000.png"), 1);
    image(&c.join("train/good/rgb/001.png"), 2);
    std::fs::create_dir_all(c.join("train/good/xyz")).unwrap();
    std::fs::write(c.join("train/good/xyz/000.tiff"), "not read").unwrap();
    image(&c.join("validation/good/rgb/000.png"), 3);
    for (d, n) in [("good", 2), ("crack", 1), ("hole", 1)] {
        for i in 0..n {
            image(&c.join(format!("test/{d}/rgb/{i:03}.png")), 10 + i);
            std::fs::create_dir_all(c.join(format!("test/{d}/xyz"))).unwrap();
            std::fs::write(c.join(format!("test/{d}/xyz/{i:03}.tiff")), "not read").unwrap();
        }
    }
    mask(&c.join("test/good/gt/000.png"), 0, A);
    mask(&c.join("test/good/gt/001.png"), 0, A);
    mask(&c.join("test/crack/gt/000.png"), 255, A);
    mask(&c.join("test/hole/gt/000.png"), 255, B);
    std::fs::write(c.join("calibration.json"), "{}").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Scanning

#[test]
fn visa_reads_the_split_file_like_anomalib() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    visa_tree(r);
    assert_eq!(Layout::detect(r).unwrap(), Layout::Visa);
    let d = eval::scan_dataset(r, &[]).unwrap();
    assert_eq!(d.layout, Layout::Visa);
    let cats: Vec<&str> = d.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cats, ["candle", "pcb1"]);
    let candle = &d.categories[0];
    assert_eq!(candle.dir, r.join("candle"));
    assert!(candle.has_ground_truth);
    // anomalib's labels: normal → good, anomaly → bad; sorted by label, then file name.
    assert_eq!(
        keys(candle),
        [
            ("bad".into(), "000".into()),
            ("bad".into(), "001".into()),
            ("good".into(), "0002".into())
        ]
    );
    assert_eq!((candle.n_good(), candle.n_anomalous()), (1, 2));
    // References: the train/normal rows only (0002 is a test row), sorted.
    assert_eq!(names(&candle.train_good), ["0000.JPG", "0001.JPG"]);
    assert!(candle.train_source.contains("1cls.csv"), "{}", candle.train_source);
    // PNG masks for JPEG images, as the rows name them.
    let t0 = &candle.test[0];
    assert_eq!(t0.path, r.join("candle/Data/Images/Anomaly/000.JPG"));
    assert_eq!(t0.masks, [r.join("candle/Data/Masks/Anomaly/000.png")]);
    assert_eq!(t0.mask_rule, MaskRule::NonZero);
    assert!(candle.test[2].masks.is_empty());
    assert_eq!(t0.dims, (S, S));
    // Binarised as anomalib's preparation does (non-zero → anomalous): class values 1 and 2
    // are the regions; the MVTec rule (> 127) would see no anomaly at all.
    assert_eq!(t0.load_mask(S as usize, S as usize).unwrap(), rect(A));
    assert_eq!(candle.test[1].load_mask(S as usize, S as usize).unwrap(), rect(B));
    let (m127, ..) = eval::read_mask(&t0.masks[0]).unwrap();
    assert!(m127.iter().all(|v| !v));
    // Good images: all normal.
    assert!(candle.test[2].load_mask(8, 8).unwrap().iter().all(|v| !v));
    let pcb = &d.categories[1];
    assert_eq!(
        keys(pcb),
        [("bad".into(), "000".into()), ("good".into(), "0001".into())]
    );
    assert_eq!(names(&pcb.train_good), ["0000.JPG"]);
    // --categories, and an unknown category listing those in the split file.
    let one = eval::scan_dataset(r, &["pcb1".into()]).unwrap();
    assert_eq!(one.categories.len(), 1);
    assert_eq!(keys(&one.categories[0]), keys(pcb));
    let e = err(eval::scan_dataset(r, &["capsules".into()]));
    has(&e, &["capsules", "candle", "pcb1"]);
}

#[test]
fn visa_errors_name_the_line_and_the_file() {
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "candle/Data/Masks/Anomaly/000.png",
            "",
            &["1cls.csv:6", "missing mask", "Masks/Anomaly/000.png"],
        ),
        (
            "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
            "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,",
            &["1cls.csv:6", "no mask"],
        ),
        (
            "candle,test,normal,candle/Data/Images/Normal/0002.JPG,",
            "candle,test,good,candle/Data/Images/Normal/0002.JPG,",
            &["1cls.csv:4", "label `good`", "normal or anomaly"],
        ),
        (
            "candle,test,normal,candle/Data/Images/Normal/0002.JPG,",
            "candle,val,normal,candle/Data/Images/Normal/0002.JPG,",
            &["1cls.csv:4", "split `val`", "train or test"],
        ),
        (
            "candle,test,normal,candle/Data/Images/Normal/0002.JPG,",
            "candle,test,normal,../outside/0002.JPG,",
            &["1cls.csv:4", "not inside the dataset folder"],
        ),
        (
            "object,split,label,image,mask",
            "object,split,label,image",
            &["1cls.csv:1", "header", "object,split,label,image,mask"],
        ),
        (
            "candle,test,normal,candle/Data/Images/Normal/0002.JPG,",
            "candle,test,normal,candle/Data/Images/Normal/0002.JPG",
            &["1cls.csv:4", "4 fields, expected 5"],
        ),
    ];
    for (from, to, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        visa_tree(r);
        let csv = r.join("split_csv/1cls.csv");
        if to.is_empty() {
            std::fs::remove_file(r.join(from)).unwrap();
        } else {
            let text = std::fs::read_to_string(&csv).unwrap();
            assert!(text.contains(from));
            std::fs::write(&csv, text.replacen(from, to, 1)).unwrap();
        }
        has(&err(eval::scan_dataset(r, &[])), want);
    }
    // A missing image, and an image that is not one.
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    visa_tree(r);
    std::fs::write(r.join("pcb1/Data/Images/Anomaly/000.JPG"), "text").unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["1cls.csv:9", "pcb1/Data/Images/Anomaly/000.JPG"],
    );
    std::fs::remove_file(r.join("pcb1/Data/Images/Normal/0000.JPG")).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["1cls.csv:7", "missing image", "Normal/0000.JPG"],
    );
    // A split file that is not text, and one far too large for a split file.
    let csv = r.join("split_csv/1cls.csv");
    std::fs::write(&csv, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["VisA layout: cannot read", "1cls.csv", "UTF-8"],
    );
    std::fs::File::create(&csv).unwrap().set_len(65 << 20).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["1cls.csv is 68157440 bytes", "not a split file"],
    );
    // One category folder, or a root without the split file: named as VisA, with what is missing.
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    visa_tree(r);
    let e = err(eval::scan_dataset(&r.join("candle"), &[]));
    has(&e, &["looks like VisA", "split_csv/1cls.csv"]);
    std::fs::remove_dir_all(r.join("split_csv")).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["looks like VisA", "split_csv/1cls.csv"],
    );
    let e = err(eval::scan_dataset_as(r, &[], Some(Layout::Visa)));
    has(&e, &["VisA layout", "split_csv/1cls.csv"]);
}

#[test]
fn loco_merges_the_masks_of_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    loco_tree(r);
    assert_eq!(Layout::detect(r).unwrap(), Layout::Loco);
    assert_eq!(Layout::detect(&r.join("breakfast_box")).unwrap(), Layout::Loco);
    let d = eval::scan_dataset(r, &[]).unwrap();
    assert_eq!(d.layout, Layout::Loco);
    assert_eq!(d.categories.len(), 1);
    let c = &d.categories[0];
    assert_eq!(
        keys(c),
        [
            ("good".into(), "000".into()),
            ("good".into(), "001".into()),
            ("logical_anomalies".into(), "000".into()),
            ("structural_anomalies".into(), "000".into())
        ]
    );
    assert!(c.has_ground_truth);
    assert_eq!(names(&c.train_good), ["000.png", "001.png"]);
    let logical = &c.test[2];
    assert_eq!(names(&logical.masks), ["000.png", "001.png"]);
    assert!(logical.masks[0].ends_with("ground_truth/logical_anomalies/000/000.png"));
    // The union of both masks; at another size, each mask resized then merged.
    assert_eq!(
        logical.load_mask(S as usize, S as usize).unwrap(),
        or(&rect(A), &rect(B))
    );
    let half = logical.load_mask(24, 24).unwrap();
    let a = eval::load_masks(&logical.masks[..1], MaskRule::NonZero, 24, 24).unwrap();
    let b = eval::load_masks(&logical.masks[1..], MaskRule::NonZero, 24, 24).unwrap();
    assert_eq!(half, or(&a, &b));
    assert!(a.iter().any(|v| *v) && b.iter().any(|v| *v) && a != b);
    assert_eq!(c.test[3].load_mask(S as usize, S as usize).unwrap(), rect(B));
    assert!(c.test[0].masks.is_empty());
    let notes = d.notes.join("\n");
    has(&notes, &["license.txt"]);

    // A missing mask folder, an empty one, a mask of another aspect ratio.
    let gt = r.join("breakfast_box/ground_truth/structural_anomalies/000");
    std::fs::rename(&gt, r.join("moved")).unwrap();
    std::fs::create_dir_all(&gt).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["structural_anomalies/000", "has no mask image"],
    );
    std::fs::remove_dir(&gt).unwrap();
    // (detection still finds LOCO from the logical anomalies' folder)
    has(
        &err(eval::scan_dataset(r, &[])),
        &[
            "missing mask folder",
            "structural_anomalies/000",
            "test/structural_anomalies/000.png",
        ],
    );
    std::fs::rename(r.join("moved"), &gt).unwrap();
    image::GrayImage::new(S, S / 2).save(gt.join("001.png")).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["structural_anomalies/000/001.png", "aspect"],
    );
}

#[test]
fn mvtec3d_reads_the_rgb_images_and_gt_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    mvtec3d_tree(r);
    assert_eq!(Layout::detect(r).unwrap(), Layout::Mvtec3d);
    let d = eval::scan_dataset(r, &[]).unwrap();
    assert_eq!(d.layout, Layout::Mvtec3d);
    let c = &d.categories[0];
    assert_eq!(c.name, "bagel");
    assert_eq!(
        keys(c),
        [
            ("crack".into(), "000".into()),
            ("good".into(), "000".into()),
            ("good".into(), "001".into()),
            ("hole".into(), "000".into())
        ]
    );
    assert!(c.test.iter().all(|t| t.path.parent().unwrap().ends_with("rgb")));
    assert_eq!(c.test[0].masks, [r.join("bagel/test/crack/gt/000.png")]);
    assert_eq!(c.test[0].load_mask(S as usize, S as usize).unwrap(), rect(A));
    assert_eq!(c.test[3].load_mask(S as usize, S as usize).unwrap(), rect(B));
    assert!(c.test[1].masks.is_empty());
    assert!(c.has_ground_truth);
    assert_eq!(
        c.train_good,
        [
            r.join("bagel/train/good/rgb/000.png"),
            r.join("bagel/train/good/rgb/001.png")
        ]
    );
    // A missing mask; a defect folder without rgb/.
    std::fs::remove_file(r.join("bagel/test/hole/gt/000.png")).unwrap();
    has(
        &err(eval::scan_dataset(r, &[])),
        &["missing mask", "hole/gt/000.png", "hole/rgb/000.png"],
    );
    mask(&r.join("bagel/test/hole/gt/000.png"), 255, B);
    std::fs::create_dir_all(r.join("bagel/test/scratch")).unwrap();
    has(&err(eval::scan_dataset(r, &[])), &["test/scratch", "no rgb/ folder"]);
}

#[test]
fn layout_override_detection_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (visa, loco, d3, mv) = (
        tmp.path().join("visa"),
        tmp.path().join("loco"),
        tmp.path().join("d3"),
        tmp.path().join("mvtec"),
    );
    visa_tree(&visa);
    loco_tree(&loco);
    mvtec3d_tree(&d3);
    image(&mv.join("bottle/test/good/000.png"), 1);
    image(&mv.join("bottle/test/broken/000.png"), 2);
    mask(&mv.join("bottle/ground_truth/broken/000_mask.png"), 255, A);
    assert_eq!(Layout::detect(&mv).unwrap(), Layout::Mvtec);
    // A stray folder among MVTec AD masks does not make it LOCO (no test image of that name).
    std::fs::create_dir_all(mv.join("bottle/ground_truth/broken/.ipynb_checkpoints")).unwrap();
    std::fs::create_dir_all(mv.join("bottle/ground_truth/broken/001")).unwrap();
    assert_eq!(Layout::detect(&mv).unwrap(), Layout::Mvtec);
    assert_eq!(eval::scan_dataset(&mv, &[]).unwrap().categories[0].test.len(), 2);

    // The override gives what detection gives on a tree of that layout.
    for (root, layout) in [
        (&visa, Layout::Visa),
        (&loco, Layout::Loco),
        (&d3, Layout::Mvtec3d),
        (&mv, Layout::Mvtec),
    ] {
        let a = eval::scan_dataset(root, &[]).unwrap();
        let b = eval::scan_dataset_as(root, &[], Some(layout)).unwrap();
        assert_eq!((a.layout, b.layout), (layout, layout));
        assert_eq!(a.categories.len(), b.categories.len());
        for (x, y) in a.categories.iter().zip(&b.categories) {
            assert_eq!(x.test, y.test);
        }
    }
    // A tree read in another layout fails with that layout's expectation.
    has(
        &err(eval::scan_dataset_as(&loco, &[], Some(Layout::Mvtec))),
        &["missing mask", "logical_anomalies/000_mask.png"],
    );
    has(
        &err(eval::scan_dataset_as(&mv, &[], Some(Layout::Mvtec3d))),
        &["no rgb/ folder"],
    );
    has(
        &err(eval::scan_dataset_as(&mv, &[], Some(Layout::Loco))),
        &["missing mask folder", "broken/000"],
    );
    has(
        &err(eval::scan_dataset_as(&d3, &[], Some(Layout::Mvtec))),
        &["no test images"],
    );
    has(
        &err(eval::scan_dataset_as(&mv, &[], Some(Layout::Visa))),
        &["VisA layout", "split_csv/1cls.csv"],
    );
    // The override even reads a LOCO tree as MVTec AD once its masks are where MVTec AD wants them.
    let gt = loco.join("breakfast_box/ground_truth");
    mask(&gt.join("logical_anomalies/000_mask.png"), 255, A);
    mask(&gt.join("structural_anomalies/000_mask.png"), 255, B);
    let d = eval::scan_dataset_as(&loco, &[], Some(Layout::Mvtec)).unwrap();
    assert_eq!(d.categories[0].test[2].masks.len(), 1);
    assert_eq!(Layout::detect(&loco).unwrap(), Layout::Loco);

    // Categories in different layouts.
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::rename(loco.join("breakfast_box"), mixed.join("breakfast_box")).unwrap();
    std::fs::rename(mv.join("bottle"), mixed.join("bottle")).unwrap();
    let e = err(eval::scan_dataset(&mixed, &[]));
    has(
        &e,
        &[
            "different layouts",
            "bottle is MVTec AD",
            "breakfast_box is MVTec LOCO AD",
            "--layout",
        ],
    );
    // A tree that fits none names every layout.
    let none = tmp.path().join("none");
    std::fs::create_dir_all(none.join("images")).unwrap();
    std::fs::write(none.join("readme.txt"), "x").unwrap();
    let e = err(eval::scan_dataset(&none, &[]));
    has(
        &e,
        &[
            "no category found",
            "MVTec AD (--layout mvtec)",
            "VisA (--layout visa): ROOT/split_csv/1cls.csv",
            "MVTec LOCO AD (--layout loco): ROOT/<category>/test/<defect>/*.png with ROOT/<category>/ground_truth/<defect>/<stem>/*.png",
            "MVTec 3D-AD (--layout mvtec3d): ROOT/<category>/test/<defect>/rgb/*.png",
        ],
    );
    // Layout names.
    for l in Layout::ALL {
        assert_eq!(l.name().parse::<Layout>().unwrap(), l);
        assert_eq!(serde_json::to_value(l).unwrap(), l.name());
    }
    has(
        &"visa2".parse::<Layout>().unwrap_err().to_string(),
        &["visa2", "mvtec, visa, loco, mvtec3d"],
    );
}

// ---------------------------------------------------------------------------------------------
// `anoscope eval` on each layout

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn read_map(p: &Path) -> (Vec<f32>, usize, usize) {
    let t = candle_core::safetensors::load(p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let m: &Tensor = &t["anomaly_map"];
    let (h, w) = m.dims2().unwrap();
    (m.flatten_all().unwrap().to_vec1().unwrap(), w, h)
}

/// Runs `anoscope eval` with the tiny model; checks the layout in run.json, the images of
/// scores.csv, and the pixel AUROC / AP against a recomputation from the maps and `truth`
/// (category, defect, stem → the expected mask at 48×48, drawn by the test).
fn eval_and_check(dataset: &Path, layout: Layout, extra: &[&str], truth: &[(&str, &str, &str, Option<Vec<bool>>)]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = repo().join("tests/fixtures/winclip_tiny");
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = run(&args);
    assert!(ok, "eval {extra:?} failed: {stderr}");
    let run_json = read_json(&out.join("run.json"));
    assert_eq!(run_json["settings"]["layout"], layout.name(), "{run_json}");
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let rows: Vec<Vec<&str>> = scores.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), truth.len(), "{scores}");
    let metrics = read_json(&out.join("metrics.json"));
    let mut per_cat: Vec<(&str, PixelAccumulator)> = Vec::new();
    for (row, (cat, defect, stem, mask)) in rows.iter().zip(truth) {
        assert_eq!((row[0], row[1], row[2]), (*cat, *defect, *stem), "{scores}");
        assert_eq!(row[3], if mask.is_some() { "1" } else { "0" });
        let (map, w, h) = read_map(
            &out.join("maps")
                .join(cat)
                .join(defect)
                .join(format!("{stem}.map.safetensors")),
        );
        assert_eq!((w, h), (S as usize, S as usize));
        let m = mask.clone().unwrap_or_else(|| vec![false; w * h]);
        if per_cat.last().is_none_or(|(c, _)| c != cat) {
            per_cat.push((cat, PixelAccumulator::new()));
        }
        per_cat.last_mut().unwrap().1.push(&map, &m, w, h).unwrap();
    }
    for (cat, acc) in per_cat {
        let p = acc.finish();
        let got = &metrics[cat];
        for (name, v) in [("pixel_auroc", p.auroc), ("pixel_ap", p.ap)] {
            let v = v.unwrap_or_else(|| panic!("{cat}: {name} undefined"));
            let g = got[name]
                .as_f64()
                .unwrap_or_else(|| panic!("{cat}: {name} missing in {got}"));
            assert!((v - g).abs() < 1e-9, "{cat} {name}: recomputed {v}, metrics.json {g}");
        }
    }
}

#[test]
fn eval_runs_on_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let (visa, loco, d3) = (tmp.path().join("visa"), tmp.path().join("loco"), tmp.path().join("d3"));
    visa_tree(&visa);
    loco_tree(&loco);
    mvtec3d_tree(&d3);
    let (a, b) = (Some(rect(A)), Some(rect(B)));
    // VisA in fast mode (detected), with class-valued masks.
    eval_and_check(
        &visa,
        Layout::Visa,
        &["--mode", "fast"],
        &[
            ("candle", "bad", "000", a.clone()),
            ("candle", "bad", "001", b.clone()),
            ("candle", "good", "0002", None),
            ("pcb1", "bad", "000", a.clone()),
            ("pcb1", "good", "0001", None),
        ],
    );
    // LOCO in few-shot mode (references from train/good), the merged masks; --layout given.
    eval_and_check(
        &loco,
        Layout::Loco,
        &["--mode", "fewshot", "--shots", "2", "--layout", "loco"],
        &[
            ("breakfast_box", "good", "000", None),
            ("breakfast_box", "good", "001", None),
            (
                "breakfast_box",
                "logical_anomalies",
                "000",
                Some(or(&rect(A), &rect(B))),
            ),
            ("breakfast_box", "structural_anomalies", "000", b.clone()),
        ],
    );
    // MVTec 3D-AD in batch mode (MuSc) and WinCLIP.
    let d3_truth = [
        ("bagel", "crack", "000", a.clone()),
        ("bagel", "good", "000", None),
        ("bagel", "good", "001", None),
        ("bagel", "hole", "000", b.clone()),
    ];
    eval_and_check(&d3, Layout::Mvtec3d, &["--mode", "batch"], &d3_truth);
    eval_and_check(&d3, Layout::Mvtec3d, &["--mode", "winclip"], &d3_truth);
    // VisA's few-shot references come from its train rows; too many shots names them.
    let out = tmp.path().join("out-shots");
    let model = repo().join("tests/fixtures/winclip_tiny");
    let (ok, _, stderr) = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        visa.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--mode",
        "fewshot",
        "--shots",
        "2",
        "--categories",
        "pcb1",
    ]);
    assert!(!ok);
    has(&stderr, &["pcb1", "--shots 2", "`pcb1,train,normal` rows", "found 1"]);
    // A wrong --layout is an error before any model loads.
    let (ok, _, stderr) = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        loco.to_str().unwrap(),
        "--out",
        tmp.path().join("out-bad").to_str().unwrap(),
        "--layout",
        "mvtec3d",
    ]);
    assert!(!ok);
    has(&stderr, &["no rgb/ folder"]);
}

/// The same images and masks in the VisA layout (class-valued masks) and in the MVTec AD layout
/// (0/255 masks, `<stem>_mask.png`) give the same scores and metrics.
#[test]
fn visa_and_mvtec_layouts_of_the_same_data_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let visa = tmp.path().join("visa");
    visa_tree(&visa);
    let mv = tmp.path().join("mvtec");
    let c = mv.join("candle");
    for (from, to) in [
        ("candle/Data/Images/Normal/0000.JPG", "train/good/0000.JPG"),
        ("candle/Data/Images/Normal/0001.JPG", "train/good/0001.JPG"),
        ("candle/Data/Images/Normal/0002.JPG", "test/good/0002.JPG"),
        ("candle/Data/Images/Anomaly/000.JPG", "test/bad/000.JPG"),
        ("candle/Data/Images/Anomaly/001.JPG", "test/bad/001.JPG"),
    ] {
        mkdir_for(&c.join(to));
        std::fs::copy(visa.join(from), c.join(to)).unwrap();
    }
    mask(&c.join("ground_truth/bad/000_mask.png"), 255, A);
    mask(&c.join("ground_truth/bad/001_mask.png"), 255, B);
    let model = repo().join("tests/fixtures/winclip_tiny");
    let mut metrics = Vec::new();
    for (root, out) in [(&visa, "out-visa"), (&mv, "out-mvtec")] {
        let out = tmp.path().join(out);
        let (ok, _, stderr) = run(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--categories",
            "candle",
            "--mode",
            "fewshot",
            "--shots",
            "1",
        ]);
        assert!(ok, "{stderr}");
        let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
        let m = read_json(&out.join("metrics.json"))["candle"].clone();
        metrics.push((
            scores,
            m,
            read_json(&out.join("run.json"))["categories"]["candle"]["references"].clone(),
        ));
    }
    assert_eq!(metrics[0].0, metrics[1].0, "scores.csv");
    assert_eq!(metrics[0].1, metrics[1].1, "metrics.json");
    assert!(metrics[0].1["pixel_auroc"].is_number(), "{}", metrics[0].1);
    // The same reference drawn (by position in the sorted train images).
    let name = |v: &Value| v[0].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(name(&metrics[0].2), name(&metrics[1].2));
}
