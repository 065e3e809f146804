//! The node's peer identity over its life: where the certificate comes from, and keeping it fresh.
//!
//! Two sources. With certificate files (standalone, the lab, devices provisioned by hand) the agent
//! loads `--cert` and `--key` once. With the CSR API the agent is its own provisioner: it generates a
//! fresh P-256 key for every issuance (written 0600, atomically, never sent anywhere), asks the fleet
//! signer through a CertificateSigningRequest ([`super::csr`]), checks what comes back (names this
//! node, is issued by the fleet CA for client and server use, is valid now, matches the key), and only
//! then replaces the files and rotates the live TLS handle. New handshakes use the new certificate;
//! open connections keep theirs.
//!
//! Renewal runs at two thirds of the lifetime ([`super::renewal`]); a failed attempt is retried with
//! backoff while the old certificate still serves. When the node's own serial shows up in the fleet's
//! revocation list the agent re-issues at once (the signer refuses a quarantined node, so this only
//! helps a node revoked for another reason, such as a leaked key).
//!
//! The two files are switched key first, certificate second; a crash between the two leaves a pair
//! that does not match, which the next start detects and replaces by a fresh issuance.
//!
//! Non-goals: signing or approving (the operator does), reloading hand-provisioned files when they
//! change on disk, and trusting anything but the mounted fleet CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use pollen_crds::CertificateInfo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::csr::{self, CsrError};
use super::keyfile::{self, WriteError};
use super::renewal::{self, Backoff};
use crate::tls::{FleetTls, TlsError, TlsIdentity};

/// The longest the maintenance loop sleeps before it looks at the clock again (a suspended device or
/// a stepped clock must not oversleep a renewal).
const RECHECK: Duration = Duration::from_secs(300);
/// The shortest time between two successful issuances, whatever the schedule says.
const MIN_GAP: Duration = Duration::from_secs(10);

/// How the CSR source asks for certificates.
#[derive(Debug, Clone)]
pub struct CsrSettings {
    /// The signerName the fleet's operator signs for.
    pub signer_name: String,
    /// The lifetime asked for (`spec.expirationSeconds`).
    pub lifetime: Duration,
    /// How long to wait for the signer's verdict before giving up on one request.
    pub wait: Duration,
}

/// Where the node's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertificateSource {
    /// Certificate and key files provisioned on the device.
    Files,
    /// The Kubernetes CSR API, renewed by the agent.
    Csr(CsrSettings),
}

/// The node's identity files.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, mode 0600 when the agent writes it).
    pub key: PathBuf,
    /// Fleet CA certificate (PEM, mounted; never written).
    pub ca: PathBuf,
}

