//! The approval rules for node certificate signing requests (pure: no I/O, no clock).
//!
//! A CertificateSigningRequest for Pollen's signerName is approved only when every rule holds:
//! 1. it comes from the edge-node ServiceAccount (`system:serviceaccount:<ns>:<name>`);
//! 2. the request parses and its self-signature verifies (the requester holds the key);
//! 3. it names exactly one node (the single DNS SAN, equal to the common name if there is one);
//! 4. that node is the requester's node: the bound token's `authentication.kubernetes.io/node-name`
//!    extra where present, else the requesting pod (from the `pod-name` and `pod-uid` extras, looked
//!    up in the ServiceAccount's namespace: same uid, scheduled on that node);
//! 5. `expirationSeconds`, if set, lies between [`MIN_NODE_LIFETIME`] and the configured maximum;
//! 6. the usages are a subset of {digital signature, key encipherment, server auth, client auth} and
//!    include both server auth and client auth;
//! 7. the node's EdgeNode is neither quarantined nor being deleted.
//!
//! Anything else is denied with a CamelCase reason and a message. A request for another signerName
//! is ignored (never touched). The I/O around it (watching, looking up the pod and the EdgeNode,
//! writing the approval, signing) is in [`crate::csr`].
//!
//! Non-goals: no Kubernetes client, no signing (see [`pollen_trust::pki::FleetCa::sign_request`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use pollen_trust::pki::{self, MIN_NODE_LIFETIME, NodeRequest, PkiError};

/// The bound-token extra naming the requester's node.
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The bound-token extra naming the requesting pod.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The bound-token extra carrying the requesting pod's uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The usages a node certificate may carry.
pub const ALLOWED_USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];
/// The usages a node certificate must carry (peers both dial and accept).
pub const REQUIRED_USAGES: [&str; 2] = ["server auth", "client auth"];

/// The reason written with an approval.
pub const APPROVED_REASON: &str = "NodeIdentityVerified";

/// What the signer enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerPolicy {
    /// The signerName this operator signs for.
    pub signer_name: String,
    /// The namespace of the edge-node ServiceAccount (the pods are looked up there).
    pub service_account_namespace: String,
    /// The name of the edge-node ServiceAccount.
    pub service_account_name: String,
    /// The longest `expirationSeconds` granted.
    pub max_lifetime: Duration,
    /// The lifetime given when the request sets none.
    pub default_lifetime: Duration,
}

impl SignerPolicy {
    /// The username the API server records for the edge-node ServiceAccount.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.service_account_namespace, self.service_account_name
        )
    }
}

/// The requesting pod, as the API server holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// Its uid.
    pub uid: String,
    /// The node it is scheduled on, if any.
    pub node_name: Option<String>,
}

/// Where the node's EdgeNode stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStanding {
    /// No EdgeNode yet (a new device): nothing against it.
    Absent,
    /// An EdgeNode in good standing.
    Active,
    /// Labelled `pollen.dev/quarantine=true`.
    Quarantined,
    /// Being deleted.
    Deleting,
}

/// Why a request is denied. [`DenyReason::as_str`] is the condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    /// Not from the edge-node ServiceAccount.
    WrongServiceAccount,
    /// The request does not parse, or names no node, several nodes, or asks to be a CA.
    MalformedRequest,
    /// The request's self-signature does not verify.
    BadSignature,
    /// The token says nothing about the requester's node or pod.
    NoNodeIdentity,
    /// The requesting pod does not exist, has another uid, or runs on no node.
    PodMismatch,
    /// The request names another node than the requester's.
    NodeMismatch,
    /// `expirationSeconds` is over the maximum.
    LifetimeTooLong,
    /// `expirationSeconds` is under [`MIN_NODE_LIFETIME`].
    LifetimeTooShort,
    /// Usages outside the allowed set, or server/client auth missing.
    BadUsages,
    /// The node is quarantined.
    NodeQuarantined,
    /// The node's EdgeNode is being deleted.
    NodeDeleted,
}

