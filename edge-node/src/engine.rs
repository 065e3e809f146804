//! The swarm engine: fetches one verified chunk index from peers (and, under the picker's origin rule,
//! from the origin registry), serves what it holds to authorised peers, and reports completion.
//!
//! Tasks, all ended by the shutdown token:
//! - the **accept loop** and the **dial loop** (static peers plus addresses learned by peer exchange)
//!   make at most one connection per peer pair: when two exist, the one dialled by the node with the
//!   smaller name is kept;
//! - per connection (a tracing span named for the peer): the control stream (hello, have-map, haves,
//!   fetching hints, peer exchange), a request server, and a downloader that keeps the picker's pipeline
//!   for that peer full;
//! - the **origin loop**: HTTP range GETs of the registry blob, only for chunks the picker hands it, one
//!   GET per run of consecutive chunks, each chunk verified and announced as soon as its bytes are in;
//! - the **persist loop**: makes verified chunks durable once a second;
//! - the **trust loop**: reacts to revocation lists and certificate rotations (see below).
//!
//! Authorisation is decided when a connection registers: a peer whose certificate names a node the
//! signed index does not list gets a typed `NotAuthorised` error before anything else (no hello,
//! have-map, addresses or fetching hints) and is closed; the refused side leaves that address alone for a
//! minute.
//!
//! Fleet identity. Every handshake is verified against the fleet CA and the current revocation set of
//! the shared [`FleetTls`] (rotations and new lists apply to the next handshake; see `tls`). The
//! revocation list also travels peer to peer: it is sent after `Hello` when held, and a node that
//! receives a newer list verifies it against the fleet CA, installs it, persists it under the data dir
//! (loaded again at start) and passes it on to every peer. Lists from peers go through `crl_intake`: one
//! not newer than ours is dropped unverified, a peer gets at most one list verified every few seconds
//! (off the runtime threads), and one that does not verify closes the connection (counted as
//! `bad_revocation_list`). Whenever a newer list is installed, however
//! it arrived (a peer, `--crl`, or the agent's watch of the cluster's list), the trust loop closes every
//! open connection whose peer serial it revokes (close code [`protocol::CLOSE_REVOKED`]) at once, event
//! driven. A node whose own serial is revoked stops taking part: every connection is closed, nothing is
//! accepted or dialled until the certificate is rotated, and the engine fails with
//! [`EngineError::Revoked`]. An open connection also ends when the peer's certificate expires (close code
//! [`protocol::CLOSE_EXPIRED`], a timer set from its notAfter at registration), since the handshake
//! checked the validity window only once. Refusals are counted by reason in
//! `pollen_edge_peer_refusals_total`.
//!
//! Chunks stream from the QUIC stream into the store in pieces, and from the store to QUIC in 64 KiB
//! pieces, so memory does not grow with chunk or payload size. A peer whose chunk fails verification is
//! banned (connection closed, never accepted again for this engine) and the chunk is fetched elsewhere.
//!
//! Non-goals: several indexes per engine (run one engine per index), Kubernetes, installing (the caller
//! installs once [`Engine::wait_complete`] returns).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pollen_trust::verified::VerifiedIndex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::crl_intake::{ListGate, crl_number};
use crate::metrics::{CodeLabel, IndexLabel, Metrics, PeerLabel, ReasonLabel, SourceLabel};
use crate::net::{IdleClock, NetError, read_frame, write_msg};
use crate::picker::{PeerId, Picker, PickerConfig, Source, UploadSlots};
use crate::protocol::{self, ErrorCode, IndexId, Message};
use crate::ratelimit::{Limiter, RateLimits};
use crate::store::{Store, StoreError};
use crate::tls::{self, FleetTls, TransportLimits};

const IO_PIECE: usize = 64 * 1024;
/// Send priority of the control stream and of requests: above the chunk data streams (priority 0),
/// which the transport sends one after the other (`send_fairness` off).
const CONTROL_PRIORITY: i32 = 1;
/// How long the control writer waits for more `Have`s and hints to send with the first one, to a peer
/// of this node's site.
const CONTROL_LINGER: Duration = Duration::from_millis(20);
/// The same, to a peer of another site. A node gets a chunk every few tens of milliseconds, so a short
/// wait sends most `Have`s alone: a packet, and an acknowledgement back, over the WAN for every chunk to
/// every far peer. Far peers fetch from this site only what no nearer source has, so their view may lag
/// by a second. In the 3×8 lab this took each site's WAN traffic in from 1.29 to 1.14 payload copies.
const FAR_CONTROL_LINGER: Duration = Duration::from_millis(1000);
/// Most control messages written at once.
const CONTROL_BATCH: usize = 4096;
/// A batch this large is written without waiting out the linger.
const LINGER_FLUSH: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
const SLOT_WAIT: Duration = Duration::from_secs(5);
const DIAL_INTERVAL: Duration = Duration::from_secs(2);
/// A running node that verifies no chunk for this long logs what its picker knows, once per stall.
const STALL_LOG_AFTER: Duration = Duration::from_secs(30);
/// Control messages queued per peer before they are dropped (and the peer marked for a resync).
const CONTROL_QUEUE: usize = 4096;
const MAX_KNOWN_ADDRS: usize = 256;
/// How long a peer that refused this node as not authorised is left alone before it is dialled again.
const NOT_AUTHORISED_REDIAL: Duration = Duration::from_secs(60);
/// How long the address of a peer with a revoked certificate is left alone before it is dialled again.
const REVOKED_REDIAL: Duration = Duration::from_secs(60);
/// Each peer gets at most one revocation list verified per this interval (see `crl_intake`).
const CRL_VERIFY_INTERVAL: Duration = Duration::from_secs(3);
/// How long a refusal waits for the peer to receive the typed error before closing.
const REFUSAL_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// The persisted fleet revocation list (DER), under the data dir.
const CRL_FILE: &str = "revocations.crl";

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's site label.
    pub site: String,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Static peers to dial.
    pub peers: Vec<SocketAddr>,
    /// Names of the static peers, where known: they count in the origin ownership from the start, for
    /// `member_wait`, even before their connections are up.
    pub peer_names: Vec<String>,
    /// How long expected members count before they connect.
    pub member_wait: Duration,
    /// The node's live TLS state: certificate and key (rotatable), fleet CA, revocation set.
    pub tls: FleetTls,
    /// Where chunk stores live.
    pub data_dir: PathBuf,
    /// Picker tunables (origin budget included).
    pub picker: PickerConfig,
    /// QUIC limits and timeouts.
    pub transport: TransportLimits,
    /// Upload limit in bytes/s.
    pub upload_limit: Option<u64>,
    /// Download limit in bytes/s (peers and origin together).
    pub download_limit: Option<u64>,
    /// Whether the origin may be used at all.
    pub origin: bool,
    /// The registry client origin reads go through (TLS, credentials, insecure hosts); shared with the
    /// caller's verification so tokens are fetched once. `None`: a client with default options.
    pub registry: Option<pollen_trust::Registry>,
    /// Upload and download limits that the caller may change while the engine runs (the agent: from
    /// the assignment as the rollout changes); each change replaces `upload_limit`/`download_limit`.
    pub rate_limits: Option<watch::Receiver<RateLimits>>,
    /// A live cap on this node's origin reads, in bytes in all (`None` inside: no cap), that the
    /// caller may change while the engine runs: the cap the operator sets from the rollout's origin
    /// budget. The lower of it and the picker's `origin_budget` applies.
    pub origin_allowance: Option<watch::Receiver<Option<u64>>>,
    /// How long to wait at start for the static peers before reading from the origin, so that the
    /// origin-once ownership is computed over the whole swarm.
    pub origin_grace: Duration,
    /// Most concurrent peer connections.
    pub max_connections: usize,
    /// Concurrent chunk uploads overall.
    pub upload_slots: u32,
    /// Concurrent chunk uploads per peer.
    pub upload_slots_per_peer: u32,
    /// Seed for the picker's random choices.
    pub seed: u64,
    /// This node's peer grant for the index (the raw director signature, `pollen_trust::grant`): sent
    /// to peers before `Hello` when the signed index does not list this node.
    pub grant: Option<Vec<u8>>,
    /// A grant the caller may pass while the engine runs (the agent: when the operator writes one
    /// into a running assignment); each value replaces `grant`, and refusals of this node are
    /// forgotten so that its peers are dialled again at once.
    pub grant_updates: Option<watch::Receiver<Option<Vec<u8>>>>,
    /// The director public key, to check the grants of peers the index does not list. Without it,
    /// such peers are refused whatever they send.
    pub director_key: Option<pollen_trust::PublicKey>,
    /// Control messages queued per peer before one is dropped and the peer marked for a resync (its
    /// next batch carries this node's whole state). Bounds memory per slow peer.
    pub control_queue: usize,
    /// Fault injection for the multi-node tests: flip a byte in every chunk served (a hostile peer).
    #[cfg(feature = "testing")]
    pub corrupt_uploads: bool,
}

impl EngineConfig {
    /// A configuration with defaults for everything but identity, addresses and storage.
    pub fn new(tls: impl Into<FleetTls>, listen: SocketAddr, data_dir: PathBuf) -> Self {
        let tls = tls.into();
        EngineConfig {
            site: "default".into(),
            listen,
            peers: Vec::new(),
            peer_names: Vec::new(),
            member_wait: Duration::from_secs(10),
            tls,
            data_dir,
            picker: PickerConfig::default(),
            transport: TransportLimits::default(),
            upload_limit: None,
            download_limit: None,
            origin: true,
            registry: None,
            origin_allowance: None,
            rate_limits: None,
            origin_grace: Duration::from_secs(3),
            max_connections: 64,
            upload_slots: 16,
            upload_slots_per_peer: 8,
            seed: rand::random(),
            grant: None,
            grant_updates: None,
            director_key: None,
            control_queue: CONTROL_QUEUE,
            #[cfg(feature = "testing")]
            corrupt_uploads: false,
        }
    }
}

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed (full disk included).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Endpoint or TLS setup failed.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// The origin client could not be built, or the registry refused it for good (credentials, scope,
    /// an untrusted certificate): retrying the same request cannot help.
    #[error("origin: {0}")]
    Origin(#[source] pollen_trust::registry::RegistryError),
    /// The engine stopped before completing.
    #[error("engine stopped before the index was complete")]
    Stopped,
    /// This node's own certificate is revoked: it takes no part until it has a new certificate.
    #[error("this node's certificate (serial {serial}) is revoked by fleet revocation list {list}")]
    Revoked {
        /// The revoked serial.
        serial: String,
        /// The revocation list number.
        list: u64,
    },
    /// A fatal error in a running engine.
    #[error("{0}")]
    Fatal(Arc<EngineError>),
}

