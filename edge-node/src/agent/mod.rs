//! The Kubernetes node agent: the device's side of the Pollen API.
//!
//! On start it creates its own EdgeNode if it does not exist yet (with no labels: labels select
//! rollouts, so the operator and administrators own them, never the device) and publishes its QUIC
//! endpoint, site and inventory in `status`. Then it watches only its own EdgeNode for `spec.assignments`, runs each
//! assignment through an [`AssignmentRunner`] (the swarm engine in the binary), and
//! reports per-assignment status, throttled by [`throttle::ReportThrottle`].
//!
//! Before any of that it sets up the node's peer identity ([`identity`]: certificate files, or the
//! Kubernetes CSR API with renewal), watches the fleet's revocation list ([`revocations`]), and
//! reports the current certificate's serial and expiry in `status.certificate`.
//!
//! It keeps the chunk stores under its data dir to what its assignments need, and to
//! `--store-budget` ([`stores`]).
//!
//! Non-goals: moving bytes (the engine does), deciding who gets what (the operator does).
//! The agent never writes `spec`: the operator owns it.

pub mod cli;
pub mod csr;
pub mod desired;
pub mod identity;
pub mod keyfile;
pub mod renewal;
pub mod revocations;
pub mod runner;
pub mod stores;
pub mod throttle;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use pollen_crds::{
    Assignment, AssignmentPhase, AssignmentStatus, CertificateInfo, EdgeNode, EdgeNodeSpec, EdgeNodeStatus,
    InstalledVersion, Inventory,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The field manager the agent writes with.
pub const FIELD_MANAGER: &str = "pollen-agent";

/// Errors of the agent layer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Creating or updating the EdgeNode failed; the agent cannot announce itself.
    #[error("cannot register EdgeNode {name}: {source}")]
    Register {
        /// The EdgeNode name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the EdgeNode status failed (retried on the next tick).
    #[error("cannot write EdgeNode status: {0}")]
    Status(#[source] kube::Error),
    /// The watch on the EdgeNode ended with an error.
    #[error("watch on EdgeNode failed: {0}")]
    Watch(#[source] watcher::Error),
}

/// What the agent knows about itself.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// EdgeNode name (normally the Kubernetes Node name).
    pub node_name: String,
    /// Site or zone of the device.
    pub site: Option<String>,
    /// The QUIC endpoint peers connect to, `host:port`.
    pub endpoint: String,
    /// The install root (its filesystem's free space is reported).
    pub install_root: std::path::PathBuf,
    /// Minimum time between progress writes.
    pub progress_interval: Duration,
    /// Time between heartbeats when nothing changes.
    pub heartbeat_interval: Duration,
    /// The chunk stores under the data dir and their budget (see [`stores`]).
    pub stores: stores::StoreKeeper,
}

/// Runs one assignment to its end, reporting through `progress`.
///
/// The runner verifies both signatures, fetches, installs, and sets the final phase
/// (`Installed` or `Failed` with `last_error`). It must stop promptly when `cancel` fires.
/// `updates` carries the assignment as the operator changes it while it runs (same rollout and index:
/// its origin cap, rate limits); it starts at `assignment`.
pub trait AssignmentRunner: Send + Sync + 'static {
    /// Run `assignment`; the future completes when it reaches an end state or is cancelled.
    fn run(
        &self,
        assignment: Assignment,
        progress: watch::Sender<AssignmentStatus>,
        updates: watch::Receiver<Assignment>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Option<InstalledVersion>>;
}

/// Create the EdgeNode if it does not exist (name and an empty spec, nothing else: no labels, which
/// select rollouts and so are never the device's to write), and publish endpoint, site, inventory
/// and the current certificate's facts in `status`.
pub async fn register(
    client: &kube::Client,
    cfg: &AgentConfig,
    certificate: Option<&CertificateInfo>,
) -> Result<(), AgentError> {
    let api: Api<EdgeNode> = Api::all(client.clone());
    let failed = |source| AgentError::Register {
        name: cfg.node_name.clone(),
        source,
    };
    if api.get_opt(&cfg.node_name).await.map_err(failed)?.is_none() {
        let en = EdgeNode::new(&cfg.node_name, EdgeNodeSpec::default());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&pp, &en).await {
            Ok(_) => {}
            // Created meanwhile (an administrator, or this agent's previous run).
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(failed(e)),
        }
    }
    write_status(&api, cfg, certificate, &[], &[])
        .await
        .map_err(|e| match e {
            AgentError::Status(source) => failed(source),
            other => other,
        })
}

fn inventory(cfg: &AgentConfig) -> Inventory {
    let free = rustix::fs::statvfs(&cfg.install_root)
        .map(|s| (s.f_bavail.saturating_mul(s.f_frsize)) as i64)
        .unwrap_or(-1);
    Inventory {
        architecture: std::env::consts::ARCH.to_string(),
        free_disk_bytes: free,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

async fn write_status(
    api: &Api<EdgeNode>,
    cfg: &AgentConfig,
    certificate: Option<&CertificateInfo>,
    assignments: &[AssignmentStatus],
    installed: &[InstalledVersion],
) -> Result<(), AgentError> {
    let now = Time(jiff::Timestamp::now());
    let status = EdgeNodeStatus {
        endpoint: Some(cfg.endpoint.clone()),
        site: cfg.site.clone(),
        certificate: certificate.cloned(),
        inventory: Some(inventory(cfg)),
        assignments: assignments.to_vec(),
        active_assignments: assignments.iter().filter(|a| !a.phase.is_terminal()).count() as i32,
        installed: installed.to_vec(),
        heartbeat: Some(now),
    };
    let patch = serde_json::json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
        "metadata": { "name": cfg.node_name },
        "status": status,
    });
    api.patch_status(
        &cfg.node_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(AgentError::Status)
}

struct Running {
    chunk_index: String,
    cancel: CancellationToken,
    progress: watch::Receiver<AssignmentStatus>,
    /// The assignment as last written by the operator, passed on to the runner.
    assignment: watch::Sender<Assignment>,
    /// Origin bytes in the last status written, to report at once when the allowance runs low.
    reported_origin: i64,
}

/// Sets `*cur` to `new`; whether it changed (for `watch::Sender::send_if_modified`).
fn replace<T: PartialEq>(cur: &mut T, new: T) -> bool {
    let changed = *cur != new;
    *cur = new;
    changed
}

/// An assignment's origin allowance as the engine takes it.
pub(crate) fn allowance_of(a: &Assignment) -> Option<u64> {
    a.origin_allowance_bytes.map(|b| b.max(0) as u64)
}

/// Whether a running assignment has used three quarters of its origin allowance since its last status
/// write: the operator grants more only on what the status says, so that write should not wait for
/// the progress interval.
fn allowance_running_low(w: &Running) -> bool {
    let used = w.progress.borrow().bytes_from_origin;
    match allowance_of(&w.assignment.borrow()) {
        Some(a) => used != w.reported_origin && used.max(0) as u64 * 4 >= a * 3,
        None => false,
    }
}

/// Run the agent until `shutdown` fires: register, watch the own EdgeNode, run assignments, report.
///
/// `certificate` carries the facts of the node's current certificate; every status write includes
/// them (the agent's field manager owns the whole status), and a change is written at once.
pub async fn run(
    client: kube::Client,
    cfg: AgentConfig,
    runner: Arc<dyn AssignmentRunner>,
    mut certificate: watch::Receiver<Option<CertificateInfo>>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let cert_now = certificate.borrow_and_update().clone();
    register(&client, &cfg, cert_now.as_ref()).await?;
    info!(node = %cfg.node_name, endpoint = %cfg.endpoint, "EdgeNode registered");

    let api: Api<EdgeNode> = Api::all(client.clone());
    let wcfg = watcher::Config::default().fields(&format!("metadata.name={}", cfg.node_name));
    let mut events = watcher::watcher(api.clone(), wcfg).boxed();

    let mut running: HashMap<String, Running> = HashMap::new();
    let mut finished: BTreeMap<String, AssignmentStatus> = BTreeMap::new();
    let mut installed: Vec<InstalledVersion> = Vec::new();
    // (rollout, chunk index, what it installed): a run ends after its replacement started when the
    // rollout moved to a new index, so the index tells whose end it is.
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, String, Option<InstalledVersion>)>();
    let progress_interval = throttle::jittered(cfg.progress_interval, &cfg.node_name);
    let mut throttle = throttle::ReportThrottle::new(progress_interval, cfg.heartbeat_interval);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_bytes: i64 = 0;
    // A renewed certificate must reach the status before the next heartbeat.
    let mut cert_dirty = false;
    let mut store_use = stores::Tracker::default();

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Ok(()) = certificate.changed() => cert_dirty = true,
            ev = events.next() => {
                let desired = match ev {
                    Some(Ok(watcher::Event::Apply(en) | watcher::Event::InitApply(en))) => en.spec.assignments,
                    Some(Ok(watcher::Event::Delete(_))) => {
                        warn!(node = %cfg.node_name, "own EdgeNode deleted; cancelling all work");
                        Vec::new()
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { warn!(error = %AgentError::Watch(e), "retrying"); continue; }
                    None => break,
                };
                store_use.assigned(&desired);
                // A changed assignment for work under way (origin cap, rate limits) reaches its runner
                // without a restart.
                for a in &desired {
                    if let Some(w) = running.get(&a.rollout).filter(|w| w.chunk_index == a.chunk_index) {
                        w.assignment.send_if_modified(|cur| replace(cur, a.clone()));
                    }
                }
                let current: BTreeMap<String, String> =
                    running.iter().map(|(r, w)| (r.clone(), w.chunk_index.clone())).collect();
                for step in desired::steps(&desired, &current) {
                    match step {
                        desired::Step::Cancel { rollout } => {
                            if let Some(w) = running.remove(&rollout) { w.cancel.cancel(); }
                            finished.remove(&rollout);
                        }
                        desired::Step::Start(a) => {
                            let a = *a;
                            // An assignment that already finished for this exact index is not re-run.
                            if finished.get(&a.rollout).is_some_and(|s| s.chunk_index == a.chunk_index) { continue; }
                            finished.remove(&a.rollout);
                            // A finished assignment that is only seeding gives the engine up to new work.
                            for w in running.values().filter(|w| w.progress.borrow().phase == AssignmentPhase::Installed) {
                                w.cancel.cancel();
                            }
                            let initial = AssignmentStatus {
                                rollout: a.rollout.clone(), chunk_index: a.chunk_index.clone(),
                                phase: AssignmentPhase::Pending, ..Default::default()
                            };
                            let (tx, rx) = watch::channel(initial);
                            let cancel = shutdown.child_token();
                            let rollout = a.rollout.clone();
                            info!(%rollout, index = %a.chunk_index, "starting assignment");
                            let (assignment_tx, assignment_rx) = watch::channel(a.clone());
                            running.insert(rollout.clone(), Running {
                                chunk_index: a.chunk_index.clone(), cancel: cancel.clone(), progress: rx,
                                assignment: assignment_tx, reported_origin: 0,
                            });
                            let index = a.chunk_index.clone();
                            store_use.started(&index);
                            let fut = runner.run(a, tx, assignment_rx, cancel);
                            let done = done_tx.clone();
                            tokio::spawn(async move { let r = fut.await; let _ = done.send((rollout, index, r)); });
                        }
                    }
                }
            }
            Some((rollout, index, result)) = done_rx.recv() => {
                store_use.ended(&index);
                // A superseded run (cancelled for a new index) leaves its replacement alone.
                let current = running.get(&rollout).is_some_and(|w| w.chunk_index == index);
                if let Some(w) = current.then(|| running.remove(&rollout)).flatten() {
                    let last = w.progress.borrow().clone();
                    info!(%rollout, phase = ?last.phase, "assignment ended");
                    finished.insert(rollout, last);
                }
                if let Some(v) = result {
                    for old in installed.iter_mut().filter(|o| o.target_path == v.target_path) { old.current = false; }
                    installed.insert(0, v);
                }
            }
            _ = tick.tick() => {}
        }
        // Seeding gives way to work: a finished assignment that still seeds holds the node's one
        // engine, so it stops once another assignment is waiting for it (one that arrived while the
        // seeding one was still downloading included).
        if running
            .values()
            .any(|w| w.progress.borrow().phase != AssignmentPhase::Installed)
        {
            for w in running
                .values()
                .filter(|w| w.progress.borrow().phase == AssignmentPhase::Installed)
            {
                if !w.cancel.is_cancelled() {
                    info!(index = %w.chunk_index, "another assignment waits for the engine: seeding stops");
                    w.cancel.cancel();
                }
            }
        }
        // Report, throttled.
        let mut statuses: Vec<AssignmentStatus> = finished.values().cloned().collect();
        statuses.extend(running.values().map(|w| w.progress.borrow().clone()));
        statuses.sort_by(|a, b| a.rollout.cmp(&b.rollout));
        let phases: Vec<(String, AssignmentPhase)> =
            statuses.iter().map(|s| (s.rollout.clone(), s.phase)).collect();
        let bytes: i64 = statuses.iter().map(|s| s.verified_bytes).sum();
        let now = Instant::now();
        if let Some(usage) = store_use.due(now, &phases) {
            cfg.stores.sweep_off_runtime(usage).await;
        }
        let allowance_low = running.values().any(allowance_running_low);
        if throttle.due(now, &phases, bytes != last_bytes) || cert_dirty || allowance_low {
            let cert_now = certificate.borrow_and_update().clone();
            match write_status(&api, &cfg, cert_now.as_ref(), &statuses, &installed).await {
                Ok(()) => {
                    throttle.wrote(now, &phases);
                    last_bytes = bytes;
                    for w in running.values_mut() {
                        w.reported_origin = w.progress.borrow().bytes_from_origin;
                    }
                    cert_dirty = false;
                }
                Err(e) => warn!(error = %e, "status write failed; will retry"),
            }
        }
    }
    for w in running.values() {
        w.cancel.cancel();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response, StatusCode};
    use kube::client::Body;

