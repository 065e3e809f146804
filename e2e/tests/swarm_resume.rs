//! Crash and disk tests of the edge node against the real registry: a node killed mid-transfer resumes
//! from its persisted bitfield without fetching verified chunks again, and a full disk yields a clear error
//! while the previous version stays installed.

mod swarm_support;

use std::sync::Arc;
use std::time::Duration;

use pollen_edge_node::install::Installer;
use pollen_edge_node::metrics::Metrics;
use pollen_edge_node::standalone::{self, StandaloneError};
use pollen_edge_node::store::Store;
use swarm_support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_transfer_resumes_without_refetching() {
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let size = 8 * 1024 * 1024;
    let chunk = 64 * 1024u32;
    let p = publish(&reg.host(), "v1", payload(size, 4), chunk, 1, fleet.dir.path()).await;
    let index_ref = p.index_ref.clone();
    let addrs: Vec<_> = (0..3).map(|_| free_udp()).collect();
    let shutdown = CancellationToken::new();
    // Two healthy nodes seed for the whole test.
    let mut others = Vec::new();
    for (i, a) in addrs.iter().enumerate().skip(1) {
        let o = fleet.node(&format!("r{i}"), *a, &addrs, &p, &index_ref);
        others.push(tokio::spawn(standalone::run(o, shutdown.clone())));
    }
    // The victim downloads slowly, so that it can be killed in the middle.
    let mut victim = fleet.node("r0", addrs[0], &addrs, &p, &index_ref);
    victim.download_limit = Some(2 * 1024 * 1024);
    let m1 = Arc::new(Metrics::default());
    let kill = CancellationToken::new();
    let run1 = tokio::spawn(standalone::run_with_metrics(
        victim.clone(),
        m1.clone(),
        kill.clone(),
    ));
    assert!(
        wait_for(Duration::from_secs(60), || progress(&m1, &p) >= 0.4).await,
        "victim made no progress"
    );
    // Let the once-a-second persist happen, then kill: no orderly shutdown, no final persist.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    run1.abort();
    let _ = run1.await;
    kill.cancel();
    let before = progress(&m1, &p);
    assert!(before < 1.0, "the victim finished before it was killed");
    let durable = {
        let s = Store::open(&victim.data_dir, &p.verified).unwrap();
        s.have().count()
    };
    let n = p.verified.chunk_count();
    eprintln!(
        "killed at {:.0}% ; {durable} of {n} chunks durable and re-verified",
        before * 100.0
    );
    assert!(durable > 0, "verified chunks were persisted before the kill");

    // Restart on the same data directory (a new port, as a restarted process may get), no limit.
    victim.download_limit = None;
    victim.listen = free_udp();
    let m2 = Arc::new(Metrics::default());
    let restart = CancellationToken::new();
    let run2 = tokio::spawn(standalone::run_with_metrics(
        victim.clone(),
        m2.clone(),
        restart.clone(),
    ));
    let installed = wait_for(Duration::from_secs(60), || {
        victim.install_root.join("current").exists()
    })
    .await;
    restart.cancel();
    let out = run2.await.unwrap().expect("second run");
    assert!(installed);
    assert_eq!(std::fs::read(&out.installed).unwrap(), p.payload);
    let refetched = m2.received("peer") + m2.received("origin");
    let missing = u64::from(n - durable) * u64::from(chunk);
    eprintln!("second run fetched {refetched} bytes for {missing} missing bytes");
    // Endgame duplicates may add a few chunks, never the durable ones.
    assert!(
        refetched <= missing + 8 * u64::from(chunk),
        "refetched {refetched} > missing {missing}"
    );
    shutdown.cancel();
    for o in others {
        o.await.unwrap().expect("seeding node");
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_gives_a_clear_error_and_keeps_the_previous_version() {
    if !is_root() {
        assert!(!ci(), "the full-disk test needs root (mount -t tmpfs) under CI");
        eprintln!("SKIPPED: the full-disk test needs root to mount a small tmpfs");
        return;
    }
    let Some(reg) = registry().await else { return };
    let fleet = Fleet::new();
    let mnt = fleet.dir.path().join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let _guard = Tmpfs(mnt.clone());

    // Version 1 (512 KiB) fits and is installed.
    let v1 = publish(
        &reg.host(),
        "v1",
        payload(512 * 1024, 5),
        64 * 1024,
        1,
        fleet.dir.path(),
    )
    .await;
    let mut o = fleet.node("disk", free_udp(), &[], &v1, &v1.index_ref);
    o.data_dir = mnt.join("data");
    o.install_root = mnt.join("install");
    o.seed_for = Some(Duration::ZERO);
    let out1 = standalone::run(o.clone(), CancellationToken::new())
        .await
        .expect("v1 installs");
    assert_eq!(std::fs::read(&out1.installed).unwrap(), v1.payload);

    // Version 2 (8 MiB) does not fit.
    let v2 = publish(
        &reg.host(),
        "v2",
        payload(8 * 1024 * 1024, 6),
        64 * 1024,
        2,
        fleet.dir.path(),
    )
    .await;
    let mut o2 = fleet.node("disk", free_udp(), &[], &v2, &v2.index_ref);
    o2.data_dir = o.data_dir.clone();
    o2.install_root = o.install_root.clone();
    o2.seed_for = Some(Duration::ZERO);
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        standalone::run(o2, CancellationToken::new()),
    )
    .await
    .expect("the run ends instead of hanging")
    .expect_err("v2 cannot fit");
    let msg = err.to_string();
    eprintln!("full disk error: {msg}");
    assert!(
        matches!(err, StandaloneError::Engine(_) | StandaloneError::Install(_)),
        "{err:?}"
    );
    assert!(
        msg.contains("No space left on device"),
        "the error names the cause: {msg}"
    );
    let inst = Installer::new(&o.install_root, 2);
    assert_eq!(
        inst.current().as_deref(),
        Some(out1.version.as_str()),
        "v1 stays active"
    );
    assert_eq!(
        std::fs::read(inst.current_path().join("payload.bin")).unwrap(),
        v1.payload,
        "v1 intact"
    );
}
