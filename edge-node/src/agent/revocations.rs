//! The fleet's revocation list from the API server: watch RevocationList `fleet` and install each
//! newer CA-signed list into the live TLS handle.
//!
//! The CRL inside the object is what counts: it is verified against the mounted fleet CA, and only a
//! list with a higher CRL number than the one installed replaces it. A list with a bad signature, or
//! an older one (a stale cache, a rolled-back object), is logged and ignored; the installed list
//! stays. The engine passes installed lists on to peers, so nodes that cannot reach the API server
//! learn them too, and a node where the RevocationList kind is not served relies on that alone.
//!
//! The agent keeps the newest installed list in `<data-dir>/revocations.crl` (whatever its source:
//! the API server or a peer) and loads it on start, so a restarted node refuses revoked peers before it
//! hears from anyone.
//!
//! Non-goals: writing the list (the operator does), and acting on a revocation of this node's own
//! certificate (the identity loop re-issues).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use pollen_crds::{REVOCATION_LIST_NAME, RevocationList};
use pollen_trust::pki::PkiError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::keyfile;
use crate::tls::FleetTls;

/// The file under the data directory holding the newest installed revocation list (DER).
pub const CRL_FILE: &str = "revocations.crl";

/// Why a revocation list from the API server was not installed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The CRL does not parse or is not signed by the fleet CA.
    #[error("revocation list refused: {0}")]
    Verify(#[source] PkiError),
    /// The CRL is not newer than the installed one.
    #[error("revocation list number {number} is not newer than the installed {installed}")]
    NotNewer {
        /// The list's CRL number.
        number: u64,
        /// The installed list's number.
        installed: u64,
    },
}

/// Verifies the CRL of `rl` against the fleet CA of `tls` and installs it when newer. Returns its number.
pub fn feed(tls: &FleetTls, rl: &RevocationList) -> Result<u64, FeedError> {
    let set = pollen_trust::pki::verify_revocation_list(rl.spec.crl.as_bytes(), tls.ca_pem())
        .map_err(FeedError::Verify)?;
    let number = set.number;
    if i64::try_from(number).ok() != Some(rl.spec.number) {
        warn!(
            crl = number,
            spec = rl.spec.number,
            "RevocationList spec.number differs from its CRL; the CRL counts"
        );
    }
    if tls.install_revocations(set) {
        Ok(number)
    } else {
        Err(FeedError::NotNewer {
            number,
            installed: tls.revocations().map(|s| s.number).unwrap_or(0),
        })
    }
}

/// Installs the list persisted at `path`, if there is one that verifies against the fleet CA.
/// Returns its number when installed.
pub fn load_persisted(path: &Path, tls: &FleetTls) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    match pollen_trust::pki::verify_revocation_list(&bytes, tls.ca_pem()) {
        Ok(set) => {
            let number = set.number;
            tls.install_revocations(set).then(|| {
                info!(number, path = %path.display(), "persisted revocation list installed");
                number
            })
        }
        Err(e) => {
            warn!(error = %e, path = %path.display(), "persisted revocation list ignored");
            None
        }
    }
}

