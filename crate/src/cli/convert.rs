//! `anoscope convert`: a checkpoint's floating-point tensors rewritten in another storage type
//! (the conversion itself is [`anoscope::model::weights::convert_safetensors`]; q8:
//! [`anoscope::model::weights::quantize_safetensors`]), or a learned
//! prompt file (AnomalyCLIP's official `.pth`) rewritten as safetensors
//! ([`anoscope::detect::anomalyclip::LearnedPrompts::to_safetensors`]).
use anoscope::detect::adaptclip;
use anoscope::detect::anomalyclip::LearnedPrompts;
use anoscope::detect::learned::use_official_pos_interp;
use anoscope::model::{CheckpointFiles, Clip};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// The flags of `anoscope convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Checkpoint directory to convert (with --learned: the CLIP model whose text tower computes
    /// the text features stored in the output; optional).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A learned-prompt file to convert (AnomalyCLIP's official `.pth`): written to --out as one
    /// safetensors file, without the unused `compound_prompt_projections`; with --model, the two
    /// text features are stored too (`text_features`), so no text tower is needed later.
    #[arg(long)]
    learned: Option<PathBuf>,
    /// f32, f16, or q8: the image tower's block linear layers as int8 blocks (run in int8 when
    /// loaded), everything else f16 (q8: checkpoints only, not learned files).
    #[arg(long, value_enum, default_value = "f16")]
    dtype: ConvertDtype,
    /// Output directory (a checkpoint) or, with --learned, output file.
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

/// Runs `anoscope convert`: validates the whole input, then writes the converted copy to `--out`.
pub fn convert(args: ConvertArgs) -> Result<()> {
    let ConvertArgs {
        model,
        learned,
        dtype,
        out,
    } = args;
    let st_dtype = match dtype {
        ConvertDtype::F32 => safetensors::Dtype::F32,
        ConvertDtype::F16 | ConvertDtype::Q8 => safetensors::Dtype::F16,
    };
    if let Some(file) = learned {
        if matches!(dtype, ConvertDtype::Q8) {
            bail!("--dtype q8 applies to checkpoints (--model DIR without --learned); learned files are f32 or f16");
        }
        if adaptclip::is_adaptclip_file(&file)? {
            // AdaptCLIP: the class pairs are stored too, so the model is needed.
            let dir = model.context("converting an AdaptCLIP file needs --model DIR (its class pairs are stored)")?;
            let mut clip = Clip::load_dir(&dir)?;
            use_official_pos_interp(&mut clip);
            if out.is_dir() {
                bail!(
                    "--out {} is a directory; with --learned it names the output file",
                    out.display()
                );
            }
            let bytes = adaptclip::convert(&clip, &adaptclip::Learned::read_tensors(&file)?, st_dtype)?;
            std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "wrote {} ({} bytes, AdaptCLIP with its class pairs)",
                out.display(),
                bytes.len()
            );
            return Ok(());
        }
        let prompts = LearnedPrompts::read_file(&file)?;
        let text = match &model {
            Some(dir) => {
                let mut clip = Clip::load_dir(dir)?;
                use_official_pos_interp(&mut clip);
                Some(prompts.compute_text_pair(&clip)?)
            }
            None => None,
        };
        if out.is_dir() {
            bail!(
                "--out {} is a directory; with --learned it names the output file",
                out.display()
            );
        }
        let bytes = prompts.to_safetensors(st_dtype, text.as_ref())?;
        std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!(
            "wrote {} ({} bytes{})",
            out.display(),
            bytes.len(),
            if text.is_some() { ", with text features" } else { "" }
        );
        return Ok(());
    }
    let model = model.context("give --model DIR (a checkpoint) or --learned FILE to convert")?;
    let files = CheckpointFiles::detect(&model)?;
    // Validate the whole checkpoint before writing anything.
    Clip::load_dir(&model)?;
    let bytes = std::fs::read(&files.weights).with_context(|| format!("cannot read {}", files.weights.display()))?;
    let origin = files.weights.display().to_string();
    let converted = match dtype {
        ConvertDtype::Q8 => anoscope::model::weights::quantize_safetensors(&bytes, &origin)?,
        ConvertDtype::F32 | ConvertDtype::F16 => {
            anoscope::model::weights::convert_safetensors(&bytes, &origin, st_dtype)?
        }
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
