//! Quarantine to fleet-wide refusal, with every part real (see [`pollen_e2e::fleet`]): a Kubernetes API
//! server, the `pollen-operator` binary holding the fleet CA, and three `pollen-edge-node agent`
//! processes on 127.0.0.1.
//!
//! A rollout to all three nodes runs to completion first (nodes listen while they fetch and seed). The
//! test holds a copy of node `gw-2`'s certificate and key and dials the other nodes with it over real
//! QUIC with mutual TLS. Before the quarantine both accept it. Then it labels the EdgeNode
//! `pollen.dev/quarantine=true` and measures the time until every other node refuses the handshake:
//! the operator writes a CA-signed revocation list, the agents watch it and install it in their TLS
//! verifiers. The target is 10 s.
//!
//! Needs `docker-registry`, `crd-apiserver` and `etcd` (`e2e/tools/install-deps.sh`); fails under `CI`
//! without them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use pollen_crds::conditions::types;
use pollen_crds::{EdgeNode, REVOCATION_LIST_NAME, RevocationList, UpdateRollout, Wave, labels};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, LocalFleet};
use pollen_edge_node::tls::{TlsIdentity, TransportLimits};

const NODES: usize = 3;
const TARGET: Duration = Duration::from_secs(10);

/// Dials `addr` with `identity`: `true` when the node keeps the connection open for `hold`, `false`
/// when the handshake fails or the node closes the connection first.
async fn accepted(identity: &TlsIdentity, addr: SocketAddr, hold: Duration) -> bool {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
    ep.set_default_client_config(
        identity
            .quic_client(&TransportLimits::default())
            .expect("client config"),
    );
    let ok = match ep.connect(addr, "pollen") {
        Err(_) => false,
        Ok(connecting) => match tokio::time::timeout(Duration::from_secs(3), connecting).await {
            Ok(Ok(conn)) => {
                let closed = tokio::time::timeout(hold, conn.closed()).await;
                conn.close(0u32.into(), b"probe done");
                closed.is_err()
            }
            _ => false,
        },
    };
    ep.wait_idle().await;
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_node_is_refused_by_every_peer_within_the_target() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = LocalFleet::start_for_test(NODES).await else {
        return;
    };
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());

    // A rollout to every node, to completion: the nodes then seed, listening on their endpoints.
    let bytes = pollen_e2e::lab::payload::bytes(1024 * 1024 + 17, 7);
    let artifact = f
        .publish("sensor-fw", "2.0.0", "sensor.bin", bytes)
        .await
        .expect("publish");
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let all = vec![Wave {
        count: None,
        percent: Some(100),
        pause: None,
    }];
    let ur = fleet::rollout("sensor-fw", &artifact, "fw/sensor.bin", all);
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");
    let start = Instant::now();
    loop {
        let status = rollouts
            .get("sensor-fw")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "rollout did not complete within 180 s: {status:?}\n{}",
            f.logs_tail(20)
        );
        f.check_alive().expect("fleet processes alive");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Wait until every agent reports its certificate (the serial the operator will revoke).
    let start = Instant::now();
    let endpoints = loop {
        let list = nodes.list(&Default::default()).await.expect("list EdgeNodes");
        let reported: Vec<(String, SocketAddr, String)> = list
            .items
            .iter()
            .filter_map(|n| {
                let s = n.status.as_ref()?;
                Some((
                    n.metadata.name.clone()?,
                    s.endpoint.as_ref()?.parse().ok()?,
                    s.certificate.as_ref()?.serial.clone(),
                ))
            })
            .collect();
        if reported.len() == NODES {
            break reported;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agents did not report their certificates within 60 s\n{}",
            f.logs_tail(20)
        );
        f.check_alive().expect("fleet processes alive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let victim = "gw-2";
    let dir = f.dir.join(victim);
    let identity = TlsIdentity::load(&dir.join("cert.pem"), &dir.join("key.pem"), &f.dir.join("ca.pem"))
        .expect("victim identity");
    let victim_serial = &endpoints.iter().find(|(n, ..)| n == victim).expect("victim").2;
    assert_eq!(
        identity.serial(),
        victim_serial,
        "status.certificate is not the node's certificate"
    );
    let others: Vec<(String, SocketAddr)> = endpoints
        .iter()
        .filter(|(n, ..)| n != victim)
        .map(|(n, a, _)| (n.clone(), *a))
        .collect();

    // Before: every peer accepts the victim's certificate.
    for (name, addr) in &others {
        assert!(
            accepted(&identity, *addr, Duration::from_secs(1)).await,
            "{name} refused {victim} before any quarantine\n{}",
            f.logs_tail(20)
        );
    }

    // Quarantine, then poll until every peer refuses.
    let patch = serde_json::json!({"metadata": {"labels": {labels::QUARANTINE: "true"}}});
    let t0 = Instant::now();
    nodes
        .patch(victim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label the EdgeNode");
    let mut refused_at: Vec<Option<Duration>> = vec![None; others.len()];
    while refused_at.iter().any(Option::is_none) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not every peer refused {victim} within 60 s: {refused_at:?}\n{}",
            f.logs_tail(30)
        );
        f.check_alive().expect("fleet processes alive");
        for (i, (_, addr)) in others.iter().enumerate() {
            if refused_at[i].is_none() && !accepted(&identity, *addr, Duration::from_millis(300)).await {
                refused_at[i] = Some(t0.elapsed());
            }
        }
    }
    let worst = refused_at.iter().flatten().max().copied().unwrap_or_default();
    for ((name, _), t) in others.iter().zip(&refused_at) {
        eprintln!(
            "{name} refuses {victim} {:.0} ms after the quarantine label",
            t.unwrap().as_secs_f64() * 1e3
        );
    }
    eprintln!(
        "quarantine -> fleet-wide refusal: {:.0} ms (target {} s)",
        worst.as_secs_f64() * 1e3,
        TARGET.as_secs()
    );

    // The list the nodes acted on: CA-signed, names the victim's serial.
    let rls: Api<RevocationList> = Api::all(f.client.clone());
    let rl = rls.get(REVOCATION_LIST_NAME).await.expect("RevocationList fleet");
    let ca_pem = std::fs::read_to_string(f.dir.join("ca.pem")).unwrap();
    let set =
        pollen_trust::pki::verify_revocation_list(rl.spec.crl.as_bytes(), &ca_pem).expect("CA-signed list");
    assert!(set.is_revoked(victim_serial), "{set:?}");
    assert!(
        rl.spec
            .entries
            .iter()
            .any(|e| e.node == victim && &e.serial == victim_serial)
    );

    // The other nodes still accept each other.
    let (a, b) = (&others[0], &others[1]);
    let dir_a = f.dir.join(&a.0);
    let id_a = TlsIdentity::load(
        &dir_a.join("cert.pem"),
        &dir_a.join("key.pem"),
        &f.dir.join("ca.pem"),
    )
    .unwrap();
    assert!(
        accepted(&id_a, b.1, Duration::from_secs(1)).await,
        "{} refused {} after the quarantine",
        b.0,
        a.0
    );

    assert!(
        worst <= TARGET,
        "fleet-wide refusal took {worst:?}, over the {TARGET:?} target"
    );
}
