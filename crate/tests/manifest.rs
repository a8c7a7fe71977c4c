//! `weights/manifest.json` (read by `./build.sh weights` and the page): its schema for every
//! entry, the URLs at each entry's pinned revision, the names, and the entries of the
//! learned-prompt modes (CLIP ViT-L/14-336, AnomalyCLIP's and AdaptCLIP's official files). No
//! network: the published values are compared as written; `tests/setup/weights.test.mjs` runs
//! `./build.sh weights` on a manifest of this schema with a fake `curl`.
mod common;

use common::repo;
use serde_json::Value;
use std::collections::HashSet;

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("weights/manifest.json")).unwrap()).unwrap()
}

fn model<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no model {name} in weights/manifest.json"))
}

fn file<'a>(model: &'a Value, name: &str) -> &'a Value {
    model["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no file {name} in {}", model["name"]))
}

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The URL prefix of a file of `repo` at `revision`: Hugging Face `resolve/`, GitHub raw.
fn url_prefix(repo: &str, revision: &str) -> String {
    if let Some(gh) = repo.strip_prefix("https://github.com/") {
        format!("https://raw.githubusercontent.com/{gh}/{revision}/")
    } else {
        assert!(repo.starts_with("https://huggingface.co/"), "unknown host of {repo}");
        format!("{repo}/resolve/{revision}/")
    }
}

#[test]
fn every_entry_follows_the_schema() {
    let m = manifest();
    assert_eq!(m["schema"], 1);
    let models = m["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(
        names.iter().collect::<HashSet<_>>().len(),
        names.len(),
        "model names are unique: {names:?}"
    );
    assert!(names.contains(&m["default"].as_str().unwrap()));
    for x in models {
        let name = x["name"].as_str().unwrap();
        // A folder name under weights/checkpoints/ (build.sh also makes NAME-f16).
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
            "{name}"
        );
        assert!(x.get("optional").is_none_or(Value::is_boolean), "{name}: optional");
        for k in ["description", "repo", "revision", "license"] {
            assert!(x[k].as_str().is_some_and(|s| !s.is_empty()), "{name}: {k}");
        }
        let prefix = url_prefix(x["repo"].as_str().unwrap(), x["revision"].as_str().unwrap());
        let learned = match x.get("kind").and_then(Value::as_str) {
            None => false,
            Some("learned") => true,
            Some(k) => panic!("{name}: unknown kind {k}"),
        };
        let files = x["files"].as_array().unwrap();
        assert!(!files.is_empty(), "{name}");
        let mut seen = HashSet::new();
        for f in files {
            let fname = f["name"].as_str().unwrap();
            assert!(seen.insert(fname), "{name}: {fname} twice");
            assert!(!fname.contains('/') && !fname.starts_with('.'), "{name}: {fname}");
            let url = f["url"].as_str().unwrap();
            assert!(url.starts_with(&prefix), "{name}/{fname}: {url} is not at {prefix}");
            assert!(
                f["sha256"].is_null() || is_hex(&f["sha256"], 64),
                "{name}/{fname}: sha256"
            );
            assert!(
                f["size"].is_null() || f["size"].as_u64().is_some_and(|s| s > 0),
                "{name}/{fname}: size"
            );
            assert!(
                f.get("git_blob_sha1").is_none_or(|b| is_hex(b, 40)),
                "{name}/{fname}: git_blob_sha1"
            );
            assert!(
                f["provenance"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}/{fname}: provenance"
            );
            if learned {
                assert!(
                    fname.ends_with(".pth"),
                    "{name}/{fname}: learned files are the official .pth"
                );
                assert!(f["use"].as_str().is_some_and(|s| !s.is_empty()), "{name}/{fname}: use");
            }
        }
        if learned {
            assert!(
                matches!(x["mode"].as_str(), Some("anomalyclip" | "adaptclip")),
                "{name}: mode"
            );
            let b = model(&m, x["backbone"].as_str().unwrap());
            assert!(b.get("kind").is_none(), "{name}: the backbone is a CLIP checkpoint");
            // The page offers a manifest model only with a config (.json) and weights
            // (.safetensors): learned entries offer neither, so it never fetches them.
            assert!(files.iter().all(|f| {
                let n = f["name"].as_str().unwrap();
                !n.ends_with(".json") && !n.ends_with(".safetensors")
            }));
        } else {
            let (config, weights) = match x["layout"].as_str().unwrap() {
                "hf" => ("config.json", "model.safetensors"),
                "open_clip" => ("open_clip_config.json", "open_clip_model.safetensors"),
                other => panic!("{name}: layout {other}"),
            };
            for want in [config, weights] {
                assert_eq!(
                    file(x, want)["url"].as_str().unwrap(),
                    format!("{prefix}{want}"),
                    "{name}"
                );
            }
            assert!(x["arch"].as_str().is_some_and(|s| !s.is_empty()), "{name}: arch");
        }
        // The page's variants `./build.sh weights` writes next to a CLIP checkpoint
        // (NAME-f16, NAME-q8): f16, the reference, first; then q8 where listed.
        if let Some(c) = x.get("convert") {
            assert!(!learned, "{name}: learned files are not converted to page variants");
            let c: Vec<&str> = c.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert!(c == ["f16"] || c == ["f16", "q8"], "{name}: convert {c:?}");
        }
    }
}

