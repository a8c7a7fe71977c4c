//! The checkpoint format as both readers and the writers see it: the size limits
//! ([`MAX_CHECKPOINT_BYTES`], [`MAX_SAFETENSORS_HEADER_BYTES`]), the [`TensorSource`] trait the
//! towers load from (implemented by the whole-file reader in [`super::weights`] and the streaming
//! reader in [`super::stream`]), which tensors are the image tower's ([`is_image_tower_tensor`]),
//! and the vision-first data order that `anoscope convert` and `random-weights` write
//! ([`serialize_vision_first`]) so that the streaming reader can build the image tower before the
//! text tower arrives.
//!
//! Kept apart so that the dependencies run one way: `weights` and `stream` use this module,
//! `stream` uses `weights`, and this module uses neither. Decoding tensor bytes to f32
//! ([`decode_floats`]) is here, for both readers; assembling the towers' weights is not.
use anyhow::{bail, Result};
use candle_core::Tensor;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Largest checkpoint accepted natively (bytes): 4 GiB. ViT-L/14-336 in f32 is 1.7 GB.
/// Checked from the file size before the file is read.
pub const MAX_CHECKPOINT_BYTES_NATIVE: u64 = 4 * 1024 * 1024 * 1024;

/// Largest checkpoint accepted by the WebAssembly build (bytes): 1 GiB. wasm32 has a 4 GiB
/// address space; the page streams the file ([`super::stream`]), so only its f32 tensors are
/// held (up to 2 GiB for a 1 GiB f16 file), which leaves room for activations. ViT-L/14 in f16
/// (0.86 GB with the text tower) fits; use f16 weights in the browser.
pub const MAX_CHECKPOINT_BYTES_WASM: u64 = 1024 * 1024 * 1024;

/// The checkpoint size limit of this build.
#[cfg(not(target_arch = "wasm32"))]
pub const MAX_CHECKPOINT_BYTES: u64 = MAX_CHECKPOINT_BYTES_NATIVE;
/// The checkpoint size limit of this build.
#[cfg(target_arch = "wasm32")]
pub const MAX_CHECKPOINT_BYTES: u64 = MAX_CHECKPOINT_BYTES_WASM;

/// Largest safetensors JSON header the `safetensors` crate parses (its own limit, 100 MB;
/// real CLIP headers are under 100 KB).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;

/// Appends the little-endian float `bytes` of a tensor stored as `dtype` (F32, F16, BF16 or F64)
/// to `out` as f32; the one decoder of tensor data for the whole-file and the streaming reader.
/// `bytes` holds whole elements only; another dtype is an error.
pub fn decode_floats(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Dtype::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32),
        ),
        other => bail!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
    }
    Ok(())
}

/// A named set of tensors that the towers read their weights from.
pub trait TensorSource {
    /// The tensor `name` as f32, checked to have `shape` and only finite values.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
}

/// Whether `name` belongs to the image tower (or is the shared `logit_scale`) in either layout:
/// Hugging Face `vision_model.*` / `visual_projection.*`, open_clip `visual.*`.
pub fn is_image_tower_tensor(name: &str) -> bool {
    name.starts_with("vision_model.")
        || name.starts_with("visual_projection.")
        || name.starts_with("visual.")
        || name == "logit_scale"
}

/// Serializes tensors as safetensors with the image tower's data first (after any 8-byte
/// tensors, which keeps every tensor aligned when the floats share one dtype), then the rest;
/// within each group larger dtypes first, then by name (the `safetensors` crate's own order).
/// Any reader accepts it: the format only asks for contiguous offsets, in any order.
pub fn serialize_vision_first(tensors: &[(String, TensorView<'_>)]) -> Result<Vec<u8>> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    let key = |i: &usize| {
        let (name, v) = &tensors[*i];
        let size = v.dtype().bitsize();
        (
            size < 64,
            !is_image_tower_tensor(name),
            std::cmp::Reverse(size),
            name.clone(),
        )
    };
    order.sort_by_key(key);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for &i in &order {
        let (name, v) = &tensors[i];
        let len = v.data().len();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": v.dtype(),
                "shape": v.shape(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut json = serde_json::to_string(&header)?.into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for &i in &order {
        out.extend_from_slice(tensors[i].1.data());
    }
    Ok(out)
}
