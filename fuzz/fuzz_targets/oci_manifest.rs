//! Fuzzes OCI manifests, cosign signature manifests, simple-signing payloads and version claims.
//! Body: `pollen_fuzz::oci_manifest` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::oci_manifest(data));
