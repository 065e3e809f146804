//! A real OCI registry (CNCF distribution 2.8, Debian's `docker-registry`) for tests.
//!
//! [`Registry::start`] runs `docker-registry serve` on a free port of 127.0.0.1 with filesystem storage in
//! a temporary directory, and returns once `GET /v2/` answers 200. [`Registry::stop`] and
//! [`Registry::restart`] take the origin down and bring it back on the same address with the same data,
//! for "origin goes down" tests. Dropping the [`Registry`] kills the process and deletes its storage.
//!
//! [`RegistryBuilder::command_prefix`] is the seam for the fleet lab: with a prefix such as
//! `ip netns exec origin`, the registry runs inside a network namespace, listening on the given address,
//! and readiness is probed from inside that namespace too (with `curl`).
//!
//! [`RegistryBuilder::tls`] and [`RegistryBuilder::extra_config`] turn on TLS and add config sections
//! (auth, middleware); [`crate::secure_registry`] uses them to run the registry as users run it.
//!
//! Non-goals: the OCI 1.1 referrers API (distribution 2.8 has none), pushing content (tests use oras or
//! Pollen's own client for that).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The registry's binary name, as installed by `e2e/tools/install-deps.sh` (Debian's `docker-registry`).
pub const PROGRAM: &str = "docker-registry";

