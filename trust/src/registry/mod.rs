//! The registry client: every request Pollen makes to an OCI registry, against registries as users run
//! them (TLS, token or basic auth, blob redirects to object storage).
//!
//! - [`reference`]: image references, parsed without a regular expression;
//! - [`credentials`]: Docker `config.json` credentials and credential helpers;
//! - [`auth`]: the distribution spec's challenge and token flow, cached per host and scope.
//!
//! Reads (manifests, signatures, the chunk index, whole blobs, and the edge node's range GETs) go through
//! Pollen's own HTTP client and [`auth::Authenticator`], so each is streamed under a size cap before it
//! is parsed, and a redirect never carries the `Authorization` header to another host. Pushes go through
//! oci-client, handed the same authenticator's answer.
//!
//! TLS is the default: the system's roots, plus `SSL_CERT_FILE` where it is set, plus an optional extra CA
//! bundle ([`RegistryOptions::ca_file`]). Plain HTTP is allowed per host ([`RegistryOptions::insecure_hosts`]),
//! never for every registry at once.
//!
//! Non-goals: mirrors, retries (callers decide), the OCI 1.1 referrers API.

pub mod auth;
pub mod credentials;
pub mod reference;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, RANGE};
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;

pub use auth::{Authenticator, Presented};
pub use credentials::{Credential, DockerConfig};
pub use reference::{at_digest, at_tag, parse_reference, repository_name};

use crate::oci::{self, Descriptor, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE};

