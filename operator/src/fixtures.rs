//! Test fixtures (compiled for unit tests only): builders for the Pollen kinds, a scripted artifact
//! pipeline, and a mocked API server on `tower_test::mock::pair` that answers the reconciler from an
//! in-memory world and records every request.
//!
//! The mocked server imitates only what the reconciler uses: GET of a TrustPolicy, LIST of EdgeNodes
//! and UpdateRollouts, server-side apply on EdgeNodes (per field manager, on the `rollout`-keyed
//! list) and on `/status`, and the finalizer's JSON patch. It is a stand-in for unit tests; the
//! integration tests in `e2e/tests/operator_*.rs` use a real API server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::client::Body;
use kube::{Client, Resource, ResourceExt};
use pollen_crds::rollout::{ArtifactSource, InstallSettings};
use pollen_crds::{
    AssignmentPhase, AssignmentStatus, DirectorKey, EdgeNode, EdgeNodeSpec, EdgeNodeStatus, Publisher,
    RolloutStrategy, TransferSettings, TrustPolicy, TrustPolicySpec, UpdateRollout, UpdateRolloutSpec,
    UpdateRolloutStatus, Wave,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::controller::{Config, Context, Diagnostics, FINALIZER};
use crate::metrics::Metrics;
use crate::pipeline::{
    ArtifactPipeline, IndexRequest, IndexedArtifact, PinnedArtifact, PipelineError, VerifiedPublisher,
};

/// The publisher key the test TrustPolicy trusts.
pub const TRUSTED_KEY: &str = "-----BEGIN PUBLIC KEY-----\ntrusted\n-----END PUBLIC KEY-----\n";
/// A key no test TrustPolicy trusts.
pub const FOREIGN_KEY: &str = "-----BEGIN PUBLIC KEY-----\nforeign\n-----END PUBLIC KEY-----\n";
/// The namespace of test rollouts.
pub const NS: &str = "fleet";

/// Builders for test rollouts.
pub trait RolloutExt: Sized {
    /// A rollout `fleet/<name>` of `registry.test/fw:1.0` to `role=gw`, canary of one then the rest.
    fn test(name: &str) -> Self;
    /// With the finalizer already in place.
    fn finalized(self) -> Self;
    /// With these waves.
    fn waves(self, waves: Vec<Wave>) -> Self;
    /// With a status.
    fn with_status(self, status: UpdateRolloutStatus) -> Self;
    /// Marked for deletion.
    fn deleting(self) -> Self;
}

impl RolloutExt for UpdateRollout {
    fn test(name: &str) -> Self {
        let mut ur = UpdateRollout::new(
            name,
            UpdateRolloutSpec {
                artifact: ArtifactSource {
                    reference: "registry.test/fw:1.0".into(),
                    allow_downgrade: false,
                },
                trust_policy: "fleet-default".into(),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("role".into(), "gw".into())])),
                    ..LabelSelector::default()
                },
                strategy: RolloutStrategy {
                    waves: vec![count(1, None), percent(100, None)],
                    ..RolloutStrategy::default()
                },
                transfer: TransferSettings::default(),
                install: InstallSettings {
                    target_path: "firmware/gw.bin".into(),
                    keep_versions: 2,
                    activation_window: None,
                },
            },
        );
        ur.meta_mut().namespace = Some(NS.into());
        ur.meta_mut().uid = Some(format!("uid-{name}"));
        ur.meta_mut().generation = Some(1);
        ur.meta_mut().resource_version = Some("1".into());
        ur.meta_mut().creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000).unwrap()));
        ur
    }
    fn finalized(mut self) -> Self {
        self.finalizers_mut().push(FINALIZER.to_string());
        self
    }
    fn waves(mut self, waves: Vec<Wave>) -> Self {
        self.spec.strategy.waves = waves;
        self
    }
    fn with_status(mut self, status: UpdateRolloutStatus) -> Self {
        self.status = Some(status);
        self
    }
    fn deleting(mut self) -> Self {
        self.meta_mut().deletion_timestamp = Some(Time(Timestamp::from_second(1_700_000_500).unwrap()));
        self
    }
}

/// A wave of `c` nodes.
pub fn count(c: i32, pause: Option<&str>) -> Wave {
    Wave {
        count: Some(c),
        percent: None,
        pause: pause.map(Into::into),
    }
}
/// A wave of `p` percent.
pub fn percent(p: i32, pause: Option<&str>) -> Wave {
    Wave {
        count: None,
        percent: Some(p),
        pause: pause.map(Into::into),
    }
}

