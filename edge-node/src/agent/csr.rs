//! The node's side of the Kubernetes CSR API (`certificates.k8s.io/v1`): ask the fleet signer for a
//! certificate and wait for it.
//!
//! The agent creates one CertificateSigningRequest per issuance, named
//! `pollen-edge-<node>-<first 10 hex of blake3(request)>`, for the fleet's signerName, with the usages
//! a peer certificate needs (digital signature, server auth, client auth), the lifetime it asks for, and
//! the label `pollen.dev/node-name`. The request carries the public key only. It then watches that
//! object until `status.certificate` appears, or a `Denied` or `Failed` condition ends it, or the wait
//! times out.
//!
//! Non-goals: approving or signing (the operator does), and checking the returned certificate (the
//! caller does, against its own key and the fleet CA).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;

/// The usages a node certificate is requested with (both ends of a peer connection authenticate).
pub const USAGES: [&str; 3] = ["digital signature", "server auth", "client auth"];

/// Pause before re-establishing a broken watch.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The prefix of every CSR name the agent creates.
pub const NAME_PREFIX: &str = "pollen-edge-";

/// Errors of one certificate request.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The CertificateSigningRequest could not be created.
    #[error("cannot create CertificateSigningRequest {name}: {source}")]
    Create {
        /// The CSR name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The signer (or an administrator) denied the request.
    #[error("CertificateSigningRequest {name} denied: {reason}: {message}")]
    Denied {
        /// The CSR name.
        name: String,
        /// The condition's reason (CamelCase).
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The signer could not sign.
    #[error("CertificateSigningRequest {name} failed: {reason}: {message}")]
    Failed {
        /// The CSR name.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// No certificate and no verdict within the wait.
    #[error("no certificate for CertificateSigningRequest {name} within {after:?}")]
    Timeout {
        /// The CSR name.
        name: String,
        /// How long the agent waited.
        after: Duration,
    },
    /// The watch on the CSR failed.
    #[error("watch on CertificateSigningRequest {name} failed: {source}")]
    Watch {
        /// The CSR name.
        name: String,
        /// The watch error.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The CSR disappeared while the agent waited.
    #[error("CertificateSigningRequest {name} was deleted before it was signed")]
    Deleted {
        /// The CSR name.
        name: String,
    },
    /// `status.certificate` is not PEM text.
    #[error("CertificateSigningRequest {name} carries a certificate that is not PEM text")]
    NotPem {
        /// The CSR name.
        name: String,
    },
}

/// The name of the CSR for `request_pem` from `node`: prefix, node, and 10 hex digits of the request's
/// BLAKE3 hash, cut to the 253 characters Kubernetes allows.
pub fn csr_name(node: &str, request_pem: &str) -> String {
    let digest = blake3::hash(request_pem.as_bytes()).to_hex();
    let room = 253 - NAME_PREFIX.len() - 1 - 10;
    let node: String = node.chars().take(room).collect();
    let node = node.trim_end_matches(['-', '.']);
    format!("{NAME_PREFIX}{node}-{}", &digest.as_str()[..10])
}

/// The CertificateSigningRequest for `request_pem` (a PEM `CERTIFICATE REQUEST` naming `node`).
pub fn build(
    node: &str,
    request_pem: &str,
    signer_name: &str,
    lifetime: Duration,
) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(csr_name(node, request_pem)),
            labels: Some(BTreeMap::from([(
                pollen_crds::labels::NODE_NAME.to_string(),
                node.to_string(),
            )])),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            signer_name: signer_name.to_string(),
            request: ByteString(request_pem.as_bytes().to_vec()),
            usages: Some(USAGES.iter().map(|u| u.to_string()).collect()),
            expiration_seconds: Some(i32::try_from(lifetime.as_secs()).unwrap_or(i32::MAX)),
            ..Default::default()
        },
        status: None,
    }
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> Option<(String, String)> {
    let conds = csr.status.as_ref()?.conditions.as_ref()?;
    let c = conds.iter().find(|c| c.type_ == kind && c.status == "True")?;
    let reason = c.reason.as_deref().unwrap_or(kind).to_string();
    Some((reason, c.message.clone().unwrap_or_default()))
}

/// Where a CSR stands: `None` while pending, else the certificate PEM or the verdict as an error.
pub fn outcome(csr: &CertificateSigningRequest) -> Option<Result<String, CsrError>> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    if let Some((reason, message)) = condition(csr, "Denied") {
        return Some(Err(CsrError::Denied {
            name,
            reason,
            message,
        }));
    }
    if let Some((reason, message)) = condition(csr, "Failed") {
        return Some(Err(CsrError::Failed {
            name,
            reason,
            message,
        }));
    }
    let cert = csr.status.as_ref()?.certificate.as_ref()?;
    if cert.0.is_empty() {
        return None;
    }
    Some(String::from_utf8(cert.0.clone()).map_err(|_| CsrError::NotPem { name }))
}

