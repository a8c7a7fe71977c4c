//! `anoscope eval`: a detection mode over a dataset (MVTec AD, VisA, MVTec LOCO AD or MVTec 3D-AD
//! layout), with metrics: the flags and the progress bar. The logic is in [`anoscope::eval`];
//! `--mode` is shared with `detect` in [`super::args`].
use super::args::ModeArg;
use anoscope::eval::{self, EvalOptions, Layout, Progress};
use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// The flags of `anoscope eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory (Hugging Face or open_clip layout).
    #[arg(long)]
    model: PathBuf,
    /// Dataset root in the MVTec AD, VisA, MVTec LOCO AD or MVTec 3D-AD layout (detected; see
    /// --layout), or one category folder (with test/ directly; not for VisA).
    #[arg(long)]
    dataset: PathBuf,
    /// The dataset's layout (default: detected): mvtec (ROOT/<category>/test/<defect>/*.png,
    /// ground_truth/<defect>/<stem>_mask.png), visa (ROOT/split_csv/1cls.csv,
    /// <category>/Data/Images, Data/Masks), loco (ground_truth/<defect>/<stem>/*.png, merged),
    /// mvtec3d (test/<defect>/rgb/*.png, test/<defect>/gt/*.png).
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
    /// Categories to evaluate (default: all under the root).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    #[arg(long, value_enum, default_value = "fast")]
    mode: ModeArg,
    /// Normal references per category, drawn from train/good: --mode fewshot (default 1), or
    /// --mode adaptclip few-shot (its prompt-query adapter; without --shots it is zero-shot).
    #[arg(long)]
    shots: Option<usize>,
    /// Seed of the reference draw (ChaCha8; recorded in run.json).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input side in pixels (default: the checkpoint's; 518 for anomalyclip); images are resized to a square and pixel
    /// metrics are computed at this resolution.
    #[arg(long)]
    size: Option<u32>,
    /// Prompt category for every dataset category (default: matched from the folder name).
    #[arg(long)]
    prompt_category: Option<String>,
    /// Surgery layers for --mode fast (default: half the tower).
    #[arg(long)]
    surgery_layers: Option<usize>,
    /// The learned file of --mode anomalyclip or adaptclip (official `.pth` or converted
    /// safetensors).
    #[arg(long)]
    learned: Option<PathBuf>,
    /// Overlays per category of the highest-scored good and lowest-scored anomalous images.
    #[arg(long, default_value_t = 3)]
    worst: usize,
    /// Output folder (metrics.json, metrics.csv, scores.csv, maps/, overlays/, run.json, ...).
    #[arg(long)]
    out: PathBuf,
    /// Continue an interrupted run in --out (same settings): finished images are skipped.
    #[arg(long)]
    resume: bool,
}

/// `--layout`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LayoutArg {
    Mvtec,
    Visa,
    Loco,
    Mvtec3d,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::Mvtec => Layout::Mvtec,
            LayoutArg::Visa => Layout::Visa,
            LayoutArg::Loco => Layout::Loco,
            LayoutArg::Mvtec3d => Layout::Mvtec3d,
        }
    }
}

/// The progress bar (stderr; hidden when stderr is not a terminal) and notes.
struct Bar {
    bar: ProgressBar,
}

impl Progress for Bar {
    fn begin(&mut self, to_score: usize, resumed: usize) {
        self.bar.set_length(to_score as u64);
        self.bar.reset_eta();
        if resumed > 0 {
            self.note(&format!("resuming: {resumed} images already scored"));
        }
    }

    fn category(&mut self, name: &str) {
        self.bar.set_message(name.to_string());
    }

    fn advance(&mut self, n: usize) {
        self.bar.inc(n as u64);
    }

    fn note(&mut self, msg: &str) {
        // Printed above the bar (and also when the bar is hidden).
        self.bar.suspend(|| eprintln!("{msg}"));
    }

    fn done_scoring(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `anoscope eval`: the evaluation, then the metrics table and a summary line on stdout.
pub fn eval(args: EvalArgs) -> Result<()> {
    let opts = EvalOptions {
        model: args.model,
        dataset: args.dataset,
        layout: args.layout.map(Layout::from),
        categories: args.categories,
        mode: args.mode.into(),
        shots: args.shots,
        seed: args.seed,
        size: args.size,
        prompt_category: args.prompt_category,
        surgery_layers: args.surgery_layers,
        learned: args.learned,
        out: args.out,
        resume: args.resume,
        worst: args.worst,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  elapsed {elapsed}  ETA {eta}  {msg}")
            .expect("valid template"),
    );
    let mut progress = Bar { bar };
    let result = eval::run(&opts, &mut progress);
    progress.bar.finish_and_clear();
    let summary = result?;
    super::emit(summary.markdown.trim_end_matches('\n'));
    super::emit(&format!(
        "{} images: {} new, {} resumed; {:.1} s; results in {}",
        summary.new_images + summary.resumed_images,
        summary.new_images,
        summary.resumed_images,
        summary.seconds,
        opts.out.display()
    ));
    Ok(())
}
