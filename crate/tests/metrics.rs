//! Golden tests of `anoscope::metrics` against scikit-learn and anomalib 2.7
//! (fixtures by tests/reference/make_metric_fixtures.py, see tests/reference/METRICS.md),
//! plus hand-worked examples, undefined cases and the accumulator's memory shape.
use anoscope::metrics::{
    aupimo, aupro, auroc, average_precision, f1_max, image_metrics, linspace_f32, AupimoOptions, ImageMetrics,
    PixelAccumulator, PixelMetrics, PixelOptions,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Tolerance against the references (anomalib works in float32 for F1-max and AUPRO).
const TOL: f64 = 1e-6;
/// Tolerance against the float64 transcriptions ("mirror") and float64 references.
const TIGHT: f64 = 1e-12;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/metrics")
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| serde_json::from_slice(&std::fs::read(dir().join("reference.json")).unwrap()).unwrap())
}

/// The synthetic maps (score = q / 1024, exact in f32) and masks, image by image.
struct Synthetic {
    maps: Vec<Vec<f32>>,
    masks: Vec<Vec<bool>>,
    width: usize,
    height: usize,
}

fn synthetic() -> &'static Synthetic {
    static S: OnceLock<Synthetic> = OnceLock::new();
    S.get_or_init(|| {
        let bytes = std::fs::read(dir().join("maps.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let maps = st.tensor("maps").unwrap();
        let masks = st.tensor("masks").unwrap();
        assert_eq!(maps.dtype(), safetensors::Dtype::U16);
        assert_eq!(masks.dtype(), safetensors::Dtype::U8);
        let (n, height, width) = (maps.shape()[0], maps.shape()[1], maps.shape()[2]);
        assert_eq!(masks.shape(), maps.shape());
        let quant = reference()["synthetic"]["quant"].as_f64().unwrap() as f32;
        let q: Vec<f32> = maps
            .data()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as f32 / quant)
            .collect();
        let m: Vec<bool> = masks.data().iter().map(|&b| b != 0).collect();
        let px = width * height;
        Synthetic {
            maps: (0..n).map(|i| q[i * px..(i + 1) * px].to_vec()).collect(),
            masks: (0..n).map(|i| m[i * px..(i + 1) * px].to_vec()).collect(),
            width,
            height,
        }
    })
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() != 0).collect()
}

/// A reference value: `{"value": x}` (x may be null = NaN) or `{"error": ...}` → None.
fn refval(v: &Value) -> Option<f64> {
    v.get("value").and_then(Value::as_f64)
}

fn close(what: &str, ours: Option<f64>, want: Option<f64>, tol: f64) {
    match (ours, want) {
        (Some(a), Some(b)) => {
            eprintln!("{what}: ours {a:.12} reference {b:.12} |Δ| {:.1e}", (a - b).abs());
            assert!(
                (a - b).abs() <= tol,
                "{what}: ours {a} reference {b} (tolerance {tol:e})"
            );
        }
        (None, None) => {}
        _ => panic!("{what}: ours {ours:?} reference {want:?}"),
    }
}

fn accumulate(idx: impl IntoIterator<Item = usize>, options: PixelOptions) -> PixelAccumulator {
    let s = synthetic();
    let mut acc = PixelAccumulator::with_options(options);
    for i in idx {
        acc.push(&s.maps[i], &s.masks[i], s.width, s.height).unwrap();
    }
    acc
}

