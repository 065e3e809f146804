//! Mutual TLS for the peer transport: TLS 1.3 only, the aws-lc-rs provider only, ALPN `pollen/1`, and
//! both sides authenticated against the fleet CA.
//!
//! The node name is taken from a certificate's first DNS subject alternative name, else its common
//! name. It is the peer identity everywhere (logs, metrics, bans, authorisation). Peers are dialled by
//! address, so the client checks that the server's chain leads to the fleet CA but does not match a
//! host name; the name in the certificate is then what identifies the peer. Node certificates therefore
//! need both the `serverAuth` and `clientAuth` extended key usages.
//!
//! [`FleetTls`] is the live handle every endpoint is built from:
//! - **Rotation**: the node's certificate and key sit behind a lock and are handed to rustls per
//!   handshake (a certificate resolver on both sides), so [`FleetTls::rotate`] takes effect for the next
//!   handshake without rebuilding the endpoint; open connections keep the certificate they started with.
//! - **Revocation**: both verifiers (server certificates when dialling, client certificates when
//!   accepting) refuse a chain that does not lead to the fleet CA, that is expired or not yet valid
//!   (webpki checks the validity window), or whose end-entity serial is in the current CA-signed
//!   revocation set ([`FleetTls::install_revocations`]). A newer set is announced on a watch channel so
//!   that the engine can close open connections to revoked peers at once.
//! - **No session resumption**: a resumed TLS session would skip certificate verification, so neither
//!   side issues or uses tickets; every connection is verified against the current revocation set.
//! - Handshake refusals are counted by reason (`revoked`, `expired`, `not_yet_valid`, `unknown_ca`,
//!   `bad_certificate`) into the counter family given to [`FleetTls::count_refusals_into`].
//!
//! Non-goals: fetching revocation lists (the agent watches the cluster's list, peers gossip it; see
//! `engine`), OCSP, and checking the revocation list's own expiry (a newer number always supersedes).

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use pollen_trust::pki::RevocationSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::metrics::ReasonLabel;
use crate::protocol::ALPN;

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// PEM content is malformed or missing.
    #[error("{what}: {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The node's own certificate carries no usable name.
    #[error("certificate has no DNS name or common name")]
    NoName,
    /// rustls refused the configuration (or the key does not match the certificate).
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("quic crypto: {0}")]
    Quic(String),
    /// A rotation was refused: the new identity must name the same node under the same CA.
    #[error("rotation refused: {0}")]
    Rotate(String),
}

/// A node's TLS identity (certificate chain and key) and the fleet CA.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    ca_der: Arc<Vec<CertificateDer<'static>>>,
    ca_pem: Arc<str>,
    name: String,
    serial: String,
    not_after: SystemTime,
}

/// The only crypto provider Pollen uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl TlsIdentity {
    /// Loads certificate chain, key and CA from PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&read(cert)?, &read(key)?, &read(ca)?)
    }

    /// Builds an identity from PEM bytes. The key must match the certificate.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        let pem = |what, e: rustls_pki_types::pem::Error| TlsError::Pem {
            what,
            detail: e.to_string(),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| pem("certificate", e))?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                what: "certificate",
                detail: "no certificate found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem("key", e))?;
        let mut roots = RootCertStore::empty();
        let mut ca_der = Vec::new();
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| pem("ca", e))?;
            roots.add(c.clone()).map_err(|e| TlsError::Pem {
                what: "ca",
                detail: e.to_string(),
            })?;
            ca_der.push(c);
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                what: "ca",
                detail: "no CA certificate found".into(),
            });
        }
        let ca_pem = std::str::from_utf8(ca).map_err(|e| TlsError::Pem {
            what: "ca",
            detail: e.to_string(),
        })?;
        let (name, serial) = cert_identity(&certs[0]).ok_or(TlsError::NoName)?;
        let not_after = pollen_trust::pki::cert_facts_der(&certs[0])
            .map_err(|e| TlsError::Pem {
                what: "certificate",
                detail: e.to_string(),
            })?
            .not_after;
        let signing = provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(certs.clone(), signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(TlsIdentity {
            certs,
            key: Arc::new(certified),
            roots: Arc::new(roots),
            ca_der: Arc::new(ca_der),
            ca_pem: ca_pem.into(),
            name,
            serial,
            not_after,
        })
    }

    /// This node's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The serial of this node's certificate (lowercase hex, as [`pollen_trust::pki::serial_hex`]).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The end of this certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The fleet CA, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate chain, DER.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// A quinn server config for this identity alone (a fresh [`FleetTls`] without revocations).
    pub fn quic_server(&self, limits: &TransportLimits) -> Result<quinn::ServerConfig, TlsError> {
        FleetTls::new(self.clone()).quic_server(limits)
    }

    /// A quinn client config for this identity alone (a fresh [`FleetTls`] without revocations).
    pub fn quic_client(&self, limits: &TransportLimits) -> Result<quinn::ClientConfig, TlsError> {
        FleetTls::new(self.clone()).quic_client(limits)
    }
}

