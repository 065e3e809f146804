//! Fuzzes durations: the CRD's Go-style durations, the CLI's lifetimes and intervals, the benchmark's.
//! Body: `pollen_fuzz::duration` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::duration(data));
