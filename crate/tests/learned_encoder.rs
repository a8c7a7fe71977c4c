//! The learned-prompt modes' encoder: OpenAI ViT-L/14@336 read from both layouts, bilinear
//! position-embedding resampling (the official AnomalyCLIP code's), and the DPAM pass's global
//! feature (class token `@ proj` without `ln_post`).
use anoscope::detect::learned::{dpam_on, use_official_pos_interp, DPAM_BLOCKS};
use anoscope::detect::passes::now;
use anoscope::model::ops::{bicubic_matrix, interpolate_pos_embedding};
use anoscope::model::random::{arch_config, random_source};
use anoscope::model::{Activation, Clip, ClipConfig, PosInterp};
use candle_core::{Device, Tensor};

/// open_clip's `ViT-L-14-336` with `quick_gelu` (the OpenAI weights' `open_clip_config.json`).
const OPEN_CLIP_L14_336: &str = r#"{
  "model_cfg": {
    "embed_dim": 768,
    "quick_gelu": true,
    "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}
  },
  "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
}"#;

#[test]
fn vit_l_14_336_reads_the_same_from_both_layouts() {
    let (f, j) = arch_config("vit-l-14-336").unwrap();
    let hf = ClipConfig::from_json(f, &j).unwrap();
    let oc = ClipConfig::from_json("open_clip_config.json", OPEN_CLIP_L14_336).unwrap();
    for cfg in [&hf, &oc] {
        let v = &cfg.vision;
        assert_eq!(
            (v.width, v.layers, v.heads, v.mlp_width, v.patch_size, v.image_size),
            (1024, 24, 16, 4096, 14, 336)
        );
        assert_eq!(v.act, Activation::QuickGelu);
        assert_eq!(v.grid(), 24);
        let t = &cfg.text;
        assert_eq!((t.width, t.layers, t.heads, t.mlp_width), (768, 12, 12, 3072));
        assert_eq!(t.act, Activation::QuickGelu);
        assert_eq!(cfg.embed_dim, 768);
    }
    assert_eq!(hf.vision, oc.vision);
    assert_eq!(hf.text, oc.text);
    // ~304 M image-tower parameters at 336 px.
    let p = hf.vision_params() as f64 / 1e6;
    assert!((p - 303.5).abs() < 1.0, "{p}");
    assert!(DPAM_BLOCKS < hf.vision.layers);
}

#[test]
fn bilinear_pos_weights_are_torchs() {
    // torch: F.interpolate(eye(2)[None, None]… ) 2 → 4, align_corners=False: source indices
    // -0.25 (clamped to 0), 0.25, 0.75, 1.25 (upper neighbour clamped).
    let m = bicubic_matrix(2, 4, PosInterp::Bilinear);
    assert_eq!(m, vec![1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
    // 24 → 37 (ViT-L/14@336 run at 518): every row sums to 1 and has at most two taps.
    let m = bicubic_matrix(24, 37, PosInterp::Bilinear);
    for row in m.chunks(24) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(row.iter().filter(|w| **w != 0.0).count() <= 2);
    }
    // Row 1: source (1 + 0.5)·24/37 − 0.5 = 0.472972…
    let s = 1.5 * 24.0 / 37.0 - 0.5;
    assert!((m[24] - (1.0 - s)).abs() < 1e-12 && (m[25] - s).abs() < 1e-12);
}

#[test]
fn bilinear_pos_embedding_keeps_the_class_row() {
    // [1 + 2·2, 3]: class row then a 2×2 grid, resampled to 3×3.
    let v: Vec<f32> = (0..15).map(|x| x as f32).collect();
    let pos = Tensor::from_vec(v, (5, 3), &Device::Cpu).unwrap();
    let out = interpolate_pos_embedding(&pos, 2, 3, 3, PosInterp::Bilinear).unwrap();
    let out = out.to_vec2::<f32>().unwrap();
    assert_eq!(out.len(), 10);
    assert_eq!(out[0], vec![0.0, 1.0, 2.0]);
    // Corners copy the grid's corners; the centre is the mean of the four.
    assert_eq!(out[1], vec![3.0, 4.0, 5.0]);
    assert_eq!(out[9], vec![12.0, 13.0, 14.0]);
    assert_eq!(out[5], vec![7.5, 8.5, 9.5]);
}

fn tiny_24_block_clip() -> Clip {
    // A 24-block tower so the DPAM range applies; tiny width.
    let json = r#"{
      "model_cfg": {"embed_dim": 8, "quick_gelu": true,
        "vision_cfg": {"image_size": 28, "layers": 24, "width": 16, "head_width": 8, "patch_size": 7},
        "text_cfg": {"context_length": 77, "vocab_size": 64, "width": 16, "heads": 2, "layers": 2}}
    }"#;
    let cfg = ClipConfig::from_json("open_clip_config.json", json).unwrap();
    Clip::from_source(&cfg, &random_source(&cfg, 5, false).unwrap()).unwrap()
}

#[test]
fn dpam_global_is_the_class_token_without_ln_post() {
    let mut clip = tiny_24_block_clip();
    use_official_pos_interp(&mut clip);
    assert_eq!(clip.vision.cfg.pos_interp, PosInterp::Bilinear);
    let px = Tensor::randn(0f32, 1.0, (2, 3, 35, 35), &Device::Cpu).unwrap();
    let f = now(dpam_on(&clip, &clip.vision, &px)).unwrap();
    assert_eq!(f.grid, (5, 5));
    assert_eq!((f.global.len(), f.global[0].len()), (2, 8));
    assert_eq!((f.patches.len(), f.patches[0].len(), f.patches[0][0].len()), (2, 25, 8));
    // The global feature: class row of the last hidden state times proj (no ln_post).
    let cls = f.output.last_hidden_state.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let want = cls.matmul(&clip.vision.w.proj).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(f.global, want);
    // … which is not the usual ln_post'ed embedding.
    let usual = f.output.image_embeds.to_vec2::<f32>().unwrap();
    let d: f32 = usual[0].iter().zip(&f.global[0]).map(|(a, b)| (a - b).abs()).sum();
    assert!(d > 1e-3, "{d}");
    // A tower shorter than the DPAM range is refused with a clear error.
    let json = r#"{"model_cfg": {"embed_dim": 8, "vision_cfg": {"image_size": 28, "layers": 2, "width": 16,
        "head_width": 8, "patch_size": 7}, "text_cfg": {"vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}}"#;
    let cfg = ClipConfig::from_json("open_clip_config.json", json).unwrap();
    let short = Clip::from_source(&cfg, &random_source(&cfg, 1, false).unwrap()).unwrap();
    let e = now(dpam_on(&short, &short.vision, &px)).unwrap_err().to_string();
    assert!(e.contains("at least 19 blocks"), "{e}");
}
