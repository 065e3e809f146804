//! Registry credentials from a Docker `config.json`, found the way `docker` and `cosign` find them: a
//! credential helper named for the host in `credHelpers`, else the one named by `credsStore`, else the
//! inline `auths` entry (`auth`, `username`/`password` or `identitytoken`), else none (anonymous).
//!
//! Helpers run as `docker-credential-<name> get` with the server address on standard input, as the Docker
//! credential-helper protocol says; a helper whose binary is missing is an error that names it, not a
//! silent fall-back to anonymous access.
//!
//! Non-goals: storing or erasing credentials, `docker login`, per-repository entries (the key is the host).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

use super::RegistryError;

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(20);
/// The most a helper may print.
const HELPER_MAX_OUTPUT: usize = 64 * 1024;
/// The largest Docker config file read.
const MAX_CONFIG_LEN: u64 = 4 * 1024 * 1024;

/// A credential for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or a personal access token as the password).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the registry's token endpoint.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// The credentials a Docker config file names.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    /// The file they came from (for messages); `None` when no file was found.
    path: Option<PathBuf>,
    auths: BTreeMap<String, Credential>,
    helpers: BTreeMap<String, String>,
    store: Option<String>,
    /// `PATH` to look helpers up in, instead of the process's own.
    helper_path: Option<std::ffi::OsString>,
}

/// `docker.io`, `index.docker.io` and `registry-1.docker.io` are one registry; every other host is
/// itself, without scheme or path.
pub fn normalise_host(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

impl DockerConfig {
    /// Reads `explicit`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; no file at the
    /// default places means no credentials. An explicit file that cannot be read is an error.
    pub fn load(explicit: Option<&Path>) -> Result<Self, RegistryError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let dir = std::env::var_os("DOCKER_CONFIG")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
                match dir.map(|d| d.join("config.json")) {
                    Some(p) if p.exists() => p,
                    _ => return Ok(DockerConfig::default()),
                }
            }
        };
        let err = |reason: String| RegistryError::DockerConfig {
            path: path.display().to_string(),
            reason,
        };
        let len = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?.len();
        if len > MAX_CONFIG_LEN {
            return Err(err(format!("larger than {MAX_CONFIG_LEN} bytes")));
        }
        let text = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        let mut cfg = DockerConfig::parse(&text).map_err(err)?;
        cfg.path = Some(path);
        Ok(cfg)
    }

    /// Parses a Docker config file's `auths`, `credHelpers` and `credsStore`.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
            identitytoken: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Config {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
            #[serde(default)]
            cred_helpers: BTreeMap<String, String>,
            #[serde(default)]
            creds_store: Option<String>,
        }
        let cfg: Config = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let valid_helper = |h: &str| {
            !h.is_empty()
                && h.len() <= 64
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        let mut out = DockerConfig::default();
        for (key, e) in cfg.auths {
            let cred = if let Some(a) = e.auth.filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|_| format!("{key}: auth is not base64"))?;
                let s = String::from_utf8(raw).map_err(|_| format!("{key}: auth is not UTF-8"))?;
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                Credential::Basic {
                    username: u.into(),
                    password: p.into(),
                }
            } else if let Some(t) = e.identitytoken.filter(|t| !t.is_empty()) {
                Credential::IdentityToken(t)
            } else if let (Some(u), Some(p)) = (e.username, e.password) {
                Credential::Basic {
                    username: u,
                    password: p,
                }
            } else {
                continue;
            };
            out.auths.insert(normalise_host(&key), cred);
        }
        for (host, helper) in cfg.cred_helpers {
            if !valid_helper(&helper) {
                return Err(format!("credHelpers.{host}: {helper:?} is not a helper name"));
            }
            out.helpers.insert(normalise_host(&host), helper);
        }
        if let Some(s) = cfg.creds_store.filter(|s| !s.is_empty()) {
            if !valid_helper(&s) {
                return Err(format!("credsStore: {s:?} is not a helper name"));
            }
            out.store = Some(s);
        }
        Ok(out)
    }

    /// Looks credential helpers up in `path` (a `PATH`-style list) instead of the process's `PATH`.
    pub fn with_helper_path(mut self, path: impl Into<std::ffi::OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    /// The file the credentials came from, for messages.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "no Docker config file".into(),
        }
    }

    /// The credential helper that answers for `host`, if any.
    pub fn helper_for(&self, host: &str) -> Option<&str> {
        let host = normalise_host(host);
        self.helpers
            .get(&host)
            .or(self.store.as_ref())
            .map(String::as_str)
    }

    /// Whether a credential could exist for `host` (inline or through a helper).
    pub fn has_entry(&self, host: &str) -> bool {
        self.helper_for(host).is_some() || self.auths.contains_key(&normalise_host(host))
    }

    /// The credential for `host`: from its helper when one is configured (falling back to an inline entry
    /// when the helper has none), else the inline entry, else `None`. A config read from a file is read
    /// again first (it is small, and this runs only when a registry challenges).
    pub async fn lookup(&self, host: &str) -> Result<Option<Credential>, RegistryError> {
        // The file is read again: a rotated Secret (a new mounted file) heals without a restart.
        if let Some(path) = &self.path {
            let fresh = DockerConfig::load(Some(path))?;
            let fresh = DockerConfig {
                helper_path: self.helper_path.clone(),
                ..fresh
            };
            return Box::pin(fresh.lookup_parsed(host)).await;
        }
        self.lookup_parsed(host).await
    }

    async fn lookup_parsed(&self, host: &str) -> Result<Option<Credential>, RegistryError> {
        let key = normalise_host(host);
        if let Some(helper) = self.helper_for(&key) {
            // Docker Hub's credentials are stored under its historical v1 address.
            let server = if key == "docker.io" {
                "https://index.docker.io/v1/".to_string()
            } else {
                key.clone()
            };
            if let Some(c) = run_helper(helper, &server, self.helper_path.as_deref()).await? {
                return Ok(Some(c));
            }
        }
        Ok(self.auths.get(&key).cloned())
    }
}

