//! OCI and cosign object formats, pure: manifests, descriptors, the cosign simple-signing payload and the
//! cosign signature manifest. No I/O; the registry module moves these bytes.
//!
//! The cosign formats follow what cosign 2.x writes with `cosign sign --key --tlog-upload=false`:
//! a signature manifest tagged `sha256-<hex>.sig` in the signed object's repository, one layer per signature
//! of media type [`SIMPLESIGNING_MEDIA_TYPE`] whose blob is the simple-signing payload and whose
//! [`SIGNATURE_ANNOTATION`] is the base64 signature over that blob.
//!
//! A simple-signing payload names the repository it was signed for (`critical.identity.docker-reference`,
//! compared after [`normalize_repository`]) and may carry annotations in its `optional` map; Pollen's
//! publisher signs a version claim there ([`VERSION_ANNOTATION`]), exactly as `cosign sign -a` writes it.
//!
//! Non-goals: Docker schema 1/2 manifests, image indexes other than the referrers list, cosign bundles.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// OCI image manifest media type.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type (cosign's signature manifests use it).
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI 1.1 empty descriptor media type, for artifacts without a config.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty JSON object `{}`, content of the empty descriptor.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Artifact type of a payload published by Pollen.
pub const PAYLOAD_ARTIFACT_TYPE: &str = "application/vnd.pollen.payload.v1";
/// Media type of a payload layer when the publisher names none.
pub const DEFAULT_PAYLOAD_MEDIA_TYPE: &str = "application/octet-stream";
/// Artifact type (and layer media type) of a chunk index.
pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.pollen.chunk-index.v1";
/// The annotation naming a layer's file.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// cosign's simple-signing layer media type.
pub const SIMPLESIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// cosign's signature annotation (base64 of the DER signature).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign simple-signing payload.
pub const SIMPLESIGNING_TYPE: &str = "cosign container image signature";
/// Largest manifest Pollen reads (4 MiB, the distribution spec's suggested limit).
pub const MAX_MANIFEST_LEN: usize = 4 * 1024 * 1024;
/// Largest simple-signing payload Pollen reads.
pub const MAX_SIGNATURE_PAYLOAD_LEN: usize = 64 * 1024;
/// Most signature layers Pollen looks at on one object.
pub const MAX_SIGNATURES: usize = 64;

/// Why an OCI or cosign object was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes are not JSON of the expected shape.
    #[error("{what} is not valid JSON of the expected shape: {reason}")]
    Json {
        /// The object.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The object has the wrong shape for its role.
    #[error("{what}: {reason}")]
    Shape {
        /// The object.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("not a sha256 digest: {0:?}")]
    Digest(String),
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Content length in bytes.
    pub size: u64,
    /// Artifact type (for manifests listed in a referrers index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Embedded content (base64), as for the empty descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor of `bytes`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: None,
            data: None,
        }
    }

    /// The OCI 1.1 empty descriptor, with its content embedded.
    pub fn empty() -> Self {
        Descriptor {
            data: Some(base64::engine::general_purpose::STANDARD.encode(EMPTY_CONFIG)),
            ..Descriptor::of(EMPTY_MEDIA_TYPE, EMPTY_CONFIG)
        }
    }

    /// One annotation, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An OCI image manifest (also the OCI 1.1 artifact form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_MANIFEST_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// Parses a manifest, with a size limit.
    pub fn parse(bytes: &[u8], what: &'static str) -> Result<Self, FormatError> {
        if bytes.len() > MAX_MANIFEST_LEN {
            return Err(FormatError::Shape {
                what,
                reason: format!("{} bytes, over the limit", bytes.len()),
            });
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| FormatError::Json {
            what,
            reason: e.to_string(),
        })?;
        if m.schema_version != 2 {
            return Err(FormatError::Shape {
                what,
                reason: format!("schemaVersion {}", m.schema_version),
            });
        }
        if m.media_type
            .as_deref()
            .is_some_and(|t| t != OCI_MANIFEST_MEDIA_TYPE)
        {
            return Err(FormatError::Shape {
                what,
                reason: format!("media type {:?}", m.media_type),
            });
        }
        parse_digest(&m.config.digest)?;
        for l in &m.layers {
            parse_digest(&l.digest)?;
        }
        if let Some(s) = &m.subject {
            parse_digest(&s.digest)?;
        }
        Ok(m)
    }

    /// The serialised manifest (field order fixed by the struct; the digest is of these bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serialises")
    }

    /// An OCI 1.1 artifact manifest with an empty config.
    pub fn artifact(artifact_type: &str, layers: Vec<Descriptor>, subject: Option<Descriptor>) -> Self {
        Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
            artifact_type: Some(artifact_type.into()),
            config: Descriptor::empty(),
            layers,
            subject,
            annotations: None,
        }
    }
}