/// Our pixel metrics against a `pixel_refs` record of the generator. The mirrors are null
/// where a metric is undefined (one pixel class only, no region): ours must be None there,
/// whatever the references return.
fn check_pixel(what: &str, m: &PixelMetrics, r: &Value, aupimo_expected: bool) {
    if r["mirror_f1max"].is_null() {
        assert_eq!((m.auroc, m.ap, m.f1max), (None, None, None), "{what}");
    } else {
        close(&format!("{what} pixel AUROC"), m.auroc, refval(&r["auroc"]), TIGHT);
        close(&format!("{what} pixel AP"), m.ap, refval(&r["ap"]), TIGHT);
        close(&format!("{what} pixel F1max"), m.f1max, refval(&r["f1max"]), TOL);
        close(
            &format!("{what} F1max (mirror)"),
            m.f1max,
            r["mirror_f1max"].as_f64(),
            TIGHT,
        );
    }
    close(&format!("{what} AUPRO"), m.aupro, r["mirror_aupro"].as_f64(), TIGHT);
    if m.aupro.is_some() {
        close(&format!("{what} AUPRO (anomalib)"), m.aupro, refval(&r["aupro"]), TOL);
    }
    if aupimo_expected {
        let a = &r["aupimo"]["value"];
        close(&format!("{what} AUPIMO mean"), m.aupimo, a["mean"].as_f64(), TOL);
        let want: Vec<Option<f64>> = a["per_image"].as_array().unwrap().iter().map(Value::as_f64).collect();
        assert_eq!(m.aupimo_per_image.len(), want.len());
        for (i, (&o, &w)) in m.aupimo_per_image.iter().zip(&want).enumerate() {
            close(&format!("{what} AUPIMO image {i}"), o, w, TOL);
        }
    } else {
        assert!(
            r["aupimo"].get("error").is_some(),
            "{what}: anomalib computed an AUPIMO"
        );
        assert_eq!(m.aupimo, None, "{what}");
        assert!(m.aupimo_per_image.iter().all(Option::is_none), "{what}");
    }
}

// ---------------------------------------------------------------- image level

#[test]
fn image_examples_match_sklearn_and_anomalib() {
    for e in reference()["image_examples"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let (s, l) = (f32s(&e["scores"]), bools(&e["labels"]));
        close(&format!("{name} AUROC"), auroc(&s, &l), refval(&e["auroc"]), TIGHT);
        close(
            &format!("{name} AP"),
            average_precision(&s, &l),
            refval(&e["ap"]),
            TIGHT,
        );
        close(&format!("{name} F1max"), f1_max(&s, &l), refval(&e["f1max"]), TOL);
        close(
            &format!("{name} F1max (mirror)"),
            f1_max(&s, &l),
            e["mirror_f1max"].as_f64(),
            TIGHT,
        );
    }
}

#[test]
fn image_examples_worked_by_hand() {
    let check = |s: &[f32], l: &[bool], want: (f64, f64, f64)| {
        let m = image_metrics(s, l);
        for (what, o, w) in [
            ("AUROC", m.auroc, want.0),
            ("AP", m.ap, want.1),
            ("F1", m.f1max, want.2),
        ] {
            let o = o.unwrap();
            assert!((o - w).abs() < 1e-15, "{what}: {o} vs {w} for {s:?} {l:?}");
        }
    };
    let (t, f) = (true, false);
    // sklearn's docstring example
    check(&[0.1, 0.4, 0.35, 0.8], &[f, f, t, t], (0.75, 5.0 / 6.0, 0.8));
    // thresholds 0.9 (tp 1, fp 0), 0.5 (tp 3, fp 1), 0.2 (tp 3, fp 3); P = N = 3
    // AUROC (0 + 1·(1+3)/2 + 2·(3+3)/2) / 9 = 8/9; AP ⅓·1 + ⅔·¾ = ⅚; F1 max(½, 6/7, ⅔)
    check(
        &[0.5, 0.5, 0.5, 0.2, 0.9, 0.2],
        &[t, f, t, f, t, f],
        (8.0 / 9.0, 5.0 / 6.0, 6.0 / 7.0),
    );
    // one tie group: AUROC ½, AP = prevalence, F1 = 2p / (1 + p)
    check(&[0.3; 5], &[f, t, f, f, t], (0.5, 0.4, 4.0 / 7.0));
    check(&[0.9, 0.8, 0.1, 0.2], &[t, t, f, f], (1.0, 1.0, 1.0));
    // inverted: AP ½·⅓ + ½·½ = 5/12, F1 max(0.4, ⅔)
    check(&[0.1, 0.2, 0.9, 0.8], &[t, t, f, f], (0.0, 5.0 / 12.0, 2.0 / 3.0));
    // -0.0 and +0.0 are one threshold: groups 2.0 (tp 1), 0 (tp 2, fp 1), -1.5 (tp 3, fp 2)
    check(
        &[-0.0, 0.0, -1.5, 2.0, -1.5],
        &[t, f, f, t, t],
        (2.0 / 3.0, 34.0 / 45.0, 0.75),
    );
}