/// Where a running engine stands.
#[derive(Debug, Clone)]
pub enum Status {
    /// Fetching.
    Running,
    /// Every chunk is present and durable.
    Complete,
    /// A fatal error stopped fetching.
    Failed(Arc<EngineError>),
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("connection: {0}")]
    Conn(#[from] quinn::ConnectionError),
    #[error("peer error {}: {}", .0.name(), .1)]
    Remote(ErrorCode, String),
    #[error("unexpected reply")]
    Unexpected,
    #[error("timed out")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
    #[error("verification failed: {0}")]
    Verify(StoreError),
    #[error("store: {0}")]
    Store(StoreError),
    #[error("origin: {0}")]
    Http(String),
    #[error("origin: {0}")]
    Registry(pollen_trust::registry::RegistryError),
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Verify { .. } => FetchError::Verify(e),
            other => FetchError::Store(other),
        }
    }
}

struct PeerEntry {
    id: PeerId,
    serial: String,
    initiator: String,
    conn: quinn::Connection,
    tx: ControlTx,
}

/// The sending side of a peer's control queue. A message that finds the queue full (the peer reads
/// slower than this node announces) is dropped, and the peer is marked for a resync: its writer follows
/// the next batch with this node's whole state (have-map, origin use, revocation list), which stands in
/// for every `Have`, `Origin` or list dropped. Hints (`Fetching`, `Peers`) are not replayed.
#[derive(Clone)]
struct ControlTx {
    tx: mpsc::Sender<Message>,
    resync: Arc<AtomicBool>,
}

impl ControlTx {
    fn new(tx: mpsc::Sender<Message>) -> Self {
        ControlTx {
            tx,
            resync: Arc::default(),
        }
    }

    /// Queues `msg`; `false` when it was dropped (queue full: resync marked; or the connection ended).
    fn send(&self, msg: Message) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.resync.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Whether a resync is due; clears the mark.
fn take_resync(mark: &AtomicBool) -> bool {
    mark.swap(false, Ordering::AcqRel)
}

/// A peer address left alone because its certificate is revoked.
struct RevokedAddr {
    /// The serial it presented, when known (our verifier refused it otherwise, before the engine saw it).
    serial: Option<String>,
    /// When it is dialled again (it may have a new certificate by then).
    retry_at: Instant,
}

struct Shared {
    name: String,
    tls: FleetTls,
    crl_path: PathBuf,
    /// The revocation list number last persisted and passed on.
    crl_handled: Mutex<u64>,
    site: String,
    index: VerifiedIndex,
    id: IndexId,
    id_hex: String,
    store: Store,
    picker: Mutex<Picker>,
    metrics: Arc<Metrics>,
    peers: Mutex<HashMap<String, PeerEntry>>,
    next_id: Mutex<PeerId>,
    banned: Mutex<HashSet<String>>,
    banned_addrs: Mutex<HashSet<SocketAddr>>,
    /// Addresses of peers closed or refused as revoked (by us or, when dialling, by our verifier): not
    /// dialled again before a minute has passed, or until the serial they presented is no longer revoked.
    revoked_addrs: Mutex<HashMap<SocketAddr, RevokedAddr>>,
    /// Addresses of peers that refused this node as not authorised for the index, or that this node
    /// dialled and refused as not authorised: until when they are not dialled.
    refused_by: Mutex<HashMap<SocketAddr, Instant>>,
    /// Bumped each time this node's grant changes: a refusal from a connection that began under an
    /// older grant does not hold the peer off (the peer may admit this node now).
    grant_epoch: AtomicU64,
    /// This node's grant, when the index does not list it and it holds one (replaced as the caller
    /// passes a new one).
    own_grant: Mutex<Option<Vec<u8>>>,
    /// The director key that checks peers' grants.
    director_key: Option<pollen_trust::PublicKey>,
    /// Peers the index does not list that presented a valid grant on this engine's connections.
    granted: Mutex<HashSet<String>>,
    known: Mutex<BTreeSet<SocketAddr>>,
    dialing: Mutex<HashSet<SocketAddr>>,
    dial_now: tokio::sync::Notify,
    generation: watch::Sender<u64>,
    status: watch::Sender<Status>,
    /// Set by the one `on_verified` call that finishes the index (the last chunks may verify at once).
    finishing: AtomicBool,
    /// Serialises reading the chunk count and setting the progress gauge, so that chunks verified
    /// together cannot leave an older (lower) ratio as the last one written.
    progress_lock: Mutex<()>,
    up: Limiter,
    down: Limiter,
    slots: Mutex<UploadSlots>,
    slot_freed: tokio::sync::Notify,
    chunk_locks: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    cancels: Mutex<HashMap<(u32, PeerId), CancellationToken>>,
    start: Instant,
    endpoint: quinn::Endpoint,
    registry: pollen_trust::Registry,
    origin: bool,
    /// Whether this node reads from the origin now (it may, and its allowance is not used up); peers
    /// hear of it through `Origin` messages.
    reads_origin: AtomicBool,
    origin_allowance: Option<watch::Receiver<Option<u64>>>,
    /// The picker's configured origin budget, before any live allowance.
    origin_budget: Option<u64>,
    origin_grace: Duration,
    static_peers: usize,
    max_connections: usize,
    control_queue: usize,
    shutdown: CancellationToken,
    #[cfg(feature = "testing")]
    corrupt_uploads: bool,
}

/// A running swarm engine for one index.
pub struct Engine {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    status: watch::Receiver<Status>,
}

impl Engine {
    /// Opens the store, binds the endpoint and starts every task.
    pub async fn start(
        cfg: EngineConfig,
        index: VerifiedIndex,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Engine, EngineError> {
        let store = Store::open(&cfg.data_dir, &index)?;
        let name = cfg.tls.name();
        let crl_path = cfg.data_dir.join(CRL_FILE);
        let persisted = load_revocations(&crl_path, &cfg.tls);
        if cfg.tls.own_revoked() {
            let serial = cfg.tls.current().serial().to_owned();
            let list = *cfg.tls.revocation_updates().borrow();
            return Err(EngineError::Revoked { serial, list });
        }
        cfg.tls.count_refusals_into(metrics.peer_refusals.clone());
        let picker = Picker::new(
            &name,
            index.chunk_size,
            index.payload.size,
            store.have(),
            cfg.picker.clone(),
            cfg.seed,
        );
        let mut picker = picker;
        picker.expect_members(&cfg.peer_names, cfg.member_wait);
        picker.set_election_key(&index.id());
        let endpoint = bind_endpoint(cfg.listen, &cfg.tls, &cfg.transport).await?;
        let registry = match cfg.registry.clone() {
            Some(r) => r,
            None => pollen_trust::Registry::new(&Default::default()).map_err(EngineError::Origin)?,
        };
        let complete = store.is_complete();
        let (status_tx, status_rx) = watch::channel(if complete {
            Status::Complete
        } else {
            Status::Running
        });
        let id = index.id();
        let local = endpoint
            .local_addr()
            .map_err(|e| EngineError::Net(NetError::Endpoint(e)))?;
        let known: BTreeSet<SocketAddr> = cfg.peers.iter().copied().filter(|a| *a != local).collect();
        let own_grant = cfg.grant.clone().filter(|_| !index.authorises(&name));
        let shared = Arc::new(Shared {
            name,
            tls: cfg.tls.clone(),
            crl_path,
            crl_handled: Mutex::new(persisted),
            site: cfg.site.clone(),
            id,
            id_hex: hex::encode(id),
            index,
            store,
            picker: Mutex::new(picker),
            metrics,
            peers: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0),
            banned: Mutex::new(HashSet::new()),
            banned_addrs: Mutex::new(HashSet::new()),
            revoked_addrs: Mutex::new(HashMap::new()),
            refused_by: Mutex::new(HashMap::new()),
            grant_epoch: AtomicU64::new(0),
            own_grant: Mutex::new(own_grant),
            director_key: cfg.director_key.clone(),
            granted: Mutex::new(HashSet::new()),
            known: Mutex::new(known),
            dialing: Mutex::new(HashSet::new()),
            dial_now: tokio::sync::Notify::new(),
            generation: watch::channel(0).0,
            status: status_tx,
            finishing: AtomicBool::new(false),
            progress_lock: Mutex::new(()),
            up: Limiter::new(cfg.upload_limit),
            down: Limiter::new(cfg.download_limit),
            slots: Mutex::new(UploadSlots::new(cfg.upload_slots, cfg.upload_slots_per_peer)),
            slot_freed: tokio::sync::Notify::new(),
            chunk_locks: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            start: Instant::now(),
            endpoint,
            registry,
            origin: cfg.origin,
            reads_origin: AtomicBool::new(cfg.origin),
            origin_allowance: cfg.origin_allowance.clone(),
            origin_budget: cfg.picker.origin_budget,
            origin_grace: cfg.origin_grace,
            static_peers: cfg.peers.len(),
            max_connections: cfg.max_connections,
            control_queue: cfg.control_queue.max(1),
            shutdown,
            #[cfg(feature = "testing")]
            corrupt_uploads: cfg.corrupt_uploads,
        });
        shared.update_progress();
        shared.on_rotation();
        shared
            .metrics
            .revocation_list_number
            .set(*shared.tls.revocation_updates().borrow() as i64);
        if complete {
            shared
                .metrics
                .time_to_complete
                .get_or_create(&shared.index_label())
                .set(0.0);
        }
        shared.metrics.set_ready(true);
        info!(node = %shared.name, site = %shared.site, listen = %local, index = %shared.id_hex,
              chunks = shared.store.chunk_count(), have = shared.store.have().count(), "engine started");
        let mut tasks = JoinSet::new();
        tasks.spawn(shared.clone().accept_loop());
        tasks.spawn(shared.clone().dial_loop());
        tasks.spawn(shared.clone().origin_loop());
        tasks.spawn(shared.clone().persist_loop());
        tasks.spawn(shared.clone().trust_loop());
        if let Some(rx) = cfg.rate_limits.clone() {
            tasks.spawn(shared.clone().limits_loop(rx));
        }
        if let Some(rx) = cfg.grant_updates.clone() {
            tasks.spawn(shared.clone().grant_loop(rx));
        }
        Ok(Engine {
            shared,
            tasks,
            status: status_rx,
        })
    }

    /// The QUIC address the engine listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.endpoint.local_addr().expect("bound endpoint")
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The store's payload file (complete once [`Engine::wait_complete`] returned).
    pub fn payload_path(&self) -> PathBuf {
        self.shared.store.payload_path().to_owned()
    }

    /// The live TLS handle (rotate the certificate or install revocation lists through it).
    pub fn tls(&self) -> &FleetTls {
        &self.shared.tls
    }

    /// Names of the peers currently connected.
    pub fn peer_names(&self) -> Vec<String> {
        self.shared.peers.lock().expect("peers").keys().cloned().collect()
    }

    /// The verified index.
    pub fn index(&self) -> &VerifiedIndex {
        &self.shared.index
    }

    /// Bytes read from the origin by this engine.
    pub fn origin_bytes(&self) -> u64 {
        self.shared.picker.lock().expect("picker").origin_bytes()
    }