/// Errors of the identity layer.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key or signing request could not be generated.
    #[error("signing request: {0}")]
    Request(#[source] pollen_trust::pki::PkiError),
    /// The key or certificate file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The CSR API refused, failed or timed out.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The certificate is not one this node may use.
    #[error("certificate unusable: {0}")]
    Unusable(String),
    /// The certificate and key do not form a TLS identity, or the live handle refused it.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The fleet CA (PEM) from its mounted file.
pub fn read_ca(files: &IdentityFiles) -> Result<String, IdentityError> {
    String::from_utf8(read(&files.ca)?)
        .map_err(|_| IdentityError::Unusable(format!("{} is not PEM text", files.ca.display())))
}

/// What the agent reports in `EdgeNode.status.certificate`.
pub fn certificate_info(id: &TlsIdentity) -> CertificateInfo {
    CertificateInfo {
        serial: id.serial().to_string(),
        not_after: Time(jiff::Timestamp::try_from(id.not_after()).unwrap_or(jiff::Timestamp::MAX)),
        pem: id.certs().first().map(|c| pollen_trust::pki::cert_pem_of(c)),
    }
}

/// Checks that `cert_pem` is a certificate this node may present at `now`: its end-entity certificate
/// names `node`, chains to the fleet CA in `ca_pem` and is valid for client authentication now (the
/// same checks a peer makes), and is valid for server authentication too.
pub fn check_certificate(
    cert_pem: &str,
    node: &str,
    ca_pem: &str,
    now: SystemTime,
) -> Result<(), IdentityError> {
    let unusable = |m: String| IdentityError::Unusable(m);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(format!("not a PEM certificate chain: {e}")))?;
    let end = certs
        .first()
        .ok_or_else(|| unusable("no certificate in the chain".into()))?;
    let facts = pollen_trust::pki::cert_facts_der(end).map_err(|e| unusable(e.to_string()))?;
    if facts.name != node {
        return Err(unusable(format!(
            "it names {:?}, this node is {node:?}",
            facts.name
        )));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| unusable(format!("fleet CA: {e}")))?;
        roots.add(c).map_err(|e| unusable(format!("fleet CA: {e}")))?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .map_err(|e| unusable(format!("fleet CA: {e}")))?;
    let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    verifier
        .verify_client_cert(end, &certs[1..], at)
        .map_err(|e| unusable(format!("a peer would refuse it: {e}")))?;
    let (_, x) = x509_parser::parse_x509_certificate(end).map_err(|e| unusable(e.to_string()))?;
    let server_auth = x
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.server_auth);
    if !server_auth {
        return Err(unusable("it lacks the serverAuth usage".into()));
    }
    Ok(())
}

/// Loads the identity from its files and checks that it names `node`.
pub fn load(files: &IdentityFiles, node: &str) -> Result<TlsIdentity, IdentityError> {
    let id = TlsIdentity::from_pem(&read(&files.cert)?, &read(&files.key)?, &read(&files.ca)?)?;
    if id.name() != node {
        return Err(IdentityError::Unusable(format!(
            "{} names {:?}, this node is {node:?}",
            files.cert.display(),
            id.name()
        )));
    }
    Ok(id)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Issues a new identity through the CSR API: fresh key (written 0600 next to the key file), CSR, wait,
/// check, then switch the files. On any failure the current files stay as they were.
pub async fn issue(
    api: &Api<CertificateSigningRequest>,
    node: &str,
    files: &IdentityFiles,
    settings: &CsrSettings,
) -> Result<TlsIdentity, IdentityError> {
    let ca_pem = read_ca(files)?;
    let kr = pollen_trust::pki::new_request(node).map_err(IdentityError::Request)?;
    let key_next = sibling(&files.key, ".next");
    let cert_next = sibling(&files.cert, ".next");
    // File writes sync to disk: they run off the runtime threads.
    let (path, key_pem) = (key_next.clone(), kr.key_pem.clone());
    keyfile::off_runtime(&key_next, move || {
        keyfile::write_private(&path, key_pem.as_bytes())
    })
    .await?;
    let result = async {
        let csr = csr::build(node, &kr.request_pem, &settings.signer_name, settings.lifetime);
        let cert_pem = csr::request_certificate(api, &csr, settings.wait).await?;
        check_certificate(&cert_pem, node, &ca_pem, SystemTime::now())?;
        let id = TlsIdentity::from_pem(cert_pem.as_bytes(), kr.key_pem.as_bytes(), ca_pem.as_bytes())?;
        let (key_next, cert_next) = (key_next.clone(), cert_next.clone());
        let (key, cert) = (files.key.clone(), files.cert.clone());
        keyfile::off_runtime(&files.cert, move || {
            keyfile::write_public(&cert_next, cert_pem.as_bytes())?;
            keyfile::commit(&key_next, &key)?;
            keyfile::commit(&cert_next, &cert)
        })
        .await?;
        Ok(id)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&key_next);
        let _ = std::fs::remove_file(&cert_next);
    }
    result
}

/// Something that issues a new identity: the CSR API in the agent.
pub trait Issuer: Send + Sync + 'static {
    /// Issue one new identity.
    fn issue(&self) -> BoxFuture<'_, Result<TlsIdentity, IdentityError>>;
}