/// The live TLS state of a node: its current identity (rotatable) and the fleet's current revocation
/// set. Cheap to clone; every clone shares the same state. Endpoints built from it pick up rotations
/// and revocations without being rebuilt.
#[derive(Clone)]
pub struct FleetTls {
    state: Arc<State>,
}

impl std::fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTls")
            .field("name", &self.state.name)
            .field("serial", &self.current().serial)
            .field("revocation_list", &*self.revocation_updates().borrow())
            .finish()
    }
}

struct State {
    name: String,
    ca_pem: String,
    ca_der: Arc<Vec<CertificateDer<'static>>>,
    roots: Arc<RootCertStore>,
    identity: RwLock<TlsIdentity>,
    revocations: RwLock<Option<Arc<RevocationSet>>>,
    revocation_tx: watch::Sender<u64>,
    identity_tx: watch::Sender<u64>,
    refusals: Mutex<Option<Family<ReasonLabel, Counter>>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl State {
    fn is_revoked(&self, serial: &str) -> bool {
        self.revocations
            .read()
            .expect("revocations")
            .as_ref()
            .is_some_and(|r| r.is_revoked(serial))
    }

    fn refused(&self, reason: &'static str) {
        if let Some(f) = &*self.refusals.lock().expect("refusals") {
            f.get_or_create(&ReasonLabel { reason }).inc();
        }
    }

    /// Counts a verification failure by reason and passes it on.
    fn count(&self, r: Result<(), rustls::Error>) -> Result<(), rustls::Error> {
        if let Err(e) = &r {
            self.refused(refusal_reason(e));
        }
        r
    }

    /// The revocation check after the chain verified: the end-entity serial against the current set.
    fn check_serial(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let Some((_, serial)) = cert_identity(end_entity) else {
            return Err(rustls::Error::General("peer certificate names no node".into()));
        };
        if self.is_revoked(&serial) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }
}

/// The refusal reason (metric label) for a certificate verification error.
pub fn refusal_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Revoked => "revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not_yet_valid",
            CertificateError::UnknownIssuer => "unknown_ca",
            _ => "bad_certificate",
        },
        _ => "bad_certificate",
    }
}

impl FleetTls {
    /// A handle starting with `identity` and no revocation set.
    pub fn new(identity: TlsIdentity) -> FleetTls {
        FleetTls {
            state: Arc::new(State {
                name: identity.name.clone(),
                ca_pem: identity.ca_pem.to_string(),
                ca_der: identity.ca_der.clone(),
                roots: identity.roots.clone(),
                identity: RwLock::new(identity),
                revocations: RwLock::new(None),
                revocation_tx: watch::channel(0).0,
                identity_tx: watch::channel(0).0,
                refusals: Mutex::new(None),
            }),
        }
    }

    /// Replaces the node's certificate and key. The new identity must name the same node under the same
    /// CA. New handshakes present the new certificate; open connections continue with the old one.
    pub fn rotate(&self, identity: TlsIdentity) -> Result<(), TlsError> {
        if *identity.ca_der != *self.state.ca_der {
            return Err(TlsError::Rotate("the new certificate is under another CA".into()));
        }
        if identity.name != self.state.name {
            return Err(TlsError::Rotate(format!(
                "the new certificate names {:?}, this node is {:?}",
                identity.name, self.state.name
            )));
        }
        *self.state.identity.write().expect("identity") = identity;
        self.state.identity_tx.send_modify(|g| *g = g.wrapping_add(1));
        Ok(())
    }