/// An OCI image index (used for the referrers tag schema).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_INDEX_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The listed manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The 32 bytes of a `sha256:<hex>` digest.
pub fn parse_digest(digest: &str) -> Result<[u8; 32], FormatError> {
    let bad = || FormatError::Digest(digest.chars().take(80).collect());
    let hexpart = digest.strip_prefix("sha256:").ok_or_else(bad)?;
    if hexpart.len() != 64
        || !hexpart
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|_| bad())?;
    Ok(out)
}

/// The tag under which cosign stores the signatures of `digest` (`sha256:ab..` → `sha256-ab...sig`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// The referrers tag-schema tag for `digest` (`sha256:ab..` → `sha256-ab..`).
pub fn referrers_tag(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The tag Pollen also gives the latest chunk index of a payload, for registries without the referrers API.
pub fn index_fallback_tag(payload_manifest_digest: &str) -> String {
    format!("{}.pollen-index", payload_manifest_digest.replace(':', "-"))
}

/// The simple-signing annotation carrying the publisher's version claim, as written by
/// `cosign sign -a pollen.dev/version=1.4.2`.
pub const VERSION_ANNOTATION: &str = "pollen.dev/version";

/// cosign's simple-signing payload for `manifest_digest`, byte for byte as cosign writes it without
/// annotations. `docker_reference` is the repository, e.g. `127.0.0.1:5000/fleet/app`.
pub fn simple_signing_payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    simple_signing_payload_with(docker_reference, manifest_digest, &BTreeMap::new())
}

/// cosign's simple-signing payload with `annotations` in its `optional` map, byte for byte as
/// `cosign sign -a KEY=VALUE …` writes it (an empty map is written as `null`, as cosign does).
pub fn simple_signing_payload_with(
    docker_reference: &str,
    manifest_digest: &str,
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let optional = if annotations.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(annotations).expect("string maps serialise")
    };
    let v = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIMPLESIGNING_TYPE,
        },
        "optional": optional,
    });
    // serde_json's map is ordered by key, which is also the order Go's encoder writes map keys and
    // cosign's struct fields in. Go also escapes three HTML characters and two line separators inside
    // strings; none of them can appear outside a string in JSON, so escaping them everywhere is exact.
    let json = serde_json::to_string(&v).expect("payload serialises");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// A repository name as cosign (go-containerregistry) normalises it, for comparing the signed
/// `docker-reference` with the repository being verified: a name without a registry host, and the
/// hosts `docker.io` and `registry-1.docker.io`, mean `index.docker.io`; a one-part Docker Hub name
/// gets `library/`; the host is lowercased; a tag or digest is dropped.
pub fn normalize_repository(name: &str) -> String {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let name = match name.rfind(':') {
        Some(i) if name.rfind('/').is_none_or(|j| i > j) => &name[..i],
        _ => name,
    };
    let (host, path) = match name.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_ascii_lowercase(), p),
        _ => ("index.docker.io".to_string(), name),
    };
    let host = match host.as_str() {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        _ => host,
    };
    if host == "index.docker.io" && !path.contains('/') {
        format!("{host}/library/{path}")
    } else {
        format!("{host}/{path}")
    }
}

/// What a simple-signing payload vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleSigning {
    /// The signed manifest digest.
    pub manifest_digest: String,
    /// The repository the signer named.
    pub docker_reference: String,
    /// The `optional` map as signed (`None` for `null`); see [`SimpleSigning::version`].
    pub optional: Option<serde_json::Value>,
}