/// An EdgeNode labelled `role=gw`.
pub fn edge_node(name: &str) -> EdgeNode {
    let mut n = EdgeNode::new(name, EdgeNodeSpec::default());
    n.labels_mut().insert("role".into(), "gw".into());
    n.meta_mut().resource_version = Some("1".into());
    n
}

/// The TrustPolicy `fleet-default`, trusting [`TRUSTED_KEY`].
pub fn trust_policy() -> TrustPolicy {
    let mut tp = TrustPolicy::new(
        "fleet-default",
        TrustPolicySpec {
            publishers: vec![Publisher {
                name: "release-team".into(),
                public_key: TRUSTED_KEY.into(),
            }],
            director: DirectorKey {
                public_key: TRUSTED_KEY.into(),
            },
            allow_unversioned: false,
        },
    );
    tp.meta_mut().resource_version = Some("1".into());
    tp
}

/// A scripted pipeline: digests are hashes of the reference, the signature is whatever key the
/// test says signed the artifact.
pub struct ScriptedPipeline {
    /// The PEM of the key that signed the artifact; `None` for an unsigned artifact.
    pub signed_by: Mutex<Option<String>>,
    /// Fail every call as if the registry were down.
    pub registry_down: bool,
    /// Fail index pushes (until cleared) as if the registry refused them.
    pub index_down: std::sync::atomic::AtomicBool,
    /// The calls made, in order (`resolve`, `verify`, `index`).
    pub calls: Mutex<Vec<&'static str>>,
    /// Every index request received, in order.
    pub index_requests: Mutex<Vec<IndexRequest>>,
    /// Signs peer grants with [`test_director`].
    pub grants: crate::grants::GrantSigner,
    /// Version claims set by the test, by artifact reference.
    pub claims: Mutex<BTreeMap<String, Option<semver::Version>>>,
    /// The claim of each pinned reference resolved so far.
    pub pinned_claims: Mutex<BTreeMap<String, Option<semver::Version>>>,
    /// When set, verification fails with this error.
    pub verify_error: Mutex<Option<fn() -> PipelineError>>,
}

impl ScriptedPipeline {
    fn with_signer(signed_by: Option<&str>, registry_down: bool) -> Arc<Self> {
        Arc::new(Self {
            signed_by: Mutex::new(signed_by.map(Into::into)),
            registry_down,
            calls: Mutex::default(),
            index_down: Default::default(),
            index_requests: Mutex::default(),
            grants: test_grants(),
            claims: Mutex::default(),
            pinned_claims: Mutex::default(),
            verify_error: Mutex::default(),
        })
    }
    /// Artifacts signed by the trusted key.
    pub fn signed() -> Arc<Self> {
        Self::with_signer(Some(TRUSTED_KEY), false)
    }
    /// Artifacts without a signature.
    pub fn unsigned() -> Arc<Self> {
        Self::with_signer(None, false)
    }
    /// Artifacts signed by a key the policy does not trust.
    pub fn wrong_key() -> Arc<Self> {
        Self::with_signer(Some(FOREIGN_KEY), false)
    }
    /// A registry that refuses every request.
    pub fn down() -> Arc<Self> {
        Self::with_signer(None, true)
    }
    /// The artifact at `reference` claims `version` (`None`: no claim) from now on.
    pub fn claim(&self, reference: &str, version: Option<&str>) {
        self.claims.lock().unwrap().insert(
            reference.into(),
            version.map(|v| semver::Version::parse(v).unwrap()),
        );
    }
    /// The claim of `reference`: as set by [`Self::claim`], else its tag read as a version (`1.0` is
    /// `1.0.0`), else none.
    fn claim_of(&self, reference: &str) -> Option<semver::Version> {
        if let Some(c) = self.claims.lock().unwrap().get(reference) {
            return c.clone();
        }
        let tag = reference.rsplit_once(':')?.1;
        let parts = tag.split('.').count();
        let padded = format!("{tag}{}", ".0".repeat(3usize.saturating_sub(parts)));
        semver::Version::parse(&padded).ok()
    }
    /// The calls made so far.
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
    /// The peer lists of the index requests received so far.
    pub fn indexed_peers(&self) -> Vec<Vec<String>> {
        self.index_requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.peers.clone())
            .collect()
    }
    fn hash(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }
}

