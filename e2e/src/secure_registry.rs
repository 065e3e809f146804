//! Debian's `docker-registry` configured the way users run registries: TLS with a test CA, and either
//! htpasswd basic auth or the distribution token protocol. Optionally, blob GETs are redirected (307) to
//! an object store, through distribution's own `redirect` storage middleware.
//!
//! The registry is always the real one. Two small HTTPS servers stand in for what distribution does not
//! ship, and each says so:
//! - [`TokenIssuer`]: the token server of the distribution token protocol (distribution ships none). It
//!   checks basic credentials against its own user table, grants the intersection of the asked and the
//!   allowed actions, and signs a JWT (ES256, its certificate in `x5c`) that the registry verifies
//!   against the issuer certificate in its `rootcertbundle`. Every request it receives is recorded.
//! - [`ObjectStore`]: what a redirect points at (S3 or a CDN in production). It serves the registry's
//!   storage files by path, with `Range`, and records every request, so tests can check that no
//!   credential followed a redirect.
//!
//! Users: [`PUSHER`] may pull and push, [`PULLER`] may only pull (the devices' credential).
//!
//! Non-goals: OAuth2 refresh tokens at the issuer, HTTP/2, keep-alive in the stand-ins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::registry::{Registry, RegistryBuilder};

/// The user who may push (the publisher's and the operator's credential).
pub const PUSHER: (&str, &str) = ("pusher", "push-secret");
/// The user who may only pull (the devices' credential).
pub const PULLER: (&str, &str) = ("puller", "pull-secret");
/// The `service` of the token registry.
pub const SERVICE: &str = "pollen-test-registry";
const ISSUER: &str = "pollen-test-issuer";

/// How the registry authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// `auth: htpasswd` (bcrypt), HTTP basic auth.
    Htpasswd,
    /// `auth: token`, with a [`TokenIssuer`].
    Token,
}

/// How to start a [`SecureRegistry`].
#[derive(Clone, Debug)]
pub struct SecureOptions {
    /// The auth mode.
    pub auth: AuthMode,
    /// Redirect blob GETs to an [`ObjectStore`].
    pub redirect: bool,
    /// The `expires_in` the issuer announces.
    pub token_lifetime: Duration,
    /// The `exp` the issuer writes into tokens (distribution allows 60 s of leeway past it).
    pub token_exp: Duration,
    /// Announce the realm as `http://` (the issuer still listens with TLS): a client must refuse to send
    /// credentials there.
    pub plain_http_realm: bool,
}

impl SecureOptions {
    /// `auth` with defaults: no redirect, 5-minute tokens.
    pub fn new(auth: AuthMode) -> Self {
        SecureOptions {
            auth,
            redirect: false,
            token_lifetime: Duration::from_secs(300),
            token_exp: Duration::from_secs(300),
            plain_http_realm: false,
        }
    }
}

/// One request a stand-in received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line's method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// A TLS registry with auth, its CA, and its stand-ins. Dropping it stops everything.
pub struct SecureRegistry {
    /// The real registry.
    pub registry: Registry,
    /// The test CA (PEM) that signed every server certificate here.
    pub ca_file: PathBuf,
    /// The token issuer, in token mode.
    pub issuer: Option<TokenIssuer>,
    /// The redirect target, when redirects are on.
    pub store: Option<ObjectStore>,
    dir: tempfile::TempDir,
}

