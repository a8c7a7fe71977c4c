//! `anoscope convert`: a checkpoint's floating-point tensors rewritten in another storage type
//! (the conversion itself is [`anoscope::model::weights::convert_safetensors`]).
use super::args::Dtype;
use anoscope::model::{CheckpointFiles, Clip};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// The flags of `anoscope convert`.
#[derive(Args)]
pub struct ConvertArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "f16")]
    dtype: Dtype,
    #[arg(long)]
    out: PathBuf,
}

/// Runs `anoscope convert`: validates the whole checkpoint, then writes the config (copied)
/// and the converted weights to `--out`.
pub fn convert(args: ConvertArgs) -> Result<()> {
    let ConvertArgs { model, dtype, out } = args;
    let files = CheckpointFiles::detect(&model)?;
    // Validate the whole checkpoint before writing anything.
    Clip::load_dir(&model)?;
    let bytes = std::fs::read(&files.weights).with_context(|| format!("cannot read {}", files.weights.display()))?;
    let st_dtype = match dtype {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::F16 => safetensors::Dtype::F16,
    };
    let converted =
        anoscope::model::weights::convert_safetensors(&bytes, &files.weights.display().to_string(), st_dtype)?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let cfg_name = files.layout.config_file();
    std::fs::copy(&files.config, out.join(cfg_name))
        .with_context(|| format!("cannot write {}", out.join(cfg_name).display()))?;
    let dst = out.join(files.layout.weights_file());
    std::fs::write(&dst, &converted).with_context(|| format!("cannot write {}", dst.display()))?;
    eprintln!(
        "wrote {} ({} bytes, was {})",
        dst.display(),
        converted.len(),
        bytes.len()
    );
    Ok(())
}
