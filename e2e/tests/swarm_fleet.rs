//! Multi-node swarm tests: real QUIC with mutual TLS on 127.0.0.1, the real registry (Debian's
//! `docker-registry`) as the origin behind a byte-counting proxy, and an index really published, signed
//! and verified by pollen-trust. Each node is `pollen_edge_node::standalone::run`, the code behind
//! `pollen-edge-node standalone`.

mod swarm_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pollen_edge_node::engine::{Engine, EngineConfig};
use pollen_edge_node::metrics::{Metrics, PeerLabel};
use pollen_edge_node::standalone::{self, Outcome, StandaloneError};
use pollen_edge_node::store::Store;
use swarm_support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Run = JoinHandle<Result<Outcome, StandaloneError>>;

/// Runs a node that knows its static peers' names (as `--peer NAME@ADDR` gives them).
fn spawn_node(
    opts: standalone::StandaloneOptions,
    names: &[String],
    shutdown: &CancellationToken,
) -> (Arc<Metrics>, Run) {
    let m = Arc::new(Metrics::default());
    let task = tokio::spawn(standalone::run_with_members(
        opts,
        names.to_vec(),
        m.clone(),
        shutdown.clone(),
    ));
    (m, task)
}

/// Waits until every node installed (its `current` link exists and progress is 1), then stops them all.
async fn finish(
    nodes: Vec<(Arc<Metrics>, Run)>,
    roots: &[std::path::PathBuf],
    p: &Published,
    shutdown: CancellationToken,
    limit: Duration,
) -> Vec<Outcome> {
    let ok = wait_for(limit, || {
        nodes
            .iter()
            .all(|(m, t)| progress(m, p) >= 1.0 || t.is_finished())
            && roots.iter().all(|r| r.join("current").exists())
    })
    .await;
    let progress_now: Vec<f64> = nodes.iter().map(|(m, _)| progress(m, p)).collect();
    shutdown.cancel();
    // Said before the runs are read: a node stopped short of completion ends its run with `Stopped`.
    assert!(ok, "not every node completed in time: {progress_now:?}");
    let mut out = Vec::new();
    for (_, t) in nodes {
        out.push(t.await.expect("node task").expect("node run"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_complete_and_read_the_origin_about_once() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 8 * 1024 * 1024;
    // The nodes see the registry through the proxy: publish through it, so that the signatures name
    // the repository the nodes fetch from, then count the origin's egress from zero.
    let proxy = Proxy::start(reg.addr()).await;
    let p = publish(
        &proxy.host(),
        "v1",
        payload(size, 1),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    proxy.egress.store(0, std::sync::atomic::Ordering::SeqCst);
    let index_ref = p.index_ref.clone();
    let addrs: Vec<_> = (0..8).map(|_| free_udp()).collect();
    let shutdown = CancellationToken::new();
    let mut nodes = Vec::new();
    let mut roots = Vec::new();
    let names: Vec<String> = (0..addrs.len()).map(|i| format!("n{i}")).collect();
    for (i, a) in addrs.iter().enumerate() {
        let o = fleet.node(&names[i], *a, &addrs, &p, &index_ref);
        roots.push(o.install_root.clone());
        nodes.push(spawn_node(o, &names, &shutdown));
    }
    let metrics: Vec<Arc<Metrics>> = nodes.iter().map(|(m, _)| m.clone()).collect();
    let outs = finish(nodes, &roots, &p, shutdown, Duration::from_secs(120)).await;
    for o in &outs {
        assert_eq!(std::fs::read(&o.installed).unwrap(), p.payload, "installed bytes");
    }
    let blob: u64 = metrics.iter().map(|m| m.received("origin")).sum();
    let wire = proxy.egress.load(Ordering::SeqCst);
    let copies_blob = blob as f64 / size as f64;
    let copies_wire = wire as f64 / size as f64;
    let slowest = outs.iter().map(|o| o.seconds).fold(0.0, f64::max);
    eprintln!(
        "8 nodes, 8 MiB: origin blob bytes {copies_blob:.4} copies, origin HTTP egress (headers, manifests, \
         signatures, index included) {copies_wire:.4} copies, last node complete after {slowest:.2} s"
    );
    assert!(
        copies_blob >= 1.0,
        "every chunk came from the origin at least once"
    );
    assert!(copies_wire <= 1.08, "origin read {copies_wire:.4} copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_completes_when_the_origin_dies_after_the_first_copy() {
    let Some(mut reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 4 * 1024 * 1024;
    // The nodes see the registry through the proxy: publish through it, so that the signatures name
    // the repository the nodes fetch from, then count the origin's egress from zero.
    let proxy = Proxy::start(reg.addr()).await;
    let p = publish(
        &proxy.host(),
        "v1",
        payload(size, 2),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    proxy.egress.store(0, std::sync::atomic::Ordering::SeqCst);
    let index_ref = p.index_ref.clone();
    let addrs: Vec<_> = (0..6).map(|_| free_udp()).collect();
    let shutdown = CancellationToken::new();
    let mut nodes = Vec::new();
    let mut roots = Vec::new();
    let names: Vec<String> = (0..addrs.len()).map(|i| format!("d{i}")).collect();
    for (i, a) in addrs.iter().enumerate() {
        let mut o = fleet.node(&names[i], *a, &addrs, &p, &index_ref);
        // Slow peers so that the fleet is far from done when the origin has sent its copy.
        o.upload_limit = Some(1024 * 1024);
        roots.push(o.install_root.clone());
        nodes.push(spawn_node(o, &names, &shutdown));
    }
    let metrics: Vec<Arc<Metrics>> = nodes.iter().map(|(m, _)| m.clone()).collect();
    let first_copy = wait_for(Duration::from_secs(60), || {
        metrics.iter().map(|m| m.received("origin")).sum::<u64>() >= size as u64
    })
    .await;
    assert!(first_copy, "the origin never sent a full copy");
    proxy.down.store(true, Ordering::SeqCst);
    reg.stop().await.expect("stop registry");
    let done_at_outage: usize = metrics.iter().filter(|m| progress(m, &p) >= 1.0).count();
    eprintln!("origin down; {done_at_outage} of 6 nodes complete at that moment");
    assert!(done_at_outage < 6, "the outage must happen mid-rollout");
    let outs = finish(nodes, &roots, &p, shutdown, Duration::from_secs(120)).await;
    for o in &outs {
        assert_eq!(std::fs::read(&o.installed).unwrap(), p.payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_is_banned_and_the_rollout_completes() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 2 * 1024 * 1024;
    // The nodes see the registry through the proxy: publish through it, so that the signatures name
    // the repository the nodes fetch from, then count the origin's egress from zero.
    let proxy = Proxy::start(reg.addr()).await;
    let p = publish(
        &proxy.host(),
        "v1",
        payload(size, 3),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    proxy.egress.store(0, std::sync::atomic::Ordering::SeqCst);
    // The hostile node holds every chunk and corrupts each one it serves.
    let evil_dir = fleet.dir.path().join("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();
    {
        let s = Store::open(&evil_dir, &p.verified).unwrap();
        for c in 0..p.verified.chunk_count() {
            let r = p.verified.chunk_range(c);
            s.put(c, &p.payload[r.start as usize..r.end as usize]).unwrap();
        }
        s.persist().unwrap();
    }
    let mut cfg = EngineConfig::new(fleet.ca.issue("evil").identity(&fleet.ca), free_udp(), evil_dir);
    cfg.origin = false;
    cfg.corrupt_uploads = true;
    let evil_shutdown = CancellationToken::new();
    let evil = Engine::start(
        cfg,
        p.verified.clone(),
        Arc::new(Metrics::default()),
        evil_shutdown.clone(),
    )
    .await
    .unwrap();
    let evil_addr = evil.local_addr();

    let index_ref = p.index_ref.clone();
    let addrs: Vec<_> = (0..4).map(|_| free_udp()).collect();
    let shutdown = CancellationToken::new();
    let mut nodes = Vec::new();
    let mut roots = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut peers = addrs.clone();
        peers.push(evil_addr);
        let o = fleet.node(&format!("h{i}"), *a, &peers, &p, &index_ref);
        roots.push(o.install_root.clone());
        nodes.push(spawn_node(o, &[], &shutdown));
    }
    let metrics: Vec<Arc<Metrics>> = nodes.iter().map(|(m, _)| m.clone()).collect();
    let outs = finish(nodes, &roots, &p, shutdown, Duration::from_secs(120)).await;
    for o in &outs {
        assert_eq!(std::fs::read(&o.installed).unwrap(), p.payload);
    }
    let bans: Vec<u64> = metrics
        .iter()
        .map(|m| m.bans.get_or_create(&PeerLabel { peer: "evil".into() }).get())
        .collect();
    let fails: u64 = metrics
        .iter()
        .map(|m| {
            m.verification_failures
                .get_or_create(&PeerLabel { peer: "evil".into() })
                .get()
        })
        .sum();
    eprintln!("bans of the hostile peer per node: {bans:?}; verification failures: {fails}");
    assert!(bans.iter().all(|&b| b <= 1), "banned at most once per node");
    assert!(
        bans.iter().sum::<u64>() >= 1,
        "the hostile peer was caught and banned"
    );
    assert!(
        fails >= bans.iter().sum::<u64>(),
        "every ban follows a verification failure"
    );
    evil_shutdown.cancel();
    evil.shutdown().await;
}

/// Rollback protection in standalone mode: with a version installed, an index of a lower sequence for
/// the same target is refused before any chunk moves, and the installed version stays active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_older_than_the_installed_version_is_refused() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 256 * 1024;
    let newer = publish(
        &reg.host(),
        "v2",
        payload(size, 2),
        64 * 1024,
        2,
        fleet.dir.path(),
    )
    .await;
    let mut o = fleet.node("solo", free_udp(), &[], &newer, &newer.index_ref);
    o.seed_for = Some(Duration::ZERO);
    let out = standalone::run_with_metrics(o.clone(), Arc::new(Metrics::default()), CancellationToken::new())
        .await
        .expect("the newer version installs");
    assert_eq!(std::fs::read(&out.installed).unwrap(), newer.payload);

    let older = publish(
        &reg.host(),
        "v1",
        payload(size, 1),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    let mut o2 = o.clone();
    o2.index = older.index_ref.clone();
    o2.publisher_keys = vec![older.publisher_pem.clone()];
    o2.director_key = older.director_pem.clone();
    let m = Arc::new(Metrics::default());
    let err = standalone::run_with_metrics(o2, m.clone(), CancellationToken::new())
        .await
        .expect_err("a lower sequence is refused");
    assert!(
        matches!(
            err,
            StandaloneError::Verify(pollen_trust::verify::VerifyError::Rollback {
                sequence: 1,
                last: 2,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(m.received("origin") + m.received("peer"), 0, "no chunk moved");
    let current = std::fs::read(o.install_root.join("current").join("payload.bin")).unwrap();
    assert_eq!(current, newer.payload, "the newer version stays active");
}

/// The origin allowance the agent passes in from the operator: a node reads nothing from the origin
/// while its allowance is spent, resumes without a restart when it is raised, and never reads past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_reads_stop_at_the_allowance_and_resume_when_it_grows() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 2 * 1024 * 1024;
    let chunk = 64 * 1024;
    // The nodes see the registry through the proxy: publish through it, so that the signatures name
    // the repository the nodes fetch from, then count the origin's egress from zero.
    let proxy = Proxy::start(reg.addr()).await;
    let p = publish(
        &proxy.host(),
        "v1",
        payload(size, 7),
        chunk as u32,
        1,
        fleet.dir.path(),
    )
    .await;
    proxy.egress.store(0, std::sync::atomic::Ordering::SeqCst);
    let index_ref = p.index_ref.clone();
    let addr = free_udp();
    let shutdown = CancellationToken::new();
    // A lone node: every chunk must come from the origin. It may read a quarter of the payload.
    let (tx, rx) = tokio::sync::watch::channel(Some(size as u64 / 4));
    let mut o = fleet.node("solo", addr, &[], &p, &index_ref);
    o.origin_allowance = Some(rx);
    let root = o.install_root.clone();
    let (m, task) = spawn_node(o, &[], &shutdown);
    assert!(
        wait_for(Duration::from_secs(30), || m.received("origin")
            == size as u64 / 4)
        .await,
        "the first quarter arrives: {} bytes",
        m.received("origin")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        m.received("origin"),
        size as u64 / 4,
        "no origin byte past the allowance"
    );
    assert!(progress(&m, &p) < 0.3);
    // The operator grants the rest: the same run finishes.
    tx.send_replace(Some(size as u64));
    let done = wait_for(Duration::from_secs(60), || root.join("current").exists()).await;
    shutdown.cancel();
    let out = task.await.expect("node task").expect("node run");
    assert!(done, "installed after the allowance grew");
    assert_eq!(std::fs::read(&out.installed).unwrap(), p.payload);
    assert_eq!(m.received("origin"), size as u64, "each chunk read once");
}

/// Rate limits the agent passes in from the assignment apply to a running node: paced at the limit
/// while it holds, at full speed once it is lifted, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_download_limit_applies_without_a_restart() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 8 * 1024 * 1024;
    let p = publish(
        &reg.host(),
        "v1",
        payload(size, 8),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    let shutdown = CancellationToken::new();
    // A lone node reading from the origin at 128 KiB/s (a burst of 256 KiB).
    let limits = pollen_edge_node::ratelimit::RateLimits {
        upload: None,
        download: Some(128 * 1024),
    };
    let (tx, rx) = tokio::sync::watch::channel(limits);
    let mut o = fleet.node("solo", free_udp(), &[], &p, &p.index_ref);
    o.download_limit = limits.download;
    o.rate_limits = Some(rx);
    let root = o.install_root.clone();
    let (m, task) = spawn_node(o, &[], &shutdown);
    assert!(
        wait_for(Duration::from_secs(30), || m.received("origin") > 0).await,
        "the first bytes arrive"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paced = m.received("origin");
    // At most the burst, 128 KiB/s for the time since start, and the chunks in flight at the time.
    assert!(paced < size as u64 / 4, "{paced} bytes in about 2 s at 128 KiB/s");
    tx.send_replace(pollen_edge_node::ratelimit::RateLimits::default());
    let done = wait_for(Duration::from_secs(30), || root.join("current").exists()).await;
    shutdown.cancel();
    assert!(done, "installed soon after the limit was lifted");
    let out = task.await.expect("node task").expect("node run");
    assert_eq!(std::fs::read(&out.installed).unwrap(), p.payload);
}

/// A closed activation window stages the payload: the node downloads and verifies it, keeps serving
/// (a peer that never reads the origin completes from it), and installs only once the window opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_activation_window_stages_and_keeps_serving_until_it_opens() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 4 * 1024 * 1024;
    let p = publish(
        &reg.host(),
        "v1",
        payload(size, 9),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    let shutdown = CancellationToken::new();
    let (staged_addr, peer_addr) = (free_udp(), free_udp());
    // A window that opens in three hours (UTC): closed now.
    let closed = pollen_e2e::fleet::window_opening_in(180);
    let (tx, rx) = tokio::sync::watch::channel(Some(closed));
    let mut s = fleet.node("staged", staged_addr, &[peer_addr], &p, &p.index_ref);
    s.activation = Some(rx);
    let staged_root = s.install_root.clone();
    let mut o = fleet.node("peer", peer_addr, &[staged_addr], &p, &p.index_ref);
    o.no_origin = true;
    let peer_root = o.install_root.clone();
    let (sm, staged) = spawn_node(s, &["peer".into()], &shutdown);
    let (pm, other) = spawn_node(o, &["staged".into()], &shutdown);

    let served = wait_for(Duration::from_secs(60), || peer_root.join("current").exists()).await;
    assert!(
        served,
        "the peer completes from the staged node: progress {} (staged node {})",
        progress(&pm, &p),
        progress(&sm, &p)
    );
    assert!(
        progress(&sm, &p) >= 1.0,
        "the staged node holds the whole payload"
    );
    assert!(
        !staged_root.join("current").exists(),
        "nothing is installed while the window is closed"
    );
    assert!(!staged.is_finished(), "the staged node waits, serving");

    // The rollout drops the window: the node installs at once.
    tx.send_replace(None);
    let installed = wait_for(Duration::from_secs(20), || staged_root.join("current").exists()).await;
    shutdown.cancel();
    assert!(installed, "installed once the window opened");
    let out = staged.await.expect("node task").expect("node run");
    assert_eq!(std::fs::read(&out.installed).unwrap(), p.payload);
    other.await.expect("node task").expect("node run");
}

/// One round of two nodes: a reader that has all 64 chunks of a 1 MiB payload in flight from the origin
/// at once (so that several are stored together), holding at most `control_queue` control messages per
/// peer, and a peer without origin access that learns what the reader holds only from the reader itself.
/// Checks that the peer installs the payload having read nothing from the origin; returns how often the
/// reader resent its whole state to an overflowed control queue.
async fn reader_and_peer_round(
    reg: &pollen_e2e::registry::Registry,
    tag: &str,
    seed: u64,
    control_queue: Option<usize>,
) -> u64 {
    let fleet = Fleet::new();
    let p = publish(
        &reg.host(),
        tag,
        payload(1024 * 1024, seed),
        16 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    let shutdown = CancellationToken::new();
    let (reader_addr, peer_addr) = (free_udp(), free_udp());
    let mut r = fleet.node("reader", reader_addr, &[peer_addr], &p, &p.index_ref);
    r.origin_requests = Some(64);
    r.control_queue = control_queue;
    let mut o = fleet.node("peer", peer_addr, &[reader_addr], &p, &p.index_ref);
    o.no_origin = true;
    let roots = [r.install_root.clone(), o.install_root.clone()];
    let nodes = vec![
        spawn_node(r, &["peer".into()], &shutdown),
        spawn_node(o, &["reader".into()], &shutdown),
    ];
    let reader_metrics = nodes[0].0.clone();
    // A round takes about a second; a peer that misses a `Have` never completes.
    let out = finish(nodes, &roots, &p, shutdown, Duration::from_secs(20)).await;
    assert_eq!(std::fs::read(&out[1].installed).unwrap(), p.payload, "{tag}");
    assert_eq!(
        out[1].origin_bytes, 0,
        "{tag}: the peer read only from the reader"
    );
    reader_metrics.control_resyncs.get()
}

/// Every chunk a node stores is announced to its peers, the last ones too: a node reading all its
/// chunks from the origin at once completes, and its peer, which never reads the origin, completes
/// from it. (When the origin loop reported chunks itself, the ones stored together with the last were
/// dropped with the loop, and the peer waited for them forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chunks_stored_last_from_the_origin_are_announced_too() {
    let Some(reg) = registry().await else { return };
    for round in 0..12u64 {
        reader_and_peer_round(&reg, &format!("last{round}"), 20 + round, None).await;
    }
}

/// A peer whose control queue overflows loses no state: the node marks it and sends its whole
/// have-map with the next batch, which stands in for every `Have` dropped. The reader here queues one
/// control message per peer at most, and stores its chunks from the origin in bursts, so `Have`s are
/// dropped; its peer, which never reads the origin and learns what the reader holds only from it,
/// still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_whose_control_queue_overflowed_gets_the_whole_have_map_again() {
    let Some(reg) = registry().await else { return };
    let mut resyncs = Vec::new();
    for round in 0..4u64 {
        resyncs.push(reader_and_peer_round(&reg, &format!("resync{round}"), 40 + round, Some(1)).await);
    }
    eprintln!("control queue resyncs per round: {resyncs:?}");
    assert!(
        resyncs.iter().sum::<u64>() > 0,
        "no control queue overflowed, so the resync went untested: {resyncs:?}"
    );
}

/// A node that does not read the origin says so, and its peers read its share of the chunks instead
/// of waiting for it: with `peerWait` far longer than the test, only that message can unblock them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_origin_access_is_not_waited_for() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let p = publish(
        &reg.host(),
        "v1",
        payload(4 * 1024 * 1024, 10),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    let shutdown = CancellationToken::new();
    let addrs: Vec<_> = (0..3).map(|_| free_udp()).collect();
    let names: Vec<String> = ["reader-a", "reader-b", "cut-off"].map(String::from).to_vec();
    let mut nodes = Vec::new();
    let mut roots = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut o = fleet.node(name, addrs[i], &addrs, &p, &p.index_ref);
        o.peer_wait = Some(Duration::from_secs(600));
        o.no_origin = name == "cut-off";
        roots.push(o.install_root.clone());
        let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
        nodes.push(spawn_node(o, &others, &shutdown));
    }
    let out = finish(nodes, &roots, &p, shutdown, Duration::from_secs(60)).await;
    for o in &out {
        assert_eq!(std::fs::read(&o.installed).unwrap(), p.payload);
    }
    assert_eq!(
        out[2].origin_bytes, 0,
        "the cut-off node read nothing from the origin"
    );
    let copies = (out[0].origin_bytes + out[1].origin_bytes) as f64 / p.payload.len() as f64;
    assert!(
        (1.0..=1.08).contains(&copies),
        "the readers read about one copy between them: {copies:.4}"
    );
}
