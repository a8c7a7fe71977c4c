//! The streaming checkpoint loader (`model::stream`, the page's loader): any chunking gives the
//! same weights as reading the file whole, broken files give the same errors, and a vision-first
//! file has its image tower ready before the text tower's bytes.
mod common;

use anoscope::model::stream::{load_chunked, serialize_vision_first, StreamLoader, Towers};
use anoscope::model::weights::{Block, Norm, TextWeights, VisionWeights};
use anoscope::model::{Clip, ClipConfig};
use common::fixtures;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

struct Ckpt {
    config_file: &'static str,
    config: String,
    weights: Vec<u8>,
}

fn ckpt(dir: &str, config_file: &'static str, weights_file: &str) -> Ckpt {
    let d = fixtures().join(dir);
    Ckpt {
        config_file,
        config: std::fs::read_to_string(d.join(config_file)).unwrap(),
        weights: std::fs::read(d.join(weights_file)).unwrap(),
    }
}

fn hf() -> Ckpt {
    ckpt("hf_tiny", "config.json", "model.safetensors")
}

fn openclip() -> Ckpt {
    ckpt("openclip_tiny", "open_clip_config.json", "open_clip_model.safetensors")
}

impl Ckpt {
    fn cfg(&self) -> ClipConfig {
        ClipConfig::from_json(self.config_file, &self.config).unwrap()
    }
    fn whole(&self, bytes: &[u8]) -> anyhow::Result<Clip> {
        Clip::from_bytes(self.config_file, &self.config, bytes, "model.safetensors")
    }
    /// Streams `bytes` split at `cuts` (sorted offsets).
    fn streamed(&self, bytes: &[u8], cuts: &[usize], declared: bool) -> anyhow::Result<Clip> {
        let mut l = StreamLoader::new(
            self.cfg(),
            "model.safetensors",
            declared.then_some(bytes.len() as u64),
            Towers::ALL,
        )?;
        let mut at = 0;
        for &c in cuts.iter().chain([bytes.len()].iter()) {
            let c = c.min(bytes.len());
            if c > at {
                l.push(&bytes[at..c])?;
                at = c;
            }
        }
        l.finish()?;
        l.into_clip()
    }
}

