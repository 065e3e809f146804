//! Loopback throughput of one Pollen pair against raw quinn + rustls with the same TLS and transport
//! settings, measured in the same run.
//!
//! ```text
//! cargo run --release -p pollen-edge-node --features testing --example loopback -- [MIB] [ROUNDS]
//! ```
//!
//! Pollen: a seed holding the whole payload (chunk store on disk, page cache warm) and a fresh node that
//! fetches it (origin off), timed from the fetching engine's start to its last verified, durable chunk;
//! chunk hashing, store writes and the persisted bitfield are included. Raw: one connection, one stream,
//! the same bytes sent from memory and read into nothing. Both use `TlsIdentity::quic_server` /
//! `quic_client` with the same `TransportLimits` (the defaults unless `LOOPBACK_WINDOW_KIB` is set).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pollen_edge_node::engine::{Engine, EngineConfig};
use pollen_edge_node::metrics::Metrics;
use pollen_edge_node::store::Store;
use pollen_edge_node::tls::TransportLimits;
use pollen_edge_node::tls::testing::TestCa;
use pollen_trust::testing::{Fixture, test_meta};
use tokio_util::sync::CancellationToken;

/// The transport limits both sides use: the defaults, or a connection receive window of
/// `LOOPBACK_WINDOW_KIB` (the stream window is half of it, as in `TransportLimits`).
fn limits() -> TransportLimits {
    let mut l = TransportLimits::default();
    if let Some(k) = std::env::var("LOOPBACK_WINDOW_KIB")
        .ok()
        .and_then(|k| k.parse::<u32>().ok())
    {
        l.receive_window = k * 1024;
    }
    l
}

fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

async fn pollen_round(ca: &TestCa, fx: &Fixture, seed_dir: &std::path::Path, round: usize) -> Duration {
    let seed_cfg = {
        let mut c = EngineConfig::new(
            ca.issue("seed").identity(ca),
            "127.0.0.1:0".parse().unwrap(),
            seed_dir.into(),
        );
        c.origin = false;
        c.transport = limits();
        c
    };
    let seed = Engine::start(
        seed_cfg,
        fx.verified.clone(),
        Arc::new(Metrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(
        ca.issue(&format!("leech{round}")).identity(ca),
        "127.0.0.1:0".parse().unwrap(),
        dir.path().into(),
    );
    cfg.origin = false;
    cfg.peers = vec![seed.local_addr()];
    cfg.transport = limits();
    // LOOPBACK_INFLIGHT_KIB overrides the picker's least bytes in flight per peer.
    if let Some(k) = std::env::var("LOOPBACK_INFLIGHT_KIB")
        .ok()
        .and_then(|k| k.parse::<u64>().ok())
    {
        cfg.picker.min_inflight_bytes = k * 1024;
    }
    let t0 = Instant::now();
    let mut leech = Engine::start(
        cfg,
        fx.verified.clone(),
        Arc::new(Metrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    leech.wait_complete().await.unwrap();
    let dt = t0.elapsed();
    leech.shutdown().await;
    seed.shutdown().await;
    dt
}

async fn raw_round(ca: &TestCa, data: Arc<Vec<u8>>) -> Duration {
    let limits = limits();
    let server_id = ca.issue("raw-server").identity(ca);
    let client_id = ca.issue("raw-client").identity(ca);
    let server = quinn::Endpoint::server(
        server_id.quic_server(&limits).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.unwrap();
        for piece in data.chunks(64 * 1024) {
            send.write_all(piece).await.unwrap();
        }
        send.finish().unwrap();
        let _ = conn.closed().await;
    });
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_id.quic_client(&limits).unwrap());
    let t0 = Instant::now();
    let conn = client.connect(addr, "raw-server").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    let mut n = 0usize;
    while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        n += c.bytes.len();
    }
    let dt = t0.elapsed();
    conn.close(0u32.into(), b"done");
    let _ = srv.await;
    assert!(n > 0);
    dt
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .unwrap();
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib * 1024 * 1024;
    let data = payload(size);
    // LOOPBACK_CHUNK_KIB overrides the chunk size `auto_chunk_size` would choose.
    let chunk = std::env::var("LOOPBACK_CHUNK_KIB")
        .ok()
        .and_then(|k| k.parse::<u32>().ok())
        .map_or_else(|| pollen_trust::index::auto_chunk_size(size as u64), |k| k * 1024);
    let fx = Fixture::new("127.0.0.1:1", "bench/app", &data, chunk, test_meta()).unwrap();
    let ca = TestCa::new("bench fleet");
    let seed_dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(seed_dir.path(), &fx.verified).unwrap();
        for c in 0..fx.verified.chunk_count() {
            let r = fx.verified.chunk_range(c);
            s.put(c, &data[r.start as usize..r.end as usize]).unwrap();
        }
        s.persist().unwrap();
    }
    let data = Arc::new(data);
    println!(
        "payload {mib} MiB, chunk {} KiB, {} rounds each, alternating",
        chunk / 1024,
        rounds
    );
    let (mut p_best, mut r_best) = (Duration::MAX, Duration::MAX);
    // LOOPBACK_ONLY=pollen or =raw runs one side only (for profiling); the ratio is then meaningless.
    let only = std::env::var("LOOPBACK_ONLY").unwrap_or_default();
    for round in 0..rounds {
        let r = if only == "pollen" {
            Duration::MAX
        } else {
            raw_round(&ca, data.clone()).await
        };
        let p = if only == "raw" {
            Duration::MAX
        } else {
            pollen_round(&ca, &fx, seed_dir.path(), round).await
        };
        let mbs = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
        println!(
            "round {round}: raw quinn {:.0} MB/s, pollen pair {:.0} MB/s",
            mbs(r),
            mbs(p)
        );
        p_best = p_best.min(p);
        r_best = r_best.min(r);
    }
    let mbs = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    println!(
        "best: raw quinn {:.0} MB/s, pollen pair {:.0} MB/s, ratio {:.2}",
        mbs(r_best),
        mbs(p_best),
        r_best.as_secs_f64() / p_best.as_secs_f64()
    );
}
