//! The fuzz corpora as a regression suite on stable: every file of `fuzz/corpus/<target>/` goes through
//! the same body the cargo-fuzz target runs (`fuzz/src/lib.rs`, included here), so an input that once
//! crashed a parser, or that reached deep into it, keeps being checked by `make test` without nightly
//! or libFuzzer. Every target has a non-empty corpus and a `fuzz_targets/<target>.rs`.
//!
//! `make_fuzz_seeds` (ignored; `make fuzz-seeds`) writes the seed inputs the campaign started from:
//! real encodings made with Pollen's own functions (a signed index, CSRs, CRLs signed by a throwaway
//! fleet CA, grants signed by a throwaway director key, wire frames of every type, manifests), and
//! the public halves of those keys into `fuzz/keys/`. It replaces the keys, so the crl and grant
//! corpora are re-seeded with it.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pollen_e2e::tools;

fn fuzz_dir() -> PathBuf {
    tools::workspace_root().join("fuzz")
}

#[test]
fn every_committed_corpus_input_replays_without_a_panic() {
    let mut total = 0;
    for (name, body) in targets::TARGETS {
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz_targets/{name}.rs"
        );
        let dir = fuzz_dir().join("corpus").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("fuzz target {name} panics on {}", f.display());
            }
        }
        total += files.len();
    }
    println!(
        "replayed {total} corpus inputs of {} targets",
        targets::TARGETS.len()
    );
}

