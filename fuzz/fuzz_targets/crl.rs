//! Fuzzes revocation lists (DER from peers, PEM from the API server): intake and verification.
//! Body: `pollen_fuzz::crl` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::crl(data));
