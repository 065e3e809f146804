//! The node certificate signer: watches CertificateSigningRequests for Pollen's signerName, decides
//! with [`crate::signer`], writes the decision and signs approved requests with the fleet CA.
//!
//! One reconcile per request:
//! - another signerName, or already denied, failed or signed: nothing is written (a signed one's
//!   certificate is recorded in the [`Issued`] ledger, so that revocation knows every serial);
//! - undecided: look up the requesting pod (only when the token names no node) and the EdgeNode,
//!   decide; a denial is the `Denied` condition on the `/approval` subresource with the reason and a
//!   message; an approval is the `Approved` condition there, then the certificate
//!   (`FleetCa::sign_request`) is recorded in the EdgeNode's durable ledger
//!   ([`revocation::ISSUED_ANNOTATION`]); the EdgeNode is read once more, and only if it is still
//!   neither quarantined nor deleted is the certificate written to `status.certificate` through
//!   `/status` (otherwise `Failed`, and the revocation loop is woken: a quarantine during signing
//!   is never missed until the next resync);
//! - approved (by us or anyone else) but not signed: the rules are checked again; if they still
//!   hold, sign; if not (say, the node was quarantined since), the `Failed` condition says why.
//!
//! Writes are updates (PUT, RBAC verb `update`) of the object as it was decided on, so a request
//! changed in between (another `resourceVersion`) is decided again rather than overwritten. Started only where the cluster serves
//! `certificates.k8s.io/v1` ([`served`]).
//!
//! Non-goals: the rules themselves (pure, in [`crate::signer`]); revocation ([`crate::revocation`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use pollen_crds::EdgeNode;
use pollen_trust::pki::{FleetCa, PkiError};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::progress::is_quarantined;
use crate::revocation::{self, Issued, Ledger};
use crate::signer::{self, Decision, DenyReason, NodeStanding, PodFacts, SignerPolicy, Stage};

/// The condition reason when signing itself failed.
pub const SIGNING_FAILED: &str = "SigningFailed";

/// Errors of one signer reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (retried).
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// The request has no name.
    #[error("the CertificateSigningRequest has no name")]
    Unnamed,
}

/// A source of "now".
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Everything the signer needs.
pub struct SignerContext {
    /// The Kubernetes client.
    pub client: Client,
    /// The fleet CA.
    pub ca: Arc<FleetCa>,
    /// The rules' settings.
    pub policy: SignerPolicy,
    /// Certificates signed, for revocation.
    pub issued: Arc<Issued>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The time source (condition timestamps).
    pub clock: Clock,
    /// Uids of requests signed by this process, so a late watch event never signs twice.
    pub signed: Mutex<BTreeSet<String>>,
}

impl SignerContext {
    /// A context with the system clock.
    pub fn new(
        client: Client,
        ca: Arc<FleetCa>,
        policy: SignerPolicy,
        issued: Arc<Issued>,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            ca,
            policy,
            issued,
            metrics,
            clock: Arc::new(Timestamp::now),
            signed: Mutex::default(),
        }
    }
}

/// Whether the cluster serves `certificates.k8s.io/v1` CertificateSigningRequests.
pub async fn served(client: &Client) -> bool {
    match client.list_api_group_resources("certificates.k8s.io/v1").await {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.name == "certificatesigningrequests"),
        Err(_) => false,
    }
}

fn standing(node: Option<&EdgeNode>) -> NodeStanding {
    match node {
        None => NodeStanding::Absent,
        Some(n) if n.metadata.deletion_timestamp.is_some() => NodeStanding::Deleting,
        Some(n) if is_quarantined(n.labels()) => NodeStanding::Quarantined,
        Some(_) => NodeStanding::Active,
    }
}

fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The request with `added` among its conditions (replacing one of the same type), ready to PUT.
fn with_condition(
    csr: &CertificateSigningRequest,
    added: CertificateSigningRequestCondition,
) -> CertificateSigningRequest {
    let mut out = csr.clone();
    let st = out.status.get_or_insert_with(Default::default);
    let conditions = st.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != added.type_);
    conditions.push(added);
    out
}