/// The director key of every scripted pipeline (a real key: tests check the grants it signs).
pub fn test_director() -> Arc<pollen_trust::SigningKey> {
    static KEY: std::sync::OnceLock<Arc<pollen_trust::SigningKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::new(pollen_trust::SigningKey::generate().unwrap()))
        .clone()
}

fn test_grants() -> crate::grants::GrantSigner {
    crate::grants::GrantSigner::new(test_director()).unwrap()
}

impl ArtifactPipeline for ScriptedPipeline {
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<PinnedArtifact, PipelineError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push("resolve");
            if self.registry_down {
                return Err(PipelineError::Unavailable("connection refused".into()));
            }
            let repo = reference.split(['@']).next().unwrap();
            let repo = repo.rsplit_once(':').map_or(repo, |(r, _)| r);
            let digest = format!("sha256:{}", Self::hash(reference));
            let pinned = format!("{repo}@{digest}");
            self.pinned_claims
                .lock()
                .unwrap()
                .insert(pinned.clone(), self.claim_of(reference));
            Ok(PinnedArtifact {
                reference: pinned,
                digest,
                size: 4096,
            })
        })
    }
    fn verify_publisher<'a>(
        &'a self,
        artifact: &'a PinnedArtifact,
        publishers: &'a [Publisher],
    ) -> BoxFuture<'a, Result<VerifiedPublisher, PipelineError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push("verify");
            if let Some(e) = *self.verify_error.lock().unwrap() {
                return Err(e());
            }
            let Some(key) = self.signed_by.lock().unwrap().clone() else {
                return Err(PipelineError::Unsigned);
            };
            let version = self
                .pinned_claims
                .lock()
                .unwrap()
                .get(&artifact.reference)
                .cloned()
                .flatten();
            publishers
                .iter()
                .find(|p| p.public_key == key)
                .map(|p| VerifiedPublisher {
                    publisher: p.name.clone(),
                    version,
                })
                .ok_or_else(|| PipelineError::Untrusted("no publisher key of the policy verifies".into()))
        })
    }
    fn build_index<'a>(
        &'a self,
        request: &'a IndexRequest,
    ) -> BoxFuture<'a, Result<IndexedArtifact, PipelineError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push("index");
            self.index_requests.lock().unwrap().push(request.clone());
            if self.index_down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(PipelineError::Unavailable("index push refused".into()));
            }
            let repo = request.artifact.reference.split('@').next().unwrap();
            let h = Self::hash(&format!(
                "{}{}{}",
                request.artifact.digest, request.rollout, request.sequence
            ));
            Ok(IndexedArtifact {
                reference: format!("{repo}@sha256:{h}"),
            })
        })
    }
    fn peer_grant(
        &self,
        index_reference: &str,
        node: &str,
        existing: Option<&str>,
    ) -> Result<String, PipelineError> {
        Ok(self.grants.grant(index_reference, node, existing)?)
    }
}

/// One request the mocked API server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method.
    pub method: Method,
    /// URL path.
    pub path: String,
    /// The `fieldManager` query parameter, if any.
    pub manager: Option<String>,
    /// The JSON body (`Null` for none).
    pub body: Value,
}

impl Recorded {
    /// Whether this is a write to an EdgeNode.
    pub fn is_edge_node_write(&self) -> bool {
        self.method != Method::GET && self.path.contains("/edgenodes/")
    }
}

/// What the mocked API server holds.
#[derive(Default)]
pub struct World {
    /// Rollouts by `namespace/name`.
    pub rollouts: BTreeMap<String, UpdateRollout>,
    /// EdgeNodes by name.
    pub nodes: BTreeMap<String, EdgeNode>,
    /// TrustPolicies by name.
    pub policies: BTreeMap<String, TrustPolicy>,
    /// Which field manager owns each `(node, rollout)` assignment entry.
    pub owners: BTreeMap<(String, String), String>,
    /// Every request, in order.
    pub log: Vec<Recorded>,
    /// Requests the mock did not understand.
    pub unexpected: Vec<String>,
    /// Another writer changes each TrustPolicy this many times just before the operator's next status
    /// writes reach it (their resource version is then stale).
    pub policy_races: usize,
}

