//! Bad checkpoints get clear errors that name the file and the problem (never a panic).
use anoscope::model::random::{random_tensors, write_safetensors, StoreDtype};
use anoscope::model::{Clip, ClipConfig};
use std::path::{Path, PathBuf};

fn fixture(layout: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(layout)
}

/// A copy of a fixture checkpoint in a temporary directory.
fn copy_fixture(layout: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(layout)).unwrap() {
        let e = entry.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn err(dir: &Path) -> String {
    match Clip::load_dir(dir) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
}

#[test]
fn missing_directory() {
    let msg = err(Path::new("/nonexistent/anoscope-model"));
    assert_has(&msg, &["/nonexistent/anoscope-model", "does not exist"]);
}

#[test]
fn unknown_layout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), b"xx").unwrap();
    assert_has(
        &err(dir.path()),
        &["unknown checkpoint layout", "config.json", "open_clip_config.json"],
    );
}

#[test]
fn config_without_weights() {
    let dir = copy_fixture("hf_tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_has(&err(dir.path()), &["model.safetensors", "config.json"]);
}

#[test]
fn empty_weights_file() {
    let dir = copy_fixture("openclip_tiny");
    std::fs::write(dir.path().join("open_clip_model.safetensors"), b"").unwrap();
    assert_has(&err(dir.path()), &["open_clip_model.safetensors", "empty"]);
}

#[test]
fn truncated_weights_file() {
    let dir = copy_fixture("hf_tiny");
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_has(&err(dir.path()), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn header_claiming_huge_tensors() {
    let dir = copy_fixture("hf_tiny");
    let header = br#"{"vision_model.embeddings.class_embedding":{"dtype":"F32","shape":[4000000000,4000000000],"data_offsets":[0,64000000000000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    assert_has(&err(dir.path()), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn bit_flipped_header() {
    let dir = copy_fixture("openclip_tiny");
    let p = dir.path().join("open_clip_model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[20] ^= 0x5a; // inside the JSON header
    std::fs::write(&p, &bytes).unwrap();
    assert_has(&err(dir.path()), &["open_clip_model.safetensors"]);
}

#[test]
fn config_not_json() {
    let dir = copy_fixture("hf_tiny");
    std::fs::write(dir.path().join("config.json"), "this is not json").unwrap();
    assert_has(&err(dir.path()), &["config.json", "not valid JSON"]);
}

#[test]
fn shapes_disagree_with_config() {
    let dir = copy_fixture("hf_tiny");
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["vision_config"]["hidden_size"] = serde_json::json!(128);
    std::fs::write(&p, cfg.to_string()).unwrap();
    assert_has(
        &err(dir.path()),
        &["model.safetensors", "has shape", "configuration implies"],
    );
}

#[test]
fn absurd_and_zero_sizes() {
    for (key, value, expect) in [
        ("num_hidden_layers", 0u64, "vision layers = 0"),
        ("hidden_size", 1u64 << 40, "vision width"),
        ("patch_size", 0, "patch size = 0"),
    ] {
        let json = serde_json::json!({"model_type": "clip", "vision_config": {key: value}}).to_string();
        let e = format!("{:#}", ClipConfig::from_json("config.json", &json).unwrap_err());
        assert_has(&e, &["config.json", expect]);
    }
    let json = serde_json::json!({"model_cfg": {"embed_dim": 0, "vision_cfg": {}, "text_cfg": {}}}).to_string();
    let e = format!(
        "{:#}",
        ClipConfig::from_json("open_clip_config.json", &json).unwrap_err()
    );
    assert_has(&e, &["open_clip_config.json", "embedding dimension = 0"]);
}

#[test]
fn nan_weights_are_detected() {
    let dir = copy_fixture("openclip_tiny");
    let json = std::fs::read_to_string(dir.path().join("open_clip_config.json")).unwrap();
    let cfg = ClipConfig::from_json("open_clip_config.json", &json).unwrap();
    let mut tensors = random_tensors(&cfg, 1, true);
    let t = tensors
        .iter_mut()
        .find(|t| t.0 == "visual.transformer.resblocks.1.mlp.c_fc.weight")
        .unwrap();
    t.2[7] = f32::NAN;
    write_safetensors(
        &dir.path().join("open_clip_model.safetensors"),
        &tensors,
        StoreDtype::F32,
    )
    .unwrap();
    assert_has(
        &err(dir.path()),
        &["visual.transformer.resblocks.1.mlp.c_fc.weight", "non-finite"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("openclip_tiny");
    let json = std::fs::read_to_string(dir.path().join("open_clip_config.json")).unwrap();
    let cfg = ClipConfig::from_json("open_clip_config.json", &json).unwrap();
    let tensors: Vec<_> = random_tensors(&cfg, 1, true)
        .into_iter()
        .filter(|t| t.0 != "visual.ln_post.bias")
        .collect();
    write_safetensors(
        &dir.path().join("open_clip_model.safetensors"),
        &tensors,
        StoreDtype::F32,
    )
    .unwrap();
    assert_has(&err(dir.path()), &["missing tensor `visual.ln_post.bias`"]);
}

#[test]
fn unsupported_dtype() {
    let dir = copy_fixture("hf_tiny");
    // The first tensor read, with the right shape but an integer dtype (the others kept, so that
    // the file is big enough for the configuration).
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let data = vec![0u8; 4 * 64 * 3 * 8 * 8];
    let name = "vision_model.embeddings.patch_embedding.weight";
    let mut views = vec![(
        name.to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![64, 3, 8, 8], &data).unwrap(),
    )];
    views.extend(st.tensors().into_iter().filter(|(n, _)| n != name));
    safetensors::serialize_to_file(views, None, &p).unwrap();
    assert_has(
        &err(dir.path()),
        &["model.safetensors", "patch_embedding.weight", "unsupported dtype"],
    );
}

#[test]
fn real_configs_load_from_their_fields_alone() {
    // openai/clip-vit-base-patch32 and large-patch14-336 as transformers writes them (the
    // fields that differ from the defaults; everything else must default correctly).
    let b32 = r#"{"model_type":"clip","projection_dim":512,"text_config":{"model_type":"clip_text_model"},"vision_config":{"model_type":"clip_vision_model"}}"#;
    let c = ClipConfig::from_json("config.json", b32).unwrap();
    assert_eq!(
        (
            c.vision.width,
            c.vision.layers,
            c.vision.heads,
            c.vision.patch_size,
            c.vision.image_size
        ),
        (768, 12, 12, 32, 224)
    );
    assert_eq!(
        (c.text.width, c.text.layers, c.text.heads, c.embed_dim),
        (512, 12, 8, 512)
    );
    let l336 = r#"{"model_type":"clip","projection_dim":768,
      "text_config":{"hidden_size":768,"intermediate_size":3072,"num_attention_heads":12,"projection_dim":768},
      "vision_config":{"hidden_size":1024,"image_size":336,"intermediate_size":4096,"num_attention_heads":16,"num_hidden_layers":24,"patch_size":14,"projection_dim":768},
      "text_config_dict":{"hidden_size":768},"vision_config_dict":{"hidden_size":1024}}"#;
    let c = ClipConfig::from_json("config.json", l336).unwrap();
    assert_eq!(
        (
            c.vision.width,
            c.vision.layers,
            c.vision.heads,
            c.vision.patch_size,
            c.vision.grid()
        ),
        (1024, 24, 16, 14, 24)
    );
    assert_eq!((c.text.width, c.text.heads, c.embed_dim), (768, 12, 768));
    // WinCLIP's ViT-B-16-plus-240 through open_clip's model config.
    let (file, json) = anoscope::model::random::arch_config("vit-b-16-plus-240").unwrap();
    let c = ClipConfig::from_json(file, &json).unwrap();
    assert_eq!(
        (
            c.vision.width,
            c.vision.heads,
            c.vision.mlp_width,
            c.vision.image_size,
            c.embed_dim
        ),
        (896, 14, 3584, 240, 640)
    );
    assert_eq!(c.vision.act, anoscope::model::Activation::Gelu);
}
