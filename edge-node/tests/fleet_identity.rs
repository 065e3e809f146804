//! Fleet identity over real QUIC on 127.0.0.1: certificates from the fleet CA (`pollen_trust::pki`),
//! expired and foreign certificates refused, revocation lists closing open connections and spreading peer
//! to peer, certificate rotation during a transfer, and peers outside the index's assignment refused.
//! Every node is a real engine with a real signed index (pollen-trust's in-memory fixture); the origin is
//! off and one node is seeded from a local copy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pollen_edge_node::engine::{Engine, EngineConfig, EngineError};
use pollen_edge_node::metrics::Metrics;
use pollen_edge_node::net::read_frame;
use pollen_edge_node::protocol::{self, ErrorCode, Message};
use pollen_edge_node::store::Store;
use pollen_edge_node::tls::{self, FleetTls, TlsIdentity, TransportLimits};
use pollen_trust::pki::{FleetCa, RevocationSet, verify_revocation_list};
use pollen_trust::testing::{Fixture, test_meta};
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn ca() -> FleetCa {
    FleetCa::generate("test fleet", 30 * DAY).unwrap()
}

/// A node identity under `ca`, valid from `not_before` (minus the CA's clock-skew allowance) for `lifetime`.
fn identity_at(ca: &FleetCa, name: &str, not_before: SystemTime, lifetime: Duration) -> TlsIdentity {
    let kp = ca.issue(name, not_before, lifetime).unwrap();
    TlsIdentity::from_pem(
        kp.cert.cert_pem.as_bytes(),
        kp.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .unwrap()
}

fn identity(ca: &FleetCa, name: &str) -> TlsIdentity {
    identity_at(ca, name, SystemTime::now(), DAY)
}

fn revocation_list(ca: &FleetCa, number: u64, serials: &[&str]) -> RevocationSet {
    pollen_edge_node::tls::testing::revocation_set(ca, number, serials)
}

struct Node {
    engine: Engine,
    metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct Opts<'a> {
    peers: &'a [SocketAddr],
    seed_with: Option<&'a [u8]>,
    upload_limit: Option<u64>,
    dir: Option<tempfile::TempDir>,
    /// This node's peer grant (raw signature).
    grant: Option<Vec<u8>>,
    /// The director key that checks peers' grants.
    director: Option<pollen_trust::PublicKey>,
    /// Grants passed while the engine runs.
    grant_updates: Option<tokio::sync::watch::Receiver<Option<Vec<u8>>>>,
}

async fn try_start(
    tls: FleetTls,
    fx: &Fixture,
    o: Opts<'_>,
) -> Result<Node, (EngineError, tempfile::TempDir)> {
    let dir = o.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    if let Some(data) = o.seed_with {
        let s = Store::open(dir.path(), &fx.verified).unwrap();
        for c in 0..fx.verified.chunk_count() {
            let r = fx.verified.chunk_range(c);
            s.put(c, &data[r.start as usize..r.end as usize]).unwrap();
        }
        s.persist().unwrap();
    }
    let mut cfg = EngineConfig::new(tls, "127.0.0.1:0".parse().unwrap(), dir.path().into());
    cfg.peers = o.peers.to_vec();
    cfg.origin = false;
    cfg.seed = 7;
    cfg.upload_limit = o.upload_limit;
    cfg.grant = o.grant;
    cfg.director_key = o.director;
    cfg.grant_updates = o.grant_updates;
    let metrics = Arc::new(Metrics::default());
    match Engine::start(
        cfg,
        fx.verified.clone(),
        metrics.clone(),
        CancellationToken::new(),
    )
    .await
    {
        Ok(engine) => Ok(Node { engine, metrics, dir }),
        Err(e) => Err((e, dir)),
    }
}

async fn start(tls: impl Into<FleetTls>, fx: &Fixture, o: Opts<'_>) -> Node {
    match try_start(tls.into(), fx, o).await {
        Ok(n) => n,
        Err((e, _)) => panic!("engine start: {e}"),
    }
}

/// Polls `cond` every 2 ms until it holds (returns the time it took) or `limit` passes (panics with `what`).
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_certificates_are_refused_both_ways() {
    init();
    let data = payload(256 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    let seed = start(
        identity(&ca, "seed"),
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    let addr = seed.engine.local_addr();
    // Expired yesterday.
    let expired = identity_at(&ca, "stale", SystemTime::now() - 2 * DAY, DAY);
    let mut stale = start(
        expired,
        &fx,
        Opts {
            peers: &[addr],
            ..Opts::default()
        },
    )
    .await;
    // Valid only from tomorrow.
    let future = identity_at(&ca, "early", SystemTime::now() + 2 * DAY, DAY);
    let early = start(
        future,
        &fx,
        Opts {
            peers: &[addr],
            ..Opts::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "the seed refuses both clients", || {
        seed.metrics.refusals("expired") >= 1 && seed.metrics.refusals("not_yet_valid") >= 1
    })
    .await;
    let r = tokio::time::timeout(Duration::from_secs(3), stale.engine.wait_complete()).await;
    assert!(r.is_err(), "the expired node must not complete");
    assert_eq!(stale.metrics.received("peer"), 0);
    assert_eq!(early.metrics.received("peer"), 0);
    assert!(
        seed.engine.peer_names().is_empty(),
        "{:?}",
        seed.engine.peer_names()
    );

    // The other direction: a valid node dialling a server whose certificate expired refuses it.
    let stale_addr = stale.engine.local_addr();
    let dialer = start(
        identity(&ca, "dialer"),
        &fx,
        Opts {
            peers: &[stale_addr],
            ..Opts::default()
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the dialer refuses the expired server",
        || dialer.metrics.refusals("expired") >= 1,
    )
    .await;
    assert!(dialer.engine.peer_names().is_empty());
    for n in [seed, stale, early, dialer] {
        n.engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_is_refused_and_counted() {
    init();
    let data = payload(256 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    let seed = start(
        identity(&ca, "seed"),
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    // The intruder's certificate comes from another CA, but it trusts the fleet CA (which is public), so
    // it completes its side of the handshake and the seed has to judge its certificate.
    let other = FleetCa::generate("other fleet", 30 * DAY).unwrap();
    let kp = other.issue("intruder", SystemTime::now(), DAY).unwrap();
    let foreign = TlsIdentity::from_pem(
        kp.cert.cert_pem.as_bytes(),
        kp.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let mut intruder = start(
        foreign,
        &fx,
        Opts {
            peers: &[seed.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "the seed refuses the foreign CA", || {
        seed.metrics.refusals("unknown_ca") >= 1
    })
    .await;
    let r = tokio::time::timeout(Duration::from_secs(3), intruder.engine.wait_complete()).await;
    assert!(r.is_err(), "the foreign node must not complete");
    assert_eq!(intruder.metrics.received("peer"), 0);
    assert!(seed.engine.peer_names().is_empty());
    // A fleet node dialling the intruder refuses its server certificate.
    let dialer = start(
        identity(&ca, "dialer"),
        &fx,
        Opts {
            peers: &[intruder.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the dialer refuses the foreign server",
        || dialer.metrics.refusals("unknown_ca") >= 1,
    )
    .await;
    assert!(dialer.engine.peer_names().is_empty());
    dialer.engine.shutdown().await;
    intruder.engine.shutdown().await;
    seed.engine.shutdown().await;
}

/// Five nodes in a full mesh; the list revoking one of them is handed to a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_peer_is_cut_off_by_the_whole_swarm() {
    revocation_swarm(5).await;
}

/// The same with twelve nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_peer_is_cut_off_by_a_twelve_node_swarm() {
    revocation_swarm(12).await;
}

/// `size` nodes in a full mesh (a seed, `size - 2` other honest nodes, the victim); the list revoking the
/// victim is handed to one honest node that is not the seed. Measures the time until every honest node
/// holds the list and has closed its connection to the victim, then checks that new connections
/// presenting the victim's certificate are refused by each of them.
async fn revocation_swarm(size: usize) {
    init();
    let data = payload(512 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    let seed = start(
        identity(&ca, "seed"),
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    let addr = seed.engine.local_addr();
    let mut others = Vec::new();
    for i in 1..size - 1 {
        others.push(
            start(
                identity(&ca, &format!("n{i}")),
                &fx,
                Opts {
                    peers: &[addr],
                    ..Opts::default()
                },
            )
            .await,
        );
    }
    let victim_id = identity(&ca, "victim");
    let victim_serial = victim_id.serial().to_owned();
    let mut victim = start(
        victim_id.clone(),
        &fx,
        Opts {
            peers: &[addr],
            ..Opts::default()
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), victim.engine.wait_complete())
        .await
        .unwrap()
        .unwrap();
    let mut honest: Vec<&Node> = vec![&seed];
    honest.extend(others.iter());
    wait_for(Duration::from_secs(20), "a full mesh", || {
        honest.iter().all(|n| n.engine.peer_names().len() == size - 1)
            && victim.engine.peer_names().len() == size - 1
    })
    .await;

    // The list goes to n1 only; n1 must pass it on.
    let list = revocation_list(&ca, 1, &[&victim_serial]);
    let t0 = Instant::now();
    assert!(others[0].engine.tls().install_revocations(list));
    let mut per_node = vec![None; honest.len()];
    loop {
        for (i, n) in honest.iter().enumerate() {
            if per_node[i].is_none()
                && n.engine.tls().revocations().is_some_and(|r| r.number == 1)
                && !n.engine.peer_names().iter().any(|p| p == "victim")
            {
                per_node[i] = Some(t0.elapsed());
            }
        }
        if per_node.iter().all(Option::is_some) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not every peer refused the revoked node within 10 s: {per_node:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all = t0.elapsed();
    let ms: Vec<String> = honest
        .iter()
        .zip(&per_node)
        .map(|(n, t)| format!("{}={:.1}ms", n.engine.name(), t.unwrap().as_secs_f64() * 1000.0))
        .collect();
    eprintln!(
        "revocation to refusal by every peer of a {size}-node swarm: {:.1} ms ({})",
        all.as_secs_f64() * 1000.0,
        ms.join(", ")
    );
    assert!(all < Duration::from_secs(10));
    // Every honest node closed (and counted) its open connection to the revoked node.
    for n in &honest {
        assert!(
            n.metrics.refusals("revoked") >= 1,
            "{} counted no revoked refusal",
            n.engine.name()
        );
        assert_eq!(n.metrics.revocation_list_number.get(), 1);
    }
    // The victim learns of each close from the peer's CONNECTION_CLOSE packet. On a loaded machine a
    // loopback datagram can be dropped; the victim's next keep-alive then draws the close (or a
    // stateless reset) again. So its own view may take up to a keep-alive interval more.
    let keep_alive = TransportLimits::default().keep_alive;
    wait_for(keep_alive * 2, "the victim is alone", || {
        victim.engine.peer_names().is_empty()
    })
    .await;

    // New connections presenting the revoked certificate are refused by every peer.
    let client = quinn_client(&FleetTls::new(victim_id));
    for n in &honest {
        let before = n.metrics.refusals("revoked");
        let res = tokio::time::timeout(Duration::from_secs(5), async {
            let conn = client.connect(n.engine.local_addr(), "pollen-peer")?.await?;
            let (mut s, mut r) = conn.open_bi().await?;
            s.write_all(b"\0\0\0\x01\x01").await?;
            let mut b = [0u8; 1];
            r.read_exact(&mut b).await?;
            anyhow::Ok(())
        })
        .await
        .unwrap();
        assert!(
            res.is_err(),
            "{} accepted the revoked certificate",
            n.engine.name()
        );
        assert!(n.metrics.refusals("revoked") > before);
    }
    // And the victim's own dial loop keeps failing: it stays alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(victim.engine.peer_names().is_empty());

    // The nodes that never got the list directly persisted it too.
    for n in &honest {
        let stored = std::fs::read(n.dir.path().join("revocations.crl")).unwrap();
        assert_eq!(verify_revocation_list(&stored, ca.cert_pem()).unwrap().number, 1);
    }
    victim.engine.shutdown().await;
    for n in others {
        n.engine.shutdown().await;
    }
    seed.engine.shutdown().await;
}

fn quinn_client(tls: &FleetTls) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(tls.quic_client(&TransportLimits::default()).unwrap());
    ep
}

/// A node that joins later learns the list from the peer it dials (sent after hello), persists it, and a
/// restarted node loads it again; a node started with its own certificate revoked refuses to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_list_spreads_to_late_joiners_and_survives_restarts() {
    init();
    let data = payload(256 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    let gone = identity(&ca, "gone");
    let seed_tls = FleetTls::new(identity(&ca, "seed"));
    assert!(seed_tls.install_revocations(revocation_list(&ca, 3, &[gone.serial()])));
    // An older list is not installed over a newer one.
    assert!(!seed_tls.install_revocations(revocation_list(&ca, 2, &[])));
    let seed = start(
        seed_tls,
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    let late_tls = FleetTls::new(identity(&ca, "late"));
    let mut late = start(
        late_tls.clone(),
        &fx,
        Opts {
            peers: &[seed.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    let took = wait_for(Duration::from_secs(10), "the late node learns the list", || {
        late_tls.revocations().is_some_and(|r| r.number == 3)
    })
    .await;
    eprintln!(
        "late joiner learned the list {:.1} ms after start",
        took.as_secs_f64() * 1000.0
    );
    assert!(late_tls.is_revoked(gone.serial()));
    tokio::time::timeout(Duration::from_secs(30), late.engine.wait_complete())
        .await
        .unwrap()
        .unwrap();
    wait_for(Duration::from_secs(5), "persisted", || {
        late.dir.path().join("revocations.crl").exists()
    })
    .await;
    let dir = late.dir;
    late.engine.shutdown().await;

    // Restart with a fresh handle: the persisted list is loaded at start.
    let again_tls = FleetTls::new(identity(&ca, "late"));
    let again = start(
        again_tls.clone(),
        &fx,
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(again_tls.revocations().map(|r| r.number), Some(3));
    assert_eq!(again.metrics.revocation_list_number.get(), 3);
    let dir = again.dir;
    again.engine.shutdown().await;

    // The revoked node itself, restarted on the same data dir, refuses to run with a typed error.
    match try_start(
        FleetTls::new(gone.clone()),
        &fx,
        Opts {
            dir: Some(dir),
            ..Opts::default()
        },
    )
    .await
    {
        Err((EngineError::Revoked { serial, list }, _)) => {
            assert_eq!(serial, gone.serial());
            assert_eq!(list, 3);
        }
        Err((e, _)) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a node with a revoked certificate started"),
    }
    seed.engine.shutdown().await;
}

/// A running node that learns its own certificate is revoked stops taking part with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_own_certificate_is_revoked_stops() {
    init();
    let data = payload(4 * 1024 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    let seed = start(
        identity(&ca, "seed"),
        &fx,
        Opts {
            seed_with: Some(&data),
            upload_limit: Some(512 * 1024),
            ..Opts::default()
        },
    )
    .await;
    let mine = identity(&ca, "self-revoked");
    let mut node = start(
        mine.clone(),
        &fx,
        Opts {
            peers: &[seed.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "connected", || {
        !node.engine.peer_names().is_empty()
    })
    .await;
    assert!(
        node.engine
            .tls()
            .install_revocations(revocation_list(&ca, 1, &[mine.serial()]))
    );
    let r = tokio::time::timeout(Duration::from_secs(5), node.engine.wait_complete())
        .await
        .unwrap();
    let Err(EngineError::Fatal(e)) = r else {
        panic!("expected a fatal error, got {r:?}")
    };
    assert!(
        matches!(&*e, EngineError::Revoked { serial, list: 1 } if serial == mine.serial()),
        "{e}"
    );
    eprintln!("own revocation: {e}");
    wait_for(Duration::from_secs(5), "every connection closed", || {
        node.engine.peer_names().is_empty() && seed.engine.peer_names().is_empty()
    })
    .await;
    node.engine.shutdown().await;
    seed.engine.shutdown().await;
}

/// Both ends rotate their certificates while a multi-MiB transfer runs: the transfer completes, and new
/// connections present the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_transfer_completes_and_new_connections_use_the_new_certificate() {
    init();
    let data = payload(8 * 1024 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 256 * 1024, test_meta()).unwrap();
    let ca = ca();
    let seed_tls = FleetTls::new(identity(&ca, "seed"));
    let seed = start(
        seed_tls.clone(),
        &fx,
        Opts {
            seed_with: Some(&data),
            upload_limit: Some(2 * 1024 * 1024),
            ..Opts::default()
        },
    )
    .await;
    let leech_tls = FleetTls::new(identity(&ca, "leech"));
    let old_leech_serial = leech_tls.current().serial().to_owned();
    let old_seed_serial = seed_tls.current().serial().to_owned();
    let mut leech = start(
        leech_tls.clone(),
        &fx,
        Opts {
            peers: &[seed.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(20), "the transfer is under way", || {
        leech.metrics.received("peer") >= 1024 * 1024
    })
    .await;
    // New certificates, longer-lived, for both ends.
    let new_seed = identity_at(&ca, "seed", SystemTime::now(), 2 * DAY);
    let new_leech = identity_at(&ca, "leech", SystemTime::now(), 2 * DAY);
    seed_tls.rotate(new_seed.clone()).unwrap();
    leech_tls.rotate(new_leech.clone()).unwrap();
    let at_rotation = leech.metrics.received("peer");
    assert!(
        at_rotation < data.len() as u64,
        "rotated after the transfer ended ({at_rotation} bytes)"
    );
    eprintln!(
        "rotated at {:.1} of {:.1} MiB",
        at_rotation as f64 / 1048576.0,
        data.len() as f64 / 1048576.0
    );
    tokio::time::timeout(Duration::from_secs(60), leech.engine.wait_complete())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(leech.engine.payload_path()).unwrap(), data);

    // The expiry metric follows the rotation.
    let expiry = |id: &TlsIdentity| {
        id.not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    wait_for(Duration::from_secs(5), "expiry metric updated", || {
        seed.metrics.certificate_expiry.get() == expiry(&new_seed)
            && leech.metrics.certificate_expiry.get() == expiry(&new_leech)
    })
    .await;

    // A new connection to the seed sees its new certificate.
    let probe = FleetTls::new(identity(&ca, "probe"));
    let client = quinn_client(&probe);
    let conn = client
        .connect(seed.engine.local_addr(), "pollen-peer")
        .unwrap()
        .await
        .unwrap();
    let (name, serial) = tls::peer_identity(&conn).unwrap();
    assert_eq!(name, "seed");
    assert_eq!(serial, new_seed.serial());
    assert_ne!(serial, old_seed_serial);
    conn.close(0u32.into(), b"done");

    // A new connection from the leech's handle presents its new certificate.
    let server = quinn::Endpoint::server(
        probe.quic_server(&TransportLimits::default()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let leech_client = quinn_client(&leech_tls);
    let dial = leech_client
        .connect(server.local_addr().unwrap(), "pollen-peer")
        .unwrap();
    let accepted = async { server.accept().await.unwrap().await.unwrap() };
    let (out, inc) = tokio::join!(dial, accepted);
    let out = out.unwrap();
    let (name, serial) = tls::peer_identity(&inc).unwrap();
    assert_eq!(name, "leech");
    assert_eq!(serial, new_leech.serial());
    assert_ne!(serial, old_leech_serial);
    out.close(0u32.into(), b"done");

    // Rotation to another node's name or another CA is refused.
    assert!(leech_tls.rotate(identity(&ca, "someone-else")).is_err());
    let other = FleetCa::generate("other fleet", DAY).unwrap();
    assert!(leech_tls.rotate(identity(&other, "leech")).is_err());
    leech.engine.shutdown().await;
    seed.engine.shutdown().await;
}

/// A fleet member the index does not list is refused at connection registration: it gets a typed
/// `NotAuthorised` error and nothing about the swarm (no hello, have-map, peer addresses or fetching
/// hints), it gets no chunk, the refusal is counted, and it does not redial the refusing peer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unassigned_peer_gets_nothing_and_the_refusal_is_counted() {
    init();
    let data = payload(256 * 1024);
    let mut meta = test_meta();
    meta.peers = vec!["n0".into(), "seed".into()];
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, meta).unwrap();
    let ca = ca();
    let seed = start(
        identity(&ca, "seed"),
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    let addr = seed.engine.local_addr();
    let mut member = start(
        identity(&ca, "n0"),
        &fx,
        Opts {
            peers: &[addr],
            ..Opts::default()
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), member.engine.wait_complete())
        .await
        .unwrap()
        .unwrap();

    // A raw client with the outsider's (valid) certificate sees only the refusal.
    let client = quinn_client(&FleetTls::new(identity(&ca, "outsider")));
    let conn = client.connect(addr, "pollen-peer").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello {
        version: protocol::VERSION,
        site: "default".into(),
        indexes: vec![fx.verified.id()],
    };
    send.write_all(&hello.to_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut received = Vec::new();
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv, &mut buf)).await
    {
        received.push(m);
    }
    assert!(
        matches!(
            received.as_slice(),
            [Message::Error {
                code: ErrorCode::NotAuthorised,
                ..
            }]
        ),
        "the outsider received {received:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == protocol::CLOSE_REFUSED.into()),
        "{closed:?}"
    );
    assert_eq!(seed.metrics.refusals("not_authorised"), 1);

    // An outsider engine: refused, never registered on either side, gets nothing.
    let mut outsider = start(
        identity(&ca, "outsider"),
        &fx,
        Opts {
            peers: &[addr],
            ..Opts::default()
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the seed refuses the outsider engine",
        || seed.metrics.refusals("not_authorised") >= 2,
    )
    .await;
    let r = tokio::time::timeout(Duration::from_secs(5), outsider.engine.wait_complete()).await;
    assert!(r.is_err(), "the unassigned node must not complete");
    assert_eq!(outsider.metrics.received("peer"), 0);
    assert!(outsider.engine.peer_names().is_empty());
    assert!(!seed.engine.peer_names().iter().any(|p| p == "outsider"));
    assert!(!member.engine.peer_names().iter().any(|p| p == "outsider"));
    // Refused once: the outsider leaves the seed alone instead of redialling every 2 s.
    assert_eq!(seed.metrics.refusals("not_authorised"), 2);
    for n in [outsider, member, seed] {
        n.engine.shutdown().await;
    }
}

/// An open connection does not outlive the peer's certificate: both ends close it when the certificate's
/// notAfter passes (the handshake checked the validity window only once), and count the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_when_the_peer_certificate_expires() {
    init();
    let data = payload(256 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = tls::testing::TestCa::new("short-lived fleet");
    let seed = start(
        ca.issue("seed").identity(&ca),
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    // Certificates carry whole seconds: expire on a second boundary, a few seconds from now.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(now + 6);
    let short = ca
        .issue_valid("brief", SystemTime::now() - Duration::from_secs(60), not_after)
        .identity(&ca);
    assert_eq!(short.not_after(), not_after);
    let mut brief = start(
        short,
        &fx,
        Opts {
            peers: &[seed.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), brief.engine.wait_complete())
        .await
        .unwrap()
        .unwrap();
    assert!(seed.engine.peer_names().iter().any(|p| p == "brief"));
    assert!(SystemTime::now() < not_after, "the test machine is too slow");
    wait_for(Duration::from_secs(10), "both ends close at expiry", || {
        seed.engine.peer_names().is_empty() && brief.engine.peer_names().is_empty()
    })
    .await;
    let late = SystemTime::now()
        .duration_since(not_after)
        .expect("closed before the certificate expired");
    eprintln!(
        "connection closed {:.1} ms after the peer certificate's notAfter",
        late.as_secs_f64() * 1000.0
    );
    assert!(late < Duration::from_secs(2), "closed {late:?} after expiry");
    assert!(seed.metrics.refusals("expired") >= 1);
    // The expired node's dials are refused from now on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(seed.engine.peer_names().is_empty());
    brief.engine.shutdown().await;
    seed.engine.shutdown().await;
}

/// A revocation list from a peer that is not newer than the one in force is dropped without a signature
/// check; a newer one that does not verify (or is not a list) closes the connection and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_lists_that_do_not_verify_is_cut_off() {
    init();
    let data = payload(64 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    let node_tls = FleetTls::new(identity(&ca, "node"));
    assert!(node_tls.install_revocations(revocation_list(&ca, 5, &[])));
    let node = start(node_tls.clone(), &fx, Opts::default()).await;
    let forger = FleetCa::generate("test fleet", 30 * DAY).unwrap();
    let forged = |number| revocation_list(&forger, number, &[]).der;

    let client = quinn_client(&FleetTls::new(identity(&ca, "prober")));
    let connect = async || {
        let conn = client
            .connect(node.engine.local_addr(), "pollen-peer")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello {
            version: protocol::VERSION,
            site: "default".into(),
            indexes: vec![fx.verified.id()],
        };
        send.write_all(&hello.to_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let first = read_frame(&mut recv, &mut buf).await.unwrap();
        assert!(matches!(first, Some(Message::Hello { .. })), "{first:?}");
        (conn, send, recv)
    };
    let refused = |conn: &quinn::Connection| {
        matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == protocol::CLOSE_REFUSED.into())
    };

    // Older and equal numbers, forged or not: dropped unverified, the connection lives on.
    let (conn, mut send, _recv) = connect().await;
    for crl in [forged(3), forged(5), revocation_list(&ca, 5, &[]).der] {
        send.write_all(&Message::Revocations { crl }.to_bytes())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(node.metrics.refusals("bad_revocation_list"), 0);
    // A newer forged list: closed and counted, the list in force stays.
    send.write_all(&Message::Revocations { crl: forged(9) }.to_bytes())
        .await
        .unwrap();
    wait_for(Duration::from_secs(5), "closed after a forged list", || {
        refused(&conn)
    })
    .await;
    assert_eq!(node.metrics.refusals("bad_revocation_list"), 1);
    assert_eq!(node_tls.revocation_number(), 5);

    // Bytes that are not a list at all: closed without a signature check.
    let (conn, mut send, _recv) = connect().await;
    send.write_all(
        &Message::Revocations {
            crl: vec![0x30, 0x03, 1, 2, 3],
        }
        .to_bytes(),
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(5), "closed after garbage", || refused(&conn)).await;
    assert_eq!(node.metrics.refusals("bad_revocation_list"), 2);

    // A genuine newer list is still taken from a peer.
    let (conn, mut send, _recv) = connect().await;
    send.write_all(
        &Message::Revocations {
            crl: revocation_list(&ca, 6, &[]).der,
        }
        .to_bytes(),
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(5), "the newer list is installed", || {
        node_tls.revocation_number() == 6
    })
    .await;
    assert!(conn.close_reason().is_none());

    // What a verification costs: a list near the wire limit.
    let serials: Vec<String> = (0..3000u32)
        .map(|i| format!("{:032x}", u128::from(i) << 64 | 0xabc))
        .collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    let big = revocation_list(&ca, 7, &refs).der;
    assert!(big.len() <= protocol::MAX_CRL_LEN as usize, "{} bytes", big.len());
    let t0 = Instant::now();
    let n = 20;
    for _ in 0..n {
        verify_revocation_list(&big, ca.cert_pem()).unwrap();
    }
    let per = t0.elapsed() / n;
    let t0 = Instant::now();
    for _ in 0..n {
        assert_eq!(pollen_edge_node::crl_intake::crl_number(&big), Some(7));
    }
    let number = t0.elapsed() / n;
    eprintln!(
        "a {}-byte list ({} serials): number read in {:.3} ms, full verification {:.3} ms (debug build)",
        big.len(),
        serials.len(),
        number.as_secs_f64() * 1000.0,
        per.as_secs_f64() * 1000.0
    );
    node.engine.shutdown().await;
}

/// A node whose own verifier refuses a static peer as revoked does not redial it every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_refused_as_revoked_when_dialled_is_not_redialled_at_once() {
    init();
    let data = payload(64 * 1024);
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, test_meta()).unwrap();
    let ca = ca();
    // The revoked node does not hold the list, so it keeps accepting handshakes.
    let revoked_id = identity(&ca, "revoked");
    let revoked = start(
        revoked_id.clone(),
        &fx,
        Opts {
            seed_with: Some(&data),
            ..Opts::default()
        },
    )
    .await;
    let dialer_tls = FleetTls::new(identity(&ca, "dialer"));
    assert!(dialer_tls.install_revocations(revocation_list(&ca, 1, &[revoked_id.serial()])));
    let dialer = start(
        dialer_tls,
        &fx,
        Opts {
            peers: &[revoked.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the dialer refuses the revoked server",
        || dialer.metrics.refusals("revoked") >= 1,
    )
    .await;
    // The dial loop runs every 2 s: three periods without a new handshake.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        dialer.metrics.refusals("revoked"),
        1,
        "the revoked peer was redialled"
    );
    assert!(dialer.engine.peer_names().is_empty());
    dialer.engine.shutdown().await;
    revoked.engine.shutdown().await;
}

/// A node that dials a peer its index does not authorise refuses it once and does not redial it every
/// few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_peer_the_index_does_not_list_is_not_redialled_at_once() {
    init();
    let data = payload(64 * 1024);
    let mut meta = test_meta();
    meta.peers = vec!["member".into(), "seed".into()];
    let fx = Fixture::new("127.0.0.1:1", "test/app", &data, 64 * 1024, meta).unwrap();
    let ca = ca();
    let outsider = start(identity(&ca, "outsider"), &fx, Opts::default()).await;
    let member = start(
        identity(&ca, "member"),
        &fx,
        Opts {
            peers: &[outsider.engine.local_addr()],
            ..Opts::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "the member refuses the outsider", || {
        member.metrics.refusals("not_authorised") >= 1
    })
    .await;
    // The dial loop runs every 2 s: three periods without a new connection.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        member.metrics.refusals("not_authorised"),
        1,
        "the unlisted peer was redialled"
    );
    assert!(member.engine.peer_names().is_empty());
    assert!(outsider.engine.peer_names().is_empty());
    member.engine.shutdown().await;
    outsider.engine.shutdown().await;
}

/// An index of `data` that lists `listed`, a fleet CA, and node `seed` holding the whole payload and
/// checking grants with the index's director key.
async fn listed_seed(data: &[u8], listed: &[&str]) -> (Fixture, FleetCa, Node) {
    let mut meta = test_meta();
    meta.peers = listed.iter().map(|n| n.to_string()).collect();
    let fx = Fixture::new("127.0.0.1:1", "test/app", data, 64 * 1024, meta).unwrap();
    let ca = ca();
    let seed = start(
        identity(&ca, "seed"),
        &fx,
        Opts {
            seed_with: Some(data),
            director: Some(fx.trust.director_key.clone()),
            ..Opts::default()
        },
    )
    .await;
    (fx, ca, seed)
}

/// A node `name` that holds `grant` and checks its peers' grants with the fixture's director key.
async fn start_granted(ca: &FleetCa, fx: &Fixture, name: &str, peers: &[SocketAddr], grant: Vec<u8>) -> Node {
    start(
        identity(ca, name),
        fx,
        Opts {
            peers,
            grant: Some(grant),
            director: Some(fx.trust.director_key.clone()),
            ..Opts::default()
        },
    )
    .await
}

/// A grant for `node` on the fixture's index, signed by `key`.
fn grant_for(fx: &Fixture, key: &pollen_trust::SigningKey, node: &str) -> Vec<u8> {
    let text = pollen_trust::grant::sign(key, fx.verified.index_reference(), node).unwrap();
    pollen_trust::grant::decode(&text).unwrap()
}

/// Nodes that joined after the index was built are admitted by the director's grant: a late node fetches
/// the whole payload from listed peers (the origin is off), two late nodes trade with each other, and a
/// grant signed by another key, or made out to another node, is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_nodes_with_a_director_grant_join_the_swarm() {
    init();
    let data = payload(512 * 1024);
    let (fx, ca, seed) = listed_seed(&data, &["member", "seed"]).await;
    let addr = seed.engine.local_addr();

    // A late node with its grant: admitted by the listed seed, completes from it.
    let mut late1 = start_granted(&ca, &fx, "late1", &[addr], grant_for(&fx, &fx.director, "late1")).await;
    tokio::time::timeout(Duration::from_secs(20), late1.engine.wait_complete())
        .await
        .expect("the granted late node completes")
        .unwrap();
    assert_eq!(late1.metrics.received("peer"), data.len() as u64);
    assert!(seed.engine.peer_names().iter().any(|p| p == "late1"));
    assert_eq!(seed.metrics.refusals("not_authorised"), 0);

    // Two late nodes: late2 dials late1 only, and both are unlisted; each checks the other's grant.
    let late1_addr = late1.engine.local_addr();
    let mut late2 = start_granted(
        &ca,
        &fx,
        "late2",
        &[late1_addr],
        grant_for(&fx, &fx.director, "late2"),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), late2.engine.wait_complete())
        .await
        .expect("the second late node completes")
        .unwrap();
    assert!(late1.engine.peer_names().iter().any(|p| p == "late2"));
    assert!(late2.metrics.received("peer") > 0);

    // A grant from another key, and one made out to another node: refused, nothing received.
    let stranger = pollen_trust::SigningKey::generate().unwrap();
    for (name, grant) in [
        ("forger", grant_for(&fx, &stranger, "forger")),
        ("borrower", grant_for(&fx, &fx.director, "late1")),
    ] {
        let before = seed.metrics.refusals("bad_grant");
        let mut n = start_granted(&ca, &fx, name, &[addr], grant).await;
        wait_for(Duration::from_secs(10), "the seed refuses the bad grant", || {
            seed.metrics.refusals("bad_grant") > before
        })
        .await;
        let r = tokio::time::timeout(Duration::from_secs(3), n.engine.wait_complete()).await;
        assert!(r.is_err(), "{name} must not complete");
        assert_eq!(n.metrics.received("peer"), 0, "{name} received data");
        assert!(!seed.engine.peer_names().iter().any(|p| p == name));
        n.engine.shutdown().await;
    }
    for n in [late2, late1, seed] {
        n.engine.shutdown().await;
    }
}

/// A grant that arrives while the node runs (the operator wrote it into a running assignment) is taken
/// at once: the node, refused until then, dials its peers again and completes from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_given_to_a_running_node_lets_it_in() {
    init();
    let data = payload(256 * 1024);
    let (fx, ca, seed) = listed_seed(&data, &["seed"]).await;
    let director = Some(fx.trust.director_key.clone());
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut late = start(
        identity(&ca, "late"),
        &fx,
        Opts {
            peers: &[seed.engine.local_addr()],
            director,
            grant_updates: Some(rx),
            ..Opts::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "the seed refuses the late node", || {
        seed.metrics.refusals("not_authorised") >= 1
    })
    .await;
    assert_eq!(late.metrics.received("peer"), 0);
    // Refused once, the node would not dial the seed again for a minute; the grant lifts that.
    tx.send_replace(Some(grant_for(&fx, &fx.director, "late")));
    tokio::time::timeout(Duration::from_secs(10), late.engine.wait_complete())
        .await
        .expect("the late node completes once it holds a grant")
        .unwrap();
    assert_eq!(late.metrics.received("peer"), data.len() as u64);
    late.engine.shutdown().await;
    seed.engine.shutdown().await;
}