impl SimpleSigning {
    /// The signer's version claim ([`VERSION_ANNOTATION`] in the `optional` map), if it makes one; an
    /// error when the claim is malformed.
    pub fn version(&self) -> Result<Option<semver::Version>, FormatError> {
        parse_version_claim(self.optional.as_ref())
    }
}

#[derive(Deserialize)]
struct SsPayload {
    critical: SsCritical,
    #[serde(default)]
    optional: Option<serde_json::Value>,
}
#[derive(Deserialize)]
struct SsCritical {
    identity: SsIdentity,
    image: SsImage,
    #[serde(rename = "type")]
    type_name: String,
}
#[derive(Deserialize)]
struct SsIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}
#[derive(Deserialize)]
struct SsImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The version claim of a simple-signing payload's `optional` map: `None` without one; an error when
/// the claim is there but is not a string holding a semantic version (`1.4.2`, `2.0.0-rc.1`).
pub fn parse_version_claim(
    optional: Option<&serde_json::Value>,
) -> Result<Option<semver::Version>, FormatError> {
    let shape = |reason: String| FormatError::Shape {
        what: "version claim",
        reason,
    };
    let Some(claim) = optional.and_then(|o| o.get(VERSION_ANNOTATION)) else {
        return Ok(None);
    };
    let Some(text) = claim.as_str() else {
        return Err(shape(format!("{VERSION_ANNOTATION} is {claim}, not a string")));
    };
    semver::Version::parse(text).map(Some).map_err(|e| {
        shape(format!(
            "{VERSION_ANNOTATION}={text:?} is not a semantic version: {e}"
        ))
    })
}

/// Parses a simple-signing payload (after its signature was checked).
pub fn parse_simple_signing(bytes: &[u8]) -> Result<SimpleSigning, FormatError> {
    const W: &str = "simple-signing payload";
    if bytes.len() > MAX_SIGNATURE_PAYLOAD_LEN {
        return Err(FormatError::Shape {
            what: W,
            reason: "too large".into(),
        });
    }
    let p: SsPayload = serde_json::from_slice(bytes).map_err(|e| FormatError::Json {
        what: W,
        reason: e.to_string(),
    })?;
    if p.critical.type_name != SIMPLESIGNING_TYPE {
        return Err(FormatError::Shape {
            what: W,
            reason: format!("type {:?}", p.critical.type_name),
        });
    }
    parse_digest(&p.critical.image.docker_manifest_digest)?;
    Ok(SimpleSigning {
        manifest_digest: p.critical.image.docker_manifest_digest,
        docker_reference: p.critical.identity.docker_reference,
        optional: p.optional.filter(|o| !o.is_null()),
    })
}

/// One signature layer of a cosign signature manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureRef {
    /// Descriptor of the simple-signing payload blob.
    pub payload: Descriptor,
    /// The DER signature, decoded from the annotation.
    pub signature: Vec<u8>,
}

/// The signature layers of a cosign signature manifest (others, e.g. unsigned or foreign layers, are skipped).
pub fn parse_signature_manifest(bytes: &[u8]) -> Result<Vec<SignatureRef>, FormatError> {
    let m = Manifest::parse(bytes, "signature manifest")?;
    let mut out = Vec::new();
    for l in m
        .layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLESIGNING_MEDIA_TYPE)
        .take(MAX_SIGNATURES)
    {
        let Some(sig) = l.annotation(SIGNATURE_ANNOTATION) else {
            continue;
        };
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            continue;
        };
        if l.size > MAX_SIGNATURE_PAYLOAD_LEN as u64 {
            continue;
        }
        out.push(SignatureRef {
            payload: l,
            signature,
        });
    }
    Ok(out)
}

/// The signature layer descriptor for a payload and its DER signature.
pub fn signature_layer(payload: &[u8], signature: &[u8]) -> Descriptor {
    let mut d = Descriptor::of(SIMPLESIGNING_MEDIA_TYPE, payload);
    d.annotations = Some(BTreeMap::from([(
        SIGNATURE_ANNOTATION.to_string(),
        base64::engine::general_purpose::STANDARD.encode(signature),
    )]));
    d
}

