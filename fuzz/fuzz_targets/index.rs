//! Fuzzes the signed chunk index decoder.
//! Body: `pollen_fuzz::index` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::index(data));
