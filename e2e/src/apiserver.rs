//! A real Kubernetes API server (CRD-only) for integration tests, or a real cluster from the environment.
//!
//! [`ApiServer::start`] runs etcd and `crd-apiserver` (built from Debian's archive by
//! `e2e/tools/build-apiserver.sh`) on free ports of 127.0.0.1 with a throwaway PKI made here, waits for
//! `/readyz`, and writes a kubeconfig (admin client certificate, group `system:masters`) into its
//! temporary directory. [`ApiServer::from_env`] uses the cluster named by env `POLLEN_E2E_KUBECONFIG`
//! instead, when set. [`ApiServer::apply_crd`] applies a CRD and returns once its resource is served
//! (the server may answer 429 right after a CRD is Established while its caches warm up).
//!
//! [`ApiServer::start_with`] takes [`ApiServerOptions`]: ValidatingAdmissionPolicies (and bindings) the
//! server enforces on custom resources with the upstream admission plugin (real cel-go), and extra
//! bearer-token users ([`TokenUser`]) with user extras such as `authentication.kubernetes.io/node-name`,
//! as a device holding a bound ServiceAccount token would present. [`ApiServer::client_with_token`] is a
//! client authenticating as such a user.
//!
//! Non-goals: core/v1 (namespaces, pods, nodes, events, secrets), leases, RBAC, admission webhooks and
//! garbage collection do not exist in this server; code under test must degrade clearly without them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use tokio::process::{Child, Command};

use crate::registry::{free_port_on, http_get_status};

/// Env var naming a kubeconfig of a real cluster to use instead of starting a server.
pub const KUBECONFIG_ENV: &str = "POLLEN_E2E_KUBECONFIG";

