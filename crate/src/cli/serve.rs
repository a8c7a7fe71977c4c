//! `anoscope serve`: the flags of the static file server (the server is [`anoscope::serve`]).
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// The flags of `anoscope serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "www/dist")]
    dir: PathBuf,
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// Runs `anoscope serve` (until the process is stopped).
pub fn serve(args: ServeArgs) -> Result<()> {
    anoscope::serve::serve(&args.dir, args.port)
}