/// Default time allowed from spawn until `/v2/` answers 200.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors starting, probing or stopping the test registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `docker-registry` is neither in `.tools/bin` nor on `PATH`.
    #[error("{PROGRAM} is not installed (run e2e/tools/install-deps.sh as root)")]
    NotInstalled,
    /// Creating the temporary directory, config or log file failed.
    #[error("cannot prepare registry files in {path}")]
    Files {
        /// The path that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No free TCP port could be reserved on the listen address.
    #[error("no free port on {ip}")]
    NoFreePort {
        /// The address a port was looked for on.
        ip: IpAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The registry process could not be spawned.
    #[error("cannot spawn {program}")]
    Spawn {
        /// The program that failed to start (the prefix's first word when a prefix is set).
        program: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The registry process exited before it became ready.
    #[error("registry on {addr} exited before it was ready ({status}); its log:\n{log}")]
    Exited {
        /// The address it was to listen on.
        addr: SocketAddr,
        /// The exit status.
        status: std::process::ExitStatus,
        /// The tail of its stdout/stderr.
        log: String,
    },
    /// `/v2/` did not answer 200 within the timeout.
    #[error("registry on {addr} not ready after {waited:?} (last probe: {last}); its log:\n{log}")]
    NotReady {
        /// The address it listens on.
        addr: SocketAddr,
        /// How long readiness was waited for.
        waited: Duration,
        /// What the last probe saw.
        last: String,
        /// The tail of its stdout/stderr.
        log: String,
    },
    /// Waiting for the killed process failed.
    #[error("cannot stop the registry on {addr}")]
    Stop {
        /// The address it listened on.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Configures a [`Registry`] before it starts. Obtain one with [`Registry::builder`].
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    program: Option<PathBuf>,
    command_prefix: Vec<OsString>,
    listen_ip: IpAddr,
    port: Option<u16>,
    ready_timeout: Duration,
    storage: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
    extra: String,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        Self {
            program: None,
            command_prefix: Vec::new(),
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            storage: None,
            tls: None,
            extra: String::new(),
        }
    }
}

impl RegistryBuilder {
    /// Uses this registry binary instead of looking up `docker-registry`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Runs the registry (and the readiness probe) under this command prefix, e.g.
    /// `["ip", "netns", "exec", "origin"]` for the lab. Set [`listen_ip`](Self::listen_ip) to the
    /// namespace's address and a fixed [`port`](Self::port) with it.
    pub fn command_prefix<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.command_prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// Listens on this address (default 127.0.0.1).
    pub fn listen_ip(mut self, ip: IpAddr) -> Self {
        self.listen_ip = ip;
        self
    }

    /// Listens on this port (default: a free port picked on the listen address).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Keeps blobs and manifests under `dir` (default: a folder of the registry's temporary directory).
    pub fn storage_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = Some(dir.into());
        self
    }

    /// Serves HTTPS with this certificate and key (PEM files). Readiness is then a TCP connect.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Appends top-level sections (YAML) to the config: `auth:`, `middleware:`. With `auth:`, a `401`
    /// from `/v2/` also means ready.
    pub fn extra_config(mut self, yaml: impl Into<String>) -> Self {
        self.extra = yaml.into();
        self
    }

    /// How long to wait for `/v2/` to answer 200 (default 15 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Writes the config, spawns the registry and waits until it is ready.
    pub async fn start(self) -> Result<Registry, RegistryError> {
        let program = match self.program {
            Some(p) => p,
            None => crate::tools::find(PROGRAM).ok_or(RegistryError::NotInstalled)?,
        };
        let dir = tempfile::Builder::new()
            .prefix("pollen-registry-")
            .tempdir()
            .map_err(|source| RegistryError::Files {
                path: std::env::temp_dir(),
                source,
            })?;
        let port = match self.port {
            Some(p) => p,
            None => free_port(self.listen_ip)?,
        };
        let mut reg = Registry {
            addr: SocketAddr::new(self.listen_ip, port),
            program,
            prefix: self.command_prefix,
            ready_timeout: self.ready_timeout,
            child: None,
            storage: self.storage.unwrap_or_else(|| dir.path().join("data")),
            tls: self.tls,
            extra: self.extra,
            dir,
        };
        // A port picked here may be taken by someone else before the registry binds it: retry then.
        let attempts = if self.port.is_some() { 1 } else { 3 };
        let mut last_err = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                reg.addr = SocketAddr::new(self.listen_ip, free_port(self.listen_ip)?);
            }
            reg.write_config()?;
            match reg.spawn_and_wait().await {
                Ok(()) => return Ok(reg),
                Err(e @ RegistryError::Exited { .. }) if e.to_string().contains("address already in use") => {
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }
}

/// A running (or stopped) `docker-registry` with its own storage. Killed on drop.
#[derive(Debug)]
pub struct Registry {
    addr: SocketAddr,
    program: PathBuf,
    prefix: Vec<OsString>,
    ready_timeout: Duration,
    child: Option<Child>,
    storage: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
    extra: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A builder for a registry with non-default settings (lab namespaces, fixed ports).
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// Starts a registry on a free port of 127.0.0.1 and waits until `/v2/` answers 200.
    pub async fn start() -> Result<Registry, RegistryError> {
        RegistryBuilder::default().start().await
    }

    /// `IP:PORT` (e.g. `127.0.0.1:40123`), as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The socket address the registry listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The registry's storage root (kept across [`stop`](Self::stop) and [`restart`](Self::restart)).
    pub fn storage_dir(&self) -> PathBuf {
        self.storage.clone()
    }

    /// The file the registry's stdout and stderr go to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// True while the registry process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the registry and waits for it to exit. Storage is kept, so [`restart`](Self::restart)
    /// brings back the same content on the same address. Stopping a stopped registry does nothing.
    pub async fn stop(&mut self) -> Result<(), RegistryError> {
        if let Some(mut child) = self.child.take() {
            // kill() sends SIGKILL and reaps; an already exited child is fine.
            child.kill().await.map_err(|source| RegistryError::Stop {
                addr: self.addr,
                source,
            })?;
        }
        Ok(())
    }

    /// Starts the registry again on the same address with the same storage, and waits until ready.
    pub async fn restart(&mut self) -> Result<(), RegistryError> {
        self.stop().await?;
        self.spawn_and_wait().await
    }

    /// The HTTP status of `GET /v2/`, or the connection error (a stopped registry refuses).
    /// Only for a registry without a command prefix (the probe connects from this process).
    pub async fn v2_status(&self) -> std::io::Result<u16> {
        http_get_status(self.addr, "/v2/").await
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) -> Result<(), RegistryError> {
        let data = self.storage_dir();
        std::fs::create_dir_all(&data).map_err(|source| RegistryError::Files {
            path: data.clone(),
            source,
        })?;
        let mut config = render_config(&data, self.addr);
        if let Some((cert, key)) = &self.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        config.push_str(&self.extra);
        let path = self.config_path();
        std::fs::write(&path, config).map_err(|source| RegistryError::Files { path, source })
    }

    async fn spawn_and_wait(&mut self) -> Result<(), RegistryError> {
        let log_path = self.log_path();
        let files_err = |source| RegistryError::Files {
            path: log_path.clone(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(files_err)?;
        let log2 = log.try_clone().map_err(files_err)?;
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let spawned_program = self
            .prefix
            .first()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.program.clone());
        let child = cmd.spawn().map_err(|source| RegistryError::Spawn {
            program: spawned_program,
            source,
        })?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), RegistryError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(RegistryError::Exited {
                    addr: self.addr,
                    status,
                    log: log_tail(&self.log_path()),
                });
            }
            let last = match self.probe().await {
                Ok(200) => return Ok(()),
                Ok(401) if self.extra.contains("auth:") => return Ok(()),
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= self.ready_timeout {
                let log = log_tail(&self.log_path());
                let _ = self.stop().await;
                return Err(RegistryError::NotReady {
                    addr: self.addr,
                    waited: started.elapsed(),
                    last,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn probe(&self) -> std::io::Result<u16> {
        if self.tls.is_some() {
            // The plain-HTTP probe cannot speak TLS: a listening port means the config was accepted.
            return TcpStream::connect(self.addr).await.map(|_| 200);
        }
        let Some((first, rest)) = self.prefix.split_first() else {
            return self.v2_status().await;
        };
        // Inside a namespace: ask curl, run under the same prefix, for the status code.
        let out = Command::new(first)
            .args(rest)
            .args(["curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}"])
            .arg(format!("{}/v2/", self.url()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse::<u16>() {
            Ok(code) if code != 0 => Ok(code),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("curl: no answer ({})", out.status),
            )),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// The registry's config.yml: filesystem storage under `data`, deletes allowed, warnings only.
fn render_config(data: &Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: \"{}\"\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: \"{}\"\n",
        data.display(),
        addr
    )
}

/// Reserves a free TCP port on `ip` by binding port 0 and releasing it.
pub(crate) fn free_port_on(ip: IpAddr) -> std::io::Result<u16> {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

fn free_port(ip: IpAddr) -> Result<u16, RegistryError> {
    free_port_on(ip).map_err(|source| RegistryError::NoFreePort { ip, source })
}

/// The last 4 KiB of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// A minimal HTTP/1.1 `GET` that returns the status code (enough for readiness probes).
pub(crate) async fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        parse_status_line(&buf).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no HTTP status line in the answer",
            )
        })
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "probe timed out",
            ))
        })
}

/// Parses `HTTP/1.x NNN ...` at the start of a response.
fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\nX: y\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 401 Unauthorized\r\n"), Some(401));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn config_names_storage_and_address() {
        let c = render_config(Path::new("/x/data"), "127.0.0.1:5123".parse().unwrap());
        assert!(c.contains("rootdirectory: \"/x/data\""));
        assert!(c.contains("addr: \"127.0.0.1:5123\""));
        assert!(c.contains("delete:\n    enabled: true"));
        assert!(c.contains("level: warn"));
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(), 0);
    }
}
