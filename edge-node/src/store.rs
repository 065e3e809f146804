//! The chunk store: one preallocated payload file per index, written chunk by chunk, with a persisted
//! have-bitfield so that a restart resumes without fetching verified chunks again.
//!
//! A chunk is streamed into its place in the file while being hashed, and marked present only when its
//! length and BLAKE3 hash match the signed index; a chunk that fails is never marked, so its bytes are
//! overwritten by the next attempt and never served or installed. The bitfield is persisted crash-safely:
//! the payload file is `fdatasync`ed first, then the bitfield is written to a temporary file, fsynced and
//! renamed over the old one, and the directory is fsynced. On open, every chunk the bitfield claims is
//! verified again, so a torn write or a damaged disk costs a refetch, never a corrupt install.
//!
//! Layout: `<data-dir>/<index-id-hex>/payload.part` and `have.bits` (`PLBF`, `len: u32 BE`, the bits,
//! BLAKE3 of all preceding bytes).
//!
//! Space is reserved up front: the payload file is preallocated with `fallocate` (real blocks, not a
//! sparse file), so a full disk fails [`Store::open`] with [`StoreError::Io`] (`ENOSPC`) before any byte
//! is fetched, and a new file that could not be preallocated is removed again. Re-opening a store only
//! fills holes that are left (a store sized by an older build, or a crash during preallocation); it never
//! truncates or rewrites verified data. On a filesystem without `fallocate` (`EOPNOTSUPP`) the file is
//! sized with `set_len` and may be sparse; a note is logged and a full disk then surfaces on a chunk write.
//!
//! Removal: [`Store::remove`], or [`remove_dir`] for stores that are not open (opening one reads it all
//! to re-verify). When a store goes is the agent's decision (`agent::stores`).
//!
//! Non-goals: deduplication across indexes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pollen_trust::index::ChunkIndex;

use crate::bitfield::Bitfield;

const BITS_MAGIC: &[u8; 4] = b"PLBF";

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed (full disk included).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes of a chunk do not match the index.
    #[error("chunk {chunk} failed verification: {reason}")]
    Verify {
        /// The chunk.
        chunk: u32,
        /// Length or hash mismatch.
        reason: &'static str,
    },
    /// The chunk number is not in the index.
    #[error("chunk {0} out of range")]
    OutOfRange(u32),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Fsyncs a directory so that renames inside it are durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How the payload file got its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allocation {
    /// `fallocate` reserved the blocks (or the payload is empty).
    Preallocated,
    /// The filesystem has no `fallocate`; the file was sized with `set_len` and may be sparse.
    Sparse,
}

/// Whether a preallocation error means the filesystem cannot preallocate (rather than a real failure).
fn preallocation_unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
}

/// Gives the payload file exactly `size` bytes backed by real blocks. Existing bytes below `size` are
/// never touched: `fallocate` (mode 0) only allocates the holes left, so on a file already fully backed it
/// changes nothing. A full disk is `ENOSPC` here, before anything is fetched.
fn preallocate(file: &File, path: &Path, size: u64) -> Result<Allocation, StoreError> {
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len > size {
        // Not written for this index (the directory is named by the index id); drop the excess.
        file.set_len(size).map_err(io("truncate", path))?;
    }
    if size == 0 {
        return Ok(Allocation::Preallocated);
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(Allocation::Preallocated),
        Err(e) => {
            let e = std::io::Error::from(e);
            if !preallocation_unsupported(&e) {
                return Err(StoreError::Io {
                    op: "preallocate",
                    path: path.to_owned(),
                    source: e,
                });
            }
            tracing::info!(
                path = %path.display(),
                "the filesystem cannot preallocate (EOPNOTSUPP); sizing the payload file with set_len, \
                 so a full disk will surface on a chunk write instead"
            );
            file.set_len(size).map_err(io("size", path))?;
            Ok(Allocation::Sparse)
        }
    }
}