impl World {
    /// A world with the test TrustPolicy and these nodes.
    pub fn with_nodes(names: &[&str]) -> Self {
        let mut w = World::default();
        w.policies.insert("fleet-default".into(), trust_policy());
        for n in names {
            w.nodes.insert(n.to_string(), edge_node(n));
        }
        w
    }
    /// Add a rollout.
    pub fn add(&mut self, ur: UpdateRollout) {
        self.rollouts
            .insert(format!("{}/{}", ur.namespace().unwrap(), ur.name_any()), ur);
    }
    /// The rollout `fleet/<name>` as stored.
    pub fn rollout(&self, name: &str) -> UpdateRollout {
        self.rollouts[&format!("{NS}/{name}")].clone()
    }
    /// The rollout's status.
    pub fn status(&self, name: &str) -> UpdateRolloutStatus {
        self.rollout(name).status.unwrap_or_default()
    }
    /// Nodes holding an assignment of `fleet/<name>`, by name, with the chunk index.
    pub fn assigned(&self, name: &str) -> BTreeMap<String, String> {
        self.per_assignment(name, |a| a.chunk_index.clone())
    }
    /// `f` of each node's assignment of `fleet/<name>`, by node name.
    fn per_assignment<T>(
        &self,
        name: &str,
        f: impl Fn(&pollen_crds::Assignment) -> T,
    ) -> BTreeMap<String, T> {
        let key = format!("{NS}/{name}");
        self.nodes
            .values()
            .filter_map(|n| {
                n.spec
                    .assignments
                    .iter()
                    .find(|a| a.rollout == key)
                    .map(|a| (n.name_any(), f(a)))
            })
            .collect()
    }
    /// `node`'s assignment of `fleet/<name>`, if any.
    pub fn assignment(&self, node: &str, name: &str) -> Option<pollen_crds::Assignment> {
        let key = format!("{NS}/{name}");
        self.nodes
            .get(node)?
            .spec
            .assignments
            .iter()
            .find(|a| a.rollout == key)
            .cloned()
    }

    /// The origin cap in each node's assignment of `fleet/<name>`, by node name.
    pub fn allowances(&self, name: &str) -> BTreeMap<String, Option<i64>> {
        self.per_assignment(name, |a| a.origin_allowance_bytes)
    }
    /// The agent of `node` reports `phase` for its assignment of `fleet/<name>`.
    pub fn report(&mut self, node: &str, name: &str, phase: AssignmentPhase) {
        let key = format!("{NS}/{name}");
        let n = self.nodes.get_mut(node).unwrap();
        let a = n
            .spec
            .assignments
            .iter()
            .find(|a| a.rollout == key)
            .expect("node has the assignment")
            .clone();
        let st = n.status.get_or_insert_with(EdgeNodeStatus::default);
        st.assignments.retain(|s| s.rollout != key);
        st.assignments.push(AssignmentStatus {
            rollout: key,
            chunk_index: a.chunk_index,
            phase,
            verified_bytes: 4096,
            total_bytes: 4096,
            bytes_from_peers: 3072,
            bytes_from_origin: 1024,
            last_error: None,
            updated_at: None,
        });
    }
    /// The number of EdgeNode writes so far.
    pub fn edge_node_writes(&self) -> usize {
        self.log.iter().filter(|r| r.is_edge_node_write()).count()
    }