/// Runs `docker-credential-<helper> get` for `server`; `Ok(None)` when the helper has no credential for it.
async fn run_helper(
    helper: &str,
    server: &str,
    path: Option<&std::ffi::OsStr>,
) -> Result<Option<Credential>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let err = |reason: String| RegistryError::CredentialHelper {
        helper: program.clone(),
        host: server.to_string(),
        reason,
    };
    let mut cmd = tokio::process::Command::new(&program);
    if let Some(p) = path {
        // A changed PATH is also where the program is looked up.
        cmd.env("PATH", p);
    }
    let mut child = cmd
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err(format!(
                "{program} is not installed (the Docker config names it as a credential helper)"
            )),
            _ => err(e.to_string()),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| err(format!("writing to it: {e}")))?;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| err(format!("no answer within {HELPER_TIMEOUT:?}")))?
        .map_err(|e| err(e.to_string()))?;
    parse_helper_output(out.status.success(), &out.stdout, &out.stderr).map_err(err)
}

/// Reads a helper's answer: its JSON `{"Username": …, "Secret": …}` on success, and "not found" on failure
/// as no credential. A user name of `<token>` marks an identity token.
pub fn parse_helper_output(
    success: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<Credential>, String> {
    let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(512)]).trim().to_string();
    if !success {
        let said = format!("{} {}", text(stdout), text(stderr));
        if said.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(format!("it failed: {}", said.trim()));
    }
    if stdout.len() > HELPER_MAX_OUTPUT {
        return Err(format!("its answer is larger than {HELPER_MAX_OUTPUT} bytes"));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: Answer =
        serde_json::from_slice(stdout).map_err(|e| format!("its answer is not the helper JSON: {e}"))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if a.username == "<token>" {
        Credential::IdentityToken(a.secret)
    } else {
        Credential::Basic {
            username: a.username,
            password: a.secret,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn inline_auths() {
        let cfg = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other":{"username":"a","password":"b"},"tok.example":{"identitytoken":"rt"},"empty":{}}}"#;
        let c = DockerConfig::parse(cfg).unwrap();
        assert_eq!(c.auths.get("reg.example:5000"), Some(&basic("user", "pass")));
        assert_eq!(c.auths.get("other"), Some(&basic("a", "b")));
        assert_eq!(
            c.auths.get("tok.example"),
            Some(&Credential::IdentityToken("rt".into()))
        );
        assert!(!c.auths.contains_key("empty"));
        assert!(DockerConfig::parse(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(DockerConfig::parse(b"nope").is_err());
    }

    #[test]
    fn docker_hub_has_one_name() {
        let c = DockerConfig::parse(br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"}}}"#).unwrap();
        assert!(c.has_entry("docker.io"));
        assert!(c.has_entry("registry-1.docker.io"));
        assert!(!c.has_entry("ghcr.io"));
    }

    #[test]
    fn helpers_per_host_then_store() {
        let c = DockerConfig::parse(
            br#"{"credsStore":"pass","credHelpers":{"123.dkr.ecr.example":"ecr-login"},"auths":{}}"#,
        )
        .unwrap();
        assert_eq!(c.helper_for("123.dkr.ecr.example"), Some("ecr-login"));
        assert_eq!(c.helper_for("ghcr.io"), Some("pass"));
        assert!(DockerConfig::parse(br#"{"credsStore":"../../bin/sh"}"#).is_err());
        assert!(DockerConfig::parse(br#"{"credHelpers":{"h":"a b"}}"#).is_err());
        let none = DockerConfig::parse(br#"{"auths":{}}"#).unwrap();
        assert_eq!(none.helper_for("ghcr.io"), None);
    }

    #[test]
    fn helper_answers() {
        assert_eq!(
            parse_helper_output(true, br#"{"ServerURL":"h","Username":"u","Secret":"s"}"#, b"").unwrap(),
            Some(basic("u", "s"))
        );
        assert_eq!(
            parse_helper_output(true, br#"{"Username":"<token>","Secret":"rt"}"#, b"").unwrap(),
            Some(Credential::IdentityToken("rt".into()))
        );
        assert_eq!(
            parse_helper_output(false, b"credentials not found in native keychain", b"").unwrap(),
            None
        );
        assert!(parse_helper_output(false, b"", b"permission denied").is_err());
        assert!(parse_helper_output(true, b"garbage", b"").is_err());
    }

    proptest::proptest! {
        /// A Docker config or a helper's answer, however malformed, is an error, never a panic.
        #[test]
        fn configs_and_helper_answers_never_panic(b in proptest::collection::vec(0u8.., 0..400), s in ".{0,200}") {
            let _ = DockerConfig::parse(&b);
            let _ = DockerConfig::parse(format!(r#"{{"auths":{{"h":{{"auth":"{s}"}}}},"credsStore":"{s}"}}"#).as_bytes());
            let _ = parse_helper_output(true, &b, b"");
            let _ = parse_helper_output(false, &b, s.as_bytes());
            let _ = normalise_host(&s);
        }
    }

    #[tokio::test]
    async fn a_missing_helper_is_named() {
        let c = DockerConfig::parse(br#"{"credsStore":"pollen-test-no-such-helper"}"#).unwrap();
        let e = c.lookup("reg.example").await.unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-pollen-test-no-such-helper is not installed"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_helper_binary_is_run() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-pollentest");
        // Answers for one server only, as a real helper does.
        std::fs::write(
            &helper,
            "#!/bin/sh\nread s\nif [ \"$1\" = get ] && [ \"$s\" = reg.example:5000 ]; then\n  echo '{\"ServerURL\":\"reg.example:5000\",\"Username\":\"robot\",\"Secret\":\"pw\"}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = DockerConfig::parse(
            br#"{"credHelpers":{"reg.example:5000":"pollentest","other.example":"pollentest"},"auths":{"other.example":{"auth":"dTpw"}}}"#,
        )
        .unwrap()
        .with_helper_path(format!("{}:/usr/bin:/bin", dir.path().display()));
        let got = (
            c.lookup("reg.example:5000").await,
            c.lookup("other.example").await,
        );
        assert_eq!(got.0.unwrap(), Some(basic("robot", "pw")));
        // The helper has nothing for this host: the inline entry answers.
        assert_eq!(got.1.unwrap(), Some(basic("u", "p")));
    }
}
