//! Measures the offline part of dual verification: [`verify_evidence`] over a really signed index (two
//! ECDSA P-256 signature checks, digests, decode), for a 1 GiB payload's index at the automatic chunk size.
//!
//! `cargo run --release -p pollen-trust --features testing --example verify_bench`

use std::time::Instant;

use pollen_trust::index::{ChunkIndex, auto_chunk_size};
use pollen_trust::testing::{Fixture, test_meta};
use pollen_trust::verify::{VerifyContext, verify_evidence};

fn main() {
    // The index must match the signed payload, so build a real one over 64 MiB at the chunk size that
    // a 1 GiB payload gets.
    let payload = vec![7u8; 64 << 20];
    let cs = auto_chunk_size(1 << 30);
    let f = Fixture::new("127.0.0.1:5000", "bench/app", &payload, cs, test_meta()).expect("fixture");
    let ctx = VerifyContext::now();
    let runs = 200;
    let t = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(verify_evidence(&f.evidence, &f.trust, &ctx).expect("verifies"));
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
    let chunks = f.verified.chunk_count();
    println!(
        "verify_evidence: {per:.0} us per index ({chunks} chunks of {} KiB, index {} bytes)",
        cs / 1024,
        f.evidence.index_blob.len()
    );
    let t = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(ChunkIndex::decode(&f.evidence.index_blob).unwrap());
    }
    println!(
        "index decode alone: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(runs)
    );
}
