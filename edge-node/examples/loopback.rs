//! Loopback throughput of one Pollen pair against raw quinn + rustls with the same TLS and transport
//! settings, measured in the same run, with a third kind between them.
//!
//! ```text
//! cargo run --release -p pollen-edge-node --features testing --example loopback -- [MIB] [ROUNDS]
//! ```
//!
//! - Raw quinn: one connection, one stream, the bytes sent from memory and read into nothing.
//! - Raw + verify: the same stream, plus the work any verified, durable transfer must do: the sender
//!   reads each piece from a file, the receiver preallocates its file, hashes each chunk with BLAKE3,
//!   compares it and writes it at its offset, and syncs at the end. The floor under Pollen on this
//!   machine and this store medium; Pollen / raw + verify is the cost of the protocol itself (requests,
//!   streams, `Have`s, the picker, the bitfield).
//! - Pollen: a seed holding the whole payload (chunk store on disk, page cache warm) and a fresh node
//!   that fetches it (origin off), timed from the fetching engine's start to its last verified, durable
//!   chunk; opening (preallocating) the store, chunk hashing, store writes and the persisted bitfield are
//!   included.
//!
//! All use `TlsIdentity::quic_server` / `quic_client` with the same `TransportLimits` (the defaults
//! unless `LOOPBACK_WINDOW_KIB` is set). Rounds alternate between the kinds; each prints its rate, the
//! process CPU time it took (user + system, all threads, from `/proc/self/stat`) and the UDP datagrams
//! the kernel dropped for a full socket buffer; the summary gives best and median rates and their ratios.
//!
//! Both sides of each pair run in this process. By default they share one runtime of two threads, so the
//! figures are bound by CPU as much as by the protocol: each side's extra work takes cycles from the
//! other. With `LOOPBACK_SPLIT=1` each side gets its own runtime (one worker, its blocking threads)
//! pinned to its own core, closer to two devices with a core each; the raw kinds are split the same way.
//! The stores live in the system temporary directory, or under `LOOPBACK_DIR` (e.g. a tmpfs, to take the
//! disk out of the measurement; note that preallocating on tmpfs zeroes every page up front).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pollen_edge_node::engine::{Engine, EngineConfig};
use pollen_edge_node::metrics::Metrics;
use pollen_edge_node::store::Store;
use pollen_edge_node::tls::TransportLimits;
use pollen_edge_node::tls::testing::TestCa;
use pollen_trust::testing::{Fixture, test_meta};
use tokio::runtime::Handle;
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

