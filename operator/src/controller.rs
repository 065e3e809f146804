//! The UpdateRollout reconciler: Resolve → Verify → Index → Plan → Distribute → Complete.
//!
//! One reconcile reads the rollout, its TrustPolicy, every EdgeNode and every other rollout (for
//! conflicts), then:
//! 1. **Resolve** the artifact to a pinned digest, **Verify** the publisher signature against the
//!    TrustPolicy, and **Index** (build, push and sign the chunk index with the director key). These
//!    run only when the spec fields they depend on change (tracked by `status.indexedFor`); a new
//!    artifact yields a new index, which supersedes every assignment of the rollout.
//!    A verification failure ends in `Verified=False` (reason `Unsigned`, `UntrustedSignature`,
//!    `RepositoryMismatch` or `InvalidVersionClaim`), phase `Failed`, and no EdgeNode write at all.
//!    So does a refusal of the version ledger ([`crate::ledger`]: `Downgrade`, `VersionReused`,
//!    `Unversioned`): the publisher's signed version claim is checked against the highest version
//!    delivered from the repository to the install path, kept in the TrustPolicy's status, which
//!    the operator writes (with the resource version it read, so concurrent reconciles cannot lose
//!    an entry) before it signs the index. A rollout with `artifact.allowDowngrade` passes a lower
//!    version: `status.downgradedFrom` and a `DowngradeAllowed` event say so.
//! 2. **Plan** the waves ([`crate::planner`]) and check for an older conflicting rollout.
//! 3. **Distribute**: decide with [`crate::progress::next`], write each started wave's assignments
//!    into its EdgeNodes by server-side apply with a field manager of this rollout's own (so two
//!    rollouts never clobber each other's entries), and only where the entry differs (an operator
//!    restart writes nothing).
//! 4. Write the status by server-side apply on `/status`, with `observedGeneration`.
//!
//! Deleting a rollout runs the finalizer: its assignments are removed, installed versions stay.
//!
//! Nodes that join later: while the rollout runs, or after it completed, a node selected into a wave
//! that has started gets its assignment (the fleet converges; `progress` shows it). A `Failed`
//! rollout hands out nothing new. A verification failure writes nothing at all, not even removals.
//!
//! Peer authorisation: the signed chunk index lists, in `peers`, the EdgeNodes the selector matched
//! when it was built, quarantined ones left out; nodes refuse chunk exchange with anyone else. The
//! list is never empty (an empty list would authorise every fleet member): a rollout whose selection
//! holds no node that is not quarantined waits in `Pending` before indexing. A selection larger than
//! the index format allows fails with `Indexed=False`, reason `TooManyPeers`. The list is fixed for
//! the life of the index: a node that joins the selection later (or whose quarantine is lifted) gets
//! its assignment with a peer grant ([`crate::grants`]), which its peers check before they trade with
//! it; a spec change (a new index) lists it. Re-signing on every join would make the whole fleet fetch
//! the payload again under the new index. Every assignment carries a grant, listed node or not.
//!
//! Non-goals: no registry or crypto here ([`crate::pipeline`]), no HTTP ([`crate::http`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use pollen_crds::conditions::{reasons, types};
use pollen_crds::{
    Assignment, AssignmentPhase, EdgeNode, RolloutPhase, TrustPolicy, UpdateRollout, UpdateRolloutStatus,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use tracing::{debug, info, warn};

use crate::allowance;
use crate::ledger;
use crate::metrics::Metrics;
use crate::pipeline::{ArtifactPipeline, IndexRequest, PipelineError};
use crate::planner;
use crate::progress::{self, DistState, Gate, NodeObservation, NodeState};

/// The finalizer that guards assignment cleanup.
pub const FINALIZER: &str = "pollen.dev/assignments";
/// The field manager of the status writes.
pub const STATUS_MANAGER: &str = "pollen-operator";
/// Condition reason: more selected nodes than a chunk index can authorise.
pub const TOO_MANY_PEERS: &str = "TooManyPeers";
/// Most nodes one chunk index authorises (the index format's limit).
pub const MAX_INDEX_PEERS: u32 = pollen_trust::index::MAX_PEERS;

/// The field manager that owns one rollout's assignment entries on EdgeNodes.
pub fn assignment_manager(rollout_uid: &str) -> String {
    format!("pollen-operator-rollout-{rollout_uid}")
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the finalizer failed, or the wrapped reconcile failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A registry step failed and will be retried.
    #[error("artifact pipeline: {0}")]
    Pipeline(#[source] PipelineError),
    /// The rollout lacks metadata every stored object has.
    #[error("the rollout has no {0}")]
    MissingMetadata(&'static str),
}

/// A source of "now", so tests can pin the time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often a distributing rollout is looked at even when nothing changes. EdgeNode changes
    /// trigger a reconcile (debounced by 250 ms, so the EdgeNode cache has caught up); this resync
    /// bounds the delay should a trigger ever run ahead of the cache.
    pub resync: Duration,
    /// How long to wait after a failed reconcile.
    pub error_backoff: Duration,
    /// How often a rollout blocked by a conflict or without targets is looked at again.
    pub blocked_retry: Duration,
    /// How often an artifact that failed verification is checked again (it may have been signed
    /// since; a spec change checks at once).
    pub verify_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(15),
            error_backoff: Duration::from_secs(15),
            blocked_retry: Duration::from_secs(30),
            verify_retry: Duration::from_secs(300),
        }
    }
}

/// What the web server shows about the controller.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// When the last reconcile started.
    pub last_event: Timestamp,
    /// Whether the CRDs answered and the caches synced.
    pub ready: bool,
}

impl Default for Diagnostics {
    fn default() -> Self {
        Self {
            last_event: Timestamp::now(),
            ready: false,
        }
    }
}

/// The watch caches the controller keeps; reconciles read them instead of listing.
pub struct Caches {
    /// Every EdgeNode.
    pub nodes: Store<EdgeNode>,
    /// Every watched UpdateRollout.
    pub rollouts: Store<UpdateRollout>,
}

/// Everything a reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events, where the cluster serves `events.k8s.io/v1`.
    pub recorder: Option<Recorder>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Read by the web server.
    pub diagnostics: Arc<RwLock<Diagnostics>>,
    /// Reconciler settings.
    pub config: Config,
    /// Resolve, verify, index.
    pub pipeline: Arc<dyn ArtifactPipeline>,
    /// The time source.
    pub clock: Clock,
    /// The watch caches, once [`run`] set them up; without them a reconcile lists from the API.
    pub caches: std::sync::OnceLock<Caches>,
    /// When each rollout (`namespace/name`) last had its artifact verified, for the retry of failed
    /// verifications. In memory: a restarted operator checks a failed artifact once more.
    pub verify_attempts: std::sync::Mutex<BTreeMap<String, Timestamp>>,
    /// Told when a rollout finishes or goes away, so that rollouts it blocked look again at once.
    pub finished: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<()>>,
}

impl Context {
    /// A context for a live cluster: probes the Events API and logs once if it is absent.
    pub async fn new(
        client: Client,
        pipeline: Arc<dyn ArtifactPipeline>,
        metrics: Metrics,
        diagnostics: Arc<RwLock<Diagnostics>>,
        config: Config,
    ) -> Self {
        let recorder = match client.list_api_group_resources("events.k8s.io/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "events") => {
                Some(Recorder::new(client.clone(), Reporter::from("pollen-operator")))
            }
            Ok(_) | Err(_) => {
                warn!(
                    "the API server does not serve events.k8s.io/v1: rollout events go to this log only \
                     (the core loop needs only the Pollen CRDs)"
                );
                None
            }
        };
        Self {
            client,
            recorder,
            metrics,
            diagnostics,
            config,
            pipeline,
            clock: Arc::new(Timestamp::now),
            caches: std::sync::OnceLock::new(),
            verify_attempts: std::sync::Mutex::default(),
            finished: std::sync::OnceLock::new(),
        }
    }
}

