#![no_main]
//! See `anoscope::fuzzing::image`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anoscope::fuzzing::image(data);
});