    /// Waits until every chunk is present and durable, a fatal error happens, or shutdown.
    pub async fn wait_complete(&mut self) -> Result<(), EngineError> {
        loop {
            match &*self.status.borrow_and_update() {
                Status::Complete => return Ok(()),
                Status::Failed(e) => return Err(EngineError::Fatal(e.clone())),
                Status::Running => {}
            }
            tokio::select! {
                r = self.status.changed() => if r.is_err() { return Err(EngineError::Stopped) },
                _ = self.shared.shutdown.cancelled() => return Err(EngineError::Stopped),
            }
        }
    }

    /// Waits until the engine fails (its own certificate revoked, or a fatal store error), also after
    /// completion while seeding. Returns [`EngineError::Stopped`] at shutdown.
    pub async fn wait_failed(&mut self) -> EngineError {
        loop {
            if let Status::Failed(e) = &*self.status.borrow_and_update() {
                return EngineError::Fatal(e.clone());
            }
            tokio::select! {
                r = self.status.changed() => if r.is_err() { return EngineError::Stopped },
                _ = self.shared.shutdown.cancelled() => return EngineError::Stopped,
            }
        }
    }

    /// Stops every task, closes connections and persists what is verified.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.shared
            .endpoint
            .close(protocol::CLOSE_NORMAL.into(), b"shutdown");
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.shared.store.persist() {
            warn!(error = %e, "could not persist the bitfield at shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
    }
}

/// How long [`bind_endpoint`] waits for the previous engine's socket on the same address to close.
/// Its connections drain first (three probe timeouts after the close), and when the peers restart
/// their own engines at the same moment the close frames go unanswered: over 3 s was seen in the
/// fleet tests when a rollout moved to a new index.
const REBIND_WAIT: Duration = Duration::from_secs(10);

/// [`endpoint`], retried while the address is still in use: an engine that just shut down on the same
/// address (the agent's previous assignment) releases its UDP socket only when quinn's driver task
/// ends, a moment after [`Engine::shutdown`] returns.
async fn bind_endpoint(
    listen: SocketAddr,
    tls: &FleetTls,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let deadline = Instant::now() + REBIND_WAIT;
    loop {
        match endpoint(listen, tls, limits) {
            Err(NetError::Endpoint(e))
                if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                debug!(%listen, "address still in use; waiting for the previous engine to release it");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

/// A QUIC endpoint listening on `listen` and dialling, both with the live TLS state: rotations and
/// revocations apply to the next handshake without rebuilding it.
fn endpoint(
    listen: SocketAddr,
    tls: &FleetTls,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let mut ep = quinn::Endpoint::server(tls.quic_server(limits)?, listen).map_err(NetError::Endpoint)?;
    ep.set_default_client_config(tls.quic_client(limits)?);
    Ok(ep)
}

/// Loads the persisted revocation list into `tls` (if it verifies); returns its number (0: none).
fn load_revocations(path: &Path, tls: &FleetTls) -> u64 {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the persisted revocation list");
            return 0;
        }
    };
    match pollen_trust::pki::verify_revocation_list(&bytes, tls.ca_pem()) {
        Ok(set) => {
            let number = set.number;
            tls.install_revocations(set);
            info!(list = number, "persisted revocation list loaded");
            number
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "persisted revocation list does not verify; ignored");
            0
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn now_since(start: Instant) -> Duration {
    start.elapsed()
}

impl Shared {
    fn now(&self) -> Duration {
        now_since(self.start)
    }

    fn index_label(&self) -> IndexLabel {
        IndexLabel {
            index: self.id_hex.clone(),
        }
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn update_progress(&self) {
        // Runs once per verified chunk: count, do not copy the bitfield (128 KiB at 2^20 chunks).
        let _serial = self.progress_lock.lock().expect("progress");
        let n = self.store.chunk_count();
        let ratio = if n == 0 {
            1.0
        } else {
            f64::from(self.store.present_count()) / f64::from(n)
        };
        self.metrics
            .progress
            .get_or_create(&self.index_label())
            .set(ratio);
    }

    fn fail(&self, e: EngineError) {
        warn!(error = %e, "engine failed");
        self.status.send_replace(Status::Failed(Arc::new(e)));
    }

    /// Whether `name` may take part in this index's swarm: listed by the signed index, or admitted by
    /// a valid grant on one of this engine's connections.
    fn authorised(&self, name: &str) -> bool {
        self.index.authorises(name) || self.granted.lock().expect("granted").contains(name)
    }

    /// Whether `signature` is the director's grant for `name` on this index.
    fn grant_valid(&self, name: &str, signature: &[u8]) -> bool {
        self.director_key
            .as_ref()
            .is_some_and(|k| pollen_trust::grant::verify(k, self.index.index_digest(), name, signature))
    }

    fn refused(&self, reason: &'static str) {
        self.metrics
            .peer_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Reacts to rotations and newer revocation lists until shutdown.
    async fn trust_loop(self: Arc<Self>) {
        let mut lists = self.tls.revocation_updates();
        let mut rotations = self.tls.identity_updates();
        self.on_revocations().await;
        loop {
            tokio::select! {
                r = lists.changed() => {
                    if r.is_err() { return }
                    self.on_revocations().await;
                }
                r = rotations.changed() => {
                    if r.is_err() { return }
                    self.on_rotation();
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    fn on_rotation(&self) {
        let id = self.tls.current();
        let expiry = id
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics.certificate_expiry.set(expiry);
        info!(serial = id.serial(), expiry, "node certificate in use");
    }

    /// A revocation list was installed: close connections to revoked peers (and all of them if this node
    /// is revoked), then pass a newer list on to every remaining peer and persist it.
    async fn on_revocations(&self) {
        let Some(set) = self.tls.revocations() else {
            return;
        };
        self.metrics.revocation_list_number.set(set.number as i64);
        let own = self.tls.current().serial().to_owned();
        let own_revoked = set.is_revoked(&own);
        let newer = {
            let mut handled = self.crl_handled.lock().expect("crl");
            let newer = set.number > *handled;
            *handled = (*handled).max(set.number);
            newer
        };
        {
            let peers = self.peers.lock().expect("peers");
            for (name, p) in peers.iter() {
                if set.is_revoked(&p.serial) {
                    p.conn.close(protocol::CLOSE_REVOKED.into(), b"revoked");
                    self.refused("revoked");
                    self.hold_off_revoked(p.conn.remote_address(), Some(p.serial.clone()));
                    info!(peer = %name, serial = %p.serial, list = set.number, "closed the connection to a revoked peer");
                } else if own_revoked {
                    p.conn
                        .close(protocol::CLOSE_REVOKED.into(), b"own certificate revoked");
                } else if newer && set.der.len() <= protocol::MAX_CRL_LEN as usize {
                    p.tx.send(Message::Revocations { crl: set.der.clone() });
                }
            }
        }
        if own_revoked {
            error!(serial = %own, list = set.number,
                   "this node's certificate is revoked: every connection closed, taking no part until it has a new certificate");
            self.fail(EngineError::Revoked {
                serial: own,
                list: set.number,
            });
        }
        if newer {
            info!(
                list = set.number,
                revoked = set.serials.len(),
                "revocation list installed"
            );
            if set.der.len() > protocol::MAX_CRL_LEN as usize {
                warn!(
                    bytes = set.der.len(),
                    limit = protocol::MAX_CRL_LEN,
                    "revocation list too large to pass on to peers"
                );
            }
            let path = self.crl_path.clone();
            let der = set.der;
            match tokio::task::spawn_blocking(move || write_atomically(&path, &der)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "could not persist the revocation list"),
                Err(e) => warn!(error = %e, "revocation list persist task failed"),
            }
        }
    }

    /// Leaves `addr` alone for [`REVOKED_REDIAL`] (or until `serial` is no longer revoked).
    fn hold_off_revoked(&self, addr: SocketAddr, serial: Option<String>) {
        let retry_at = Instant::now() + REVOKED_REDIAL;
        self.revoked_addrs
            .lock()
            .expect("revoked")
            .insert(addr, RevokedAddr { serial, retry_at });
    }

    /// Closes a connection whose peer sent a revocation list that is malformed or does not verify.
    fn bad_revocation_list(&self, conn: &quinn::Connection, error: &dyn std::fmt::Display) {
        warn!(%error, "the peer sent a revocation list that does not verify: connection closed");
        self.refused("bad_revocation_list");
        conn.close(protocol::CLOSE_REFUSED.into(), b"bad revocation list");
    }

    /// Verifies the newer revocation lists one peer sends (admitted by `control_reader`), at most one per
    /// [`CRL_VERIFY_INTERVAL`], off the runtime threads; installs those that verify (the trust loop then
    /// acts on them and passes them on) and closes the connection on one that does not.
    async fn revocation_intake(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut lists: mpsc::Receiver<(u64, Vec<u8>)>,
        stop: CancellationToken,
    ) {
        let mut gate = ListGate::new(CRL_VERIFY_INTERVAL);
        loop {
            let ready = gate.ready_at();
            tokio::select! {
                l = lists.recv() => match l {
                    Some((number, der)) => {
                        gate.offer(number, der, self.tls.revocation_number());
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(ready.map_or_else(tokio::time::Instant::now, Into::into)), if ready.is_some() => {}
                _ = stop.cancelled() => return,
            }
            let Some(der) = gate.take(self.tls.revocation_number(), Instant::now()) else {
                continue;
            };
            let ca = self.tls.ca_pem().to_owned();
            match tokio::task::spawn_blocking(move || pollen_trust::pki::verify_revocation_list(&der, &ca))
                .await
            {
                Ok(Ok(set)) => {
                    let number = set.number;
                    if self.tls.install_revocations(set) {
                        info!(list = number, "newer revocation list received from a peer");
                    }
                }
                Ok(Err(e)) => {
                    self.bad_revocation_list(&conn, &e);
                    stop.cancel();
                    return;
                }
                Err(e) => warn!(error = %e, "revocation list verification task failed"),
            }
        }
    }

    fn broadcast(&self, msg: &Message) {
        self.send_where(msg, |_| true);
    }

    /// Queues `msg` on the control stream of every connected peer `to` accepts.
    fn send_where(&self, msg: &Message, to: impl Fn(PeerId) -> bool) {
        for p in self.peers.lock().expect("peers").values() {
            if to(p.id) && !p.tx.send(msg.clone()) {
                debug!(peer_id = p.id, "control queue full or closed; message dropped");
            }
        }
    }

    /// Sends `msg` to the connected peers of this node's site.
    fn broadcast_to_site(&self, msg: &Message) {
        // The picker knows every connected peer and its site; taken before the peers lock, not inside it.
        let near = self.picker.lock().expect("picker").same_site_peers();
        self.send_where(msg, |id| near.contains(&id));
    }

    fn chunk_lock(&self, c: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.chunk_locks
            .lock()
            .expect("locks")
            .entry(c)
            .or_default()
            .clone()
    }

    /// A chunk was verified and marked present.
    fn on_verified(&self, c: u32) {
        self.metrics.chunks_verified.inc();
        self.update_progress();
        self.broadcast(&Message::Have {
            index: self.id,
            chunks: vec![c],
        });
        if self.store.is_complete()
            && matches!(*self.status.borrow(), Status::Running)
            && !self.finishing.swap(true, Ordering::AcqRel)
        {
            match self.store.persist() {
                Ok(()) => {
                    let secs = self.start.elapsed().as_secs_f64();
                    self.metrics
                        .time_to_complete
                        .get_or_create(&self.index_label())
                        .set(secs);
                    // What the open connections carried so far, on the wire (QUIC and UDP headers,
                    // acknowledgements, control messages and retransmissions included).
                    // The part from other sites' peers is what crossed the WAN into this node, split
                    // into datagrams and the frames they held.
                    let near = self.picker.lock().expect("picker").same_site_peers();
                    let (mut tx, mut rx, mut lost) = (0u64, 0u64, 0u64);
                    let (mut black_holes, mut mtu_min, mut mtu_max) = (0u64, u16::MAX, 0u16);
                    let mut far = quinn::ConnectionStats::default();
                    for p in self.peers.lock().expect("peers").values() {
                        let st = p.conn.stats();
                        tx += st.udp_tx.bytes;
                        rx += st.udp_rx.bytes;
                        lost += st.path.lost_bytes;
                        black_holes += st.path.black_holes_detected;
                        mtu_min = mtu_min.min(st.path.current_mtu);
                        mtu_max = mtu_max.max(st.path.current_mtu);
                        if !near.contains(&p.id) {
                            far.udp_rx.bytes += st.udp_rx.bytes;
                            far.udp_rx.datagrams += st.udp_rx.datagrams;
                            far.udp_tx.bytes += st.udp_tx.bytes;
                            far.udp_tx.datagrams += st.udp_tx.datagrams;
                            far.frame_rx.stream += st.frame_rx.stream;
                            far.frame_rx.acks += st.frame_rx.acks;
                            far.frame_tx.acks += st.frame_tx.acks;
                            far.path.lost_bytes += st.path.lost_bytes;
                        }
                    }
                    info!(
                        seconds = secs,
                        origin_bytes = self.picker.lock().expect("picker").origin_bytes(),
                        cross_site_bytes = self.metrics.cross_site_bytes.get(),
                        discarded_bytes = self.metrics.discarded_bytes.get(),
                        peer_udp_rx_bytes = rx,
                        peer_udp_tx_bytes = tx,
                        peer_lost_bytes = lost,
                        far_udp_rx_bytes = far.udp_rx.bytes,
                        far_udp_rx_datagrams = far.udp_rx.datagrams,
                        far_udp_tx_bytes = far.udp_tx.bytes,
                        far_udp_tx_datagrams = far.udp_tx.datagrams,
                        far_stream_frames_rx = far.frame_rx.stream,
                        far_ack_frames_rx = far.frame_rx.acks,
                        far_ack_frames_tx = far.frame_tx.acks,
                        far_lost_bytes = far.path.lost_bytes,
                        black_holes,
                        mtu_min,
                        mtu_max,
                        "index complete"
                    );
                    self.status.send_replace(Status::Complete);
                }
                Err(e) => self.fail(e.into()),
            }
        }
        self.bump();
    }

    fn handle_store_error(&self, e: &StoreError) {
        if let StoreError::Io { .. } = e {
            self.fail(EngineError::Store(StoreError::Io {
                op: "write chunk",
                path: self.store.payload_path().to_owned(),
                source: std::io::Error::other(e.to_string()),
            }));
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i { Some(i) => i, None => return },
                _ = self.shutdown.cancelled() => {
                    // Closing the endpoint ends every connection and stream task promptly.
                    self.endpoint.close(protocol::CLOSE_NORMAL.into(), b"shutdown");
                    return;
                }
            };
            if self.tls.own_revoked() {
                incoming.refuse();
                continue;
            }
            if self.peers.lock().expect("peers").len() >= self.max_connections {
                self.metrics.refused_connections.inc();
                incoming.refuse();
                continue;
            }
            let s = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => s.run_conn(conn, false).await,
                    Ok(Err(e)) => {
                        s.metrics.refused_connections.inc();
                        info!(%remote, error = %e, "inbound handshake refused");
                    }
                    Err(_) => {
                        s.metrics.refused_connections.inc();
                        info!(%remote, "inbound handshake timed out");
                    }
                }
            });
        }
    }

    async fn dial_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(DIAL_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = self.dial_now.notified() => {},
                _ = self.shutdown.cancelled() => return,
            }
            if self.tls.own_revoked() {
                continue;
            }
            let connected: HashSet<SocketAddr> = self
                .peers
                .lock()
                .expect("peers")
                .values()
                .map(|p| p.conn.remote_address())
                .collect();
            let known: Vec<SocketAddr> = self.known.lock().expect("known").iter().copied().collect();
            let mut banned = self.banned_addrs.lock().expect("banned").clone();
            let now = Instant::now();
            self.revoked_addrs.lock().expect("revoked").retain(|addr, r| {
                let still = r.retry_at > now && r.serial.as_ref().is_none_or(|s| self.tls.is_revoked(s));
                if still {
                    banned.insert(*addr);
                }
                still
            });
            self.refused_by.lock().expect("refused").retain(|addr, until| {
                let still = *until > now;
                if still {
                    banned.insert(*addr);
                }
                still
            });
            for addr in known {
                if connected.contains(&addr)
                    || banned.contains(&addr)
                    || !self.dialing.lock().expect("dialing").insert(addr)
                {
                    continue;
                }
                let s = self.clone();
                tokio::spawn(async move {
                    match s.endpoint.connect(addr, "pollen-peer") {
                        Ok(connecting) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                            Ok(Ok(conn)) => s.clone().run_conn(conn, true).await,
                            Ok(Err(e)) if tls::refused_as_revoked(&e) => {
                                // Our own verifier refused its certificate: do not redial it every few seconds.
                                debug!(%addr, "dialled peer presents a revoked certificate");
                                s.hold_off_revoked(addr, None);
                            }
                            Ok(Err(e)) => debug!(%addr, error = %e, "dial failed"),
                            Err(_) => debug!(%addr, "dial timed out"),
                        },
                        Err(e) => debug!(%addr, error = %e, "dial refused locally"),
                    }
                    s.dialing.lock().expect("dialing").remove(&addr);
                });
            }
        }
    }

    async fn run_conn(self: Arc<Self>, conn: quinn::Connection, dialer: bool) {
        let Some(cert) = tls::peer_certificate(&conn) else {
            conn.close(protocol::CLOSE_REFUSED.into(), b"no name");
            return;
        };
        let span = info_span!("peer", peer = %cert.name, addr = %conn.remote_address());
        self.conn_main(conn, dialer, cert).instrument(span).await;
    }

    async fn conn_main(self: Arc<Self>, conn: quinn::Connection, dialer: bool, cert: tls::PeerCert) {
        let tls::PeerCert {
            name,
            serial,
            not_after,
        } = cert;
        if self.tls.own_revoked() {
            conn.close(protocol::CLOSE_REVOKED.into(), b"own certificate revoked");
            return;
        }
        if name == self.name {
            conn.close(protocol::CLOSE_DUPLICATE.into(), b"self");
            return;
        }
        if self.banned.lock().expect("banned").contains(&name) {
            self.metrics.refused_connections.inc();
            self.refused("banned");
            conn.close(protocol::CLOSE_REFUSED.into(), b"banned");
            return;
        }
        // A peer the index does not list must show a grant before it learns anything. An accepting node
        // reads it first. A dialling node can read only after it has written (the acceptor sees the
        // stream once it carries data): with a grant of its own it writes that alone, then reads; to a
        // peer admitted by grant before, it writes `Hello` and then checks the grant that leads the
        // peer's answer. Otherwise it refuses: the granted node dials instead.
        let listed = self.index.authorises(&name);
        let own_grant = self.own_grant.lock().expect("grant").clone();
        let grant_epoch = self.grant_epoch.load(Ordering::Acquire);
        let known = !listed && self.granted.lock().expect("granted").contains(&name);
        let expect_grant =
            !listed && self.director_key.is_some() && (!dialer || own_grant.is_some() || known);
        if !listed && !expect_grant {
            self.refuse_unauthorised(&conn, dialer).await;
            return;
        }
        let hs = async {
            let (mut send, mut recv) = if dialer {
                conn.open_bi().await?
            } else {
                conn.accept_bi().await?
            };
            // Data streams are sent one after the other, not interleaved (`send_fairness` off in the
            // transport); the control stream goes ahead of them, so that a `Have` or a `Cancel` does not
            // wait behind a send buffer full of chunk data.
            let _ = send.set_priority(CONTROL_PRIORITY);
            let mut buf = Vec::new();
            // The peer's grant, or its refusal of this node (passed on to the refusal handling below).
            macro_rules! peer_grant {
                () => {
                    match read_frame(&mut recv, &mut buf).await? {
                        Some(e @ Message::Error { .. }) => {
                            return Ok(Handshake::Hello(send, recv, Some(e)));
                        }
                        other => {
                            if !self.check_grant(other, &name) {
                                return Ok(Handshake::Refuse(send));
                            }
                        }
                    }
                };
            }
            if expect_grant && !dialer {
                peer_grant!();
            }
            if let Some(signature) = &own_grant {
                let grant = Message::Grant {
                    index: self.id,
                    signature: signature.clone(),
                };
                write_msg(&mut send, &grant).await?;
                if expect_grant && dialer {
                    peer_grant!();
                }
            }
            let hello = Message::Hello {
                version: protocol::VERSION,
                site: self.site.clone(),
                indexes: vec![self.id],
            };
            write_msg(&mut send, &hello).await?;
            if expect_grant && dialer && own_grant.is_none() {
                peer_grant!();
            }
            let first = read_frame(&mut recv, &mut buf).await?;
            Ok::<_, FetchError>(Handshake::Hello(send, recv, first))
        };
        let (send, recv, peer_hello) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
            Ok(Ok(Handshake::Hello(s, r, Some(h)))) => (s, r, h),
            Ok(Ok(Handshake::Refuse(send))) => {
                self.refused("not_authorised");
                info!("peer not listed by this index and without a valid grant: refused");
                if dialer {
                    self.refused_by
                        .lock()
                        .expect("refused")
                        .insert(conn.remote_address(), Instant::now() + NOT_AUTHORISED_REDIAL);
                }
                self.send_refusal(&conn, send).await;
                return;
            }
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                debug!(error = %e, "control stream failed");
                return;
            }
            Err(_) => {
                conn.close(protocol::CLOSE_PROTOCOL.into(), b"hello timeout");
                return;
            }
        };
        let (version, site, indexes) = match peer_hello {
            Message::Hello {
                version,
                site,
                indexes,
            } => (version, site, indexes),
            Message::Error {
                code: ErrorCode::NotAuthorised,
                message,
                ..
            } => {
                // The peer's copy of the index does not list this node: leave it alone for a while.
                // Unless it dialled this node, which holds a grant: a listed node refuses an unlisted
                // one it dials without reading the grant, and this node dials it with the grant instead.
                info!(%message, "the peer refuses this node: not authorised for this index");
                if dialer || own_grant.is_none() {
                    self.hold_off_refusing(conn.remote_address(), grant_epoch);
                }
                conn.close(protocol::CLOSE_REFUSED.into(), b"not authorised");
                return;
            }
            _ => {
                conn.close(protocol::CLOSE_PROTOCOL.into(), b"expected hello");
                return;
            }
        };
        if version != protocol::VERSION {
            conn.close(protocol::CLOSE_PROTOCOL.into(), b"version");
            return;
        }
        // One connection per pair: keep the one dialled by the smaller name.
        let initiator = if dialer { self.name.clone() } else { name.clone() };
        let keeper = self.name.clone().min(name.clone());
        let (tx, rx) = mpsc::channel::<Message>(self.control_queue);
        let tx = ControlTx::new(tx);
        let id = {
            let mut peers = self.peers.lock().expect("peers");
            // Checked under the peers lock: a list installed after this point finds the entry and closes it.
            if self.tls.is_revoked(&serial) {
                self.refused("revoked");
                self.hold_off_revoked(conn.remote_address(), Some(serial));
                conn.close(protocol::CLOSE_REVOKED.into(), b"revoked");
                return;
            }
            if let Some(old) = peers.get(&name) {
                let replace = old.initiator == initiator || initiator == keeper;
                if !replace {
                    conn.close(protocol::CLOSE_DUPLICATE.into(), b"duplicate");
                    return;
                }
                old.conn.close(protocol::CLOSE_DUPLICATE.into(), b"duplicate");
            }
            let mut next = self.next_id.lock().expect("ids");
            let id = *next;
            *next += 1;
            peers.insert(
                name.clone(),
                PeerEntry {
                    id,
                    serial,
                    initiator,
                    conn: conn.clone(),
                    tx: tx.clone(),
                },
            );
            self.metrics.connected_peers.set(peers.len() as i64);
            id
        };
        let works_on_index = indexes.contains(&self.id);
        info!(peer_id = id, %site, works_on_index, "peer connected");
        {
            let mut p = self.picker.lock().expect("picker");
            p.add_peer(id, &name, site == self.site);
        }
        self.known.lock().expect("known").insert(conn.remote_address());
        // A peer that was refused as revoked and now connects with a valid certificate is dialled again.
        self.revoked_addrs
            .lock()
            .expect("revoked")
            .remove(&conn.remote_address());
        // First messages: the revocation list we hold, our have-map, whether we read the origin (when we
        // do not), and a few peer addresses.
        for m in self.state_messages(false) {
            tx.send(m);
        }
        let addrs: Vec<SocketAddr> = self
            .peers
            .lock()
            .expect("peers")
            .values()
            .filter(|p| p.id != id)
            .map(|p| p.conn.remote_address())
            .take(protocol::MAX_PEERS)
            .collect();
        tx.send(Message::Peers { addrs });
        let fetching = self.picker.lock().expect("picker").origin_inflight();
        for l in protocol::chunk_lists(&fetching) {
            tx.send(Message::Fetching {
                index: self.id,
                chunks: l,
            });
        }
        // Tell the others about the newcomer, so that they can trade with it directly.
        {
            let news = Message::Peers {
                addrs: vec![conn.remote_address()],
            };
            for p in self.peers.lock().expect("peers").values().filter(|p| p.id != id) {
                p.tx.send(news.clone());
            }
        }

        let conn_cancel = self.shutdown.child_token();
        let cancelled_reqs: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let linger = if site == self.site {
            CONTROL_LINGER
        } else {
            FAR_CONTROL_LINGER
        };
        tasks.spawn(
            self.clone()
                .control_writer(send, rx, tx.resync.clone(), linger, conn_cancel.clone())
                .in_current_span(),
        );
        let (crl_tx, crl_rx) = mpsc::channel(4);
        tasks.spawn(
            self.clone()
                .control_reader(
                    conn.clone(),
                    recv,
                    id,
                    cancelled_reqs.clone(),
                    crl_tx,
                    conn_cancel.clone(),
                )
                .in_current_span(),
        );
        tasks.spawn(
            self.clone()
                .revocation_intake(conn.clone(), crl_rx, conn_cancel.clone())
                .in_current_span(),
        );
        tasks.spawn(
            self.clone()
                .request_server(
                    conn.clone(),
                    name.clone(),
                    id,
                    cancelled_reqs,
                    conn_cancel.clone(),
                )
                .in_current_span(),
        );
        if works_on_index {
            tasks.spawn(
                self.clone()
                    .downloader(conn.clone(), name.clone(), id, conn_cancel.clone())
                    .in_current_span(),
            );
        }
        // The connection must not outlive the peer's certificate (the handshake checked it only once).
        let expiry = tokio::time::Instant::now()
            + not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
        tokio::select! {
            _ = conn.closed() => {},
            _ = conn_cancel.cancelled() => {},
            _ = async { while tasks.join_next().await.is_some() {} } => {},
            _ = tokio::time::sleep_until(expiry) => {
                self.refused("expired");
                info!("the peer's certificate expired: connection closed");
                conn.close(protocol::CLOSE_EXPIRED.into(), b"expired");
            }
        }
        conn_cancel.cancel();
        tasks.abort_all();
        // Cleanup: only if this connection is still the registered one.
        {
            let mut peers = self.peers.lock().expect("peers");
            if peers.get(&name).is_some_and(|p| p.id == id) {
                peers.remove(&name);
            }
            self.metrics.connected_peers.set(peers.len() as i64);
        }
        self.picker.lock().expect("picker").remove_peer(id);
        self.cancels.lock().expect("cancels").retain(|(_, p), t| {
            if *p == id {
                t.cancel();
                false
            } else {
                true
            }
        });
        self.bump();
        let st = conn.stats();
        info!(
            peer_id = id,
            reason = ?conn.close_reason(),
            udp_tx_bytes = st.udp_tx.bytes,
            udp_rx_bytes = st.udp_rx.bytes,
            lost_packets = st.path.lost_packets,
            lost_bytes = st.path.lost_bytes,
            sent_packets = st.path.sent_packets,
            mtu = st.path.current_mtu,
            "peer disconnected"
        );
    }

    /// Leaves `addr`, a peer that refused this node, alone for `NOT_AUTHORISED_REDIAL`, unless this
    /// node's grant changed since the refused connection began (`epoch`): the grant loop clears the
    /// hold-offs when a grant arrives, and a refusal still in flight must not put one back after that.
    /// The epoch is checked under the hold-off lock, and the grant loop bumps it before taking that lock.
    fn hold_off_refusing(&self, addr: SocketAddr, epoch: u64) {
        let mut refused = self.refused_by.lock().expect("refused");
        if self.grant_epoch.load(Ordering::Acquire) == epoch {
            refused.insert(addr, Instant::now() + NOT_AUTHORISED_REDIAL);
        } else {
            drop(refused);
            self.dial_now.notify_one();
        }
    }

    /// Refuses a peer that the index does not authorise, before anything about the swarm is sent (not
    /// even `Hello`): a typed `NotAuthorised` error on the control stream, then the connection is closed.
    async fn refuse_unauthorised(&self, conn: &quinn::Connection, dialer: bool) {
        self.refused("not_authorised");
        info!("peer not authorised for this index: refused");
        if dialer {
            // A static or gossiped address of a node the index does not list: do not redial it at once.
            self.refused_by
                .lock()
                .expect("refused")
                .insert(conn.remote_address(), Instant::now() + NOT_AUTHORISED_REDIAL);
        }
        let send = async {
            Ok::<_, quinn::ConnectionError>(if dialer {
                conn.open_bi().await?.0
            } else {
                conn.accept_bi().await?.0
            })
        };
        match tokio::time::timeout(REFUSAL_NOTICE_TIMEOUT, send).await {
            Ok(Ok(send)) => self.send_refusal(conn, send).await,
            _ => conn.close(protocol::CLOSE_REFUSED.into(), b"not authorised"),
        }
    }

    /// Whether `msg` is a valid grant for `name` on this index; admits `name` if so.
    fn check_grant(&self, msg: Option<Message>, name: &str) -> bool {
        match msg {
            Some(Message::Grant { index, signature }) if index == self.id => {
                if self.grant_valid(name, &signature) {
                    info!("peer not listed by this index admitted by its grant");
                    self.granted.lock().expect("granted").insert(name.to_owned());
                    true
                } else {
                    self.refused("bad_grant");
                    warn!("peer presented a grant that does not verify");
                    false
                }
            }
            _ => false,
        }
    }

    /// Sends the typed `NotAuthorised` error on `send`, waits briefly for it to arrive, and closes.
    async fn send_refusal(&self, conn: &quinn::Connection, mut send: quinn::SendStream) {
        let notice = async {
            let error = Message::Error {
                code: ErrorCode::NotAuthorised,
                index: self.id,
                message: "not authorised for this index".into(),
            };
            write_msg(&mut send, &error).await?;
            let _ = send.finish();
            // Until the peer has the error (or closes), so that the close does not overtake it.
            let _ = send.stopped().await;
            Ok::<_, FetchError>(())
        };
        let _ = tokio::time::timeout(REFUSAL_NOTICE_TIMEOUT, notice).await;
        conn.close(protocol::CLOSE_REFUSED.into(), b"not authorised");
    }

    async fn control_reader(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut recv: quinn::RecvStream,
        id: PeerId,
        cancelled: Arc<Mutex<HashSet<u32>>>,
        lists: mpsc::Sender<(u64, Vec<u8>)>,
        stop: CancellationToken,
    ) {
        let mut buf = Vec::new();
        loop {
            let msg = tokio::select! {
                m = read_frame(&mut recv, &mut buf) => m,
                _ = stop.cancelled() => return,
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "control stream ended");
                    break;
                }
            };
            let now = self.now();
            match msg {
                Message::HaveMap { index, bits } if index == self.id => {
                    self.picker.lock().expect("picker").peer_have_map(id, &bits, now);
                }
                Message::Have { index, chunks } if index == self.id => {
                    let mut p = self.picker.lock().expect("picker");
                    for c in chunks {
                        p.peer_have(id, c, now);
                    }
                }
                Message::Origin { index, reads } if index == self.id => {
                    self.picker.lock().expect("picker").peer_reads_origin(id, reads);
                }
                Message::Fetching { index, chunks } if index == self.id => {
                    let mut p = self.picker.lock().expect("picker");
                    for c in chunks {
                        p.peer_fetching(id, c);
                    }
                }
                Message::Cancel { index, first, count } if index == self.id => {
                    let mut set = cancelled.lock().expect("cancelled");
                    if set.len() < 4096 {
                        set.extend(first..first.saturating_add(count));
                    }
                }
                Message::Peers { addrs } => {
                    let mut known = self.known.lock().expect("known");
                    let local = self.endpoint.local_addr().ok();
                    let mut new = false;
                    for a in addrs {
                        if known.len() < MAX_KNOWN_ADDRS && Some(a) != local {
                            new |= known.insert(a);
                        }
                    }
                    if new {
                        self.dial_now.notify_one();
                    }
                }
                Message::Revocations { crl } => {
                    // Read the number before any signature check: a list not newer than ours (the usual
                    // case, peers passing on the list we hold) is dropped unverified.
                    match crl_number(&crl) {
                        Some(n) if n <= self.tls.revocation_number() => {}
                        Some(n) => {
                            if lists.send((n, crl)).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            self.bad_revocation_list(&conn, &"not a numbered X.509 CRL");
                            break;
                        }
                    }
                }
                Message::Error { code, message, .. } => info!(code = code.name(), %message, "peer error"),
                Message::Hello { .. } | Message::Request { .. } | Message::Data { .. } => {
                    warn!("unexpected message on the control stream");
                    break;
                }
                _ => {} // another index
            }
            self.bump();
        }
        stop.cancel();
    }

