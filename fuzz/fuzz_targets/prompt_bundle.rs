#![no_main]
//! See `anoscope::fuzzing::prompt_bundle`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anoscope::fuzzing::prompt_bundle(data);
});
