//! WebGPU acceleration of the image tower: WGSL compute kernels driven by wgpu (Vulkan, Metal or
//! DX12 natively, the browser's WebGPU on wasm32).
//!
//! * [`GpuContext`]: adapter and device selection, error capture (validation, out-of-memory,
//!   device loss become `Err`s, never panics).
//! * [`GpuVision`]: the image tower on the GPU (f32 weights uploaded once per model, scratch
//!   buffers reused across calls), with the same outputs as the CPU [`VisionTower`].
//! * [`Backend`]: the user's choice (`auto`, `gpu`, `cpu`); natively, `attach` installs a
//!   [`GpuVision`] as the tower's accelerator so every detection mode uses it, and the tower falls
//!   back to the CPU (with a message) when a GPU call fails.
//!
//! The API is async so that it runs in the browser (buffer mapping resolves on the event loop);
//! natively it is driven by `pollster`.
//!
//! Adapters without a GPU: natively, Mesa's lavapipe (Debian `mesa-vulkan-drivers`) is a CPU
//! Vulkan adapter that wgpu picks up. Headless Chromium (148, Debian) exposes WebGPU on its CPU
//! SwiftShader adapter with `--enable-unsafe-webgpu` alone (`chromium --headless=new
//! --no-sandbox --enable-unsafe-webgpu`; no `shader-f16`, 1 GiB storage bindings); without that
//! flag `requestAdapter()` returns null there.
//!
//! On Linux the probe (instance and adapter enumeration) keeps libwayland's `XDG_RUNTIME_DIR`
//! complaint, which Mesa's device-select layer provokes, off stderr: see `gpu/quiet.rs`.
//!
//! Test hook: `ANOSCOPE_GPU_FAIL=adapter` makes adapter requests fail, `ANOSCOPE_GPU_FAIL=forward`
//! makes every GPU pass fail as a lost device would (to test the CPU fallback).
//!
//! [`VisionTower`]: crate::model::VisionTower
#[cfg(target_os = "linux")]
mod quiet;
pub mod vision;

pub use vision::GpuVision;

use anyhow::{anyhow, bail, Result};
use std::sync::{Arc, Mutex};

/// Which encoder runs the image tower.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The GPU when an adapter is available, else the CPU (with a note).
    #[default]
    Auto,
    /// The GPU; an error when no adapter is available.
    Gpu,
    /// The CPU (candle).
    Cpu,
}

impl Backend {
    /// The name `--backend` takes (`"auto"`, `"gpu"`, `"cpu"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Gpu => "gpu",
            Backend::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Backend::Auto),
            "gpu" => Ok(Backend::Gpu),
            "cpu" => Ok(Backend::Cpu),
            _ => bail!("unknown backend {s:?} (expected auto, gpu or cpu)"),
        }
    }
}

/// How the GPU stores the matrix weights (QKV, output, MLP, patch and projection matrices);
/// arithmetic is f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// f16 where that loses nothing (every matrix weight is exactly an f16 value, as in the f16
    /// checkpoints the page serves) and the adapter has `shader-f16`; f32 otherwise.
    #[default]
    Auto,
    /// f32 always.
    F32,
    /// f16 always (rounds f32 checkpoints to f16; an error without `shader-f16`).
    F16,
}

/// Failures forced by [`force_failure`] (the browser's test hook; there is no environment there).
static FORCED: Mutex<String> = Mutex::new(String::new());

/// Forces failures as `ANOSCOPE_GPU_FAIL` does (`"adapter"`, `"forward"`, comma-separated; `""`
/// clears), for the page's tests.
pub fn force_failure(what: &str) {
    *FORCED.lock().unwrap_or_else(|e| e.into_inner()) = what.to_string();
}

/// The test hook's value (`ANOSCOPE_GPU_FAIL`, or [`force_failure`]), when set.
pub(crate) fn forced_failure(what: &str) -> bool {
    let has = |v: &str| v.split(',').any(|p| p.trim() == what);
    std::env::var("ANOSCOPE_GPU_FAIL").is_ok_and(|v| has(&v)) || has(&FORCED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Whether `navigator.gpu` exists (wgpu's WebGPU backend assumes it does).
#[cfg(target_arch = "wasm32")]
fn browser_has_webgpu() -> bool {
    let get = |v: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).ok();
    get(&js_sys::global().into(), "navigator")
        .filter(|n| !n.is_undefined() && !n.is_null())
        .and_then(|n| get(&n, "gpu"))
        .is_some_and(|g| !g.is_undefined() && !g.is_null())
}

/// A wgpu device and queue, with the errors wgpu reports outside error scopes (and device loss)
/// collected instead of panicking.
#[derive(Clone, Debug)]
pub struct GpuContext {
    /// The device the buffers, pipelines and dispatches are created on.
    pub device: wgpu::Device,
    /// The device's queue for uploads and submissions.
    pub queue: wgpu::Queue,
    /// Name, backend and type of the adapter, for messages ([`GpuContext::describe`]).
    pub adapter: wgpu::AdapterInfo,
    /// The adapter's full limits, which the device was opened with.
    pub limits: wgpu::Limits,
    /// Lines the adapter probe kept off stderr (libwayland's, on Linux: see `gpu/quiet.rs`).
    pub hidden_probe_lines: usize,
    failure: Arc<Mutex<Option<String>>>,
}

/// A wgpu instance for every backend this build has, and its high-performance adapter.
async fn request_adapter() -> Result<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("no GPU adapter: {e}"))
}

