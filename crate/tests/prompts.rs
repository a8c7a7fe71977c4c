//! Prompt ensembles, the bundled defect descriptions and the precomputed prompt file
//! (`anoscope::detect::prompts`), against the tiny open_clip fixture's text tower.
use anoscope::detect::prompts::{
    build_bundle, categories, category, descriptions_ensemble, ensemble, parse_descriptions, sha256_hex,
    winclip_ensemble, Category, EnsembleKind, PromptBundle, BUNDLE_METADATA_KEY, MAX_CATEGORIES, MAX_DEFECTS,
    MAX_PROMPT_CHARS,
};
use anoscope::detect::TextPair;
use anoscope::model::Clip;
use anoscope::tokenizer::ClipTokenizer;
use safetensors::SafeTensors;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

const MVTEC: [&str; 15] = [
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
];

const VISA: [&str; 12] = [
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

struct Fixture {
    clip: Clip,
    tok: ClipTokenizer,
    sha: String,
    cats: Vec<Category>,
    bundle: PromptBundle,
    bytes: Vec<u8>,
}

/// Built once: a bundle for bottle and metal_nut × both kinds from the tiny open_clip model.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = fixtures().join("winclip_tiny");
        let clip = Clip::load_dir(&dir).unwrap();
        let tok = ClipTokenizer::new().unwrap();
        let sha = sha256_hex(&std::fs::read(dir.join("open_clip_model.safetensors")).unwrap());
        let cats = vec![
            category("bottle").unwrap().unwrap(),
            category("metal_nut").unwrap().unwrap(),
        ];
        let mut calls = Vec::new();
        let bundle = build_bundle(
            &clip,
            &tok,
            "winclip_tiny",
            &sha,
            &cats,
            &EnsembleKind::ALL,
            &mut |done, total| calls.push((done, total)),
        )
        .unwrap();
        assert_eq!(calls, vec![(1, 4), (2, 4), (3, 4), (4, 4)], "progress calls");
        let bytes = bundle.to_bytes().unwrap();
        Fixture {
            clip,
            tok,
            sha,
            cats,
            bundle,
            bytes,
        }
    })
}

// ------------------------------------------------------------------------------------------
// Ensembles and categories
// ------------------------------------------------------------------------------------------

#[test]
fn ensemble_counts() {
    let (n, a) = winclip_ensemble("bottle");
    assert_eq!((n.len(), a.len()), (147, 84));
    for k in [0usize, 1, 5, 12] {
        let defects: Vec<String> = (0..k).map(|i| format!("defect {i}")).collect();
        let (dn, da) = descriptions_ensemble("bottle", &defects);
        assert_eq!(dn, n, "normal side is WinCLIP's");
        assert_eq!(da.len(), 84 + 21 * k);
        assert_eq!(&da[..84], &a[..], "WinCLIP's anomalous prompts come first");
    }
    let (_, da) = descriptions_ensemble("metal nut", &["a bent tab".to_string()]);
    assert_eq!(da[84], "a cropped photo of the metal nut with a bent tab.");
    assert_eq!(da[84 + 11], "a photo of a metal nut with a bent tab.");
}

#[test]
fn ensemble_by_kind() {
    let cat = category("metal_nut").unwrap().unwrap();
    assert_eq!(cat.object, "metal nut");
    assert_eq!(ensemble(&cat, EnsembleKind::WinClip), winclip_ensemble("metal nut"));
    let (n, a) = ensemble(&cat, EnsembleKind::Descriptions);
    assert_eq!((n.len(), a.len()), (147, 84 + 21 * cat.defects.len()));
    assert_eq!(
        (n, a),
        descriptions_ensemble("metal nut", &cat.defects),
        "descriptions ensemble of the category"
    );
}