/// The field manager used for server-side apply by the harness.
pub const FIELD_MANAGER: &str = "pollen-e2e";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors starting, reaching or using the test API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// A needed binary is neither in `.tools/bin` nor on `PATH`.
    #[error("{tool} is not installed (run e2e/tools/build-apiserver.sh)")]
    NotInstalled {
        /// The missing binary.
        tool: &'static str,
    },
    /// Making the throwaway PKI failed.
    #[error("cannot generate the test PKI")]
    Pki(#[source] rcgen::Error),
    /// Creating a directory or writing a file failed.
    #[error("cannot write {path}")]
    Files {
        /// The path that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No free port on 127.0.0.1.
    #[error("no free port on 127.0.0.1")]
    NoFreePort(#[source] std::io::Error),
    /// A process could not be spawned.
    #[error("cannot spawn {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A process exited before it became ready.
    #[error("{what} exited before it was ready ({status}); its log:\n{log}")]
    Exited {
        /// `etcd` or `crd-apiserver`.
        what: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its log.
        log: String,
    },
    /// A process did not become ready in time.
    #[error("{what} not ready after {waited:?} (last probe: {last}); its log:\n{log}")]
    NotReady {
        /// `etcd` or `crd-apiserver`.
        what: &'static str,
        /// How long readiness was waited for.
        waited: Duration,
        /// What the last probe saw.
        last: String,
        /// The tail of its log.
        log: String,
    },
    /// The kubeconfig could not be read or turned into a client config.
    #[error("cannot load kubeconfig {path}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Building the client failed.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// A request to the API server failed.
    #[error("{action} failed")]
    Api {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// A CRD did not become Established (or its resource was not served) in time.
    #[error("CRD {name} not served after {waited:?}: {detail}")]
    CrdNotServed {
        /// The CRD's name.
        name: String,
        /// How long was waited.
        waited: Duration,
        /// The last thing seen.
        detail: String,
    },
    /// A YAML document could not be parsed as a CRD.
    #[error("bad CRD YAML (document {index})")]
    Yaml {
        /// The 0-based document index in the stream.
        index: usize,
        /// The parse error.
        #[source]
        source: serde_yaml::Error,
    },
}

/// A bearer-token user of a local server: one line of its `--token-auth-file`, plus user extras
/// (`--token-extra-file`) such as the `authentication.kubernetes.io/node-name` of a bound ServiceAccount
/// token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUser {
    /// The bearer token.
    pub token: String,
    /// The user name, e.g. `system:serviceaccount:pollen-system:pollen-edge-node`.
    pub name: String,
    /// The user's UID (may be empty).
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// User extras as (key, value); a key given several times has several values.
    pub extra: Vec<(String, String)>,
}

impl TokenUser {
    /// A user `name` authenticated by `token`, with no UID, groups or extras.
    pub fn new(token: impl Into<String>, name: impl Into<String>) -> TokenUser {
        TokenUser {
            token: token.into(),
            name: name.into(),
            ..TokenUser::default()
        }
    }

    /// Adds group `group`.
    pub fn group(mut self, group: impl Into<String>) -> TokenUser {
        self.groups.push(group.into());
        self
    }

    /// Adds the user extra `key` = `value`.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<String>) -> TokenUser {
        self.extra.push((key.into(), value.into()));
        self
    }
}

/// How [`ApiServer::start_with`] sets up a local server; the default is what [`ApiServer::start`] does.
#[derive(Debug, Clone, Default)]
pub struct ApiServerOptions {
    admission_policy: Option<String>,
    token_users: Vec<TokenUser>,
}

impl ApiServerOptions {
    /// ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding objects (`admissionregistration.k8s.io/v1`,
    /// a YAML stream such as `helm template` prints) for the server to enforce on custom resources
    /// (`--admission-policy-file`). They are fixed for the server's life: it has no API to change them.
    pub fn admission_policy(mut self, yaml: impl Into<String>) -> ApiServerOptions {
        self.admission_policy = Some(yaml.into());
        self
    }

    /// Adds a bearer-token user. With any token user the server authorizes every request
    /// (`--authorization-always-allow`: there is no RBAC here), so admission is what refuses them.
    pub fn token_user(mut self, user: TokenUser) -> ApiServerOptions {
        self.token_users.push(user);
        self
    }
}

/// One CSV field as Go's encoding/csv (and so kube-apiserver's token file) reads it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The `--token-auth-file` line of `user`: token,user,uid,"group1,group2" (no fourth field without
/// groups: an empty one would be one group named "").
fn token_line(user: &TokenUser) -> String {
    let mut fields = vec![
        csv_field(&user.token),
        csv_field(&user.name),
        csv_field(&user.uid),
    ];
    if !user.groups.is_empty() {
        fields.push(csv_field(&user.groups.join(",")));
    }
    fields.join(",") + "\n"
}

/// The `--token-extra-file` of `users`: a header comment, then user,key,value lines.
fn token_extras(users: &[TokenUser]) -> String {
    let mut out = String::from(
        "# user,key,value: user extras for token-file users (crd-apiserver --token-extra-file)\n",
    );
    for user in users {
        for (key, value) in &user.extra {
            out.push_str(&format!(
                "{},{},{}\n",
                csv_field(&user.name),
                csv_field(key),
                csv_field(value)
            ));
        }
    }
    out
}

/// A running test API server (etcd + crd-apiserver), or a real cluster from [`KUBECONFIG_ENV`].
/// Processes are killed on drop.
#[derive(Debug)]
pub struct ApiServer {
    kubeconfig: PathBuf,
    token: Option<String>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

/// The throwaway PKI of one test server, as PEM.
struct Pki {
    ca_cert: String,
    server_cert: String,
    server_key: String,
    admin_cert: String,
    admin_key: String,
}

fn make_pki() -> Result<Pki, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pollen-e2e-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)));
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &ca)?;

    Ok(Pki {
        ca_cert: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        admin_cert: admin_cert.pem(),
        admin_key: admin_key.serialize_pem(),
    })
}

/// A kubeconfig with everything embedded: one cluster, the admin user (client certificate) as the
/// current context, and a `token` context using the bearer token.
fn render_kubeconfig(server: &str, pki: &Pki, token: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: pollen-e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
         - name: token\n  user:\n    token: {token}\n\
         contexts:\n- name: admin\n  context:\n    cluster: pollen-e2e\n    user: admin\n\
         - name: token\n  context:\n    cluster: pollen-e2e\n    user: token\n\
         current-context: admin\n",
        ca = b64(&pki.ca_cert),
        cert = b64(&pki.admin_cert),
        key = b64(&pki.admin_key),
    )
}

