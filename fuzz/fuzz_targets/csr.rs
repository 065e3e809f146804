//! Fuzzes nodes' certificate signing requests (PEM and DER) through the signer, and certificate facts.
//! Body: `pollen_fuzz::csr` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::csr(data));