    async fn request_server(
        self: Arc<Self>,
        conn: quinn::Connection,
        name: String,
        id: PeerId,
        cancelled: Arc<Mutex<HashSet<u32>>>,
        stop: CancellationToken,
    ) {
        loop {
            let (send, recv) = tokio::select! {
                s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
                _ = stop.cancelled() => return,
            };
            let s = self.clone();
            let name = name.clone();
            let cancelled = cancelled.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = s.serve(send, recv, &name, id, &cancelled).await {
                        debug!(error = %e, "request failed");
                    }
                }
                .in_current_span(),
            );
        }
    }

    async fn refuse(
        &self,
        send: &mut quinn::SendStream,
        code: ErrorCode,
        msg: &str,
    ) -> Result<(), FetchError> {
        self.metrics
            .refused_requests
            .get_or_create(&CodeLabel { code: code.name() })
            .inc();
        write_msg(
            send,
            &Message::Error {
                code,
                index: self.id,
                message: msg.into(),
            },
        )
        .await?;
        let _ = send.finish();
        Ok(())
    }

    /// Waits (up to `SLOT_WAIT`) for an upload slot; woken as soon as one is released.
    async fn take_slot(&self, id: PeerId) -> bool {
        let deadline = tokio::time::Instant::now() + SLOT_WAIT;
        loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.slots.lock().expect("slots").try_acquire(id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }

    fn release_slot(&self, id: PeerId) {
        self.slots.lock().expect("slots").release(id);
        self.slot_freed.notify_waiters();
    }

    async fn serve(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        name: &str,
        id: PeerId,
        cancelled: &Mutex<HashSet<u32>>,
    ) -> Result<(), FetchError> {
        let mut buf = Vec::new();
        let req = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut recv, &mut buf))
            .await
            .map_err(|_| FetchError::Timeout)??;
        let Some(Message::Request { index, first, count }) = req else {
            return self
                .refuse(&mut send, ErrorCode::Protocol, "expected a request")
                .await;
        };
        if index != self.id {
            return self
                .refuse(&mut send, ErrorCode::UnknownIndex, "unknown index")
                .await;
        }
        if !self.authorised(name) {
            self.refused("not_authorised");
            return self
                .refuse(
                    &mut send,
                    ErrorCode::NotAuthorised,
                    "not authorised for this index",
                )
                .await;
        }
        let mut piece = vec![0u8; IO_PIECE];
        for c in first..first.saturating_add(count) {
            if cancelled.lock().expect("cancelled").remove(&c) {
                continue;
            }
            if c >= self.store.chunk_count() {
                return self
                    .refuse(&mut send, ErrorCode::Range, "chunk out of range")
                    .await;
            }
            if !self.store.has(c) {
                return self
                    .refuse(&mut send, ErrorCode::NotPresent, "chunk not present")
                    .await;
            }
            if !self.take_slot(id).await {
                return self
                    .refuse(&mut send, ErrorCode::Limit, "upload slots busy")
                    .await;
            }
            let res = self.send_chunk(&mut send, c, &mut piece).await;
            self.release_slot(id);
            res?;
        }
        let _ = send.finish();
        Ok(())
    }

    async fn send_chunk(
        &self,
        send: &mut quinn::SendStream,
        c: u32,
        piece: &mut [u8],
    ) -> Result<(), FetchError> {
        let len = self.store.chunk_len(c);
        write_msg(
            send,
            &Message::Data {
                index: self.id,
                chunk: c,
                len,
            },
        )
        .await?;
        let mut off = 0u32;
        while off < len {
            let n = self.store.read(c, off, piece)?;
            #[cfg(feature = "testing")]
            if self.corrupt_uploads && off == 0 && n > 0 {
                piece[0] ^= 0xff;
            }
            self.up.acquire(n).await;
            send.write_all(&piece[..n]).await.map_err(NetError::from)?;
            self.metrics.sent_bytes.inc_by(n as u64);
            off += n as u32;
        }
        Ok(())
    }

    async fn downloader(
        self: Arc<Self>,
        conn: quinn::Connection,
        name: String,
        id: PeerId,
        stop: CancellationToken,
    ) {
        let mut gen_rx = self.generation.subscribe();
        // Each task fetches one run of consecutive chunks and returns those it did not deliver.
        let mut inflight: JoinSet<(Vec<u32>, Result<(), FetchError>)> = JoinSet::new();
        loop {
            if !matches!(*self.status.borrow(), Status::Running) && inflight.is_empty() {
                // Complete (or failed): nothing more to fetch; keep serving until the connection ends.
                stop.cancelled().await;
                return;
            }
            let (picks, far) = {
                let mut p = self.picker.lock().expect("picker");
                p.set_rtt(id, conn.rtt());
                let far = p.same_site(id) == Some(false);
                if matches!(*self.status.borrow(), Status::Running) {
                    (p.pick_for_peer(id, self.now()), far)
                } else {
                    (Vec::new(), far)
                }
            };
            if far && !picks.is_empty() {
                // Fetching from another site: tell this site's peers, so that they wait for our `Have`
                // instead of pulling the same chunks across the WAN (other sites have no use for it).
                self.broadcast_to_site(&Message::Fetching {
                    index: self.id,
                    chunks: picks.clone(),
                });
            }
            for (first, count) in runs(&picks) {
                // One token for the run: a copy of any of its chunks arriving elsewhere (endgame) stops
                // the run, and what it did not deliver goes back to the picker.
                let token = stop.child_token();
                {
                    let mut cancels = self.cancels.lock().expect("cancels");
                    for c in first..first + count {
                        cancels.insert((c, id), token.clone());
                    }
                }
                let s = self.clone();
                let conn = conn.clone();
                inflight.spawn(
                    async move {
                        let mut next = first;
                        let mut skipped = Vec::new();
                        let r = s
                            .fetch_run(&conn, id, first, count, &token, &mut next, &mut skipped)
                            .await;
                        skipped.extend(next..first + count);
                        (skipped, r)
                    }
                    .in_current_span(),
                );
            }
            tokio::select! {
                _ = gen_rx.changed() => {},
                Some(res) = inflight.join_next() => {
                    let Ok((undelivered, r)) = res else { continue };
                    {
                        let mut cancels = self.cancels.lock().expect("cancels");
                        for c in &undelivered {
                            cancels.remove(&(*c, id));
                        }
                    }
                    {
                        let mut p = self.picker.lock().expect("picker");
                        for &c in &undelivered {
                            p.failed(c, Source::Peer(id));
                        }
                    }
                    match r {
                        Ok(()) => {
                            if !undelivered.is_empty() {
                                self.bump();
                            }
                        }
                        Err(FetchError::Verify(e)) => {
                            self.ban(&conn, &name, &e);
                            stop.cancel();
                            return;
                        }
                        Err(e) => {
                            debug!(chunks = ?undelivered, error = %e, "fetch failed");
                            if let FetchError::Store(se) = &e {
                                self.handle_store_error(se);
                            }
                            if matches!(e, FetchError::Remote(ErrorCode::NotAuthorised, _)) {
                                // This peer will not serve us this index: ask it rarely.
                                debug!("peer refuses: not authorised for this index");
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            if matches!(e, FetchError::Remote(ErrorCode::Limit, _)) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            self.bump();
                        }
                    }
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                _ = stop.cancelled() => return,
            }
        }
    }

    fn chunk_done(&self, c: u32, src: Source, elapsed: Duration) {
        let cancel = self
            .picker
            .lock()
            .expect("picker")
            .completed(c, src, elapsed, self.now());
        {
            let cancels = self.cancels.lock().expect("cancels");
            for p in cancel {
                if let Some(t) = cancels.get(&(c, p)) {
                    t.cancel();
                }
            }
        }
        self.on_verified(c);
    }

    fn ban(&self, conn: &quinn::Connection, name: &str, e: &StoreError) {
        warn!(error = %e, "peer sent a chunk that failed verification; banning it");
        self.metrics
            .verification_failures
            .get_or_create(&PeerLabel { peer: name.into() })
            .inc();
        // Count a ban once, even if several fetches from the peer fail at the same time.
        if self.banned.lock().expect("banned").insert(name.to_owned()) {
            self.metrics
                .bans
                .get_or_create(&PeerLabel { peer: name.into() })
                .inc();
        }
        if let Some(p) = self.peers.lock().expect("peers").get(name) {
            p.conn.close(protocol::CLOSE_REFUSED.into(), b"banned: bad chunk");
        }
        self.banned_addrs
            .lock()
            .expect("banned")
            .insert(conn.remote_address());
        conn.close(protocol::CLOSE_REFUSED.into(), b"banned: bad chunk");
    }

    /// Fetches the run `first..first + count` from a peer on one request stream, storing and verifying
    /// each chunk as it arrives and reporting it done at once (so its `Have` goes out and the pipeline
    /// refills while the rest of the run streams). `next` is left at the first chunk not delivered;
    /// chunks the server skipped (a `Cancel`) are added to `skipped`. `cancel` and the idle timeout are
    /// watched once for the whole run, not at every read.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_run(
        &self,
        conn: &quinn::Connection,
        id: PeerId,
        first: u32,
        count: u32,
        cancel: &CancellationToken,
        next: &mut u32,
        skipped: &mut Vec<u32>,
    ) -> Result<(), FetchError> {
        let (mut send, mut recv) = conn.open_bi().await?;
        // A request must not wait behind the chunk data this node is sending the same peer.
        let _ = send.set_priority(CONTROL_PRIORITY);
        write_msg(
            &mut send,
            &Message::Request {
                index: self.id,
                first,
                count,
            },
        )
        .await?;
        let _ = send.finish();
        // REQUEST_TIMEOUT for the first frame, READ_IDLE_TIMEOUT (the same) between reads after it.
        let idle = IdleClock::new(REQUEST_TIMEOUT.max(READ_IDLE_TIMEOUT));
        let outcome = tokio::select! {
            r = self.receive_run(&mut recv, id, first, count, next, skipped, &idle) => r,
            _ = cancel.cancelled() => Err(FetchError::Cancelled),
            () = idle.expired() => Err(FetchError::Timeout),
        };
        if matches!(outcome, Err(FetchError::Cancelled | FetchError::Timeout)) {
            let _ = recv.stop(protocol::STREAM_CANCELLED.into());
        }
        outcome
    }

    /// The body of [`Engine::fetch_run`]: reads `Data` frames and chunk bytes until the run is
    /// delivered, touching `idle` at each read.
    #[allow(clippy::too_many_arguments)]
    async fn receive_run(
        &self,
        recv: &mut quinn::RecvStream,
        id: PeerId,
        first: u32,
        count: u32,
        next: &mut u32,
        skipped: &mut Vec<u32>,
        idle: &IdleClock,
    ) -> Result<(), FetchError> {
        let end = first + count;
        let received = self
            .metrics
            .received_bytes
            .get_or_create(&SourceLabel { source: "peer" })
            .clone();
        let far = self.picker.lock().expect("picker").same_site(id) == Some(false);
        let t0 = Instant::now();
        let mut frame = Vec::new();
        let mut buf = Vec::new();
        while *next < end {
            let hdr = read_frame(recv, &mut frame).await?;
            idle.touch();
            let (c, len) = match hdr {
                Some(Message::Data { index, chunk, len })
                    if index == self.id && chunk >= *next && chunk < end =>
                {
                    (chunk, len)
                }
                Some(Message::Error { code, message, .. }) => return Err(FetchError::Remote(code, message)),
                _ => return Err(FetchError::Unexpected),
            };
            skipped.extend(*next..c);
            *next = c;
            if len != self.store.chunk_len(c) {
                return Err(FetchError::Verify(StoreError::Verify {
                    chunk: c,
                    reason: "announced length",
                }));
            }
            let lock = self.chunk_lock(c);
            let _guard = lock.lock_owned().await;
            if self.store.has(c) {
                // Another source delivered it meanwhile: stop here; the rest goes back to the picker.
                let _ = recv.stop(protocol::STREAM_CANCELLED.into());
                *next = c + 1;
                return Ok(());
            }
            let mut w = self.store.writer(c)?;
            // Bytes of this chunk received so far count as discarded unless it completes.
            let mut partial = Discard {
                counter: &self.metrics.discarded_bytes,
                bytes: 0,
            };
            // QUIC hands data over a packet (about 1.2 KiB) at a time; gather up to IO_PIECE bytes before
            // each store write, so that the pwrite and the hash update run on large pieces (BLAKE3 hashes
            // 1 KiB blocks of a large update in parallel with SIMD).
            buf.resize(IO_PIECE.min(len as usize), 0);
            let mut remaining = len as usize;
            while remaining > 0 {
                let want = remaining.min(buf.len());
                let mut filled = 0;
                while filled < want {
                    let Some(n) = recv.read(&mut buf[filled..want]).await.map_err(NetError::from)? else {
                        return Err(FetchError::Net(NetError::Truncated));
                    };
                    idle.touch();
                    filled += n;
                }
                self.down.acquire(filled).await;
                received.inc_by(filled as u64);
                partial.bytes += filled as u64;
                w.write(&buf[..filled])?;
                remaining -= filled;
            }
            w.finish()?;
            partial.bytes = 0;
            if far {
                self.metrics.cross_site_bytes.inc_by(u64::from(len));
            }
            *next = c + 1;
            self.cancels.lock().expect("cancels").remove(&(c, id));
            // The picker's rate model wants the time one request takes with the pipeline full; the k-th
            // chunk of a run of n arrives after about k/n of the run's time.
            let elapsed = t0.elapsed().mul_f64(f64::from(count) / f64::from(c - first + 1));
            self.chunk_done(c, Source::Peer(id), elapsed);
        }
        Ok(())
    }

    async fn origin_loop(self: Arc<Self>) {
        if !self.origin {
            return;
        }
        let mut gen_rx = self.generation.subscribe();
        // Grace: let the static peers connect first, so that every node computes the same owners.
        let grace_end = Instant::now() + self.origin_grace;
        while Instant::now() < grace_end && self.peers.lock().expect("peers").len() < self.static_peers {
            tokio::select! {
                _ = gen_rx.changed() => {},
                _ = tokio::time::sleep(Duration::from_millis(50)) => {},
                _ = self.shutdown.cancelled() => return,
            }
        }
        let mut inflight: JoinSet<OriginRun> = JoinSet::new();
        let mut backoff_until = Instant::now();
        let mut allowance = self.origin_allowance.clone();
        let mut held_back = false;
        loop {
            if !matches!(*self.status.borrow(), Status::Running) {
                return;
            }
            if let Some(rx) = allowance.as_mut() {
                let cap = *rx.borrow_and_update();
                let budget = match (self.origin_budget, cap) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                self.picker.lock().expect("picker").set_origin_budget(budget);
            }
            let exhausted = self.picker.lock().expect("picker").origin_budget_exhausted();
            if exhausted != held_back {
                held_back = exhausted;
                // Peers leave a node that does not read out of who reads each chunk, and back.
                self.reads_origin.store(!exhausted, Ordering::Relaxed);
                self.broadcast(&Message::Origin {
                    index: self.id,
                    reads: !exhausted,
                });
                if exhausted {
                    info!(
                        origin_bytes = self.picker.lock().expect("picker").origin_bytes(),
                        "origin allowance used up; waiting for peers or a larger allowance"
                    );
                }
            }
            if Instant::now() >= backoff_until {
                let picks = self.picker.lock().expect("picker").pick_for_origin(self.now());
                if !picks.is_empty() {
                    for l in protocol::chunk_lists(&picks) {
                        self.broadcast(&Message::Fetching {
                            index: self.id,
                            chunks: l,
                        });
                    }
                }
                // One range GET per run of consecutive picks (the picker hands out whole blocks).
                for (first, count) in runs(&picks) {
                    let s = self.clone();
                    inflight.spawn(async move {
                        let mut run = OriginRun {
                            first,
                            end: first + count,
                            done: Vec::with_capacity(count as usize),
                            read: 0,
                            result: Ok(()),
                        };
                        run.result = s.fetch_from_origin(&mut run).await;
                        run
                    });
                }
            }
            tokio::select! {
                _ = gen_rx.changed() => {},
                Some(res) = inflight.join_next() => {
                    let Ok(run) = res else { continue };
                    let unreached = run.unreached();
                    {
                        // Chunks another source stored first, and those the run did not reach: whatever
                        // the picker still holds for the origin is released. Bytes read for nothing still
                        // count against the origin budget.
                        let mut p = self.picker.lock().expect("picker");
                        let mut stored_bytes = 0;
                        for &(c, stored) in &run.done {
                            if stored {
                                stored_bytes += u64::from(self.index.chunk_len(c));
                            } else {
                                p.failed(c, Source::Origin);
                            }
                        }
                        for c in unreached.clone() {
                            p.failed(c, Source::Origin);
                        }
                        p.origin_read_unused(run.read.saturating_sub(stored_bytes));
                    }
                    if let Err(e) = run.result {
                        info!(chunks = ?unreached, error = %e, "origin fetch failed");
                        if let FetchError::Verify(_) = e {
                            self.metrics.verification_failures.get_or_create(&PeerLabel { peer: "origin".into() }).inc();
                        }
                        if let FetchError::Store(se) = &e {
                            self.handle_store_error(se);
                        }
                        if let FetchError::Registry(re) = e
                            && re.is_permanent()
                        {
                            // Wrong credentials, a refused scope, an untrusted certificate: an answer
                            // for the node's status, not a reason to read again every second.
                            self.fail(EngineError::Origin(re));
                            return;
                        }
                        backoff_until = Instant::now() + Duration::from_secs(1);
                    }
                },
                _ = allowance_changed(&mut allowance) => {},
                _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Reads the run `run.first..run.end` from the origin with one range GET, storing and verifying
    /// each chunk as its bytes arrive and reporting it done at once (from this task, not the origin loop:
    /// the chunk that completes the store ends that loop, which drops the results it has not read, and
    /// every stored chunk must still be announced with a `Have`, or peers would wait on it forever).
    /// `run.done` gets each chunk reached, with whether this read stored it (`false`: another source
    /// stored it first, and its bytes were read and discarded), and `run.read` every byte read. An error
    /// leaves the rest of the run unreached.
    async fn fetch_from_origin(&self, run: &mut OriginRun) -> Result<(), FetchError> {
        let (first, end) = (run.first, run.end);
        let count = end - first;
        let start = self.index.chunk_range(first).start;
        let stop = self.index.chunk_range(end - 1).end;
        let blob = self.index.payload_location().blob_reference();
        debug!(node = %self.name, first, count, peers = self.peers.lock().expect("peers").len(), "origin fetch");
        self.metrics.origin_requests.inc();
        let t0 = Instant::now();
        let mut resp = self
            .registry
            .blob_range(
                &blob,
                &self.index.payload_location().blob_digest,
                start,
                stop,
                self.index.payload.size,
            )
            .await
            .map_err(FetchError::Registry)?;
        let received = self
            .metrics
            .received_bytes
            .get_or_create(&SourceLabel { source: "origin" })
            .clone();
        let mut c = first;
        // The chunk being written: its lock, writer (`None`: another source stored it; skip its bytes) and
        // the bytes of it still to come.
        let mut cur: Option<(
            tokio::sync::OwnedMutexGuard<()>,
            Option<crate::store::ChunkWriter<'_>>,
            usize,
        )> = None;
        let mut partial = Discard {
            counter: &self.metrics.discarded_bytes,
            bytes: 0,
        };
        while c < end {
            let Some(mut bytes) = resp.chunk().await.map_err(|e| FetchError::Http(e.to_string()))? else {
                return Err(FetchError::Http("response ended early".into()));
            };
            self.down.acquire(bytes.len()).await;
            received.inc_by(bytes.len() as u64);
            run.read += bytes.len() as u64;
            while !bytes.is_empty() {
                if c >= end {
                    return Err(FetchError::Http("response longer than the range".into()));
                }
                if cur.is_none() {
                    let guard = self.chunk_lock(c).lock_owned().await;
                    let w = if self.store.has(c) {
                        None
                    } else {
                        Some(self.store.writer(c)?)
                    };
                    cur = Some((guard, w, self.index.chunk_len(c) as usize));
                }
                let (_, w, left) = cur.as_mut().expect("current chunk");
                let n = bytes.len().min(*left);
                let piece = bytes.split_to(n);
                partial.bytes += n as u64;
                if let Some(w) = w.as_mut() {
                    w.write(&piece)?;
                }
                *left -= n;
                if *left == 0 {
                    let (guard, w, _) = cur.take().expect("current chunk");
                    let stored = match w {
                        Some(w) => {
                            w.finish()?;
                            partial.bytes = 0;
                            true
                        }
                        None => false,
                    };
                    drop(guard);
                    if stored {
                        self.chunk_done(c, Source::Origin, t0.elapsed());
                    } else {
                        self.metrics.discarded_bytes.inc_by(partial.bytes);
                        partial.bytes = 0;
                    }
                    run.done.push((c, stored));
                    c += 1;
                }
            }
        }
        Ok(())
    }

    async fn persist_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // (chunks held, when that count last changed, whether this stall was logged)
        let mut progress = (self.store.present_count(), Instant::now(), false);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = self.shutdown.cancelled() => return,
            }
            let held = self.store.present_count();
            if held != progress.0 {
                progress = (held, Instant::now(), false);
            } else if !progress.2
                && progress.1.elapsed() >= STALL_LOG_AFTER
                && matches!(*self.status.borrow(), Status::Running)
            {
                progress.2 = true;
                let view = self.picker.lock().expect("picker").describe_stall(8);
                info!(held, stalled_s = progress.1.elapsed().as_secs(), %view, "no chunk verified for a while");
            }
            if self.store.unpersisted() > 0 {
                let s = self.clone();
                let r = tokio::task::spawn_blocking(move || s.store.persist()).await;
                if let Ok(Err(e)) = r {
                    self.fail(e.into());
                }
            }
        }
    }
}

