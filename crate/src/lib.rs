//! anoscope: zero-shot visual anomaly detection with CLIP, native and in the browser.
//!
//! * [`model`]: the CLIP image and text towers (candle), checkpoint loading, random weights.
//! * [`tokenizer`]: CLIP's BPE tokenizer (the `tokenizers` crate, vocabulary embedded).
//! * [`preprocess`]: image decoding with limits and CLIP / square-resize preprocessing.
//! * [`detect`]: the detection modes (WinCLIP, fast dense, few-shot WinCLIP+, batch MuSc) and
//!   their prompt ensembles.
//! * [`embed`]: image and text embeddings written as safetensors (`anoscope embed`,
//!   `embed-text`, the browser's raw embedding calls).
//! * [`metrics`]: image- and pixel-level anomaly-detection metrics.
//! * [`render`]: colormaps, heatmaps, overlays and PNG encoding of anomaly maps.
//! * `gpu` (feature `gpu`): the image tower on WebGPU (wgpu), natively and in the browser.
//! * `eval` (native only): evaluation on datasets in the MVTec AD layout (`anoscope eval`).
//! * `serve` (native only): the static file server for the built site (`anoscope serve`).
//! * `wasm` (wasm32 only): the JavaScript bindings, the page's whole API.
//!
//! The command line (argument parsing, progress bars, output files) is the `anoscope` binary's
//! (`src/cli/`), not this library's. `fuzzing` (native, hidden) holds the fuzz targets' bodies
//! and is not public API.
#![warn(missing_docs)]

pub mod detect;
pub mod embed;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
// Public only for `fuzz/` and the regression test; hidden, so `missing_docs` skips it (its items
// are documented all the same).
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod render;
pub mod tokenizer;

#[cfg(not(target_arch = "wasm32"))]
pub mod serve;

#[cfg(target_arch = "wasm32")]
pub mod wasm;
