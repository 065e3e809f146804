//! Fuzzes activation windows: the `--activation-window` flag and the rollout's `activationWindow`.
//! Body: `pollen_fuzz::window` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::window(data));
