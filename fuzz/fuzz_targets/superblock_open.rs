#![no_main]
//! Fuzz target: see `kimberlite::fuzz_targets::superblock_open`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kimberlite::fuzz_targets::superblock_open(data);
});