    /// Installs a verified revocation set if it is newer (higher number) than the current one. Returns
    /// whether it was installed; watchers of [`FleetTls::revocation_updates`] are woken then. The caller
    /// verifies the list first ([`pollen_trust::pki::verify_revocation_list`] against [`FleetTls::ca_pem`]).
    pub fn install_revocations(&self, set: RevocationSet) -> bool {
        let number = set.number;
        {
            let mut cur = self.state.revocations.write().expect("revocations");
            if cur.as_ref().is_some_and(|c| c.number >= number) {
                return false;
            }
            *cur = Some(Arc::new(set));
        }
        self.state.revocation_tx.send_replace(number);
        true
    }

    /// The current revocation set, if any.
    pub fn revocations(&self) -> Option<RevocationSet> {
        self.state
            .revocations
            .read()
            .expect("revocations")
            .as_deref()
            .cloned()
    }

    /// The number of the revocation list in force (0 before any list).
    pub fn revocation_number(&self) -> u64 {
        self.state
            .revocations
            .read()
            .expect("revocations")
            .as_ref()
            .map_or(0, |r| r.number)
    }

    /// Whether `der` is exactly the revocation list in force (a cheap check before verifying a copy).
    pub fn holds_revocation_list(&self, der: &[u8]) -> bool {
        self.state
            .revocations
            .read()
            .expect("revocations")
            .as_ref()
            .is_some_and(|r| r.der == der)
    }

    /// Watches the current revocation list number (0 before any list).
    pub fn revocation_updates(&self) -> watch::Receiver<u64> {
        self.state.revocation_tx.subscribe()
    }

    /// Watches rotations (a counter bumped on each successful [`FleetTls::rotate`]).
    pub fn identity_updates(&self) -> watch::Receiver<u64> {
        self.state.identity_tx.subscribe()
    }

    /// The fleet CA, PEM (what revocation lists are verified against).
    pub fn ca_pem(&self) -> &str {
        &self.state.ca_pem
    }

    /// This node's name (fixed for the life of the handle).
    pub fn name(&self) -> String {
        self.state.name.clone()
    }

    /// The current identity.
    pub fn current(&self) -> TlsIdentity {
        self.state.identity.read().expect("identity").clone()
    }

    /// Whether `serial` (lowercase hex) is in the current revocation set.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.state.is_revoked(serial)
    }

    /// Whether this node's own current certificate is revoked.
    pub fn own_revoked(&self) -> bool {
        let serial = self.current().serial;
        self.is_revoked(&serial)
    }

    /// Counts handshake refusals (by reason) into `family` from now on.
    pub fn count_refusals_into(&self, family: Family<ReasonLabel, Counter>) {
        *self.state.refusals.lock().expect("refusals") = Some(family);
    }

    /// The rustls server config: TLS 1.3, client certificates required and checked against the CA and
    /// the revocation set, the server certificate chosen per handshake.
    pub fn rustls_server(&self) -> Result<rustls::ServerConfig, TlsError> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.state.roots.clone(), provider()).build()?;
        let verifier = FleetClientVerifier {
            inner,
            state: self.state.clone(),
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(CurrentCert(self.state.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(cfg)
    }

    /// The rustls client config: TLS 1.3, presents the current certificate, checks the server's chain
    /// against the CA and the revocation set.
    pub fn rustls_client(&self) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = FleetServerVerifier {
            state: self.state.clone(),
            algs: provider().signature_verification_algorithms,
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(CurrentCert(self.state.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(cfg)
    }

    /// quinn server config with Pollen's transport limits.
    pub fn quic_server(&self, limits: &TransportLimits) -> Result<quinn::ServerConfig, TlsError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(self.rustls_server()?))
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(Arc::new(limits.transport()));
        Ok(cfg)
    }

    /// quinn client config with Pollen's transport limits.
    pub fn quic_client(&self, limits: &TransportLimits) -> Result<quinn::ClientConfig, TlsError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(self.rustls_client()?))
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(limits.transport()));
        Ok(cfg)
    }
}

impl From<TlsIdentity> for FleetTls {
    fn from(identity: TlsIdentity) -> Self {
        FleetTls::new(identity)
    }
}