#[test]
fn ensemble_kind_strings() {
    assert_eq!(EnsembleKind::WinClip.as_str(), "winclip");
    assert_eq!(EnsembleKind::Descriptions.as_str(), "descriptions");
    assert_eq!(EnsembleKind::parse("winclip").unwrap(), EnsembleKind::WinClip);
    assert_eq!(
        "descriptions".parse::<EnsembleKind>().unwrap(),
        EnsembleKind::Descriptions
    );
    assert!(err_text(EnsembleKind::parse("filo")).contains("unknown prompt ensemble"));
}

#[test]
fn all_categories_present_and_clean() {
    let cats = categories().unwrap();
    let names: Vec<&str> = cats.iter().map(|c| c.name.as_str()).collect();
    let mut want: Vec<&str> = MVTEC.iter().chain(VISA.iter()).copied().collect();
    want.push("object");
    want.sort();
    assert_eq!(names, want, "28 categories, sorted by name");
    assert_eq!(cats.len(), 28);
    for c in &cats {
        assert!(
            (4..=10).contains(&c.defects.len()),
            "{}: {} defects",
            c.name,
            c.defects.len()
        );
        let unique: HashSet<&String> = c.defects.iter().collect();
        assert_eq!(unique.len(), c.defects.len(), "{}: duplicate defects", c.name);
        assert_eq!(c.object, c.object.to_lowercase(), "{}: object not lowercase", c.name);
        assert!(
            !c.object.contains('_'),
            "{}: object {:?} is not natural language",
            c.name,
            c.object
        );
        for d in &c.defects {
            assert_eq!(*d, d.to_lowercase(), "{}: {d:?} not lowercase", c.name);
            assert!(!d.ends_with('.'), "{}: {d:?} ends with a period", c.name);
            assert_eq!(d.trim(), d, "{}: {d:?} has surrounding blanks", c.name);
            assert!(!d.is_empty());
        }
    }
    let obj = |n: &str| category(n).unwrap().unwrap().object;
    assert_eq!(obj("metal_nut"), "metal nut");
    assert_eq!(obj("pcb1"), "printed circuit board");
    assert_eq!(obj("chewinggum"), "chewing gum");
    assert_eq!(obj("macaroni1"), "macaroni");
    assert_eq!(obj("pipe_fryum"), "pipe fryum");
    assert_eq!(obj("object"), "object");
    assert!(category("no_such_category").unwrap().is_none());
}