/// The chunk store for one index.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    payload_path: PathBuf,
    bits_path: PathBuf,
    file: File,
    chunk_size: u32,
    payload_size: u64,
    hashes: Vec<[u8; 32]>,
    state: Mutex<State>,
    persist_lock: Mutex<()>,
}

#[derive(Debug)]
struct State {
    have: Bitfield,
    unpersisted: u32,
}

impl Store {
    /// Opens (or creates) the store for `index` under `data_dir`, resuming from the persisted bitfield.
    /// Chunks the bitfield claims are re-verified; any that fail are dropped.
    pub fn open(data_dir: &Path, index: &ChunkIndex) -> Result<Store, StoreError> {
        let dir = data_dir.join(hex::encode(index.id()));
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let payload_path = dir.join("payload.part");
        let bits_path = dir.join("have.bits");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&payload_path)
            .map_err(io("open", &payload_path))?;
        preallocate(&file, &payload_path, index.payload.size).inspect_err(|_| {
            // Without a persisted bitfield nothing in the file is verified: give its blocks back.
            if !bits_path.exists() {
                let _ = fs::remove_file(&payload_path);
                let _ = fs::remove_dir(&dir);
            }
        })?;
        let n = index.chunk_count();
        let store = Store {
            dir,
            payload_path,
            bits_path,
            file,
            chunk_size: index.chunk_size,
            payload_size: index.payload.size,
            hashes: index.chunks.clone(),
            state: Mutex::new(State {
                have: Bitfield::new(n),
                unpersisted: 0,
            }),
            persist_lock: Mutex::new(()),
        };
        let loaded = store.load_bits(n);
        let mut have = Bitfield::new(n);
        if let Some(claimed) = loaded {
            let mut buf = vec![0u8; store.chunk_size as usize];
            for c in claimed.iter_ones() {
                let len = store.chunk_len(c) as usize;
                if store.file.read_exact_at(&mut buf[..len], store.offset(c)).is_ok()
                    && blake3::hash(&buf[..len]).as_bytes() == &store.hashes[c as usize]
                {
                    have.set(c);
                } else {
                    tracing::warn!(chunk = c, "stored chunk failed re-verification; will refetch");
                }
            }
        }
        store.state.lock().expect("store lock").have = have;
        Ok(store)
    }

    fn load_bits(&self, n: u32) -> Option<Bitfield> {
        let raw = fs::read(&self.bits_path).ok()?;
        let body_len = 8 + crate::bitfield::byte_len(n);
        if raw.len() != body_len + 32 || &raw[..4] != BITS_MAGIC {
            return None;
        }
        if u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) != n {
            return None;
        }
        if blake3::hash(&raw[..body_len]).as_bytes() != &raw[body_len..] {
            return None;
        }
        Bitfield::from_bytes(n, &raw[8..body_len])
    }

    /// The directory of this index's store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The payload file (complete when [`Store::is_complete`]).
    pub fn payload_path(&self) -> &Path {
        &self.payload_path
    }

    /// A copy of the have-bitfield.
    pub fn have(&self) -> Bitfield {
        self.state.lock().expect("store lock").have.clone()
    }

    /// Whether chunk `c` is present (verified).
    pub fn has(&self, c: u32) -> bool {
        self.state.lock().expect("store lock").have.get(c)
    }

    /// Number of chunks present.
    pub fn present_count(&self) -> u32 {
        self.state.lock().expect("store lock").have.count()
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        self.state.lock().expect("store lock").have.is_complete()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Length of chunk `c`.
    pub fn chunk_len(&self, c: u32) -> u32 {
        let start = self.offset(c);
        ((start + u64::from(self.chunk_size)).min(self.payload_size) - start) as u32
    }

    fn offset(&self, c: u32) -> u64 {
        u64::from(c) * u64::from(self.chunk_size)
    }

    /// Starts writing chunk `c`; bytes are streamed in with [`ChunkWriter::write`].
    pub fn writer(&self, c: u32) -> Result<ChunkWriter<'_>, StoreError> {
        if c >= self.chunk_count() {
            return Err(StoreError::OutOfRange(c));
        }
        Ok(ChunkWriter {
            store: self,
            chunk: c,
            written: 0,
            expected: self.chunk_len(c),
            hasher: blake3::Hasher::new(),
        })
    }

    /// Writes and verifies a whole chunk at once. Returns whether it was newly marked present.
    pub fn put(&self, c: u32, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut w = self.writer(c)?;
        w.write(bytes)?;
        w.finish()
    }

    /// Reads up to `buf.len()` bytes of present chunk `c` from `offset` within the chunk.
    pub fn read(&self, c: u32, offset: u32, buf: &mut [u8]) -> Result<usize, StoreError> {
        if !self.has(c) {
            return Err(StoreError::OutOfRange(c));
        }
        let len = self.chunk_len(c);
        let n = buf.len().min(len.saturating_sub(offset) as usize);
        self.file
            .read_exact_at(&mut buf[..n], self.offset(c) + u64::from(offset))
            .map_err(io("read", &self.payload_path))?;
        Ok(n)
    }

    /// Chunks marked present since the last [`Store::persist`].
    pub fn unpersisted(&self) -> u32 {
        self.state.lock().expect("store lock").unpersisted
    }

    /// Makes the present chunks durable: fdatasync the payload, then atomically replace the bitfield file.
    pub fn persist(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.persist_lock.lock().expect("persist lock");
        self.file
            .sync_data()
            .map_err(io("fdatasync", &self.payload_path))?;
        let (bits, marked) = {
            let s = self.state.lock().expect("store lock");
            (s.have.clone(), s.unpersisted)
        };
        let mut raw = Vec::with_capacity(40 + bits.as_bytes().len());
        raw.extend_from_slice(BITS_MAGIC);
        raw.extend_from_slice(&bits.len().to_be_bytes());
        raw.extend_from_slice(bits.as_bytes());
        let sum = blake3::hash(&raw);
        raw.extend_from_slice(sum.as_bytes());
        let tmp = self.dir.join("have.bits.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&raw)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.bits_path)?;
            sync_dir(&self.dir)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                op: "persist bitfield",
                path: self.bits_path.clone(),
                source: e,
            });
        }
        let mut s = self.state.lock().expect("store lock");
        s.unpersisted = s.unpersisted.saturating_sub(marked);
        Ok(())
    }

    /// Deletes this index's store.
    pub fn remove(self) -> Result<(), StoreError> {
        remove_dir(&self.dir)
    }
}

