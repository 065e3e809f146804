//! Fuzzes peer grants (base64 and raw signatures) and TrustPolicy public keys.
//! Body: `pollen_fuzz::grant` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::grant(data));