#[test]
fn image_set_with_ties() {
    let e = &reference()["image_set"];
    let (s, l) = (f32s(&e["scores"]), bools(&e["labels"]));
    let m = image_metrics(&s, &l);
    close("image set AUROC", m.auroc, refval(&e["auroc"]), TIGHT);
    close("image set AP", m.ap, refval(&e["ap"]), TIGHT);
    close("image set F1max", m.f1max, refval(&e["f1max"]), TOL);
    close("image set F1max (mirror)", m.f1max, e["mirror_f1max"].as_f64(), TIGHT);
    assert_eq!(m.auroc, auroc(&s, &l));
    assert_eq!(m.ap, average_precision(&s, &l));
    assert_eq!(m.f1max, f1_max(&s, &l));
    // order of the samples does not matter
    let (rs, rl): (Vec<f32>, Vec<bool>) = s.iter().zip(&l).rev().map(|(&a, &b)| (a, b)).unzip();
    assert_eq!(image_metrics(&rs, &rl), m);
}

#[test]
fn image_undefined_cases_are_none() {
    let r = reference();
    for e in r["image_edge"].as_array().unwrap() {
        let (s, l) = (f32s(&e["scores"]), bools(&e["labels"]));
        assert_eq!(image_metrics(&s, &l), ImageMetrics::default(), "{}", e["name"]);
    }
    // what the references do instead: nan / 0.0 / 1.0
    let all_normal = &r["image_edge"][0];
    assert!(all_normal["auroc"]["value"].is_null());
    assert_eq!(refval(&all_normal["ap"]), Some(0.0));
    assert_eq!(image_metrics(&[], &[]), ImageMetrics::default());
    assert_eq!(auroc(&[f32::NAN, 0.5], &[true, false]), None);
    // infinities are ordinary extremes
    assert_eq!(auroc(&[f32::INFINITY, f32::NEG_INFINITY], &[true, false]), Some(1.0));
}

#[test]
#[should_panic(expected = "2 scores but 1 labels")]
fn image_length_mismatch_panics() {
    auroc(&[0.1, 0.2], &[true]);
}

