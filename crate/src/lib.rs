//! anoscope: zero-shot visual anomaly detection with CLIP, native and in the browser.
//!
//! * [`model`]: the CLIP image and text towers (candle), checkpoint loading, random weights.
//! * [`tokenizer`]: CLIP's BPE tokenizer (the `tokenizers` crate, vocabulary embedded).
//! * [`preprocess`]: image decoding with limits and CLIP / square-resize preprocessing.
pub mod detect;
pub mod embed;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
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
