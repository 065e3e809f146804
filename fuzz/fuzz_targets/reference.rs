//! Fuzzes image references, digests and the pinned index references that grants name.
//! Body: `pollen_fuzz::reference` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::reference(data));
