//! The bodies of Pollen's fuzz targets: every parser that takes user or peer input must return an
//! error, never panic. Each `fuzz_targets/<name>.rs` calls the function of the same name here, so the
//! same bodies replay on stable: `e2e/tests/fuzz_corpus.rs` (part of `make test`) includes this file
//! and runs every committed corpus file of `fuzz/corpus/<name>/` through [`TARGETS`].
//!
//! A body may also assert what a parser promises beyond "no panic" when that is cheap and exact (a
//! decoded chunk index re-encodes to the same bytes, a decoded wire frame round-trips); a failed
//! assertion is a crash like any other.
//!
//! The keys in `fuzz/keys/` are throwaway public halves (their private keys signed the seed lists and
//! grants and were discarded), so that the seeds pass the signature checks and reach what follows.
//!
//! Non-goals: parsers of the operator's and node's own files (TLS identity, CA key), and anything
//! behind a network round trip.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt as _};
use pollen_crds::rollout::{ActivationWindow, RolloutStrategy};
use pollen_edge_node::bitfield::Bitfield;
use pollen_edge_node::standalone::Budget;
use pollen_edge_node::{crl_intake, protocol};
use pollen_trust::index::ChunkIndex;
use pollen_trust::registry::{DockerConfig, auth, credentials, reference};
use pollen_trust::{PublicKey, grant, oci, pki};

/// A target's body: one input, any outcome but a panic.
pub type Body = fn(&[u8]);

/// Every target by name, as `fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` are named.
pub const TARGETS: &[(&str, Body)] = &[
    ("duration", duration),
    ("size", size),
    ("window", window),
    ("selector", selector),
    ("reference", reference),
    ("oci_manifest", oci_manifest),
    ("registry_auth", registry_auth),
    ("docker_config", docker_config),
    ("csr", csr),
    ("crl", crl),
    ("wire", wire),
    ("index", index),
    ("grant", grant),
];

/// The fleet CA the `crl` seeds are signed by (certificate only).
pub const FLEET_CA_PEM: &str = include_str!("../keys/fleet-ca.pem");
/// The director key the `grant` seeds are signed by (public key only).
pub const DIRECTOR_PEM: &str = include_str!("../keys/director.pub");
/// The index manifest digest the `grant` seeds name.
pub const GRANT_DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The node the `grant` and `csr` seeds name.
pub const NODE: &str = "node-a";

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Durations: the workspace's one parser (CR fields such as wave pauses, the CLI's lifetimes and
/// intervals, the benchmark's link delays), and the benchmark's wrapper around it.
pub fn duration(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(d) = pollen_crds::duration::parse(s) {
        assert!(d <= pollen_crds::duration::MAX, "{s:?}: over the bound");
    }
    let _ = pollen_e2e::lab::spec::parse_duration(s);
}

/// Sizes and quantities: the node's origin budget (`one-copy`, bytes), the benchmark's sizes and
/// rates (`64MiB`, `20mbit`), and a rollout strategy's waves (counts, percentages, pauses) as the
/// operator reads them.
pub fn size(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = Budget::parse(s);
        let _ = pollen_e2e::lab::spec::parse_size(s);
        let _ = s.parse::<pollen_e2e::lab::spec::Rate>();
    }
    let Ok(strategy) = serde_json::from_slice::<RolloutStrategy>(data) else {
        return;
    };
    let _ = pollen_operator::progress::Gate::from_strategy(&strategy);
    if let Ok(sizes) = pollen_operator::planner::wave_sizes(&strategy.waves) {
        for total in [0, 1, 7, 100, 100_000] {
            let ends = pollen_operator::planner::wave_ends(total, &sizes);
            assert_eq!(ends.last(), Some(&total));
            assert!(
                ends.windows(2).all(|w| w[0] <= w[1]),
                "wave ends go back: {ends:?}"
            );
        }
    }
}