/// Hands rustls the current certificate and key at each handshake, on both sides.
#[derive(Debug)]
struct CurrentCert(Arc<State>);

impl CurrentCert {
    fn key(&self) -> Arc<CertifiedKey> {
        self.0.identity.read().expect("identity").key.clone()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// QUIC transport limits and timeouts.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Concurrent bidirectional streams a peer may open.
    pub max_streams: u32,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Per-connection receive window in bytes.
    pub receive_window: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_streams: 64,
            idle_timeout: Duration::from_secs(20),
            keep_alive: Duration::from_secs(5),
            // Memory bound: each connection buffers at most this much in each direction. 2 MiB covers the
            // bandwidth-delay product of 400 Mbit/s at 40 ms.
            receive_window: 2 * 1024 * 1024,
        }
    }
}

impl TransportLimits {
    fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(self.max_streams.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.max_idle_timeout(Some(self.idle_timeout.try_into().expect("idle timeout fits")));
        t.keep_alive_interval(Some(self.keep_alive));
        t.receive_window(self.receive_window.into());
        t.stream_receive_window((self.receive_window / 2).into());
        t.send_window(u64::from(self.receive_window));
        // Streams of equal priority are sent one after the other instead of packet by packet in turn:
        // a run of chunks arrives whole and in order, so the receiving task wakes for long stretches of
        // one stream rather than for a packet of each. The control stream and chunk requests have a
        // higher priority (set in `engine`), so they are never stuck behind chunk data.
        t.send_fairness(false);
        t
    }
}

/// The node name in a certificate: first DNS SAN, else the common name.
pub fn node_name(cert: &CertificateDer<'_>) -> Option<String> {
    cert_identity(cert).map(|(name, _)| name)
}

/// The node name and serial (lowercase hex, [`pollen_trust::pki::serial_hex`]) of a certificate.
pub fn cert_identity(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let serial = pollen_trust::pki::serial_hex(c.tbs_certificate.raw_serial());
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                return Some(((*d).to_owned(), serial));
            }
        }
    }
    c.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(|n| (n.to_owned(), serial))
}

fn peer_end_entity(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let id = conn.peer_identity()?;
    let certs = id.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

/// The authenticated node name of the peer on a QUIC connection.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    peer_end_entity(conn).as_ref().and_then(node_name)
}

/// The authenticated node name and certificate serial of the peer on a QUIC connection.
pub fn peer_identity(conn: &quinn::Connection) -> Option<(String, String)> {
    peer_end_entity(conn).as_ref().and_then(cert_identity)
}

/// What the engine keeps of a peer's verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The node name (first DNS SAN, else the common name).
    pub name: String,
    /// The serial (lowercase hex, [`pollen_trust::pki::serial_hex`]).
    pub serial: String,
    /// The end of the certificate's validity: the connection must not outlive it.
    pub not_after: SystemTime,
}

/// Name, serial and expiry of a certificate.
pub fn cert_details(cert: &CertificateDer<'_>) -> Option<PeerCert> {
    let (name, serial) = cert_identity(cert)?;
    let not_after = pollen_trust::pki::cert_facts_der(cert.as_ref()).ok()?.not_after;
    Some(PeerCert {
        name,
        serial,
        not_after,
    })
}

/// Name, serial and expiry of the authenticated peer certificate on a QUIC connection.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<PeerCert> {
    peer_end_entity(conn).as_ref().and_then(cert_details)
}

/// Whether a dial failed because this node's verifier refused the server's certificate as revoked (a
/// local TLS alert `certificate_revoked`, as opposed to the peer closing the connection).
pub fn refused_as_revoked(e: &quinn::ConnectionError) -> bool {
    let revoked = quinn::TransportErrorCode::crypto(rustls::AlertDescription::CertificateRevoked.into());
    matches!(e, quinn::ConnectionError::TransportError(t) if t.code == revoked)
}

/// Server verifier: the chain must lead to the fleet CA (webpki: signature, validity window, usage) and
/// the serial must not be revoked; the name is read from the certificate afterwards.
#[derive(Debug)]
struct FleetServerVerifier {
    state: Arc<State>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for FleetServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.state.count((|| {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.state.roots,
                intermediates,
                now,
                self.algs.all,
            )?;
            self.state.check_serial(end_entity)
        })())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client verifier: webpki's (chain to the fleet CA, validity window, usage), then the serial must not
