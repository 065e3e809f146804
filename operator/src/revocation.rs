//! Revocation: quarantined and deleted EdgeNodes lose their certificates fleet-wide.
//!
//! When an EdgeNode is labelled `pollen.dev/quarantine=true`, or is deleted (the finalizer
//! [`FINALIZER`] holds it until its serials are revoked), the operator adds the node's certificate
//! serials to the one RevocationList `fleet`: every unexpired certificate the operator signed for
//! that node, plus the certificate in `EdgeNode.status.certificate` when its PEM proves that the
//! fleet CA issued it for that node (files mode). A node's own words (serial, `notAfter`) never
//! add an entry: the list holds only certificates the fleet CA issued, so a compromised node
//! cannot flood it. Those are recorded durably on the
//! EdgeNode ([`ISSUED_ANNOTATION`], written by the signer before it hands the certificate out, so an
//! operator restart loses none) and in memory ([`Issued`], which also covers a node whose EdgeNode
//! does not exist yet; the EdgeNode watch copies it into the annotation once it does). The list
//! carries a CRL signed by the fleet CA, numbered one higher than the last; agents watch it and pass
//! the signed CRL on to peers.
//!
//! Rules (pure, in [`targets`], [`next_entries`] and [`next_number`]):
//! - only unexpired certificates are added (an expired one is refused by every peer anyway);
//! - an entry stays until the later of [`MAX_NODE_LIFETIME`] after its revocation (every certificate
//!   the signer grants has expired by then) and its certificate's `notAfter` (a certificate
//!   provisioned as files may live longer), then it is pruned ([`keep_until`]);
//! - lifting the quarantine does not un-revoke: the node needs a new certificate, which the signer
//!   grants again once the label is gone;
//! - the CRL is re-signed (number + 1) at least every [`RESIGN_AFTER`], and whenever the stored one does
//!   not verify against the configured CA (a new CA); it is valid for [`CRL_VALIDITY`].
//!
//! Non-goals: enforcement (the agents refuse revoked peers), quarantine's effect on rollouts (see
//! [`crate::progress`]), the CSR signer (see [`crate::csr`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use pollen_crds::{CertificateInfo, EdgeNode, REVOCATION_LIST_NAME, RevocationEntry, RevocationList};
use pollen_trust::pki::{self, FleetCa, MAX_NODE_LIFETIME, Revoked};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::progress::{is_quarantined, unclear_quarantine};

/// The finalizer that holds a deleted EdgeNode until its certificates are revoked.
pub const FINALIZER: &str = "pollen.dev/revocation";
/// The field manager of RevocationList writes.
pub const FIELD_MANAGER: &str = "pollen-operator";
/// How long a signed CRL is valid.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The CRL is re-signed when it is older than this.
pub const RESIGN_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often the list is looked at without any EdgeNode change (re-signing, pruning).
pub const RESYNC: Duration = Duration::from_secs(3600);
/// The longest serial the RevocationList schema accepts (hex digits).
pub const MAX_SERIAL_LEN: usize = 64;

/// Why a node's certificates are revoked (the entry's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeReason {
    /// Labelled `pollen.dev/quarantine=true`.
    Quarantined,
    /// The EdgeNode was deleted.
    Deleted,
}

impl RevokeReason {
    /// The entry's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quarantined => "Quarantined",
            Self::Deleted => "Deleted",
        }
    }
}

/// One certificate that must be revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node it was issued to.
    pub node: String,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Why.
    pub reason: RevokeReason,
    /// When the certificate expires: as signed (the ledger) where the operator signed it, else as
    /// the node reports it.
    pub not_after: Option<Timestamp>,
}

/// The EdgeNode annotation holding the durable ledger: the certificates the operator signed for
/// the node, a JSON list of `{"serial": "<hex>", "notAfter": "<RFC 3339>"}`, entries dropped after
/// their `notAfter`. Written by the operator before the certificate is handed out.
pub const ISSUED_ANNOTATION: &str = "pollen.dev/issued-certificates";

/// Serial → `notAfter` of the certificates signed for one node.
pub type Ledger = BTreeMap<String, Timestamp>;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LedgerEntry {
    serial: String,
    not_after: String,
}

/// The durable ledger of `node` (its [`ISSUED_ANNOTATION`]); an absent or unreadable annotation is
/// an empty ledger, entries with an invalid serial or time are skipped.
pub fn ledger_of(node: &EdgeNode) -> Ledger {
    let Some(text) = node.annotations().get(ISSUED_ANNOTATION) else {
        return Ledger::new();
    };
    match serde_json::from_str::<Vec<LedgerEntry>>(text) {
        Ok(entries) => entries
            .into_iter()
            .filter(|e| valid_serial(&e.serial))
            .filter_map(|e| Some((e.serial, e.not_after.parse::<Timestamp>().ok()?)))
            .collect(),
        Err(e) => {
            warn!(node = %node.name_any(), "unreadable {ISSUED_ANNOTATION} annotation: {e}");
            Ledger::new()
        }
    }
}

/// The annotation value for `ledger` (sorted by serial).
pub fn ledger_annotation(ledger: &Ledger) -> String {
    let entries: Vec<LedgerEntry> = ledger
        .iter()
        .map(|(serial, t)| LedgerEntry {
            serial: serial.clone(),
            not_after: t.to_string(),
        })
        .collect();
    serde_json::to_string(&entries).expect("a ledger serialises")
}

/// `stored` with `more` added, certificates expired at `now` dropped.
pub fn merge_ledger(stored: &Ledger, more: &Ledger, now: Timestamp) -> Ledger {
    stored
        .iter()
        .chain(more.iter())
        .filter(|(_, t)| **t > now)
        .map(|(s, t)| (s.clone(), *t))
        .collect()
}

