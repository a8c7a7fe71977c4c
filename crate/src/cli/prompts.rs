//! `anoscope prompts …`: the bundled prompt sets. `prompts build` encodes every category's
//! ensembles once into one file that `detect --prompts` reads instead of running the text tower
//! (the prompt sets and the bundle format are in [`anoscope::detect::prompts`]).
use anoscope::detect::prompts::{self, EnsembleKind};
use anoscope::model::{CheckpointFiles, Clip};
use anoscope::tokenizer::ClipTokenizer;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// The subcommands of `anoscope prompts`.
#[derive(Subcommand)]
pub enum PromptsCmd {
    /// Encode every category's ensembles once into one file (safetensors + JSON index).
    Build(PromptsBuildArgs),
}

/// Runs an `anoscope prompts` subcommand.
pub fn prompts(cmd: PromptsCmd) -> Result<()> {
    match cmd {
        PromptsCmd::Build(args) => prompts_build(args),
    }
}

/// The flags of `anoscope prompts build`.
#[derive(Args)]
pub struct PromptsBuildArgs {
    #[arg(long)]
    model: PathBuf,
    /// Categories to include (default: all bundled ones).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

/// Runs `anoscope prompts build`: every category's ensembles encoded once, written as one
/// [`prompts::PromptBundle`] file tied to the checkpoint's SHA-256.
pub fn prompts_build(args: PromptsBuildArgs) -> Result<()> {
    let files = CheckpointFiles::detect(&args.model)?;
    let clip = Clip::load_dir(&args.model)?;
    let weights = std::fs::read(&files.weights).with_context(|| format!("cannot read {}", files.weights.display()))?;
    let sha = prompts::sha256_hex(&weights);
    drop(weights);
    let all = prompts::categories()?;
    let cats: Vec<_> = if args.categories.is_empty() {
        all
    } else {
        args.categories
            .iter()
            .map(|c| prompts::category(c)?.with_context(|| format!("unknown category `{c}`")))
            .collect::<Result<_>>()?
    };
    let tok = ClipTokenizer::new()?;
    let model_id = args
        .model
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} ensembles, {elapsed} elapsed, ETA {eta}")
            .expect("valid template"),
    );
    let bundle = prompts::build_bundle(
        &clip,
        &tok,
        &model_id,
        &sha,
        &cats,
        &[EnsembleKind::WinClip, EnsembleKind::Descriptions],
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish();
    let bytes = bundle.to_bytes()?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&args.out, &bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} ensembles, {} bytes, model sha256 {sha})",
        args.out.display(),
        bundle.entries.len(),
        bytes.len()
    );
    Ok(())
}