impl GpuContext {
    /// Requests the high-performance adapter and a device with its full limits. Fails with a
    /// clear message when there is no adapter (no GPU, no WebGPU, no Vulkan driver).
    pub async fn new() -> Result<Self> {
        if forced_failure("adapter") {
            bail!("no GPU adapter (forced by ANOSCOPE_GPU_FAIL=adapter)");
        }
        #[cfg(target_arch = "wasm32")]
        if !browser_has_webgpu() {
            bail!("no WebGPU here (navigator.gpu is missing)");
        }
        // Natively wgpu-core answers at once, so the probe can run to completion inside `quiet`.
        #[cfg(target_os = "linux")]
        let (adapter, hidden_probe_lines) = quiet::probe(|| pollster::block_on(request_adapter()));
        #[cfg(not(target_os = "linux"))]
        let (adapter, hidden_probe_lines) = (request_adapter().await, 0);
        let adapter = adapter?;
        let limits = adapter.limits();
        // f16 weight storage where the adapter offers it (see `WeightStorage`).
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("anoscope"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("cannot open the GPU device: {e}"))?;
        let failure = Arc::new(Mutex::new(None::<String>));
        let f = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            f.lock().unwrap().get_or_insert_with(|| format!("GPU error: {e}"));
        }));
        let f = failure.clone();
        device.set_device_lost_callback(move |reason, msg| {
            f.lock()
                .unwrap()
                .get_or_insert_with(|| format!("GPU device lost ({reason:?}): {msg}"));
        });
        Ok(Self {
            device,
            queue,
            adapter: adapter.get_info(),
            limits,
            hidden_probe_lines,
            failure,
        })
    }

    /// `"name (backend, device type)"`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.adapter.name, self.adapter.backend, self.adapter.device_type
        )
    }

    /// Whether shaders may use `f16` (the device was opened with `shader-f16`).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The first error wgpu reported outside an error scope, or the device loss, if any.
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().unwrap().as_ref() {
            Some(msg) => bail!("{msg}"),
            None => Ok(()),
        }
    }

    /// Largest storage buffer one binding may hold, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }
}

/// What [`attach`] did, in one line each for the user.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug)]
pub struct Attached {
    /// Which encoder runs: `encoder: GPU, …` or `encoder: CPU …` (with why, under `Auto`).
    pub encoder: String,
    /// What the adapter probe found: `gpu probe: found <adapter>`, `gpu probe: <why none>` or
    /// `gpu probe: not run (--backend cpu)`.
    pub probe: String,
}

/// Natively: opens the GPU for `backend` and installs a [`GpuVision`] as the accelerator of
/// `clip`'s image tower. Returns lines saying which encoder runs and what the probe found (for
/// the user). `Auto` without an adapter, or with only a software (CPU) adapter, keeps the CPU and
/// says why; `Gpu` without an adapter is an error.
#[cfg(not(target_arch = "wasm32"))]
pub fn attach(clip: &mut crate::model::Clip, backend: Backend, storage: WeightStorage) -> Result<Attached> {
    if backend == Backend::Cpu {
        clip.vision.accel = None;
        return Ok(Attached {
            encoder: "encoder: CPU".into(),
            probe: "gpu probe: not run (--backend cpu)".into(),
        });
    }
    let mut probe = String::new();
    let opened = pollster::block_on(async {
        let ctx = GpuContext::new()
            .await
            .inspect_err(|e| probe = format!("gpu probe: {e:#}"))?;
        probe = format!("gpu probe: found {}", ctx.describe());
        if ctx.hidden_probe_lines > 0 {
            probe += &format!(
                "; {} libwayland line(s) about XDG_RUNTIME_DIR left off stderr",
                ctx.hidden_probe_lines
            );
        }
        if backend == Backend::Auto && ctx.adapter.device_type == wgpu::DeviceType::Cpu {
            // A software adapter (lavapipe, SwiftShader) is far slower than the CPU path.
            bail!(
                "the only adapter, {}, runs on the CPU; --backend gpu forces it",
                ctx.describe()
            );
        }
        GpuVision::with_storage(ctx, &clip.vision, storage).await
    });
    match opened {
        Ok(g) => {
            let encoder = format!(
                "encoder: GPU, {}, {} weights",
                g.ctx().describe(),
                if g.half() { "f16" } else { "f32" }
            );
            clip.vision.accel = Some(Arc::new(g));
            Ok(Attached { encoder, probe })
        }
        Err(e) if backend == Backend::Auto => {
            clip.vision.accel = None;
            Ok(Attached {
                encoder: format!("encoder: CPU (no usable GPU: {e:#})"),
                probe,
            })
        }
        Err(e) => Err(e.context("--backend gpu")),
    }
}