/// Size of the pieces a payload file is streamed in.
const READ_BUF: usize = 1 << 20;
/// How long a TCP and TLS connection to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may wait for the next bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest error body read.
const MAX_ERROR_BODY: usize = 64 * 1024;

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
    /// The options cannot work (for example plain HTTP for every registry).
    #[error("registry options: {0}")]
    Options(String),
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
    /// The registry did not accept the credentials (or their absence).
    #[error("registry {host}: unauthorized: {reason}")]
    Unauthorized {
        /// The registry host.
        host: String,
        /// What the registry or its token endpoint said.
        reason: String,
    },
    /// The registry accepted who we are but refused the operation (a pull-only credential pushing, say).
    #[error("registry {host}: forbidden to {op} {reference}: {reason}")]
    Forbidden {
        /// The registry host.
        host: String,
        /// The operation.
        op: &'static str,
        /// Where.
        reference: String,
        /// What the registry said.
        reason: String,
    },
    /// A credential would have gone over plain HTTP to a host not listed as insecure; it was not sent.
    #[error(
        "registry {host}: refusing to send credentials over plain HTTP to {url} (list the host as insecure to allow it)"
    )]
    InsecureCredentials {
        /// The registry host.
        host: String,
        /// The plain-HTTP address.
        url: String,
    },
    /// The connection failed: DNS, TCP, TLS (an unknown CA), or a timeout.
    #[error("registry {host}: {reason}")]
    Http {
        /// The host contacted.
        host: String,
        /// The transport's error chain.
        reason: String,
    },
    /// The registry answered with an unexpected status.
    #[error("registry {op} {reference}: status {status}: {body}")]
    Status {
        /// The operation.
        op: &'static str,
        /// Where.
        reference: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// A Docker credential helper failed or is missing.
    #[error("credential helper {helper} for {host}: {reason}")]
    CredentialHelper {
        /// The helper program.
        helper: String,
        /// The host credentials were asked for.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The Docker config file could not be read.
    #[error("docker config {path}: {reason}")]
    DockerConfig {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The extra CA bundle could not be read.
    #[error("registry CA bundle {path}: {reason}")]
    CaBundle {
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
    /// Any other failure of a push (oci-client's).
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

impl RegistryError {
    /// Whether retrying the same request with the same settings cannot help: the credentials, the CA or
    /// the permissions are wrong, or the object is refused. A caller should report it, not spin on it.
    pub fn is_permanent(&self) -> bool {
        match self {
            RegistryError::Unauthorized { .. }
            | RegistryError::Forbidden { .. }
            | RegistryError::InsecureCredentials { .. }
            | RegistryError::CredentialHelper { .. }
            | RegistryError::DockerConfig { .. }
            | RegistryError::CaBundle { .. }
            | RegistryError::Options(_)
            | RegistryError::Reference { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::TooLarge { .. } => true,
            // An unknown CA or a bad certificate does not heal by itself.
            RegistryError::Http { reason, .. } => reason.contains("certificate"),
            _ => false,
        }
    }
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`, exactly as in references) reached over plain HTTP, for a registry on
    /// 127.0.0.1 in tests and labs or a mirror on a trusted network. Every other host is HTTPS. There is
    /// no wildcard.
    pub insecure_hosts: Vec<String>,
    /// A PEM bundle of extra CA certificates to trust for registries, beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The Docker `config.json` to take credentials from; `None` means `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` if present, else anonymous.
    pub docker_config: Option<PathBuf>,
}

impl RegistryOptions {
    /// Plain HTTP to `host` only, anonymous or with the default Docker config: for tests against a local
    /// registry.
    pub fn insecure_for(host: impl Into<String>) -> Self {
        RegistryOptions {
            insecure_hosts: vec![host.into()],
            ..Default::default()
        }
    }
}

/// A registry client. Cheap to clone: clones share connections and cached tokens.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("insecure_hosts", &self.inner.auth.insecure_hosts())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Pushes.
    oci: Client,
    /// Reads.
    http: reqwest::Client,
    auth: Authenticator,
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

/// The OAuth scope of `op` on `r`'s repository.
fn scope(r: &Reference, op: RegistryOperation) -> String {
    match op {
        RegistryOperation::Pull => format!("repository:{}:pull", r.repository()),
        RegistryOperation::Push => format!("repository:{}:pull,push", r.repository()),
    }
}

/// Reads the CA bundle at `path` (PEM, one or more certificates).
fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, RegistryError> {
    let err = |reason: String| RegistryError::CaBundle {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(pem)
}

impl Registry {
    /// A client with `opts`; reads the Docker config and the CA bundle now.
    pub fn new(opts: &RegistryOptions) -> Result<Self, RegistryError> {
        if let Some(bad) = opts
            .insecure_hosts
            .iter()
            .find(|h| h.is_empty() || h.contains('*') || h.contains('/'))
        {
            return Err(RegistryError::Options(format!(
                "insecure registry {bad:?}: name one host (host or host:port); plain HTTP is never allowed for every registry"
            )));
        }
        let creds = DockerConfig::load(opts.docker_config.as_deref())?;
        let ca = opts.ca_file.as_deref().map(read_ca_bundle).transpose()?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("pollen/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| RegistryError::CaBundle {
                path: opts
                    .ca_file
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
                    .to_string(),
                reason: e.to_string(),
            })?;
            http = http.tls_certs_merge(certs);
        }
        let http = http
            .build()
            .map_err(|e| RegistryError::Options(auth::error_chain(&e)))?;
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure_hosts.clone()),
            extra_root_certificates: ca
                .map(|data| {
                    vec![Certificate {
                        encoding: CertificateEncoding::Pem,
                        data,
                    }]
                })
                .unwrap_or_default(),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            // One streamed PUT per blob: far fewer round trips than PATCHing every piece.
            use_monolithic_push: true,
            ..Default::default()
        };
        let oci = Client::try_from(config).map_err(|e| RegistryError::Options(e.to_string()))?;
        Ok(Registry {
            inner: Arc::new(Inner {
                oci,
                http,
                auth: Authenticator::new(creds, opts.insecure_hosts.clone()),
            }),
        })
    }

    /// Whether `host` is reached over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        self.inner.auth.is_insecure(host)
    }

    fn url(&self, r: &Reference, tail: &str) -> String {
        let host = r.resolve_registry();
        format!(
            "{}://{host}/v2/{}/{tail}",
            self.inner.auth.scheme(host),
            r.repository()
        )
    }

    /// Sends an authenticated GET for `r` (see [`auth::Authenticator::send`]).
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        extra: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = r.resolve_registry();
        self.inner
            .auth
            .send(&self.inner.http, host, &scope(r, RegistryOperation::Pull), || {
                extra(self.inner.http.get(url))
            })
            .await
    }

    /// Turns a non-success status into the error it means.
    async fn check(
        &self,
        resp: reqwest::Response,
        op: &'static str,
        what: &'static str,
        r: &Reference,
    ) -> Result<reqwest::Response, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = auth::read_capped(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        let body = auth::quote(&body);
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                what,
                reference: r.whole(),
            },
            StatusCode::FORBIDDEN => RegistryError::Forbidden {
                host: r.resolve_registry().to_string(),
                op,
                reference: r.whole(),
                reason: body,
            },
            _ => RegistryError::Status {
                op,
                reference: r.whole(),
                status: status.as_u16(),
                body,
            },
        })
    }

    /// Prepares oci-client for `op` on `r`: answers the registry's challenge through the authenticator
    /// and hands oci-client the result.
    async fn authenticate(&self, r: &Reference, op: RegistryOperation) -> Result<(), RegistryError> {
        let host = r.resolve_registry();
        let scope = scope(r, op);
        let url = format!("{}://{host}/v2/", self.inner.auth.scheme(host));
        let resp = self
            .inner
            .auth
            .send(&self.inner.http, host, &scope, || self.inner.http.get(&url))
            .await?;
        self.check(resp, "authenticate", "registry", r).await?;
        let auth = match self.inner.auth.presented(host, &scope) {
            Presented::Anonymous => {
                self.inner
                    .oci
                    .store_auth_if_needed(host, &RegistryAuth::Anonymous)
                    .await;
                return Ok(());
            }
            Presented::Bearer(t) => RegistryAuth::Bearer(t),
            Presented::Basic(u, p) => RegistryAuth::Basic(u, p),
        };
        self.inner
            .oci
            .auth(r, &auth, op)
            .await
            .map(|_| ())
            .map_err(|e| self.map_oci_err("authenticate", "registry", r, e))
    }

    fn map_oci_err(
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
        } else if matches!(
            &e,
            OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::ServerError { code: 401, .. }
        ) {
            RegistryError::Unauthorized {
                host: r.resolve_registry().to_string(),
                reason: format!("{op} {}: {e}", r.whole()),
            }
        } else if matches!(&e, OciDistributionError::ServerError { code: 403, .. })
            || matches!(&e, OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| matches!(x.code, OciErrorCode::Denied)))
        {
            RegistryError::Forbidden {
                host: r.resolve_registry().to_string(),
                op,
                reference: r.whole(),
                reason: e.to_string(),
            }
        } else {
            RegistryError::Oci {
                op,
                reference: r.whole(),
                source: e,
            }
        }
    }

    /// Fetches a manifest (image manifest or index), streamed under [`oci::MAX_MANIFEST_LEN`]; returns its
    /// bytes and digest. When `r` names a digest, the bytes are checked against it.
    pub async fn pull_manifest(&self, r: &Reference) -> Result<(Vec<u8>, String), RegistryError> {
        let tail = format!("manifests/{}", r.digest().or(r.tag()).unwrap_or("latest"));
        let url = self.url(r, &tail);
        let resp = self
            .get(r, &url, |b| {
                b.header(
                    ACCEPT,
                    format!("{OCI_MANIFEST_MEDIA_TYPE}, {OCI_INDEX_MEDIA_TYPE}"),
                )
            })
            .await?;
        let resp = self.check(resp, "pull manifest", "manifest", r).await?;
        let body = auth::read_capped(resp, oci::MAX_MANIFEST_LEN)
            .await
            .map_err(|reason| {
                if reason.starts_with("larger than") {
                    RegistryError::TooLarge {
                        what: "manifest",
                        reference: r.whole(),
                        max: oci::MAX_MANIFEST_LEN,
                    }
                } else {
                    RegistryError::Http {
                        host: r.resolve_registry().to_string(),
                        reason,
                    }
                }
            })?;
        let computed = oci::sha256_digest(&body);
        // Trust the bytes, never the registry's digest header.
        if r.digest().is_some_and(|d| d != computed) {
            return Err(RegistryError::DigestMismatch {
                what: "manifest",
                reference: r.whole(),
            });
        }
        Ok((body, computed))
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
        self.inner
            .oci
            .push_manifest_raw(r, bytes, ct)
            .await
            .map_err(|e| self.map_oci_err("push manifest", "manifest", r, e))?;
        Ok(digest)
    }

    /// Pushes a small blob held in memory (skipped if the registry has it). The returned descriptor has an
    /// empty media type: the caller names it.
    pub async fn push_blob(&self, r: &Reference, bytes: Vec<u8>) -> Result<Descriptor, RegistryError> {
        self.authenticate(r, RegistryOperation::Push).await?;
        let digest = oci::sha256_digest(&bytes);
        let size = bytes.len() as u64;
        let exists = self.inner.oci.blob_exists(r, &digest).await.unwrap_or(false);
        if !exists {
            self.inner
                .oci
                .push_blob(r, bytes, &digest)
                .await
                .map_err(|e| self.map_oci_err("push blob", "blob", r, e))?;
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
        if self.inner.oci.blob_exists(r, digest).await.unwrap_or(false) {
            progress(size);
            return Ok(());
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| RegistryError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
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
        self.inner
            .oci
            .push_blob_stream(r, stream, digest, Some(size))
            .await
            .map_err(|e| self.map_oci_err("push blob", "blob", r, e))?;
        Ok(())
    }

    /// Reads a small blob into memory: never more than `max` bytes, nor more than the size its descriptor
    /// names, and only if its bytes match the descriptor's digest.
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
            out.extend_from_slice(piece);
            true
        })
        .await?;
        Ok(out)
    }

    /// Streams a blob through `sink` (which returns `false` to stop: then this returns `TooLarge`). The
    /// blob may not be longer than its descriptor says, and its SHA-256 must match the descriptor's digest
    /// (checked at the end: `DigestMismatch`). Redirects to object storage are followed without
    /// credentials.
    pub async fn stream_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), RegistryError> {
        let blob_ref = at_digest(r, &desc.digest);
        let url = self.url(r, &format!("blobs/{}", desc.digest));
        let resp = self.get(r, &url, |b| b).await?;
        let mut resp = self.check(resp, "pull blob", "blob", &blob_ref).await?;
        let too_large = || RegistryError::TooLarge {
            what: "blob",
            reference: blob_ref.whole(),
            max: desc.size as usize,
        };
        if resp.content_length().is_some_and(|n| n > desc.size) {
            return Err(too_large());
        }
        let mut hasher = sha2::Sha256::new();
        let mut read = 0u64;
        while let Some(piece) = resp.chunk().await.map_err(|e| RegistryError::Http {
            host: r.resolve_registry().to_string(),
            reason: auth::error_chain(&e),
        })? {
            read += piece.len() as u64;
            if read > desc.size || !sink(&piece) {
                return Err(too_large());
            }
            hasher.update(&piece);
        }
        if format!("sha256:{}", hex::encode(hasher.finalize())) != desc.digest {
            return Err(RegistryError::DigestMismatch {
                what: "blob",
                reference: blob_ref.whole(),
            });
        }
        Ok(())
    }

    /// Starts a range GET of bytes `start..end` of the blob `digest` in `r`'s repository, `total` bytes
    /// long; returns the response for the caller to stream (its status is 206, or 200 when the range is
    /// the whole blob). The caller checks what it reads: no digest covers a range.
    pub async fn blob_range(
        &self,
        r: &Reference,
        digest: &str,
        start: u64,
        end: u64,
        total: u64,
    ) -> Result<reqwest::Response, RegistryError> {
        let blob_ref = at_digest(r, digest);
        let url = self.url(r, &format!("blobs/{digest}"));
        let range = format!("bytes={}-{}", start, end.saturating_sub(1));
        let resp = self.get(r, &url, |b| b.header(RANGE, &range)).await?;
        let resp = self.check(resp, "range GET", "blob", &blob_ref).await?;
        let whole = start == 0 && end == total;
        if resp.status() == StatusCode::PARTIAL_CONTENT || (whole && resp.status() == StatusCode::OK) {
            Ok(resp)
        } else {
            Err(RegistryError::Status {
                op: "range GET",
                reference: blob_ref.whole(),
                status: resp.status().as_u16(),
                body: "the registry ignored the Range header".into(),
            })
        }
    }
}

/// The registry flags every Pollen binary takes (`pollen`, the operator, the edge node).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// A registry host (`host` or `host:port`, as in references) to reach over plain HTTP instead of
    /// HTTPS; repeat for more. Only for registries on a trusted network: credentials for it travel in the
    /// clear. There is no wildcard.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (a PEM bundle) to trust for registries, beside the system's roots (which
    /// `SSL_CERT_FILE` replaces where it is set).
    #[arg(long, env = "POLLEN_REGISTRY_CA", value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Docker `config.json` with registry credentials and credential helpers (default:
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, else anonymous).
    #[arg(long, env = "POLLEN_DOCKER_CONFIG", value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The options these flags describe.
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure_hosts: self.insecure_registries.clone(),
            ca_file: self.registry_ca.clone(),
            docker_config: self.docker_config.clone(),
        }
    }
}