/// Writes every newly installed list in `tls` to `path` (atomically), until `shutdown`.
pub async fn persist(tls: FleetTls, path: PathBuf, shutdown: CancellationToken) {
    let mut updates = tls.revocation_updates();
    let mut written = 0u64;
    loop {
        let current = tls.revocations();
        if let Some(set) = current.filter(|s| s.number > written) {
            // The write syncs to disk: off the runtime threads.
            let (p, number, der) = (path.clone(), set.number, set.der);
            match keyfile::off_runtime(&path, move || keyfile::write_public(&p, &der)).await {
                Ok(()) => written = number,
                Err(e) => warn!(error = %e, "cannot persist the revocation list"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = updates.changed() => if r.is_err() { return },
        }
    }
}

fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Watches RevocationList `fleet` until `shutdown`, installing each newer list into `tls`.
pub async fn watch(client: kube::Client, tls: FleetTls, shutdown: CancellationToken) {
    let api: Api<RevocationList> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={REVOCATION_LIST_NAME}"));
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut said_not_served = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => ev,
        };
        match ev {
            Some(Ok(watcher::Event::Apply(rl) | watcher::Event::InitApply(rl))) => match feed(&tls, &rl) {
                Ok(number) => info!(number, "revocation list installed from the API server"),
                Err(FeedError::NotNewer { number, installed }) if number == installed => {
                    debug!(number, "revocation list already installed");
                }
                Err(e) => warn!(error = %e, "revocation list from the API server ignored"),
            },
            Some(Ok(_)) => {}
            Some(Err(e)) if not_served(&e) => {
                if !said_not_served {
                    info!(
                        "the RevocationList kind is not served here; revocation lists arrive from peers only"
                    );
                    said_not_served = true;
                }
            }
            Some(Err(e)) => warn!(error = %e, "revocation list watch failed; retrying"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsIdentity;
    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use pollen_crds::RevocationListSpec;
    use pollen_trust::pki::FleetCa;
    use std::time::{Duration, SystemTime};

    fn ca(name: &str) -> FleetCa {
        FleetCa::generate(name, Duration::from_secs(3600)).unwrap()
    }

    fn handle_for(ca: &FleetCa, node: &str) -> FleetTls {
        let kp = ca
            .issue(node, SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        FleetTls::new(
            TlsIdentity::from_pem(
                kp.cert.cert_pem.as_bytes(),
                kp.key_pem.as_bytes(),
                ca.cert_pem().as_bytes(),
            )
            .unwrap(),
        )
    }

    fn list(ca: &FleetCa, number: u64, serials: &[&str]) -> RevocationList {
        let crl = crate::tls::testing::crl_pem(ca, number, serials);
        RevocationList::new(
            REVOCATION_LIST_NAME,
            RevocationListSpec {
                number: number as i64,
                crl,
                entries: Vec::new(),
            },
        )
    }

    #[test]
    fn a_list_signed_by_the_fleet_ca_is_installed() {
        let ca = ca("fleet");
        let tls = handle_for(&ca, "gw-7");
        assert_eq!(feed(&tls, &list(&ca, 3, &["4a01"])).unwrap(), 3);
        assert!(tls.is_revoked("4a01"));
        assert_eq!(tls.revocations().unwrap().number, 3);
    }

    #[test]
    fn a_list_from_a_foreign_ca_is_refused_and_the_installed_one_stays() {
        let fleet = ca("fleet");
        let tls = handle_for(&fleet, "gw-7");
        feed(&tls, &list(&fleet, 2, &["4a01"])).unwrap();
        // Same subject name, other key: the signature check is what refuses it.
        let foreign = ca("fleet");
        let err = feed(&tls, &list(&foreign, 9, &["4b02"])).unwrap_err();
        assert!(
            matches!(err, FeedError::Verify(PkiError::BadCrlSignature)),
            "{err:?}"
        );
        assert_eq!(tls.revocations().unwrap().number, 2);
        assert!(!tls.is_revoked("4b02"));
        assert!(tls.is_revoked("4a01"));
    }

    #[test]
    fn a_lower_or_equal_number_is_not_installed() {
        let ca = ca("fleet");
        let tls = handle_for(&ca, "gw-7");
        feed(&tls, &list(&ca, 5, &["4a01"])).unwrap();
        let err = feed(&tls, &list(&ca, 4, &[])).unwrap_err();
        assert!(
            matches!(
                err,
                FeedError::NotNewer {
                    number: 4,
                    installed: 5
                }
            ),
            "{err:?}"
        );
        assert!(
            tls.is_revoked("4a01"),
            "the older, shorter list did not replace the newer one"
        );
        assert!(matches!(
            feed(&tls, &list(&ca, 5, &[])).unwrap_err(),
            FeedError::NotNewer {
                number: 5,
                installed: 5
            }
        ));
        assert!(tls.is_revoked("4a01"));
    }

    #[test]
    fn text_that_is_not_a_crl_is_refused() {
        let ca = ca("fleet");
        let tls = handle_for(&ca, "gw-7");
        let mut rl = list(&ca, 1, &[]);
        rl.spec.crl = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".into();
        assert!(matches!(feed(&tls, &rl), Err(FeedError::Verify(_))));
        assert!(tls.revocations().is_none());
    }

    #[tokio::test]
    async fn an_installed_list_is_persisted_and_loaded_on_the_next_start() {
        let ca = ca("fleet");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CRL_FILE);
        let tls = handle_for(&ca, "gw-7");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(persist(tls.clone(), path.clone(), shutdown.clone()));
        feed(&tls, &list(&ca, 4, &["4a01"])).unwrap();
        let want = tls.revocations().unwrap().der.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(&path).ok() != Some(want.clone()) {
            assert!(tokio::time::Instant::now() < deadline, "not persisted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        // A restarted node.
        let again = handle_for(&ca, "gw-7");
        assert_eq!(load_persisted(&path, &again), Some(4));
        assert!(again.is_revoked("4a01"));
        // A file from another CA is not installed.
        let other = handle_for(
            &FleetCa::generate("other", Duration::from_secs(3600)).unwrap(),
            "gw-7",
        );
        assert_eq!(load_persisted(&path, &other), None);
        assert!(other.revocations().is_none());
    }

    fn json(code: StatusCode, v: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap()
    }

    #[tokio::test]
    async fn the_watch_installs_the_list_from_the_api_server() {
        let ca = ca("fleet");
        let tls = handle_for(&ca, "gw-7");
        let rl = list(&ca, 7, &["4a01"]);
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("list");
            assert_eq!(req.uri().path(), "/apis/pollen.dev/v1alpha1/revocationlists");
            assert!(req.uri().query().unwrap().contains("metadata.name%3Dfleet"));
            send.send_response(json(
                StatusCode::OK,
                serde_json::json!({"apiVersion": "pollen.dev/v1alpha1", "kind": "RevocationListList",
                    "metadata": {"resourceVersion": "1"}, "items": [rl]}),
            ));
            // Hold the watch open.
            let held = handle.next_request().await;
            std::future::pending::<()>().await;
            drop(held);
        });
        let mut updates = tls.revocation_updates();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(client, tls.clone(), shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(5), updates.changed())
            .await
            .expect("installed in time")
            .unwrap();
        assert_eq!(*updates.borrow(), 7);
        assert!(tls.is_revoked("4a01"));
        shutdown.cancel();
        task.await.unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn a_kind_that_is_not_served_leaves_the_node_without_a_list_and_keeps_running() {
        let ca = ca("fleet");
        let tls = handle_for(&ca, "gw-7");
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(client, tls.clone(), shutdown.clone()));
        let (_req, send) = handle.next_request().await.expect("list");
        send.send_response(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
        ));
        // The watch backs off and asks again: it has not given up.
        tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("retried")
            .expect("a second request");
        assert!(!task.is_finished());
        assert!(tls.revocations().is_none());
        shutdown.cancel();
        task.await.unwrap();
    }
}