/// Writes `data` as `fuzz/corpus/<target>/seed-<name>`.
fn seed(target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
#[ignore = "writes the fuzz seeds and keys; run by `make fuzz-seeds`"]
fn make_fuzz_seeds() {
    use base64::Engine as _;
    use pollen_edge_node::bitfield::Bitfield;
    use pollen_edge_node::protocol::{ErrorCode, Message};
    use pollen_trust::index::{IndexMeta, TargetSpec, build_index};
    use pollen_trust::{SigningKey, grant, oci, pki};
    use std::net::SocketAddr;

    for (i, s) in [
        "1h30m", "45s", "250ms", "1.5h", "10m", "90s", "30m", "24h", "7d", "3650d", "20ms", "1.5s", "250us",
        "0",
    ]
    .iter()
    .enumerate()
    {
        seed("duration", &format!("{i:02}"), s);
    }

    for (i, s) in [
        "one-copy",
        "unlimited",
        "1048576",
        "64MiB",
        "512KiB",
        "10MB",
        "20mbit",
        "1gbit",
        "500kbit",
    ]
    .iter()
    .enumerate()
    {
        seed("size", &format!("{i:02}"), s);
    }
    seed(
        "size",
        "strategy",
        r#"{"waves":[{"count":1,"pause":"10m"},{"percent":25,"pause":"1h30m"},{"percent":100}],"successThresholdPercent":95,"failureThreshold":2,"onFailure":"Pause","paused":false}"#,
    );
    seed("size", "strategy-empty", "{}");

    for (i, s) in [
        "22:00-04:00",
        "09:30-17:45",
        " 00:00 - 23:59 ",
        r#"{"start":"22:00","end":"04:00"}"#,
    ]
    .iter()
    .enumerate()
    {
        seed("window", &format!("{i:02}"), s);
    }

    seed(
        "selector",
        "labels",
        r#"{"matchLabels":{"role":"gateway","pollen.dev/site":"hall-a"}}"#,
    );
    seed(
        "selector",
        "expressions",
        r#"{"matchLabels":{"role":"gateway"},"matchExpressions":[{"key":"tier","operator":"In","values":["a","b"]},{"key":"pollen.dev/quarantine","operator":"DoesNotExist"},{"key":"zone","operator":"NotIn","values":["x"]},{"key":"ready","operator":"Exists"}]}"#,
    );
    seed("selector", "empty", "{}");

    let digest = targets::GRANT_DIGEST;
    for (i, s) in [
        "127.0.0.1:5000/fleet/app:v1".to_string(),
        format!("127.0.0.1:5000/fleet/app-index@{digest}"),
        format!("reg.example/a/b:v2@{digest}"),
        "localhost:5000/a_b/c__d/e--f.g:T_1.x-y".into(),
        "busybox".into(),
        "docker.io/x/y".into(),
        "Reg.Example:443/app".into(),
        digest.into(),
    ]
    .iter()
    .enumerate()
    {
        seed("reference", &format!("{i:02}"), s);
    }

    let payload = vec![0x5a_u8; 3 * 4096 + 17];
    let payload_manifest = oci::Manifest::artifact(
        oci::PAYLOAD_ARTIFACT_TYPE,
        vec![oci::Descriptor::of(oci::DEFAULT_PAYLOAD_MEDIA_TYPE, &payload)],
        None,
    );
    seed("oci_manifest", "payload", payload_manifest.to_bytes());
    let claim =
        std::collections::BTreeMap::from([(oci::VERSION_ANNOTATION.to_string(), "1.4.2-rc.1".to_string())]);
    let signed = oci::simple_signing_payload_with("127.0.0.1:5000/fleet/app", digest, &claim);
    seed("oci_manifest", "simple-signing", &signed);
    seed(
        "oci_manifest",
        "simple-signing-plain",
        oci::simple_signing_payload("busybox", digest),
    );
    let publisher = SigningKey::generate().unwrap();
    let (sig_manifest, _) = oci::signature_manifest(vec![oci::signature_layer(
        &signed,
        &publisher.sign(&signed).unwrap(),
    )]);
    seed("oci_manifest", "signature-manifest", sig_manifest.to_bytes());

    for (i, s) in [
        r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:fleet/app:pull""#,
        r#"Basic realm="Registry Realm""#,
        r#"bearer realm=https://a.example/t, scope="a\"b,c", error="insufficient_scope""#,
        r#"{"token":"abc","expires_in":300}"#,
        r#"{"access_token":"xyz","expires_in":0,"issued_at":"2024-01-01T00:00:00Z"}"#,
    ]
    .iter()
    .enumerate()
    {
        seed("registry_auth", &format!("{i:02}"), s);
    }

    seed(
        "docker_config",
        "config",
        r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other":{"username":"a","password":"b"},"tok.example":{"identitytoken":"rt"},"empty":{}},"credHelpers":{"gcr.io":"gcloud"},"credsStore":"desktop"}"#,
    );
    seed(
        "docker_config",
        "helper-ok",
        b"\x01{\"Username\":\"user\",\"Secret\":\"s3cret\"}\x00",
    );
    seed(
        "docker_config",
        "helper-token",
        b"\x01{\"Username\":\"<token>\",\"Secret\":\"rt\"}",
    );
    seed(
        "docker_config",
        "helper-failed",
        b"\x00\x00credentials not found in native keychain\n",
    );

    let kr = pki::new_request(targets::NODE).unwrap();
    seed("csr", "request-pem", &kr.request_pem);
    let der = pem_body(&kr.request_pem);
    seed("csr", "request-der", &der);
    seed(
        "csr",
        "request-other-name",
        pki::new_request("node-b").unwrap().request_pem,
    );
    let fleet = pki::FleetCa::generate("fuzz fleet", Duration::from_secs(10 * 365 * 86_400)).unwrap();
    let issued = fleet
        .issue(targets::NODE, SystemTime::now(), pki::DEFAULT_NODE_LIFETIME)
        .unwrap();
    seed("csr", "certificate-pem", &issued.cert.cert_pem);

    write(&fuzz_dir().join("keys").join("fleet-ca.pem"), fleet.cert_pem());
    let revoked = |serial: &str| pki::Revoked {
        serial: serial.into(),
        revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    let validity = Duration::from_secs(3650 * 86_400);
    let empty = fleet.revocation_list(1, &[], validity).unwrap();
    seed("crl", "empty-pem", &empty);
    seed("crl", "empty-der", pem_body(&empty));
    let list = fleet
        .revocation_list(
            7,
            &[
                revoked("01"),
                revoked(&issued.cert.facts.serial),
                revoked("7fffffffffffffff"),
            ],
            validity,
        )
        .unwrap();
    seed("crl", "three-pem", &list);
    seed("crl", "three-der", pem_body(&list));
    seed(
        "crl",
        "big-number-der",
        pem_body(&fleet.revocation_list(u64::MAX, &[], validity).unwrap()),
    );
    seed("csr", "ca-pem", fleet.cert_pem());

    let id = [7u8; 32];
    let mut bits = Bitfield::new(13);
    for i in [0, 3, 12] {
        bits.set(i);
    }
    let messages = vec![
        Message::Hello {
            version: 1,
            site: "hall-a".into(),
            indexes: vec![id, [9; 32]],
        },
        Message::HaveMap {
            index: id,
            bits: bits.clone(),
        },
        Message::Have {
            index: id,
            chunks: vec![1, 2, 40],
        },
        Message::Request {
            index: id,
            first: 3,
            count: 8,
        },
        Message::Cancel {
            index: id,
            first: 3,
            count: 1,
        },
        Message::Data {
            index: id,
            chunk: 3,
            len: 4096,
        },
        Message::Error {
            code: ErrorCode::NotAuthorised,
            index: id,
            message: "not listed".into(),
        },
        Message::Peers {
            addrs: vec![
                "192.0.2.1:4433".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:4433".parse().unwrap(),
            ],
        },
        Message::Fetching {
            index: id,
            chunks: vec![5],
        },
        Message::Revocations {
            crl: pem_body(&empty),
        },
        Message::Origin {
            index: id,
            reads: false,
        },
        Message::Grant {
            index: id,
            signature: vec![0x30, 0x44, 1, 2, 3],
        },
    ];
    let mut stream = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let bytes = m.to_bytes();
        seed("wire", &format!("{i:02}"), &bytes);
        stream.extend_from_slice(&bytes);
    }
    seed("wire", "stream", &stream);
    let mut raw_bits = 13u32.to_be_bytes().to_vec();
    raw_bits.extend_from_slice(bits.as_bytes());
    seed("wire", "bitfield", raw_bits);

    let meta = |peers: Vec<String>, expires_at: Option<u64>| IndexMeta {
        media_type: oci::DEFAULT_PAYLOAD_MEDIA_TYPE.into(),
        target: TargetSpec {
            path: "firmware/gateway.bin".into(),
            keep_versions: 2,
        },
        rollout: "default/gateway-fw".into(),
        sequence: 3,
        downgrade: false,
        expires_at,
        peers,
    };
    let ix = build_index(&payload, 4096, meta(Vec::new(), None)).unwrap();
    seed("index", "plain", ix.encode());
    let ix = build_index(
        &payload,
        4096,
        meta(vec!["node-a".into(), "node-b".into()], Some(1_900_000_000)),
    )
    .unwrap();
    seed("index", "peers-expiry", ix.encode());
    seed(
        "index",
        "empty-payload",
        build_index(&[], 4096, meta(Vec::new(), None)).unwrap().encode(),
    );

    let director = SigningKey::generate().unwrap();
    let public = director.public_key().unwrap();
    write(&fuzz_dir().join("keys").join("director.pub"), public.pem());
    let reference = format!("127.0.0.1:5000/fleet/app-index@{digest}");
    let text = grant::sign(&director, &reference, targets::NODE).unwrap();
    seed("grant", "base64", &text);
    seed(
        "grant",
        "raw",
        base64::engine::general_purpose::STANDARD.decode(&text).unwrap(),
    );
    seed("grant", "public-key", public.pem());
}

/// The DER inside a one-object PEM.
fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}
