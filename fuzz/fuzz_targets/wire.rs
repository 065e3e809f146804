//! Fuzzes the peer wire protocol decoder (frames, frame bodies, have-map bits).
//! Body: `pollen_fuzz::wire` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollen_fuzz::wire(data));