/// Decide on one request and act.
pub async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<SignerContext>,
) -> Result<Action, Error> {
    let policy = &ctx.policy;
    if csr.spec.signer_name != policy.signer_name {
        return Ok(Action::await_change());
    }
    let name = csr.metadata.name.clone().ok_or(Error::Unnamed)?;
    let stage = signer::stage(&csr);
    if stage == Stage::Done {
        if let Some(cert) = csr.status.as_ref().and_then(|s| s.certificate.as_ref())
            && let Ok(pem) = std::str::from_utf8(&cert.0)
        {
            ctx.issued.record_pem(pem);
        }
        return Ok(Action::await_change());
    }
    let uid = csr.uid().unwrap_or_default();
    if ctx.signed.lock().expect("signed lock").contains(&uid) {
        return Ok(Action::await_change());
    }

    let pod = match signer::pod_to_look_up(&csr, policy) {
        Some(pod_name) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &policy.service_account_namespace);
            pods.get_opt(&pod_name)
                .await
                .map_err(Error::Kube)?
                .map(|p| PodFacts {
                    uid: p.metadata.uid.unwrap_or_default(),
                    node_name: p.spec.and_then(|s| s.node_name),
                })
        }
        None => None,
    };
    let nodes: Api<EdgeNode> = Api::all(ctx.client.clone());
    let edge_node = match signer::requested_node(&csr) {
        Some(node) => nodes.get_opt(&node).await.map_err(Error::Kube)?,
        None => None,
    };
    let node_standing = standing(edge_node.as_ref());
    let decision = signer::decide(&csr, policy, pod.as_ref(), node_standing);
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let now = (ctx.clock)();
    match (stage, decision) {
        (_, Decision::Ignore) => {}
        (Stage::Undecided, Decision::Deny { reason, message }) => {
            let denied = with_condition(&csr, condition("Denied", reason.as_str(), &message, now));
            api.replace_subresource("approval", &name, &PostParams::default(), &denied)
                .await
                .map_err(Error::Kube)?;
            ctx.metrics.csr_decided("deny", reason.as_str());
            info!(csr = %name, reason = reason.as_str(), "denied: {message}");
        }
        (_, Decision::Deny { reason, message }) => {
            fail(&api, &ctx, &csr, &name, reason.as_str(), &message, now).await?;
        }
        (stage, Decision::Approve { node, lifetime }) => {
            let Some(req) = signer::node_request(&csr) else {
                // `decide` approved, so the request parsed; nothing to sign otherwise.
                return Ok(Action::await_change());
            };
            // Sign first: a request that cannot be signed is never left approved without a
            // certificate.
            let issued = match ctx.ca.sign_request(&req, &node, lifetime) {
                Ok(c) => c,
                Err(e) => {
                    let msg = signing_error(&e);
                    return fail(&api, &ctx, &csr, &name, SIGNING_FAILED, &msg, now)
                        .await
                        .map(|()| Action::await_change());
                }
            };
            let mut current = (*csr).clone();
            if stage == Stage::Undecided {
                let msg = format!(
                    "{} on node {node} requested a certificate for {node}",
                    policy.username()
                );
                let approved =
                    with_condition(&csr, condition("Approved", signer::APPROVED_REASON, &msg, now));
                current = api
                    .replace_subresource("approval", &name, &PostParams::default(), &approved)
                    .await
                    .map_err(Error::Kube)?;
            }
            // Recorded before it is handed out: durably on the EdgeNode when it exists, in memory
            // in any case (copied to the EdgeNode once it is created).
            let not_after = Timestamp::try_from(issued.facts.not_after).unwrap_or(Timestamp::MAX);
            ctx.issued.record(&node, &issued.facts.serial, not_after);
            let entry = Ledger::from([(issued.facts.serial.clone(), not_after)]);
            let was_present = edge_node.is_some();
            let durable = revocation::record_durably(&nodes, &node, edge_node, &entry, now)
                .await
                .map_err(Error::Kube)?;
            if !durable {
                debug!(node = %node, "no EdgeNode yet: the certificate is recorded in memory until it exists");
            }
            // The node may have been quarantined or deleted while this was signed, after the
            // revocation controller last looked: look again now that the certificate is recorded.
            // A change after this look revokes the certificate (revocation reads the ledger); one
            // before it stops the certificate here, and revocation syncs at once all the same.
            let again = standing(nodes.get_opt(&node).await.map_err(Error::Kube)?.as_ref());
            let turned = match again {
                NodeStanding::Quarantined => Some(DenyReason::NodeQuarantined),
                NodeStanding::Deleting => Some(DenyReason::NodeDeleted),
                NodeStanding::Absent if was_present => Some(DenyReason::NodeDeleted),
                NodeStanding::Absent | NodeStanding::Active => None,
            };
            if let Some(reason) = turned {
                ctx.issued.request_sync();
                let msg = format!(
                    "EdgeNode {node} was quarantined or deleted while its certificate was signed; \
                     the certificate (serial {}) is not handed out and is revoked",
                    issued.facts.serial
                );
                return fail(&api, &ctx, &current, &name, reason.as_str(), &msg, now)
                    .await
                    .map(|()| Action::await_change());
            }
            current.status.get_or_insert_with(Default::default).certificate =
                Some(ByteString(issued.cert_pem.clone().into_bytes()));
            api.replace_status(&name, &PostParams::default(), &current)
                .await
                .map_err(Error::Kube)?;
            ctx.signed.lock().expect("signed lock").insert(uid);
            ctx.metrics.csr_decided("approve", signer::APPROVED_REASON);
            info!(
                csr = %name,
                node = %node,
                serial = %issued.facts.serial,
                lifetime_s = lifetime.as_secs(),
                "approved and signed"
            );
        }
    }
    Ok(Action::await_change())
}

