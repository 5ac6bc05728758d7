#![no_main]
//! Fuzz target: see `kimberlite::fuzz_targets::header_decode`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kimberlite::fuzz_targets::header_decode(data);
});