/// be revoked.
#[derive(Debug)]
struct FleetClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    state: Arc<State>,
}

impl ClientCertVerifier for FleetClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.state.count(
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
                .and_then(|_| self.state.check_serial(end_entity)),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Test helpers: a fleet CA and node certificates made with rcgen.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    /// A revocation list (PEM) numbered `number` from the fleet CA `ca`, revoking `serials` now.
    pub fn crl_pem(ca: &pollen_trust::pki::FleetCa, number: u64, serials: &[&str]) -> String {
        let revoked: Vec<pollen_trust::pki::Revoked> = serials
            .iter()
            .map(|s| pollen_trust::pki::Revoked {
                serial: (*s).to_owned(),
                revoked_at: std::time::SystemTime::now(),
            })
            .collect();
        ca.revocation_list(number, &revoked, std::time::Duration::from_secs(7 * 86400))
            .expect("sign the revocation list")
    }

    /// [`crl_pem`], verified against `ca` as a node would: what `FleetTls::install_revocations` takes.
    pub fn revocation_set(
        ca: &pollen_trust::pki::FleetCa,
        number: u64,
        serials: &[&str],
    ) -> pollen_trust::pki::RevocationSet {
        pollen_trust::pki::verify_revocation_list(crl_pem(ca, number, serials).as_bytes(), ca.cert_pem())
            .expect("a list the CA signed verifies")
    }

    /// A certificate authority for tests.
    pub struct TestCa {
        /// CA certificate PEM.
        pub cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// A node's PEM certificate and key.
    pub struct TestCert {
        /// Certificate PEM.
        pub cert_pem: String,
        /// Private key PEM.
        pub key_pem: String,
    }

    impl TestCa {
        /// A fresh CA.
        pub fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = p.self_signed(&key).expect("self-signed");
            TestCa {
                cert_pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        /// A node certificate naming `node` (DNS SAN), for both client and server use.
        pub fn issue(&self, node: &str) -> TestCert {
            self.issue_with(node, |_| {})
        }

        /// Like [`TestCa::issue`], valid only from `not_before` to `not_after` (short-lived certificates
        /// for expiry tests; the fleet CA refuses lifetimes that short).
        pub fn issue_valid(
            &self,
            node: &str,
            not_before: std::time::SystemTime,
            not_after: std::time::SystemTime,
        ) -> TestCert {
            self.issue_with(node, |p| {
                p.not_before = not_before.into();
                p.not_after = not_after.into();
            })
        }

        fn issue_with(&self, node: &str, adjust: impl FnOnce(&mut CertificateParams)) -> TestCert {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(vec![node.to_owned()]).expect("params");
            adjust(&mut p);
            p.distinguished_name.push(DnType::CommonName, node);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &self.issuer).expect("sign");
            TestCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }
    }

    impl TestCert {
        /// The identity of this certificate under `ca`.
        pub fn identity(&self, ca: &TestCa) -> super::TlsIdentity {
            super::TlsIdentity::from_pem(
                self.cert_pem.as_bytes(),
                self.key_pem.as_bytes(),
                ca.cert_pem.as_bytes(),
            )
            .expect("identity")
        }

        /// Writes `cert.pem` and `key.pem` under `dir`; returns their paths.
        pub fn write(&self, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            std::fs::write(&c, &self.cert_pem).expect("write cert");
            std::fs::write(&k, &self.key_pem).expect("write key");
            (c, k)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use pollen_trust::pki::FleetCa;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn identity(ca: &FleetCa, name: &str) -> TlsIdentity {
        let kp = ca.issue(name, SystemTime::now(), DAY).unwrap();
        TlsIdentity::from_pem(
            kp.cert.cert_pem.as_bytes(),
            kp.key_pem.as_bytes(),
            ca.cert_pem().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn identity_carries_the_serial_and_expiry_of_its_certificate() {
        let ca = FleetCa::generate("fleet", DAY).unwrap();
        let kp = ca.issue("node-a", SystemTime::now(), DAY).unwrap();
        let id = TlsIdentity::from_pem(
            kp.cert.cert_pem.as_bytes(),
            kp.key_pem.as_bytes(),
            ca.cert_pem().as_bytes(),
        )
        .unwrap();
        assert_eq!(id.name(), "node-a");
        assert_eq!(id.serial(), kp.cert.facts.serial);
        assert_eq!(id.not_after(), kp.cert.facts.not_after);
        assert_eq!(id.ca_pem(), ca.cert_pem());
        // A key that is not the certificate's is refused.
        let other = ca.issue("node-a", SystemTime::now(), DAY).unwrap();
        let mixed = TlsIdentity::from_pem(
            kp.cert.cert_pem.as_bytes(),
            other.key_pem.as_bytes(),
            ca.cert_pem().as_bytes(),
        );
        assert!(matches!(mixed, Err(TlsError::Config(_))), "{mixed:?}");
    }

    #[test]
    fn only_newer_lists_are_installed_and_announced() {
        let ca = FleetCa::generate("fleet", DAY).unwrap();
        let tls = FleetTls::new(identity(&ca, "node-a"));
        let mut updates = tls.revocation_updates();
        assert_eq!(*updates.borrow(), 0);
        assert!(tls.revocations().is_none());
        let two = testing::revocation_set(&ca, 2, &["abc1"]);
        assert!(!tls.holds_revocation_list(&two.der));
        assert!(tls.install_revocations(two.clone()));
        assert!(tls.holds_revocation_list(&two.der));
        assert!(updates.has_changed().unwrap());
        assert_eq!(*updates.borrow_and_update(), 2);
        assert!(tls.is_revoked("abc1"));
        assert!(!tls.is_revoked("abc2"));
        assert!(
            !tls.install_revocations(testing::revocation_set(&ca, 2, &["abc2"])),
            "same number"
        );
        assert!(
            !tls.install_revocations(testing::revocation_set(&ca, 1, &["abc2"])),
            "older"
        );
        assert!(!updates.has_changed().unwrap());
        assert!(!tls.is_revoked("abc2"));
        assert!(tls.install_revocations(testing::revocation_set(&ca, 3, &[])));
        assert!(!tls.is_revoked("abc1"), "a newer list replaces the old one");
        assert!(!tls.own_revoked());
        let own = tls.current().serial().to_owned();
        assert!(tls.install_revocations(testing::revocation_set(&ca, 4, &[&own])));
        assert!(tls.own_revoked());
    }

    #[test]
    fn rotation_keeps_name_and_ca_and_is_announced() {
        let ca = FleetCa::generate("fleet", DAY).unwrap();
        let tls = FleetTls::new(identity(&ca, "node-a"));
        let copy = tls.clone();
        let rotations = tls.identity_updates();
        let next = identity(&ca, "node-a");
        tls.rotate(next.clone()).unwrap();
        assert!(rotations.has_changed().unwrap());
        assert_eq!(copy.current().serial(), next.serial(), "clones share the state");
        assert!(matches!(
            tls.rotate(identity(&ca, "node-b")),
            Err(TlsError::Rotate(_))
        ));
        let other = FleetCa::generate("other", DAY).unwrap();
        assert!(matches!(
            tls.rotate(identity(&other, "node-a")),
            Err(TlsError::Rotate(_))
        ));
        assert_eq!(tls.current().serial(), next.serial());
    }

    #[test]
    fn refusal_reasons_name_the_certificate_error() {
        let cert = |e| rustls::Error::InvalidCertificate(e);
        assert_eq!(refusal_reason(&cert(CertificateError::Revoked)), "revoked");
        assert_eq!(refusal_reason(&cert(CertificateError::Expired)), "expired");
        assert_eq!(
            refusal_reason(&cert(CertificateError::NotValidYet)),
            "not_yet_valid"
        );
        assert_eq!(
            refusal_reason(&cert(CertificateError::UnknownIssuer)),
            "unknown_ca"
        );
        assert_eq!(
            refusal_reason(&cert(CertificateError::BadEncoding)),
            "bad_certificate"
        );
        assert_eq!(
            refusal_reason(&rustls::Error::General("x".into())),
            "bad_certificate"
        );
    }
}