fn signing_error(e: &PkiError) -> String {
    format!("the fleet CA could not sign the request: {e}")
}

/// Mark an approved request `Failed` (through `/status`) with a reason.
async fn fail(
    api: &Api<CertificateSigningRequest>,
    ctx: &SignerContext,
    csr: &CertificateSigningRequest,
    name: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let failed = with_condition(csr, condition("Failed", reason, message, now));
    api.replace_status(name, &PostParams::default(), &failed)
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.csr_decided("fail", reason);
    warn!(csr = %name, reason, "not signed: {message}");
    Ok(())
}

/// What to do after a failed reconcile: log and retry.
pub fn error_policy(csr: Arc<CertificateSigningRequest>, error: &Error, _ctx: Arc<SignerContext>) -> Action {
    warn!(csr = %csr.name_any(), "signer reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Run the signer until `shutdown` resolves (requests for our signerName only).
pub async fn run(
    ctx: Arc<SignerContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let selector = format!("spec.signerName={}", ctx.policy.signer_name);
    info!(
        signer = %ctx.policy.signer_name,
        service_account = %ctx.policy.username(),
        "signing node certificates"
    );
    Controller::new(api, watcher::Config::default().fields(&selector))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!("signer reconcile error: {e}");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::tests::{SA_NS, csr_for, policy};
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    /// One request the mocked API server received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        body: Value,
    }

    /// What the mocked API server holds: an optional pod and EdgeNode; it answers approval and
    /// status patches with the request as patched.
    struct Mock {
        csr: CertificateSigningRequest,
        pod: Option<Pod>,
        node: Option<EdgeNode>,
        log: Vec<Seen>,
        /// EdgeNode patches answered 409 Conflict before one is applied.
        conflicts: usize,
        /// Quarantine the EdgeNode right after it is first read (a label set while signing).
        quarantine_after_read: bool,
    }

    fn not_found() -> (StatusCode, Value) {
        (
            StatusCode::NOT_FOUND,
            json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
        )
    }

    impl Mock {
        fn handle(&mut self, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match (method.as_str(), parts.as_slice()) {
                ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => match &self.pod {
                    Some(p) if *ns == SA_NS && p.name_any() == *name => {
                        (StatusCode::OK, serde_json::to_value(p).unwrap())
                    }
                    _ => not_found(),
                },
                ("GET", ["apis", "pollen.dev", "v1alpha1", "edgenodes", name]) => match &mut self.node {
                    Some(n) if n.name_any() == *name => {
                        let out = serde_json::to_value(&*n).unwrap();
                        if std::mem::take(&mut self.quarantine_after_read) {
                            n.labels_mut()
                                .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
                        }
                        (StatusCode::OK, out)
                    }
                    _ => not_found(),
                },
                ("PATCH", ["apis", "pollen.dev", "v1alpha1", "edgenodes", name]) => match &mut self.node {
                    Some(n) if n.name_any() == *name => {
                        let rv = n.metadata.resource_version.clone().unwrap_or_default();
                        let guarded = body["metadata"]["resourceVersion"].as_str() == Some(rv.as_str());
                        if self.conflicts > 0 || !guarded {
                            self.conflicts = self.conflicts.saturating_sub(1);
                            // Someone else wrote in between: a new version.
                            n.metadata.resource_version = Some(format!("{rv}x"));
                            return (
                                StatusCode::CONFLICT,
                                json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Conflict","code":409}),
                            );
                        }
                        for (k, v) in body["metadata"]["annotations"].as_object().unwrap() {
                            n.annotations_mut()
                                .insert(k.clone(), v.as_str().unwrap().to_string());
                        }
                        n.metadata.resource_version = Some(format!("{rv}p"));
                        (StatusCode::OK, serde_json::to_value(&*n).unwrap())
                    }
                    _ => not_found(),
                },
                (
                    "PUT",
                    [
                        "apis",
                        "certificates.k8s.io",
                        "v1",
                        "certificatesigningrequests",
                        _,
                        sub,
                    ],
                ) if *sub == "approval" || *sub == "status" => {
                    let st = self.csr.status.get_or_insert_with(Default::default);
                    if let Some(c) = body["status"].get("conditions") {
                        st.conditions = Some(serde_json::from_value(c.clone()).unwrap());
                    }
                    if let Some(c) = body["status"].get("certificate") {
                        st.certificate = Some(serde_json::from_value(c.clone()).unwrap());
                    }
                    self.csr.metadata.resource_version = Some("8".into());
                    (StatusCode::OK, serde_json::to_value(&self.csr).unwrap())
                }
                _ => not_found(),
            }
        }
    }

    struct Harness {
        ctx: Arc<SignerContext>,
        mock: Arc<Mutex<Mock>>,
        server: tokio::task::JoinHandle<()>,
        ca: Arc<FleetCa>,
    }

    fn harness(csr: CertificateSigningRequest, pod: Option<Pod>, node: Option<EdgeNode>) -> Harness {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let mock = Arc::new(Mutex::new(Mock {
            csr,
            pod,
            node,
            log: Vec::new(),
            conflicts: 0,
            quarantine_after_read: false,
        }));
        let m = mock.clone();
        let server = tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().clone();
                let path = req.uri().path().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let (code, out) = {
                    let mut m = m.lock().unwrap();
                    m.log.push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        body: body.clone(),
                    });
                    m.handle(&method, &path, &body)
                };
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&out).unwrap()))
                        .unwrap(),
                );
            }
        });
        let ca = Arc::new(FleetCa::generate("test fleet", Duration::from_secs(3600 * 48)).unwrap());
        let mut ctx = SignerContext::new(
            client,
            ca.clone(),
            policy(),
            Arc::new(Issued::default()),
            Metrics::default(),
        );
        // The CA signs with the system clock, so the signer's clock is the system clock too (the
        // ledger drops certificates expired by its clock).
        ctx.clock = Arc::new(Timestamp::now);
        Harness {
            ctx: Arc::new(ctx),
            mock,
            server,
            ca,
        }
    }

    impl Harness {
        async fn run(&self) -> Vec<Seen> {
            let csr = self.mock.lock().unwrap().csr.clone();
            reconcile(Arc::new(csr), self.ctx.clone()).await.unwrap();
            self.mock.lock().unwrap().log.clone()
        }
        fn writes(log: &[Seen]) -> Vec<Seen> {
            log.iter().filter(|s| s.method != Method::GET).cloned().collect()
        }
        async fn finish(self) {
            drop(self.ctx);
            tokio::time::timeout(Duration::from_secs(1), self.server)
                .await
                .expect("the mocked server stops")
                .expect("no panic in the mocked server");
        }
    }

    const CSR_PATH: &str =
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/pollen-edge-gw-01-0123456789";

    #[tokio::test]
    async fn an_approved_request_gets_the_approved_condition_then_a_certificate() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut node = EdgeNode::new("gw-01", Default::default());
        node.metadata.resource_version = Some("41".into());
        let h = harness(csr_for("gw-01", "gw-01"), None, Some(node));
        let log = h.run().await;
        let gets: Vec<&str> = log
            .iter()
            .filter(|s| s.method == Method::GET)
            .map(|s| s.path.as_str())
            .collect();
        // The standing, then again once the certificate is recorded.
        assert_eq!(gets, vec!["/apis/pollen.dev/v1alpha1/edgenodes/gw-01"; 2]);
        let all_writes = Harness::writes(&log);
        assert_eq!(all_writes.len(), 3, "{all_writes:?}");
        // Between approval and certificate: the durable record on the EdgeNode, guarded by the
        // version read.
        let ledger = &all_writes[1];
        assert_eq!(ledger.method, Method::PATCH);
        assert_eq!(ledger.path, "/apis/pollen.dev/v1alpha1/edgenodes/gw-01");
        assert_eq!(ledger.body["metadata"]["resourceVersion"], "41");
        let writes: Vec<Seen> = all_writes
            .iter()
            .filter(|w| w.method != Method::PATCH)
            .cloned()
            .collect();
        // The request itself: updates only (RBAC verb `update` on the subresources).
        assert!(writes.iter().all(|w| w.method == Method::PUT), "{writes:?}");
        // 1: the approval, on the version it was decided on, the request itself unchanged.
        assert_eq!(writes[0].body["spec"]["signerName"], pollen_crds::SIGNER_NAME);
        assert_eq!(writes[0].path, format!("{CSR_PATH}/approval"));
        assert_eq!(writes[0].body["metadata"]["resourceVersion"], "7");
        let c = &writes[0].body["status"]["conditions"][0];
        assert_eq!(c["type"], "Approved");
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], signer::APPROVED_REASON);
        assert!(c["lastUpdateTime"].is_string());
        // 2: the certificate, through /status, after the approval.
        assert_eq!(writes[1].path, format!("{CSR_PATH}/status"));
        assert_eq!(writes[1].body["metadata"]["resourceVersion"], "8");
        assert_eq!(
            writes[1].body["status"]["conditions"][0]["type"], "Approved",
            "the approval stays"
        );
        let cert: ByteString =
            serde_json::from_value(writes[1].body["status"]["certificate"].clone()).unwrap();
        let pem = String::from_utf8(cert.0).unwrap();
        let facts = pollen_trust::pki::cert_facts(&pem).unwrap();
        assert_eq!(facts.name, "gw-01");
        let life = facts.not_after.duration_since(facts.not_before).unwrap();
        assert_eq!(life, Duration::from_secs(86400) + pollen_trust::pki::CLOCK_SKEW);
        // The certificate chains to the fleet CA.
        assert!(verifies_with(&pem, h.ca.cert_pem()));
        let foreign = FleetCa::generate("another fleet", Duration::from_secs(3600)).unwrap();
        assert!(!verifies_with(&pem, foreign.cert_pem()));
        // Recorded for revocation, durably and in memory, counted.
        let stored = h.mock.lock().unwrap().node.clone().unwrap();
        let durable = revocation::ledger_of(&stored);
        assert_eq!(durable.keys().collect::<Vec<_>>(), vec![&facts.serial]);
        assert_eq!(
            durable[&facts.serial],
            Timestamp::try_from(facts.not_after).unwrap()
        );
        assert!(h.ctx.issued.snapshot(Timestamp::now())["gw-01"].contains_key(&facts.serial));
        assert_eq!(
            h.ctx
                .metrics
                .csr_decision_count("approve", signer::APPROVED_REASON),
            1
        );
        // A late event for the same request (approved, certificate not yet seen) signs nothing more.
        let mut again = csr_for("gw-01", "gw-01");
        again.status = h.mock.lock().unwrap().csr.status.clone();
        again.status.as_mut().unwrap().certificate = None;
        reconcile(Arc::new(again), h.ctx.clone()).await.unwrap();
        assert_eq!(Harness::writes(&h.mock.lock().unwrap().log).len(), 3);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_node_quarantined_while_signing_gets_no_certificate_and_revocation_is_woken() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut node = EdgeNode::new("gw-01", Default::default());
        node.metadata.resource_version = Some("41".into());
        let h = harness(csr_for("gw-01", "gw-01"), None, Some(node));
        h.mock.lock().unwrap().quarantine_after_read = true;
        let log = h.run().await;
        let writes = Harness::writes(&log);
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(writes[0].body["status"]["conditions"][0]["type"], "Approved");
        assert_eq!(writes[1].method, Method::PATCH, "recorded first");
        let last = &writes[2];
        assert_eq!(last.path, format!("{CSR_PATH}/status"));
        assert!(last.body["status"].get("certificate").is_none(), "{last:?}");
        let conds = last.body["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.last().unwrap()["type"], "Failed");
        assert_eq!(conds.last().unwrap()["reason"], "NodeQuarantined");
        // The serial is known to revocation, durably and in memory, and revocation was woken.
        let stored = h.mock.lock().unwrap().node.clone().unwrap();
        let durable = revocation::ledger_of(&stored);
        assert_eq!(durable.len(), 1);
        assert_eq!(
            h.ctx.issued.snapshot(Timestamp::now())["gw-01"]
                .keys()
                .collect::<Vec<_>>(),
            durable.keys().collect::<Vec<_>>()
        );
        tokio::time::timeout(Duration::from_secs(1), h.ctx.issued.sync_requested())
            .await
            .expect("a revocation sync was requested");
        assert_eq!(h.ctx.metrics.csr_decision_count("fail", "NodeQuarantined"), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn the_durable_record_survives_a_concurrent_edgenode_write_and_keeps_older_entries() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut node = EdgeNode::new("gw-01", Default::default());
        node.metadata.resource_version = Some("41".into());
        let now = Timestamp::now().as_second();
        let older = Timestamp::from_second(now + 3600).unwrap();
        let expired = Timestamp::from_second(now - 1).unwrap();
        node.annotations_mut().insert(
            revocation::ISSUED_ANNOTATION.into(),
            revocation::ledger_annotation(&Ledger::from([
                ("0a0b".to_string(), older),
                ("0c0d".to_string(), expired),
            ])),
        );
        let h = harness(csr_for("gw-01", "gw-01"), None, Some(node));
        h.mock.lock().unwrap().conflicts = 1;
        let log = h.run().await;
        let patches = log.iter().filter(|s| s.method == Method::PATCH).count();
        assert_eq!(patches, 2, "one conflict, then read again and written: {log:?}");
        let stored = h.mock.lock().unwrap().node.clone().unwrap();
        let durable = revocation::ledger_of(&stored);
        assert_eq!(durable.len(), 2, "{durable:?}");
        assert_eq!(durable["0a0b"], older, "the older certificate stays");
        assert!(!durable.contains_key("0c0d"), "the expired one is pruned");
        // The certificate was handed out after the record.
        let last = log.iter().rfind(|s| s.method != Method::GET).unwrap();
        assert!(last.path.ends_with("/status"), "{last:?}");
        h.finish().await;
    }

    fn verifies_with(cert_pem: &str, ca_pem: &str) -> bool {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, UnixTime};
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        verifier.verify_client_cert(&leaf, &[], UnixTime::now()).is_ok()
    }

    #[tokio::test]
    async fn the_pod_is_looked_up_when_the_token_names_no_node() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut csr = csr_for("gw-01", "gw-01");
        csr.spec.extra = Some(std::collections::BTreeMap::from([
            (signer::EXTRA_POD_NAME.to_string(), vec!["agent-abc".to_string()]),
            (signer::EXTRA_POD_UID.to_string(), vec!["u-1".to_string()]),
        ]));
        let mut pod = Pod::default();
        pod.metadata.name = Some("agent-abc".into());
        pod.metadata.namespace = Some(SA_NS.into());
        pod.metadata.uid = Some("u-1".into());
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("gw-01".into()),
            ..Default::default()
        });
        let h = harness(csr, Some(pod), None);
        let log = h.run().await;
        assert_eq!(log[0].path, format!("/api/v1/namespaces/{SA_NS}/pods/agent-abc"));
        let writes = Harness::writes(&log);
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(writes[0].body["status"]["conditions"][0]["type"], "Approved");
        assert!(writes[1].body["status"]["certificate"].is_string());
        h.finish().await;
    }

    #[tokio::test]
    async fn a_denied_request_gets_the_reason_and_is_never_signed() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let h = harness(csr_for("gw-02", "gw-01"), None, None);
        let log = h.run().await;
        let writes = Harness::writes(&log);
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(writes[0].method, Method::PUT);
        assert_eq!(writes[0].path, format!("{CSR_PATH}/approval"));
        assert_eq!(writes[0].body["metadata"]["resourceVersion"], "7");
        let c = &writes[0].body["status"]["conditions"][0];
        assert_eq!(c["type"], "Denied");
        assert_eq!(c["reason"], "NodeMismatch");
        assert!(c["message"].as_str().unwrap().contains("gw-02"));
        assert!(!log.iter().any(|s| s.path.ends_with("/status")));
        assert_eq!(h.ctx.metrics.csr_decision_count("deny", "NodeMismatch"), 1);
        assert!(
            h.ctx
                .issued
                .snapshot(Timestamp::from_second(0).unwrap())
                .is_empty()
        );
        // Decided: a second look writes nothing.
        let decided = h.mock.lock().unwrap().csr.clone();
        reconcile(Arc::new(decided), h.ctx.clone()).await.unwrap();
        assert_eq!(Harness::writes(&h.mock.lock().unwrap().log).len(), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_quarantined_node_is_denied() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut node = EdgeNode::new("gw-01", Default::default());
        node.labels_mut()
            .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        let h = harness(csr_for("gw-01", "gw-01"), None, Some(node));
        let writes = Harness::writes(&h.run().await);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].body["status"]["conditions"][0]["type"], "Denied");
        assert_eq!(
            writes[0].body["status"]["conditions"][0]["reason"],
            "NodeQuarantined"
        );
        h.finish().await;
    }

    #[tokio::test]
    async fn approved_by_someone_else_but_now_quarantined_fails_without_a_certificate() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut csr = csr_for("gw-01", "gw-01");
        csr.status = Some(
            k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus {
                certificate: None,
                conditions: Some(vec![condition(
                    "Approved",
                    "KubectlApprove",
                    "approved by hand",
                    Timestamp::from_second(1_700_000_000).unwrap(),
                )]),
            },
        );
        let mut node = EdgeNode::new("gw-01", Default::default());
        node.labels_mut()
            .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        let h = harness(csr, None, Some(node));
        let writes = Harness::writes(&h.run().await);
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(writes[0].path, format!("{CSR_PATH}/status"));
        let conds = writes[0].body["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2, "the approval is kept: {conds:?}");
        assert_eq!(conds[1]["type"], "Failed");
        assert_eq!(conds[1]["reason"], "NodeQuarantined");
        assert!(writes[0].body["status"].get("certificate").is_none());
        assert_eq!(h.ctx.metrics.csr_decision_count("fail", "NodeQuarantined"), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn another_signer_and_signed_requests_cause_no_request_at_all() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut other = csr_for("gw-01", "gw-01");
        other.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
        let h = harness(other.clone(), None, None);
        reconcile(Arc::new(other), h.ctx.clone()).await.unwrap();
        let ca = h.ca.clone();
        let kp = ca
            .issue("gw-07", std::time::SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        let mut signed = csr_for("gw-07", "gw-07");
        signed.status = Some(
            k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus {
                certificate: Some(ByteString(kp.cert.cert_pem.clone().into_bytes())),
                conditions: None,
            },
        );
        reconcile(Arc::new(signed), h.ctx.clone()).await.unwrap();
        assert!(h.mock.lock().unwrap().log.is_empty());
        // The signed certificate is known to revocation.
        assert!(h.ctx.issued.snapshot(Timestamp::now())["gw-07"].contains_key(&kp.cert.facts.serial));
        h.finish().await;
    }
}