#[test]
fn descriptions_file_limits() {
    // wrong version, unknown field, bad name, too long / empty text, duplicates, too many categories
    let bad = [
        (r#"{"version": 2, "categories": {}}"#, "version"),
        (
            r#"{"version": 1, "categories": {"a": {"object": "a", "defects": [], "x": 1}}}"#,
            "invalid",
        ),
        (
            r#"{"version": 1, "categories": {"a/b": {"object": "a", "defects": []}}}"#,
            "category name",
        ),
        (
            r#"{"version": 1, "categories": {"a": {"object": " ", "defects": []}}}"#,
            "empty",
        ),
        (
            r#"{"version": 1, "categories": {"a": {"object": "a", "defects": ["x", "x"]}}}"#,
            "twice",
        ),
    ];
    for (json, want) in bad {
        let e = err_text(parse_descriptions(json));
        assert!(e.contains(want), "{json}: {e}");
    }
    let long = "x".repeat(MAX_PROMPT_CHARS + 1);
    let json = format!(r#"{{"version": 1, "categories": {{"a": {{"object": "{long}", "defects": []}}}}}}"#);
    assert!(err_text(parse_descriptions(&json)).contains("too long"));
    let many: Vec<String> = (0..=MAX_CATEGORIES)
        .map(|i| format!(r#""c{i}": {{"object": "o", "defects": []}}"#))
        .collect();
    let json = format!(r#"{{"version": 1, "categories": {{{}}}}}"#, many.join(","));
    assert!(err_text(parse_descriptions(&json)).contains("categories"));

    // custom categories
    assert!(Category::new("mine", "widget", &["a dent".into()]).is_ok());
    assert!(err_text(Category::new("mine", &"w".repeat(MAX_PROMPT_CHARS + 1), &[])).contains("too long"));
    assert!(err_text(Category::new("mine", "widget", &["d".repeat(MAX_PROMPT_CHARS + 1)])).contains("too long"));
    let too_many: Vec<String> = (0..=MAX_DEFECTS).map(|i| format!("defect {i}")).collect();
    assert!(err_text(Category::new("mine", "widget", &too_many)).contains("at most"));
}

// ------------------------------------------------------------------------------------------
// The prompt bundle
// ------------------------------------------------------------------------------------------

#[test]
fn bundle_round_trip_matches_direct_encoding() {
    let f = fixture();
    assert_eq!(f.bundle.embed_dim, 48);
    assert_eq!(f.bundle.entries.len(), 4);
    assert_eq!(f.sha.len(), 64);

    let back = PromptBundle::from_bytes(&f.bytes, Some(&f.sha)).unwrap();
    assert_eq!(back, f.bundle, "round trip is exact");
    assert_eq!(back.model_id, "winclip_tiny");
    assert_eq!(back.model_sha256, f.sha);
    // the upper-case form of the same hash is accepted too
    PromptBundle::from_bytes(&f.bytes, Some(&f.sha.to_uppercase())).unwrap();

    for cat in &f.cats {
        for kind in EnsembleKind::ALL {
            let e = back.get(&cat.name, kind).unwrap();
            assert_eq!(e.object, cat.object);
            let (n, a) = ensemble(cat, kind);
            assert_eq!((e.n_normal, e.n_anomalous), (n.len(), a.len()));
            let direct = TextPair::from_prompts(&f.clip, &f.tok, &n, &a).unwrap();
            let d =
                max_abs_diff(&e.text.normal, &direct.normal).max(max_abs_diff(&e.text.anomalous, &direct.anomalous));
            assert!(d <= 1e-6, "{}/{kind}: max |Δ| = {d}", cat.name);
            for row in [&e.text.normal, &e.text.anomalous] {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "unit vector, norm {norm}");
            }
        }
        let w = back.get(&cat.name, EnsembleKind::WinClip).unwrap();
        let d = back.get(&cat.name, EnsembleKind::Descriptions).unwrap();
        assert_eq!(w.text.normal, d.text.normal, "{}: same normal prompts", cat.name);
        let diff = max_abs_diff(&w.text.anomalous, &d.text.anomalous);
        assert!(
            diff > 1e-4,
            "{}: winclip vs descriptions anomalous differ by {diff}",
            cat.name
        );
    }
    assert!(
        back.get("bottle", EnsembleKind::WinClip).unwrap().text
            != back.get("metal_nut", EnsembleKind::WinClip).unwrap().text
    );
    assert!(back.get("carpet", EnsembleKind::WinClip).is_none());

    // the file's layout: one [2, P] F32 tensor per entry and the JSON index
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        vec![
            "bottle/descriptions",
            "bottle/winclip",
            "metal_nut/descriptions",
            "metal_nut/winclip"
        ]
    );
    let view = st.tensor("bottle/winclip").unwrap();
    assert_eq!(view.shape(), &[2, 48]);
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let (_, meta) = SafeTensors::read_metadata(&f.bytes).unwrap();
    let index: serde_json::Value =
        serde_json::from_str(meta.metadata().as_ref().unwrap().get(BUNDLE_METADATA_KEY).unwrap()).unwrap();
    assert_eq!(index["format"], 1);
    assert_eq!(index["embed_dim"], 48);
    assert_eq!(index["model_sha256"], f.sha.as_str());
    assert_eq!(index["entries"].as_array().unwrap().len(), 4);
    assert_eq!(index["entries"][0]["tensor"], "bottle/winclip");
    assert_eq!(index["entries"][0]["n_normal"], 147);
}

#[test]
fn bundle_rejects_other_model() {
    let f = fixture();
    let other = sha256_hex(b"another model");
    let e = err_text(PromptBundle::from_bytes(&f.bytes, Some(&other)));
    assert!(
        e.contains(&format!(
            "prompt file was built for model sha256 {}, this model is {other}",
            f.sha
        )),
        "{e}"
    );
    assert!(err_text(PromptBundle::from_bytes(&f.bytes, Some("not-a-hash"))).contains("64 hex digits"));
}

#[test]
fn bundle_rejects_truncated_and_garbage_bytes() {
    let f = fixture();
    for cut in [0, 4, 8, 20, f.bytes.len() / 2, f.bytes.len() - 1] {
        let e = err_text(PromptBundle::from_bytes(&f.bytes[..cut], None));
        assert!(e.contains("not a valid safetensors prompt file"), "cut {cut}: {e}");
    }
    let e = err_text(PromptBundle::from_bytes(
        b"hello, this is not a safetensors file at all",
        None,
    ));
    assert!(e.contains("not a valid safetensors prompt file"), "{e}");
    // hostile header length
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(PromptBundle::from_bytes(&huge, None).is_err());
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;
type Edit = Box<dyn FnOnce(&mut Tensors, &mut serde_json::Value)>;

/// Rewrites a bundle: `edit` may change each tensor (name → (shape, f32 values)) and the index.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Tensors, &mut serde_json::Value)) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut index: serde_json::Value =
        serde_json::from_str(meta.metadata().as_ref().unwrap().get(BUNDLE_METADATA_KEY).unwrap()).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, v.shape().to_vec(), vals)
        })
        .collect();
    edit(&mut tensors, &mut index);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<_> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let metadata = HashMap::from([(BUNDLE_METADATA_KEY.to_string(), index.to_string())]);
    safetensors::serialize(views, Some(metadata)).unwrap()
}