fn vals(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn norm(out: &mut Vec<Vec<f32>>, n: &Norm) {
    out.push(vals(&n.weight));
    out.push(vals(&n.bias));
}

fn blocks(out: &mut Vec<Vec<f32>>, bs: &[Block]) {
    for b in bs {
        norm(out, &b.ln_1);
        norm(out, &b.ln_2);
        for l in [&b.qkv, &b.out, &b.fc1, &b.fc2] {
            out.push(vals(&l.w_t));
            out.push(l.bias.as_ref().map(vals).unwrap_or_default());
        }
    }
}

fn vision(w: &VisionWeights) -> Vec<Vec<f32>> {
    let mut out = vec![vals(&w.patch_w_t), vals(&w.class_embedding), vals(&w.pos_embedding)];
    norm(&mut out, &w.ln_pre);
    blocks(&mut out, &w.blocks);
    norm(&mut out, &w.ln_post);
    out.push(vals(&w.proj));
    out
}

fn text(w: &TextWeights) -> Vec<Vec<f32>> {
    let mut out = vec![vals(&w.token_embedding), vals(&w.pos_embedding)];
    blocks(&mut out, &w.blocks);
    norm(&mut out, &w.ln_final);
    out.push(vals(&w.proj));
    out
}

/// Every weight of a model, bit for bit.
fn weights(c: &Clip) -> (Vec<Vec<u32>>, Option<f32>) {
    let mut all = vision(&c.vision.w);
    if let Some(t) = &c.text {
        all.extend(text(&t.w));
    }
    (
        all.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect(),
        c.logit_scale,
    )
}

fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Start offsets of every tensor's data in the file, and the data section's start.
fn layout(bytes: &[u8]) -> (usize, Vec<usize>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut starts: Vec<usize> = st
        .tensors()
        .iter()
        .map(|(_, v)| v.data().as_ptr() as usize - bytes.as_ptr() as usize)
        .collect();
    starts.sort();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (8 + n, starts)
}

/// Split points at every awkward place: inside the 8-byte length, inside and at the end of the
/// header, at and next to tensor boundaries (inside a 2- or 4-byte element), inside a tensor.
fn awkward_cuts(bytes: &[u8]) -> Vec<usize> {
    let (data, starts) = layout(bytes);
    let mut cuts: Vec<usize> = (1..=9).collect();
    cuts.extend((16..data).step_by(data / 13 + 1));
    cuts.extend([data - 1, data, data + 1]);
    for (i, &s) in starts.iter().enumerate() {
        if i % 7 == 0 {
            cuts.extend([s.saturating_sub(1), s, s + 1, s + 3, s + 5]);
        }
    }
    cuts.push(bytes.len() / 2 + 1);
    cuts.sort();
    cuts.dedup();
    cuts.retain(|&c| c > 0 && c < bytes.len());
    cuts
}

/// Rewrites a checkpoint with the image tower's data first, or (`vision_first` false) with the
/// `safetensors` crate's own order (text tower first for both layouts).
fn reorder(bytes: &[u8], vision_first: bool) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let views: Vec<(String, TensorView<'_>)> = st.tensors();
    if vision_first {
        serialize_vision_first(&views).unwrap()
    } else {
        safetensors::serialize(views, None).unwrap()
    }
}

#[test]
fn every_split_gives_the_whole_file_weights() {
    for c in [hf(), openclip()] {
        let want = weights(&c.whole(&c.weights).unwrap());
        assert!(!want.0.is_empty());
        for cut in awkward_cuts(&c.weights) {
            let got = c.streamed(&c.weights, &[cut], cut % 2 == 0).unwrap();
            assert_eq!(weights(&got), want, "split at {cut}");
        }
        let cuts = awkward_cuts(&c.weights);
        assert_eq!(weights(&c.streamed(&c.weights, &cuts, true).unwrap()), want, "all cuts");
        for chunk in [3, 5, 7, 4096, 65536] {
            let got = load_chunked(&c.cfg(), &c.weights, "model.safetensors", chunk).unwrap();
            assert_eq!(weights(&got), want, "chunks of {chunk}");
        }
    }
}

#[test]
fn truncated_streams_give_todays_errors() {
    for c in [hf(), openclip()] {
        let n = c.weights.len();
        let (data, _) = layout(&c.weights);
        let mut cuts = vec![0, 1, 7, 8, 9, 100, data - 1, data, data + 1, n / 3, n / 2, n - 1];
        cuts.extend(awkward_cuts(&c.weights).into_iter().step_by(5));
        for cut in cuts {
            let b = &c.weights[..cut];
            let want = err(c.whole(b));
            assert!(want.contains("model.safetensors"), "{want}");
            for declared in [false, true] {
                let mid = [cut / 2];
                assert_eq!(
                    err(c.streamed(b, &mid, declared)),
                    want,
                    "cut at {cut}, declared {declared}"
                );
            }
        }
    }
}

#[test]
fn oversized_and_bad_headers_give_todays_errors() {
    let c = hf();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut longer = c.weights.clone();
    longer.extend_from_slice(&[0; 13]);
    cases.push(("bytes after the last tensor", longer));
    for (len, what) in [
        (u64::MAX, "header length u64::MAX"),
        (100_000_001, "header over 100 MB"),
        (c.weights.len() as u64, "header longer than the file"),
        (3, "header cut inside the JSON"),
    ] {
        let mut b = c.weights.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        cases.push((what, b));
    }
    let mut b = c.weights.clone();
    b[8] = b'[';
    cases.push(("header not an object", b));
    let mut b = c.weights.clone();
    b[20] = 0xff;
    cases.push(("header not UTF-8", b));
    let header = br#"{"vision_model.post_layernorm.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(&[0; 16]);
    cases.push(("tensors claiming 2^64 bytes", b));
    cases.push(("not a checkpoint", b"not a checkpoint at all".to_vec()));
    for (what, b) in cases {
        let want = err(c.whole(&b));
        assert!(want.contains("model.safetensors"), "{what}: {want}");
        for declared in [false, true] {
            for cuts in [vec![], vec![5], vec![8, 9, 4000]] {
                let got = err(c.streamed(&b, &cuts, declared));
                if declared && what == "bytes after the last tensor" {
                    // The announced size is known first: refused when the header is in.
                    assert_eq!(got, want, "{what}");
                }
                assert_eq!(got, want, "{what} (declared {declared}, cuts {cuts:?})");
            }
        }
    }
}

#[test]
fn tensor_errors_match_the_whole_file_reader() {
    let c = hf();
    let st = SafeTensors::deserialize(&c.weights).unwrap();
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let view = st.tensor(name).unwrap();
    let start = view.data().as_ptr() as usize - c.weights.as_ptr() as usize;
    let mut b = c.weights.clone();
    b[start + 10..start + 12].copy_from_slice(&0x7C00u16.to_le_bytes());
    let want = err(c.whole(&b));
    assert!(want.contains("non-finite"), "{want}");
    assert_eq!(err(c.streamed(&b, &[start + 11], true)), want);
    // A tensor of the wrong shape for the configuration.
    let other = c
        .config
        .replace("\"intermediate_size\": 256", "\"intermediate_size\": 255");
    if other != c.config {
        let d = Ckpt {
            config_file: c.config_file,
            config: other,
            weights: c.weights.clone(),
        };
        assert_eq!(err(d.streamed(&d.weights, &[], true)), err(d.whole(&d.weights)));
    }
}

#[test]
fn vision_first_and_text_first_files_load_identically() {
    for c in [hf(), openclip()] {
        let want = weights(&c.whole(&c.weights).unwrap());
        let vf = reorder(&c.weights, true);
        let tf = reorder(&c.weights, false);
        assert_eq!(vf.len() - layout(&vf).0, c.weights.len() - layout(&c.weights).0);
        assert_ne!(vf, tf);
        // Both are valid safetensors files for the crate and the whole-file loader.
        for b in [&vf, &tf] {
            assert_eq!(weights(&c.whole(b).unwrap()), want);
            assert_eq!(weights(&c.streamed(b, &awkward_cuts(b), true).unwrap()), want);
        }
        // Vision first: the image tower is ready before the text tower's bytes come.
        for (b, early) in [(&vf, true), (&tf, false)] {
            let mut l = StreamLoader::new(c.cfg(), "model.safetensors", Some(b.len() as u64), Towers::ALL).unwrap();
            let mut ready_at = None;
            for (i, chunk) in b.chunks(1024).enumerate() {
                l.push(chunk).unwrap();
                if ready_at.is_none() && l.vision_ready() {
                    ready_at = Some((i + 1) * 1024);
                    assert!(!l.text_ready() || !early);
                }
            }
            let at = ready_at.expect("vision ready by the end");
            if early {
                assert!(at < b.len() * 3 / 4, "vision ready at {at} of {}", b.len());
            } else {
                assert!(at >= b.len() - 1024, "text-first: ready at the end");
            }
            l.finish().unwrap();
            assert_eq!(weights(&l.into_clip().unwrap()), want);
        }
    }
}

#[test]
fn towers_load_separately_to_the_same_weights() {
    for c in [hf(), openclip()] {
        let whole = c.whole(&c.weights).unwrap();
        let vf = reorder(&c.weights, true);
        let mut v = StreamLoader::new(
            c.cfg(),
            "model.safetensors",
            Some(vf.len() as u64),
            Towers {
                vision: true,
                text: false,
            },
        )
        .unwrap();
        for chunk in vf.chunks(777) {
            v.push(chunk).unwrap();
        }
        v.finish().unwrap();
        assert_eq!(v.has_text(), Some(true));
        let mut clip = v.take_vision().unwrap();
        assert!(clip.text.is_none());
        assert_eq!(vision(&clip.vision.w), vision(&whole.vision.w));
        assert_eq!(clip.logit_scale, whole.logit_scale);
        let mut t = StreamLoader::new(
            c.cfg(),
            "model.safetensors",
            None,
            Towers {
                vision: false,
                text: true,
            },
        )
        .unwrap();
        for chunk in c.weights.chunks(4099) {
            t.push(chunk).unwrap();
        }
        t.finish().unwrap();
        clip.text = t.take_text().unwrap();
        assert_eq!(weights(&clip), weights(&whole));
    }
}

#[test]
fn vision_first_files_are_what_convert_and_random_weights_write() {
    let c = hf();
    let converted =
        anoscope::model::weights::convert_safetensors(&c.weights, "model.safetensors", safetensors::Dtype::F16)
            .unwrap();
    let (_, starts) = layout(&converted);
    let st = SafeTensors::deserialize(&converted).unwrap();
    let mut by_start: Vec<(usize, String)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (v.data().as_ptr() as usize - converted.as_ptr() as usize, n))
        .collect();
    by_start.sort();
    assert_eq!(by_start.len(), starts.len());
    let first_text = by_start
        .iter()
        .position(|(_, n)| n.starts_with("text_model.") || n.starts_with("text_projection"))
        .unwrap();
    assert!(by_start[first_text..]
        .iter()
        .all(|(_, n)| !n.starts_with("vision_model.") && !n.starts_with("visual_projection")));
    assert_eq!(
        weights(&c.whole(&converted).unwrap()),
        weights(&c.whole(&c.weights).unwrap())
    );
}
