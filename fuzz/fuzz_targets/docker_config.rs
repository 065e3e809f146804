//! Fuzzes Docker `config.json` files and credential helpers' output.
//! Body: `pollen_fuzz::docker_config` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::docker_config(data));