/// Write `more` into `node`'s durable ledger (and prune it), guarded by the resourceVersion read, so
/// that concurrent writers never lose an entry. `node` is the version already read, if any. Returns
/// `false` when the EdgeNode does not exist (the in-memory [`Issued`] ledger then keeps the
/// certificate until the EdgeNode appears, see [`run`]).
pub async fn record_durably(
    api: &Api<EdgeNode>,
    name: &str,
    mut node: Option<EdgeNode>,
    more: &Ledger,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let n = match node.take() {
            Some(n) => n,
            None => match api.get_opt(name).await? {
                Some(n) => n,
                None => return Ok(false),
            },
        };
        let merged = merge_ledger(&ledger_of(&n), more, now);
        let value = ledger_annotation(&merged);
        if n.annotations().get(ISSUED_ANNOTATION) == Some(&value) {
            return Ok(true);
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": n.resource_version(),
                "annotations": { ISSUED_ANNOTATION: value },
            },
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Node → serial → `notAfter` of the certificates the operator signed, in memory: filled as
/// certificates are signed and as signed CertificateSigningRequests are seen. It covers a node
/// whose EdgeNode does not exist yet; [`run`] copies it into the durable ledger once it does.
#[derive(Debug, Default)]
pub struct Issued {
    ledger: Mutex<BTreeMap<String, BTreeMap<String, Timestamp>>>,
    /// Set by the signer when a node it just signed for is quarantined or deleted meanwhile.
    wake: tokio::sync::Notify,
}

impl Issued {
    /// Record one certificate.
    pub fn record(&self, node: &str, serial: &str, not_after: Timestamp) {
        self.ledger
            .lock()
            .expect("issued lock")
            .entry(node.to_owned())
            .or_default()
            .insert(serial.to_owned(), not_after);
    }

    /// Record a signed certificate (PEM) by its own facts; `false` if it does not parse.
    pub fn record_pem(&self, pem: &str) -> bool {
        match pki::cert_facts(pem) {
            Ok(f) => {
                let not_after = Timestamp::try_from(f.not_after).unwrap_or(Timestamp::MAX);
                self.record(&f.name, &f.serial, not_after);
                true
            }
            Err(_) => false,
        }
    }

    /// The unexpired certificates of one node.
    pub fn of(&self, node: &str, now: Timestamp) -> Ledger {
        self.ledger
            .lock()
            .expect("issued lock")
            .get(node)
            .map(|l| merge_ledger(l, &Ledger::new(), now))
            .unwrap_or_default()
    }

    /// Ask the revocation loop for a sync now (the signer recorded a certificate for a node that
    /// turned out quarantined or deleted). Requests made while none is waiting are not lost.
    pub fn request_sync(&self) {
        self.wake.notify_one();
    }

    /// Resolves when [`Issued::request_sync`] was called.
    pub async fn sync_requested(&self) {
        self.wake.notified().await;
    }

    /// A copy of the ledger, with certificates expired at `now` dropped.
    pub fn snapshot(&self, now: Timestamp) -> BTreeMap<String, BTreeMap<String, Timestamp>> {
        let mut map = self.ledger.lock().expect("issued lock");
        map.retain(|_, serials| {
            serials.retain(|_, not_after| *not_after > now);
            !serials.is_empty()
        });
        map.clone()
    }
}

/// Whether a serial is lowercase hex of a sane length (what agents write and the CRL can carry).
pub fn valid_serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len().is_multiple_of(2)
        && serial.len() <= MAX_SERIAL_LEN
        && serial
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why an EdgeNode must be revoked, if it must: being deleted wins over quarantine.
pub fn revoke_reason(node: &EdgeNode) -> Option<RevokeReason> {
    if node.metadata.deletion_timestamp.is_some() {
        Some(RevokeReason::Deleted)
    } else if is_quarantined(node.labels()) {
        Some(RevokeReason::Quarantined)
    } else {
        None
    }
}

/// The certificates of quarantined and deleted nodes: the unexpired ones the operator signed for
/// each (its durable ledger, [`ISSUED_ANNOTATION`], and the in-memory `issued`), plus the certificate
/// the node reports in its status when that report proves itself: its PEM verifies against the
/// fleet CA and names this node. Serial and `notAfter` then come from the certificate, never from
/// the node's words; a report without such proof adds nothing (a quarantined node reporting
/// thousands of made-up serials must not fill the fleet's list). Sorted by node, then serial;
/// invalid serials are skipped.
pub fn targets<'a>(
    nodes: impl IntoIterator<Item = &'a EdgeNode>,
    issued: &BTreeMap<String, BTreeMap<String, Timestamp>>,
    ca: &FleetCa,
    now: Timestamp,
) -> Vec<Target> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let Some(reason) = revoke_reason(n) else {
            continue;
        };
        let name = n.name_any();
        // Serial -> notAfter; what the operator signed overrides what the certificate says.
        let mut serials = ledger_of(n);
        serials.extend(
            issued
                .get(&name)
                .into_iter()
                .flatten()
                .map(|(s, t)| (s.clone(), *t)),
        );
        if let Some(c) = n.status.as_ref().and_then(|s| s.certificate.as_ref())
            && !serials.contains_key(&c.serial)
        {
            match proven(ca, c, &name) {
                Ok((serial, not_after)) => {
                    serials.entry(serial).or_insert(not_after);
                }
                Err(why) => {
                    warn!(node = %name, serial = %c.serial, "not revoking the certificate the node reports: {why}");
                }
            }
        }
        for (s, not_after) in serials {
            if not_after > now && valid_serial(&s) {
                out.insert(
                    (name.clone(), s.clone()),
                    Target {
                        node: name.clone(),
                        serial: s,
                        reason,
                        not_after: Some(not_after),
                    },
                );
            }
        }
    }
    out.into_values().collect()
}

/// The serial and `notAfter` of a reported certificate that the fleet CA issued for `node`.
fn proven(ca: &FleetCa, c: &CertificateInfo, node: &str) -> Result<(String, Timestamp), String> {
    let pem = c.pem.as_deref().ok_or("it carries no PEM to prove it")?;
    let facts = ca.signed_facts(pem).map_err(|e| e.to_string())?;
    if facts.name != node {
        return Err(format!("it was issued for {:?}", facts.name));
    }
    let not_after = Timestamp::try_from(facts.not_after).map_err(|e| e.to_string())?;
    Ok((facts.serial, not_after))
}

/// Until when an entry stays listed: the later of [`MAX_NODE_LIFETIME`] after its revocation and
/// its certificate's `notAfter` (a certificate provisioned as files may live longer than a week).
pub fn keep_until(e: &RevocationEntry) -> Timestamp {
    let keep_for = jiff::SignedDuration::try_from(MAX_NODE_LIFETIME).expect("a week fits");
    let by_age = e.revoked_at.0.checked_add(keep_for).unwrap_or(Timestamp::MAX);
    e.not_after.as_ref().map_or(by_age, |t| by_age.max(t.0))
}