fn write(path: &Path, contents: &str) -> Result<(), ApiServerError> {
    std::fs::write(path, contents).map_err(|source| ApiServerError::Files {
        path: path.to_path_buf(),
        source,
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<Child, ApiServerError> {
    let files_err = |source| ApiServerError::Files {
        path: log.to_path_buf(),
        source,
    };
    let out = std::fs::File::create(log).map_err(files_err)?;
    let err = out.try_clone().map_err(files_err)?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ApiServerError::Spawn {
            program: program.to_path_buf(),
            source,
        })
}

fn free_port() -> Result<u16, ApiServerError> {
    free_port_on(Ipv4Addr::LOCALHOST.into()).map_err(ApiServerError::NoFreePort)
}

fn is_throttled_or_unserved(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 429 | 404 | 503))
}

/// Retries `f` while the server answers 429 (too many requests) or 503, for up to 15 s.
///
/// Right after a CRD becomes Established, the first requests for its resource may get 429 while the
/// server's caches warm up.
pub async fn retry_throttled<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Err(kube::Error::Api(s))
                if matches!(s.code, 429 | 503) && started.elapsed() < Duration::from_secs(15) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

impl ApiServer {
    /// Starts etcd and crd-apiserver on free ports of 127.0.0.1 and waits until `/readyz` is ok.
    pub async fn start() -> Result<ApiServer, ApiServerError> {
        Self::start_with(ApiServerOptions::default()).await
    }