struct Tls {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Tls {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "pollen test registry CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key)?;
        Ok(Tls {
            ca_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    fn server(&self) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> anyhow::Result<PathBuf> {
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_path_buf())
}

impl SecureRegistry {
    /// Starts the stand-ins it needs, then the registry with TLS and `opts.auth`.
    pub async fn start(opts: SecureOptions) -> anyhow::Result<SecureRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("pollen-secure-registry-")
            .tempdir()?;
        let d = dir.path();
        let tls = Tls::new()?;
        let ca_file = write(&d.join("ca.pem"), &tls.ca_pem)?;
        let (cert, key) = tls.server()?;
        let cert_file = write(&d.join("registry.pem"), &cert)?;
        let key_file = write(&d.join("registry.key"), &key)?;
        let server_tls = server_config(&cert, &key)?;

        let mut extra = String::new();
        let issuer = match opts.auth {
            AuthMode::Htpasswd => {
                let mut lines = String::new();
                for (u, p) in [PUSHER, PULLER] {
                    lines.push_str(&format!("{u}:{}\n", bcrypt::hash(p, 4)?));
                }
                let file = write(&d.join("htpasswd"), lines)?;
                extra.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: pollen-test\n    path: \"{}\"\n",
                    file.display()
                ));
                None
            }
            AuthMode::Token => {
                let issuer = TokenIssuer::start(server_tls.clone(), &opts).await?;
                let bundle = write(&d.join("token-signer.pem"), &issuer.signer_pem)?;
                let scheme = if opts.plain_http_realm { "http" } else { "https" };
                extra.push_str(&format!(
                    "auth:\n  token:\n    realm: \"{scheme}://{}/token\"\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: \"{}\"\n",
                    issuer.addr,
                    bundle.display()
                ));
                Some(issuer)
            }
        };
        let registry_builder = RegistryBuilder::default();
        let storage_hint = d.join("storage");
        let store = if opts.redirect {
            let store = ObjectStore::start(server_tls.clone(), storage_hint.clone()).await?;
            extra.push_str(&format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: \"https://{}/\"\n",
                store.addr
            ));
            Some(store)
        } else {
            None
        };
        let registry = registry_builder
            .storage_dir(storage_hint)
            .tls(cert_file, key_file)
            .extra_config(extra)
            .start()
            .await
            .context("start the TLS registry")?;
        Ok(SecureRegistry {
            registry,
            ca_file,
            issuer,
            store,
            dir,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.registry.host()
    }

    /// Writes a Docker `config.json` for this registry with `user` (or no entry), returns its path.
    pub fn docker_config(&self, user: Option<(&str, &str)>, name: &str) -> anyhow::Result<PathBuf> {
        docker_config_file(&self.host(), self.dir.path(), user, name)
    }

    /// A folder for the test's own files, removed with the registry.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Rotates the token issuer's signing key and restarts the registry with the new certificate as its
    /// only trusted signer: every token issued before is refused from now on (a token-server key
    /// rotation, as operators do it).
    pub async fn rotate_token_key(&mut self) -> anyhow::Result<()> {
        let issuer = self.issuer.as_mut().context("not a token registry")?;
        let pem = issuer.rotate()?;
        write(&self.dir.path().join("token-signer.pem"), pem)?;
        self.registry.restart().await?;
        Ok(())
    }

    /// The registry, and the rest (CA, stand-ins, files) that must live as long as it.
    pub fn into_parts(self) -> (Registry, SecureParts) {
        let host = self.host();
        (
            self.registry,
            SecureParts {
                host,
                ca_file: self.ca_file,
                issuer: self.issuer,
                store: self.store,
                dir: self.dir,
            },
        )
    }
}

/// What a [`SecureRegistry`] holds beside the registry process.
pub struct SecureParts {
    host: String,
    /// The test CA (PEM).
    pub ca_file: PathBuf,
    /// The token issuer, in token mode.
    pub issuer: Option<TokenIssuer>,
    /// The redirect target, when redirects are on.
    pub store: Option<ObjectStore>,
    dir: tempfile::TempDir,
}

impl SecureParts {
    /// Writes a Docker `config.json` for the registry with `user` (or no entry), returns its path.
    pub fn docker_config(&self, user: Option<(&str, &str)>, name: &str) -> anyhow::Result<PathBuf> {
        docker_config_file(&self.host, self.dir.path(), user, name)
    }
}

fn docker_config_file(
    host: &str,
    dir: &Path,
    user: Option<(&str, &str)>,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let body = match user {
        Some((u, p)) => serde_json::json!({"auths": {
            host: {"auth": base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))}
        }}),
        None => serde_json::json!({"auths": {}}),
    };
    write(&dir.join(name), serde_json::to_vec(&body)?)
}

fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, v: serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(&v).unwrap_or_default(),
        }
    }
}

type Handler = Arc<dyn Fn(&Head) -> Answer + Send + Sync>;