/// Activation windows: the node's `--activation-window HH:MM-HH:MM` flag and the rollout's
/// `activationWindow` object.
pub fn window(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let mut windows = Vec::new();
    if let Ok(w) = ActivationWindow::parse(s) {
        windows.push(w);
    }
    if let Ok(w) = serde_json::from_str::<ActivationWindow>(s) {
        windows.push(w);
    }
    for w in windows {
        let Ok((start, end)) = w.bounds() else { continue };
        assert_ne!(start, end);
        for now in [0, 1, start, end, 43_199, 86_399, 86_400, u32::MAX] {
            let wait = w.wait_at(now).expect("bounds were read");
            assert!(wait < 86_400, "{w:?} at {now}: wait {wait}");
        }
    }
}

/// Label selectors: an UpdateRollout's `selector` as the operator turns it into a `Selector` and
/// matches EdgeNode labels with it.
pub fn selector(data: &[u8]) {
    let Ok(ls) = serde_json::from_slice::<LabelSelector>(data) else {
        return;
    };
    let Ok(sel) = Selector::try_from(ls.clone()) else {
        return;
    };
    let _ = sel.to_string();
    let own = ls.match_labels.clone().unwrap_or_default();
    let mut labels = vec![
        BTreeMap::new(),
        BTreeMap::from([("role".to_string(), "gateway".to_string())]),
        own.clone(),
    ];
    for e in ls.match_expressions.iter().flatten() {
        for v in e.values.iter().flatten() {
            let mut l = own.clone();
            l.insert(e.key.clone(), v.clone());
            labels.push(l);
        }
    }
    for l in &labels {
        let _ = sel.matches(l);
    }
    if ls.match_expressions.as_ref().is_none_or(Vec::is_empty) {
        assert!(sel.matches(&own), "{ls:?} does not match its own labels");
    }
}

/// Image references (`registry/repo:tag@sha256:…`, from rollouts, trust policies and the CLI),
/// digests, and the pinned index references that grants name.
pub fn reference(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(r) = reference::parse_reference(s) {
        let name = reference::repository_name(&r);
        let _ = oci::normalize_repository(&name);
        let _ = reference::at_tag(&r, "latest").whole();
        let _ = reference::at_digest(&r, GRANT_DIGEST).whole();
    }
    let _ = oci::parse_digest(s);
    let _ = oci::normalize_repository(s);
    let _ = grant::index_digest(s);
}

/// What a registry serves: OCI manifests, cosign signature manifests, simple-signing payloads and
/// their version claim.
pub fn oci_manifest(data: &[u8]) {
    let _ = oci::Manifest::parse(data, "manifest");
    let _ = oci::parse_signature_manifest(data);
    if let Ok(ss) = oci::parse_simple_signing(data) {
        let _ = ss.version();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = oci::parse_version_claim(Some(&v));
    }
}

/// A registry's `WWW-Authenticate` challenge and its token endpoint's answer.
pub fn registry_auth(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = auth::parse_challenge(s);
    }
    let _ = auth::parse_token_answer(data);
}

/// A Docker `config.json` (and the lookups on it), and a credential helper's output: the first byte
/// says whether the helper succeeded, the rest up to the first NUL is its standard output, the
/// remainder its standard error.
pub fn docker_config(data: &[u8]) {
    if let Ok(cfg) = DockerConfig::parse(data) {
        for host in ["docker.io", "https://index.docker.io/v1/", "reg.example:5000", ""] {
            let _ = cfg.helper_for(host);
            let _ = cfg.has_entry(host);
        }
    }
    if let Some((&flag, rest)) = data.split_first() {
        let (stdout, stderr) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let _ = credentials::parse_helper_output(flag & 1 == 1, stdout, stderr);
    }
}

/// A fleet CA for signing what parses as a node's request (made once per process).
fn signing_ca() -> &'static pki::FleetCa {
    static CA: OnceLock<pki::FleetCa> = OnceLock::new();
    CA.get_or_init(|| pki::FleetCa::generate("fuzz fleet", Duration::from_secs(86_400)).expect("a CA"))
}

