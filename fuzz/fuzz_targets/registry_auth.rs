//! Fuzzes a registry's `WWW-Authenticate` challenge and its token endpoint's answer.
//! Body: `pollen_fuzz::registry_auth` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::registry_auth(data));