#[test]
fn bundle_rewrite_is_faithful() {
    // the helper itself: an unedited rewrite loads and equals the original
    let f = fixture();
    let same = rewrite(&f.bytes, |_, _| {});
    assert_eq!(PromptBundle::from_bytes(&same, None).unwrap(), f.bundle);
}

#[test]
fn bundle_rejects_nan() {
    let f = fixture();
    let bad = rewrite(&f.bytes, |t, _| {
        let (_, _, v) = t.iter_mut().find(|(n, _, _)| n == "metal_nut/descriptions").unwrap();
        v[50] = f32::NAN;
    });
    let e = err_text(PromptBundle::from_bytes(&bad, None));
    assert!(e.contains("non-finite") && e.contains("metal_nut/descriptions"), "{e}");

    // the same bundle cannot be written either
    let mut b = f.bundle.clone();
    b.entries[0].text.normal[0] = f32::INFINITY;
    assert!(err_text(b.to_bytes()).contains("non-finite"));
}

#[test]
fn bundle_rejects_wrong_shapes_and_dtypes() {
    let f = fixture();
    // [1, 96]: same bytes, wrong shape
    let bad = rewrite(&f.bytes, |t, _| {
        let (_, s, _) = t.iter_mut().find(|(n, _, _)| n == "bottle/winclip").unwrap();
        *s = vec![1, 96];
    });
    let e = err_text(PromptBundle::from_bytes(&bad, None));
    assert!(e.contains("shape [1, 96]") && e.contains("bottle/winclip"), "{e}");

    // [2, 47]: embed_dim mismatch with the index
    let bad = rewrite(&f.bytes, |t, _| {
        let (_, s, v) = t.iter_mut().find(|(n, _, _)| n == "bottle/winclip").unwrap();
        *s = vec![2, 47];
        v.truncate(94);
    });
    let e = err_text(PromptBundle::from_bytes(&bad, None));
    assert!(e.contains("embedding dimension 47"), "{e}");

    // F16 instead of F32
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&f.bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = owned.iter_mut().find(|(n, ..)| n == "bottle/winclip").unwrap();
    t.1 = safetensors::Dtype::F16;
    t.2 = vec![2, 96];
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bad = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    assert!(err_text(PromptBundle::from_bytes(&bad, None)).contains("dtype F16"));
}