/// A cosign signature manifest holding `layers`, and its config blob (as cosign writes them).
pub fn signature_manifest(layers: Vec<Descriptor>) -> (Manifest, Vec<u8>) {
    // Written by hand to keep Go's field order, so the config blob is byte-identical to cosign's.
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", l.digest)).collect();
    let config = format!(
        concat!(
            r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"#,
            r#""os":"","rootfs":{{"type":"layers","diff_ids":[{}]}},"config":{{}}}}"#
        ),
        diff_ids.join(",")
    )
    .into_bytes();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
        artifact_type: None,
        config: Descriptor::of(OCI_CONFIG_MEDIA_TYPE, &config),
        layers,
        subject: None,
        annotations: None,
    };
    (manifest, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:690d489fe9436d170a51c63d2ae679b1adba4af509476ffb25646f3984f5b576";

    #[test]
    fn payload_is_byte_identical_to_cosign() {
        // Written by cosign 2.5 for `cosign sign --key` of 127.0.0.1:45123/demo/app@<D>.
        let cosign = br#"{"critical":{"identity":{"docker-reference":"127.0.0.1:45123/demo/app"},"image":{"docker-manifest-digest":"sha256:690d489fe9436d170a51c63d2ae679b1adba4af509476ffb25646f3984f5b576"},"type":"cosign container image signature"},"optional":null}"#;
        assert_eq!(
            simple_signing_payload("127.0.0.1:45123/demo/app", D),
            cosign.to_vec()
        );
        let p = parse_simple_signing(cosign).unwrap();
        assert_eq!(p.manifest_digest, D);
        assert_eq!(p.docker_reference, "127.0.0.1:45123/demo/app");
    }

    #[test]
    fn annotated_payload_is_byte_identical_to_cosign() {
        // What `cosign sign -a pollen.dev/version=1.4.2 -a note=<a&b>` writes: Go's encoder sorts map keys
        // and escapes HTML characters inside strings.
        let cosign = br#"{"critical":{"identity":{"docker-reference":"127.0.0.1:45123/demo/app"},"image":{"docker-manifest-digest":"sha256:690d489fe9436d170a51c63d2ae679b1adba4af509476ffb25646f3984f5b576"},"type":"cosign container image signature"},"optional":{"note":"\u003ca\u0026b\u003e","pollen.dev/version":"1.4.2"}}"#;
        let annotations = BTreeMap::from([
            (VERSION_ANNOTATION.to_string(), "1.4.2".to_string()),
            ("note".to_string(), "<a&b>".to_string()),
        ]);
        let ours = simple_signing_payload_with("127.0.0.1:45123/demo/app", D, &annotations);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(cosign.to_vec()).unwrap()
        );
        let p = parse_simple_signing(cosign).unwrap();
        assert_eq!(p.version().unwrap(), Some(semver::Version::new(1, 4, 2)));
        assert_eq!(p.optional.unwrap()["note"], "<a&b>");
        // No annotations: `optional` is null, and there is no claim.
        let plain = parse_simple_signing(&simple_signing_payload("r/a", D)).unwrap();
        assert_eq!(plain.optional, None);
        assert_eq!(plain.version().unwrap(), None);
    }

    #[test]
    fn version_claims_parse_strictly() {
        let claim =
            |v: serde_json::Value| parse_version_claim(Some(&serde_json::json!({ VERSION_ANNOTATION: v })));
        assert_eq!(
            claim("2.0.0-rc.1".into()).unwrap(),
            Some(semver::Version::parse("2.0.0-rc.1").unwrap())
        );
        for bad in ["v1.4.2", "1.4", "", "latest", " 1.4.2"] {
            assert!(claim(bad.into()).is_err(), "{bad:?} must be refused");
        }
        assert!(claim(serde_json::json!(3)).is_err(), "a number is not a claim");
        // Other annotations, or none, make no claim.
        assert_eq!(
            parse_version_claim(Some(&serde_json::json!({"a": "b"}))).unwrap(),
            None
        );
        assert_eq!(parse_version_claim(None).unwrap(), None);
        assert_eq!(parse_version_claim(Some(&serde_json::Value::Null)).unwrap(), None);
    }

    #[test]
    fn repositories_normalise_as_cosign_names_them() {
        for (a, b) in [
            ("127.0.0.1:5000/fleet/app", "127.0.0.1:5000/fleet/app"),
            ("busybox", "index.docker.io/library/busybox"),
            ("docker.io/busybox", "index.docker.io/library/busybox"),
            ("docker.io/library/busybox", "index.docker.io/library/busybox"),
            ("registry-1.docker.io/acme/fw", "index.docker.io/acme/fw"),
            ("acme/fw", "index.docker.io/acme/fw"),
            ("Registry.Example/fw/gw", "registry.example/fw/gw"),
            ("localhost/fw", "localhost/fw"),
            ("localhost:5000/fw:1.4.2", "localhost:5000/fw"),
            (&format!("registry.example/fw@{D}"), "registry.example/fw"),
        ] {
            assert_eq!(normalize_repository(a), b, "{a}");
        }
        assert_ne!(
            normalize_repository("127.0.0.1:5000/fleet/app"),
            normalize_repository("127.0.0.1:5000/fleet/other")
        );
        assert_ne!(
            normalize_repository("127.0.0.1:5000/fleet/app"),
            normalize_repository("127.0.0.1:5001/fleet/app")
        );
    }

    #[test]
    fn cosign_signature_manifest_parses() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":233,"digest":"sha256:8ca68cc7a32f96e41e42db094b2a3e40684ad5f010340542a6a8028c28707563"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":240,"digest":"sha256:37fba4c9a5e98cc9aab053180a9b958920fa0ecf6d159e08f9b8745082b45c86","annotations":{"dev.cosignproject.cosign/signature":"MEUCIQD7U2iCSMmCMlrnlVpnYWWUIjdaNmk41yaWSHnongXbigIgGbo/1qTc39EEe6VjmrIASLDqAFJ8w7N1QJbH2ILC3qE="}}]}"#;
        let sigs = parse_signature_manifest(m).unwrap();
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0].payload.size, 240);
        assert_eq!(sigs[0].signature[0], 0x30); // DER SEQUENCE
        // Our config for the same layer matches cosign's config blob digest.
        let (ours, config) = signature_manifest(vec![sigs[0].payload.clone()]);
        assert_eq!(
            ours.config.digest,
            "sha256:8ca68cc7a32f96e41e42db094b2a3e40684ad5f010340542a6a8028c28707563"
        );
        assert_eq!(config.len(), 233);
    }

    #[test]
    fn tags() {
        assert_eq!(signature_tag(D), format!("sha256-{}.sig", &D[7..]));
        assert_eq!(referrers_tag(D), format!("sha256-{}", &D[7..]));
    }

    #[test]
    fn rejects_bad_digests_and_shapes() {
        assert!(parse_digest("sha256:ABC").is_err());
        assert!(parse_digest(&D.replace('6', "G")).is_err());
        assert!(parse_digest("sha512:00").is_err());
        assert_eq!(parse_digest(D).unwrap()[0], 0x69);
        assert!(matches!(
            Manifest::parse(b"{", "m"),
            Err(FormatError::Json { .. })
        ));
        let wrong_type = br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"sha256:690d489fe9436d170a51c63d2ae679b1adba4af509476ffb25646f3984f5b576"},"type":"other"},"optional":null}"#;
        assert!(matches!(
            parse_simple_signing(wrong_type),
            Err(FormatError::Shape { .. })
        ));
    }

    #[test]
    fn artifact_manifest_roundtrip() {
        let layer = Descriptor::of("application/octet-stream", b"hello");
        let m = Manifest::artifact(PAYLOAD_ARTIFACT_TYPE, vec![layer], None);
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes, "m").unwrap(), m);
        assert_eq!(
            m.config.digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