/// The [`Issuer`] over the Kubernetes CSR API.
#[derive(Clone)]
pub struct CsrIssuer {
    /// The CSR API.
    pub api: Api<CertificateSigningRequest>,
    /// This node's name.
    pub node: String,
    /// Where the key and certificate are written, and the CA read.
    pub files: IdentityFiles,
    /// Signer, lifetime, wait.
    pub settings: CsrSettings,
}

impl Issuer for CsrIssuer {
    fn issue(&self) -> BoxFuture<'_, Result<TlsIdentity, IdentityError>> {
        Box::pin(issue(&self.api, &self.node, &self.files, &self.settings))
    }
}

/// The identity to start with in CSR mode: the files when they hold a usable identity for `node` that
/// is not yet due for renewal, else a new one from `issuer`, retried with backoff. `None` only when
/// `shutdown` fires first.
pub async fn bootstrap(
    issuer: &dyn Issuer,
    files: &IdentityFiles,
    node: &str,
    shutdown: &CancellationToken,
) -> Option<TlsIdentity> {
    match load(files, node).and_then(|id| {
        let pem = std::fs::read_to_string(&files.cert).unwrap_or_default();
        check_certificate(&pem, node, id.ca_pem(), SystemTime::now()).map(|()| id)
    }) {
        Ok(id) => {
            info!(serial = %id.serial(), "using the node certificate on disk");
            return Some(id);
        }
        Err(IdentityError::Read { .. }) => info!("no node certificate yet; requesting one"),
        Err(e) => info!(error = %e, "the node certificate on disk is unusable; requesting a new one"),
    }
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            r = issuer.issue() => r,
            _ = shutdown.cancelled() => return None,
        };
        match attempt {
            Ok(id) => {
                info!(serial = %id.serial(), "node certificate issued");
                return Some(id);
            }
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "cannot get a node certificate");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