/// Reconcile one UpdateRollout (wrapped in the finalizer).
pub async fn reconcile(ur: Arc<UpdateRollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    ctx.diagnostics.write().await.last_event = (ctx.clock)();
    let ns = ur.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<UpdateRollout> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ur, |event| async {
        match event {
            Finalizer::Apply(ur) => apply(&ur, &ctx).await,
            Finalizer::Cleanup(ur) => cleanup(&ur, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(result.is_ok());
    result
}

/// What to do after a failed reconcile: log and retry after the backoff.
pub fn error_policy(ur: Arc<UpdateRollout>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(rollout = %key_of(&ur), "reconcile failed: {error}");
    Action::requeue(ctx.config.error_backoff)
}

fn key_of(ur: &UpdateRollout) -> String {
    format!("{}/{}", ur.namespace().unwrap_or_default(), ur.name_any())
}

/// The fingerprint of everything the chunk index depends on.
///
/// The director public key is part of it (a rotated director key needs a re-signed index); the
/// publisher keys are not: editing the publisher list does not restart a rollout. The nodes verify
/// the publisher signature against the TrustPolicy themselves before they install.
fn fingerprint(ur: &UpdateRollout, tp: &TrustPolicy) -> String {
    // The activation window travels in the assignments, not in the index: changing it must not
    // re-index (nor change the fingerprint of a rollout without one).
    let install = pollen_crds::rollout::InstallSettings {
        activation_window: None,
        ..ur.spec.install.clone()
    };
    let mut v = json!({
        "artifact": ur.spec.artifact.reference,
        "trustPolicy": ur.spec.trust_policy,
        "director": tp.spec.director.public_key,
        "install": install,
        "chunkSize": ur.spec.transfer.chunk_size_bytes,
    });
    // Only when set, so that the fingerprints of existing rollouts stay what they were.
    if ur.spec.artifact.allow_downgrade {
        v["allowDowngrade"] = json!(true);
    }
    let digest = Sha256::digest(serde_json::to_vec(&v).expect("JSON values serialise"));
    hex::encode(&digest[..16])
}

/// Set (or replace) a condition, keeping its transition time when the status did not change.
fn set_condition(
    st: &mut UpdateRolloutStatus,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let last_transition_time = st
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    st.conditions.retain(|c| c.type_ != type_);
    st.conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: st.observed_generation,
        last_transition_time,
    });
    st.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

fn drop_condition(st: &mut UpdateRolloutStatus, type_: &str) {
    st.conditions.retain(|c| c.type_ != type_);
}

async fn write_status(ctx: &Context, ur: &UpdateRollout, st: &UpdateRolloutStatus) -> Result<(), Error> {
    let ns = ur.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<UpdateRollout> = Api::namespaced(ctx.client.clone(), &ns);
    let body = json!({
        "apiVersion": "pollen.dev/v1alpha1",
        "kind": "UpdateRollout",
        "status": st,
    });
    api.patch_status(
        &ur.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

async fn publish_event(ctx: &Context, ur: &UpdateRollout, warning: bool, reason: &str, note: String) {
    let Some(recorder) = &ctx.recorder else {
        info!(rollout = %key_of(ur), reason, "{note}");
        return;
    };
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &ur.object_ref(&())).await {
        warn!(rollout = %key_of(ur), "could not publish an event: {e}");
    }
}

/// Write rollout `key`'s assignment entry on EdgeNode `node` (server-side apply with the rollout's own
/// field manager), or remove it with `None`.
///
/// A removal rewrites the node's list without the entry, pinned to the resource version read (a
/// concurrent change fails it, and the next reconcile tries again). Applying the list without the
/// entry would release it too, but when no other manager owns anything under `spec` (an EdgeNode made
/// by server-side apply with an empty spec) the API server then prunes `spec` itself, which the schema
/// refuses, and the rollout could never take the node's assignment away.
async fn patch_assignment(
    nodes: &Api<EdgeNode>,
    node: &EdgeNode,
    key: &str,
    manager: &str,
    desired: Option<&Assignment>,
) -> Result<(), Error> {
    let name = node.name_any();
    let Some(desired) = desired else {
        if !node.spec.assignments.iter().any(|a| a.rollout == key) {
            return Ok(());
        }
        let rest: Vec<&Assignment> = node
            .spec
            .assignments
            .iter()
            .filter(|a| a.rollout != key)
            .collect();
        let body = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "assignments": rest },
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(Error::Kube)?;
        return Ok(());
    };
    let body = json!({
        "apiVersion": "pollen.dev/v1alpha1",
        "kind": "EdgeNode",
        "metadata": { "name": name },
        "spec": { "assignments": [desired] },
    });
    nodes
        .patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(body))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// End a reconcile without distribution: record the status (if it changed) and the metrics.
async fn settle(
    ctx: &Context,
    ur: &UpdateRollout,
    prev: &UpdateRolloutStatus,
    st: UpdateRolloutStatus,
    action: Action,
) -> Result<Action, Error> {
    let key = key_of(ur);
    if prev.phase != st.phase {
        let warning = matches!(st.phase, RolloutPhase::Failed | RolloutPhase::Paused);
        let why = st
            .conditions
            .iter()
            .filter(|c| c.status == "False" || c.type_ == types::CONFLICT || c.type_ == types::FAILED)
            .map(|c| format!("{}: {}", c.type_, c.message))
            .collect::<Vec<_>>()
            .join("; ");
        publish_event(ctx, ur, warning, &format!("{:?}", st.phase), why).await;
    }
    if *prev != st || ur.status.is_none() {
        write_status(ctx, ur, &st).await?;
    }
    let finished = |p: RolloutPhase| matches!(p, RolloutPhase::Complete | RolloutPhase::Failed);
    if finished(st.phase) && !finished(prev.phase) {
        notify_finished(ctx);
    }
    ctx.metrics.observe_rollout(
        &key,
        st.phase,
        &st.nodes,
        st.bytes_from_peers,
        st.bytes_from_origin,
    );
    Ok(action)
}

/// Wake every rollout (a finished or deleted rollout may have blocked others).
fn notify_finished(ctx: &Context) {
    if let Some(tx) = ctx.finished.get() {
        let _ = tx.send(());
    }
}

/// Every EdgeNode: from the watch cache when there is one, else listed.
async fn all_edge_nodes(ctx: &Context) -> Result<Vec<EdgeNode>, Error> {
    if let Some(c) = ctx.caches.get() {
        return Ok(c.nodes.state().iter().map(|n| (**n).clone()).collect());
    }
    let api: Api<EdgeNode> = Api::all(ctx.client.clone());
    Ok(api.list(&ListParams::default()).await.map_err(Error::Kube)?.items)
}

/// Every (watched) UpdateRollout: from the watch cache when there is one, else listed.
async fn all_rollouts(ctx: &Context) -> Result<Vec<UpdateRollout>, Error> {
    if let Some(c) = ctx.caches.get() {
        return Ok(c.rollouts.state().iter().map(|n| (**n).clone()).collect());
    }
    let api: Api<UpdateRollout> = Api::all(ctx.client.clone());
    Ok(api.list(&ListParams::default()).await.map_err(Error::Kube)?.items)
}

/// How many assignment writes run at the same time.
const WRITE_CONCURRENCY: usize = 16;

async fn apply(ur: &UpdateRollout, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(ur);
    let uid = ur.uid().ok_or(Error::MissingMetadata("uid"))?;
    let now = (ctx.clock)();
    let mut prev = ur.status.clone().unwrap_or_default();
    let mut st = prev.clone();
    st.observed_generation = ur.metadata.generation;
    let mut same_generation =
        ur.metadata.generation.is_some() && prev.observed_generation == ur.metadata.generation;

    // Bad specs: what the schema cannot say.
    let gate = Gate::from_strategy(&ur.spec.strategy);
    let selector = Selector::try_from(ur.spec.selector.clone());
    let (gate, selector) = match (gate, selector) {
        (Ok(g), Ok(s)) => (g, s),
        (Err(e), _) => return invalid_spec(ctx, ur, &prev, st, e.to_string(), now).await,
        (_, Err(e)) => return invalid_spec(ctx, ur, &prev, st, format!("selector: {e}"), now).await,
    };

    // The trust policy.
    let tps: Api<TrustPolicy> = Api::all(ctx.client.clone());
    let Some(tp) = tps.get_opt(&ur.spec.trust_policy).await.map_err(Error::Kube)? else {
        if st.chunk_index.is_none() {
            st.phase = RolloutPhase::Verifying;
        }
        set_condition(
            &mut st,
            types::VERIFIED,
            false,
            reasons::TRUST_POLICY_NOT_FOUND,
            format!(
                "TrustPolicy {:?} does not exist; nothing is delivered until it does",
                ur.spec.trust_policy
            ),
            now,
        );
        set_condition(
            &mut st,
            types::PROGRESSING,
            false,
            reasons::TRUST_POLICY_NOT_FOUND,
            "waiting for the trust policy".into(),
            now,
        );
        return settle(ctx, ur, &prev, st, Action::requeue(ctx.config.blocked_retry)).await;
    };

    // The selected nodes; the chunk index authorises the ones not quarantined.
    let all_nodes = all_edge_nodes(ctx).await?;
    let selected: Vec<&EdgeNode> = all_nodes
        .iter()
        .filter(|n| selector.matches(n.labels()))
        .collect();
    let selected_names: BTreeSet<String> = selected.iter().map(|n| n.name_any()).collect();
    let quarantined = |n: &EdgeNode| progress::is_quarantined(n.labels());
    let authorised: Vec<String> = selected
        .iter()
        .filter(|n| !quarantined(n))
        .map(|n| n.name_any())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // Resolve, Verify, Index: only when what the index depends on changed.
    let fp = fingerprint(ur, &tp);
    if st.indexed_for.as_deref() != Some(fp.as_str()) {
        // The watch cache may not show this controller's own last status write yet (a reconcile
        // triggered by a related object right after it): read the rollout itself before building a
        // second index that would supersede the nodes' assignments.
        let api: Api<UpdateRollout> =
            Api::namespaced(ctx.client.clone(), &ur.namespace().unwrap_or_default());
        if let Some(fresh) = api
            .get_opt(&ur.name_any())
            .await
            .map_err(Error::Kube)?
            .and_then(|u| u.status)
            .filter(|s| s.indexed_for.as_deref() == Some(fp.as_str()))
        {
            debug!(rollout = %key, "the cache lagged behind the last status write; using the stored status");
            same_generation =
                ur.metadata.generation.is_some() && fresh.observed_generation == ur.metadata.generation;
            prev = fresh;
            st = prev.clone();
            st.observed_generation = ur.metadata.generation;
        }
    }
    let mut fresh_index = false;
    let verification_failed = st.indexed_for.as_deref() == Some(fp.as_str())
        && st.chunk_index.is_none()
        && st.conditions.iter().any(|c| {
            c.type_ == types::VERIFIED && c.status == "False" && REFUSALS.contains(&c.reason.as_str())
        });
    let verify_due = verification_failed && {
        let attempts = ctx.verify_attempts.lock().expect("verify attempts lock");
        attempts.get(&key).is_none_or(|t| {
            Duration::try_from(now.duration_since(*t)).unwrap_or(Duration::ZERO) >= ctx.config.verify_retry
        })
    };
    if st.indexed_for.as_deref() != Some(fp.as_str()) || verify_due {
        // An index with an empty peer list would authorise every fleet member: index only once
        // a node may receive it, and refuse a list the index format cannot carry.
        if authorised.is_empty() {
            return no_targets(ctx, ur, &prev, st, !selected.is_empty(), now).await;
        }
        if authorised.len() > MAX_INDEX_PEERS as usize {
            return too_many_peers(ctx, ur, &prev, st, authorised.len(), now).await;
        }
        ctx.verify_attempts
            .lock()
            .expect("verify attempts lock")
            .insert(key.clone(), now);
        // Sequences grow per install path across rollouts, whatever the clock does.
        let floor = all_rollouts(ctx)
            .await?
            .iter()
            .filter(|o| key_of(o) != key && o.spec.install.target_path == ur.spec.install.target_path)
            .filter_map(|o| o.status.as_ref()?.sequence)
            .max()
            .unwrap_or(0);
        match prepare(ctx, ur, &tp, &mut st, now, floor, authorised).await {
            Ok(()) => {
                st.indexed_for = Some(fp.clone());
                fresh_index = true;
            }
            Err(Stop::Verification) => {
                st.indexed_for = Some(fp.clone());
                return settle(ctx, ur, &prev, st, Action::requeue(ctx.config.verify_retry)).await;
            }
            Err(Stop::Invalid) => {
                st.indexed_for = Some(fp.clone());
                st.chunk_index = None;
                st.sequence = None;
                return settle(ctx, ur, &prev, st, Action::await_change()).await;
            }
            Err(Stop::Retry(e)) => {
                settle(ctx, ur, &prev, st, Action::await_change()).await?;
                return Err(Error::Pipeline(e));
            }
            Err(Stop::Ledger(e)) => {
                settle(ctx, ur, &prev, st, Action::await_change()).await?;
                return Err(Error::Kube(e));
            }
        }
    }
    let Some(chunk_index) = st.chunk_index.clone() else {
        // Verification (or resolution) failed for this very spec: nothing to do until it changes
        // or the verification retry is due.
        st.phase = RolloutPhase::Failed;
        let action = if verification_failed {
            Action::requeue(ctx.config.verify_retry)
        } else {
            Action::await_change()
        };
        return settle(ctx, ur, &prev, st, action).await;
    };

    // Plan: the selected nodes, the conflict check, the waves.
    let nodes_api: Api<EdgeNode> = Api::all(ctx.client.clone());

    let others = all_rollouts(ctx).await?;
    let claims: Vec<progress::Claim> = others
        .iter()
        .filter(|o| key_of(o) != key)
        .map(|o| claim_of(o, &all_nodes))
        .collect();
    let mine = progress::Claim {
        nodes: selected_names.clone(),
        ..claim_of(ur, &[])
    };
    let terminal = same_generation && matches!(prev.phase, RolloutPhase::Complete | RolloutPhase::Failed);
    if !terminal && let Some(winner) = progress::blocker(&mine, &claims) {
        st.phase = RolloutPhase::Pending;
        set_condition(
            &mut st,
            types::CONFLICT,
            true,
            reasons::OLDER_ROLLOUT_WINS,
            format!(
                "{} also installs {:?} on some of these nodes and is older; this rollout waits until it finishes",
                winner.key, winner.target_path
            ),
            now,
        );
        set_condition(
            &mut st,
            types::PROGRESSING,
            false,
            reasons::OLDER_ROLLOUT_WINS,
            format!("blocked by {}", winner.key),
            now,
        );
        return settle(ctx, ur, &prev, st, Action::requeue(ctx.config.blocked_retry)).await;
    }
    drop_condition(&mut st, types::CONFLICT);

    let entry_of = |n: &EdgeNode| n.spec.assignments.iter().find(|a| a.rollout == key).cloned();
    let pinned: BTreeMap<String, u32> = selected
        .iter()
        .filter_map(|n| entry_of(n).map(|a| (n.name_any(), a.wave.max(0) as u32)))
        .collect();
    let names: Vec<String> = selected_names.iter().cloned().collect();
    let plan = match planner::plan(&uid, &names, &ur.spec.strategy.waves, &pinned) {
        Ok(p) => p,
        Err(e) => return invalid_spec(ctx, ur, &prev, st, e.to_string(), now).await,
    };
    if selected.is_empty() && !terminal {
        return no_targets(ctx, ur, &prev, st, false, now).await;
    }

    // Decide, crossing as many wave boundaries as the observations allow.
    let mut state = DistState {
        phase: if fresh_index {
            RolloutPhase::Distributing
        } else {
            prev.phase
        },
        current_wave: if fresh_index {
            0
        } else {
            st.current_wave.unwrap_or(0).max(0) as u32
        },
        wave_completed_at: if fresh_index {
            None
        } else {
            st.wave_completed_at.as_ref().map(|t| t.0)
        },
        same_generation: same_generation && !fresh_index,
    };
    // What nodes report is bounded by the payload: one node cannot inflate the totals or drain the
    // origin budget by claiming more than one copy.
    let payload = st.artifact_size.map_or(0, |s| s.max(0) as u64);
    let (decision, agg) = loop {
        let obs: Vec<NodeObservation> = selected
            .iter()
            .map(|n| {
                let wave = plan.wave_of[&n.name_any()];
                let status = n.status.as_ref().and_then(|s| {
                    s.assignments
                        .iter()
                        .find(|a| a.rollout == key && a.chunk_index == chunk_index)
                });
                NodeObservation {
                    name: n.name_any(),
                    wave,
                    state: progress::node_state(
                        wave <= state.current_wave,
                        status,
                        &chunk_index,
                        quarantined(n),
                    ),
                    bytes_from_peers: status.map_or(0, |s| {
                        progress::plausible_bytes(s.bytes_from_peers, payload) as i64
                    }),
                    bytes_from_origin: status.map_or(0, |s| {
                        progress::plausible_bytes(s.bytes_from_origin, payload) as i64
                    }),
                    last_error: status
                        .filter(|s| s.phase == AssignmentPhase::Failed)
                        .and_then(|s| s.last_error.clone()),
                }
            })
            .collect();
        let agg = progress::aggregate(&obs, plan.wave_count, state.current_wave);
        let d = progress::next(&state, &agg, &gate, now);
        if d.current_wave > state.current_wave {
            info!(rollout = %key, "{}", d.message);
            state = DistState {
                phase: d.phase,
                current_wave: d.current_wave,
                wave_completed_at: None,
                same_generation: state.same_generation,
            };
            continue;
        }
        break (d, agg);
    };

    // The fleet's origin budget, as caps in the assignments (see `allowance`). Quarantined nodes get
    // no assignment, but what they read still counts.
    let size = st.artifact_size.filter(|s| *s > 0).map(|s| s as u64);
    let budget = size.and_then(|size| allowance::budget_bytes(size, ur.spec.transfer.origin_budget_percent));
    let origin_caps = size.zip(budget).map(|(size, budget)| {
        // The chunk size the index was built with (the same request the pipeline gets).
        let chunk =
            pollen_trust::index::chunk_size_for(ur.spec.transfer.chunk_size_bytes.map(|c| c as u32), size);
        let uses: Vec<allowance::NodeUse> = selected
            .iter()
            .filter_map(|n| {
                let name = n.name_any();
                if *plan.wave_of.get(&name)? > decision.current_wave {
                    return None;
                }
                let status = n.status.as_ref().and_then(|s| {
                    s.assignments
                        .iter()
                        .find(|a| a.rollout == key && a.chunk_index == chunk_index)
                });
                let state = progress::node_state(true, status, &chunk_index, quarantined(n));
                Some(allowance::NodeUse {
                    name,
                    working: matches!(state, NodeState::Pending | NodeState::Downloading),
                    granted: entry_of(n)
                        .filter(|a| a.chunk_index == chunk_index)
                        .and_then(|a| a.origin_allowance_bytes)
                        .map(|v| v.max(0) as u64),
                    used: status.map_or(0, |s| progress::plausible_bytes(s.bytes_from_origin, size)),
                })
            })
            .collect();
        allowance::caps(budget, u64::from(chunk), &uses)
    });

    // Distribute: write only the entries that differ.
    let manager = assignment_manager(&uid);
    let sequence = st.sequence.unwrap_or(0);
    let mut writes = Vec::new();
    for n in &all_nodes {
        let name = n.name_any();
        // A failed rollout hands out nothing new (nodes joining a started wave included); it only
        // takes assignments away from quarantined nodes.
        if decision.phase == RolloutPhase::Failed && !quarantined(n) {
            continue;
        }
        let desired = plan
            .wave_of
            .get(&name)
            .filter(|w| **w <= decision.current_wave && !quarantined(n))
            .map(|w| Assignment {
                rollout: key.clone(),
                chunk_index: chunk_index.clone(),
                wave: *w as i32,
                sequence,
                target_path: ur.spec.install.target_path.clone(),
                trust_policy: ur.spec.trust_policy.clone(),
                upload_bytes_per_second: ur.spec.transfer.upload_bytes_per_second,
                download_bytes_per_second: ur.spec.transfer.download_bytes_per_second,
                peer_wait: ur.spec.transfer.peer_wait.clone(),
                origin_requests: ur.spec.transfer.origin_requests,
                origin_allowance_bytes: origin_caps
                    .as_ref()
                    .and_then(|c| c.caps.get(&name))
                    .map(|&v| v.min(i64::MAX as u64) as i64),
                activation_window: ur.spec.install.activation_window.clone(),
                peer_grant: peer_grant(ctx, &chunk_index, &name, entry_of(n)),
            });
        if desired != entry_of(n) {
            writes.push(((*n).clone(), desired));
        }
    }
    // One node's failed write (a concurrent change, an object the API server refuses) does not hold
    // the others or the status: it is logged, and the rollout is looked at again soon.
    let mut write_failures = 0usize;
    if !writes.is_empty() {
        let count = writes.len();
        let futures: Vec<_> = writes
            .into_iter()
            .map(|(n, desired)| {
                let (api, manager, key) = (nodes_api.clone(), manager.clone(), key.clone());
                async move {
                    let r = patch_assignment(&api, &n, &key, &manager, desired.as_ref()).await;
                    (n.name_any(), r)
                }
            })
            .collect();
        let results = futures::stream::iter(futures)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (node, r) in results {
            if let Err(e) = r {
                write_failures += 1;
                warn!(rollout = %key, %node, "assignment write failed: {e}");
            }
        }
        debug!(rollout = %key, count, write_failures, "assignments written");
    }

    // Status.
    st.phase = decision.phase;
    st.current_wave = Some(decision.current_wave as i32);
    st.wave_completed_at = decision.wave_completed_at.map(Time);
    st.progress = Some(agg.progress());
    st.offload = Some(agg.offload());
    st.waves = agg.waves.clone();
    st.nodes = agg.nodes.clone();
    st.bytes_from_peers = agg.bytes_from_peers;
    st.bytes_from_origin = agg.bytes_from_origin;
    let distributing = decision.phase == RolloutPhase::Distributing;
    set_condition(
        &mut st,
        types::PROGRESSING,
        distributing,
        decision.reason,
        decision.message.clone(),
        now,
    );
    let complete = decision.phase == RolloutPhase::Complete;
    set_condition(
        &mut st,
        types::COMPLETE,
        complete,
        decision.reason,
        decision.message.clone(),
        now,
    );
    if decision.phase == RolloutPhase::Failed {
        set_condition(
            &mut st,
            types::FAILED,
            true,
            decision.reason,
            decision.message.clone(),
            now,
        );
    } else {
        drop_condition(&mut st, types::FAILED);
    }
    match (&origin_caps, budget) {
        (Some(c), Some(budget)) if c.remaining == 0 && distributing && agg.bytes_from_origin > 0 => {
            set_condition(
                &mut st,
                types::ORIGIN_BUDGET_SPENT,
                true,
                reasons::BUDGET_SPENT,
                format!(
                    "the nodes read {} bytes from the origin, the budget is {budget}; working nodes fetch from peers only",
                    agg.bytes_from_origin
                ),
                now,
            );
        }
        _ => drop_condition(&mut st, types::ORIGIN_BUDGET_SPENT),
    }
    let action = match decision.phase {
        _ if write_failures > 0 => Action::requeue(ctx.config.blocked_retry),
        RolloutPhase::Complete | RolloutPhase::Failed => Action::requeue(ctx.config.resync * 5),
        _ => Action::requeue(
            decision
                .requeue_after
                .map_or(ctx.config.resync, |d| d.min(ctx.config.resync)),
        ),
    };
    settle(ctx, ur, &prev, st, action).await
}

/// Nothing to deliver to: the selector matches no EdgeNode, or (before the index is built) only
/// quarantined ones. Phase `Pending`, looked at again after `blocked_retry`.
async fn no_targets(
    ctx: &Context,
    ur: &UpdateRollout,
    prev: &UpdateRolloutStatus,
    mut st: UpdateRolloutStatus,
    all_quarantined: bool,
    now: Timestamp,
) -> Result<Action, Error> {
    st.phase = RolloutPhase::Pending;
    st.nodes = Default::default();
    st.progress = Some("0/0".into());
    let message = if all_quarantined {
        "every EdgeNode the selector matches is quarantined; the chunk index is built once one is not"
    } else {
        "the selector matches no EdgeNode"
    };
    set_condition(
        &mut st,
        types::PROGRESSING,
        false,
        reasons::NO_TARGETS,
        message.into(),
        now,
    );
    set_condition(
        &mut st,
        types::COMPLETE,
        false,
        reasons::NO_TARGETS,
        "no targeted node".into(),
        now,
    );
    settle(ctx, ur, prev, st, Action::requeue(ctx.config.blocked_retry)).await
}

/// The peer grant of `node`'s assignment: the one it holds while valid for this index, else a new one.
/// A node that cannot have one (an unpinned index reference, a signing failure) gets none, with a
/// warning: it then trades only if the index lists it.
fn peer_grant(ctx: &Context, chunk_index: &str, node: &str, current: Option<Assignment>) -> Option<String> {
    let existing = current
        .filter(|a| a.chunk_index == chunk_index)
        .and_then(|a| a.peer_grant);
    match ctx.pipeline.peer_grant(chunk_index, node, existing.as_deref()) {
        Ok(g) => Some(g),
        Err(e) => {
            warn!(node, error = %e, "no peer grant for this assignment");
            None
        }
    }
}

/// The selection is larger than a chunk index can authorise: `Indexed=False` (reason
/// [`TOO_MANY_PEERS`]), phase `Failed`, nothing delivered until the selection or the spec changes.
async fn too_many_peers(
    ctx: &Context,
    ur: &UpdateRollout,
    prev: &UpdateRolloutStatus,
    mut st: UpdateRolloutStatus,
    count: usize,
    now: Timestamp,
) -> Result<Action, Error> {
    let message = format!(
        "the selector matches {count} EdgeNodes that are not quarantined; a chunk index authorises at most \
         {MAX_INDEX_PEERS}: split the rollout with narrower selectors"
    );
    st.phase = RolloutPhase::Failed;
    set_condition(
        &mut st,
        types::INDEXED,
        false,
        TOO_MANY_PEERS,
        message.clone(),
        now,
    );
    set_condition(&mut st, types::FAILED, true, TOO_MANY_PEERS, message.clone(), now);
    set_condition(&mut st, types::PROGRESSING, false, TOO_MANY_PEERS, message, now);
    settle(ctx, ur, prev, st, Action::requeue(ctx.config.blocked_retry)).await
}

/// The `Verified=False` reasons that refuse an artifact (retried every `verify_retry`: the artifact may be
/// signed later, the tag moved back, the policy changed).
const REFUSALS: [&str; 7] = [
    reasons::UNSIGNED,
    reasons::UNTRUSTED_SIGNATURE,
    reasons::REPOSITORY_MISMATCH,
    reasons::INVALID_VERSION_CLAIM,
    reasons::DOWNGRADE,
    reasons::VERSION_REUSED,
    reasons::UNVERSIONED,
];

/// Record a refusal: `Verified=False` with `reason`, phase `Failed`, no index and nothing delivered.
fn refuse(st: &mut UpdateRolloutStatus, reason: &str, message: String, now: Timestamp) -> Stop {
    drop_condition(st, types::FAILED);
    st.phase = RolloutPhase::Failed;
    st.chunk_index = None;
    st.sequence = None;
    st.version = None;
    st.downgraded_from = None;
    set_condition(st, types::VERIFIED, false, reason, message, now);
    for t in [types::PROGRESSING, types::COMPLETE] {
        set_condition(st, t, false, reason, "nothing is delivered".into(), now);
    }
    drop_condition(st, types::INDEXED);
    Stop::Verification
}

/// Why the Resolve/Verify/Index steps stopped.
enum Stop {
    /// The signature did not verify: `Verified=False`, phase `Failed`, nothing else.
    Verification,
    /// The artifact is malformed: wait for a new spec.
    Invalid,
    /// A transient registry problem: retry.
    Retry(PipelineError),
    /// The version ledger could not be written (for example a concurrent write): retry.
    Ledger(kube::Error),
}

async fn prepare(
    ctx: &Context,
    ur: &UpdateRollout,
    tp: &TrustPolicy,
    st: &mut UpdateRolloutStatus,
    now: Timestamp,
    sequence_floor: i64,
    peers: Vec<String>,
) -> Result<(), Stop> {
    let reference = &ur.spec.artifact.reference;
    st.phase = RolloutPhase::Resolving;
    let pinned = match ctx.pipeline.resolve(reference).await {
        Ok(p) => p,
        Err(e) => {
            let (reason, stop) = match e {
                PipelineError::Invalid(_) => (reasons::INVALID_SPEC, Stop::Invalid),
                PipelineError::AccessDenied(_) => (reasons::REGISTRY_ACCESS_DENIED, Stop::Retry(e)),
                _ => (reasons::REGISTRY_UNAVAILABLE, Stop::Retry(e)),
            };
            let msg = match &stop {
                Stop::Retry(e) => e.to_string(),
                _ => format!("{reference}: cannot be resolved"),
            };
            if matches!(stop, Stop::Invalid) {
                st.phase = RolloutPhase::Failed;
            }
            set_condition(st, types::RESOLVED, false, reason, msg, now);
            return Err(stop);
        }
    };
    set_condition(
        st,
        types::RESOLVED,
        true,
        reasons::DIGEST_PINNED,
        pinned.reference.clone(),
        now,
    );
    st.artifact_digest = Some(pinned.reference.clone());
    st.artifact_size = Some(pinned.size as i64);

    st.phase = RolloutPhase::Verifying;
    let verified = match ctx.pipeline.verify_publisher(&pinned, &tp.spec.publishers).await {
        Ok(v) => v,
        Err(e) => {
            let reason = match e {
                PipelineError::Unsigned => reasons::UNSIGNED,
                PipelineError::Untrusted(_) => reasons::UNTRUSTED_SIGNATURE,
                PipelineError::RepositoryMismatch(_) => reasons::REPOSITORY_MISMATCH,
                PipelineError::InvalidVersionClaim(_) => reasons::INVALID_VERSION_CLAIM,
                _ => {
                    set_condition(
                        st,
                        types::VERIFIED,
                        false,
                        registry_reason(&e),
                        e.to_string(),
                        now,
                    );
                    return Err(Stop::Retry(e));
                }
            };
            return Err(refuse(st, reason, format!("{}: {e}", pinned.reference), now));
        }
    };

    // The version ledger: no older (or foreign-built) version under a fresh sequence.
    let repository = pollen_trust::oci::normalize_repository(&pinned.reference);
    let target_path = &ur.spec.install.target_path;
    let ledger = tp
        .status
        .as_ref()
        .map(|s| s.delivered.as_slice())
        .unwrap_or_default();
    let recorded = ledger::lookup(ledger, &repository, target_path);
    let candidate = ledger::Candidate {
        repository: &repository,
        target_path,
        digest: &pinned.digest,
        version: verified.version.as_ref(),
    };
    let claim = verified
        .version
        .as_ref()
        .map_or_else(|| "no version claim".to_string(), |v| format!("version {v}"));
    st.downgraded_from = None;
    match ledger::decide(
        recorded,
        &candidate,
        tp.spec.allow_unversioned,
        ur.spec.artifact.allow_downgrade,
    ) {
        ledger::Verdict::Refuse { reason, message } => {
            return Err(refuse(
                st,
                reason,
                format!("{}: {message}", pinned.reference),
                now,
            ));
        }
        ledger::Verdict::Deliver { record: false } => {}
        ledger::Verdict::Deliver { record: true } => {
            let entry = pollen_crds::DeliveredVersion {
                repository: repository.clone(),
                target_path: target_path.clone(),
                version: verified
                    .version
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                digest: pinned.digest.clone(),
                rollout: key_of(ur),
            };
            if let Err(e) = write_ledger(ctx, tp, ledger::record(ledger, entry)).await {
                set_condition(
                    st,
                    types::VERIFIED,
                    false,
                    reasons::LEDGER_WRITE_FAILED,
                    format!("recording {claim} in TrustPolicy {:?}: {e}", tp.name_any()),
                    now,
                );
                return Err(Stop::Ledger(e));
            }
        }
        ledger::Verdict::DowngradeAllowed { from } => {
            publish_event(
                ctx,
                ur,
                true,
                reasons::DOWNGRADE_ALLOWED,
                format!(
                    "{}: {claim} delivered to {target_path} although {from} was delivered before                      (artifact.allowDowngrade)",
                    pinned.reference
                ),
            )
            .await;
            st.downgraded_from = Some(from);
        }
    }
    st.version = verified.version.as_ref().map(ToString::to_string);
    set_condition(
        st,
        types::VERIFIED,
        true,
        reasons::SIGNATURE_VERIFIED,
        format!(
            "signed by publisher {:?} of TrustPolicy {:?}, {claim}{}",
            verified.publisher,
            tp.name_any(),
            st.downgraded_from
                .as_ref()
                .map(|f| format!(", a downgrade from {f} (allowDowngrade)"))
                .unwrap_or_default()
        ),
        now,
    );

    st.phase = RolloutPhase::Indexing;
    let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let sequence = now_ms
        .max(st.sequence.map_or(0, |s| s.max(0) as u64 + 1))
        .max(sequence_floor.max(0) as u64 + 1);
    let install = &ur.spec.install;
    let request = IndexRequest {
        artifact: pinned,
        rollout: key_of(ur),
        rollout_uid: ur.uid().unwrap_or_default(),
        target_path: install.target_path.clone(),
        keep_versions: install.keep_versions.max(0) as u32,
        chunk_size: ur.spec.transfer.chunk_size_bytes.map(|c| c as u32),
        sequence,
        peers,
    };
    match ctx.pipeline.build_index(&request).await {
        Ok(ix) => {
            set_condition(
                st,
                types::INDEXED,
                true,
                reasons::INDEX_SIGNED,
                ix.reference.clone(),
                now,
            );
            st.chunk_index = Some(ix.reference);
            st.sequence = Some(sequence as i64);
            st.current_wave = Some(0);
            st.wave_completed_at = None;
            st.phase = RolloutPhase::Distributing;
            Ok(())
        }
        Err(e) => {
            set_condition(st, types::INDEXED, false, registry_reason(&e), e.to_string(), now);
            Err(Stop::Retry(e))
        }
    }
}

/// The condition reason of a registry failure: access denied (credentials, scope, CA) or unavailable.
fn registry_reason(e: &PipelineError) -> &'static str {
    match e {
        PipelineError::AccessDenied(_) => reasons::REGISTRY_ACCESS_DENIED,
        _ => reasons::REGISTRY_UNAVAILABLE,
    }
}

/// Write the TrustPolicy's version ledger, on the resource version read: a concurrent write makes
/// this fail (409) and the reconcile retry, rather than lose an entry.
async fn write_ledger(
    ctx: &Context,
    tp: &TrustPolicy,
    delivered: Vec<pollen_crds::DeliveredVersion>,
) -> Result<(), kube::Error> {
    let api: Api<TrustPolicy> = Api::all(ctx.client.clone());
    let body = json!({
        "metadata": { "resourceVersion": tp.resource_version() },
        "status": { "delivered": delivered },
    });
    api.patch_status(&tp.name_any(), &PatchParams::default(), &Patch::Merge(body))
        .await?;
    Ok(())
}

async fn invalid_spec(
    ctx: &Context,
    ur: &UpdateRollout,
    prev: &UpdateRolloutStatus,
    mut st: UpdateRolloutStatus,
    message: String,
    now: Timestamp,
) -> Result<Action, Error> {
    st.phase = RolloutPhase::Failed;
    set_condition(
        &mut st,
        types::FAILED,
        true,
        reasons::INVALID_SPEC,
        message.clone(),
        now,
    );
    set_condition(
        &mut st,
        types::PROGRESSING,
        false,
        reasons::INVALID_SPEC,
        message,
        now,
    );
    settle(ctx, ur, prev, st, Action::await_change()).await
}

fn claim_of(ur: &UpdateRollout, nodes: &[EdgeNode]) -> progress::Claim {
    let nodes = match Selector::try_from(ur.spec.selector.clone()) {
        Ok(sel) => nodes
            .iter()
            .filter(|n| sel.matches(n.labels()))
            .map(|n| n.name_any())
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    let phase = ur.status.as_ref().map(|s| s.phase).unwrap_or_default();
    progress::Claim {
        key: key_of(ur),
        created: ur
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        target_path: ur.spec.install.target_path.clone(),
        nodes,
        finished: matches!(phase, RolloutPhase::Complete | RolloutPhase::Failed),
    }
}

/// Finalizer cleanup: remove this rollout's assignments from every EdgeNode. Installed versions stay.
///
/// Always lists from the API server, not the cache: a cache that has not yet seen a fresh assignment
/// must not let the finalizer go with an assignment left behind.
async fn cleanup(ur: &UpdateRollout, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(ur);
    let uid = ur.uid().ok_or(Error::MissingMetadata("uid"))?;
    let nodes_api: Api<EdgeNode> = Api::all(ctx.client.clone());
    let nodes = nodes_api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items;
    let manager = assignment_manager(&uid);
    let mut removed = 0;
    for n in nodes
        .iter()
        .filter(|n| n.spec.assignments.iter().any(|a| a.rollout == key))
    {
        patch_assignment(&nodes_api, n, &key, &manager, None).await?;
        removed += 1;
    }
    ctx.metrics.forget_rollout(&key);
    notify_finished(ctx);
    publish_event(
        ctx,
        ur,
        false,
        "AssignmentsRemoved",
        format!("removed the assignments of {removed} EdgeNode(s)"),
    )
    .await;
    Ok(Action::await_change())
}

/// The rollouts an EdgeNode change concerns: those it holds assignments of, and those whose selector
/// matches its labels.
fn rollouts_for_node(node: &EdgeNode, rollouts: &[Arc<UpdateRollout>]) -> Vec<ObjectRef<UpdateRollout>> {
    let mut refs: BTreeSet<(String, String)> = node
        .spec
        .assignments
        .iter()
        .filter_map(|a| {
            a.rollout
                .split_once('/')
                .map(|(ns, n)| (ns.to_string(), n.to_string()))
        })
        .collect();
    for ur in rollouts {
        if let Ok(sel) = Selector::try_from(ur.spec.selector.clone())
            && sel.matches(node.labels())
        {
            refs.insert((ur.namespace().unwrap_or_default(), ur.name_any()));
        }
    }
    refs.into_iter()
        .map(|(ns, n)| ObjectRef::new(&n).within(&ns))
        .collect()
}

/// Run the controller until `shutdown` resolves. `namespace` limits which rollouts are watched.
///
/// Fails early (and clearly) when the Pollen CRDs are not installed.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), kube::Error> {
    let client = ctx.client.clone();
    let rollouts: Api<UpdateRollout> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let nodes: Api<EdgeNode> = Api::all(client.clone());
    let policies: Api<TrustPolicy> = Api::all(client.clone());
    for probe in [
        rollouts.list(&ListParams::default().limit(1)).await.map(|_| ()),
        nodes.list(&ListParams::default().limit(1)).await.map(|_| ()),
        policies.list(&ListParams::default().limit(1)).await.map(|_| ()),
    ] {
        if let Err(e) = probe {
            warn!(
                "the Pollen CRDs are not queryable ({e}); install them with `kubectl apply -f crds/pollen.dev.yaml`"
            );
            return Err(e);
        }
    }
    let (node_cache, node_writer) = reflector::store::<EdgeNode>();
    // The cache reconciles read from (a watch of its own: `Controller::watches` keeps no store).
    let node_events = reflector::reflector(node_writer, watcher(nodes.clone(), watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let cache_task = tokio::spawn(node_events.for_each(|_| futures::future::ready(())));
    let (finished_tx, finished_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _ = ctx.finished.set(finished_tx);
    let finished = futures::stream::unfold(
        finished_rx,
        |mut rx| async move { rx.recv().await.map(|v| (v, rx)) },
    );
    let controller = Controller::new(rollouts, watcher::Config::default().any_semantic());
    let store = controller.store();
    let _ = ctx.caches.set(Caches {
        nodes: node_cache.clone(),
        rollouts: store.clone(),
    });
    let node_store = store.clone();
    let policy_store = store.clone();
    let diagnostics = ctx.diagnostics.clone();
    // Readiness waits on the EdgeNode cache only. The controller's own store must not be awaited
    // here: its readiness signal wakes a single waiter, and the controller itself waits on it.
    // The rollouts were listed above, and the controller starts reconciling once its store synced.
    tokio::spawn(async move {
        if node_cache.wait_until_ready().await.is_ok() {
            diagnostics.write().await.ready = true;
            info!("caches synced; ready");
        }
    });
    controller
        .with_config(
            controller::Config::default()
                .concurrency(concurrency)
                .debounce(Duration::from_millis(250)),
        )
        .watches(nodes, watcher::Config::default(), move |node: EdgeNode| {
            rollouts_for_node(&node, &node_store.state())
        })
        .watches(policies, watcher::Config::default(), move |tp: TrustPolicy| {
            let name = tp.name_any();
            policy_store
                .state()
                .iter()
                .filter(|ur| ur.spec.trust_policy == name)
                .map(|ur| ObjectRef::from_obj(&**ur))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(finished)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(rollout = %obj, "reconciled"),
                Err(e) => debug!("reconcile error: {e}"),
            }
        })
        .await;
    cache_task.abort();
    info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use pollen_crds::{AssignmentPhase, Wave};
    use std::sync::Mutex;

    struct Harness {
        ctx: Arc<Context>,
        world: Arc<Mutex<World>>,
        server: tokio::task::JoinHandle<()>,
        clock: TestClock,
    }

    impl Harness {
        fn new(world: World, pipeline: Arc<dyn ArtifactPipeline>) -> Self {
            Self::from_parts(world, test_context(pipeline))
        }
        /// A harness whose cluster serves Events.
        fn with_events(world: World, pipeline: Arc<dyn ArtifactPipeline>) -> Self {
            Self::from_parts(world, test_context_with_events(pipeline))
        }
        fn from_parts(
            world: World,
            (ctx, verifier, clock): (Arc<Context>, ApiServerVerifier, TestClock),
        ) -> Self {
            let world = Arc::new(Mutex::new(world));
            let server = verifier.run(Scenario::World(world.clone()));
            Self {
                ctx,
                world,
                server,
                clock,
            }
        }
        async fn step(&self, name: &str) -> Result<Action, Error> {
            let ur = self.world.lock().unwrap().rollout(name);
            reconcile(Arc::new(ur), self.ctx.clone()).await
        }
        fn w(&self) -> std::sync::MutexGuard<'_, World> {
            self.world.lock().unwrap()
        }
        /// The operator restarts: a new context (fresh metrics, no memory) on the same world.
        fn restart(self, pipeline: Arc<dyn ArtifactPipeline>) -> Self {
            let Harness {
                ctx, world, server, ..
            } = self;
            drop(ctx);
            let (ctx, verifier, clock) = test_context(pipeline);
            drop(server);
            let server = verifier.run(Scenario::World(world.clone()));
            Self {
                ctx,
                world,
                server,
                clock,
            }
        }
        async fn finish(self) {
            let unexpected = self.w().unexpected.clone();
            assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
            drop(self.ctx);
            timeout_after_1s(self.server).await;
        }
    }

    fn cond<'a>(st: &'a UpdateRolloutStatus, t: &str) -> &'a Condition {
        st.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} condition in {st:?}"))
    }

    fn fleet(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("gw-{i:02}")).collect()
    }

    fn world_with(n: usize, rollouts: Vec<UpdateRollout>) -> World {
        let names = fleet(n);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut w = World::with_nodes(&refs);
        for r in rollouts {
            w.add(r);
        }
        w
    }

    #[tokio::test]
    async fn a_rollout_without_finalizer_gets_one_and_nothing_else() {
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r")]),
            ScriptedPipeline::signed(),
        );
        h.step("r").await.unwrap();
        {
            let w = h.w();
            assert_eq!(w.rollout("r").finalizers(), &[FINALIZER.to_string()]);
            assert_eq!(w.log.len(), 1, "{:?}", w.log);
            assert_eq!(w.edge_node_writes(), 0);
        }
        h.finish().await;
    }

    #[tokio::test]
    async fn a_rollout_that_is_not_stored_makes_no_request_beyond_the_finalizer_path() {
        // A deleted rollout without our finalizer: the finalizer helper does nothing.
        let (ctx, verifier, _) = test_context(ScriptedPipeline::signed());
        let server = verifier.run(Scenario::RadioSilence);
        let ur = UpdateRollout::test("gone").deleting();
        reconcile(Arc::new(ur), ctx.clone()).await.unwrap();
        drop(ctx);
        timeout_after_1s(server).await;
    }

    /// A reconcile that starts from a stale copy of the rollout (the watch cache has not seen the
    /// status just written) reads the stored status instead of building a second index.
    #[tokio::test]
    async fn a_stale_cache_does_not_build_a_second_index() {
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        let stale = h.w().rollout("r");
        h.step("r").await.unwrap();
        let first = h.w().status("r").chunk_index.clone().expect("indexed");
        reconcile(Arc::new(stale), h.ctx.clone()).await.unwrap();
        assert_eq!(
            pipeline.index_requests.lock().unwrap().len(),
            1,
            "a second index was built"
        );
        assert_eq!(h.w().status("r").chunk_index, Some(first.clone()));
        let assigned = h.w().assigned("r");
        assert!(assigned.values().all(|ix| *ix == first), "{assigned:?}");
        h.finish().await;
    }

    #[tokio::test]
    async fn canary_then_fleet_then_complete() {
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(
            world_with(5, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        h.step("r").await.unwrap();
        let canary = {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Distributing);
            assert_eq!(cond(&st, types::RESOLVED).status, "True");
            assert_eq!(cond(&st, types::VERIFIED).reason, reasons::SIGNATURE_VERIFIED);
            assert_eq!(cond(&st, types::INDEXED).status, "True");
            assert_eq!(cond(&st, types::COMPLETE).status, "False");
            assert_eq!(st.observed_generation, Some(1));
            assert_eq!(st.current_wave, Some(0));
            assert_eq!(st.progress.as_deref(), Some("0/5"));
            assert!(
                st.artifact_digest
                    .as_deref()
                    .unwrap()
                    .starts_with("registry.test/fw@sha256:")
            );
            let assigned = w.assigned("r");
            assert_eq!(assigned.len(), 1, "only the canary: {assigned:?}");
            assert_eq!(assigned.values().next(), st.chunk_index.as_ref());
            // Every write used this rollout's own field manager.
            for r in w.log.iter().filter(|r| r.is_edge_node_write()) {
                assert_eq!(r.manager.as_deref(), Some(assignment_manager("uid-r").as_str()));
            }
            assigned.keys().next().unwrap().clone()
        };
        assert_eq!(pipeline.calls(), vec!["resolve", "verify", "index"]);

        // The canary downloads: nothing advances.
        h.w().report(&canary, "r", AssignmentPhase::Downloading);
        h.step("r").await.unwrap();
        assert_eq!(h.w().assigned("r").len(), 1);
        assert_eq!(h.w().status("r").nodes.downloading, 1);

        // The canary installs: the second wave gets its assignments.
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        {
            let w = h.w();
            assert_eq!(w.assigned("r").len(), 5);
            let st = w.status("r");
            assert_eq!(st.current_wave, Some(1));
            assert_eq!(st.phase, RolloutPhase::Distributing);
            assert_eq!(st.waves[0].installed, 1);
            assert!(st.waves[1].started);
        }
        for n in fleet(5) {
            h.w().report(&n, "r", AssignmentPhase::Installed);
        }
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Complete);
            assert_eq!(cond(&st, types::COMPLETE).status, "True");
            assert_eq!(cond(&st, types::COMPLETE).reason, reasons::ALL_NODES_INSTALLED);
            assert_eq!(st.progress.as_deref(), Some("5/5"));
            assert_eq!(st.offload.as_deref(), Some("75%"));
            assert_eq!(st.bytes_from_peers, 5 * 3072);
        }
        assert_eq!(pipeline.calls().len(), 3, "the index is built once");
        assert_eq!(h.ctx.metrics.reconcile_count("ok"), 4);
        h.finish().await;
    }

    #[tokio::test]
    async fn the_rollout_limits_and_window_travel_with_the_assignments() {
        let mut ur = UpdateRollout::test("r").finalized();
        ur.spec.transfer.upload_bytes_per_second = Some(65536);
        ur.spec.transfer.download_bytes_per_second = Some(131072);
        ur.spec.transfer.peer_wait = Some("45s".into());
        ur.spec.transfer.origin_requests = Some(8);
        let night = pollen_crds::rollout::ActivationWindow::parse("22:00-03:00").unwrap();
        ur.spec.install.activation_window = Some(night.clone());
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(world_with(3, vec![ur]), pipeline.clone());
        h.step("r").await.unwrap();
        let canary = h.w().assigned("r").keys().next().unwrap().clone();
        let a = h.w().assignment(&canary, "r").unwrap();
        assert_eq!(a.upload_bytes_per_second, Some(65536));
        assert_eq!(a.download_bytes_per_second, Some(131072));
        assert_eq!(a.peer_wait.as_deref(), Some("45s"));
        assert_eq!(a.origin_requests, Some(8));
        assert_eq!(a.activation_window, Some(night));
        let index = a.chunk_index;
        // Lifting the window rewrites the assignment but keeps the index: no registry work.
        {
            let mut w = h.w();
            let ur = w.rollouts.get_mut(&format!("{NS}/r")).unwrap();
            ur.spec.install.activation_window = None;
            ur.metadata.generation = Some(2);
        }
        h.step("r").await.unwrap();
        let a = h.w().assignment(&canary, "r").unwrap();
        assert_eq!(a.activation_window, None);
        assert_eq!(a.chunk_index, index);
        assert_eq!(pipeline.calls().len(), 3, "the index is built once");
        h.finish().await;
    }

    /// Every assignment carries the director's peer grant for its node on its index (what lets a node
    /// that joined after the index was built trade with its peers), and grants are kept, not signed
    /// afresh: a reconcile with nothing new writes no EdgeNode.
    #[tokio::test]
    async fn assignments_carry_a_stable_peer_grant() {
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r").finalized()]),
            pipeline,
        );
        h.step("r").await.unwrap();
        let assigned = h.w().assigned("r");
        assert!(!assigned.is_empty());
        let director = crate::fixtures::test_director().public_key().unwrap();
        for (node, index) in &assigned {
            let a = h.w().assignment(node, "r").unwrap();
            let raw = pollen_trust::grant::decode(a.peer_grant.as_deref().expect("a grant")).unwrap();
            let digest = pollen_trust::grant::index_digest(index).unwrap();
            assert!(
                pollen_trust::grant::verify(&director, digest, node, &raw),
                "{node}"
            );
            assert!(!pollen_trust::grant::verify(&director, digest, "gw-99", &raw));
        }
        let writes = h.w().edge_node_writes();
        h.step("r").await.unwrap();
        assert_eq!(
            h.w().edge_node_writes(),
            writes,
            "a reconcile rewrote assignments"
        );
        h.finish().await;
    }

    #[tokio::test]
    async fn the_origin_budget_caps_origin_reads_in_the_assignments() {
        // No budget: no cap in the assignments.
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r").finalized()]),
            ScriptedPipeline::signed(),
        );
        h.step("r").await.unwrap();
        assert!(h.w().allowances("r").values().all(Option::is_none));
        h.finish().await;

        let mut ur = UpdateRollout::test("r").finalized();
        ur.spec.transfer.origin_budget_percent = Some(100);
        let h = Harness::new(world_with(5, vec![ur]), ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        let canary = h.w().assigned("r").keys().next().unwrap().clone();
        // A 4096-byte artifact and a budget of one copy: the canary may read all of it.
        assert_eq!(
            h.w().allowances("r"),
            BTreeMap::from([(canary.clone(), Some(4096))])
        );
        // It installs, having read 1024 bytes from the origin: each node of the second wave may read
        // the 3072 bytes left (rounded up to a step, here the whole budget).
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        let a = h.w().allowances("r");
        assert_eq!(a.len(), 5);
        assert_eq!(a[&canary], Some(4096), "a finished node keeps its cap");
        assert!(
            a.iter()
                .filter(|(n, _)| **n != canary)
                .all(|(_, v)| *v == Some(4096)),
            "{a:?}"
        );
        let st = h.w().rollout("r").status.unwrap();
        assert!(
            st.conditions
                .iter()
                .all(|c| c.type_ != types::ORIGIN_BUDGET_SPENT)
        );
        // The second wave reports 1024 origin bytes each: 5120 in all, the budget is spent. Every working
        // node is capped at what it read, and the rollout says why nodes fetch from peers only.
        for n in fleet(5).iter().filter(|n| **n != canary) {
            h.w().report(n, "r", AssignmentPhase::Downloading);
        }
        h.step("r").await.unwrap();
        for (n, v) in h.w().allowances("r") {
            let want = if n == canary { 4096 } else { 1024 };
            assert_eq!(v, Some(want), "{n}");
        }
        let st = h.w().rollout("r").status.unwrap();
        let c = cond(&st, types::ORIGIN_BUDGET_SPENT);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::BUDGET_SPENT)
        );
        h.finish().await;
    }

    #[tokio::test]
    async fn an_operator_restart_rewrites_nothing_and_keeps_the_waves() {
        let h = Harness::new(
            world_with(
                8,
                vec![
                    UpdateRollout::test("r")
                        .finalized()
                        .waves(vec![count(2, None), percent(100, None)]),
                ],
            ),
            ScriptedPipeline::signed(),
        );
        h.step("r").await.unwrap();
        let before = h.w().assigned("r");
        let writes = h.w().edge_node_writes();
        assert_eq!(before.len(), 2);
        let status_before = h.w().status("r");

        let pipeline = ScriptedPipeline::signed();
        let h = h.restart(pipeline.clone());
        h.step("r").await.unwrap();
        assert_eq!(h.w().assigned("r"), before, "the same canaries");
        assert_eq!(
            h.w().edge_node_writes(),
            writes,
            "no EdgeNode write after a restart"
        );
        assert!(
            pipeline.calls().is_empty(),
            "no registry work after a restart: {:?}",
            pipeline.calls()
        );
        assert_eq!(h.w().status("r").chunk_index, status_before.chunk_index);
        h.finish().await;
    }

    async fn verification_fails(pipeline: Arc<ScriptedPipeline>, reason: &str) {
        let h = Harness::new(
            world_with(4, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(cond(&st, types::VERIFIED).status, "False");
            assert_eq!(cond(&st, types::VERIFIED).reason, reason);
            assert_eq!(st.phase, RolloutPhase::Failed);
            assert_eq!(st.chunk_index, None);
            assert_eq!(w.edge_node_writes(), 0, "zero EdgeNode patches");
            assert!(w.assigned("r").is_empty());
        }
        assert_eq!(pipeline.calls(), vec!["resolve", "verify"], "no index is built");
        // Looking again changes nothing and costs no registry call.
        h.step("r").await.unwrap();
        assert_eq!(pipeline.calls().len(), 2);
        assert_eq!(h.w().edge_node_writes(), 0);
        h.finish().await;
    }

    #[tokio::test]
    async fn an_artifact_signed_after_the_rollout_was_applied_is_picked_up_on_the_retry() {
        let pipeline = ScriptedPipeline::unsigned();
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        let action = h.step("r").await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
        assert_eq!(
            cond(&h.w().status("r"), types::VERIFIED).reason,
            reasons::UNSIGNED
        );
        // The publisher signs it now.
        *pipeline.signed_by.lock().unwrap() = Some(TRUSTED_KEY.into());
        h.clock.advance(Duration::from_secs(299));
        h.step("r").await.unwrap();
        assert_eq!(
            pipeline.calls(),
            vec!["resolve", "verify"],
            "not before the retry is due"
        );
        assert_eq!(h.w().edge_node_writes(), 0);
        h.clock.advance(Duration::from_secs(1));
        h.step("r").await.unwrap();
        let st = h.w().status("r");
        assert_eq!(cond(&st, types::VERIFIED).status, "True");
        assert_eq!(st.phase, RolloutPhase::Distributing);
        assert_eq!(h.w().assigned("r").len(), 1);
        h.finish().await;
    }

    fn ledger_of(h: &Harness) -> Vec<pollen_crds::DeliveredVersion> {
        h.w().policies["fleet-default"]
            .status
            .clone()
            .unwrap_or_default()
            .delivered
    }

    #[tokio::test]
    async fn a_tag_moved_to_an_older_build_is_refused_until_the_rollout_allows_the_downgrade() {
        let pipeline = ScriptedPipeline::signed();
        let mut a = UpdateRollout::test("a").finalized();
        a.spec.artifact.reference = "registry.test/fw:2.0".into();
        let h = Harness::with_events(world_with(3, vec![a]), pipeline.clone());
        h.step("a").await.unwrap();
        assert_eq!(h.w().status("a").version.as_deref(), Some("2.0.0"));
        assert_eq!(cond(&h.w().status("a"), types::VERIFIED).status, "True");
        let ledger = ledger_of(&h);
        assert_eq!(ledger.len(), 1, "{ledger:?}");
        assert_eq!(
            (
                ledger[0].repository.as_str(),
                ledger[0].target_path.as_str(),
                ledger[0].version.as_str(),
                ledger[0].rollout.as_str()
            ),
            ("registry.test/fw", "firmware/gw.bin", "2.0.0", "fleet/a")
        );
        // Rollout `a` goes away; the ledger stays with the TrustPolicy.
        h.w().rollouts.remove(&format!("{NS}/a"));

        // Whoever moves the tag `stable` to the older 1.0.0 build gets nothing delivered.
        pipeline.claim("registry.test/fw:stable", Some("1.0.0"));
        let mut b = UpdateRollout::test("b").finalized();
        b.spec.artifact.reference = "registry.test/fw:stable".into();
        h.w().add(b);
        let writes = h.w().edge_node_writes();
        h.step("b").await.unwrap();
        {
            let st = h.w().status("b");
            let v = cond(&st, types::VERIFIED);
            assert_eq!(
                (v.status.as_str(), v.reason.as_str()),
                ("False", reasons::DOWNGRADE)
            );
            assert!(
                v.message.contains("1.0.0") && v.message.contains("2.0.0"),
                "{}",
                v.message
            );
            assert_eq!(st.phase, RolloutPhase::Failed);
            assert_eq!(st.chunk_index, None);
            assert!(h.w().assigned("b").is_empty());
            assert_eq!(h.w().edge_node_writes(), writes, "zero EdgeNode patches");
        }
        // Another build signed as the same version is refused too.
        pipeline.claim("registry.test/fw:stable", Some("2.0.0"));
        h.clock.advance(Duration::from_secs(300));
        h.step("b").await.unwrap();
        assert_eq!(
            cond(&h.w().status("b"), types::VERIFIED).reason,
            reasons::VERSION_REUSED
        );
        assert_eq!(h.w().edge_node_writes(), writes);

        // The rollout says so explicitly: delivered, shown in the status and in an event.
        pipeline.claim("registry.test/fw:stable", Some("1.0.0"));
        h.w()
            .rollouts
            .get_mut(&format!("{NS}/b"))
            .unwrap()
            .spec
            .artifact
            .allow_downgrade = true;
        h.step("b").await.unwrap();
        {
            let w = h.w();
            let st = w.status("b");
            assert_eq!(cond(&st, types::VERIFIED).status, "True");
            assert!(
                cond(&st, types::VERIFIED)
                    .message
                    .contains("downgrade from 2.0.0")
            );
            assert_eq!(st.version.as_deref(), Some("1.0.0"));
            assert_eq!(st.downgraded_from.as_deref(), Some("2.0.0"));
            assert_eq!(st.phase, RolloutPhase::Distributing);
            assert_eq!(w.assigned("b").len(), 1);
            let events: Vec<&serde_json::Value> = w
                .log
                .iter()
                .filter(|r| r.path.contains("/events"))
                .map(|r| &r.body)
                .filter(|b| b["reason"] == reasons::DOWNGRADE_ALLOWED)
                .collect();
            assert_eq!(events.len(), 1, "{events:?}");
            assert!(events[0]["note"].as_str().unwrap().contains("2.0.0"));
        }
        // The mark stays at the highest version delivered.
        assert_eq!(ledger_of(&h)[0].version, "2.0.0");
        h.finish().await;
    }

    #[tokio::test]
    async fn a_ledger_write_that_races_another_writer_assigns_nothing_and_is_retried() {
        let h = Harness::new(
            world_with(2, vec![UpdateRollout::test("r").finalized()]),
            ScriptedPipeline::signed(),
        );
        h.w().policy_races = 1;
        let err = h.step("r").await.unwrap_err();
        assert!(
            err.to_string().contains("409") || err.to_string().contains("modified"),
            "{err}"
        );
        assert_eq!(
            cond(&h.w().status("r"), types::VERIFIED).reason,
            reasons::LEDGER_WRITE_FAILED
        );
        assert!(
            h.w().assigned("r").is_empty(),
            "no assignment before the version is recorded"
        );
        assert!(ledger_of(&h).is_empty());
        h.step("r").await.unwrap();
        assert_eq!(ledger_of(&h)[0].version, "1.0.0");
        assert_eq!(h.w().assigned("r").len(), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_signature_for_another_repository_is_verified_false_with_zero_assignments() {
        let pipeline = ScriptedPipeline::signed();
        *pipeline.verify_error.lock().unwrap() =
            Some(|| PipelineError::RepositoryMismatch("signed for registry.test/other".into()));
        verification_fails(pipeline, reasons::REPOSITORY_MISMATCH).await;
    }

    #[tokio::test]
    async fn a_malformed_version_claim_is_verified_false_with_zero_assignments() {
        let pipeline = ScriptedPipeline::signed();
        *pipeline.verify_error.lock().unwrap() =
            Some(|| PipelineError::InvalidVersionClaim("pollen.dev/version=\"v2\"".into()));
        verification_fails(pipeline, reasons::INVALID_VERSION_CLAIM).await;
    }

    #[tokio::test]
    async fn an_unversioned_artifact_needs_the_policy_and_leaves_the_ledger_alone() {
        let pipeline = ScriptedPipeline::signed();
        pipeline.claim("registry.test/fw:1.0", None);
        verification_fails(pipeline.clone(), reasons::UNVERSIONED).await;

        let pipeline = ScriptedPipeline::signed();
        pipeline.claim("registry.test/fw:1.0", None);
        let h = Harness::new(
            world_with(2, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        h.step("r").await.unwrap();
        assert_eq!(
            cond(&h.w().status("r"), types::VERIFIED).reason,
            reasons::UNVERSIONED
        );
        // The policy allows unversioned artifacts: picked up on the verification retry.
        h.w()
            .policies
            .get_mut("fleet-default")
            .unwrap()
            .spec
            .allow_unversioned = true;
        h.clock.advance(Duration::from_secs(300));
        h.step("r").await.unwrap();
        let st = h.w().status("r");
        assert_eq!(cond(&st, types::VERIFIED).status, "True");
        assert_eq!(st.version, None);
        assert_eq!(h.w().assigned("r").len(), 1);
        assert!(ledger_of(&h).is_empty(), "nothing to record without a claim");
        h.finish().await;
    }

    #[tokio::test]
    async fn an_unsigned_artifact_is_verified_false_with_zero_assignments() {
        verification_fails(ScriptedPipeline::unsigned(), reasons::UNSIGNED).await;
    }

    #[tokio::test]
    async fn a_wrong_key_is_verified_false_with_zero_assignments() {
        verification_fails(ScriptedPipeline::wrong_key(), reasons::UNTRUSTED_SIGNATURE).await;
    }

    #[tokio::test]
    async fn phase_changes_are_published_as_events_where_the_api_exists() {
        let (ctx, verifier, _) = test_context_with_events(ScriptedPipeline::wrong_key());
        let world = Arc::new(Mutex::new(world_with(
            2,
            vec![UpdateRollout::test("r").finalized()],
        )));
        let server = verifier.run(Scenario::World(world.clone()));
        let ur = world.lock().unwrap().rollout("r");
        reconcile(Arc::new(ur), ctx.clone()).await.unwrap();
        {
            let w = world.lock().unwrap();
            let events: Vec<&Recorded> = w.log.iter().filter(|r| r.path.contains("/events")).collect();
            assert_eq!(events.len(), 1, "one event for the phase change");
            let ev = &events[0].body;
            assert_eq!(
                events[0].path,
                format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
            );
            assert_eq!(ev["type"], "Warning");
            assert_eq!(ev["reason"], "Failed");
            assert!(ev["note"].as_str().unwrap().contains("Verified"), "{ev}");
            assert_eq!(ev["regarding"]["name"], "r");
            assert_eq!(w.edge_node_writes(), 0);
        }
        drop(ctx);
        timeout_after_1s(server).await;
    }

    #[tokio::test]
    async fn a_rollout_that_finishes_wakes_the_others() {
        let h = Harness::new(
            world_with(1, vec![UpdateRollout::test("r").finalized().waves(vec![])]),
            ScriptedPipeline::signed(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        h.ctx.finished.set(tx).unwrap();
        h.step("r").await.unwrap();
        assert!(rx.try_recv().is_err(), "distributing is not finished");
        h.w().report("gw-00", "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        assert_eq!(h.w().status("r").phase, RolloutPhase::Complete);
        assert!(rx.try_recv().is_ok(), "completion wakes the other rollouts");
        h.step("r").await.unwrap();
        assert!(rx.try_recv().is_err(), "only the transition does");
        h.finish().await;
    }

    #[tokio::test]
    async fn a_failed_canary_halts_the_rollout() {
        let h = Harness::new(
            world_with(6, vec![UpdateRollout::test("r").finalized()]),
            ScriptedPipeline::signed(),
        );
        h.step("r").await.unwrap();
        let canary = h.w().assigned("r").into_keys().next().unwrap();
        h.w().report(&canary, "r", AssignmentPhase::Failed);
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Failed);
            assert_eq!(
                cond(&st, types::FAILED).reason,
                reasons::FAILURE_THRESHOLD_CROSSED
            );
            assert_eq!(w.assigned("r").len(), 1, "no further wave");
        }
        // Even if the canary later recovers, a failed rollout stays failed for this generation.
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        assert_eq!(h.w().status("r").phase, RolloutPhase::Failed);
        assert_eq!(h.w().assigned("r").len(), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_failed_rollout_assigns_no_node_that_joins_later() {
        let ur = UpdateRollout::test("r").finalized().waves(vec![]);
        let h = Harness::new(world_with(3, vec![ur]), ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        assert_eq!(h.w().assigned("r").len(), 3);
        h.w().report("gw-01", "r", AssignmentPhase::Failed);
        h.step("r").await.unwrap();
        assert_eq!(h.w().status("r").phase, RolloutPhase::Failed);
        let writes = h.w().edge_node_writes();
        h.w().nodes.insert("gw-99".into(), edge_node("gw-99"));
        h.step("r").await.unwrap();
        assert!(!h.w().assigned("r").contains_key("gw-99"));
        assert_eq!(h.w().edge_node_writes(), writes, "nothing written after the halt");
        h.finish().await;
    }

    #[tokio::test]
    async fn a_node_joining_a_running_wave_is_assigned_and_counted() {
        let ur = UpdateRollout::test("r").finalized().waves(vec![]);
        let h = Harness::new(world_with(2, vec![ur]), ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        h.w().nodes.insert("gw-99".into(), edge_node("gw-99"));
        h.step("r").await.unwrap();
        assert!(h.w().assigned("r").contains_key("gw-99"));
        assert_eq!(h.w().status("r").nodes.targeted, 3);
        h.finish().await;
    }

    #[tokio::test]
    async fn editing_publishers_keeps_the_index_but_a_new_director_key_re_signs() {
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        h.step("r").await.unwrap();
        let index = h.w().status("r").chunk_index;
        h.w()
            .policies
            .get_mut("fleet-default")
            .unwrap()
            .spec
            .publishers
            .push(pollen_crds::Publisher {
                name: "second-team".into(),
                public_key: FOREIGN_KEY.into(),
            });
        h.step("r").await.unwrap();
        assert_eq!(h.w().status("r").chunk_index, index);
        assert_eq!(pipeline.calls().len(), 3, "no registry work for a publisher edit");
        h.w()
            .policies
            .get_mut("fleet-default")
            .unwrap()
            .spec
            .director
            .public_key = FOREIGN_KEY.into();
        h.step("r").await.unwrap();
        assert_ne!(
            h.w().status("r").chunk_index,
            index,
            "a new director key means a re-signed index"
        );
        assert_eq!(pipeline.calls().len(), 6);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_paused_rollout_stops_at_the_wave_boundary() {
        let mut ur = UpdateRollout::test("r").finalized();
        ur.spec.strategy.paused = true;
        let h = Harness::new(world_with(4, vec![ur]), ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        assert_eq!(h.w().assigned("r").len(), 1, "the current wave still starts");
        let canary = h.w().assigned("r").into_keys().next().unwrap();
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Paused);
            assert_eq!(cond(&st, types::PROGRESSING).reason, reasons::PAUSED_BY_USER);
            assert_eq!(w.assigned("r").len(), 1);
        }
        // Unpause (a new generation): the next wave starts.
        {
            let mut w = h.w();
            let ur = w.rollouts.get_mut(&format!("{NS}/r")).unwrap();
            ur.spec.strategy.paused = false;
            ur.metadata.generation = Some(2);
        }
        h.step("r").await.unwrap();
        assert_eq!(h.w().assigned("r").len(), 4);
        assert_eq!(h.w().status("r").observed_generation, Some(2));
        h.finish().await;
    }

    #[tokio::test]
    async fn a_wave_pause_holds_until_it_elapses() {
        let ur = UpdateRollout::test("r")
            .finalized()
            .waves(vec![count(1, Some("10m")), percent(100, None)]);
        let h = Harness::new(world_with(3, vec![ur]), ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        let canary = h.w().assigned("r").into_keys().next().unwrap();
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        let action = h.step("r").await.unwrap();
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(15)),
            "looks again within the resync"
        );
        assert_eq!(
            cond(&h.w().status("r"), types::PROGRESSING).reason,
            reasons::WAVE_PAUSE
        );
        assert_eq!(h.w().assigned("r").len(), 1);
        h.clock.advance(Duration::from_secs(599));
        let action = h.step("r").await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(1)));
        assert_eq!(h.w().assigned("r").len(), 1);
        h.clock.advance(Duration::from_secs(1));
        h.step("r").await.unwrap();
        assert_eq!(h.w().assigned("r").len(), 3);
        h.finish().await;
    }

    #[tokio::test]
    async fn the_older_of_two_conflicting_rollouts_wins() {
        let old = UpdateRollout::test("old").finalized();
        let mut new = UpdateRollout::test("new").finalized();
        new.meta_mut().creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_100).unwrap()));
        let h = Harness::new(world_with(4, vec![old, new]), ScriptedPipeline::signed());
        h.step("old").await.unwrap();
        h.step("new").await.unwrap();
        {
            let w = h.w();
            let st = w.status("new");
            assert_eq!(cond(&st, types::CONFLICT).status, "True");
            assert_eq!(cond(&st, types::CONFLICT).reason, reasons::OLDER_ROLLOUT_WINS);
            assert!(cond(&st, types::CONFLICT).message.contains("fleet/old"));
            assert_eq!(st.phase, RolloutPhase::Pending);
            assert!(w.assigned("new").is_empty());
            assert_eq!(w.assigned("old").len(), 1);
            assert!(
                w.status("old")
                    .conditions
                    .iter()
                    .all(|c| c.type_ != types::CONFLICT)
            );
        }
        // Once the older one finishes, the newer one goes ahead.
        {
            let mut w = h.w();
            let mut st = w.status("old");
            st.phase = RolloutPhase::Complete;
            w.rollouts.get_mut(&format!("{NS}/old")).unwrap().status = Some(st);
        }
        h.step("new").await.unwrap();
        assert_eq!(h.w().assigned("new").len(), 1);
        assert!(
            h.w()
                .status("new")
                .conditions
                .iter()
                .all(|c| c.type_ != types::CONFLICT)
        );
        h.finish().await;
    }

    #[tokio::test]
    async fn sequences_grow_per_install_path_even_if_the_clock_goes_back() {
        let old = UpdateRollout::test("old")
            .finalized()
            .with_status(UpdateRolloutStatus {
                phase: RolloutPhase::Complete,
                sequence: Some(9_000_000_000_000),
                ..UpdateRolloutStatus::default()
            });
        let mut other_path = UpdateRollout::test("elsewhere").finalized();
        other_path.spec.install.target_path = "firmware/other.bin".into();
        other_path.status = Some(UpdateRolloutStatus {
            sequence: Some(9_900_000_000_000),
            ..UpdateRolloutStatus::default()
        });
        let mut new = UpdateRollout::test("new").finalized();
        new.meta_mut().creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_100).unwrap()));
        let h = Harness::new(
            world_with(2, vec![old, other_path, new]),
            ScriptedPipeline::signed(),
        );
        h.step("new").await.unwrap();
        // The clock says 1_800_000_000_000 ms, lower than the older rollout's sequence on this path.
        assert_eq!(h.w().status("new").sequence, Some(9_000_000_000_001));
        h.finish().await;
    }

    #[tokio::test]
    async fn rollouts_on_different_paths_keep_each_others_assignments() {
        let a = UpdateRollout::test("a").finalized().waves(vec![]);
        let mut b = UpdateRollout::test("b").finalized().waves(vec![]);
        b.spec.install.target_path = "firmware/modem.bin".into();
        let h = Harness::new(world_with(3, vec![a, b]), ScriptedPipeline::signed());
        h.step("a").await.unwrap();
        h.step("b").await.unwrap();
        h.step("a").await.unwrap();
        {
            let w = h.w();
            assert_eq!(w.assigned("a").len(), 3);
            assert_eq!(w.assigned("b").len(), 3);
            for n in w.nodes.values() {
                assert_eq!(n.spec.assignments.len(), 2);
            }
        }
        h.finish().await;
    }

    #[tokio::test]
    async fn bad_specs_fail_clearly_without_writes() {
        let bad_pause = UpdateRollout::test("p")
            .finalized()
            .waves(vec![count(1, Some("soon"))]);
        let mut no_policy = UpdateRollout::test("t").finalized();
        no_policy.spec.trust_policy = "missing".into();
        let both = UpdateRollout::test("b").finalized().waves(vec![Wave {
            count: Some(1),
            percent: Some(10),
            pause: None,
        }]);
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(world_with(3, vec![bad_pause, no_policy, both]), pipeline.clone());
        h.step("p").await.unwrap();
        h.step("t").await.unwrap();
        h.step("b").await.unwrap();
        {
            let w = h.w();
            let p = w.status("p");
            assert_eq!(
                (p.phase, cond(&p, types::FAILED).reason.as_str()),
                (RolloutPhase::Failed, reasons::INVALID_SPEC)
            );
            assert!(cond(&p, types::FAILED).message.contains("soon"));
            let b = w.status("b");
            assert_eq!(cond(&b, types::FAILED).reason, reasons::INVALID_SPEC);
            let t = w.status("t");
            assert_eq!(t.phase, RolloutPhase::Verifying);
            assert_eq!(cond(&t, types::VERIFIED).reason, reasons::TRUST_POLICY_NOT_FOUND);
            assert_eq!(w.edge_node_writes(), 0);
        }
        assert!(pipeline.calls().is_empty(), "nothing reaches the registry");
        // The policy appears: the rollout proceeds.
        h.w().policies.insert("missing".into(), {
            let mut tp = trust_policy();
            tp.metadata.name = Some("missing".into());
            tp
        });
        h.step("t").await.unwrap();
        assert_eq!(h.w().assigned("t").len(), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retried_with_a_condition() {
        let h = Harness::new(
            world_with(2, vec![UpdateRollout::test("r").finalized()]),
            ScriptedPipeline::down(),
        );
        let err = h.step("r").await.unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Resolving);
            assert_eq!(cond(&st, types::RESOLVED).reason, reasons::REGISTRY_UNAVAILABLE);
            assert_eq!(w.edge_node_writes(), 0);
        }
        assert_eq!(h.ctx.metrics.reconcile_count("error"), 1);
        let action = error_policy(Arc::new(h.w().rollout("r")), &err, h.ctx.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(15)));
        h.finish().await;
    }

    #[tokio::test]
    async fn a_failed_index_push_holds_in_indexing_then_recovers() {
        let pipeline = ScriptedPipeline::signed();
        pipeline
            .index_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let h = Harness::new(
            world_with(3, vec![UpdateRollout::test("r").finalized()]),
            pipeline.clone(),
        );
        let err = h.step("r").await.unwrap_err();
        assert!(err.to_string().contains("index push refused"), "{err}");
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Indexing);
            assert_eq!(cond(&st, types::VERIFIED).status, "True");
            assert_eq!(cond(&st, types::INDEXED).reason, reasons::REGISTRY_UNAVAILABLE);
            assert_eq!(w.edge_node_writes(), 0);
        }
        pipeline
            .index_down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        h.step("r").await.unwrap();
        assert_eq!(h.w().status("r").phase, RolloutPhase::Distributing);
        assert_eq!(cond(&h.w().status("r"), types::INDEXED).status, "True");
        assert_eq!(h.w().assigned("r").len(), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn the_index_authorises_the_selected_nodes_that_are_not_quarantined() {
        let pipeline = ScriptedPipeline::signed();
        let mut world = world_with(4, vec![UpdateRollout::test("r").finalized()]);
        world
            .nodes
            .get_mut("gw-02")
            .unwrap()
            .labels_mut()
            .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        // Not selected (other role): not authorised either.
        let mut cam = edge_node("cam-1");
        cam.labels_mut().insert("role".into(), "camera".into());
        world.nodes.insert("cam-1".into(), cam);
        let h = Harness::new(world, pipeline.clone());
        h.step("r").await.unwrap();
        assert_eq!(
            pipeline.indexed_peers(),
            vec![vec!["gw-00".to_string(), "gw-01".into(), "gw-03".into()]]
        );
        // A node joining later is assigned but does not re-sign the index.
        h.w().nodes.insert("gw-04".into(), edge_node("gw-04"));
        h.step("r").await.unwrap();
        assert_eq!(pipeline.indexed_peers().len(), 1);
        // A new artifact re-indexes with the current selection.
        h.w()
            .rollouts
            .get_mut(&format!("{NS}/r"))
            .unwrap()
            .spec
            .artifact
            .reference = "registry.test/fw:2.0".into();
        h.step("r").await.unwrap();
        assert_eq!(
            pipeline.indexed_peers().last().unwrap(),
            &vec![
                "gw-00".to_string(),
                "gw-01".into(),
                "gw-03".into(),
                "gw-04".into()
            ]
        );
        h.finish().await;
    }

    #[tokio::test]
    async fn a_selection_of_quarantined_nodes_only_is_not_indexed() {
        let pipeline = ScriptedPipeline::signed();
        let mut world = world_with(2, vec![UpdateRollout::test("r").finalized()]);
        for n in world.nodes.values_mut() {
            n.labels_mut()
                .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        }
        let h = Harness::new(world, pipeline.clone());
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Pending);
            assert_eq!(cond(&st, types::PROGRESSING).reason, reasons::NO_TARGETS);
            assert!(st.chunk_index.is_none());
            assert_eq!(w.edge_node_writes(), 0);
        }
        assert!(
            pipeline.indexed_peers().is_empty(),
            "an index with no peers authorises everyone"
        );
        // The quarantine is lifted from one node: the index names that node only.
        h.w()
            .nodes
            .get_mut("gw-01")
            .unwrap()
            .labels_mut()
            .remove(pollen_crds::labels::QUARANTINE);
        h.step("r").await.unwrap();
        assert_eq!(pipeline.indexed_peers(), vec![vec!["gw-01".to_string()]]);
        h.finish().await;
    }

    #[tokio::test]
    async fn more_nodes_than_an_index_can_authorise_fail_with_a_condition() {
        let pipeline = ScriptedPipeline::signed();
        let h = Harness::new(
            world_with(
                MAX_INDEX_PEERS as usize + 1,
                vec![UpdateRollout::test("r").finalized()],
            ),
            pipeline.clone(),
        );
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Failed);
            assert_eq!(cond(&st, types::INDEXED).reason, TOO_MANY_PEERS);
            assert!(cond(&st, types::FAILED).message.contains("4097"), "{st:?}");
            assert_eq!(w.edge_node_writes(), 0);
        }
        assert!(pipeline.calls().is_empty(), "{:?}", pipeline.calls());
        // One node leaves the selection: the index is built with the maximum.
        let last = format!("gw-{:02}", MAX_INDEX_PEERS);
        h.w().nodes.remove(&last);
        h.step("r").await.unwrap();
        assert_eq!(pipeline.indexed_peers()[0].len(), MAX_INDEX_PEERS as usize);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_selector_matching_nothing_waits_in_pending() {
        let mut ur = UpdateRollout::test("r").finalized();
        ur.spec.selector.match_labels = Some(BTreeMap::from([("role".into(), "camera".into())]));
        let h = Harness::new(world_with(3, vec![ur]), ScriptedPipeline::signed());
        let action = h.step("r").await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        {
            let w = h.w();
            let st = w.status("r");
            assert_eq!(st.phase, RolloutPhase::Pending);
            assert_eq!(cond(&st, types::PROGRESSING).reason, reasons::NO_TARGETS);
            assert_eq!(cond(&st, types::COMPLETE).status, "False");
            assert_eq!(w.edge_node_writes(), 0);
        }
        // A matching node appears: the rollout starts.
        let mut cam = edge_node("cam-1");
        cam.labels_mut().insert("role".into(), "camera".into());
        h.w().nodes.insert("cam-1".into(), cam);
        h.step("r").await.unwrap();
        assert_eq!(h.w().status("r").phase, RolloutPhase::Distributing);
        assert_eq!(h.w().assigned("r").len(), 1);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_new_artifact_supersedes_the_old_assignments() {
        let h = Harness::new(
            world_with(5, vec![UpdateRollout::test("r").finalized()]),
            ScriptedPipeline::signed(),
        );
        h.step("r").await.unwrap();
        let canary = h.w().assigned("r").into_keys().next().unwrap();
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        let old_index = h.w().status("r").chunk_index.unwrap();
        assert_eq!(h.w().assigned("r").len(), 5);
        {
            let mut w = h.w();
            let ur = w.rollouts.get_mut(&format!("{NS}/r")).unwrap();
            ur.spec.artifact.reference = "registry.test/fw:2.0".into();
            ur.metadata.generation = Some(2);
        }
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let st = w.status("r");
            let new_index = st.chunk_index.clone().unwrap();
            assert_ne!(new_index, old_index);
            assert!(st.sequence.is_some());
            assert_eq!(
                st.current_wave,
                Some(0),
                "the new artifact starts from the canary again"
            );
            let assigned = w.assigned("r");
            assert_eq!(
                assigned.len(),
                1,
                "later waves wait for the new canary: {assigned:?}"
            );
            assert_eq!(assigned[&canary], new_index, "the canary stays the canary");
            // The canary's report about the old index does not count for the new one.
            assert_eq!(st.nodes.installed, 0);
        }
        h.finish().await;
    }

    #[tokio::test]
    async fn quarantined_nodes_get_no_assignment_and_leave_the_rollout() {
        // No failure tolerated: a quarantined node must not fail the rollout.
        let ur = UpdateRollout::test("r").finalized().waves(vec![]);
        let mut world = world_with(3, vec![ur]);
        world
            .nodes
            .get_mut("gw-01")
            .unwrap()
            .labels_mut()
            .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        let h = Harness::new(world, ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        {
            let w = h.w();
            assert!(!w.assigned("r").contains_key("gw-01"));
            assert_eq!(w.assigned("r").len(), 2);
            let st = w.status("r");
            assert_eq!(
                (st.nodes.failed, st.nodes.targeted, st.nodes.quarantined),
                (0, 2, 1)
            );
            assert_eq!(st.phase, RolloutPhase::Distributing);
            let msg = &cond(&st, types::PROGRESSING).message;
            assert!(
                msg.contains("quarantined (pollen.dev/quarantine=true), excluded: gw-01"),
                "{msg}"
            );
        }
        h.finish().await;
    }

    #[tokio::test]
    async fn quarantine_mid_rollout_takes_one_assignment_away_and_moves_nobody_else() {
        let ur = UpdateRollout::test("r").finalized();
        let h = Harness::new(world_with(5, vec![ur]), ScriptedPipeline::signed());
        h.step("r").await.unwrap();
        let canary = h.w().assigned("r").keys().next().unwrap().clone();
        h.w().report(&canary, "r", AssignmentPhase::Installed);
        h.step("r").await.unwrap();
        let waves_before: BTreeMap<String, i32> = h
            .w()
            .nodes
            .values()
            .flat_map(|n| n.spec.assignments.iter().map(|a| (n.name_any(), a.wave)))
            .collect();
        assert_eq!(waves_before.len(), 5);
        let victim = fleet(5).into_iter().find(|n| *n != canary).unwrap();
        h.w()
            .nodes
            .get_mut(&victim)
            .unwrap()
            .labels_mut()
            .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        h.step("r").await.unwrap();
        {
            let w = h.w();
            let assigned = w.assigned("r");
            assert!(
                !assigned.contains_key(&victim),
                "the quarantined node loses its assignment"
            );
            assert_eq!(assigned.len(), 4);
            for n in w.nodes.values() {
                for a in &n.spec.assignments {
                    assert_eq!(a.wave, waves_before[&n.name_any()], "{} moved", n.name_any());
                }
            }
            let st = w.status("r");
            assert_eq!(
                st.phase,
                RolloutPhase::Distributing,
                "a quarantine is not a failure"
            );
            assert_eq!(
                (st.nodes.failed, st.nodes.targeted, st.nodes.quarantined),
                (0, 4, 1)
            );
            let msg = &cond(&st, types::PROGRESSING).message;
            assert!(msg.contains(&format!("excluded: {victim}")), "{msg}");
        }
        // The quarantine is lifted: the node is assigned again, in its old wave, and no longer failed.
        h.w()
            .nodes
            .get_mut(&victim)
            .unwrap()
            .labels_mut()
            .remove(pollen_crds::labels::QUARANTINE);
        h.step("r").await.unwrap();
        {
            let w = h.w();
            assert_eq!(w.assigned("r").len(), 5);
            let wave = w.nodes[&victim].spec.assignments[0].wave;
            assert_eq!(wave, waves_before[&victim]);
            let st = w.status("r");
            assert_eq!(
                (st.nodes.failed, st.nodes.targeted, st.nodes.quarantined),
                (0, 5, 0)
            );
            assert!(!cond(&st, types::PROGRESSING).message.contains("quarantine"));
        }
        h.finish().await;
    }

    #[tokio::test]
    async fn deleting_a_rollout_removes_only_its_assignments() {
        let a = UpdateRollout::test("a").finalized().waves(vec![]);
        let mut b = UpdateRollout::test("b").finalized().waves(vec![]);
        b.spec.install.target_path = "firmware/modem.bin".into();
        let h = Harness::new(world_with(3, vec![a, b]), ScriptedPipeline::signed());
        h.step("a").await.unwrap();
        h.step("b").await.unwrap();
        for n in fleet(3) {
            h.w().report(&n, "a", AssignmentPhase::Installed);
        }
        {
            let mut w = h.w();
            let ur = w.rollouts.get_mut(&format!("{NS}/a")).unwrap();
            *ur = ur.clone().deleting();
        }
        h.step("a").await.unwrap();
        {
            let w = h.w();
            assert!(w.assigned("a").is_empty());
            assert_eq!(w.assigned("b").len(), 3, "the other rollout's entries stay");
            assert!(
                w.rollout("a").finalizers().is_empty(),
                "the finalizer is released"
            );
            // What the agents reported (installed versions, statuses) is left alone.
            assert!(
                w.nodes
                    .values()
                    .all(|n| n.status.as_ref().unwrap().assignments.len() == 1)
            );
        }
        h.finish().await;
    }

    #[tokio::test]
    async fn nodes_map_to_the_rollouts_that_concern_them() {
        let a = Arc::new(UpdateRollout::test("a"));
        let mut other = UpdateRollout::test("other");
        other.spec.selector.match_labels = Some(BTreeMap::from([("role".into(), "camera".into())]));
        let mut node = edge_node("gw-00");
        node.spec.assignments.push(pollen_crds::Assignment {
            rollout: "elsewhere/old".into(),
            chunk_index: "x@sha256:00".into(),
            wave: 0,
            sequence: 1,
            target_path: "a".into(),
            trust_policy: "t".into(),
            upload_bytes_per_second: None,
            download_bytes_per_second: None,
            peer_wait: None,
            origin_requests: None,
            origin_allowance_bytes: None,
            activation_window: None,
            peer_grant: None,
        });
        let refs = rollouts_for_node(&node, &[a, Arc::new(other)]);
        let names: Vec<String> = refs
            .iter()
            .map(|r| format!("{}/{}", r.namespace.clone().unwrap(), r.name))
            .collect();
        assert_eq!(names, vec!["elsewhere/old".to_string(), format!("{NS}/a")]);
    }
}
