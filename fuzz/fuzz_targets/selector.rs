//! Fuzzes label selectors: an UpdateRollout's `selector` as the operator matches EdgeNodes with it.
//! Body: `pollen_fuzz::selector` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::selector(data));