fn not_before(id: &TlsIdentity) -> SystemTime {
    id.certs()
        .first()
        .and_then(|c| pollen_trust::pki::cert_facts_der(c).ok())
        .map(|f| f.not_before)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Keeps the identity in `tls` fresh until `shutdown`: renews at two thirds of its lifetime, at once
/// when its serial is revoked, retries failures with backoff, and publishes each new certificate's
/// facts on `report`.
pub async fn maintain(
    tls: FleetTls,
    issuer: Arc<dyn Issuer>,
    report: watch::Sender<Option<CertificateInfo>>,
    shutdown: CancellationToken,
) {
    let mut revocations = tls.revocation_updates();
    revocations.mark_unchanged();
    let mut last_issued: Option<tokio::time::Instant> = None;
    loop {
        let current = tls.current();
        let revoked = tls.own_revoked();
        let mut delay = renewal::delay_until_renewal(
            SystemTime::now(),
            not_before(&current),
            current.not_after(),
            revoked,
        );
        if let Some(t) = last_issued {
            delay = delay.max(MIN_GAP.saturating_sub(t.elapsed()));
        }
        if !delay.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay.min(RECHECK)) => continue,
                Ok(()) = revocations.changed() => continue,
            }
        }
        if revoked {
            warn!(serial = %current.serial(), "this node's certificate is revoked; requesting a new one now");
        } else {
            info!(serial = %current.serial(), "renewing the node certificate");
        }
        let mut backoff = Backoff::default();
        loop {
            let attempt = tokio::select! {
                r = issuer.issue() => r,
                _ = shutdown.cancelled() => return,
            };
            let outcome = attempt.and_then(|id| {
                let info = certificate_info(&id);
                tls.rotate(id)?;
                Ok(info)
            });
            match outcome {
                Ok(info) => {
                    info!(serial = %info.serial, not_after = %info.not_after.0, "node certificate renewed");
                    report.send_replace(Some(info));
                    last_issued = Some(tokio::time::Instant::now());
                    break;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    let still_valid = SystemTime::now() < current.not_after();
                    warn!(error = %e, retry_in = ?wait, still_valid, "certificate renewal failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };
    use kube::client::Body;
    use pollen_trust::pki::{FleetCa, NodeRequest};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_test::mock::Handle;

    const HOUR: Duration = Duration::from_secs(3600);

    fn fleet_ca() -> FleetCa {
        FleetCa::generate("test fleet", Duration::from_secs(30 * 86400)).unwrap()
    }

    fn copy(ca: &FleetCa) -> FleetCa {
        FleetCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap()
    }

    fn files_in(dir: &Path, ca: &FleetCa) -> IdentityFiles {
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        IdentityFiles {
            cert: dir.join("identity").join("tls.crt"),
            key: dir.join("identity").join("tls.key"),
            ca: ca_path,
        }
    }

    fn settings() -> CsrSettings {
        CsrSettings {
            signer_name: pollen_crds::SIGNER_NAME.into(),
            lifetime: HOUR,
            wait: Duration::from_secs(5),
        }
    }

    fn ok(v: &impl k8s_openapi::serde::Serialize) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    /// What the mocked signer does with the CSR it receives.
    enum Verdict {
        /// Sign it for this node name.
        SignFor(&'static str),
        /// Deny it with this reason.
        Deny(&'static str),
    }

    /// Serves create + the watch's initial list, answering with `verdict`. Returns the created object.
    async fn signer(
        mut handle: Handle<Request<Body>, Response<Body>>,
        ca: FleetCa,
        verdict: Verdict,
    ) -> CertificateSigningRequest {
        let (req, send) = handle.next_request().await.expect("create");
        assert_eq!(req.method(), http::Method::POST);
        let bytes = req.into_body().collect_bytes().await.unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "the key never leaves the node"
        );
        let created: CertificateSigningRequest = serde_json::from_slice(&bytes).unwrap();
        send.send_response(ok(&created));
        let mut answered = created.clone();
        answered.status = Some(match verdict {
            Verdict::SignFor(node) => {
                let req =
                    NodeRequest::from_pem(std::str::from_utf8(&created.spec.request.0).unwrap()).unwrap();
                let lifetime = Duration::from_secs(created.spec.expiration_seconds.unwrap() as u64);
                let cert = ca.sign_request(&req, node, lifetime).unwrap();
                CertificateSigningRequestStatus {
                    certificate: Some(ByteString(cert.cert_pem.into_bytes())),
                    conditions: None,
                }
            }
            Verdict::Deny(reason) => CertificateSigningRequestStatus {
                certificate: None,
                conditions: Some(vec![CertificateSigningRequestCondition {
                    type_: "Denied".into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some("denied by the test signer".into()),
                    ..Default::default()
                }]),
            },
        });
        let (_req, send) = handle.next_request().await.expect("list");
        send.send_response(ok(&serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequestList",
            "metadata": {"resourceVersion": "1"}, "items": [answered],
        })));
        created
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".next") || n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_signed_csr_becomes_the_identity_and_the_files() {
        let ca = fleet_ca();
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), &ca);
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::all(kube::Client::new(svc, "default"));
        let server = tokio::spawn(signer(handle, copy(&ca), Verdict::SignFor("gw-7")));
        let id = issue(&api, "gw-7", &files, &settings()).await.unwrap();
        let created = server.await.unwrap();
        assert_eq!(created.spec.signer_name, "pollen.dev/edge-peer");
        assert_eq!(created.spec.expiration_seconds, Some(3600));
        assert_eq!(id.name(), "gw-7");
        // The files hold exactly this identity; the key is private; nothing is left over.
        let cert_pem = std::fs::read_to_string(&files.cert).unwrap();
        assert_eq!(
            pollen_trust::pki::cert_facts(&cert_pem).unwrap().serial,
            id.serial()
        );
        assert_eq!(mode(&files.key), 0o600);
        let reloaded = load(&files, "gw-7").unwrap();
        assert_eq!(reloaded.serial(), id.serial());
        assert!(leftovers(files.key.parent().unwrap()).is_empty());
        // The certificate carries the CSR's public key and loads with the key on disk (the pair is
        // checked for a match), so the key on disk is the one the CSR was made with.
        assert!(!created.spec.request.0.is_empty());
        let info = certificate_info(&id);
        assert_eq!(info.serial, id.serial());
    }

    #[tokio::test]
    async fn a_denied_request_is_a_typed_error_and_the_old_files_stay() {
        let ca = fleet_ca();
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), &ca);
        let old = ca.issue("gw-7", SystemTime::now(), HOUR).unwrap();
        keyfile::write_public(&files.cert, old.cert.cert_pem.as_bytes()).unwrap();
        keyfile::write_private(&files.key, old.key_pem.as_bytes()).unwrap();
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::all(kube::Client::new(svc, "default"));
        let server = tokio::spawn(signer(handle, copy(&ca), Verdict::Deny("NodeQuarantined")));
        let err = issue(&api, "gw-7", &files, &settings()).await.unwrap_err();
        server.await.unwrap();
        match err {
            IdentityError::Csr(CsrError::Denied { reason, .. }) => assert_eq!(reason, "NodeQuarantined"),
            other => panic!("expected a denial, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&files.key).unwrap(), old.key_pem);
        assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), old.cert.cert_pem);
        assert!(leftovers(files.key.parent().unwrap()).is_empty());
    }

    #[tokio::test]
    async fn a_certificate_for_another_node_is_refused() {
        let ca = fleet_ca();
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), &ca);
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::all(kube::Client::new(svc, "default"));
        let server = tokio::spawn(signer(handle, copy(&ca), Verdict::SignFor("gw-8")));
        let err = issue(&api, "gw-7", &files, &settings()).await.unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(&err, IdentityError::Unusable(m) if m.contains("gw-8")),
            "{err:?}"
        );
        assert!(!files.cert.exists() && !files.key.exists());
        assert!(leftovers(files.key.parent().unwrap()).is_empty());
    }

    #[test]
    fn certificates_are_checked_like_a_peer_would() {
        let ca = fleet_ca();
        let now = SystemTime::now();
        let good = ca.issue("gw-7", now, HOUR).unwrap().cert.cert_pem;
        check_certificate(&good, "gw-7", ca.cert_pem(), now).unwrap();
        assert!(check_certificate(&good, "gw-8", ca.cert_pem(), now).is_err());
        // Expired, and from another CA.
        assert!(check_certificate(&good, "gw-7", ca.cert_pem(), now + 2 * HOUR).is_err());
        let foreign = fleet_ca().issue("gw-7", now, HOUR).unwrap().cert.cert_pem;
        assert!(check_certificate(&foreign, "gw-7", ca.cert_pem(), now).is_err());
    }

    /// Issues straight from a CA (stands in for the CSR API in the lifecycle tests).
    struct CaIssuer {
        ca: FleetCa,
        ca_pem: String,
        fail_first: AtomicUsize,
        calls: AtomicUsize,
    }

    impl CaIssuer {
        fn new(ca: &FleetCa, fail_first: usize) -> Arc<Self> {
            Arc::new(CaIssuer {
                ca: copy(ca),
                ca_pem: ca.cert_pem().to_string(),
                fail_first: AtomicUsize::new(fail_first),
                calls: AtomicUsize::new(0),
            })
        }

        fn identity(&self, not_before: SystemTime, lifetime: Duration) -> TlsIdentity {
            let kp = self.ca.issue("gw-7", not_before, lifetime).unwrap();
            TlsIdentity::from_pem(
                kp.cert.cert_pem.as_bytes(),
                kp.key_pem.as_bytes(),
                self.ca_pem.as_bytes(),
            )
            .unwrap()
        }
    }

    impl Issuer for CaIssuer {
        fn issue(&self) -> BoxFuture<'_, Result<TlsIdentity, IdentityError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(IdentityError::Unusable("signer unavailable".into()));
                }
                Ok(self.identity(SystemTime::now(), HOUR))
            })
        }
    }

    async fn next_report(rx: &mut watch::Receiver<Option<CertificateInfo>>) -> CertificateInfo {
        tokio::time::timeout(Duration::from_secs(600), rx.changed())
            .await
            .expect("a new certificate in time")
            .unwrap();
        rx.borrow_and_update().clone().unwrap()
    }

    #[tokio::test]
    async fn a_revoked_own_serial_is_replaced_at_once() {
        let ca = fleet_ca();
        let issuer = CaIssuer::new(&ca, 0);
        let tls = FleetTls::new(issuer.identity(SystemTime::now(), HOUR));
        let first = tls.current().serial().to_string();
        let (tx, mut rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(maintain(tls.clone(), issuer.clone(), tx, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            issuer.calls.load(Ordering::SeqCst),
            0,
            "a fresh certificate is not renewed"
        );
        let set = crate::tls::testing::revocation_set(&ca, 1, &[&first]);
        assert!(tls.install_revocations(set));
        let report = tokio::time::timeout(Duration::from_secs(5), next_report(&mut rx))
            .await
            .expect("re-issued within seconds");
        assert_ne!(report.serial, first);
        assert_eq!(tls.current().serial(), report.serial);
        assert!(!tls.own_revoked());
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_certificate_is_renewed_and_failures_back_off() {
        let ca = fleet_ca();
        let issuer = CaIssuer::new(&ca, 2);
        // Fifty minutes into a one-hour certificate: past two thirds.
        let tls = FleetTls::new(issuer.identity(SystemTime::now() - Duration::from_secs(50 * 60), HOUR));
        let old = tls.current().serial().to_string();
        let (tx, mut rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(maintain(tls.clone(), issuer.clone(), tx, shutdown.clone()));
        let report = next_report(&mut rx).await;
        // Two failures: 5 s, then 10 s of backoff before the third attempt succeeded.
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 3);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(15) && waited < Duration::from_secs(16),
            "{waited:?}"
        );
        assert_ne!(report.serial, old);
        assert_eq!(tls.current().serial(), report.serial);
        // The new certificate is fresh: no further issuance for a while.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 3);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn bootstrap_keeps_trying_until_shutdown() {
        let ca = fleet_ca();
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), &ca);
        let issuer = CaIssuer::new(&ca, usize::MAX);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (issuer, files, shutdown) = (issuer.clone(), files.clone(), shutdown.clone());
            async move { bootstrap(issuer.as_ref(), &files, "gw-7", &shutdown).await }
        });
        // 5 + 10 + 20 + 40 + 80 + 160 s of backoff: seven attempts within ten minutes.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 7);
        shutdown.cancel();
        assert!(task.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bootstrap_reuses_a_usable_pair_and_replaces_a_mismatched_one() {
        let ca = fleet_ca();
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), &ca);
        let issuer = CaIssuer::new(&ca, 0);
        let shutdown = CancellationToken::new();
        // Nothing on disk: issued.
        let id = bootstrap(issuer.as_ref(), &files, "gw-7", &shutdown)
            .await
            .unwrap();
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
        assert_eq!(id.name(), "gw-7");
        // A good pair on disk: reused, no request.
        let kp = ca.issue("gw-7", SystemTime::now(), HOUR).unwrap();
        keyfile::write_public(&files.cert, kp.cert.cert_pem.as_bytes()).unwrap();
        keyfile::write_private(&files.key, kp.key_pem.as_bytes()).unwrap();
        let id = bootstrap(issuer.as_ref(), &files, "gw-7", &shutdown)
            .await
            .unwrap();
        assert_eq!(id.serial(), kp.cert.facts.serial);
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
        // A key that does not match the certificate (a crash between the two renames): issued anew.
        let other = ca.issue("gw-7", SystemTime::now(), HOUR).unwrap();
        keyfile::write_private(&files.key, other.key_pem.as_bytes()).unwrap();
        bootstrap(issuer.as_ref(), &files, "gw-7", &shutdown)
            .await
            .unwrap();
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 2);
    }
}
