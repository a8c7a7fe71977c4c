//! PyTorch checkpoints as published (`torch.save` zip pickles, `.pth`): the floating-point
//! tensors of one or more state dicts stored under top-level keys, read with candle's pickle
//! reader ([`candle_core::pickle`]) and named `<key>.<tensor>` (e.g. AdaptCLIP's
//! `{"textual_learner": …, "visual_learner": …}` gives `textual_learner.ctx_pos`, …).
//!
//! Integer tensors (BatchNorm's `num_batches_tracked`, token-id buffers) are left out: nothing
//! reads them. candle's reader does not know int32 storages and says `skipping: …` on stderr for
//! each such tensor; that line is harmless.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Whether `bytes` start like a `torch.save` file (a zip archive: `PK\x03\x04`).
pub fn is_torch_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Reads the floating-point tensors of the state dicts under `keys` in the `torch.save` file
/// `path`, as f32, named `<key>.<name>`. Errors name the file and the missing key; a tensor with
/// a non-finite value is an error.
pub fn read_state_dicts(path: &Path, keys: &[&str]) -> Result<HashMap<String, Tensor>> {
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let n = f
            .read(&mut head)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n < 4 || !is_torch_zip(&head) {
            bail!(
                "{}: not a PyTorch zip checkpoint (torch.save since PyTorch 1.6 writes a zip archive)",
                path.display()
            );
        }
    }
    let mut out = HashMap::new();
    for key in keys {
        let pth = candle_core::pickle::PthTensors::new(path, Some(key))
            .map_err(|e| anyhow::anyhow!("{}: cannot read `{key}`: {e}", path.display()))?;
        let mut names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
        names.sort();
        if names.is_empty() {
            bail!("{}: `{key}` holds no tensors", path.display());
        }
        for name in names {
            let t = pth
                .get(&name)
                .map_err(|e| anyhow::anyhow!("{}: tensor `{key}.{name}`: {e}", path.display()))?
                .with_context(|| format!("{}: tensor `{key}.{name}` vanished", path.display()))?;
            if !t.dtype().is_float() {
                continue;
            }
            let t = t.to_dtype(DType::F32)?;
            let bad = t.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite());
            if bad {
                bail!("{}: tensor `{key}.{name}` has a non-finite value", path.display());
            }
            out.insert(format!("{key}.{name}"), t);
        }
    }
    Ok(out)
}
