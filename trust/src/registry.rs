//! The registry client: a thin layer over oci-client that moves manifests and blobs, with Docker
//! `config.json` credentials, plain HTTP only when explicitly asked for, size limits on everything read
//! into memory, and streaming for payloads.
//!
//! Non-goals: credential helpers (`credsStore`/`credHelpers` in config.json are not run), mirrors, retries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncReadExt as _;

use crate::oci::{self, Descriptor, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE};

/// Size of the pieces a payload file is streamed in.
const READ_BUF: usize = 1 << 20;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference is not `registry/repository[:tag][@digest]`.
    #[error("invalid reference {reference:?}: {reason}")]
    Reference {
        /// The text given.
        reference: String,
        /// The parser's message.
        reason: String,
    },
    /// The registry has no such manifest or blob.
    #[error("{what} not found: {reference}")]
    NotFound {
        /// Manifest or blob.
        what: &'static str,
        /// Where.
        reference: String,
    },
    /// The registry returned content whose digest differs from the one asked for.
    #[error("{what} from {reference} does not match its digest")]
    DigestMismatch {
        /// Manifest or blob.
        what: &'static str,
        /// Where.
        reference: String,
    },
    /// Content larger than the limit for its kind.
    #[error("{what} from {reference} is larger than {max} bytes")]
    TooLarge {
        /// What was read.
        what: &'static str,
        /// Where.
        reference: String,
        /// The limit.
        max: usize,
    },
    /// The Docker config file could not be read.
    #[error("docker config {path}: {reason}")]
    DockerConfig {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Any other registry or transport failure.
    #[error("registry {op} {reference}: {source}")]
    Oci {
        /// The operation.
        op: &'static str,
        /// Where.
        reference: String,
        /// oci-client's error.
        #[source]
        source: OciDistributionError,
    },
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Use plain HTTP (for a registry on 127.0.0.1 in tests and labs). Never the default.
    pub insecure: bool,
    /// The Docker `config.json` to take credentials from; `None` means `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` if present, else anonymous.
    pub docker_config: Option<PathBuf>,
}

/// A registry client.
pub struct Registry {
    client: Client,
    auths: BTreeMap<String, RegistryAuth>,
    insecure: bool,
}

/// Parses `registry/repository[:tag][@digest]`.
///
/// The grammar is the distribution reference grammar that oci-client's `Reference::from_str` checks with
/// a regular expression, and the result is the same (`docker.io` and `library/` normalisation, `latest`
/// when neither tag nor digest is given). It is parsed by hand because that expression (Unicode `\w`
/// classes) compiles to about 10 MiB of automaton and per-thread caches that stay resident for the life
/// of the process, which on an edge device is a third of the memory budget.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    let bad = |reason: &str| RegistryError::Reference {
        reference: s.into(),
        reason: reason.into(),
    };
    if s.is_empty() {
        return Err(bad("empty reference"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(bad("invalid tag"));
    }
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return Err(bad("invalid digest"));
        };
        let want = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(bad("unsupported digest algorithm")),
        };
        if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("invalid digest"));
        }
    }
    // `[domain/]path`: a first component that is a valid host is taken as the domain for validation;
    // it names the registry only if it looks like one (a dot, a port or `localhost`), as in Docker.
    let (first, path) = match name.split_once('/') {
        Some((f, p)) if valid_domain(f) => (Some(f), p),
        _ => (None, name),
    };
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(bad("invalid repository name"));
    }
    let (mut registry, mut repository) = match first {
        Some(f) if f.contains('.') || f.contains(':') || f == "localhost" => (f.to_owned(), path.to_owned()),
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > 255 {
        return Err(bad("repository name too long"));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.into()),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// Host labels (`[A-Za-z0-9]` or `[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]`) joined by dots, then `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// The repository of a reference, as `registry/repository` (cosign's docker-reference).
pub fn repository_name(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// The same repository at `digest`.
pub fn at_digest(r: &Reference, digest: &str) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), digest.into())
}