/// Serves one request per TLS connection with `handler`, recording each into `seen`.
async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (acceptor, seen, handler) = (acceptor.clone(), seen.clone(), handler.clone());
        tokio::spawn(async move {
            let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let mut buf = Vec::new();
            let mut piece = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut piece)).await {
                    Ok(Ok(n)) if n > 0 && buf.len() < 64 * 1024 => buf.extend_from_slice(&piece[..n]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            let mut lines = text.split("\r\n");
            let mut first = lines.next().unwrap_or_default().split(' ');
            let head = Head {
                method: first.next().unwrap_or_default().to_string(),
                target: first.next().unwrap_or_default().to_string(),
                headers: lines
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect(),
            };
            seen.lock().expect("seen").push(Seen {
                method: head.method.clone(),
                target: head.target.clone(),
                authorization: head.header("authorization").map(str::to_string),
            });
            let a = handler(&head);
            let mut out = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                a.status,
                a.body.len()
            );
            for (k, v) in &a.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            if head.method != "HEAD" {
                bytes.extend_from_slice(&a.body);
            }
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        });
    }
}

/// The stand-in token server (see the module docs).
pub struct TokenIssuer {
    /// Where it listens (HTTPS).
    pub addr: SocketAddr,
    /// The certificate (PEM) whose key signs tokens: the registry's `rootcertbundle`.
    pub signer_pem: String,
    signer: Arc<Mutex<Signer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The token signing key and its certificate (DER, base64, for `x5c`).
struct Signer {
    key: KeyPair,
    x5c: String,
}

impl Signer {
    /// A new key and self-signed certificate; returns it with the certificate's PEM.
    fn generate() -> anyhow::Result<(Signer, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "pollen test token signer");
        let cert = p.self_signed(&key)?;
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        Ok((Signer { key, x5c }, cert.pem()))
    }
}

impl TokenIssuer {
    async fn start(tls: Arc<rustls::ServerConfig>, opts: &SecureOptions) -> anyhow::Result<TokenIssuer> {
        let (signer, signer_pem) = Signer::generate()?;
        let signer = Arc::new(Mutex::new(signer));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lifetime = opts.token_lifetime.as_secs();
        let exp = opts.token_exp.as_secs();
        let s = signer.clone();
        let handler: Handler = Arc::new(move |h: &Head| {
            let s = s.lock().expect("signer");
            issue(h, &s.key, &s.x5c, lifetime, exp)
        });
        let task = tokio::spawn(serve(listener, tls, seen.clone(), handler));
        Ok(TokenIssuer {
            addr,
            signer_pem,
            signer,
            seen,
            task,
        })
    }

    /// Signs with a new key from now on; returns the new certificate (PEM) for the registry's bundle.
    fn rotate(&mut self) -> anyhow::Result<String> {
        let (signer, pem) = Signer::generate()?;
        *self.signer.lock().expect("signer") = signer;
        self.signer_pem = pem.clone();
        Ok(pem)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The actions `user` may take.
fn allowed(user: &str) -> &'static [&'static str] {
    if user == PUSHER.0 {
        &["pull", "push"]
    } else if user == PULLER.0 {
        &["pull"]
    } else {
        &[]
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An ASN.1 DER ECDSA signature (`SEQUENCE { r INTEGER, s INTEGER }`) as JOSE's 64-byte `r || s`.
fn der_to_jose(der: &[u8]) -> Option<Vec<u8>> {
    fn int(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&len, rest) = rest.split_first()?;
        (tag == 0x02 && rest.len() >= len as usize).then(|| rest.split_at(len as usize))
    }
    let body = der.strip_prefix(&[0x30])?;
    let (&len, body) = body.split_first()?;
    let body = body.get(..len as usize)?;
    let (r, rest) = int(body)?;
    let (s, _) = int(rest)?;
    let mut out = Vec::with_capacity(64);
    for x in [r, s] {
        let x = &x[x.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0, 32 - x.len()));
        out.extend_from_slice(x);
    }
    Some(out)
}

fn issue(h: &Head, key: &KeyPair, x5c: &str, lifetime: u64, exp: u64) -> Answer {
    let deny = |why: &str| Answer::json(401, serde_json::json!({"details": why}));
    let Some(basic) = h.header("authorization").and_then(|a| a.strip_prefix("Basic ")) else {
        return deny("credentials required");
    };
    let Some((user, pass)) = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())))
    else {
        return deny("malformed credentials");
    };
    if ![PUSHER, PULLER].iter().any(|(u, p)| *u == user && *p == pass) {
        return deny("wrong user or password");
    }
    let query = h.target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", v)) = pair.split_once('=') else {
            continue;
        };
        let v = v
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2C", ",")
            .replace("%2c", ",")
            .replace("%2F", "/")
            .replace("%2f", "/");
        let mut parts = v.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| allowed(&user).contains(a))
            .collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user, "aud": SERVICE,
        "exp": now + exp, "nbf": now.saturating_sub(5), "iat": now,
        "jti": format!("{now}-{}", rand_id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).unwrap_or_default()),
        b64url(&serde_json::to_vec(&claims).unwrap_or_default())
    );
    use rcgen::SigningKey as _;
    let Some(sig) = key
        .sign(signing_input.as_bytes())
        .ok()
        .and_then(|d| der_to_jose(&d))
    else {
        return Answer::json(500, serde_json::json!({"details": "signing failed"}));
    };
    let token = format!("{signing_input}.{}", b64url(&sig));
    Answer::json(
        200,
        serde_json::json!({"token": token, "access_token": token, "expires_in": lifetime}),
    )
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    h.finish()
}

