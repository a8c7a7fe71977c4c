//! PyTorch checkpoints as published (`torch.save` zip pickles, `.pth`) holding one or more state
//! dicts under top-level keys (AdaptCLIP's `{"textual_learner": …, "visual_learner": …,
//! "pq_learner": …}`): their floating-point tensors as f32, named `<key>.<tensor>`.
//!
//! The pickle is parsed with candle's reader ([`candle_core::pickle`]); the storages are read
//! from the zip here, so that tensors candle cannot or need not read (int32 token-id buffers,
//! BatchNorm's int64 `num_batches_tracked`) and non-tensor entries (`_metadata`) are skipped
//! quietly instead of being reported on stderr. AnomalyCLIP's reader
//! (`detect::anomalyclip::read_torch_checkpoint`, native builds only) takes its
//! `prompt_learner` dict from here.
use anyhow::{bail, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Largest tensor read from a checkpoint, in values (guards allocations against a corrupt
/// header; the largest learned tensor of the supported files has about 0.9 M).
pub const MAX_TENSOR_VALUES: usize = 16 << 20;

/// Whether `bytes` start like a `torch.save` file (a zip archive: `PK\x03\x04`).
pub fn is_torch_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The state dicts of a `torch.save` file whose top level is a dict: for each top-level key
/// whose value is a state dict, its floating-point tensors as f32, named `<key>.<name>`. The
/// other top-level keys and entries are ignored. Errors name the file (and the tensor).
pub fn read_state_dicts(path: &Path) -> Result<HashMap<String, Tensor>> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {origin}"))?;
    read_state_dicts_from(std::io::BufReader::new(file), &origin)
}

/// [`read_state_dicts`] of a `torch.save` file in memory (a file dropped on the page); `origin`
/// names it in errors.
pub fn read_state_dicts_bytes(bytes: &[u8], origin: &str) -> Result<HashMap<String, Tensor>> {
    read_state_dicts_from(std::io::Cursor::new(bytes), origin)
}

fn read_state_dicts_from<R: Read + std::io::Seek>(reader: R, origin: &str) -> Result<HashMap<String, Tensor>> {
    let not_torch =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{origin}: not a torch checkpoint (torch.save's zip format): {e}");
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| not_torch(&e))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(|n| n.into_owned())
        .ok_or_else(|| not_torch(&"no data.pkl in the archive"))?;
    let dir = pkl.strip_suffix(".pkl").expect("ends with .pkl").to_string();
    let obj = {
        let entry = zip.by_name(&pkl).map_err(|e| not_torch(&e))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::BufReader::new(entry))
            .map_err(|e| not_torch(&e))?;
        stack.finalize().map_err(|e| not_torch(&e))?
    };
    let Object::Dict(top) = obj else {
        bail!("{origin}: the checkpoint's top level is not a dict of state dicts");
    };
    let mut out = HashMap::new();
    for (key, state) in top {
        let Object::Unicode(key) = key else { continue };
        let entries = match state {
            Object::Dict(e) => e,
            Object::Build { callable, .. } => match *callable {
                Object::Dict(e) => e,
                _ => continue,
            },
            _ => continue,
        };
        for (name_obj, value) in entries {
            let Object::Unicode(name) = &name_obj else { continue };
            let full = format!("{key}.{name}");
            // Not a tensor (`_metadata`), or a storage type candle does not read (int32): skipped.
            let Ok(Some(info)) = value.into_tensor_info(name_obj.clone(), Path::new(&dir)) else {
                continue;
            };
            let dtype = match info.dtype {
                DType::F32 => safetensors::Dtype::F32,
                DType::F16 => safetensors::Dtype::F16,
                DType::BF16 => safetensors::Dtype::BF16,
                DType::F64 => safetensors::Dtype::F64,
                _ => continue, // integer buffers: nothing reads them
            };
            let dims = info.layout.dims().to_vec();
            let count = info.layout.shape().elem_count();
            if count > MAX_TENSOR_VALUES {
                bail!("{origin}: tensor `{full}` {dims:?} is too large");
            }
            if !info.layout.is_contiguous() {
                bail!("{origin}: tensor `{full}` is stored non-contiguously (a view); save a .contiguous() copy");
            }
            let size = info.dtype.size_in_bytes();
            let (start, len) = (info.layout.start_offset(), count * size);
            if start + len > info.storage_size.saturating_mul(size) {
                bail!("{origin}: tensor `{full}` runs past its storage");
            }
            let mut bytes = Vec::with_capacity(start + len);
            zip.by_name(&info.path)
                .map_err(|e| anyhow::anyhow!("{origin}: tensor `{full}`: {e}"))?
                .take((start + len) as u64)
                .read_to_end(&mut bytes)
                .with_context(|| format!("{origin}: cannot read tensor `{full}`"))?;
            if bytes.len() < start + len {
                bail!("{origin}: tensor `{full}` is truncated");
            }
            let mut values = Vec::with_capacity(count);
            crate::model::checkpoint::decode_floats(dtype, &bytes[start..start + len], &mut values)
                .with_context(|| format!("{origin}: tensor `{full}`"))?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!("{origin}: tensor `{full}` has a non-finite value at flat index {i}");
            }
            out.insert(full, Tensor::from_vec(values, dims, &Device::Cpu)?);
        }
    }
    Ok(out)
}