/// A node's certificate signing request (PEM as the Kubernetes CSR carries it, or DER), taken
/// through what the operator's signer does with it; and the facts read from a certificate PEM.
pub fn csr(data: &[u8]) {
    let mut requests = Vec::new();
    if let Ok(req) = pki::NodeRequest::from_der(data) {
        requests.push(req);
    }
    if let Some(s) = text(data) {
        if let Ok(req) = pki::NodeRequest::from_pem(s) {
            requests.push(req);
        }
        let _ = pki::cert_facts(s);
    }
    let _ = pki::cert_facts_der(data);
    for req in requests {
        if req.names_only(NODE).is_ok() {
            let issued = signing_ca()
                .sign_request(&req, NODE, pki::DEFAULT_NODE_LIFETIME)
                .expect("a request that parsed is signed");
            assert_eq!(issued.facts.name, NODE);
        }
    }
}

/// A revocation list from a peer (`Revocations` message, DER) or the API server (PEM): its number read
/// unverified by the node's intake, then the full parse and signature check against the fleet CA (a
/// number the intake reads from a list that verifies is the list's number).
pub fn crl(data: &[u8]) {
    let _ = crl_intake::crl_number(data);
    if let Ok(set) = pki::verify_revocation_list(data, FLEET_CA_PEM)
        && let Some(unverified) = crl_intake::crl_number(&set.der)
    {
        assert_eq!(
            unverified, set.number,
            "the intake reads another number than the list holds"
        );
    }
}

/// The peer wire protocol: a control stream's bytes decoded frame by frame (each decoded message
/// re-encodes to a frame that decodes to it again), one frame body, and a have-map's raw bits (the
/// first four bytes are the chunk count).
pub fn wire(data: &[u8]) {
    let mut buf = data;
    while let Ok(Some((msg, used))) = protocol::decode(buf) {
        assert!(used > 4 && used <= buf.len());
        let again = msg.to_bytes();
        assert_eq!(protocol::decode(&again), Ok(Some((msg, again.len()))));
        buf = &buf[used..];
    }
    let _ = protocol::decode_body(data);
    if let Some((len, bits)) = data.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len);
        if let Some(b) = Bitfield::from_bytes(len, bits) {
            assert_eq!(b.as_bytes(), bits);
            assert_eq!(b.iter_ones().count() as u32, b.count());
            assert!(b.count() <= b.len());
        }
    }
}

/// The signed chunk index blob: the decoder accepts only the canonical encoding of a valid index.
pub fn index(data: &[u8]) {
    let Ok(ix) = ChunkIndex::decode(data) else {
        return;
    };
    assert_eq!(ix.encode(), data, "a decoded index re-encodes to other bytes");
    ix.validate().expect("a decoded index is valid");
    let n = ix.chunk_count();
    if n > 0 {
        let _ = ix.chunk_len(n - 1);
        let _ = ix.verify_chunk(n - 1, &[]);
    }
    let _ = ix.verify_chunk(n, &[]);
    let _ = ix.authorises(NODE);
    let _ = ix.id();
    let _ = ix.payload.oci_digest();
}

fn director() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| PublicKey::from_pem(DIRECTOR_PEM.as_bytes()).expect("fuzz/keys/director.pub"))
}

/// Peer grants: the base64 text of an EdgeNode assignment and the raw signature of a `Grant` message,
/// checked against the director key; and public keys as a TrustPolicy gives them (PEM).
pub fn grant(data: &[u8]) {
    if let Some(s) = text(data)
        && let Ok(sig) = grant::decode(s)
    {
        let _ = grant::verify(director(), GRANT_DIGEST, NODE, &sig);
    }
    let _ = grant::verify(director(), GRANT_DIGEST, NODE, data);
    let _ = PublicKey::from_pem(data);
}