    /// [`start`](Self::start) with `options`: admission policies to enforce, extra token users.
    pub async fn start_with(options: ApiServerOptions) -> Result<ApiServer, ApiServerError> {
        let apiserver_bin = crate::tools::find("crd-apiserver").ok_or(ApiServerError::NotInstalled {
            tool: "crd-apiserver",
        })?;
        let etcd_bin = crate::tools::find("etcd").ok_or(ApiServerError::NotInstalled { tool: "etcd" })?;
        let dir = tempfile::Builder::new()
            .prefix("pollen-apiserver-")
            .tempdir()
            .map_err(|source| ApiServerError::Files {
                path: std::env::temp_dir(),
                source,
            })?;
        let d = dir.path();
        let pki = make_pki().map_err(ApiServerError::Pki)?;
        let token = format!(
            "pollen-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_nanos())
                .unwrap_or_default()
                ^ u128::from(std::process::id())
        );
        write(&d.join("ca.crt"), &pki.ca_cert)?;
        write(&d.join("server.crt"), &pki.server_cert)?;
        write(&d.join("server.key"), &pki.server_key)?;
        let mut tokens = format!("{token},token-admin,uid-1,\"system:masters\"\n");
        for user in &options.token_users {
            tokens.push_str(&token_line(user));
        }
        write(&d.join("tokens.csv"), &tokens)?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut server = ApiServer {
            kubeconfig: d.join("kubeconfig"),
            token: Some(token.clone()),
            etcd: None,
            apiserver: None,
            dir: None,
        };
        let etcd_log = d.join("etcd.log");
        let etcd_args: Vec<String> = vec![
            "--name=pollen-e2e".into(),
            format!("--data-dir={}", d.join("etcd-data").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=pollen-e2e={peer_url}"),
            "--log-level=warn".into(),
            "--unsafe-no-fsync".into(),
        ];
        server.etcd = Some(spawn_logged(&etcd_bin, &etcd_args, &etcd_log)?);
        let etcd_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_port));
        wait_until("etcd", &mut server.etcd, &etcd_log, READY_TIMEOUT, || async {
            match http_get_status(etcd_addr, "/health").await {
                Ok(200) => Ok(()),
                Ok(code) => Err(format!("HTTP {code}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;

        let api_log = d.join("apiserver.log");
        let mut api_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--tls-cert-file={}", d.join("server.crt").display()),
            format!("--tls-private-key-file={}", d.join("server.key").display()),
            format!("--client-ca-file={}", d.join("ca.crt").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
        ];
        if !options.token_users.is_empty() {
            write(&d.join("token-extras.csv"), &token_extras(&options.token_users))?;
            api_args.push(format!(
                "--token-extra-file={}",
                d.join("token-extras.csv").display()
            ));
            api_args.push("--authorization-always-allow".into());
        }
        if let Some(policy) = &options.admission_policy {
            write(&d.join("admission-policy.yaml"), policy)?;
            api_args.push(format!(
                "--admission-policy-file={}",
                d.join("admission-policy.yaml").display()
            ));
        }
        server.apiserver = Some(spawn_logged(&apiserver_bin, &api_args, &api_log)?);
        write(
            &server.kubeconfig,
            &render_kubeconfig(&format!("https://127.0.0.1:{api_port}"), &pki, &token),
        )?;
        server.dir = Some(dir);
        let client = server.client().await?;
        wait_until(
            "crd-apiserver",
            &mut server.apiserver,
            &api_log,
            READY_TIMEOUT,
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    match client.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => Ok(()),
                        Ok(body) => Err(body),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await?;
        Ok(server)
    }

    /// Uses the cluster of the kubeconfig in env [`KUBECONFIG_ENV`] when set, else [`start`](Self::start)s one.
    pub async fn from_env() -> Result<ApiServer, ApiServerError> {
        match std::env::var_os(KUBECONFIG_ENV) {
            Some(path) if !path.is_empty() => Ok(ApiServer {
                kubeconfig: PathBuf::from(path),
                token: None,
                etcd: None,
                apiserver: None,
                dir: None,
            }),
            _ => Self::start().await,
        }
    }

    /// True when this is a server started here (not a cluster from [`KUBECONFIG_ENV`]).
    pub fn is_local(&self) -> bool {
        self.dir.is_some()
    }

    /// The kubeconfig file (admin context current; a `token` context too for a local server).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The admin bearer token of a local server (group `system:masters`), `None` for an outside cluster.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The directory holding the local server's logs and PKI (`etcd.log`, `apiserver.log`, `ca.crt`).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// A client for the admin user, from the kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, ApiServerError> {
        kube::Client::try_from(self.config().await?).map_err(ApiServerError::Client)
    }

    /// A client of the kubeconfig's cluster that authenticates with bearer token `token` only (no
    /// client certificate), e.g. a [`TokenUser`]'s: the identity of a device holding that token.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, ApiServerError> {
        let mut config = self.config().await?;
        config.auth_info = AuthInfo {
            token: Some(token.to_string().into()),
            ..AuthInfo::default()
        };
        kube::Client::try_from(config).map_err(ApiServerError::Client)
    }

    async fn config(&self) -> Result<kube::Config, ApiServerError> {
        let kc_err = |source| ApiServerError::Kubeconfig {
            path: self.kubeconfig.clone(),
            source,
        };
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).map_err(kc_err)?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(kc_err)
    }

    /// Applies `crd` (server-side apply, forced), waits until it is Established and its resource
    /// answers a list, retrying the 429s the server gives while its caches warm up.
    pub async fn apply_crd(&self, crd: &CustomResourceDefinition) -> Result<(), ApiServerError> {
        let client = self.client().await?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut body = crd.clone();
        body.metadata.managed_fields = None;
        body.metadata.resource_version = None;
        body.status = None;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&body);
        retry_throttled(|| crds.patch(&name, &pp, &patch))
            .await
            .map_err(|source| ApiServerError::Api {
                action: format!("applying CRD {name}"),
                source,
            })?;

        let started = Instant::now();
        let not_served = |detail: String| ApiServerError::CrdNotServed {
            name: name.clone(),
            waited: started.elapsed(),
            detail,
        };
        // 1. Established
        loop {
            let current =
                retry_throttled(|| crds.get(&name))
                    .await
                    .map_err(|source| ApiServerError::Api {
                        action: format!("reading CRD {name}"),
                        source,
                    })?;
            let established = current
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            if started.elapsed() > ESTABLISH_TIMEOUT {
                return Err(not_served("never Established".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // 2. served: a list of the new resource succeeds (429/404/503 while caches warm up)
        let Some(version) = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .or_else(|| crd.spec.versions.iter().find(|v| v.served))
        else {
            return Ok(());
        };
        let ar = ApiResource {
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            api_version: format!("{}/{}", crd.spec.group, version.name),
            kind: crd.spec.names.kind.clone(),
            plural: crd.spec.names.plural.clone(),
        };
        let api: Api<DynamicObject> = Api::all_with(client, &ar);
        loop {
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => return Ok(()),
                Err(e) if is_throttled_or_unserved(&e) && started.elapsed() < ESTABLISH_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(not_served(e.to_string())),
            }
        }
    }

    /// Applies every CRD in a YAML stream (documents separated by `---`; empty documents skipped),
    /// as [`apply_crd`](Self::apply_crd) does. Returns the CRD names in order.
    pub async fn apply_crds_yaml(&self, yaml: &str) -> Result<Vec<String>, ApiServerError> {
        let crds = parse_crds(yaml)?;
        let mut names = Vec::with_capacity(crds.len());
        for crd in &crds {
            self.apply_crd(crd).await?;
            names.push(crd.metadata.name.clone().unwrap_or_default());
        }
        Ok(names)
    }

    /// Kills the API server, then etcd, and waits for both. Does nothing for an outside cluster.
    pub async fn stop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill().await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [self.apiserver.as_mut(), self.etcd.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.start_kill();
        }
    }
}

/// Parses a multi-document YAML stream into CRDs, skipping empty documents.
pub fn parse_crds(yaml: &str) -> Result<Vec<CustomResourceDefinition>, ApiServerError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|source| ApiServerError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_yaml::from_value(value).map_err(|source| ApiServerError::Yaml { index, source })?;
        out.push(crd);
    }
    Ok(out)
}

/// Polls `probe` until it succeeds, failing early when `child` exits and after `timeout`.
async fn wait_until<F, Fut>(
    what: &'static str,
    child: &mut Option<Child>,
    log: &Path,
    timeout: Duration,
    mut probe: F,
) -> Result<(), ApiServerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            *child = None;
            return Err(ApiServerError::Exited {
                what,
                status,
                log: log_tail(log),
            });
        }
        let last = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if started.elapsed() >= timeout {
            return Err(ApiServerError::NotReady {
                what,
                waited: started.elapsed(),
                last,
                log: log_tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_and_kubeconfig_load_into_a_client_config() {
        let pki = make_pki().unwrap();
        assert!(pki.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.admin_key.contains("PRIVATE KEY"));
        let kc = render_kubeconfig("https://127.0.0.1:1", &pki, "tok");
        let parsed = Kubeconfig::from_yaml(&kc).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("admin"));
        assert_eq!(parsed.contexts.len(), 2);
        assert_eq!(parsed.auth_infos.len(), 2);
    }

    #[test]
    fn token_users_become_token_file_and_extra_file_lines() {
        let user = TokenUser::new("tok-1", "system:serviceaccount:ns:sa")
            .group("system:serviceaccounts")
            .group("system:serviceaccounts:ns")
            .extra("authentication.kubernetes.io/node-name", "gw-1")
            .extra("example.com/odd", "a,\"b\"");
        assert_eq!(
            token_line(&user),
            "tok-1,system:serviceaccount:ns:sa,,\"system:serviceaccounts,system:serviceaccounts:ns\"\n"
        );
        assert_eq!(token_line(&TokenUser::new("t", "u")), "t,u,\n");
        let extras = token_extras(std::slice::from_ref(&user));
        let lines: Vec<&str> = extras.lines().collect();
        assert!(lines[0].starts_with('#'));
        assert_eq!(
            lines[1..],
            [
                "system:serviceaccount:ns:sa,authentication.kubernetes.io/node-name,gw-1",
                "system:serviceaccount:ns:sa,example.com/odd,\"a,\"\"b\"\"\"",
            ]
        );
    }

    #[test]
    fn parses_a_crd_stream_and_rejects_garbage() {
        let yaml = "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                    metadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  \
                    names: {plural: widgets, kind: Widget}\n  versions: []\n---\n";
        let crds = parse_crds(yaml).unwrap();
        assert_eq!(crds.len(), 1);
        assert_eq!(crds[0].spec.names.plural, "widgets");
        let err = parse_crds("kind: [unclosed").unwrap_err();
        assert!(matches!(err, ApiServerError::Yaml { index: 0, .. }));
    }
}