/// The entries the list should hold: the current ones not past [`keep_until`], plus every target
/// whose serial is not listed yet (revoked `now`, with the target's `notAfter`). A listed entry is
/// never rewritten (a node changing the `notAfter` it reports does not churn the list). Sorted by
/// node, then serial; one entry per serial.
pub fn next_entries(current: &[RevocationEntry], targets: &[Target], now: Timestamp) -> Vec<RevocationEntry> {
    let mut by_serial: BTreeMap<String, RevocationEntry> = BTreeMap::new();
    for e in current {
        if keep_until(e) > now && valid_serial(&e.serial) {
            by_serial.entry(e.serial.clone()).or_insert_with(|| e.clone());
        }
    }
    for t in targets {
        by_serial
            .entry(t.serial.clone())
            .or_insert_with(|| RevocationEntry {
                node: t.node.clone(),
                serial: t.serial.clone(),
                reason: t.reason.as_str().into(),
                revoked_at: Time(now),
                not_after: t.not_after.map(Time),
            });
    }
    let mut out: Vec<RevocationEntry> = by_serial.into_values().collect();
    out.sort_by(|a, b| (&a.node, &a.serial).cmp(&(&b.node, &b.serial)));
    out
}

/// The stored list, as the operator reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    /// Its CRL number.
    pub number: u64,
    /// Its entries.
    pub entries: Vec<RevocationEntry>,
    /// When its CRL was signed; `None` when the CRL does not verify against the configured CA.
    pub signed_at: Option<Timestamp>,
}

/// The number to write the `desired` entries under, or `None` when the stored list stands: same
/// entries, signed by this CA less than [`RESIGN_AFTER`] ago. No list and nothing to revoke: nothing
/// is written.
///
/// A new number is the higher of the stored number + 1 and the current unix time in seconds, so
/// numbers grow even when the stored list is gone (deleted, or a new cluster): the nodes keep the
/// last list they verified and take only a higher number.
pub fn next_number(current: Option<&Current>, desired: &[RevocationEntry], now: Timestamp) -> Option<u64> {
    let clock = u64::try_from(now.as_second()).unwrap_or(0);
    let Some(c) = current else {
        return (!desired.is_empty()).then_some(clock.max(1));
    };
    let same = {
        let key = |e: &RevocationEntry| {
            (
                e.node.clone(),
                e.serial.clone(),
                e.reason.clone(),
                e.revoked_at.0,
                e.not_after.as_ref().map(|t| t.0),
            )
        };
        let a: BTreeSet<_> = c.entries.iter().map(key).collect();
        let b: BTreeSet<_> = desired.iter().map(key).collect();
        a == b
    };
    let fresh = c.signed_at.is_some_and(|t| {
        let age = now.duration_since(t);
        age < jiff::SignedDuration::try_from(RESIGN_AFTER).expect("a day fits")
    });
    if same && fresh {
        None
    } else {
        Some(c.number.saturating_add(1).max(clock))
    }
}

