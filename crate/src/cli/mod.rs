//! The command line: the clap [`Cli`] / [`Cmd`] definitions, parsing and dispatch, and the
//! output helpers the subcommands share ([`emit`] for stdout lines, [`write_out`] for tensor
//! files, [`warn_at_exit`] for warnings said after the result, [`verbose`] for `-v`). Each
//! subcommand's flags and work live in its own file; the argument types several subcommands
//! share (encoder backend, storage dtype, detection mode) are in [`args`]. The detection,
//! evaluation and model logic itself is in the library (`anoscope::…`), not here.
mod args;
mod bench;
mod convert;
mod detect;
mod embed;
mod embed_text;
mod eval;
mod prompts;
mod random_weights;
mod serve;

use anoscope::embed::to_safetensors;
use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::{Parser, Subcommand};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

// The whole command line (its help text is the `about` below).
#[derive(Parser)]
#[command(name = "anoscope", version, about = "Zero-shot visual anomaly detection with CLIP")]
struct Cli {
    /// Say more on stderr: what the GPU probe found.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `-v` / `--verbose` was given (set once, before dispatch).
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Whether to say more on stderr (`-v`).
pub(crate) fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

// The subcommands; each variant's doc comment is its `--help` summary.
#[derive(Subcommand)]
enum Cmd {
    /// Encode one image: image embedding, projected patch tokens, hidden states, v-v tokens.
    Embed(embed::EmbedArgs),
    /// Encode prompts with the text tower.
    EmbedText(embed_text::EmbedTextArgs),
    /// Write a deterministic full-size random checkpoint (benchmarks, full-size parity).
    RandomWeights(random_weights::RandomWeightsArgs),
    /// Time the encoder or a detection mode after a warm-up; median per image.
    Bench(bench::BenchArgs),
    /// Convert a checkpoint's floating-point tensors to another storage type (f16 for the
    /// browser: half the download; computation stays f32).
    Convert(convert::ConvertArgs),
    /// Score images: anomaly score, map and overlay per image.
    Detect(detect::DetectArgs),
    /// Evaluate a mode on a dataset in the MVTec AD layout: metrics, scores, maps, overlays.
    Eval(eval::EvalArgs),
    /// Bundled prompt sets.
    Prompts {
        #[command(subcommand)]
        cmd: prompts::PromptsCmd,
    },
    /// Serve a static directory on 127.0.0.1 with the cross-origin-isolation headers.
    Serve(serve::ServeArgs),
}

/// Prints a line on stdout; a closed pipe (`anoscope … | head`) ends the program quietly
/// instead of panicking as `println!` would.
pub(crate) fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Warnings said once the subcommand has finished, after its error if it failed: an error stays
/// the first line on stderr.
static AT_EXIT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Says `warning: {msg}` on stderr when the subcommand has finished.
pub(crate) fn warn_at_exit(msg: &str) {
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(msg.to_string());
}

/// Writes named tensors as one safetensors file, creating its folder.
fn write_out(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let bytes = to_safetensors(named)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Parses the command line and runs the subcommand; returns the exit code (errors are printed
/// on stderr as `error: …`).
pub fn run() -> i32 {
    anoscope::model::ops::init_cpu_threads();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    VERBOSE.store(cli.verbose, Ordering::Relaxed);
    let code = match dispatch(cli.cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    for msg in AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        eprintln!("warning: {msg}");
    }
    code
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Embed(args) => embed::embed(args),
        Cmd::EmbedText(args) => embed_text::embed_text(args),
        Cmd::RandomWeights(args) => random_weights::random_weights(args),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Convert(args) => convert::convert(args),
        Cmd::Detect(args) => detect::detect(args),
        Cmd::Eval(args) => eval::eval(args),
        Cmd::Prompts { cmd } => prompts::prompts(cmd),
        Cmd::Serve(args) => serve::serve(args),
    }
}