#[test]
fn bundle_rejects_bad_index() {
    let f = fixture();
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|t, _| t.retain(|(n, _, _)| n != "bottle/descriptions")),
            "is missing",
        ),
        (
            Box::new(|t, _| t.push(("extra/winclip".into(), vec![2, 48], vec![0.0; 96]))),
            "does not list",
        ),
        (Box::new(|_, i| i["embed_dim"] = 64.into()), "embed_dim 64"),
        (Box::new(|_, i| i["format"] = 2.into()), "format 2"),
        (
            Box::new(|_, i| i["entries"][0]["kind"] = "filo".into()),
            "unknown prompt ensemble",
        ),
        (
            Box::new(|_, i| i["entries"][0]["tensor"] = "metal_nut/winclip".into()),
            "names tensor",
        ),
        (Box::new(|_, i| i["entries"][0]["n_normal"] = 0.into()), "n_normal"),
        (Box::new(|_, i| i["model_sha256"] = "abc".into()), "64 hex digits"),
        (Box::new(|_, i| i["entries"] = serde_json::json!([])), "entries"),
        (
            Box::new(|_, i| *i = serde_json::json!({"format": 1})),
            "invalid prompt file index",
        ),
        (
            Box::new(|t, i| {
                let e = i["entries"][0].clone();
                i["entries"].as_array_mut().unwrap().push(e);
                let _ = t;
            }),
            "twice",
        ),
        (
            Box::new(|t, _| {
                let (_, _, v) = t.iter_mut().find(|(n, _, _)| n == "bottle/winclip").unwrap();
                v.iter_mut().for_each(|x| *x *= 3.0);
            }),
            "not a unit vector",
        ),
    ];
    for (edit, want) in cases {
        let bad = rewrite(&f.bytes, edit);
        let e = err_text(PromptBundle::from_bytes(&bad, None));
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }

    // a safetensors file without the index
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let views: Vec<_> = st.tensors();
    let plain = safetensors::serialize(views, None).unwrap();
    assert!(err_text(PromptBundle::from_bytes(&plain, None)).contains("not an anoscope prompt file"));
}

#[test]
fn build_bundle_rejects_bad_input() {
    let f = fixture();
    let cats = &f.cats[..1];
    let mut nop = |_: usize, _: usize| {};
    let e = err_text(build_bundle(
        &f.clip,
        &f.tok,
        "m",
        "xyz",
        cats,
        &EnsembleKind::ALL,
        &mut nop,
    ));
    assert!(e.contains("64 hex digits"), "{e}");
    let e = err_text(build_bundle(
        &f.clip,
        &f.tok,
        "m",
        &f.sha,
        &[],
        &EnsembleKind::ALL,
        &mut nop,
    ));
    assert!(e.contains("at least one category"), "{e}");
    let twice = [f.cats[0].clone(), f.cats[0].clone()];
    let e = err_text(build_bundle(
        &f.clip,
        &f.tok,
        "m",
        &f.sha,
        &twice,
        &EnsembleKind::ALL,
        &mut nop,
    ));
    assert!(e.contains("listed twice"), "{e}");
    let long_object = Category {
        name: "mine".into(),
        object: "w".repeat(MAX_PROMPT_CHARS + 1),
        defects: vec![],
    };
    let e = err_text(build_bundle(
        &f.clip,
        &f.tok,
        "m",
        &f.sha,
        &[long_object],
        &EnsembleKind::ALL,
        &mut nop,
    ));
    assert!(e.contains("too long"), "{e}");
    // the HF fixture works too (different embed_dim / layout)
    let hf = Clip::load_dir(&fixtures().join("hf_tiny")).unwrap();
    assert!(hf.text.is_some(), "hf_tiny has a text tower");
    {
        let b = build_bundle(&hf, &f.tok, "hf_tiny", &f.sha, cats, &[EnsembleKind::WinClip], &mut nop).unwrap();
        assert_eq!(b.embed_dim, hf.cfg.embed_dim);
        let back = PromptBundle::from_bytes(&b.to_bytes().unwrap(), Some(&f.sha)).unwrap();
        assert_eq!(back, b);
    }
}
