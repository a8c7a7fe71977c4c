//! The argument types several subcommands share: the image-tower encoder choice
//! ([`BackendOpts`], installed by [`use_backend`]), the storage dtype of written checkpoints
//! ([`Dtype`]) and the detection mode ([`ModeArg`]). Flags used by one subcommand only stay in
//! that subcommand's file.
use anoscope::detect::Mode;
use anoscope::model::Clip;
#[cfg(not(feature = "gpu"))]
use anyhow::bail;
use anyhow::Result;
use clap::{Args, ValueEnum};

/// Which encoder runs the image tower.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BackendArg {
    /// The GPU (wgpu: Vulkan, Metal, DX12) when an adapter is available, else the CPU.
    Auto,
    /// The GPU; an error when there is no adapter.
    Gpu,
    /// The CPU.
    Cpu,
}

/// How the GPU stores the matrix weights (arithmetic is f32 either way).
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GpuWeightsArg {
    /// f16 when the checkpoint's matrices are f16 values and the adapter has shader-f16.
    Auto,
    F32,
    /// f16 (rounds an f32 checkpoint; needs shader-f16).
    F16,
}

/// The encoder options shared by embed, detect and bench.
#[derive(Args, Clone, Copy)]
pub(crate) struct BackendOpts {
    /// Encoder for the image tower (with bench and the GPU, the CPU is timed too, for the
    /// ratio).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// How the GPU stores the matrix weights.
    #[arg(long, value_enum, default_value = "auto")]
    gpu_weights: GpuWeightsArg,
}

/// Installs the chosen encoder on `clip` and says on stderr which one runs (with `-v`, first what
/// the GPU probe found). Returns whether the GPU runs. A GPU that fails later falls back to the
/// CPU with a message.
pub(crate) fn use_backend(clip: &mut Clip, opts: BackendOpts) -> Result<bool> {
    let BackendOpts { backend, gpu_weights } = opts;
    #[cfg(feature = "gpu")]
    {
        use anoscope::gpu::{Backend, WeightStorage};
        let b = match backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Gpu => Backend::Gpu,
            BackendArg::Cpu => Backend::Cpu,
        };
        let w = match gpu_weights {
            GpuWeightsArg::Auto => WeightStorage::Auto,
            GpuWeightsArg::F32 => WeightStorage::F32,
            GpuWeightsArg::F16 => WeightStorage::F16,
        };
        let attached = anoscope::gpu::attach(clip, b, w)?;
        if super::verbose() {
            eprintln!("{}", attached.probe);
        }
        eprintln!("{}", attached.encoder);
        Ok(clip.vision.accel.is_some())
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = (clip, gpu_weights);
        if let BackendArg::Gpu = backend {
            bail!("--backend gpu: this build has no GPU support (built without the `gpu` feature)");
        }
        if super::verbose() {
            eprintln!("gpu probe: not run (built without the `gpu` feature)");
        }
        eprintln!("encoder: CPU (built without the `gpu` feature)");
        Ok(false)
    }
}

/// Storage type of the floating-point tensors that `random-weights` and `convert` write.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Dtype {
    F32,
    F16,
}

/// `--mode` on the command line (the same modes for `detect` and `eval`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// One pass with value-to-value (CLIP Surgery) tokens (default; webcam, weak machines).
    Fast,
    /// WinCLIP: multi-scale windows, harmonic aggregation (accurate, heavy).
    Winclip,
    /// WinCLIP+: WinCLIP plus normal reference images.
    Fewshot,
    /// MuSc: the images score each other (at least 2, no text).
    Batch,
    /// AnomalyCLIP: learned object-agnostic prompts (--learned FILE), CLIP ViT-L/14@336 at 518 px.
    Anomalyclip,
    /// AdaptCLIP: learned adapters (--learned FILE), CLIP ViT-L/14@336 at 518 px; few-shot with
    /// --refs / --ref-pixels.
    Adaptclip,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Fast => Mode::Fast,
            ModeArg::Winclip => Mode::Winclip,
            ModeArg::Fewshot => Mode::Fewshot,
            ModeArg::Batch => Mode::Batch,
            ModeArg::Anomalyclip => Mode::Anomalyclip,
            ModeArg::Adaptclip => Mode::Adaptclip,
        }
    }
}