/// CPU time of this process so far (user + system, every thread), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // The kernel reports in USER_HZ, 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// UDP datagrams the kernel dropped for a full socket receive buffer so far (`RcvbufErrors` in the
/// `Udp:` lines of `/proc/net/snmp`), machine-wide: each drop is a QUIC packet lost and sent again.
fn udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("LOOPBACK_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
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

/// Where each side of a pair runs: the serving side on `a`, the fetching side on `b`.
struct Sides {
    a: Handle,
    b: Handle,
}

impl Sides {
    /// Both sides on the current runtime.
    fn shared() -> Self {
        Sides {
            a: Handle::current(),
            b: Handle::current(),
        }
    }

    /// Each side on a runtime of its own, one worker, every thread pinned to core 0 or core 1.
    fn split() -> Self {
        let pinned = |core: usize| -> Handle {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .on_thread_start(move || {
                    let mut set = rustix::thread::CpuSet::new();
                    set.set(core);
                    rustix::thread::sched_setaffinity(None, &set).expect("pin to a core");
                })
                .build()
                .expect("runtime");
            // Kept for the whole run (a runtime cannot be dropped inside another).
            Box::leak(Box::new(rt)).handle().clone()
        };
        Sides {
            a: pinned(0),
            b: pinned(1),
        }
    }
}

/// One Pollen round: (wall time, CPU time), both from the fetching engine's start to its completion.
async fn pollen_round(
    sides: &Sides,
    ca: &TestCa,
    fx: &Fixture,
    seed_dir: &std::path::Path,
    round: usize,
) -> (Duration, Duration) {
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
    let verified = fx.verified.clone();
    let seed = sides
        .a
        .spawn(async move {
            Engine::start(
                seed_cfg,
                verified,
                Arc::new(Metrics::default()),
                CancellationToken::new(),
            )
            .await
            .unwrap()
        })
        .await
        .unwrap();
    let dir = tempdir();
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
    // LOOPBACK_RUN_KIB overrides the picker's longest run of consecutive chunks per request.
    if let Some(k) = std::env::var("LOOPBACK_RUN_KIB")
        .ok()
        .and_then(|k| k.parse::<u64>().ok())
    {
        cfg.picker.run_bytes = k * 1024;
    }
    let verified = fx.verified.clone();
    let (dt, cpu) = sides
        .b
        .spawn(async move {
            let t0 = Instant::now();
            let c0 = cpu_time();
            let mut leech = Engine::start(
                cfg,
                verified,
                Arc::new(Metrics::default()),
                CancellationToken::new(),
            )
            .await
            .unwrap();
            leech.wait_complete().await.unwrap();
            let dt = t0.elapsed();
            let cpu = cpu_time() - c0;
            leech.shutdown().await;
            drop(dir);
            (dt, cpu)
        })
        .await
        .unwrap();
    sides.a.spawn(seed.shutdown()).await.unwrap();
    (dt, cpu)
}

/// A raw quinn server endpoint on side `a`, its address, and the client configuration to reach it,
/// both with the loopback's transport limits.
async fn raw_endpoints(
    sides: &Sides,
    ca: &TestCa,
) -> (quinn::Endpoint, std::net::SocketAddr, quinn::ClientConfig) {
    let limits = limits();
    let server_cfg = ca.issue("raw-server").identity(ca).quic_server(&limits).unwrap();
    let client_cfg = ca.issue("raw-client").identity(ca).quic_client(&limits).unwrap();
    // Endpoints are driven on the runtime they are made in.
    let server = sides
        .a
        .spawn(async move { quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap() })
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    (server, addr, client_cfg)
}

/// One raw round: (wall time, CPU time), both from the connect to the last byte read.
async fn raw_round(sides: &Sides, ca: &TestCa, data: Arc<Vec<u8>>) -> (Duration, Duration) {
    let (server, addr, client_cfg) = raw_endpoints(sides, ca).await;
    let srv = sides.a.spawn(async move {
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
    let (dt, cpu, n) = sides
        .b
        .spawn(async move {
            let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            client.set_default_client_config(client_cfg);
            let t0 = Instant::now();
            let c0 = cpu_time();
            let conn = client.connect(addr, "raw-server").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&[1]).await.unwrap();
            let mut n = 0usize;
            while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
                n += c.bytes.len();
            }
            let dt = t0.elapsed();
            let cpu = cpu_time() - c0;
            conn.close(0u32.into(), b"done");
            (dt, cpu, n)
        })
        .await
        .unwrap();
    let _ = srv.await;
    assert!(n > 0);
    (dt, cpu)
}

/// The payload as the verified raw round sends it: a file to read chunks from, and each chunk's BLAKE3.
struct Verified {
    file: Arc<std::fs::File>,
    hashes: Arc<Vec<blake3::Hash>>,
    chunk: usize,
    size: usize,
}

/// One verified raw round: raw quinn on one stream, plus the work any verified chunk transfer must do.
/// The sender reads each 64 KiB piece from a file (`pread`) before writing it to the stream; the
/// receiver preallocates the file (`fallocate`), reads each chunk out of the stream into a buffer, hashes
/// it with BLAKE3, compares the hash and writes the chunk at its offset, then syncs the file at the end. No
/// protocol, no picker, no bitfield: the floor under any verified transfer on this machine.
async fn verified_round(sides: &Sides, ca: &TestCa, v: &Verified) -> (Duration, Duration) {
    use std::os::unix::fs::FileExt;
    let (server, addr, client_cfg) = raw_endpoints(sides, ca).await;
    let (src, size) = (v.file.clone(), v.size);
    let srv = sides.a.spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.unwrap();
        let mut piece = vec![0u8; 64 * 1024];
        let mut off = 0;
        while off < size {
            let n = piece.len().min(size - off);
            src.read_exact_at(&mut piece[..n], off as u64).unwrap();
            send.write_all(&piece[..n]).await.unwrap();
            off += n;
        }
        send.finish().unwrap();
        let _ = conn.closed().await;
    });
    let (hashes, chunk) = (v.hashes.clone(), v.chunk);
    let (dt, cpu) = sides
        .b
        .spawn(async move {
            let dir = tempdir();
            let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            client.set_default_client_config(client_cfg);
            let t0 = Instant::now();
            let c0 = cpu_time();
            let out = std::fs::File::create(dir.path().join("payload")).unwrap();
            // Preallocated, as Pollen's store does, so that a full disk shows before any transfer.
            rustix::fs::fallocate(&out, rustix::fs::FallocateFlags::empty(), 0, size as u64).unwrap();
            let conn = client.connect(addr, "raw-server").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&[1]).await.unwrap();
            let mut buf = vec![0u8; chunk];
            for (c, want) in hashes.iter().enumerate() {
                let len = chunk.min(size - c * chunk);
                recv.read_exact(&mut buf[..len]).await.unwrap();
                assert_eq!(&blake3::hash(&buf[..len]), want, "chunk {c}");
                out.write_all_at(&buf[..len], (c * chunk) as u64).unwrap();
            }
            out.sync_all().unwrap();
            let dt = t0.elapsed();
            let cpu = cpu_time() - c0;
            conn.close(0u32.into(), b"done");
            (dt, cpu)
        })
        .await
        .unwrap();
    let _ = srv.await;
    (dt, cpu)
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
    let seed_dir = tempdir();
    {
        let s = Store::open(seed_dir.path(), &fx.verified).unwrap();
        for c in 0..fx.verified.chunk_count() {
            let r = fx.verified.chunk_range(c);
            s.put(c, &data[r.start as usize..r.end as usize]).unwrap();
        }
        s.persist().unwrap();
    }
    let data = Arc::new(data);
    let split = std::env::var("LOOPBACK_SPLIT").is_ok_and(|v| v == "1");
    let sides = if split { Sides::split() } else { Sides::shared() };
    println!(
        "payload {mib} MiB, chunk {} KiB, {} rounds each, alternating, {}",
        chunk / 1024,
        rounds,
        if split {
            "each side pinned to its own core"
        } else {
            "both sides sharing the runtime"
        }
    );
    let verified = {
        let path = seed_dir.path().join("raw-payload");
        std::fs::write(&path, &data[..]).unwrap();
        Verified {
            file: Arc::new(std::fs::File::open(&path).unwrap()),
            hashes: Arc::new(data.chunks(chunk as usize).map(blake3::hash).collect()),
            chunk: chunk as usize,
            size,
        }
    };
    const KINDS: [&str; 3] = ["raw quinn", "raw + verify", "pollen pair"];
    // (wall, CPU) per kind and round.
    let mut times: [Vec<(Duration, Duration)>; 3] = Default::default();
    // LOOPBACK_ONLY=raw, =verify or =pollen runs one kind only (for profiling).
    let only = std::env::var("LOOPBACK_ONLY").unwrap_or_default();
    let runs = |k: usize| only.is_empty() || KINDS[k].contains(only.as_str());
    let mbs = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        for (k, kind) in KINDS.iter().enumerate() {
            if !runs(k) {
                continue;
            }
            let d0 = udp_drops();
            let (wall, cpu) = match k {
                0 => raw_round(&sides, &ca, data.clone()).await,
                1 => verified_round(&sides, &ca, &verified).await,
                _ => pollen_round(&sides, &ca, &fx, seed_dir.path(), round).await,
            };
            line += &format!(
                " {kind} {:.0} MB/s ({:.2} s CPU, {} UDP drops);",
                mbs(wall),
                cpu.as_secs_f64(),
                udp_drops() - d0
            );
            times[k].push((wall, cpu));
        }
        println!("{}", line.trim_end_matches(';'));
    }
    // Best and median throughput, median CPU per round.
    let stats: Vec<Option<(f64, f64, f64)>> = times
        .iter_mut()
        .map(|t| {
            if t.is_empty() {
                return None;
            }
            let mut wall: Vec<Duration> = t.iter().map(|x| x.0).collect();
            let mut cpu: Vec<Duration> = t.iter().map(|x| x.1).collect();
            wall.sort();
            cpu.sort();
            Some((
                mbs(wall[0]),
                mbs(wall[wall.len() / 2]),
                cpu[cpu.len() / 2].as_secs_f64(),
            ))
        })
        .collect();
    for (k, kind) in KINDS.iter().enumerate() {
        if let Some((best, median, cpu)) = stats[k] {
            println!("{kind}: best {best:.0} MB/s, median {median:.0} MB/s, median CPU {cpu:.2} s per round");
        }
    }
    let ratio = |a: usize, b: usize| {
        if let (Some(x), Some(y)) = (stats[a], stats[b]) {
            println!(
                "{} / {}: best {:.2}, median {:.2}, CPU per round {:.2}",
                KINDS[a],
                KINDS[b],
                x.0 / y.0,
                x.1 / y.1,
                x.2 / y.2
            );
        }
    };
    ratio(2, 0);
    ratio(2, 1);
    ratio(1, 0);
}
