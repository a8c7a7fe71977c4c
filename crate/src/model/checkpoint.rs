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
        // The int8 values of a q8 checkpoint, as exact integers; the reader then scales them
        // ([`dequantize_q8`]). Only meaningful with their block scales, which the readers check.
        Dtype::I8 => out.extend(bytes.iter().map(|&b| b as i8 as f32)),
        other => bail!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
    }
    Ok(())
}

/// Name suffix of the block scales of an int8 tensor in a q8 checkpoint (`anoscope convert
/// --dtype q8`): tensor `W` (`I8`, `[rows, cols]`) has its scales in `W` + this suffix (`F16`,
/// `[rows, cols / Q8_BLOCK]`), one per run of [`Q8_BLOCK`] values along a row, and
/// `W[r, c] = int8[r, c] · scale[r, c / Q8_BLOCK]` (candle's Q8_0 blocks, stored apart).
pub const Q8_SCALES_SUFFIX: &str = ".q8_scales";

/// Values per int8 block along a row (the `cols` of an int8 tensor are a multiple of it).
pub const Q8_BLOCK: usize = 32;

/// The shape the scales of an int8 tensor of `shape` must have, or an error naming why it cannot
/// be an int8 tensor (not 2-D, or rows not a multiple of [`Q8_BLOCK`]).
pub fn q8_scales_shape(shape: &[usize]) -> Result<[usize; 2]> {
    match *shape {
        [rows, cols] if cols % Q8_BLOCK == 0 && cols > 0 => Ok([rows, cols / Q8_BLOCK]),
        _ => bail!("an int8 tensor must be 2-D with a multiple of {Q8_BLOCK} columns, got shape {shape:?}"),
    }
}

/// Scales the int8 `values` (exact integers as f32, row-major, `shape` as checked by
/// [`q8_scales_shape`]) by their block `scales` in place.
pub fn dequantize_q8(values: &mut [f32], scales: &[f32]) {
    for (block, &s) in values.chunks_exact_mut(Q8_BLOCK).zip(scales) {
        block.iter_mut().for_each(|v| *v *= s);
    }
}

/// A named set of tensors that the towers read their weights from.
pub trait TensorSource {
    /// The tensor `name` as f32, checked to have `shape` and only finite values.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Whether `name` is stored as int8 with block scales (a q8 checkpoint's linear weight).
    fn is_q8(&self, name: &str) -> bool {
        self.contains(&format!("{name}{Q8_SCALES_SUFFIX}"))
    }
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
