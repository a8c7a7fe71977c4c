//! JavaScript bindings (wasm-bindgen, `--target web`): the page's whole API, a thin layer over the
//! code the CLI runs (decoding and preprocessing, the detection modes, the overlays). JS never
//! reimplements preprocessing, scoring or colormaps.
//!
//! * [`version`], [`threads`], [`limits`], [`render_overlay`] (`renderOverlay`), and with the
//!   `threads` feature `initThreadPool`;
//! * [`Image`]: a decoded RGB image;
//! * [`ClipLoader`]: a checkpoint streamed in chunks, image tower first;
//! * [`ClipModel`]: checkpoint, prompt bundle, text pairs, `detect`, `references`, `batch`;
//! * [`Detection`], [`References`], [`BatchResult`]: results;
//! * photo-true results ([`photo`]): `photoMap`, `boundedSize`, `regions`, `tilePlan`,
//!   `stitchTiles`, `combineScores` and `ClipModel.detectTiled` ([`TiledResult`]);
//! * with the `gpu` feature (the single-threaded build), `ClipModel.useGpu` and the asynchronous
//!   `detectAsync`, `referencesAsync`, `batchAsync` that run the image tower on WebGPU, and the
//!   test hook `setGpuFailure`.
//!
//! Every error is a thrown JS `Error` whose message the page shows as it is.
mod detect;
#[cfg(feature = "gpu")]
mod gpu;
mod image;
mod model;
pub mod photo;
mod stream;

pub use self::detect::{BatchResult, Detection, References};
pub use self::image::Image;
pub use self::model::ClipModel;
pub use self::photo::{PhotoMap, TiledResult};
pub use self::stream::ClipLoader;

use wasm_bindgen::prelude::*;

/// Most normal reference images one few-shot set may hold (WinCLIP+ reports 1, 2 and 4 shots).
pub const MAX_REFERENCES: usize = 16;

/// Most images one batch (MuSc) run takes in the browser: its features take about 7.2 MB per
/// image for ViT-B/16 at 224 px and its time grows quadratically; the native CLI allows
/// [`crate::detect::musc::MAX_BATCH`].
pub const MAX_BATCH: usize = 64;

/// Largest checkpoint file accepted by [`ClipModel::load`] (and by [`ClipLoader`] when the file's
/// size is declared), in bytes: the build's limit,
/// [`crate::model::checkpoint::MAX_CHECKPOINT_BYTES_WASM`] (its one home), as a length.
pub const MAX_CHECKPOINT_BYTES: usize = crate::model::checkpoint::MAX_CHECKPOINT_BYTES_WASM as usize;

pub(crate) fn js_err(e: anyhow::Error) -> JsError {
    JsError::new(&format!("{e:#}"))
}

/// The message of a thrown JS value (an `Error`'s message, a string, or a fallback).
pub(crate) fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "the callback threw".into())
}