impl DenyReason {
    /// The CamelCase condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongServiceAccount => "WrongServiceAccount",
            Self::MalformedRequest => "MalformedRequest",
            Self::BadSignature => "BadSignature",
            Self::NoNodeIdentity => "NoNodeIdentity",
            Self::PodMismatch => "PodMismatch",
            Self::NodeMismatch => "NodeMismatch",
            Self::LifetimeTooLong => "LifetimeTooLong",
            Self::LifetimeTooShort => "LifetimeTooShort",
            Self::BadUsages => "BadUsages",
            Self::NodeQuarantined => "NodeQuarantined",
            Self::NodeDeleted => "NodeDeleted",
        }
    }
}

/// The verdict on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not ours: leave it alone.
    Ignore,
    /// Approve and sign for `node`, valid for `lifetime`.
    Approve {
        /// The node the certificate names.
        node: String,
        /// Its lifetime.
        lifetime: Duration,
    },
    /// Deny.
    Deny {
        /// The condition reason.
        reason: DenyReason,
        /// The condition message.
        message: String,
    },
}

fn deny(reason: DenyReason, message: impl Into<String>) -> Decision {
    Decision::Deny {
        reason,
        message: message.into(),
    }
}

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Neither approved nor denied: decide.
    Undecided,
    /// Approved, no certificate yet: check again, then sign.
    ApprovedUnsigned,
    /// Denied, failed, or already signed: nothing to do.
    Done,
}

/// The stage of a request, from its status.
pub fn stage(csr: &CertificateSigningRequest) -> Stage {
    let Some(st) = &csr.status else {
        return Stage::Undecided;
    };
    if st.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) {
        return Stage::Done;
    }
    let has = |t: &str| {
        st.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if has("Denied") || has("Failed") {
        Stage::Done
    } else if has("Approved") {
        Stage::ApprovedUnsigned
    } else {
        Stage::Undecided
    }
}

/// The request parsed and checked, with the one node it names.
fn parse_request(csr: &CertificateSigningRequest) -> Result<(NodeRequest, String), Decision> {
    let pem = std::str::from_utf8(&csr.spec.request.0)
        .map_err(|_| deny(DenyReason::MalformedRequest, "spec.request is not PEM text"))?;
    let req = NodeRequest::from_pem(pem).map_err(|e| match e {
        PkiError::BadRequestSignature => deny(
            DenyReason::BadSignature,
            "the request's self-signature does not verify",
        ),
        other => deny(DenyReason::MalformedRequest, format!("spec.request: {other}")),
    })?;
    let node = match (req.dns_names.as_slice(), &req.common_name) {
        ([one], _) => one.clone(),
        ([], Some(cn)) => cn.clone(),
        ([], None) => return Err(deny(DenyReason::MalformedRequest, "the request names no node")),
        (many, _) => {
            return Err(deny(
                DenyReason::MalformedRequest,
                format!(
                    "the request names {} DNS names; exactly one is allowed",
                    many.len()
                ),
            ));
        }
    };
    pki::check_node_name(&node)
        .and_then(|()| req.names_only(&node))
        .map_err(|e| deny(DenyReason::MalformedRequest, e.to_string()))?;
    Ok((req, node))
}

/// The node a request names, if it parses (the caller looks up the EdgeNode's standing with it).
pub fn requested_node(csr: &CertificateSigningRequest) -> Option<String> {
    parse_request(csr).ok().map(|(_, node)| node)
}

/// The parsed request, for signing after an `Approve` decision.
pub fn node_request(csr: &CertificateSigningRequest) -> Option<NodeRequest> {
    parse_request(csr).ok().map(|(req, _)| req)
}

fn single_extra<'a>(extra: Option<&'a BTreeMap<String, Vec<String>>>, key: &str) -> Option<&'a str> {
    match extra?.get(key)?.as_slice() {
        [one] if !one.is_empty() => Some(one.as_str()),
        _ => None,
    }
}