    fn list(kind: &str, items: Vec<Value>) -> Value {
        json!({ "apiVersion": "pollen.dev/v1alpha1", "kind": kind, "metadata": { "resourceVersion": "1" }, "items": items })
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        manager: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["apis", "pollen.dev", "v1alpha1", "trustpolicies", name]) => {
                match self.policies.get(*name) {
                    Some(tp) => (StatusCode::OK, serde_json::to_value(tp).unwrap()),
                    None => not_found(name),
                }
            }
            ("PATCH", ["apis", "pollen.dev", "v1alpha1", "trustpolicies", name, "status"]) => {
                let Some(tp) = self.policies.get_mut(*name) else {
                    return not_found(name);
                };
                if self.policy_races > 0 {
                    self.policy_races -= 1;
                    let bumped = tp
                        .resource_version()
                        .unwrap_or_default()
                        .parse::<u64>()
                        .unwrap_or(0)
                        + 1;
                    tp.meta_mut().resource_version = Some(bumped.to_string());
                }
                let current = tp.resource_version().unwrap_or_default();
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                    && rv != current
                {
                    return conflict();
                }
                tp.status = Some(serde_json::from_value(body["status"].clone()).expect("a valid status"));
                let next = current.parse::<u64>().unwrap_or(0) + 1;
                tp.meta_mut().resource_version = Some(next.to_string());
                (StatusCode::OK, serde_json::to_value(&*tp).unwrap())
            }
            ("GET", ["apis", "pollen.dev", "v1alpha1", "edgenodes"]) => {
                let items = self
                    .nodes
                    .values()
                    .map(|n| serde_json::to_value(n).unwrap())
                    .collect();
                (StatusCode::OK, Self::list("EdgeNodeList", items))
            }
            (
                "GET",
                [
                    "apis",
                    "pollen.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "updaterollouts",
                    name,
                ],
            ) => match self.rollouts.get(&format!("{ns}/{name}")) {
                Some(ur) => (StatusCode::OK, serde_json::to_value(ur).unwrap()),
                None => not_found(name),
            },
            ("GET", ["apis", "pollen.dev", "v1alpha1", "updaterollouts"]) => {
                let items = self
                    .rollouts
                    .values()
                    .map(|n| serde_json::to_value(n).unwrap())
                    .collect();
                (StatusCode::OK, Self::list("UpdateRolloutList", items))
            }
            ("PATCH", ["apis", "pollen.dev", "v1alpha1", "edgenodes", name]) if manager.is_none() => {
                // A merge patch that rewrites the list (a removal), pinned to a resource version.
                let Some(node) = self.nodes.get_mut(*name) else {
                    return not_found(name);
                };
                let current = node.resource_version().unwrap_or_default();
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                    && rv != current
                {
                    return conflict();
                }
                let kept: Vec<pollen_crds::Assignment> =
                    serde_json::from_value(body["spec"]["assignments"].clone()).expect("assignments");
                let gone: Vec<String> = node
                    .spec
                    .assignments
                    .iter()
                    .filter(|a| !kept.iter().any(|k| k.rollout == a.rollout))
                    .map(|a| a.rollout.clone())
                    .collect();
                for r in gone {
                    self.owners.remove(&(name.to_string(), r));
                }
                node.spec.assignments = kept;
                let next = current.parse::<u64>().unwrap_or(0) + 1;
                node.meta_mut().resource_version = Some(next.to_string());
                (StatusCode::OK, serde_json::to_value(&*node).unwrap())
            }
            ("PATCH", ["apis", "pollen.dev", "v1alpha1", "edgenodes", name]) => {
                let manager = manager
                    .expect("server-side apply names a field manager")
                    .to_string();
                let Some(node) = self.nodes.get_mut(*name) else {
                    return not_found(name);
                };
                let applied: Vec<pollen_crds::Assignment> =
                    serde_json::from_value(body["spec"]["assignments"].clone()).expect("assignments");
                // Entries this manager owned and no longer applies go away; applied entries replace theirs.
                let owned: Vec<String> = self
                    .owners
                    .iter()
                    .filter(|((n, _), m)| n == name && **m == manager)
                    .map(|((_, r), _)| r.clone())
                    .collect();
                for r in owned {
                    self.owners.remove(&(name.to_string(), r.clone()));
                    node.spec.assignments.retain(|a| a.rollout != r);
                }
                for a in applied {
                    node.spec.assignments.retain(|x| x.rollout != a.rollout);
                    self.owners
                        .insert((name.to_string(), a.rollout.clone()), manager.clone());
                    node.spec.assignments.push(a);
                }
                (StatusCode::OK, serde_json::to_value(&*node).unwrap())
            }
            (
                "PATCH",
                [
                    "apis",
                    "pollen.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "updaterollouts",
                    name,
                    "status",
                ],
            ) => {
                let Some(ur) = self.rollouts.get_mut(&format!("{ns}/{name}")) else {
                    return not_found(name);
                };
                ur.status = Some(serde_json::from_value(body["status"].clone()).expect("a valid status"));
                (StatusCode::OK, serde_json::to_value(&*ur).unwrap())
            }
            (
                "PATCH",
                [
                    "apis",
                    "pollen.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "updaterollouts",
                    name,
                ],
            ) => {
                let Some(ur) = self.rollouts.get_mut(&format!("{ns}/{name}")) else {
                    return not_found(name);
                };
                let ops = body.as_array().expect("the finalizer patch is a JSON patch");
                for op in ops {
                    match (op["op"].as_str(), op["path"].as_str()) {
                        (Some("add"), Some("/metadata/finalizers")) => {
                            ur.meta_mut().finalizers = serde_json::from_value(op["value"].clone()).unwrap()
                        }
                        (Some("remove"), Some(p)) if p.starts_with("/metadata/finalizers/") => {
                            let i: usize = p.rsplit('/').next().unwrap().parse().unwrap();
                            ur.finalizers_mut().remove(i);
                        }
                        _ => {}
                    }
                }
                (StatusCode::OK, serde_json::to_value(&*ur).unwrap())
            }
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                (StatusCode::CREATED, body.clone())
            }
            _ => {
                self.unexpected.push(format!("{method} {path}"));
                not_found(path)
            }
        }
    }
}