/// Deletes a folder of stores without opening them (opening re-verifies every chunk present, that is
/// reads the payload): a store's own folder, or an engine's data dir with the stores in it. The agent
/// removes the stores it no longer needs this way (`agent::stores`).
pub fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    fs::remove_dir_all(dir).map_err(io("remove", dir))
}

/// Streams one chunk into the store, hashing as it goes.
#[derive(Debug)]
pub struct ChunkWriter<'a> {
    store: &'a Store,
    chunk: u32,
    written: u32,
    expected: u32,
    hasher: blake3::Hasher,
}

impl ChunkWriter<'_> {
    /// Appends bytes of the chunk. More bytes than the chunk holds is a verification failure.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if u64::from(self.written) + bytes.len() as u64 > u64::from(self.expected) {
            return Err(StoreError::Verify {
                chunk: self.chunk,
                reason: "too long",
            });
        }
        let off = self.store.offset(self.chunk) + u64::from(self.written);
        self.store
            .file
            .write_all_at(bytes, off)
            .map_err(io("write", &self.store.payload_path))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u32;
        Ok(())
    }

    /// Checks length and hash against the index and marks the chunk present. Returns whether it was
    /// newly marked (false if another copy won the race).
    pub fn finish(self) -> Result<bool, StoreError> {
        if self.written != self.expected {
            return Err(StoreError::Verify {
                chunk: self.chunk,
                reason: "too short",
            });
        }
        if self.hasher.finalize().as_bytes() != &self.store.hashes[self.chunk as usize] {
            return Err(StoreError::Verify {
                chunk: self.chunk,
                reason: "hash mismatch",
            });
        }
        let mut s = self.store.state.lock().expect("store lock");
        let new = s.have.set(self.chunk);
        if new {
            s.unpersisted += 1;
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_trust::index::{FixedChunker, IndexBuilder, IndexMeta, TargetSpec};

    pub(crate) fn index_for(payload: &[u8], chunk: u32) -> ChunkIndex {
        let mut b = IndexBuilder::new(FixedChunker::new(chunk).unwrap());
        b.update(payload);
        b.finish(IndexMeta {
            media_type: "application/octet-stream".into(),
            target: TargetSpec {
                path: "app.bin".into(),
                keep_versions: 2,
            },
            rollout: "default/r1".into(),
            sequence: 1,
            downgrade: false,
            expires_at: None,
            peers: vec![],
        })
        .unwrap()
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn verify_before_present_and_resume_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(4096 * 5 + 100);
        let idx = index_for(&data, 4096);
        let n = idx.chunk_count();
        assert_eq!(n, 6);
        {
            let s = Store::open(dir.path(), &idx).unwrap();
            // corrupt chunk: rejected, not present
            let mut bad = data[0..4096].to_vec();
            bad[10] ^= 1;
            assert!(matches!(s.put(0, &bad), Err(StoreError::Verify { chunk: 0, .. })));
            assert!(!s.has(0));
            // short chunk rejected
            assert!(matches!(
                s.put(1, &data[4096..5000]),
                Err(StoreError::Verify { .. })
            ));
            // streaming writes in pieces
            let mut w = s.writer(5).unwrap();
            w.write(&data[4096 * 5..4096 * 5 + 50]).unwrap();
            w.write(&data[4096 * 5 + 50..]).unwrap();
            assert!(w.finish().unwrap());
            assert!(s.put(0, &data[..4096]).unwrap());
            assert!(!s.put(0, &data[..4096]).unwrap(), "second copy is not new");
            assert_eq!(s.unpersisted(), 2);
            assert_eq!(s.present_count(), 2);
            s.persist().unwrap();
            assert_eq!(s.unpersisted(), 0);
            // chunk 2 written but never persisted: after a "crash" it must be fetched again
            s.put(2, &data[8192..12288]).unwrap();
            let mut buf = vec![0u8; 5000];
            assert_eq!(s.read(0, 96, &mut buf).unwrap(), 4000);
            assert_eq!(&buf[..4000], &data[96..4096]);
        }
        let s = Store::open(dir.path(), &idx).unwrap();
        assert_eq!(s.have().iter_ones().collect::<Vec<_>>(), vec![0, 5]);
    }

    #[test]
    fn damaged_chunk_on_disk_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(4096 * 3);
        let idx = index_for(&data, 4096);
        {
            let s = Store::open(dir.path(), &idx).unwrap();
            for c in 0..3 {
                s.put(c, &data[c as usize * 4096..(c as usize + 1) * 4096])
                    .unwrap();
            }
            s.persist().unwrap();
            assert!(s.is_complete());
        }
        let path = dir.path().join(hex::encode(idx.id())).join("payload.part");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"XX", 4096 + 7).unwrap();
        let s = Store::open(dir.path(), &idx).unwrap();
        assert_eq!(s.have().iter_ones().collect::<Vec<_>>(), vec![0, 2]);
    }

    /// Bytes backed by allocated blocks.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn preallocation_backs_the_whole_payload_with_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(1024 * 1024 + 4096 * 3 + 100);
        let idx = index_for(&data, 64 * 1024);
        let s = Store::open(dir.path(), &idx).unwrap();
        let size = data.len() as u64;
        assert_eq!(fs::metadata(s.payload_path()).unwrap().len(), size);
        assert!(
            allocated(s.payload_path()) >= size,
            "{} bytes allocated for a {size}-byte payload",
            allocated(s.payload_path())
        );
    }

    #[test]
    fn reopen_fills_holes_without_touching_verified_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 64 * 1024;
        let data = payload(chunk * 8);
        let idx = index_for(&data, chunk as u32);
        let path;
        {
            let s = Store::open(dir.path(), &idx).unwrap();
            for c in [0u32, 5] {
                let at = c as usize * chunk;
                assert!(s.put(c, &data[at..at + chunk]).unwrap());
            }
            s.persist().unwrap();
            path = s.payload_path().to_owned();
        }
        // A store sized by `set_len` (an older build, or a crash before preallocation): sparse except
        // for the two verified chunks.
        let sparse = path.with_extension("sparse");
        {
            let f = File::create(&sparse).unwrap();
            f.set_len(data.len() as u64).unwrap();
            for c in [0usize, 5] {
                f.write_all_at(&data[c * chunk..(c + 1) * chunk], (c * chunk) as u64)
                    .unwrap();
            }
            f.sync_all().unwrap();
        }
        fs::rename(&sparse, &path).unwrap();
        assert!(allocated(&path) < data.len() as u64, "the file starts sparse");

        let s = Store::open(dir.path(), &idx).unwrap();
        assert!(allocated(&path) >= data.len() as u64, "holes are allocated");
        assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64);
        assert_eq!(s.have().iter_ones().collect::<Vec<_>>(), vec![0, 5]);
        let mut buf = vec![0u8; chunk];
        assert_eq!(s.read(5, 0, &mut buf).unwrap(), chunk);
        assert_eq!(&buf[..], &data[5 * chunk..6 * chunk]);
        drop(s);
        // And a second open of a fully allocated store changes nothing.
        let before = fs::read(&path).unwrap();
        let s = Store::open(dir.path(), &idx).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(s.present_count(), 2);
    }

    #[test]
    fn only_eopnotsupp_falls_back_to_a_sparse_file() {
        let unsupported = std::io::Error::from(rustix::io::Errno::OPNOTSUPP);
        assert!(preallocation_unsupported(&unsupported));
        for e in [
            rustix::io::Errno::NOSPC,
            rustix::io::Errno::IO,
            rustix::io::Errno::FBIG,
        ] {
            assert!(!preallocation_unsupported(&std::io::Error::from(e)), "{e}");
        }
    }

    struct Tmpfs(PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn full_disk_fails_at_open_and_leaves_no_file() {
        let is_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !is_root {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the full-disk store test needs root (mount -t tmpfs) under CI"
            );
            eprintln!("SKIPPED: the full-disk store test needs root to mount a small tmpfs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        let _guard = Tmpfs(dir.path().to_owned());
        let data = payload(2 * 1024 * 1024);
        let idx = index_for(&data, 64 * 1024);
        let err = Store::open(dir.path(), &idx).unwrap_err();
        match &err {
            StoreError::Io { op, source, .. } => {
                assert_eq!(*op, "preallocate", "{err}");
                assert_eq!(
                    source.raw_os_error(),
                    Some(rustix::io::Errno::NOSPC.raw_os_error()),
                    "{err}"
                );
            }
            other => panic!("expected a preallocation error, got {other:?}"),
        }
        assert!(
            !dir.path().join(hex::encode(idx.id())).exists(),
            "the unverified store is removed"
        );
        // A payload that fits still opens on the same disk.
        let small = payload(256 * 1024);
        let s = Store::open(dir.path(), &index_for(&small, 64 * 1024)).unwrap();
        assert!(allocated(s.payload_path()) >= small.len() as u64);
    }

    #[test]
    fn corrupt_bitfield_file_means_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(4096 * 2);
        let idx = index_for(&data, 4096);
        {
            let s = Store::open(dir.path(), &idx).unwrap();
            s.put(1, &data[4096..]).unwrap();
            s.persist().unwrap();
        }
        let bits = dir.path().join(hex::encode(idx.id())).join("have.bits");
        let mut raw = fs::read(&bits).unwrap();
        raw[8] ^= 0x80;
        fs::write(&bits, raw).unwrap();
        let s = Store::open(dir.path(), &idx).unwrap();
        assert_eq!(s.have().count(), 0);
    }
}