/// The dtypes the page is offered for manifest entry `name` (`convert`, default f16 only).
fn page_variants<'a>(m: &'a Value, name: &str) -> Vec<&'a str> {
    model(m, name).get("convert").map_or(vec!["f16"], |c| {
        c.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
    })
}

#[test]
fn the_page_checkpoints_get_a_q8_variant() {
    let m = manifest();
    // The checkpoints `./build.sh weights` fetches without names (the page's) are written as f16
    // and q8: the page offers both. ViT-L/14-336 runs the learned modes, whose q8 accuracy is not
    // measured and which are meant for WebGPU (f32 there whatever the file): f16 only.
    for x in m["models"].as_array().unwrap() {
        let name = x["name"].as_str().unwrap();
        if x.get("kind").is_some() {
            assert!(x.get("convert").is_none(), "{name}");
        } else if x.get("optional").is_none() {
            assert_eq!(page_variants(&m, name), ["f16", "q8"], "{name}");
        }
    }
    assert_eq!(page_variants(&m, "clip-vit-base-patch16"), ["f16", "q8"]);
    assert_eq!(page_variants(&m, "vit-b-16-plus-240-laion400m_e31"), ["f16", "q8"]);
    assert_eq!(page_variants(&m, "clip-vit-large-patch14-336"), ["f16"]);
}

#[test]
fn the_learned_modes_have_their_official_files() {
    let m = manifest();
    // Fetched when named (`./build.sh weights anomalyclip`): a plain `./build.sh weights` still
    // fetches the page's checkpoints only, and the default is one of them.
    for name in ["clip-vit-large-patch14-336", "anomalyclip", "adaptclip"] {
        assert_eq!(model(&m, name)["optional"], true, "{name}");
    }
    assert!(model(&m, m["default"].as_str().unwrap()).get("optional").is_none());
    let clip = model(&m, "clip-vit-large-patch14-336");
    assert_eq!(clip["repo"], "https://huggingface.co/openai/clip-vit-large-patch14-336");
    assert_eq!(
        (clip["arch"].as_str(), clip["layout"].as_str()),
        (Some("vit-l-14-336"), Some("hf"))
    );

    let a = model(&m, "anomalyclip");
    assert_eq!(
        (a["kind"].as_str(), a["mode"].as_str()),
        (Some("learned"), Some("anomalyclip"))
    );
    assert_eq!(a["backbone"], "clip-vit-large-patch14-336");
    assert_eq!(a["repo"], "https://github.com/zqhang/AnomalyCLIP");
    assert_eq!(a["license"], "MIT");
    let rev = a["revision"].as_str().unwrap();
    assert!(is_hex(&a["revision"], 40), "pinned to a commit: {rev}");
    // The two published prompt learners of the repository's checkpoints/ folder (train.sh:
    // 9_12_4_multiscale on VisA, 9_12_4_multiscale_visa on MVTec AD), epoch 15 as test.sh.
    for (name, path, sha, blob) in [
        (
            "trained-on-visa.pth",
            "checkpoints/9_12_4_multiscale/epoch_15.pth",
            "94ce202da3e6486a864b904fdfed5057de75846c5834e446fd1d2fe7f97acb44",
            "c90f1d9d92d158b436a8fc193f984d4cec8b1fc8",
        ),
        (
            "trained-on-mvtec.pth",
            "checkpoints/9_12_4_multiscale_visa/epoch_15.pth",
            "415c5dcb52668b8c33fb9c1a351c686d632b919df5b384d63fa9ce7a2338ced4",
            "72adc786e031b49ea288ba5f815f0d38cf158708",
        ),
    ] {
        let f = file(a, name);
        assert_eq!(
            f["url"].as_str().unwrap(),
            format!("https://raw.githubusercontent.com/zqhang/AnomalyCLIP/{rev}/{path}")
        );
        assert_eq!(
            (f["sha256"].as_str(), f["git_blob_sha1"].as_str()),
            (Some(sha), Some(blob))
        );
        assert!(f["use"].as_str().unwrap().starts_with(path));
    }
    assert_eq!(a["files"].as_array().unwrap().len(), 2);

    let b = model(&m, "adaptclip");
    assert_eq!(
        (b["kind"].as_str(), b["mode"].as_str()),
        (Some("learned"), Some("adaptclip"))
    );
    assert_eq!(b["backbone"], "clip-vit-large-patch14-336");
    assert_eq!(b["repo"], "https://huggingface.co/csgaobb/AdaptCLIP");
    assert_eq!(
        b["gated"], true,
        "the repository asks for an accepted licence (HF_TOKEN)"
    );
    let rev = b["revision"].as_str().unwrap();
    assert!(is_hex(&b["revision"], 40), "pinned to a commit: {rev}");
    for (name, train) in [("trained-on-mvtec.pth", "mvtec"), ("trained-on-visa.pth", "visa")] {
        let path = format!("adaptclip_checkpoints/12_4_128_train_on_{train}_3adapters_batch8/epoch_15.pth");
        let f = file(b, name);
        assert_eq!(
            f["url"].as_str().unwrap(),
            format!("https://huggingface.co/csgaobb/AdaptCLIP/resolve/{rev}/{path}")
        );
        assert!(f["use"].as_str().unwrap().starts_with(&path));
    }
    let visa = file(b, "trained-on-visa.pth");
    assert_eq!(visa["size"], 7_520_074);
    assert_eq!(
        visa["sha256"],
        "777821da141eb57d159acef46868440faf773a2dd0acf5c276ec3f258c27edee"
    );
}
