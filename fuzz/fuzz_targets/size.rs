//! Fuzzes sizes and quantities: the origin budget, the benchmark's sizes and rates, a rollout's waves.
//! Body: `pollen_fuzz::size` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::size(data));
