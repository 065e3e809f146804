//! Fuzzes the pure wire decoder: it must never panic, never claim more bytes than it was given, and
//! every message it accepts must re-encode to the exact bytes it consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_edge_node::protocol::{Message, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((msg, used))) = decode(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        msg.encode(&mut again);
        if !matches!(msg, Message::Error { .. }) {
            assert_eq!(&again[..], &data[..used]);
        }
    }
});