/// `initThreadPool(n)`: starts `n` Web Workers sharing this module's memory (threaded build only;
/// needs a cross-origin isolated page). Call it once, right after `init()`.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Threads the model's work is spread over (1 in the single-threaded build).
#[wasm_bindgen]
pub fn threads() -> usize {
    if cfg!(feature = "threads") {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The crate version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The input limits, as JSON: `{maxImagePixels, maxBatch, maxReferences, maxPromptChars,
/// maxPromptsPerSide, maxCheckpointBytes}`, so the page can refuse early with the same numbers.
#[wasm_bindgen]
pub fn limits() -> String {
    use crate::detect::prompts;
    serde_json::json!({
        "maxImagePixels": crate::preprocess::MAX_IMAGE_PIXELS,
        "maxBatch": MAX_BATCH.min(crate::detect::musc::MAX_BATCH),
        "maxReferences": MAX_REFERENCES,
        "maxPromptChars": prompts::MAX_PROMPT_CHARS,
        "maxPromptsPerSide": prompts::MAX_PROMPTS_PER_SIDE,
        "maxCheckpointBytes": MAX_CHECKPOINT_BYTES,
    })
    .to_string()
}

/// Test hook of the wasm suite: runs this build's int8 GEMM (`crate::model::wasm_qgemm`, with
/// the dot product `int8Dot()` names) on pseudo-random `[m, k] × [k, n]` values (`k` a
/// multiple of 32) against its scalar reference; returns the largest `|Δ| / (1 + |want|)`.
#[wasm_bindgen(js_name = int8GemmCheck)]
pub fn int8_gemm_check(m: usize, k: usize, n: usize, seed: u32) -> Result<f32, JsError> {
    crate::model::wasm_qgemm::self_check(m, k, n, seed as u64).map_err(|e| JsError::new(&format!("{e:#}")))
}

/// The dot product int8 layers packed from now on run: `simd128`, or in the relaxed build
/// `relaxed` unless this engine emulates the relaxed one with saturating instructions (x64
/// without a byte dot product; `relaxedDotSaturates`). See `crate::model::wasm_qgemm::dot`.
#[wasm_bindgen(js_name = int8Dot)]
pub fn int8_dot() -> String {
    crate::model::wasm_qgemm::dot().name().into()
}

/// In the relaxed build: whether this engine's relaxed int8 dot product saturates (the reason
/// `int8Dot()` is then `simd128`); `undefined` in the SIMD128 build.
#[wasm_bindgen(js_name = relaxedDotSaturates)]
pub fn relaxed_dot_saturates() -> Option<bool> {
    crate::model::wasm_qgemm::relaxed_dot_saturates()
}

/// Test hook (and for comparing the two): int8 layers packed from now on run `dot` (`simd128`,
/// `relaxed` in the relaxed build only), or with `''` the build's own choice (`int8Dot`).
#[wasm_bindgen(js_name = setInt8Dot)]
pub fn set_int8_dot(dot: &str) -> Result<(), JsError> {
    use crate::model::wasm_qgemm::{set_dot, Dot};
    let d = match dot {
        "" => None,
        name => Some(
            Dot::from_name(name)
                .ok_or_else(|| JsError::new(&format!("unknown int8 dot product {name:?} (simd128, relaxed or '')")))?,
        ),
    };
    set_dot(d).map_err(|e| JsError::new(&format!("{e:#}")))
}

/// Test hook of the wasm suite: runs this build's f32 GEMM (`crate::model::wasm_gemm`: the
/// relaxed build's linear layers, every build's attention products) on pseudo-random `[m, k] ×
/// [k, n]` values against an f64 sum, `b` row-major or (`transposed`) read as a transpose;
/// returns the largest `|Δ| / (1 + |want|)`.
#[wasm_bindgen(js_name = f32GemmCheck)]
pub fn f32_gemm_check(m: usize, k: usize, n: usize, seed: u32, transposed: bool) -> f32 {
    crate::model::wasm_gemm::self_check(m, k, n, seed as u64, transposed)
}

/// Installs `check` (a function of no arguments; `null` removes it) as the stop check the image
/// tower runs after every transformer block on the CPU ([`crate::model::interrupt`]): if it
/// throws, the image being encoded stops there with its message. The page's worker installs one
/// that throws when the page cancelled the request, so Cancel stops even one long image (a
/// learned mode at 518 px) within a block.
#[wasm_bindgen(js_name = setInterrupt)]
pub fn set_interrupt(check: Option<js_sys::Function>) {
    crate::model::interrupt::set(check.map(|f| {
        Box::new(move || {
            f.call0(&JsValue::NULL)
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{}", js_message(&e)))
        }) as crate::model::interrupt::Check
    }));
}

/// The overlay the page draws: `inputRgba` (`width × height` RGBA, as [`Detection::input`]
/// returns) with the inferno heatmap of `map` (same size, fixed range `[0, 1]`) blended at
/// `opacity` (0..1) and, when `threshold` is finite, the cyan outline of `map >= threshold` on
/// top ([`crate::render::overlay_rgba`]). Returns RGBA bytes (alpha 255).
#[wasm_bindgen(js_name = renderOverlay)]
pub fn render_overlay(
    input_rgba: &[u8],
    map: &[f32],
    width: usize,
    height: usize,
    opacity: f32,
    threshold: f32,
) -> Result<Vec<u8>, JsError> {
    let threshold = threshold.is_finite().then_some(threshold);
    crate::render::overlay_rgba(input_rgba, map, width, height, opacity, threshold).map_err(js_err)
}
