//! `anoscope random-weights`: a deterministic full-size random checkpoint on disk (the weights
//! and their layout come from [`anoscope::model::random`]).
use super::args::Dtype;
use anoscope::model::random::{write_random_checkpoint, StoreDtype, ARCHS};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// The flags of `anoscope random-weights`.
#[derive(Args)]
pub struct RandomWeightsArgs {
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ARCHS))]
    arch: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    #[arg(long)]
    out: PathBuf,
}

/// Runs `anoscope random-weights`.
pub fn random_weights(args: RandomWeightsArgs) -> Result<()> {
    let RandomWeightsArgs { arch, seed, dtype, out } = args;
    let dtype = match dtype {
        Dtype::F32 => StoreDtype::F32,
        Dtype::F16 => StoreDtype::F16,
    };
    let cfg = write_random_checkpoint(&arch, seed, &out, dtype)?;
    eprintln!(
        "wrote a random {arch} checkpoint (seed {seed}, {} layout) to {}",
        match cfg.layout {
            anoscope::model::Layout::HuggingFace => "Hugging Face",
            anoscope::model::Layout::OpenClip => "open_clip",
        },
        out.display()
    );
    Ok(())
}