/// A write pinned to a resource version that is no longer the stored one.
fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "the object has been modified", "reason": "Conflict", "code": 409 }),
    )
}

fn not_found(name: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{name} not found"), "reason": "NotFound", "code": 404 }),
    )
}

/// What the mocked API server should do.
pub enum Scenario {
    /// Expect no request at all.
    RadioSilence,
    /// Serve (and record) requests from a shared world until the client goes away.
    World(Arc<Mutex<World>>),
}

/// The server half of the mocked client.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serve the scenario in a task.
    pub fn run(self, scenario: Scenario) -> JoinHandle<()> {
        let mut handle = self.0;
        tokio::spawn(async move {
            match scenario {
                Scenario::RadioSilence => {
                    if let Some((req, _)) = handle.next_request().await {
                        panic!("expected no request, got {} {}", req.method(), req.uri());
                    }
                }
                Scenario::World(world) => {
                    while let Some((req, send)) = handle.next_request().await {
                        let method = req.method().clone();
                        let path = req.uri().path().to_string();
                        let manager = req.uri().query().and_then(|q| {
                            q.split('&')
                                .find_map(|kv| kv.strip_prefix("fieldManager=").map(String::from))
                        });
                        let bytes = req.into_body().collect_bytes().await.unwrap();
                        let body: Value = if bytes.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&bytes).unwrap()
                        };
                        let (code, out) = {
                            let mut w = world.lock().unwrap();
                            w.log.push(Recorded {
                                method: method.clone(),
                                path: path.clone(),
                                manager: manager.clone(),
                                body: body.clone(),
                            });
                            w.handle(&method, &path, manager.as_deref(), &body)
                        };
                        send.send_response(
                            Response::builder()
                                .status(code)
                                .body(Body::from(serde_json::to_vec(&out).unwrap()))
                                .unwrap(),
                        );
                    }
                }
            }
        })
    }
}

/// A settable clock.
#[derive(Clone)]
pub struct TestClock(pub Arc<Mutex<Timestamp>>);

impl TestClock {
    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap();
        *t = t.checked_add(by).unwrap();
    }
}

/// A context with a mocked client, the given pipeline, no Events recorder and a settable clock.
pub fn test_context(pipeline: Arc<dyn ArtifactPipeline>) -> (Arc<Context>, ApiServerVerifier, TestClock) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let clock = TestClock(Arc::new(Mutex::new(
        Timestamp::from_second(1_800_000_000).unwrap(),
    )));
    let c = clock.clone();
    let ctx = Context {
        client,
        recorder: None,
        metrics: Metrics::default(),
        diagnostics: Arc::new(RwLock::new(Diagnostics::default())),
        config: Config::default(),
        pipeline,
        clock: Arc::new(move || *c.0.lock().unwrap()),
        caches: std::sync::OnceLock::new(),
        verify_attempts: Mutex::default(),
        finished: std::sync::OnceLock::new(),
    };
    (Arc::new(ctx), ApiServerVerifier(handle), clock)
}

/// As [`test_context`], with an Events recorder (the cluster serves `events.k8s.io/v1`).
pub fn test_context_with_events(
    pipeline: Arc<dyn ArtifactPipeline>,
) -> (Arc<Context>, ApiServerVerifier, TestClock) {
    let (ctx, verifier, clock) = test_context(pipeline);
    let mut ctx = Arc::into_inner(ctx).expect("sole owner");
    ctx.recorder = Some(kube::runtime::events::Recorder::new(
        ctx.client.clone(),
        "pollen-operator".into(),
    ));
    (Arc::new(ctx), verifier, clock)
}

/// Wait for the mocked server task, failing the test after a second.
pub async fn timeout_after_1s(handle: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("timeout on mock apiserver")
        .expect("scenario succeeded")
}