impl Shared {
    /// Applies rate limits as the caller changes them, until shutdown or until the sender is gone.
    /// Takes this node's grant as the caller changes it, until shutdown or until the sender is gone.
    async fn grant_loop(self: Arc<Self>, mut rx: watch::Receiver<Option<Vec<u8>>>) {
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let g = rx.borrow_and_update().clone().filter(|_| !self.index.authorises(&self.name));
                    let had = std::mem::replace(&mut *self.own_grant.lock().expect("grant"), g.clone()).is_some();
                    // Before the refusals are cleared: see `hold_off_refusing`.
                    self.grant_epoch.fetch_add(1, Ordering::AcqRel);
                    if g.is_some() {
                        // Peers that refused this node may admit it now.
                        self.refused_by.lock().expect("refused").clear();
                        self.dial_now.notify_one();
                    }
                    info!(had, has = g.is_some(), "peer grant changed");
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn limits_loop(self: Arc<Self>, mut rx: watch::Receiver<RateLimits>) {
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let l = *rx.borrow_and_update();
                    self.up.set_rate(l.upload);
                    self.down.set_rate(l.download);
                    info!(upload = ?l.upload, download = ?l.download, "rate limits changed");
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// How the control stream's opening went.
enum Handshake {
    /// The peer's first frame after any grant (`None`: it closed the stream).
    Hello(quinn::SendStream, quinn::RecvStream, Option<Message>),
    /// The peer is not listed and showed no valid grant: refuse it on this stream.
    Refuse(quinn::SendStream),
}

/// What one origin read (a run of consecutive chunks, one range GET) did.
struct OriginRun {
    /// First chunk of the run.
    first: u32,
    /// End of the run (exclusive).
    end: u32,
    /// Chunks reached, in order, with whether this read stored each (`false`: another source had).
    done: Vec<(u32, bool)>,
    /// Bytes read from the origin.
    read: u64,
    result: Result<(), FetchError>,
}

impl OriginRun {
    /// The chunks of the run not reached (an error cut it short).
    fn unreached(&self) -> std::ops::Range<u32> {
        self.first + self.done.len() as u32..self.end
    }
}

/// Counts the bytes of a chunk received from a peer as discarded when dropped before it completes.
struct Discard<'a> {
    counter: &'a prometheus_client::metrics::counter::Counter,
    bytes: u64,
}

impl Drop for Discard<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.counter.inc_by(self.bytes);
        }
    }
}

