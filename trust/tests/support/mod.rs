//! A real registry for the `pollen` command-line test: Debian's `docker-registry` on a free port of
//! 127.0.0.1, storage in a temporary directory, killed on drop. Kept here (rather than using the e2e
//! crate's harness) so that the trust crate's tests do not build the whole lab.
//!
//! Missing tools fail the test when env `CI` is set and skip it elsewhere, as in the e2e suite.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

/// Finds `name` in the repository's `.tools/bin` or on `PATH`; panics in CI, `None` (skip) elsewhere.
pub fn require(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let local = root.join(".tools/bin").join(name);
    let found = std::iter::once(local)
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        }))
        .find(|p| p.is_file());
    if found.is_none() {
        if in_ci() {
            panic!("{name} is not installed — CI must provide it (run e2e/tools/install-deps.sh as root)");
        }
        eprintln!("skipped: {name} not installed (run e2e/tools/install-deps.sh)");
    }
    found
}

/// A running registry.
pub struct TestRegistry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts the registry and waits until `/v2/` answers; `None` when it is not installed (outside CI).
    pub fn start() -> Option<TestRegistry> {
        let bin = require("docker-registry")?;
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: \"{}\"\nhttp:\n  addr: {host}\nlog:\n  level: warn\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry starts");
        let reg = TestRegistry {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if v2_ok(&reg.host) {
                return Some(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry on {} not ready within 15 s", reg.host);
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

fn v2_ok(host: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