/// The same repository at `tag`.
pub fn at_tag(r: &Reference, tag: &str) -> Reference {
    Reference::with_tag(r.registry().into(), r.repository().into(), tag.into())
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::BlobUnknown | OciErrorCode::NameUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

fn is_digest_error(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::DigestError(_) => true,
        OciDistributionError::IoError(io) => io
            .get_ref()
            .is_some_and(|i| i.is::<oci_client::errors::DigestError>()),
        _ => false,
    }
}

impl Registry {
    /// A client with `opts`; reads the Docker config now.
    pub fn new(opts: &RegistryOptions) -> Result<Self, RegistryError> {
        let auths = load_docker_config(opts.docker_config.as_deref())?;
        let config = ClientConfig {
            protocol: if opts.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            // One streamed PUT per blob: far fewer round trips than PATCHing every piece.
            use_monolithic_push: true,
            ..Default::default()
        };
        Ok(Registry {
            client: Client::new(config),
            auths,
            insecure: opts.insecure,
        })
    }

    /// Whether this client speaks plain HTTP.
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    fn auth_for(&self, r: &Reference) -> RegistryAuth {
        self.auths
            .get(r.resolve_registry())
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }

    async fn authenticate(&self, r: &Reference, op: RegistryOperation) -> Result<(), RegistryError> {
        let auth = self.auth_for(r);
        if matches!(auth, RegistryAuth::Anonymous) {
            self.client
                .store_auth_if_needed(r.resolve_registry(), &auth)
                .await;
            return Ok(());
        }
        self.client
            .auth(r, &auth, op)
            .await
            .map(|_| ())
            .map_err(|source| RegistryError::Oci {
                op: "auth",
                reference: r.whole(),
                source,
            })
    }

    fn map_err(
        &self,
        op: &'static str,
        what: &'static str,
        r: &Reference,
        e: OciDistributionError,
    ) -> RegistryError {
        if is_not_found(&e) {
            RegistryError::NotFound {
                what,
                reference: r.whole(),
            }
        } else if is_digest_error(&e) {
            RegistryError::DigestMismatch {
                what,
                reference: r.whole(),
            }
        } else {
            RegistryError::Oci {
                op,
                reference: r.whole(),
                source: e,
            }
        }
    }

    /// Fetches a manifest (image manifest or index); returns its bytes and digest. When `r` names a digest,
    /// the bytes are checked against it.
    pub async fn pull_manifest(&self, r: &Reference) -> Result<(Vec<u8>, String), RegistryError> {
        self.authenticate(r, RegistryOperation::Pull).await?;
        let (body, digest) = self
            .client
            .pull_manifest_raw(
                r,
                &self.auth_for(r),
                &[OCI_MANIFEST_MEDIA_TYPE, OCI_INDEX_MEDIA_TYPE],
            )
            .await
            .map_err(|e| self.map_err("pull manifest", "manifest", r, e))?;
        if body.len() > oci::MAX_MANIFEST_LEN {
            return Err(RegistryError::TooLarge {
                what: "manifest",
                reference: r.whole(),
                max: oci::MAX_MANIFEST_LEN,
            });
        }
        let computed = oci::sha256_digest(&body);
        if r.digest().is_some_and(|d| d != computed) {
            return Err(RegistryError::DigestMismatch {
                what: "manifest",
                reference: r.whole(),
            });
        }
        // Trust the bytes, not the registry's digest header.
        let _ = digest;
        Ok((body.to_vec(), computed))
    }

