#![no_main]
//! See `anoscope::fuzzing::dataset`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anoscope::fuzzing::dataset(data);
});
