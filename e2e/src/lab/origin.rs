//! The origin: a real registry (`docker-registry`, via [`crate::registry::Registry`]) inside the
//! lab's origin namespace, holding the payload as a blob. The blob is pushed over the namespace's
//! loopback path, so the origin's `eth0` counters see only what the fleet downloads.
//!
//! Non-goals: manifests and tags (the fleet fetches the blob by digest).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::LabError;
use super::cmd::run_in;
use super::net::Lab;
use super::spec::LabSpec;
use crate::registry::Registry;

/// Port the origin registry listens on.
pub const PORT: u16 = 5000;
/// Repository the payload is pushed to.
pub const REPO: &str = "lab/payload";

/// A registry in the origin namespace serving one payload blob. Stopped on drop.
#[derive(Debug)]
pub struct Origin {
    rt: tokio::runtime::Runtime,
    registry: Option<Registry>,
    /// `sha256:<hex>` of the payload.
    pub digest: String,
    /// Payload size in bytes.
    pub size: u64,
}

impl Origin {
    /// Starts the registry in `lab`'s origin namespace and pushes `payload` (digest `sha256_hex`).
    pub fn start(lab: &Lab, payload: &Path, sha256_hex: &str) -> Result<Origin, LabError> {
        let size = std::fs::metadata(payload)
            .map_err(|e| LabError::io(format!("reading {}", payload.display()), e))?
            .len();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::io("starting a runtime for the registry", e))?;
        let ns = lab.origin_ns().to_string();
        let registry = rt.block_on(
            Registry::builder()
                .command_prefix(["ip", "netns", "exec", ns.as_str()])
                .listen_ip(IpAddr::V4(LabSpec::origin_addr()))
                .port(PORT)
                .start(),
        )?;
        let origin = Origin {
            rt,
            registry: Some(registry),
            digest: format!("sha256:{sha256_hex}"),
            size,
        };
        origin.push(&ns, payload)?;
        Ok(origin)
    }

    /// The registry's address inside the lab.
    pub fn addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(LabSpec::origin_addr()), PORT)
    }

    /// The blob's URL, reachable from every node namespace.
    pub fn blob_url(&self) -> String {
        format!("http://{}/v2/{REPO}/blobs/{}", Self::addr(), self.digest)
    }

    fn push(&self, ns: &str, payload: &Path) -> Result<(), LabError> {
        let start = format!("http://{}/v2/{REPO}/blobs/uploads/", Self::addr());
        let headers = run_in(
            ns,
            "curl",
            &["-sS", "-f", "-X", "POST", "-D", "-", "-o", "/dev/null", &start],
        )?;
        let location = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .ok_or_else(|| LabError::Parse {
                what: "blob upload response".into(),
                detail: "no Location header".into(),
            })?;
        let location = if location.starts_with('/') {
            format!("http://{}{location}", Self::addr())
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", self.digest);
        run_in(
            ns,
            "curl",
            &[
                "-sS",
                "-f",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", payload.display()),
                "-o",
                "/dev/null",
                &put,
            ],
        )?;
        let len = run_in(
            ns,
            "curl",
            &[
                "-sS",
                "-f",
                "-I",
                "-o",
                "/dev/null",
                "-w",
                "%header{content-length}",
                &self.blob_url(),
            ],
        )?;
        if len.trim() != self.size.to_string() {
            return Err(LabError::Failed(format!(
                "pushed blob has length {:?}, expected {}",
                len.trim(),
                self.size
            )));
        }
        Ok(())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            let _ = self.rt.block_on(r.stop());
        }
    }
}