    /// Like [`pull_manifest`](Self::pull_manifest), but `Ok(None)` when it does not exist.
    pub async fn pull_manifest_opt(&self, r: &Reference) -> Result<Option<(Vec<u8>, String)>, RegistryError> {
        match self.pull_manifest(r).await {
            Ok(x) => Ok(Some(x)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pushes a manifest under `r` (a tag or a digest); returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<String, RegistryError> {
        self.authenticate(r, RegistryOperation::Push).await?;
        let digest = oci::sha256_digest(&bytes);
        let ct = media_type.parse().map_err(|_| RegistryError::Reference {
            reference: media_type.into(),
            reason: "not a header value".into(),
        })?;
        self.client
            .push_manifest_raw(r, bytes, ct)
            .await
            .map_err(|e| self.map_err("push manifest", "manifest", r, e))?;
        Ok(digest)
    }

    /// Pushes a small blob held in memory (skipped if the registry has it). The returned descriptor has an
    /// empty media type: the caller names it.
    pub async fn push_blob(&self, r: &Reference, bytes: Vec<u8>) -> Result<Descriptor, RegistryError> {
        self.authenticate(r, RegistryOperation::Push).await?;
        let digest = oci::sha256_digest(&bytes);
        let size = bytes.len() as u64;
        let exists = self.client.blob_exists(r, &digest).await.unwrap_or(false);
        if !exists {
            self.client
                .push_blob(r, bytes, &digest)
                .await
                .map_err(|e| self.map_err("push blob", "blob", r, e))?;
        }
        Ok(Descriptor {
            media_type: String::new(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
            data: None,
        })
    }

    /// Streams a file to the registry as a blob whose digest the caller computed in a first pass;
    /// `progress(bytes_sent)` is called as pieces are read. Memory stays at one read buffer.
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        path: &Path,
        digest: &str,
        size: u64,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<(), RegistryError> {
        self.authenticate(r, RegistryOperation::Push).await?;
        if self.client.blob_exists(r, digest).await.unwrap_or(false) {
            progress(size);
            return Ok(());
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| RegistryError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream =
            futures::stream::try_unfold((file, sent, progress), |(mut file, sent, progress)| async move {
                let mut buf = vec![0u8; READ_BUF];
                let n = file.read(&mut buf).await.map_err(OciDistributionError::IoError)?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                let total = sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
                progress(total);
                Ok(Some((Bytes::from(buf), (file, sent, progress))))
            });
        self.client
            .push_blob_stream(r, stream, digest, Some(size))
            .await
            .map_err(|e| self.map_err("push blob", "blob", r, e))?;
        Ok(())
    }

    /// Reads a small blob into memory, refusing more than `max` bytes. The digest is NOT checked here
    /// beyond what the transport checks; callers that care compare it themselves.
    pub async fn pull_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        max: usize,
    ) -> Result<Vec<u8>, RegistryError> {
        if desc.size > max as u64 {
            return Err(RegistryError::TooLarge {
                what: "blob",
                reference: r.whole(),
                max,
            });
        }
        let mut out = Vec::with_capacity(desc.size as usize);
        self.stream_blob(r, desc, |piece| {
            if out.len() + piece.len() > max {
                return false;
            }
            out.extend_from_slice(piece);
            true
        })
        .await?;
        Ok(out)
    }

    /// Streams a blob through `sink`, which returns `false` to stop (then this returns `TooLarge`).
    pub async fn stream_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), RegistryError> {
        self.authenticate(r, RegistryOperation::Pull).await?;
        let layer = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        let blob_ref = at_digest(r, &desc.digest);
        let sized = self
            .client
            .pull_blob_stream(&blob_ref, &layer)
            .await
            .map_err(|e| self.map_err("pull blob", "blob", &blob_ref, e))?;
        let mut stream = sized.stream.map_err(OciDistributionError::IoError).boxed();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| self.map_err("pull blob", "blob", &blob_ref, e))?;
            if !sink(&piece) {
                return Err(RegistryError::TooLarge {
                    what: "blob",
                    reference: blob_ref.whole(),
                    max: desc.size as usize,
                });
            }
        }
        Ok(())
    }
}

/// Reads registry credentials from a Docker config file (`auths.<host>.auth` or `username`/`password`).
fn load_docker_config(explicit: Option<&Path>) -> Result<BTreeMap<String, RegistryAuth>, RegistryError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
            match dir.map(|d| d.join("config.json")) {
                Some(p) if p.exists() => p,
                _ => return Ok(BTreeMap::new()),
            }
        }
    };
    let err = |reason: String| RegistryError::DockerConfig {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
    parse_docker_config(&text).map_err(err)
}

