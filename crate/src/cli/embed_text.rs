//! `anoscope embed-text`: prompts through the text tower, written as safetensors (the tensors
//! come from [`anoscope::embed::embed_text`]).
use anoscope::model::Clip;
use anoscope::tokenizer::ClipTokenizer;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// The flags of `anoscope embed-text`.
#[derive(Args)]
pub struct EmbedTextArgs {
    #[arg(long)]
    model: PathBuf,
    /// A prompt (repeat for several).
    #[arg(long, required = true)]
    text: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

/// Runs `anoscope embed-text`.
pub fn embed_text(args: EmbedTextArgs) -> Result<()> {
    let EmbedTextArgs { model, text, out } = args;
    let clip = Clip::load_dir(&model)?;
    let tok = ClipTokenizer::new()?;
    let texts: Vec<&str> = text.iter().map(String::as_str).collect();
    let named = anoscope::embed::embed_text(&clip, &tok, &texts)?;
    super::write_out(&out, &named)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