/// The pod to look up (in the ServiceAccount's namespace) before deciding, if the decision needs it:
/// the request is ours, from the edge-node ServiceAccount, and its token carries no node name but a
/// pod name.
pub fn pod_to_look_up(csr: &CertificateSigningRequest, policy: &SignerPolicy) -> Option<String> {
    let extra = csr.spec.extra.as_ref();
    (csr.spec.signer_name == policy.signer_name
        && csr.spec.username.as_deref() == Some(policy.username().as_str())
        && single_extra(extra, EXTRA_NODE_NAME).is_none())
    .then(|| single_extra(extra, EXTRA_POD_NAME).map(str::to_owned))
    .flatten()
}

/// Decide on one request. `pod` is the pod named by [`pod_to_look_up`] (`None`: not found or not
/// needed); `standing` is that of the EdgeNode named by [`requested_node`].
pub fn decide(
    csr: &CertificateSigningRequest,
    policy: &SignerPolicy,
    pod: Option<&PodFacts>,
    standing: NodeStanding,
) -> Decision {
    let spec = &csr.spec;
    if spec.signer_name != policy.signer_name {
        return Decision::Ignore;
    }
    let want = policy.username();
    let user = spec.username.as_deref().unwrap_or("");
    if user != want {
        return deny(
            DenyReason::WrongServiceAccount,
            format!("requested by {user:?}; only {want:?} may request node certificates"),
        );
    }
    let node = match parse_request(csr) {
        Ok((_, node)) => node,
        Err(d) => return d,
    };
    let extra = spec.extra.as_ref();
    let requester_node = if let Some(n) = single_extra(extra, EXTRA_NODE_NAME) {
        n.to_owned()
    } else if let (Some(pod_name), Some(pod_uid)) = (
        single_extra(extra, EXTRA_POD_NAME),
        single_extra(extra, EXTRA_POD_UID),
    ) {
        let ns = &policy.service_account_namespace;
        match pod {
            None => {
                return deny(
                    DenyReason::PodMismatch,
                    format!("the requesting pod {ns}/{pod_name} does not exist"),
                );
            }
            Some(p) if p.uid != pod_uid => {
                return deny(
                    DenyReason::PodMismatch,
                    format!(
                        "the requesting pod {ns}/{pod_name} has uid {}, not {pod_uid}",
                        p.uid
                    ),
                );
            }
            Some(PodFacts { node_name: None, .. }) => {
                return deny(
                    DenyReason::PodMismatch,
                    format!("the requesting pod {ns}/{pod_name} is not scheduled on a node"),
                );
            }
            Some(PodFacts {
                node_name: Some(n), ..
            }) => n.clone(),
        }
    } else {
        return deny(
            DenyReason::NoNodeIdentity,
            format!(
                "the requester's token carries neither {EXTRA_NODE_NAME} nor {EXTRA_POD_NAME} and {EXTRA_POD_UID} \
                 (use a bound ServiceAccount token)"
            ),
        );
    };
    if requester_node != node {
        return deny(
            DenyReason::NodeMismatch,
            format!("the request names node {node:?}, but the requester runs on {requester_node:?}"),
        );
    }
    let lifetime = match spec.expiration_seconds {
        None => policy.default_lifetime,
        Some(s) => {
            let asked = Duration::from_secs(s.max(0) as u64);
            if asked > policy.max_lifetime {
                return deny(
                    DenyReason::LifetimeTooLong,
                    format!(
                        "expirationSeconds {s} is over the maximum of {}",
                        policy.max_lifetime.as_secs()
                    ),
                );
            }
            if asked < MIN_NODE_LIFETIME {
                return deny(
                    DenyReason::LifetimeTooShort,
                    format!(
                        "expirationSeconds {s} is under the minimum of {}",
                        MIN_NODE_LIFETIME.as_secs()
                    ),
                );
            }
            asked
        }
    };
    let usages: Vec<&str> = spec.usages.iter().flatten().map(String::as_str).collect();
    if let Some(bad) = usages.iter().find(|u| !ALLOWED_USAGES.contains(u)) {
        return deny(
            DenyReason::BadUsages,
            format!(
                "usage {bad:?} is not granted (allowed: {})",
                ALLOWED_USAGES.join(", ")
            ),
        );
    }
    if let Some(missing) = REQUIRED_USAGES.iter().find(|u| !usages.contains(u)) {
        return deny(
            DenyReason::BadUsages,
            format!("usage {missing:?} is required (peers both dial and accept)"),
        );
    }
    match standing {
        NodeStanding::Quarantined => deny(
            DenyReason::NodeQuarantined,
            format!(
                "EdgeNode {node} is quarantined ({}=true)",
                pollen_crds::labels::QUARANTINE
            ),
        ),
        NodeStanding::Deleting => deny(
            DenyReason::NodeDeleted,
            format!("EdgeNode {node} is being deleted"),
        ),
        NodeStanding::Absent | NodeStanding::Active => Decision::Approve { node, lifetime },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestSpec, CertificateSigningRequestStatus,
    };

    pub(crate) const SA_NS: &str = "pollen-system";
    pub(crate) const SA: &str = "pollen-edge-node";

    pub(crate) fn policy() -> SignerPolicy {
        SignerPolicy {
            signer_name: pollen_crds::SIGNER_NAME.into(),
            service_account_namespace: SA_NS.into(),
            service_account_name: SA.into(),
            max_lifetime: Duration::from_secs(24 * 3600),
            default_lifetime: Duration::from_secs(24 * 3600),
        }
    }

    /// A request as the agent on `node` makes it, with a bound token naming `token_node`.
    pub(crate) fn csr_for(node: &str, token_node: &str) -> CertificateSigningRequest {
        let kr = pki::new_request(node).unwrap();
        with_request(kr.request_pem.into_bytes(), token_node)
    }

    pub(crate) fn with_request(request: Vec<u8>, token_node: &str) -> CertificateSigningRequest {
        let mut csr = CertificateSigningRequest::default();
        csr.metadata.name = Some(format!("pollen-edge-{token_node}-0123456789"));
        csr.metadata.uid = Some(format!("uid-{token_node}"));
        csr.metadata.resource_version = Some("7".into());
        csr.spec = CertificateSigningRequestSpec {
            signer_name: pollen_crds::SIGNER_NAME.into(),
            request: ByteString(request),
            usages: Some(vec![
                "digital signature".into(),
                "server auth".into(),
                "client auth".into(),
            ]),
            expiration_seconds: Some(86400),
            username: Some(format!("system:serviceaccount:{SA_NS}:{SA}")),
            extra: Some(BTreeMap::from([(
                EXTRA_NODE_NAME.to_string(),
                vec![token_node.to_string()],
            )])),
            ..CertificateSigningRequestSpec::default()
        };
        csr
    }

    fn via_pod(mut csr: CertificateSigningRequest) -> CertificateSigningRequest {
        csr.spec.extra = Some(BTreeMap::from([
            (EXTRA_POD_NAME.to_string(), vec!["agent-x7k2p".to_string()]),
            (EXTRA_POD_UID.to_string(), vec!["pod-uid-1".to_string()]),
        ]));
        csr
    }

    fn denied(d: Decision) -> DenyReason {
        match d {
            Decision::Deny { reason, message } => {
                assert!(!message.is_empty());
                reason
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn right_service_account_and_node_name_extra_is_approved_with_the_requested_lifetime() {
        let mut csr = csr_for("gw-01", "gw-01");
        csr.spec.expiration_seconds = Some(3600);
        assert_eq!(pod_to_look_up(&csr, &policy()), None);
        assert_eq!(requested_node(&csr).as_deref(), Some("gw-01"));
        assert_eq!(
            decide(&csr, &policy(), None, NodeStanding::Active),
            Decision::Approve {
                node: "gw-01".into(),
                lifetime: Duration::from_secs(3600)
            }
        );
        // No EdgeNode yet: a new device may enrol.
        csr.spec.expiration_seconds = None;
        assert_eq!(
            decide(&csr, &policy(), None, NodeStanding::Absent),
            Decision::Approve {
                node: "gw-01".into(),
                lifetime: policy().default_lifetime
            }
        );
    }

    #[test]
    fn right_service_account_and_node_via_the_pod_is_approved() {
        let csr = via_pod(csr_for("gw-01", "gw-01"));
        assert_eq!(pod_to_look_up(&csr, &policy()).as_deref(), Some("agent-x7k2p"));
        let pod = PodFacts {
            uid: "pod-uid-1".into(),
            node_name: Some("gw-01".into()),
        };
        assert_eq!(
            decide(&csr, &policy(), Some(&pod), NodeStanding::Active),
            Decision::Approve {
                node: "gw-01".into(),
                lifetime: Duration::from_secs(86400)
            }
        );
    }

    #[test]
    fn a_pod_on_another_node_or_with_another_uid_or_missing_is_denied() {
        let csr = via_pod(csr_for("gw-01", "gw-01"));
        let elsewhere = PodFacts {
            uid: "pod-uid-1".into(),
            node_name: Some("gw-02".into()),
        };
        assert_eq!(
            denied(decide(&csr, &policy(), Some(&elsewhere), NodeStanding::Active)),
            DenyReason::NodeMismatch
        );
        let reused_name = PodFacts {
            uid: "pod-uid-2".into(),
            node_name: Some("gw-01".into()),
        };
        assert_eq!(
            denied(decide(&csr, &policy(), Some(&reused_name), NodeStanding::Active)),
            DenyReason::PodMismatch
        );
        let unscheduled = PodFacts {
            uid: "pod-uid-1".into(),
            node_name: None,
        };
        assert_eq!(
            denied(decide(&csr, &policy(), Some(&unscheduled), NodeStanding::Active)),
            DenyReason::PodMismatch
        );
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::PodMismatch
        );
    }

    #[test]
    fn a_request_for_another_node_is_denied() {
        let csr = csr_for("gw-02", "gw-01");
        match decide(&csr, &policy(), None, NodeStanding::Active) {
            Decision::Deny { reason, message } => {
                assert_eq!(reason, DenyReason::NodeMismatch);
                assert!(
                    message.contains("gw-02") && message.contains("gw-01"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_token_without_node_or_pod_is_denied() {
        let mut csr = csr_for("gw-01", "gw-01");
        csr.spec.extra = None;
        assert_eq!(pod_to_look_up(&csr, &policy()), None);
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::NoNodeIdentity
        );
    }

    #[test]
    fn a_wrong_service_account_is_denied_and_triggers_no_pod_lookup() {
        for user in [
            "system:serviceaccount:default:pollen-edge-node",
            "system:serviceaccount:pollen-system:other",
            "system:node:gw-01",
            "admin",
        ] {
            let mut csr = via_pod(csr_for("gw-01", "gw-01"));
            csr.spec.username = Some(user.into());
            assert_eq!(pod_to_look_up(&csr, &policy()), None, "{user}");
            assert_eq!(
                denied(decide(&csr, &policy(), None, NodeStanding::Active)),
                DenyReason::WrongServiceAccount,
                "{user}"
            );
        }
        let mut csr = csr_for("gw-01", "gw-01");
        csr.spec.username = None;
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::WrongServiceAccount
        );
    }

    #[test]
    fn another_signer_name_is_ignored() {
        for signer in [
            "kubernetes.io/kube-apiserver-client",
            "kubernetes.io/kubelet-serving",
            "pollen.dev/other",
        ] {
            let mut csr = csr_for("gw-01", "gw-01");
            csr.spec.signer_name = signer.into();
            assert_eq!(
                decide(&csr, &policy(), None, NodeStanding::Active),
                Decision::Ignore
            );
            assert_eq!(pod_to_look_up(&via_pod(csr), &policy()), None);
        }
    }

    #[test]
    fn malformed_requests_are_denied() {
        for bad in [
            b"not a request".to_vec(),
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
            vec![0xff, 0xfe, 0x00],
            Vec::new(),
        ] {
            let csr = with_request(bad, "gw-01");
            assert_eq!(requested_node(&csr), None);
            assert_eq!(
                denied(decide(&csr, &policy(), None, NodeStanding::Active)),
                DenyReason::MalformedRequest
            );
        }
    }

    #[test]
    fn a_request_naming_an_invalid_node_is_denied() {
        // A CN and SAN that is no DNS subdomain (uppercase): the agent never sends it.
        let mut p = rcgen::CertificateParams::new(vec!["GW_01".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "GW_01");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        let csr = with_request(pem.into_bytes(), "GW_01");
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::MalformedRequest
        );
    }

    #[test]
    fn a_request_naming_two_nodes_is_denied() {
        let p = rcgen::CertificateParams::new(vec!["gw-01".to_string(), "gw-02".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        let csr = with_request(pem.into_bytes(), "gw-01");
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::MalformedRequest
        );
    }

    #[test]
    fn a_bad_self_signature_is_denied() {
        let good = pki::new_request("gw-01").unwrap().request_pem;
        let mut der = pem_body(&good);
        // Flip a bit in the signature (the last bytes of the DER).
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let pem = to_pem("CERTIFICATE REQUEST", &der);
        let csr = with_request(pem.into_bytes(), "gw-01");
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::BadSignature
        );
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn to_pem(tag: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn an_over_long_or_too_short_lifetime_is_denied() {
        let mut csr = csr_for("gw-01", "gw-01");
        csr.spec.expiration_seconds = Some(86401);
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::LifetimeTooLong
        );
        csr.spec.expiration_seconds = Some(7 * 86400);
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::LifetimeTooLong
        );
        csr.spec.expiration_seconds = Some(60);
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Active)),
            DenyReason::LifetimeTooShort
        );
        csr.spec.expiration_seconds = Some(600);
        assert!(matches!(
            decide(&csr, &policy(), None, NodeStanding::Active),
            Decision::Approve { .. }
        ));
    }

    #[test]
    fn usages_must_be_allowed_and_include_both_auths() {
        for usages in [
            vec!["digital signature", "server auth"],
            vec!["digital signature", "client auth"],
            vec!["server auth", "client auth", "cert sign"],
            vec!["server auth", "client auth", "code signing"],
            vec![],
        ] {
            let mut csr = csr_for("gw-01", "gw-01");
            csr.spec.usages = Some(usages.iter().map(|u| u.to_string()).collect());
            assert_eq!(
                denied(decide(&csr, &policy(), None, NodeStanding::Active)),
                DenyReason::BadUsages,
                "{usages:?}"
            );
        }
        let mut csr = csr_for("gw-01", "gw-01");
        csr.spec.usages = Some(
            ["key encipherment", "server auth", "client auth"]
                .map(String::from)
                .to_vec(),
        );
        assert!(matches!(
            decide(&csr, &policy(), None, NodeStanding::Active),
            Decision::Approve { .. }
        ));
    }

    #[test]
    fn a_quarantined_or_deleted_node_is_denied() {
        let csr = csr_for("gw-01", "gw-01");
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Quarantined)),
            DenyReason::NodeQuarantined
        );
        assert_eq!(
            denied(decide(&csr, &policy(), None, NodeStanding::Deleting)),
            DenyReason::NodeDeleted
        );
    }

    #[test]
    fn the_stage_reads_the_status() {
        let mut csr = csr_for("gw-01", "gw-01");
        assert_eq!(stage(&csr), Stage::Undecided);
        let cond = |t: &str| CertificateSigningRequestCondition {
            type_: t.into(),
            status: "True".into(),
            ..CertificateSigningRequestCondition::default()
        };
        csr.status = Some(CertificateSigningRequestStatus {
            certificate: None,
            conditions: Some(vec![cond("Approved")]),
        });
        assert_eq!(stage(&csr), Stage::ApprovedUnsigned);
        csr.status.as_mut().unwrap().certificate = Some(ByteString(b"-----BEGIN".to_vec()));
        assert_eq!(stage(&csr), Stage::Done);
        for t in ["Denied", "Failed"] {
            csr.status = Some(CertificateSigningRequestStatus {
                certificate: None,
                conditions: Some(vec![cond(t)]),
            });
            assert_eq!(stage(&csr), Stage::Done, "{t}");
        }
    }
}