    fn cfg() -> AgentConfig {
        AgentConfig {
            node_name: "gw-7".into(),
            site: Some("berlin".into()),
            endpoint: "10.0.0.7:7400".into(),
            install_root: std::env::temp_dir(),
            progress_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(60),
            stores: stores::StoreKeeper::new(
                std::env::temp_dir().join("pollen-agent-test-no-data-dir"),
                None,
                Arc::new(crate::metrics::Metrics::default()),
            ),
        }
    }

    async fn body_json(req: Request<Body>) -> serde_json::Value {
        let bytes = req.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn not_found() -> Response<Body> {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from(
                br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#.to_vec(),
            ))
            .unwrap()
    }

    /// A new device creates its EdgeNode with its name and nothing else: no labels (they select
    /// rollouts), no assignments; then it reports its status.
    #[tokio::test]
    async fn registers_without_labels_then_reports_status() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            // 1. GET the EdgeNode: not there yet.
            let (req, send) = handle.next_request().await.expect("edgenode lookup");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(req.uri().path(), "/apis/pollen.dev/v1alpha1/edgenodes/gw-7");
            send.send_response(not_found());
            // 2. POST it: name and an empty spec only.
            let (req, send) = handle.next_request().await.expect("edgenode create");
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(req.uri().path(), "/apis/pollen.dev/v1alpha1/edgenodes");
            let body = body_json(req).await;
            assert_eq!(body["metadata"]["name"], "gw-7");
            assert!(
                body["metadata"]["labels"].is_null(),
                "the agent must never write labels: {body}"
            );
            assert!(
                body["spec"]["assignments"].as_array().is_none_or(Vec::is_empty),
                "the agent must never write assignments"
            );
            let en = EdgeNode::new("gw-7", Default::default());
            send.send_response(
                Response::builder()
                    .status(StatusCode::CREATED)
                    .body(Body::from(serde_json::to_vec(&en).unwrap()))
                    .unwrap(),
            );
            // 3. Status: endpoint, site and inventory.
            let (req, send) = handle.next_request().await.expect("status apply");
            assert_eq!(
                req.uri().path(),
                "/apis/pollen.dev/v1alpha1/edgenodes/gw-7/status"
            );
            let body = body_json(req).await;
            assert!(body["metadata"]["labels"].is_null(), "{body}");
            assert_eq!(body["status"]["endpoint"], "10.0.0.7:7400");
            assert_eq!(body["status"]["site"], "berlin");
            assert_eq!(
                body["status"]["inventory"]["architecture"],
                std::env::consts::ARCH
            );
            assert!(body["status"]["inventory"]["freeDiskBytes"].as_i64().unwrap() > 0);
            assert_eq!(body["status"]["certificate"]["serial"], "4a01");
            assert_eq!(body["status"]["certificate"]["notAfter"], "2030-03-17T17:46:40Z");
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&en).unwrap()))
                    .unwrap(),
            );
        });
        let c = cfg();
        let cert = CertificateInfo {
            serial: "4a01".into(),
            not_after: Time(jiff::Timestamp::from_second(1_900_000_000).unwrap()),
            pem: None,
        };
        register(&client, &c, Some(&cert)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("all requests made")
            .unwrap();
    }

    /// An EdgeNode that exists (an administrator made it, with the labels that target it) is left
    /// alone: only its status is written.
    #[tokio::test]
    async fn an_existing_edgenode_keeps_its_metadata() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (_req, send) = handle.next_request().await.expect("edgenode lookup");
            let mut en = EdgeNode::new("gw-7", Default::default());
            en.metadata.labels = Some(BTreeMap::from([("role".to_string(), "camera".to_string())]));
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&en).unwrap()))
                    .unwrap(),
            );
            let (req, send) = handle.next_request().await.expect("status apply");
            assert!(
                req.uri().path().ends_with("/edgenodes/gw-7/status"),
                "{}",
                req.uri()
            );
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&en).unwrap()))
                    .unwrap(),
            );
        });
        register(&client, &cfg(), None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("only two requests")
            .unwrap();
    }

    async fn next_status(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    ) -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a status write in time")
            .unwrap()
    }

    #[test]
    fn a_status_write_is_due_when_three_quarters_of_the_allowance_are_used() {
        let (ptx, prx) = watch::channel(AssignmentStatus {
            bytes_from_origin: 700,
            ..Default::default()
        });
        let mut a = desired::test_assignment("ns/r", "i");
        a.origin_allowance_bytes = Some(1000);
        let (atx, _arx) = watch::channel(a);
        let mut w = Running {
            chunk_index: "i".into(),
            cancel: CancellationToken::new(),
            progress: prx,
            assignment: atx,
            reported_origin: 0,
        };
        assert!(!allowance_running_low(&w));
        ptx.send_modify(|s| s.bytes_from_origin = 750);
        assert!(allowance_running_low(&w));
        w.reported_origin = 750;
        assert!(!allowance_running_low(&w), "already reported");
        w.assignment.send_modify(|a| a.origin_allowance_bytes = None);
        ptx.send_modify(|s| s.bytes_from_origin = 2000);
        assert!(!allowance_running_low(&w), "no cap");
    }

    struct NoWork;

    impl AssignmentRunner for NoWork {
        fn run(
            &self,
            a: Assignment,
            _progress: watch::Sender<AssignmentStatus>,
            _updates: watch::Receiver<Assignment>,
            _cancel: CancellationToken,
        ) -> BoxFuture<'static, Option<InstalledVersion>> {
            panic!("no assignment expected, got {}", a.rollout)
        }
    }

    fn cert(serial: &str) -> CertificateInfo {
        CertificateInfo {
            serial: serial.into(),
            not_after: Time(jiff::Timestamp::from_second(1_900_000_000).unwrap()),
            pem: None,
        }
    }

    #[tokio::test]
    async fn a_renewed_certificate_reaches_the_status_before_the_next_heartbeat() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let (status_tx, mut statuses) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                let en = serde_json::to_vec(&EdgeNode::new("gw-7", Default::default())).unwrap();
                match (req.method().as_str(), path.as_str()) {
                    // The EdgeNode exists: registration writes only its status.
                    ("GET", "/apis/pollen.dev/v1alpha1/edgenodes/gw-7") => {
                        send.send_response(Response::builder().body(Body::from(en)).unwrap())
                    }
                    ("PATCH", "/apis/pollen.dev/v1alpha1/edgenodes/gw-7/status") => {
                        let _ = status_tx.send(body_json(req).await);
                        send.send_response(Response::builder().body(Body::from(en)).unwrap());
                    }
                    ("GET", "/apis/pollen.dev/v1alpha1/edgenodes") if !query.contains("watch=true") => {
                        send.send_response(
                            Response::builder()
                                .body(Body::from(
                                    br#"{"apiVersion":"pollen.dev/v1alpha1","kind":"EdgeNodeList","metadata":{"resourceVersion":"1"},"items":[]}"#.to_vec(),
                                ))
                                .unwrap(),
                        )
                    }
                    // The watch stays open and quiet.
                    ("GET", "/apis/pollen.dev/v1alpha1/edgenodes") => held.push(send),
                    (m, p) => panic!("unexpected {m} {p}"),
                }
            }
        });
        let (cert_tx, cert_rx) = watch::channel(Some(cert("4a01")));
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(run(client, cfg(), Arc::new(NoWork), cert_rx, shutdown.clone()));
        // Registration, then the loop's first report.
        for _ in 0..2 {
            let st = next_status(&mut statuses).await;
            assert_eq!(st["status"]["certificate"]["serial"], "4a01");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), statuses.recv())
                .await
                .is_err(),
            "no further writes without a change"
        );
        // Renewed: written at once, well before the 60 s heartbeat.
        cert_tx.send_replace(Some(cert("5b02")));
        let st = next_status(&mut statuses).await;
        assert_eq!(st["status"]["certificate"]["serial"], "5b02");
        assert_eq!(st["status"]["certificate"]["notAfter"], "2030-03-17T17:46:40Z");
        shutdown.cancel();
        agent.await.unwrap().unwrap();
        server.abort();
    }
}