/// Resolves when the live origin allowance changes; never if there is none (or its sender is gone).
async fn allowance_changed(rx: &mut Option<watch::Receiver<Option<u64>>>) {
    if let Some(r) = rx
        && r.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Splits picks into runs of consecutive chunks, each at most [`protocol::MAX_REQUEST_CHUNKS`] long, in
/// the order given.
pub(crate) fn runs(picks: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &c in picks {
        match out.last_mut() {
            Some((first, count))
                if first.checked_add(*count) == Some(c) && *count < protocol::MAX_REQUEST_CHUNKS =>
            {
                *count += 1
            }
            _ => out.push((c, 1)),
        }
    }
    out
}

impl Shared {
    /// This node's state as control messages: the revocation list it holds, its have-map, and whether it
    /// reads the origin (`always`, or only when it does not: peers assume it does).
    fn state_messages(&self, always: bool) -> Vec<Message> {
        let mut out = Vec::new();
        if let Some(set) = self.tls.revocations()
            && set.der.len() <= protocol::MAX_CRL_LEN as usize
        {
            out.push(Message::Revocations { crl: set.der });
        }
        out.push(Message::HaveMap {
            index: self.id,
            bits: self.store.have(),
        });
        let reads = self.reads_origin.load(Ordering::Relaxed);
        if always || !reads {
            out.push(Message::Origin {
                index: self.id,
                reads,
            });
        }
        out
    }

    /// Writes a peer's control queue to its control stream, in batches; a batch after messages were
    /// dropped for a full queue ends with this node's whole state.
    async fn control_writer(
        self: Arc<Self>,
        mut send: quinn::SendStream,
        mut rx: mpsc::Receiver<Message>,
        resync: Arc<AtomicBool>,
        linger_for: Duration,
        stop: CancellationToken,
    ) {
        let mut buf = Vec::with_capacity(4096);
        while let Some(mut batch) = gather(&mut rx, linger_for, &stop).await {
            if take_resync(&resync) {
                debug!("control queue overflowed: resending this node's state");
                self.metrics.control_resyncs.inc();
                batch.extend(self.state_messages(true));
            }
            buf.clear();
            for m in protocol::coalesce(batch) {
                m.encode(&mut buf);
            }
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        stop.cancel();
    }
}

/// The next batch of control messages to write as one frame; `None` when the queue is closed or `stop`
/// fires. `Have`s and fetching hints come one chunk at a time: after one of them, wait up to `linger_for`
/// for more, so that a burst goes out as one frame instead of a packet (and its acknowledgement) per
/// chunk. Any other message ends the wait (revocation lists, peer addresses are not held back), and so
/// does a batch of [`LINGER_FLUSH`], so that a fast node does not fill the queue while it waits.
async fn gather(
    rx: &mut mpsc::Receiver<Message>,
    linger_for: Duration,
    stop: &CancellationToken,
) -> Option<Vec<Message>> {
    let lingers = |m: &Message| matches!(m, Message::Have { .. } | Message::Fetching { .. });
    let first = tokio::select! {
        m = rx.recv() => m?,
        _ = stop.cancelled() => return None,
    };
    let mut linger = lingers(&first);
    let mut batch = vec![first];
    if linger {
        // One timer and one cancellation waiter for the whole linger, not one per message.
        let deadline = tokio::time::sleep(linger_for);
        let cancelled = stop.cancelled();
        tokio::pin!(deadline, cancelled);
        while linger && batch.len() < LINGER_FLUSH {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        linger = lingers(&m);
                        batch.push(m);
                    }
                    None => break,
                },
                () = &mut deadline => break,
                () = &mut cancelled => break,
            }
        }
    }
    // Batch whatever else is queued into one write.
    while batch.len() < CONTROL_BATCH {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::{ControlTx, LINGER_FLUSH, gather, runs, take_resync};
    use crate::protocol::{MAX_REQUEST_CHUNKS, Message};
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn have(c: u32) -> Message {
        Message::Have {
            index: [7; 32],
            chunks: vec![c],
        }
    }

    /// `Have`s wait out the linger together; any other message ends it at once; a large burst is
    /// written without waiting; a closed queue or `stop` ends the writer.
    #[tokio::test(start_paused = true)]
    async fn control_batches_linger_for_haves_only() {
        let (tx, mut rx) = mpsc::channel(4096);
        let stop = CancellationToken::new();
        let linger = Duration::from_secs(1);

        tx.send(have(1)).await.unwrap();
        let t = tokio::time::Instant::now();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sender.send(have(2)).await.unwrap();
        });
        let b = gather(&mut rx, linger, &stop).await.unwrap();
        assert_eq!(b, vec![have(1), have(2)]);
        assert_eq!(t.elapsed(), linger, "waited out the linger");

        tx.send(have(3)).await.unwrap();
        let t = tokio::time::Instant::now();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(Message::Peers { addrs: vec![] }).await.unwrap();
        });
        let b = gather(&mut rx, linger, &stop).await.unwrap();
        assert_eq!(b, vec![have(3), Message::Peers { addrs: vec![] }]);
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(100),
            "a peer list is not held back"
        );

        for c in 0..LINGER_FLUSH as u32 + 10 {
            tx.send(have(c)).await.unwrap();
        }
        let t = tokio::time::Instant::now();
        let b = gather(&mut rx, linger, &stop).await.unwrap();
        assert_eq!(b.len(), LINGER_FLUSH + 10, "the whole burst in one batch");
        assert_eq!(t.elapsed(), Duration::ZERO, "a large batch does not wait");

        stop.cancel();
        assert!(gather(&mut rx, linger, &stop).await.is_none());
        let (tx2, mut rx2) = mpsc::channel::<Message>(1);
        drop(tx2);
        assert!(
            gather(&mut rx2, linger, &CancellationToken::new())
                .await
                .is_none()
        );
    }

    /// A message that finds the queue full is dropped and marks the peer for a resync, once; a closed
    /// queue (the connection ended) marks nothing.
    #[test]
    fn a_full_control_queue_marks_the_peer_for_a_resync() {
        let (tx, mut rx) = mpsc::channel(2);
        let q = ControlTx::new(tx);
        assert!(q.send(have(1)) && q.send(have(2)));
        assert!(!take_resync(&q.resync), "nothing dropped yet");
        assert!(!q.send(have(3)), "dropped: the queue is full");
        assert!(take_resync(&q.resync), "marked");
        assert!(!take_resync(&q.resync), "the mark is taken once");
        assert_eq!(rx.try_recv().unwrap(), have(1));
        assert!(q.send(have(4)), "room again");
        drop(rx);
        assert!(!q.send(have(5)));
        assert!(!take_resync(&q.resync), "a closed queue is not a resync");
    }

    #[test]
    fn picks_become_runs_of_consecutive_chunks_in_order() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[7]), vec![(7, 1)]);
        assert_eq!(
            runs(&[4, 5, 6, 9, 2, 3, 10]),
            vec![(4, 3), (9, 1), (2, 2), (10, 1)]
        );
        assert_eq!(runs(&[u32::MAX - 1, u32::MAX]), vec![(u32::MAX - 1, 2)]);
        let long: Vec<u32> = (0..MAX_REQUEST_CHUNKS + 5).collect();
        assert_eq!(
            runs(&long),
            vec![(0, MAX_REQUEST_CHUNKS), (MAX_REQUEST_CHUNKS, 5)]
        );
    }
}
