//! Atomic install of a completed payload under an install root, with kept versions and rollback.
//!
//! Layout under the root: `versions/<version>/<file>` and a symlink `current -> versions/<version>`.
//! Install streams the payload into `.staging-<version>/` while computing its SHA-256; only if the digest
//! equals the OCI digest is the file fsynced, the staging directory renamed into `versions/`, and the
//! `current` link flipped by renaming a freshly made temporary link over it (atomic on POSIX). The
//! previous `keep` versions are kept; older ones are pruned. Any error (full disk included) removes the
//! staging directory and leaves `current` where it was.
//!
//! Version names sort in install order: the engine uses `<sequence:020>-<first 12 hex of digest>`.
//!
//! Non-goals: running hooks or restarting services after the flip.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::store::sync_dir;

/// Install errors.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed (full disk included); the previous version stays active.
    #[error("install {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The payload's SHA-256 differs from the OCI digest.
    #[error("payload digest mismatch: expected sha256:{expected}, got sha256:{actual}")]
    Digest {
        /// Expected hex.
        expected: String,
        /// Actual hex.
        actual: String,
    },
    /// Rollback asked with no earlier version kept.
    #[error("no earlier version to roll back to")]
    NoPrevious,
    /// A version or file name that is not a plain name.
    #[error("invalid name {0:?}")]
    InvalidName(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn plain(name: &str) -> Result<(), InstallError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(InstallError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// The installer for one install root.
#[derive(Debug, Clone)]
pub struct Installer {
    root: PathBuf,
    keep: u32,
}

impl Installer {
    /// An installer keeping `keep` previous versions besides the current one.
    pub fn new(root: impl Into<PathBuf>, keep: u32) -> Self {
        Installer {
            root: root.into(),
            keep,
        }
    }

    fn versions_dir(&self) -> PathBuf {
        self.root.join("versions")
    }

    /// The active version, if any.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.root.join("current")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Path of the `current` link.
    pub fn current_path(&self) -> PathBuf {
        self.root.join("current")
    }

    /// Installed versions, oldest first.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.versions_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Installs `payload` as `version/file` after checking its SHA-256, flips `current`, prunes.
    pub fn install(
        &self,
        payload: &Path,
        sha256: &[u8; 32],
        version: &str,
        file: &str,
    ) -> Result<PathBuf, InstallError> {
        plain(version)?;
        plain(file)?;
        let versions = self.versions_dir();
        fs::create_dir_all(&versions).map_err(io("create", &versions))?;
        let final_dir = versions.join(version);
        if !final_dir.exists() {
            let staging = self.root.join(format!(".staging-{version}"));
            let _ = fs::remove_dir_all(&staging);
            let res = self.stage(payload, sha256, &staging, file).and_then(|()| {
                fs::rename(&staging, &final_dir).map_err(io("rename", &final_dir))?;
                sync_dir(&versions).map_err(io("fsync", &versions))
            });
            if let Err(e) = res {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        self.point_current(version)?;
        self.prune();
        Ok(final_dir.join(file))
    }

    fn stage(
        &self,
        payload: &Path,
        sha256: &[u8; 32],
        staging: &Path,
        file: &str,
    ) -> Result<(), InstallError> {
        fs::create_dir_all(staging).map_err(io("create", staging))?;
        let mut src = File::open(payload).map_err(io("open", payload))?;
        let dst_path = staging.join(file);
        let mut dst = File::create(&dst_path).map_err(io("create", &dst_path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = src.read(&mut buf).map_err(io("read", payload))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).map_err(io("write", &dst_path))?;
        }
        let actual: [u8; 32] = hasher.finalize().into();
        if &actual != sha256 {
            return Err(InstallError::Digest {
                expected: hex::encode(sha256),
                actual: hex::encode(actual),
            });
        }
        dst.sync_all().map_err(io("fsync", &dst_path))?;
        sync_dir(staging).map_err(io("fsync", staging))
    }

    /// Atomically points `current` at an installed version.
    fn point_current(&self, version: &str) -> Result<(), InstallError> {
        let tmp = self.root.join(".current.tmp");
        let _ = fs::remove_file(&tmp);
        let target = Path::new("versions").join(version);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io("symlink", &tmp))?;
        let cur = self.current_path();
        if let Err(e) = fs::rename(&tmp, &cur) {
            let _ = fs::remove_file(&tmp);
            return Err(InstallError::Io {
                op: "rename",
                path: cur,
                source: e,
            });
        }
        sync_dir(&self.root).map_err(io("fsync", &self.root))
    }

    /// Re-points `current` to the newest version older than the current one. Returns it.
    pub fn rollback(&self) -> Result<String, InstallError> {
        let cur = self.current().ok_or(InstallError::NoPrevious)?;
        let prev = self
            .versions()
            .into_iter()
            .rfind(|v| *v < cur)
            .ok_or(InstallError::NoPrevious)?;
        self.point_current(&prev)?;
        Ok(prev)
    }

    /// Removes versions beyond the current one and the `keep` before it (never the current one).
    fn prune(&self) {
        let Some(cur) = self.current() else { return };
        let older: Vec<String> = self.versions().into_iter().filter(|v| *v < cur).collect();
        let excess = older.len().saturating_sub(self.keep as usize);
        for v in &older[..excess] {
            if let Err(e) = fs::remove_dir_all(self.versions_dir().join(v)) {
                tracing::warn!(version = %v, error = %e, "could not prune old version");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn install_flip_keep_and_rollback() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let inst = Installer::new(root.path(), 1);
        for (i, body) in [b"one".as_slice(), b"two", b"three"].iter().enumerate() {
            let p = src.path().join("p");
            fs::write(&p, body).unwrap();
            let v = format!("{:020}-x", i + 1);
            let out = inst.install(&p, &sha(body), &v, "app.bin").unwrap();
            assert_eq!(fs::read(&out).unwrap(), *body);
            assert_eq!(inst.current().unwrap(), v);
            assert_eq!(fs::read(inst.current_path().join("app.bin")).unwrap(), *body);
        }
        // keep = 1: the first version was pruned.
        assert_eq!(
            inst.versions(),
            vec![format!("{:020}-x", 2), format!("{:020}-x", 3)]
        );
        assert_eq!(inst.rollback().unwrap(), format!("{:020}-x", 2));
        assert_eq!(fs::read(inst.current_path().join("app.bin")).unwrap(), b"two");
        assert!(matches!(inst.rollback(), Err(InstallError::NoPrevious)));
    }

    #[test]
    fn digest_mismatch_keeps_previous_and_leaves_no_staging() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let inst = Installer::new(root.path(), 2);
        let p = src.path().join("p");
        fs::write(&p, b"good").unwrap();
        inst.install(&p, &sha(b"good"), "v1", "f").unwrap();
        fs::write(&p, b"evil").unwrap();
        let err = inst.install(&p, &sha(b"good"), "v2", "f").unwrap_err();
        assert!(matches!(err, InstallError::Digest { .. }), "{err}");
        assert_eq!(inst.current().unwrap(), "v1");
        assert_eq!(inst.versions(), vec!["v1".to_string()]);
        let leftovers: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "only versions/ and current: {leftovers:?}");
    }

    #[test]
    fn rejects_path_tricks() {
        let root = tempfile::tempdir().unwrap();
        let inst = Installer::new(root.path(), 2);
        assert!(matches!(
            inst.install(Path::new("/dev/null"), &[0; 32], "../x", "f"),
            Err(InstallError::InvalidName(_))
        ));
        assert!(matches!(
            inst.install(Path::new("/dev/null"), &[0; 32], "v", "a/b"),
            Err(InstallError::InvalidName(_))
        ));
    }
}
