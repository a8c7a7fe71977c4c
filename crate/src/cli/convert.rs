//! `anoscope convert`: a checkpoint's floating-point tensors rewritten in another storage type
//! (the conversion itself is [`anoscope::model::weights::convert_safetensors`]).
use anoscope::model::{CheckpointFiles, Clip};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// The flags of `anoscope convert`.
#[derive(Args)]
pub struct ConvertArgs {
    #[arg(long)]
    model: PathBuf,
    /// f32, f16, or q8: the image tower's block linear layers as int8 blocks (run in int8 when
    /// loaded), everything else f16.
    #[arg(long, value_enum, default_value = "f16")]
    dtype: ConvertDtype,
    #[arg(long)]
    out: PathBuf,
}

/// What `anoscope convert --dtype` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ConvertDtype {
    F32,
    F16,
    Q8,
}

/// Runs `anoscope convert`: validates the whole checkpoint, then writes the config (copied)
/// and the converted weights to `--out`.
pub fn convert(args: ConvertArgs) -> Result<()> {
    let ConvertArgs { model, dtype, out } = args;
    let files = CheckpointFiles::detect(&model)?;
    // Validate the whole checkpoint before writing anything.
    Clip::load_dir(&model)?;
    let bytes = std::fs::read(&files.weights).with_context(|| format!("cannot read {}", files.weights.display()))?;
    let origin = files.weights.display().to_string();
    let converted = match dtype {
        ConvertDtype::F32 => anoscope::model::weights::convert_safetensors(&bytes, &origin, safetensors::Dtype::F32)?,
        ConvertDtype::F16 => anoscope::model::weights::convert_safetensors(&bytes, &origin, safetensors::Dtype::F16)?,
        ConvertDtype::Q8 => anoscope::model::weights::quantize_safetensors(&bytes, &origin)?,
    };
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