#[test]
fn image_level_on_synthetic_maps() {
    let s = synthetic();
    let scores: Vec<f32> = s
        .maps
        .iter()
        .map(|m| m.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    let labels: Vec<bool> = s.masks.iter().map(|m| m.iter().any(|&b| b)).collect();
    let e = &reference()["synthetic"]["image_level_max"];
    let m = image_metrics(&scores, &labels);
    close("max-score AUROC", m.auroc, refval(&e["auroc"]), TIGHT);
    close("max-score AP", m.ap, refval(&e["ap"]), TIGHT);
    close("max-score F1max", m.f1max, refval(&e["f1max"]), TOL);
}

// ---------------------------------------------------------------- pixel level

#[test]
fn pixel_metrics_match_references() {
    let r = &reference()["synthetic"];
    let n = r["num_images"].as_u64().unwrap() as usize;
    let acc = accumulate(0..n, PixelOptions::default());
    assert_eq!(acc.num_images(), n);
    assert_eq!(acc.len(), n * 64 * 64);
    let m = acc.finish();
    check_pixel("synthetic", &m, &r["pixel"], true);
    // per image: None for the 26 normal images, a value for the 8 anomalous ones
    assert_eq!(m.aupimo_per_image.iter().filter(|v| v.is_some()).count(), 8);

    // push order does not matter (per-image values follow the images)
    let rev = accumulate((0..n).rev(), PixelOptions::default()).finish();
    assert_eq!((rev.auroc, rev.ap, rev.f1max), (m.auroc, m.ap, m.f1max));
    close("AUPRO, reversed order", rev.aupro, m.aupro, 1e-14);
    close("AUPIMO, reversed order", rev.aupimo, m.aupimo, 1e-14);
    let back: Vec<Option<f64>> = rev.aupimo_per_image.iter().rev().copied().collect();
    assert_eq!(back, m.aupimo_per_image);
}

#[test]
fn aupro_fpr_limits_and_connectivity() {
    let s = synthetic();
    let r = &reference()["synthetic"];
    let maps: Vec<&[f32]> = s.maps.iter().map(Vec::as_slice).collect();
    let masks: Vec<&[bool]> = s.masks.iter().map(Vec::as_slice).collect();
    for lim in ["0.05", "0.3", "1.0"] {
        let ours = aupro(&maps, &masks, s.width, s.height, lim.parse().unwrap());
        close(&format!("AUPRO @{lim}"), ours, refval(&r["aupro_fpr_limits"][lim]), TOL);
        close(
            &format!("AUPRO @{lim} (mirror)"),
            ours,
            r["mirror_aupro_fpr_limits"][lim].as_f64(),
            TIGHT,
        );
    }
    // 4-connected regions would give a clearly different value: the 8-connectivity is pinned
    let ours = aupro(&maps, &masks, s.width, s.height, 0.3).unwrap();
    assert!((ours - r["mirror_aupro_4_connectivity"].as_f64().unwrap()).abs() > 1e-2);
    // a custom limit through the accumulator
    let opts = PixelOptions {
        aupro_fpr_limit: 0.05,
        ..Default::default()
    };
    let m = accumulate(0..s.maps.len(), opts).finish();
    close(
        "accumulator AUPRO @0.05",
        m.aupro,
        r["mirror_aupro_fpr_limits"]["0.05"].as_f64(),
        TIGHT,
    );
}

#[test]
fn aupro_worked_examples() {
    for case in reference()["aupro_examples"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let maps: Vec<Vec<f32>> = case["maps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|im| im.as_array().unwrap().iter().flat_map(f32s).collect())
            .collect();
        let masks: Vec<Vec<bool>> = case["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|im| im.as_array().unwrap().iter().flat_map(bools).collect())
            .collect();
        let height = case["maps"][0].as_array().unwrap().len();
        let width = maps[0].len() / height;
        let maps: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
        let masks: Vec<&[bool]> = masks.iter().map(Vec::as_slice).collect();
        for (lim, r) in case["aupro"].as_object().unwrap() {
            let ours = aupro(&maps, &masks, width, height, lim.parse().unwrap());
            close(&format!("{name} AUPRO @{lim}"), ours, refval(r), TOL);
            close(
                &format!("{name} AUPRO @{lim} (mirror)"),
                ours,
                case["mirror_aupro"][lim].as_f64(),
                TIGHT,
            );
            if name == "hand" {
                assert_eq!(ours, Some(0.5));
            }
        }
    }
    // diagonal chain: 8-connected → {3 pixels, 1 pixel}; @0.3 by hand: 5/6
    let d = &reference()["aupro_examples"][1];
    assert!((d["mirror_aupro"]["0.3"].as_f64().unwrap() - 5.0 / 6.0).abs() < 1e-15);
}

#[test]
fn aupro_undefined_cases_are_none() {
    let r = &reference()["aupro_edge"];
    // anomalib returns 0.0 for both
    assert_eq!(refval(&r["no_region"]), Some(0.0));
    assert_eq!(refval(&r["no_background"]), Some(0.0));
    assert_eq!(aupro(&[&[0.0; 4]], &[&[false; 4]], 2, 2, 0.3), None);
    assert_eq!(aupro(&[&[1.0; 4]], &[&[true; 4]], 2, 2, 0.3), None);
    assert_eq!(aupro(&[], &[], 2, 2, 0.3), None);
    let (map, mask) = ([0.9, 0.1, 0.5, 0.2], [true, false, false, false]);
    assert_eq!(aupro(&[&map], &[&mask], 2, 2, 0.0), None);
    assert_eq!(aupro(&[&map], &[&mask], 2, 2, f64::NAN), None);
    assert_eq!(aupro(&[&map], &[&mask], 2, 2, 0.3), Some(1.0));
}

#[test]
fn pixel_subsets_and_undefined_cases() {
    let r = &reference()["synthetic"];
    let sub: Vec<usize> = r["subset"]["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    // 2 normal images: the shared FPR never gets down to 1e-5, anomalib raises → None
    let m = accumulate(sub.clone(), PixelOptions::default()).finish();
    check_pixel("subset", &m, &r["subset"]["default"], false);
    assert_eq!(m.aupimo_per_image.len(), sub.len());

    // non-default AUPIMO options on the same subset
    let o = &r["subset"]["options"];
    let options = AupimoOptions {
        num_thresholds: o["num_thresholds"].as_u64().unwrap() as usize,
        fpr_bounds: (
            o["fpr_bounds"][0].as_f64().unwrap(),
            o["fpr_bounds"][1].as_f64().unwrap(),
        ),
        force: false,
    };
    let m = accumulate(
        sub.clone(),
        PixelOptions {
            aupimo: options.clone(),
            ..Default::default()
        },
    )
    .finish();
    let want = &o["aupimo"]["value"];
    close("subset AUPIMO (options) mean", m.aupimo, want["mean"].as_f64(), TOL);
    for (i, w) in want["per_image"].as_array().unwrap().iter().enumerate() {
        close(
            &format!("subset AUPIMO (options) image {i}"),
            m.aupimo_per_image[i],
            w.as_f64(),
            TOL,
        );
    }
    // the standalone form agrees
    let s = synthetic();
    let maps: Vec<&[f32]> = sub.iter().map(|&i| s.maps[i].as_slice()).collect();
    let masks: Vec<&[bool]> = sub.iter().map(|&i| s.masks[i].as_slice()).collect();
    let a = aupimo(&maps, &masks, s.width, s.height, &options);
    assert_eq!((a.mean, a.per_image), (m.aupimo, m.aupimo_per_image));

    // all images normal / all anomalous
    let normal = accumulate(0..4, PixelOptions::default()).finish();
    check_pixel("all normal", &normal, &r["all_normal_images"], false);
    assert_eq!(
        normal,
        PixelMetrics {
            aupimo_per_image: vec![None; 4],
            ..Default::default()
        }
    );
    let anomalous = accumulate(26..30, PixelOptions::default()).finish();
    check_pixel("all anomalous", &anomalous, &r["all_anomalous_images"], false);
    assert!(anomalous.aupro.is_some());

    // nothing pushed
    assert_eq!(PixelAccumulator::new().finish(), PixelMetrics::default());
}

#[test]
fn aupimo_force_and_invalid_options() {
    let s = synthetic();
    let idx = [0usize, 1, 26, 27];
    let maps: Vec<&[f32]> = idx.iter().map(|&i| s.maps[i].as_slice()).collect();
    let masks: Vec<&[bool]> = idx.iter().map(|&i| s.masks[i].as_slice()).collect();
    // 20 thresholds cannot give more than 30 integration points: None unless forced
    let mut o = AupimoOptions {
        num_thresholds: 20,
        fpr_bounds: (0.05, 0.5),
        force: false,
    };
    assert_eq!(aupimo(&maps, &masks, s.width, s.height, &o).mean, None);
    o.force = true;
    let forced = aupimo(&maps, &masks, s.width, s.height, &o);
    assert!(forced.mean.is_some_and(|v| (0.0..=1.0).contains(&v)), "{forced:?}");
    for bounds in [(0.0, 0.1), (0.1, 0.1), (0.2, 0.1), (0.1, 1.5), (f64::NAN, 0.1)] {
        let o = AupimoOptions {
            num_thresholds: 1000,
            fpr_bounds: bounds,
            force: true,
        };
        assert_eq!(aupimo(&maps, &masks, s.width, s.height, &o).mean, None, "{bounds:?}");
    }
    // normal scores all equal: no threshold range (anomalib raises)
    let flat = [0.5f32; 16];
    let (a, m) = (
        [
            0.5f32, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
        ],
        {
            let mut m = [false; 16];
            m[1] = true;
            m
        },
    );
    let o = AupimoOptions {
        num_thresholds: 100,
        fpr_bounds: (0.05, 0.5),
        force: true,
    };
    assert_eq!(aupimo(&[&flat, &a], &[&[false; 16], &m], 4, 4, &o).mean, None);
}

#[test]
fn linspace_is_bit_identical_to_torch() {
    for case in reference()["linspace_f32"].as_array().unwrap() {
        let (a, b) = (
            case["start"].as_f64().unwrap() as f32,
            case["end"].as_f64().unwrap() as f32,
        );
        let n = case["steps"].as_u64().unwrap() as usize;
        let t = linspace_f32(a, b, n);
        assert_eq!(t.len(), n);
        for (i, bits) in case["index"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["bits"].as_array().unwrap())
        {
            let i = i.as_u64().unwrap() as usize;
            assert_eq!(
                t[i].to_bits(),
                bits.as_u64().unwrap() as u32,
                "linspace({a}, {b}, {n})[{i}]"
            );
        }
    }
    assert_eq!(linspace_f32(1.0, 2.0, 1), vec![1.0]);
    assert!(linspace_f32(1.0, 2.0, 0).is_empty());
}

// -------------------------------------------------------------------- memory

#[test]
fn accumulator_memory_shape() {
    let mut acc = PixelAccumulator::new();
    assert!(acc.is_empty() && acc.heap_bytes() == 0);
    assert_eq!(acc.len(), 0);
    let (w, h) = (256usize, 192usize);
    let map: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let mask: Vec<bool> = (0..w * h)
        .map(|i| (i % w) > 100 && (i % w) < 120 && i / w > 50 && i / w < 90)
        .collect();
    for k in 0..12 {
        let m = if k % 3 == 0 { mask.clone() } else { vec![false; w * h] };
        acc.push(&map, &m, w, h).unwrap();
    }
    let px = acc.len();
    assert_eq!(px, 12 * w * h);
    // scores: 4 bytes, mask: 1 bit, + a few words per image
    let per_image = (acc.heap_bytes() - px * 4 - px / 8) / acc.num_images();
    let bpp = acc.heap_bytes() as f64 / px as f64;
    eprintln!(
        "heap {} bytes for {px} pixels: {bpp:.4} bytes/pixel, {per_image} bytes/image overhead",
        acc.heap_bytes()
    );
    assert!(bpp < 4.13, "{bpp} bytes per pixel");
    assert!(per_image <= 128, "{per_image}");
    // finish's extra scratch is bounded by the AUPIMO tables or one image, not by the pixel count
    let extra = acc.peak_bytes() - acc.heap_bytes();
    let bound = 16 * (AupimoOptions::default().num_thresholds + 1) + 12 * w * h + 64 * (12 + w * h);
    assert!(extra <= bound, "{extra} > {bound}");
    let m = acc.finish();
    assert!(m.auroc.is_some() && m.aupro.is_some());
}

#[test]
fn push_rejects_bad_input() {
    let mut acc = PixelAccumulator::new();
    assert!(acc.push(&[0.0; 3], &[false; 4], 2, 2).is_err());
    assert!(acc.push(&[0.0; 4], &[false; 3], 2, 2).is_err());
    assert!(acc.push(&[], &[], 0, 0).is_err());
    assert!(acc.push(&[0.0, f32::NAN, 0.0, 0.0], &[false; 4], 2, 2).is_err());
    assert!(acc.push(&[0.0, f32::INFINITY, 0.0, 0.0], &[false; 4], 2, 2).is_err());
    assert!(acc.is_empty());
    acc.push(&[0.0; 4], &[false; 4], 2, 2).unwrap();
    assert_eq!((acc.len(), acc.num_images()), (4, 1));
}

#[test]
fn metrics_serialize_with_nulls() {
    let m = PixelMetrics {
        auroc: Some(0.5),
        aupimo_per_image: vec![None, Some(1.0)],
        ..Default::default()
    };
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["auroc"], 0.5);
    assert!(v["aupro"].is_null());
    assert_eq!(v["aupimo_per_image"], serde_json::json!([null, 1.0]));
    let i = serde_json::to_value(ImageMetrics::default()).unwrap();
    assert_eq!(i, serde_json::json!({"auroc": null, "ap": null, "f1max": null}));
}

/// Rough timing on an MVTec-sized category (`cargo test --release --test metrics -- --ignored --nocapture`).
#[test]
#[ignore]
fn large_category_timing() {
    let (w, h, n) = (448usize, 448usize, 80usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut acc = PixelAccumulator::new();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let anomalous = i % 4 != 0;
        let mut mask = vec![false; w * h];
        let mut map: Vec<f32> = (0..w * h).map(|_| -(1.0 - rnd()).ln()).collect(); // exponential tail
        if anomalous {
            for k in 0..(1 + i % 5) {
                let (cx, cy, r) = (
                    40 + (i * 37 + k * 91) % 360,
                    40 + (i * 53 + k * 67) % 360,
                    5 + (i + k) % 30,
                );
                for y in cy - r..cy + r {
                    for x in cx - r..cx + r {
                        mask[y * w + x] = true;
                        map[y * w + x] += 3.0 * rnd();
                    }
                }
            }
        }
        acc.push(&map, &mask, w, h).unwrap();
    }
    let (heap, peak, px) = (acc.heap_bytes(), acc.peak_bytes(), acc.len());
    let t1 = std::time::Instant::now();
    let m = acc.finish();
    let summary = (m.auroc, m.ap, m.f1max, m.aupro, m.aupimo);
    eprintln!(
        "{n} images {w}x{h} ({px} px): push {:.2?}, finish {:.2?}; heap {:.3} B/px, peak bound {:.3} B/px; \
         (auroc, ap, f1max, aupro, aupimo) = {summary:?}",
        t1 - t0,
        t1.elapsed(),
        heap as f64 / px as f64,
        peak as f64 / px as f64,
    );
    assert!(
        m.auroc.is_some() && m.aupro.is_some() && m.aupimo.is_some(),
        "{summary:?}"
    );
}
