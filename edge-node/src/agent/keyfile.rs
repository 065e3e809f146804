//! Atomic writes of the node's key and certificate files.
//!
//! A file is written to a fresh temporary file in the same directory (created with its final mode,
//! so a private key is never readable by others, not even for a moment), flushed to disk, renamed
//! over the target, and the directory is synced. A reader sees the old file or the new one, never a
//! half-written one; a failed write leaves the old file as it was.
//!
//! Non-goals: locking against concurrent writers (the agent is the only writer of its identity
//! directory), and file formats (callers pass PEM bytes).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The mode of private key files: owner read/write only.
pub const PRIVATE_MODE: u32 = 0o600;
/// The mode of certificate files: world-readable (a certificate is public).
pub const PUBLIC_MODE: u32 = 0o644;

/// Errors writing an identity file.
#[derive(Debug, thiserror::Error)]
#[error("write {path}: {source}")]
pub struct WriteError {
    /// The file that was being written.
    pub path: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn temp_path(target: &Path) -> PathBuf {
    let mut rnd = [0u8; 8];
    rand::fill(&mut rnd);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    target.with_file_name(format!(".{name}.{}.tmp", hex::encode(rnd)))
}

/// Writes `bytes` to `path` atomically with file mode `mode`, creating the parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |p: &Path| {
        let p = p.display().to_string();
        move |source| WriteError { path: p, source }
    };
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err(&dir))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode at creation; set it exactly.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err(path))
}

/// Writes a private key (mode 0600) atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, bytes, PRIVATE_MODE)
}

/// Writes a certificate (mode 0644) atomically.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, bytes, PUBLIC_MODE)
}

/// Renames `from` over `to` and syncs the directory (the second half of a two-file switch).
pub fn commit(from: &Path, to: &Path) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: to.display().to_string(),
        source,
    };
    std::fs::rename(from, to).map_err(err)?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// Runs `write` (file writes, fsync included) on the blocking thread pool, off the async runtime's
/// threads. `path` names the file in the error if the blocking task itself fails.
pub async fn off_runtime<T, F>(path: &Path, write: F) -> Result<T, WriteError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, WriteError> + Send + 'static,
{
    tokio::task::spawn_blocking(write).await.unwrap_or_else(|e| {
        Err(WriteError {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_private_key_is_written_with_mode_0600_and_nothing_else_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity").join("tls.key");
        write_private(&p, b"secret one").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret one");
        // Replacing keeps the mode and the directory holds only the key.
        write_private(&p, b"secret two").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tls.key")]);
    }

    #[test]
    fn a_world_readable_key_file_is_replaced_by_a_private_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.key");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn a_certificate_is_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.crt");
        write_public(&p, b"cert").unwrap();
        assert_eq!(mode(&p), 0o644);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.key");
        write_private(&p, b"old").unwrap();
        // The target is a non-empty directory's path: rename fails, the old content stays.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write_private(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0, "the temporary file is removed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn off_runtime_writes_on_another_thread_and_reports_a_failed_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        let runtime_thread = std::thread::current().id();
        let p = path.clone();
        let writer_thread = off_runtime(&path, move || {
            write_public(&p, b"cert")?;
            Ok(std::thread::current().id())
        })
        .await
        .unwrap();
        assert_ne!(writer_thread, runtime_thread);
        assert_eq!(std::fs::read(&path).unwrap(), b"cert");
        let e = off_runtime::<(), _>(&path, || panic!("writer failed"))
            .await
            .unwrap_err();
        assert_eq!(e.path, path.display().to_string());
    }
}