/// The stand-in object store (see the module docs).
pub struct ObjectStore {
    /// Where it listens (HTTPS).
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ObjectStore {
    async fn start(tls: Arc<rustls::ServerConfig>, root: PathBuf) -> anyhow::Result<ObjectStore> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(move |h: &Head| serve_file(h, &root));
        let task = tokio::spawn(serve(listener, tls, seen.clone(), handler));
        Ok(ObjectStore { addr, seen, task })
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve_file(h: &Head, root: &Path) -> Answer {
    let path = h.target.split('?').next().unwrap_or_default();
    if path.contains("..") {
        return Answer::json(400, serde_json::json!({}));
    }
    let Ok(data) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
        return Answer::json(404, serde_json::json!({}));
    };
    let total = data.len() as u64;
    let range = h
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| {
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                total.checked_sub(1)?
            } else {
                b.parse().ok()?
            };
            (a <= b && b < total).then_some((a, b))
        });
    match range {
        Some((a, b)) => Answer {
            status: 206,
            headers: vec![("Content-Range".into(), format!("bytes {a}-{b}/{total}"))],
            body: data[a as usize..=b as usize].to_vec(),
        },
        None => Answer {
            status: 200,
            headers: Vec::new(),
            body: data,
        },
    }
}

/// A hostile registry (a test stand-in, not distribution): over TLS with the given CA, `/v2/` answers
/// 200, and every manifest or blob GET answers 200 with a `Content-Length` of `claimed` bytes and then
/// streams zeros until the client hangs up (at most `claimed`). A client must stop reading at its own
/// cap, not at the server's say-so.
pub struct HostileRegistry {
    /// Where it listens (HTTPS).
    pub addr: SocketAddr,
    /// The CA (PEM) of its certificate.
    pub ca_file: PathBuf,
    /// Bytes written to clients so far, over every connection.
    pub sent: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl HostileRegistry {
    /// Starts it; `claimed` is the size every object claims to have.
    pub async fn start(claimed: u64, omit_length: bool) -> anyhow::Result<HostileRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("pollen-hostile-registry-")
            .tempdir()?;
        let tls = Tls::new()?;
        let ca_file = write(&dir.path().join("ca.pem"), &tls.ca_pem)?;
        let (cert, key) = tls.server()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&cert, &key)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut piece = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut piece).await {
                            Ok(n) if n > 0 && buf.len() < 64 * 1024 => buf.extend_from_slice(&piece[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    if head.starts_with("GET /v2/ ") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                            .await;
                        return;
                    }
                    let length = if omit_length {
                        String::new()
                    } else {
                        format!("Content-Length: {claimed}\r\n")
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}Connection: close\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let zeros = vec![b' '; 64 * 1024];
                    let mut left = claimed;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        if s.write_all(&zeros[..n]).await.is_err() {
                            return;
                        }
                        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        left -= n as u64;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(HostileRegistry {
            addr,
            ca_file,
            sent,
            task,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_signatures_become_jose() {
        // r = 1, s = 0x80 (a leading zero byte in DER keeps it positive).
        let der = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80];
        let j = der_to_jose(&der).unwrap();
        assert_eq!(j.len(), 64);
        assert_eq!(j[31], 1);
        assert_eq!(j[63], 0x80);
        assert!(j[..31].iter().all(|&b| b == 0));
        assert!(der_to_jose(&[0x31, 0]).is_none());
    }
}
