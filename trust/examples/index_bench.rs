//! Measures, in one run over the same bytes: index build throughput (BLAKE3 per chunk + SHA-256 of the
//! whole payload, one pass) against raw BLAKE3 and raw SHA-256; and the per-chunk verify cost.
//!
//! `cargo run --release -p pollen-trust --example index_bench [-- MiB]` (default 256 MiB).

use std::time::Instant;

use pollen_trust::index::{FixedChunker, IndexBuilder, IndexMeta, TargetSpec};
use sha2::Digest as _;

fn meta() -> IndexMeta {
    IndexMeta {
        media_type: "application/octet-stream".into(),
        target: TargetSpec {
            path: "bench.bin".into(),
            keep_versions: 1,
        },
        rollout: "bench/bench".into(),
        sequence: 1,
        downgrade: false,
        expires_at: None,
        peers: Vec::new(),
    }
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// Best of `runs` timings of `f`, in seconds.
fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let n = mib << 20;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    println!("payload: {mib} MiB, best of 3 runs each");

    let t_blake = best(3, || {
        std::hint::black_box(blake3::hash(&data));
    });
    let t_sha = best(3, || {
        std::hint::black_box(sha2::Sha256::digest(&data));
    });
    println!(
        "raw BLAKE3 (one hash, single thread):     {:8.0} MB/s",
        mbps(n, t_blake)
    );
    println!(
        "raw SHA-256:                              {:8.0} MB/s",
        mbps(n, t_sha)
    );
    for cs in [64 * 1024u32, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024] {
        let t_chunked = best(3, || {
            for c in data.chunks(cs as usize) {
                std::hint::black_box(blake3::hash(c));
            }
        });
        let mut index = None;
        let t_index = best(3, || {
            let mut b = IndexBuilder::new(FixedChunker::new(cs).unwrap());
            for piece in data.chunks(1 << 20) {
                b.update(piece);
            }
            index = Some(b.finish(meta()).unwrap());
        });
        let index = index.unwrap();
        // Per-chunk verify: every chunk once, best of 3 passes.
        let t_verify = best(3, || {
            for i in 0..index.chunk_count() {
                let r = index.chunk_range(i);
                index
                    .verify_chunk(i, &data[r.start as usize..r.end as usize])
                    .unwrap();
            }
        });
        let per_chunk_us = t_verify * 1e6 / f64::from(index.chunk_count());
        println!(
            "chunk {:>5} KiB: index build {:6.0} MB/s | raw BLAKE3 per chunk {:6.0} MB/s | verify {:8.1} us/chunk ({:6.0} MB/s), {} chunks, encoded index {} bytes",
            cs / 1024,
            mbps(n, t_index),
            mbps(n, t_chunked),
            per_chunk_us,
            mbps(n, t_verify),
            index.chunk_count(),
            index.encode().len()
        );
    }
}