/// Creates `csr` and waits up to `timeout` for its certificate (PEM).
pub async fn request_certificate(
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    timeout: Duration,
) -> Result<String, CsrError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), csr).await {
        Ok(_) => {}
        // The same request again (a retry after a lost response): wait for the existing object.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(source) => return Err(CsrError::Create { name, source }),
    }
    // A watch that breaks (an API server restart, a dropped connection) is re-established; the
    // timeout bounds the whole wait.
    let wait = async {
        loop {
            let cond = |o: Option<&CertificateSigningRequest>| o.is_some_and(|c| outcome(c).is_some());
            match await_condition(api.clone(), &name, cond).await {
                Ok(Some(c)) => break outcome(&c).unwrap_or(Err(CsrError::Deleted { name: name.clone() })),
                Ok(None) => break Err(CsrError::Deleted { name: name.clone() }),
                Err(source) => {
                    let e = CsrError::Watch {
                        name: name.clone(),
                        source,
                    };
                    tracing::warn!(error = %e, "re-watching");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(Err(CsrError::Timeout { name, after: timeout }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };
    use kube::client::Body;
    use pollen_trust::pki::{FleetCa, NodeRequest};
    use tower_test::mock::Handle;

    type Mock = Handle<Request<Body>, Response<Body>>;

    fn api() -> (Api<CertificateSigningRequest>, Mock) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Api::all(kube::Client::new(svc, "default")), handle)
    }

    fn ok(v: &impl k8s_openapi::serde::Serialize) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    fn list(items: Vec<&CertificateSigningRequest>) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequestList",
            "metadata": { "resourceVersion": "1" }, "items": items,
        })
    }

    fn with_status(
        mut c: CertificateSigningRequest,
        status: CertificateSigningRequestStatus,
    ) -> CertificateSigningRequest {
        c.status = Some(status);
        c
    }

    fn condition(kind: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
        CertificateSigningRequestCondition {
            type_: kind.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_csr_names_the_node_asks_for_peer_usages_and_carries_no_key() {
        let kr = pollen_trust::pki::new_request("gw-7").unwrap();
        let csr = build(
            "gw-7",
            &kr.request_pem,
            "pollen.dev/edge-peer",
            Duration::from_secs(86400),
        );
        let name = csr.metadata.name.clone().unwrap();
        let digest = blake3::hash(kr.request_pem.as_bytes()).to_hex();
        assert_eq!(name, format!("pollen-edge-gw-7-{}", &digest.as_str()[..10]));
        assert_eq!(
            csr.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("pollen.dev/node-name")
                .map(String::as_str),
            Some("gw-7")
        );
        assert_eq!(csr.spec.signer_name, "pollen.dev/edge-peer");
        assert_eq!(
            csr.spec.usages.as_deref().unwrap(),
            ["digital signature", "server auth", "client auth"]
        );
        assert_eq!(csr.spec.expiration_seconds, Some(86400));
        // The request is the PEM CSR, it verifies, and it names exactly this node.
        let pem = String::from_utf8(csr.spec.request.0.clone()).unwrap();
        assert_eq!(pem, kr.request_pem);
        let req = NodeRequest::from_pem(&pem).unwrap();
        req.names_only("gw-7").unwrap();
        assert!(req.names_only("gw-8").is_err());
        // The serialized object (what goes over the wire) holds no private key.
        let wire = serde_json::to_string(&csr).unwrap();
        assert!(!wire.contains("PRIVATE KEY"));
        let key_body: String = kr.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!wire.contains(&key_body));
        let back: CertificateSigningRequest = serde_json::from_str(&wire).unwrap();
        let sent = String::from_utf8(back.spec.request.0).unwrap();
        assert!(!sent.contains("PRIVATE KEY"));
        assert!(!sent.contains(&key_body));
    }

    #[test]
    fn a_long_node_name_still_gives_a_valid_object_name() {
        let node = "a".repeat(253);
        let n = csr_name(&node, "req");
        assert!(n.len() <= 253, "{}", n.len());
        assert!(n.starts_with("pollen-edge-aaa"));
        assert_ne!(
            csr_name("gw-7", "one"),
            csr_name("gw-7", "two"),
            "one name per request"
        );
    }

    #[test]
    fn outcome_reads_pending_issued_denied_and_failed() {
        let base = build("gw-7", "req", SIGNER, Duration::from_secs(600));
        assert!(outcome(&base).is_none(), "no status: pending");
        let approved_only = with_status(
            base.clone(),
            CertificateSigningRequestStatus {
                conditions: Some(vec![condition("Approved", "AutoApproved", "ok")]),
                certificate: Some(ByteString(Vec::new())),
            },
        );
        assert!(
            outcome(&approved_only).is_none(),
            "approved, not yet signed: pending"
        );
        let issued = with_status(
            base.clone(),
            CertificateSigningRequestStatus {
                conditions: None,
                certificate: Some(ByteString(b"-----BEGIN CERTIFICATE-----".to_vec())),
            },
        );
        assert_eq!(outcome(&issued).unwrap().unwrap(), "-----BEGIN CERTIFICATE-----");
        let failed = with_status(
            base.clone(),
            CertificateSigningRequestStatus {
                conditions: Some(vec![condition("Failed", "SignerError", "CA expired")]),
                certificate: None,
            },
        );
        assert!(
            matches!(outcome(&failed), Some(Err(CsrError::Failed { reason, .. })) if reason == "SignerError")
        );
        // A condition that is not True is no verdict.
        let mut not_true = condition("Denied", "WrongNode", "x");
        not_true.status = "False".into();
        let pending = with_status(
            base,
            CertificateSigningRequestStatus {
                conditions: Some(vec![not_true]),
                certificate: None,
            },
        );
        assert!(outcome(&pending).is_none());
    }

    const SIGNER: &str = "pollen.dev/edge-peer";

    #[tokio::test]
    async fn creates_the_csr_then_watches_until_the_certificate_arrives() {
        let ca = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        let kr = pollen_trust::pki::new_request("gw-7").unwrap();
        let csr = build("gw-7", &kr.request_pem, SIGNER, Duration::from_secs(3600));
        let name = csr.metadata.name.clone().unwrap();
        let (api, mut handle) = api();
        let req = NodeRequest::from_pem(&kr.request_pem).unwrap();
        let signed = ca.sign_request(&req, "gw-7", Duration::from_secs(3600)).unwrap();
        let cert_pem = signed.cert_pem.clone();
        let server = tokio::spawn(async move {
            // 1. Create.
            let (req, send) = handle.next_request().await.expect("create");
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(
                req.uri().path(),
                "/apis/certificates.k8s.io/v1/certificatesigningrequests"
            );
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let created: CertificateSigningRequest = serde_json::from_slice(&bytes).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"));
            assert_eq!(created.spec.signer_name, SIGNER);
            send.send_response(ok(&created));
            // 2. The watch's initial list, filtered to this object: still pending.
            let (req, send) = handle.next_request().await.expect("list");
            assert_eq!(req.method(), http::Method::GET);
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains(&format!(
                    "metadata.name%3D{}",
                    created.metadata.name.as_deref().unwrap()
                )),
                "{q}"
            );
            assert!(!q.contains("watch=true"));
            send.send_response(ok(&list(vec![&created])));
            // 3. The watch: the signer writes the certificate.
            let (req, send) = handle.next_request().await.expect("watch");
            assert!(req.uri().query().unwrap().contains("watch=true"));
            let mut created = created;
            // Watch events carry the object's resourceVersion (the watch resumes from it).
            created.metadata.resource_version = Some("2".into());
            let issued = with_status(
                created,
                CertificateSigningRequestStatus {
                    conditions: Some(vec![condition(
                        "Approved",
                        "PollenApproved",
                        "node and account match",
                    )]),
                    certificate: Some(ByteString(cert_pem.into_bytes())),
                },
            );
            let mut line =
                serde_json::to_vec(&serde_json::json!({"type": "MODIFIED", "object": issued})).unwrap();
            line.push(b'\n');
            send.send_response(Response::builder().body(Body::from(line)).unwrap());
        });
        let got = request_certificate(&api, &csr, Duration::from_secs(5))
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(got, signed.cert_pem);
        assert!(name.starts_with("pollen-edge-gw-7-"));
    }

    #[tokio::test]
    async fn a_denied_request_is_a_typed_error_with_the_reason() {
        let kr = pollen_trust::pki::new_request("gw-7").unwrap();
        let csr = build("gw-7", &kr.request_pem, SIGNER, Duration::from_secs(3600));
        let (api, mut handle) = api();
        let denied = with_status(
            csr.clone(),
            CertificateSigningRequestStatus {
                conditions: Some(vec![condition(
                    "Denied",
                    "WrongNode",
                    "the request names gw-7, the pod runs on gw-8",
                )]),
                certificate: None,
            },
        );
        let server = tokio::spawn(async move {
            let (_req, send) = handle.next_request().await.expect("create");
            send.send_response(ok(&csr_without_status(&denied)));
            let (_req, send) = handle.next_request().await.expect("list");
            send.send_response(ok(&list(vec![&denied])));
        });
        let err = request_certificate(&api, &csr, Duration::from_secs(5))
            .await
            .unwrap_err();
        server.await.unwrap();
        match err {
            CsrError::Denied {
                name,
                reason,
                message,
            } => {
                assert_eq!(name, csr.metadata.name.unwrap());
                assert_eq!(reason, "WrongNode");
                assert!(message.contains("gw-8"));
            }
            other => panic!("expected Denied, got {other:?}"),
        }
    }

    fn csr_without_status(c: &CertificateSigningRequest) -> CertificateSigningRequest {
        let mut c = c.clone();
        c.status = None;
        c
    }

    #[tokio::test(start_paused = true)]
    async fn no_verdict_within_the_wait_is_a_timeout() {
        let kr = pollen_trust::pki::new_request("gw-7").unwrap();
        let csr = build("gw-7", &kr.request_pem, SIGNER, Duration::from_secs(3600));
        let (api, mut handle) = api();
        let pending = csr.clone();
        let server = tokio::spawn(async move {
            let (_req, send) = handle.next_request().await.expect("create");
            send.send_response(ok(&pending));
            let (_req, send) = handle.next_request().await.expect("list");
            send.send_response(ok(&list(vec![&pending])));
            // The watch is accepted and never answered: the signer is silent.
            let held = handle.next_request().await;
            std::future::pending::<()>().await;
            drop(held);
        });
        let err = request_certificate(&api, &csr, Duration::from_secs(30))
            .await
            .unwrap_err();
        server.abort();
        assert!(
            matches!(err, CsrError::Timeout { after, .. } if after == Duration::from_secs(30)),
            "{err:?}"
        );
    }
}