/// Parses the `auths` of a Docker config file into per-host credentials.
pub fn parse_docker_config(text: &[u8]) -> Result<BTreeMap<String, RegistryAuth>, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    let cfg: Config = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (key, e) in cfg.auths {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host).to_string();
        let auth = if let Some(a) = e.auth.filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| format!("{key}: auth is not base64"))?;
            let s = String::from_utf8(raw).map_err(|_| format!("{key}: auth is not UTF-8"))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| format!("{key}: auth is not user:password"))?;
            RegistryAuth::Basic(u.into(), p.into())
        } else if let (Some(u), Some(p)) = (e.username, e.password) {
            RegistryAuth::Basic(u, p)
        } else if let Some(t) = e.identitytoken {
            RegistryAuth::Bearer(t)
        } else {
            continue;
        };
        let host = if host == "index.docker.io" {
            "index.docker.io".to_string()
        } else {
            host
        };
        out.insert(host, auth);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths() {
        let cfg = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other":{"username":"a","password":"b"},"empty":{}}}"#;
        let m = parse_docker_config(cfg).unwrap();
        assert!(
            matches!(m.get("reg.example:5000"), Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass")
        );
        assert!(matches!(m.get("other"), Some(RegistryAuth::Basic(u, p)) if u == "a" && p == "b"));
        assert!(!m.contains_key("empty"));
        assert!(parse_docker_config(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(parse_docker_config(b"nope").is_err());
    }

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/fleet/app:v1").unwrap();
        assert_eq!(repository_name(&r), "127.0.0.1:5000/fleet/app");
        assert_eq!(at_tag(&r, "x").whole(), "127.0.0.1:5000/fleet/app:x");
        assert!(parse_reference("bad ref!!").is_err());
    }

    #[test]
    fn references_parse_as_oci_client_does() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for s in [
            "127.0.0.1:5000/fleet/app:v1".to_owned(),
            format!("127.0.0.1:5000/bench/app@{digest}"),
            format!("reg.example/a/b:v2@{digest}"),
            "localhost/app".into(),
            "localhost:5000/a_b/c__d/e--f.g:T_1.x-y".into(),
            "busybox".into(),
            "fleet/app:1".into(),
            "index.docker.io/app".into(),
            "docker.io/x/y".into(),
            "Reg.Example:443/app".into(),
            "Upper/app".into(),
            "index.docker.io/x/y:z".into(),
        ] {
            let ours = parse_reference(&s).unwrap();
            let theirs: Reference = s.parse().unwrap();
            assert_eq!(ours.whole(), theirs.whole(), "{s}");
            assert_eq!(ours.registry(), theirs.registry(), "{s}");
            assert_eq!(ours.repository(), theirs.repository(), "{s}");
            assert_eq!(ours.tag(), theirs.tag(), "{s}");
            assert_eq!(ours.digest(), theirs.digest(), "{s}");
        }
        for s in [
            "",
            "bad ref!!",
            "Upper",
            "x/Upper",
            "app:",
            "app:-x",
            "reg.example/app@sha256:abc",
            "reg.example/app@md5:0123456789abcdef0123456789abcdef",
            "reg.example/a//b",
            "reg.example/a_-b",
            "reg.example/a.",
            "-reg.example/app",
            "reg.example:x/app",
        ] {
            assert!(parse_reference(s).is_err(), "{s:?} accepted");
            assert!(s.parse::<Reference>().is_err(), "{s:?} accepted by oci-client");
        }
    }
}