/// Errors of the revocation layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// The CRL could not be signed.
    #[error("signing the revocation list: {0}")]
    Sign(#[source] pki::PkiError),
    /// Adding or removing the finalizer failed, or the revocation it guards.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// A source of "now".
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Writes the RevocationList.
pub struct Revoker {
    client: Client,
    ca: Arc<FleetCa>,
    issued: Arc<Issued>,
    metrics: Metrics,
    clock: Clock,
    /// One sync at a time, so numbers never collide.
    lock: tokio::sync::Mutex<()>,
}

impl Revoker {
    /// A revoker signing with `ca`, revoking what `issued` records besides the reported certificates.
    pub fn new(client: Client, ca: Arc<FleetCa>, issued: Arc<Issued>, metrics: Metrics) -> Self {
        Self {
            client,
            ca,
            issued,
            metrics,
            clock: Arc::new(Timestamp::now),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Copy what the in-memory ledger knows of `node` into its durable ledger, pruning expired
    /// entries; writes only on a difference. Returns whether it wrote.
    pub async fn persist_ledger(&self, api: &Api<EdgeNode>, node: &EdgeNode) -> Result<bool, Error> {
        let now = (self.clock)();
        let name = node.name_any();
        let memory = self.issued.of(&name, now);
        let merged = merge_ledger(&ledger_of(node), &memory, now);
        let stored = node.annotations().get(ISSUED_ANNOTATION);
        let unchanged = match stored {
            None => merged.is_empty(),
            Some(v) => *v == ledger_annotation(&merged),
        };
        if unchanged {
            return Ok(false);
        }
        record_durably(api, &name, Some(node.clone()), &memory, now)
            .await
            .map_err(Error::Kube)
    }

    /// The list as stored, or `None` when there is none.
    pub async fn current(&self) -> Result<Option<Current>, Error> {
        let api: Api<RevocationList> = Api::all(self.client.clone());
        let Some(rl) = api.get_opt(REVOCATION_LIST_NAME).await.map_err(Error::Kube)? else {
            return Ok(None);
        };
        let signed_at = pki::verify_revocation_list(rl.spec.crl.as_bytes(), self.ca.cert_pem())
            .ok()
            .and_then(|set| Timestamp::try_from(set.this_update).ok());
        Ok(Some(Current {
            number: rl.spec.number.max(0) as u64,
            entries: rl.spec.entries,
            signed_at,
        }))
    }

    /// Bring the list in line with `nodes` (quarantined and deleting ones are revoked). Returns the
    /// number written, or `None` when the stored list stands.
    pub async fn sync<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a EdgeNode>,
    ) -> Result<Option<u64>, Error> {
        let _one = self.lock.lock().await;
        let now = (self.clock)();
        let targets = targets(nodes, &self.issued.snapshot(now), &self.ca, now);
        let current = self.current().await?;
        let cur_entries = current.as_ref().map_or(&[][..], |c| c.entries.as_slice());
        let desired = next_entries(cur_entries, &targets, now);
        let Some(number) = next_number(current.as_ref(), &desired, now) else {
            if let Some(c) = &current {
                self.metrics.observe_revocation_list(c.number, c.entries.len());
            }
            return Ok(None);
        };
        let revoked: Vec<Revoked> = desired
            .iter()
            .map(|e| Revoked {
                serial: e.serial.clone(),
                revoked_at: SystemTime::from(e.revoked_at.0),
            })
            .collect();
        let crl = self
            .ca
            .revocation_list(number, &revoked, CRL_VALIDITY)
            .map_err(Error::Sign)?;
        let body = json!({
            "apiVersion": "pollen.dev/v1alpha1",
            "kind": "RevocationList",
            "metadata": { "name": REVOCATION_LIST_NAME },
            "spec": { "number": number, "crl": crl, "entries": desired },
        });
        let api: Api<RevocationList> = Api::all(self.client.clone());
        api.patch(
            REVOCATION_LIST_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::Kube)?;
        self.metrics.observe_revocation_list(number, desired.len());
        let added: Vec<String> = targets
            .iter()
            .filter(|t| !cur_entries.iter().any(|e| e.serial == t.serial))
            .map(|t| format!("{}/{} ({})", t.node, t.serial, t.reason.as_str()))
            .collect();
        info!(
            number,
            entries = desired.len(),
            "revocation list {REVOCATION_LIST_NAME} written{}",
            if added.is_empty() {
                String::new()
            } else {
                format!("; revoked {}", added.join(", "))
            }
        );
        Ok(Some(number))
    }
}

struct Ctx {
    revoker: Arc<Revoker>,
    api: Api<EdgeNode>,
    store: Store<EdgeNode>,
}

impl Ctx {
    /// The cached nodes, with `node` in its latest version.
    fn nodes_with(&self, node: &EdgeNode) -> Vec<EdgeNode> {
        let name = node.name_any();
        let mut nodes: Vec<EdgeNode> = self
            .store
            .state()
            .iter()
            .filter(|n| n.name_any() != name)
            .map(|n| (**n).clone())
            .collect();
        nodes.push(node.clone());
        nodes
    }
}

async fn reconcile(node: Arc<EdgeNode>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    finalizer(&ctx.api, FINALIZER, node, |event| async {
        match event {
            Finalizer::Apply(node) => {
                if let Some(value) = unclear_quarantine(node.labels()) {
                    warn!(
                        node = %node.name_any(),
                        "label {}={value:?} does not quarantine the node: only \"true\" does",
                        pollen_crds::labels::QUARANTINE
                    );
                }
                if ctx.revoker.persist_ledger(&ctx.api, &node).await? {
                    debug!(node = %node.name_any(), "issued certificates recorded on the EdgeNode");
                }
                if revoke_reason(&node).is_some() {
                    ctx.revoker.sync(&ctx.nodes_with(&node)).await?;
                }
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(node) => {
                ctx.revoker.sync(&ctx.nodes_with(&node)).await?;
                debug!(node = %node.name_any(), "revoked; releasing the EdgeNode");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn error_policy(node: Arc<EdgeNode>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(node = %node.name_any(), "revocation failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Watch EdgeNodes until `shutdown` resolves: add the finalizer to each, revoke quarantined and
/// deleted nodes, and re-sign the list every [`RESYNC`] when due.
pub async fn run(
    revoker: Arc<Revoker>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<EdgeNode> = Api::all(revoker.client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Ctx {
        revoker: revoker.clone(),
        api,
        store: store.clone(),
    });
    let periodic = tokio::spawn(async move {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let nodes: Vec<EdgeNode> = store.state().iter().map(|n| (**n).clone()).collect();
            if let Err(e) = revoker.sync(&nodes).await {
                warn!("revocation list resync failed: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(RESYNC) => {}
                () = revoker.issued.sync_requested() => debug!("revocation sync requested by the signer"),
            }
        }
    });
    info!("revocation: watching EdgeNodes for quarantine and deletion");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!("revocation reconcile error: {e}");
            }
        })
        .await;
    periodic.abort();
}

/// Without a fleet CA: take the [`FINALIZER`] off every EdgeNode that still carries it (the CA was
/// removed), so that deleting an EdgeNode never waits for a revocation that will not come. Returns
/// how many were released.
pub async fn release_finalizers(client: Client) -> Result<usize, kube::Error> {
    let api: Api<EdgeNode> = Api::all(client);
    let nodes = api.list(&kube::api::ListParams::default()).await?.items;
    let mut released = 0;
    for n in nodes {
        if !n.finalizers().iter().any(|f| f == FINALIZER) {
            continue;
        }
        // The other finalizers stay; pinned to the version read, so a concurrent change is not lost.
        let rest: Vec<&String> = n.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({
            "metadata": { "resourceVersion": n.resource_version(), "finalizers": rest },
        });
        api.patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        released += 1;
    }
    if released > 0 {
        warn!("no fleet CA configured: released {released} EdgeNode(s) from the {FINALIZER} finalizer");
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_crds::{CertificateInfo, EdgeNodeSpec, EdgeNodeStatus};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }
    const DAY: i64 = 86400;

    fn node(name: &str, serial: Option<(&str, i64)>) -> EdgeNode {
        let mut n = EdgeNode::new(name, EdgeNodeSpec::default());
        if let Some((serial, not_after)) = serial {
            n.status = Some(EdgeNodeStatus {
                certificate: Some(CertificateInfo {
                    serial: serial.into(),
                    not_after: Time(t(not_after)),
                    pem: None,
                }),
                ..EdgeNodeStatus::default()
            });
        }
        n
    }
    fn quarantined(mut n: EdgeNode) -> EdgeNode {
        n.labels_mut()
            .insert(pollen_crds::labels::QUARANTINE.into(), "true".into());
        n
    }
    fn deleting(mut n: EdgeNode) -> EdgeNode {
        n.metadata.deletion_timestamp = Some(Time(t(0)));
        n
    }
    fn entry(node: &str, serial: &str, reason: &str, at: i64) -> RevocationEntry {
        RevocationEntry {
            node: node.into(),
            serial: serial.into(),
            reason: reason.into(),
            revoked_at: Time(t(at)),
            not_after: None,
        }
    }

    /// The fleet CA of these tests.
    fn fleet() -> &'static FleetCa {
        static CA: std::sync::OnceLock<FleetCa> = std::sync::OnceLock::new();
        CA.get_or_init(|| FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap())
    }

    /// A files-mode node: it reports a real certificate `ca` issued for `for_node`, valid from
    /// `t(from)` for `secs`, with its PEM. Returns the node and the certificate's serial.
    fn files_node(name: &str, ca: &FleetCa, for_node: &str, from: i64, secs: u64) -> (EdgeNode, String) {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(t(from).as_second() as u64);
        let kp = ca.issue(for_node, not_before, Duration::from_secs(secs)).unwrap();
        let mut n = node(name, Some((&kp.cert.facts.serial, 999 * DAY)));
        let c = n.status.as_mut().unwrap().certificate.as_mut().unwrap();
        c.pem = Some(kp.cert.cert_pem.clone());
        (n, kp.cert.facts.serial)
    }

    fn names(targets: &[Target]) -> Vec<String> {
        targets
            .iter()
            .map(|x| format!("{}/{}", x.node, x.serial))
            .collect()
    }

    #[test]
    fn quarantined_and_deleting_nodes_are_targets_with_issued_and_proven_serials() {
        let (gw02, cc) = files_node("gw-02", fleet(), "gw-02", -3600, DAY as u64);
        let (gw04, _) = files_node("gw-04", fleet(), "gw-04", -DAY, 3600);
        let nodes = [
            node("gw-00", Some(("aa01", DAY))),
            quarantined(node("gw-01", Some(("bb01", DAY)))),
            deleting(quarantined(gw02)),
            quarantined(node("gw-03", None)),
            // Its certificate expired an hour before now: nothing to list.
            quarantined(gw04),
        ];
        let issued = BTreeMap::from([
            (
                "gw-01".to_string(),
                BTreeMap::from([("bb00".to_string(), t(DAY)), ("bb01".to_string(), t(DAY))]),
            ),
            (
                "gw-03".to_string(),
                BTreeMap::from([("ee01".to_string(), t(3600))]),
            ),
            ("gw-04".to_string(), BTreeMap::from([("dd00".to_string(), t(-5))])),
            (
                "gw-00".to_string(),
                BTreeMap::from([("aa00".to_string(), t(DAY))]),
            ),
        ]);
        let got: Vec<(String, String, RevokeReason)> = targets(&nodes, &issued, fleet(), t(0))
            .into_iter()
            .map(|x| (x.node, x.serial, x.reason))
            .collect();
        let q = RevokeReason::Quarantined;
        assert_eq!(
            got,
            vec![
                ("gw-01".into(), "bb00".into(), q),
                ("gw-01".into(), "bb01".into(), q),
                ("gw-02".into(), cc, RevokeReason::Deleted),
                ("gw-03".into(), "ee01".into(), q),
            ]
        );
    }

    fn with_ledger(mut n: EdgeNode, ledger: &[(&str, i64)]) -> EdgeNode {
        let l: Ledger = ledger.iter().map(|(s, at)| (s.to_string(), t(*at))).collect();
        n.annotations_mut()
            .insert(ISSUED_ANNOTATION.into(), ledger_annotation(&l));
        n
    }

    #[test]
    fn after_a_restart_the_durable_ledger_names_the_certificates() {
        // Nothing in memory (a restarted operator, the signed requests cleaned up); the node reports
        // a made-up serial: the ledger counts, the made-up serial not.
        let nodes = [
            quarantined(with_ledger(
                node("gw-01", Some(("ff01", DAY))),
                &[("aa01", DAY), ("aa02", 2 * DAY), ("aa00", -1)],
            )),
            with_ledger(node("gw-02", None), &[("bb01", DAY)]),
        ];
        let got = names(&targets(&nodes, &BTreeMap::new(), fleet(), t(0)));
        assert_eq!(got, vec!["gw-01/aa01", "gw-01/aa02"]);
        // Reporting a serial from its own ledger counts, with the signed notAfter.
        let honest = [quarantined(with_ledger(
            node("gw-01", Some(("aa02", 9 * DAY))),
            &[("aa02", 2 * DAY)],
        ))];
        let t2 = targets(&honest, &BTreeMap::new(), fleet(), t(0));
        assert_eq!(
            (t2[0].serial.as_str(), t2[0].not_after),
            ("aa02", Some(t(2 * DAY)))
        );
    }

    #[test]
    fn a_reported_certificate_counts_only_when_the_fleet_ca_issued_it_for_that_node() {
        let other_ca = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        // A real certificate of another node, one from another CA naming this node, and a serial
        // with no PEM at all.
        let (gw01, _) = files_node("gw-01", fleet(), "gw-02", -60, DAY as u64);
        let (gw03, _) = files_node("gw-03", &other_ca, "gw-03", -60, DAY as u64);
        let (gw05, own) = files_node("gw-05", fleet(), "gw-05", -60, DAY as u64);
        let nodes = [
            quarantined(gw01),
            quarantined(gw03),
            deleting(node("gw-04", Some(("ee01", DAY)))),
            quarantined(gw05),
        ];
        let got = names(&targets(&nodes, &BTreeMap::new(), fleet(), t(0)));
        assert_eq!(got, vec![format!("gw-05/{own}")]);
    }

    /// A quarantined node rewriting its status 10,000 times, each with a new serial and a far-future
    /// `notAfter` (half with a PEM from a CA of its own making): the list never grows past the one
    /// certificate the operator signed for it.
    #[test]
    fn a_node_reporting_ten_thousand_serials_changes_nothing() {
        let rogue_ca = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        let forged: Vec<String> = (0..20)
            .map(|_| {
                let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(t(0).as_second() as u64);
                rogue_ca
                    .issue("gw-01", not_before, Duration::from_secs(3650 * DAY as u64))
                    .unwrap()
                    .cert
                    .cert_pem
            })
            .collect();
        let base = quarantined(with_ledger(node("gw-01", None), &[("aa01", DAY)]));
        let mut listed = next_entries(&[], &targets([&base], &BTreeMap::new(), fleet(), t(0)), t(0));
        let expected = listed.clone();
        assert_eq!(expected.len(), 1);
        for i in 0..10_000u32 {
            let mut n = base.clone();
            n.status = Some(EdgeNodeStatus {
                certificate: Some(CertificateInfo {
                    serial: format!("{:08x}{:08x}", i, i.wrapping_mul(2_654_435_761)),
                    not_after: Time(t(3650 * DAY)),
                    pem: (i % 2 == 0).then(|| forged[i as usize % forged.len()].clone()),
                }),
                ..EdgeNodeStatus::default()
            });
            let now = t(i64::from(i));
            listed = next_entries(&listed, &targets([&n], &BTreeMap::new(), fleet(), now), now);
        }
        assert_eq!(listed, expected);
    }

    #[test]
    fn the_ledger_annotation_round_trips_and_prunes() {
        let l: Ledger = BTreeMap::from([("0a".to_string(), t(10)), ("0b".to_string(), t(20))]);
        let n = with_ledger(node("gw-01", None), &[]);
        assert!(ledger_of(&n).is_empty());
        let mut n = node("gw-01", None);
        n.annotations_mut()
            .insert(ISSUED_ANNOTATION.into(), ledger_annotation(&l));
        assert_eq!(ledger_of(&n), l);
        let merged = merge_ledger(&l, &BTreeMap::from([("0c".to_string(), t(30))]), t(15));
        assert_eq!(merged.keys().collect::<Vec<_>>(), vec!["0b", "0c"]);
        // Garbage is an empty ledger, bad entries are skipped.
        n.annotations_mut()
            .insert(ISSUED_ANNOTATION.into(), "not json".into());
        assert!(ledger_of(&n).is_empty());
        n.annotations_mut().insert(
            ISSUED_ANNOTATION.into(),
            r#"[{"serial":"XYZ","notAfter":"2027-01-01T00:00:00Z"},{"serial":"0d","notAfter":"soon"},{"serial":"0e","notAfter":"2027-01-01T00:00:00Z"}]"#.into(),
        );
        assert_eq!(ledger_of(&n).keys().collect::<Vec<_>>(), vec!["0e"]);
    }

    #[test]
    fn garbage_serials_are_never_listed() {
        let nodes = [
            quarantined(node("gw-01", Some(("NOT-HEX", DAY)))),
            quarantined(node("gw-02", Some(("", DAY)))),
            quarantined(node("gw-03", Some((&"a".repeat(65), DAY)))),
        ];
        assert!(targets(&nodes, &BTreeMap::new(), fleet(), t(0)).is_empty());
        assert!(valid_serial("0123456789abcdef"));
        assert!(!valid_serial("ABCDEF"));
        assert!(!valid_serial("abc"));
    }

    #[test]
    fn new_targets_are_added_once_and_old_entries_keep_their_time() {
        let current = vec![entry("gw-01", "bb01", "Quarantined", -100)];
        let targets = vec![
            Target {
                node: "gw-01".into(),
                serial: "bb01".into(),
                reason: RevokeReason::Deleted,
                not_after: None,
            },
            Target {
                node: "gw-02".into(),
                serial: "cc01".into(),
                reason: RevokeReason::Quarantined,
                not_after: None,
            },
        ];
        let next = next_entries(&current, &targets, t(0));
        assert_eq!(
            next,
            vec![
                entry("gw-01", "bb01", "Quarantined", -100),
                entry("gw-02", "cc01", "Quarantined", 0),
            ]
        );
        // Idempotent: the same inputs later change nothing.
        assert_eq!(next_entries(&next, &targets, t(60)), next);
    }

    #[test]
    fn entries_are_pruned_a_week_after_revocation_even_if_the_node_stays_quarantined() {
        let week = 7 * DAY;
        let current = vec![
            entry("gw-01", "bb01", "Quarantined", 0),
            entry("gw-02", "cc01", "Deleted", 10),
        ];
        assert_eq!(next_entries(&current, &[], t(week - 1)).len(), 2);
        assert_eq!(
            next_entries(&current, &[], t(week)),
            vec![entry("gw-02", "cc01", "Deleted", 10)]
        );
        assert!(next_entries(&current, &[], t(week + 10)).is_empty());
        // A still-quarantined node's signed certificate that expired long ago is not listed again.
        let nodes = [quarantined(with_ledger(node("gw-01", None), &[("bb01", DAY)]))];
        let targets = targets(&nodes, &BTreeMap::new(), fleet(), t(week + 10));
        assert!(next_entries(&current, &targets, t(week + 10)).is_empty());
    }

    #[test]
    fn a_certificate_living_longer_than_a_week_stays_listed_until_it_expires() {
        let week = 7 * DAY;
        // A files-mode node (no ledger) reporting a certificate valid for 30 days, and a signed
        // one: the signed notAfter wins over what the node reports for the same serial.
        let (gw01, aa) = files_node("gw-01", fleet(), "gw-01", 0, 30 * DAY as u64);
        let nodes = [
            quarantined(gw01.clone()),
            deleting(with_ledger(
                node("gw-02", Some(("bb01", 90 * DAY))),
                &[("bb01", DAY)],
            )),
        ];
        let targets = targets(&nodes, &BTreeMap::new(), fleet(), t(0));
        let not_after: Vec<(String, Option<Timestamp>)> =
            targets.iter().map(|x| (x.node.clone(), x.not_after)).collect();
        assert_eq!(
            not_after,
            vec![
                ("gw-01".into(), Some(t(30 * DAY))),
                ("gw-02".into(), Some(t(DAY)))
            ]
        );
        let listed = next_entries(&[], &targets, t(0));
        let of = |l: &[RevocationEntry], node: &str| l.iter().find(|e| e.node == node).cloned();
        assert_eq!(of(&listed, "gw-01").unwrap().not_after, Some(Time(t(30 * DAY))));
        // A week on, the nodes gone: the 30-day certificate stays, the one-day one is pruned.
        let later = next_entries(&listed, &[], t(week + 1));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].serial, aa);
        assert_eq!(next_entries(&later, &[], t(30 * DAY - 1)).len(), 1);
        assert!(next_entries(&later, &[], t(30 * DAY)).is_empty());
        // The node reporting another notAfter changes nothing: the certificate says when it ends.
        let mut bumped = quarantined(gw01);
        bumped
            .status
            .as_mut()
            .unwrap()
            .certificate
            .as_mut()
            .unwrap()
            .not_after = Time(t(60 * DAY));
        let again = next_entries(
            &listed,
            &super::targets([&bumped], &BTreeMap::new(), fleet(), t(5)),
            t(5),
        );
        assert_eq!(again, listed);
    }

    #[test]
    fn the_number_moves_only_on_change_or_when_the_crl_is_due() {
        let e = vec![entry("gw-01", "bb01", "Quarantined", 0)];
        assert_eq!(next_number(None, &[], t(0)), None);
        // Without a stored list: the clock, so a deleted list never restarts the numbering.
        assert_eq!(next_number(None, &e, t(0)), Some(1_800_000_000));
        // Behind the clock: the clock.
        let behind = Current {
            number: 4,
            entries: e.clone(),
            signed_at: None,
        };
        assert_eq!(next_number(Some(&behind), &e, t(7)), Some(1_800_000_007));
        let cur = Current {
            number: 1_900_000_004,
            entries: e.clone(),
            signed_at: Some(t(0)),
        };
        assert_eq!(next_number(Some(&cur), &e, t(DAY - 1)), None);
        assert_eq!(next_number(Some(&cur), &e, t(DAY)), Some(1_900_000_005));
        let more = next_entries(
            &e,
            &[Target {
                node: "gw-02".into(),
                serial: "cc01".into(),
                reason: RevokeReason::Quarantined,
                not_after: None,
            }],
            t(5),
        );
        assert_eq!(next_number(Some(&cur), &more, t(5)), Some(1_900_000_005));
        // Pruned down to nothing: the empty list is written (peers must learn the smaller list).
        assert_eq!(next_number(Some(&cur), &[], t(5)), Some(1_900_000_005));
        // A CRL that does not verify with this CA is replaced at once.
        let foreign = Current {
            signed_at: None,
            ..cur
        };
        assert_eq!(next_number(Some(&foreign), &e, t(5)), Some(1_900_000_005));
    }

    #[test]
    fn the_ledger_forgets_expired_certificates() {
        let issued = Issued::default();
        issued.record("gw-01", "aa", t(10));
        issued.record("gw-01", "bb", t(100));
        issued.record("gw-02", "cc", t(5));
        let snap = issued.snapshot(t(50));
        assert_eq!(snap.len(), 1);
        assert_eq!(snap["gw-01"].keys().collect::<Vec<_>>(), vec!["bb"]);
        let ca = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        let kp = ca
            .issue("gw-03", SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        assert!(issued.record_pem(&kp.cert.cert_pem));
        assert!(!issued.record_pem("not a certificate"));
        let snap = issued.snapshot(Timestamp::now());
        assert!(snap["gw-03"].contains_key(&kp.cert.facts.serial));
    }

    mod io {
        use super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use serde_json::Value;
        use tower_test::mock;

        /// The mocked API server: one optional RevocationList; records writes.
        #[derive(Default)]
        struct Server {
            stored: Option<Value>,
            writes: Vec<(String, Value)>,
        }

        fn serve(server: Arc<Mutex<Server>>) -> (Client, tokio::task::JoinHandle<()>) {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let task = tokio::spawn(async move {
                while let Some((req, send)) = handle.next_request().await {
                    let method = req.method().clone();
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or_default().to_string();
                    let bytes = req.into_body().collect_bytes().await.unwrap();
                    assert_eq!(path, "/apis/pollen.dev/v1alpha1/revocationlists/fleet");
                    let (code, out) = {
                        let mut s = server.lock().unwrap();
                        match method {
                            Method::GET => match &s.stored {
                                Some(v) => (StatusCode::OK, v.clone()),
                                None => (
                                    StatusCode::NOT_FOUND,
                                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
                                ),
                            },
                            Method::PATCH => {
                                let body: Value = serde_json::from_slice(&bytes).unwrap();
                                s.writes.push((query, body.clone()));
                                s.stored = Some(body.clone());
                                (StatusCode::OK, body)
                            }
                            other => panic!("unexpected {other} {path}"),
                        }
                    };
                    send.send_response(
                        Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&out).unwrap()))
                            .unwrap(),
                    );
                }
            });
            (Client::new(service, "default"), task)
        }

        #[tokio::test]
        async fn the_list_is_written_once_per_change_and_re_signed_when_due() {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let server = Arc::new(Mutex::new(Server::default()));
            let (client, task) = serve(server.clone());
            let ca = Arc::new(FleetCa::generate("test fleet", Duration::from_secs(30 * 86400)).unwrap());
            let start = Timestamp::now();
            let now = Arc::new(Mutex::new(start));
            let clock_now = now.clone();
            let metrics = Metrics::default();
            let revoker = Revoker::new(client, ca.clone(), Arc::new(Issued::default()), metrics.clone())
                .with_clock(Arc::new(move || *clock_now.lock().unwrap()));
            let in_a_day = (start + jiff::SignedDuration::from_hours(24)).as_second() - 1_800_000_000;
            // Numbers follow the clock (unix seconds) when it is ahead of the stored number + 1.
            let at = |hours: i64| (start + jiff::SignedDuration::from_hours(hours)).as_second() as u64;

            // Nothing revoked, no list: nothing written.
            assert_eq!(
                revoker.sync(&[node("gw-00", Some(("aa01", DAY)))]).await.unwrap(),
                None
            );
            assert!(server.lock().unwrap().writes.is_empty());

            // A quarantined node: the clock's number, by server-side apply with our field manager.
            let nodes = [
                node("gw-00", Some(("aa01", in_a_day))),
                quarantined(with_ledger(
                    node("gw-01", Some(("bb01", in_a_day))),
                    &[("bb01", in_a_day)],
                )),
            ];
            assert_eq!(revoker.sync(&nodes).await.unwrap(), Some(at(0)));
            {
                let s = server.lock().unwrap();
                let (query, body) = &s.writes[0];
                assert!(query.contains("fieldManager=pollen-operator"), "{query}");
                assert!(query.contains("force=true"), "{query}");
                assert_eq!(body["spec"]["number"], at(0));
                assert_eq!(body["spec"]["entries"][0]["serial"], "bb01");
                assert_eq!(body["spec"]["entries"][0]["reason"], "Quarantined");
                let set = pki::verify_revocation_list(
                    body["spec"]["crl"].as_str().unwrap().as_bytes(),
                    ca.cert_pem(),
                )
                .unwrap();
                assert_eq!(set.number, at(0));
                assert!(set.is_revoked("bb01") && !set.is_revoked("aa01"));
            }
            assert_eq!(metrics.revocation_list(), (at(0) as i64, 1));

            // The same state an hour later: read, not rewritten.
            *now.lock().unwrap() = start + jiff::SignedDuration::from_hours(1);
            assert_eq!(revoker.sync(&nodes).await.unwrap(), None);
            assert_eq!(server.lock().unwrap().writes.len(), 1);

            // A day later: re-signed under a higher number, same entries.
            *now.lock().unwrap() = start + jiff::SignedDuration::from_hours(25);
            assert_eq!(revoker.sync(&[] as &[EdgeNode]).await.unwrap(), Some(at(25)));
            {
                let s = server.lock().unwrap();
                let (_, body) = &s.writes[1];
                assert_eq!(body["spec"]["number"], at(25));
                assert_eq!(body["spec"]["entries"].as_array().unwrap().len(), 1);
            }

            // A week after the revocation: pruned, and the smaller list is written.
            *now.lock().unwrap() = start + jiff::SignedDuration::from_hours(7 * 24 + 1);
            assert_eq!(
                revoker.sync(&[] as &[EdgeNode]).await.unwrap(),
                Some(at(7 * 24 + 1))
            );
            assert_eq!(metrics.revocation_list(), (at(7 * 24 + 1) as i64, 0));
            drop(revoker);
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .unwrap()
                .unwrap();
        }

        #[tokio::test]
        async fn without_a_ca_the_finalizer_is_taken_off_and_nothing_else() {
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let task = tokio::spawn(async move {
                let mut patches = Vec::new();
                while let Some((req, send)) = handle.next_request().await {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let bytes = req.into_body().collect_bytes().await.unwrap();
                    let out = if method == Method::GET {
                        assert_eq!(path, "/apis/pollen.dev/v1alpha1/edgenodes");
                        let mut held = node("gw-01", None);
                        held.metadata.finalizers = Some(vec!["example.com/other".into(), FINALIZER.into()]);
                        held.metadata.resource_version = Some("41".into());
                        let free = node("gw-02", None);
                        json!({"apiVersion":"pollen.dev/v1alpha1","kind":"EdgeNodeList","metadata":{},
                               "items":[serde_json::to_value(held).unwrap(), serde_json::to_value(free).unwrap()]})
                    } else {
                        let body: Value = serde_json::from_slice(&bytes).unwrap();
                        patches.push((path, body.clone()));
                        serde_json::to_value(node("gw-01", None)).unwrap()
                    };
                    send.send_response(
                        Response::builder()
                            .body(Body::from(serde_json::to_vec(&out).unwrap()))
                            .unwrap(),
                    );
                }
                patches
            });
            let released = release_finalizers(Client::new(service, "default")).await.unwrap();
            assert_eq!(released, 1);
            let patches = tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(patches.len(), 1);
            assert_eq!(patches[0].0, "/apis/pollen.dev/v1alpha1/edgenodes/gw-01");
            assert_eq!(
                patches[0].1,
                json!({"metadata": {"resourceVersion": "41", "finalizers": ["example.com/other"]}})
            );
        }

        #[tokio::test]
        async fn the_in_memory_ledger_is_copied_to_the_edgenode_and_pruned() {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let patches = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
            let seen = patches.clone();
            let task = tokio::spawn(async move {
                while let Some((req, send)) = handle.next_request().await {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let bytes = req.into_body().collect_bytes().await.unwrap();
                    assert_eq!(method, Method::PATCH, "{path}");
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    seen.lock().unwrap().push((path, body));
                    let mut n = node("gw-01", None);
                    n.metadata.resource_version = Some("42".into());
                    send.send_response(
                        Response::builder()
                            .body(Body::from(serde_json::to_vec(&n).unwrap()))
                            .unwrap(),
                    );
                }
            });
            let client = Client::new(service, "default");
            let api: Api<EdgeNode> = Api::all(client.clone());
            let ca = Arc::new(FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap());
            let issued = Arc::new(Issued::default());
            let revoker =
                Revoker::new(client, ca, issued.clone(), Metrics::default()).with_clock(Arc::new(|| t(0)));

            // Nothing known, nothing stored: no write.
            let mut plain = node("gw-01", None);
            plain.metadata.resource_version = Some("41".into());
            assert!(!revoker.persist_ledger(&api, &plain).await.unwrap());
            // A certificate signed before the EdgeNode existed: written, guarded by the version.
            issued.record("gw-01", "aa01", t(DAY));
            assert!(revoker.persist_ledger(&api, &plain).await.unwrap());
            {
                let p = patches.lock().unwrap();
                assert_eq!(p.len(), 1);
                assert_eq!(p[0].0, "/apis/pollen.dev/v1alpha1/edgenodes/gw-01");
                assert_eq!(p[0].1["metadata"]["resourceVersion"], "41");
                let value = p[0].1["metadata"]["annotations"][ISSUED_ANNOTATION]
                    .as_str()
                    .unwrap();
                let mut stored = plain.clone();
                stored
                    .annotations_mut()
                    .insert(ISSUED_ANNOTATION.into(), value.into());
                assert_eq!(ledger_of(&stored), BTreeMap::from([("aa01".to_string(), t(DAY))]));
            }
            // Already stored: no write.
            let stored = with_ledger(plain.clone(), &[("aa01", DAY)]);
            assert!(!revoker.persist_ledger(&api, &stored).await.unwrap());
            // An expired entry is pruned from the annotation.
            let stale = with_ledger(plain.clone(), &[("aa01", DAY), ("0f", -1)]);
            assert!(revoker.persist_ledger(&api, &stale).await.unwrap());
            {
                let p = patches.lock().unwrap();
                assert_eq!(p.len(), 2);
                let value = p[1].1["metadata"]["annotations"][ISSUED_ANNOTATION]
                    .as_str()
                    .unwrap();
                assert!(!value.contains("\"0f\""), "{value}");
                assert!(value.contains("\"aa01\""), "{value}");
            }
            drop(revoker);
            drop(api);
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
