//! The agent's chunk stores under the data dir, and when they go.
//!
//! Layout: the engine of each assignment keeps its data in `<data-dir>/chunks/<name>/` ([`dir_of`],
//! `<name>` a short hash of the assignment's chunk-index reference): the [`Store`](crate::store::Store)
//! of the index and the engine's copy of the revocation list. The installed version under the install
//! root is the durable copy of a payload; a store is a seed cache for the node's peers.
//!
//! When a store goes ([`evictions`], pure):
//! - the store of a run under way (pending, downloading, staged, installing, seeding, or winding down
//!   after a cancel) is never removed;
//! - a store whose chunk index no assignment of the EdgeNode names goes at once: the operator removed
//!   the assignment (rollout deleted, node deselected or quarantined) or replaced it with a new index;
//! - with a budget (`--store-budget`), while the whole data dir holds more bytes than the budget, the
//!   stores of finished assignments (installed or failed) go, least recently written first.
//!
//! The operator keeps the assignments of complete rollouts (nodes that join later still get theirs), so
//! without a budget finished stores stay until their assignment goes. The agent runs one engine at a
//! time and stops a seeding run when new work arrives, so a finished store is served again only if its
//! assignment is run again (after an agent restart): it is a cache, and the budget says how much of it
//! to keep.
//!
//! The agent sweeps ([`StoreKeeper::sweep`]) once it knows its assignments: when they change, when a
//! run ends, when a reported phase changes, and once a minute. Each removal is logged and counted in
//! `pollen_edge_store_evictions_total{reason}`; `pollen_edge_data_dir_bytes` is the size of the data
//! dir after the last sweep (blocks allocated, so preallocated payload files count in full).
//!
//! Non-goals: the install root (the installer keeps the current version and the rollout's
//! `keepVersions` before it, and prunes the rest); reserving room before a download starts (a store
//! being filled may take the data dir over the budget until the next sweep, and the stores in use alone
//! may exceed it); the trust keys the runner writes per rollout under `<data-dir>/keys/` (a few KiB).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use pollen_crds::{Assignment, AssignmentPhase};
use tracing::{info, warn};

use crate::metrics::{EvictionLabel, Metrics};
use crate::store::{self, StoreError};

/// The folder of the data dir that holds the stores, one folder per assigned chunk index.
pub const CHUNKS_DIR: &str = "chunks";

/// How often the agent sweeps when nothing else asks for it (the data-dir gauge is this fresh).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The folder name of the store of a chunk-index reference.
pub fn name_of(chunk_index: &str) -> String {
    super::runner::short(chunk_index)
}

/// The engine's data dir for a chunk-index reference: `<data-dir>/chunks/<name>`.
pub fn dir_of(data_dir: &Path, chunk_index: &str) -> PathBuf {
    data_dir.join(CHUNKS_DIR).join(name_of(chunk_index))
}

/// What the agent is doing with the stores, by folder name ([`name_of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Stores of runs under way, cancelled ones that have not ended included.
    pub running: BTreeSet<String>,
    /// Stores of the chunk indexes the EdgeNode's assignments name.
    pub assigned: BTreeSet<String>,
}

/// One store folder found under `<data-dir>/chunks/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDir {
    /// The folder name.
    pub name: String,
    /// Bytes on disk (blocks allocated).
    pub bytes: u64,
    /// The newest modification time of anything in it.
    pub written: SystemTime,
}

/// Why a store is removed (the `reason` label of `pollen_edge_store_evictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No assignment names its chunk index any more.
    Unassigned,
    /// Its assignment finished and the data dir held more than the budget.
    Budget,
}

impl Reason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unassigned => "unassigned",
            Reason::Budget => "budget",
        }
    }
}

/// A store to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The folder name.
    pub name: String,
    /// Why.
    pub reason: Reason,
    /// Bytes it frees.
    pub bytes: u64,
}

/// The stores to remove, given the stores on disk, what the agent does with them, the size of the
/// whole data dir (`data_dir_bytes`, the stores included) and the budget. Pure.
///
/// Stores of runs under way stay; unassigned stores go; then, while the data dir would still hold more
/// than the budget, finished stores go, least recently written first (the name breaks ties).
pub fn evictions(
    stores: &[StoreDir],
    usage: &Usage,
    data_dir_bytes: u64,
    budget: Option<u64>,
) -> Vec<Eviction> {
    let evict = |s: &StoreDir, reason| Eviction {
        name: s.name.clone(),
        reason,
        bytes: s.bytes,
    };
    let idle = stores.iter().filter(|s| !usage.running.contains(&s.name));
    let (mut finished, unassigned): (Vec<&StoreDir>, Vec<&StoreDir>) =
        idle.partition(|s| usage.assigned.contains(&s.name));
    let mut out: Vec<Eviction> = unassigned
        .into_iter()
        .map(|s| evict(s, Reason::Unassigned))
        .collect();
    let mut left = data_dir_bytes.saturating_sub(out.iter().map(|e| e.bytes).sum());
    let Some(budget) = budget else { return out };
    finished.sort_by(|a, b| (a.written, &a.name).cmp(&(b.written, &b.name)));
    for s in finished {
        if left <= budget {
            break;
        }
        left = left.saturating_sub(s.bytes);
        out.push(evict(s, Reason::Budget));
    }
    out
}

/// Bytes on disk and the newest modification time under `path` (itself included; symbolic links are
/// not followed). A path that does not exist is empty.
fn measure(path: &Path) -> Result<(u64, SystemTime), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, SystemTime::UNIX_EPOCH)),
        Err(source) => return Err(io_error("stat", path, source)),
    };
    let mut bytes = meta.blocks() * 512;
    let mut newest = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| io_error("read dir", path, e))? {
            let entry = entry.map_err(|e| io_error("read dir", path, e))?;
            let (b, t) = measure(&entry.path())?;
            bytes += b;
            newest = newest.max(t);
        }
    }
    Ok((bytes, newest))
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The store folders under `<data-dir>/chunks/` (none when it does not exist).
fn scan(data_dir: &Path) -> Result<Vec<StoreDir>, StoreError> {
    let chunks = data_dir.join(CHUNKS_DIR);
    let entries = match fs::read_dir(&chunks) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error("read dir", &chunks, source)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read dir", &chunks, e))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let (bytes, written) = measure(&entry.path())?;
        out.push(StoreDir {
            name: entry.file_name().to_string_lossy().into_owned(),
            bytes,
            written,
        });
    }
    Ok(out)
}

/// What the agent loop tells about its work, to know what each store is used for and when to sweep.
/// Pure: the loop passes the time in.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Stores the EdgeNode's assignments name; `None` until the first watch event (before it, every
    /// store would look unassigned).
    assigned: Option<BTreeSet<String>>,
    /// Stores of runs started and not yet ended, once per run.
    running: Vec<String>,
    /// Something changed since the last sweep.
    due: bool,
    /// When the last sweep was, and the phases reported then.
    last: Option<(Instant, Vec<(String, AssignmentPhase)>)>,
}

impl Tracker {
    /// The EdgeNode's assignments, as last watched.
    pub fn assigned(&mut self, assignments: &[Assignment]) {
        let now: BTreeSet<String> = assignments.iter().map(|a| name_of(&a.chunk_index)).collect();
        if self.assigned.as_ref() != Some(&now) {
            self.assigned = Some(now);
            self.due = true;
        }
    }

    /// A run of `chunk_index` started.
    pub fn started(&mut self, chunk_index: &str) {
        self.running.push(name_of(chunk_index));
    }

    /// A run of `chunk_index` ended: its store is no longer open.
    pub fn ended(&mut self, chunk_index: &str) {
        let name = name_of(chunk_index);
        if let Some(i) = self.running.iter().position(|n| *n == name) {
            self.running.swap_remove(i);
        }
        self.due = true;
    }

    /// The usage to sweep for, when a sweep is due: the assignments are known, and they or the runs
    /// changed, a reported phase changed, or [`SWEEP_INTERVAL`] passed. Counts as swept.
    pub fn due(&mut self, now: Instant, phases: &[(String, AssignmentPhase)]) -> Option<Usage> {
        let assigned = self.assigned.clone()?;
        let stale = match &self.last {
            None => true,
            Some((at, seen)) => now.duration_since(*at) >= SWEEP_INTERVAL || seen.as_slice() != phases,
        };
        if !self.due && !stale {
            return None;
        }
        self.due = false;
        self.last = Some((now, phases.to_vec()));
        Some(Usage {
            running: self.running.iter().cloned().collect(),
            assigned,
        })
    }
}

/// What one sweep found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The stores removed.
    pub removed: Vec<Eviction>,
    /// Bytes in the data dir afterwards.
    pub data_dir_bytes: u64,
}

/// Keeps the chunk stores of one data dir to the lifecycle above.
#[derive(Debug, Clone)]
pub struct StoreKeeper {
    data_dir: PathBuf,
    budget: Option<u64>,
    metrics: Arc<Metrics>,
    /// Whether the last sweep left the data dir over the budget (to warn once per episode).
    over: Arc<AtomicBool>,
}

impl StoreKeeper {
    /// A keeper of the stores under `data_dir`, to `budget` bytes for the whole data dir (`None`: only
    /// unassigned stores go), reporting into `metrics`.
    pub fn new(data_dir: PathBuf, budget: Option<u64>, metrics: Arc<Metrics>) -> Self {
        Self {
            data_dir,
            budget,
            metrics,
            over: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Removes the stores [`evictions`] names for `usage`, logs and counts each removal, and sets the
    /// data-dir gauge. Blocking file I/O: run it off the async workers. A store that cannot be removed
    /// is logged and tried again at the next sweep.
    pub fn sweep(&self, usage: &Usage) -> Result<Swept, StoreError> {
        let stores = scan(&self.data_dir)?;
        let (total, _) = measure(&self.data_dir)?;
        let removed: Vec<Eviction> = evictions(&stores, usage, total, self.budget)
            .into_iter()
            .filter(|e| self.remove(e))
            .collect();
        let (after, _) = measure(&self.data_dir)?;
        self.metrics
            .data_dir_bytes
            .set(i64::try_from(after).unwrap_or(i64::MAX));
        self.note_budget(after);
        Ok(Swept {
            removed,
            data_dir_bytes: after,
        })
    }

    /// Removes one store folder, logs and counts it; false (logged) when it cannot be removed.
    fn remove(&self, e: &Eviction) -> bool {
        let dir = self.data_dir.join(CHUNKS_DIR).join(&e.name);
        if let Err(err) = store::remove_dir(&dir) {
            warn!(error = %err, "cannot remove a chunk store; trying again at the next sweep");
            return false;
        }
        let reason = e.reason.label();
        info!(store = %dir.display(), reason, bytes = e.bytes, "chunk store removed");
        self.metrics
            .store_evictions
            .get_or_create(&EvictionLabel { reason })
            .inc();
        true
    }

    /// [`Self::sweep`] on the blocking pool; failures are logged.
    pub async fn sweep_off_runtime(&self, usage: Usage) {
        let keeper = self.clone();
        match tokio::task::spawn_blocking(move || keeper.sweep(&usage)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "chunk store sweep failed; trying again at the next sweep"),
            Err(e) => warn!(error = %e, "chunk store sweep panicked"),
        }
    }

    /// Warns when the data dir goes over the budget with nothing left to remove (only stores in use).
    fn note_budget(&self, bytes: u64) {
        let over = self.budget.is_some_and(|b| bytes > b);
        if over && !self.over.swap(true, Ordering::Relaxed) {
            warn!(
                data_dir = %self.data_dir.display(), bytes, budget = self.budget,
                "the data dir holds more than --store-budget with only stores in use left"
            );
        } else if !over && self.over.swap(false, Ordering::Relaxed) {
            info!(data_dir = %self.data_dir.display(), bytes, "the data dir is within --store-budget again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn store(name: &str, bytes: u64, written: u64) -> StoreDir {
        StoreDir {
            name: name.into(),
            bytes,
            written: at(written),
        }
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The store names of chunk-index references.
    fn stores_of(indexes: &[&str]) -> BTreeSet<String> {
        indexes.iter().map(|i| name_of(i)).collect()
    }

    fn removed(e: &[Eviction]) -> Vec<(&str, Reason)> {
        e.iter().map(|e| (e.name.as_str(), e.reason)).collect()
    }

    #[test]
    fn unassigned_stores_go_at_once_whatever_the_budget() {
        let stores = [store("a", MIB, 1), store("b", MIB, 2)];
        let usage = Usage {
            running: BTreeSet::new(),
            assigned: names(&["b"]),
        };
        for budget in [None, Some(100 * MIB)] {
            let e = evictions(&stores, &usage, 2 * MIB, budget);
            assert_eq!(removed(&e), [("a", Reason::Unassigned)], "{budget:?}");
        }
    }

    #[test]
    fn without_a_budget_finished_stores_stay() {
        let stores: Vec<StoreDir> = (0..20).map(|i| store(&format!("s{i}"), MIB, i)).collect();
        let usage = Usage {
            running: names(&["s19"]),
            assigned: stores.iter().map(|s| s.name.clone()).collect(),
        };
        assert!(evictions(&stores, &usage, 20 * MIB, None).is_empty());
    }

    #[test]
    fn over_the_budget_the_least_recently_written_finished_stores_go_first() {
        // Written in the order c, a, b; d is downloading. The data dir also holds 1 MiB of other files.
        let stores = [
            store("a", 2 * MIB, 20),
            store("b", 2 * MIB, 30),
            store("c", 2 * MIB, 10),
            store("d", 2 * MIB, 5),
        ];
        let usage = Usage {
            running: names(&["d"]),
            assigned: names(&["a", "b", "c", "d"]),
        };
        let total = 9 * MIB;
        assert!(
            evictions(&stores, &usage, total, Some(total)).is_empty(),
            "within the budget"
        );
        let e = evictions(&stores, &usage, total, Some(6 * MIB));
        assert_eq!(removed(&e), [("c", Reason::Budget), ("a", Reason::Budget)]);
        assert_eq!(total - e.iter().map(|e| e.bytes).sum::<u64>(), 5 * MIB);
    }

    #[test]
    fn stores_in_use_are_never_removed_even_far_over_the_budget() {
        let stores = [store("seeding", 5 * MIB, 1), store("downloading", 5 * MIB, 2)];
        // A cancelled run that has not ended is still running, whether or not it is assigned.
        let usage = Usage {
            running: names(&["seeding", "downloading"]),
            assigned: names(&["downloading"]),
        };
        assert!(evictions(&stores, &usage, 10 * MIB, Some(0)).is_empty());
    }

    #[test]
    fn unassigned_bytes_count_before_the_budget_takes_finished_stores() {
        let stores = [
            store("gone", 4 * MIB, 50),
            store("old", MIB, 1),
            store("new", MIB, 2),
        ];
        let usage = Usage {
            running: BTreeSet::new(),
            assigned: names(&["old", "new"]),
        };
        // 6 MiB minus the unassigned 4 MiB is within a 2 MiB budget: the finished stores stay.
        let e = evictions(&stores, &usage, 6 * MIB, Some(2 * MIB));
        assert_eq!(removed(&e), [("gone", Reason::Unassigned)]);
        // A budget of 1 MiB takes the older finished store too, and no more.
        let e = evictions(&stores, &usage, 6 * MIB, Some(MIB));
        assert_eq!(
            removed(&e),
            [("gone", Reason::Unassigned), ("old", Reason::Budget)]
        );
    }

    #[test]
    fn same_write_time_is_broken_by_name() {
        let stores = [store("b", MIB, 7), store("a", MIB, 7)];
        let usage = Usage {
            running: BTreeSet::new(),
            assigned: names(&["a", "b"]),
        };
        let e = evictions(&stores, &usage, 2 * MIB, Some(MIB));
        assert_eq!(removed(&e), [("a", Reason::Budget)]);
    }

    #[test]
    fn the_store_dir_of_an_index_is_stable_and_under_chunks() {
        let d = dir_of(Path::new("/var/lib/pollen/data"), "reg/fw@sha256:ab");
        assert_eq!(d, dir_of(Path::new("/var/lib/pollen/data"), "reg/fw@sha256:ab"));
        assert_eq!(d.parent(), Some(Path::new("/var/lib/pollen/data/chunks")));
        assert_ne!(name_of("reg/fw@sha256:ab"), name_of("reg/fw@sha256:cd"));
    }

    #[test]
    fn the_tracker_sweeps_only_once_the_assignments_are_known_and_when_something_changed() {
        use crate::agent::desired::test_assignment;
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.started("idx-1");
        assert_eq!(t.due(t0, &[]), None, "assignments not known yet: no sweep");
        t.assigned(&[
            test_assignment("ns/r1", "idx-1"),
            test_assignment("ns/r2", "idx-2"),
        ]);
        let usage = t.due(t0, &[]).expect("first sweep");
        assert_eq!(usage.running, stores_of(&["idx-1"]));
        assert_eq!(usage.assigned, stores_of(&["idx-1", "idx-2"]));
        assert_eq!(t.due(t0, &[]), None, "nothing changed");
        // A phase change, the same assignments again (no change), a run's end, the interval.
        let installed = [("ns/r1".to_string(), AssignmentPhase::Installed)];
        assert!(t.due(t0, &installed).is_some());
        t.assigned(&[
            test_assignment("ns/r2", "idx-2"),
            test_assignment("ns/r1", "idx-1"),
        ]);
        assert_eq!(t.due(t0, &installed), None);
        t.ended("idx-1");
        assert!(t.due(t0, &installed).unwrap().running.is_empty());
        assert_eq!(t.due(t0 + SWEEP_INTERVAL / 2, &installed), None);
        assert!(t.due(t0 + SWEEP_INTERVAL, &installed).is_some());
        // A removed assignment is due at once.
        t.assigned(&[test_assignment("ns/r2", "idx-2")]);
        let usage = t.due(t0 + SWEEP_INTERVAL, &installed).unwrap();
        assert_eq!(usage.assigned, stores_of(&["idx-2"]));
    }

    #[test]
    fn two_runs_of_one_index_keep_its_store_until_both_ended() {
        let mut t = Tracker::default();
        t.assigned(&[]);
        t.started("idx");
        t.started("idx");
        t.ended("idx");
        let now = Instant::now();
        assert_eq!(t.due(now, &[]).unwrap().running, stores_of(&["idx"]));
        t.ended("idx");
        assert!(t.due(now, &[]).unwrap().running.is_empty());
    }

    /// A store folder as the engine leaves it: the index's store (a preallocated payload file and a
    /// bitfield) and the engine's revocation list.
    fn fake_store(data_dir: &Path, index: &str, size: usize) -> PathBuf {
        let dir = dir_of(data_dir, index);
        fs::create_dir_all(dir.join("0123abcd")).unwrap();
        fs::write(dir.join("0123abcd/payload.part"), vec![7u8; size]).unwrap();
        fs::write(dir.join("0123abcd/have.bits"), b"PLBF").unwrap();
        fs::write(dir.join("revocations.crl"), b"crl").unwrap();
        dir
    }

    fn evictions_counted(m: &Metrics, reason: &'static str) -> u64 {
        m.store_evictions.get_or_create(&EvictionLabel { reason }).get()
    }

    #[test]
    fn a_sweep_removes_what_the_rule_says_counts_it_and_measures_the_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        fs::create_dir_all(data.join("keys/r1")).unwrap();
        fs::write(data.join("keys/r1/director.pem"), b"pem").unwrap();
        let size = 256 * 1024;
        let gone = fake_store(data, "reg/fw@sha256:00", size);
        let old = fake_store(data, "reg/fw@sha256:01", size);
        std::thread::sleep(Duration::from_millis(20));
        let new = fake_store(data, "reg/fw@sha256:02", size);
        let busy = fake_store(data, "reg/fw@sha256:03", size);
        let metrics = Arc::new(Metrics::default());
        let (before, _) = measure(data).unwrap();
        assert!(before >= 4 * size as u64, "{before}");
        // Room for two stores and the rest.
        let budget = before - 2 * size as u64;
        let keeper = StoreKeeper::new(data.to_path_buf(), Some(budget), metrics.clone());
        let usage = Usage {
            running: stores_of(&["reg/fw@sha256:03"]),
            assigned: stores_of(&["reg/fw@sha256:01", "reg/fw@sha256:02", "reg/fw@sha256:03"]),
        };
        let swept = keeper.sweep(&usage).unwrap();
        assert!(!gone.exists(), "unassigned");
        assert!(!old.exists(), "finished and least recently written");
        assert!(new.exists() && busy.exists());
        assert!(
            data.join("keys/r1/director.pem").exists(),
            "only stores are removed"
        );
        assert!(swept.data_dir_bytes <= budget, "{swept:?}");
        assert_eq!(swept.data_dir_bytes, measure(data).unwrap().0);
        assert_eq!(metrics.data_dir_bytes.get(), swept.data_dir_bytes as i64);
        assert_eq!(evictions_counted(&metrics, "unassigned"), 1);
        assert_eq!(evictions_counted(&metrics, "budget"), 1);
        // Nothing else to do: a second sweep removes nothing.
        assert!(keeper.sweep(&usage).unwrap().removed.is_empty());
    }

    #[test]
    fn a_data_dir_without_stores_sweeps_to_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let keeper = StoreKeeper::new(tmp.path().join("absent"), Some(0), Arc::new(Metrics::default()));
        let swept = keeper.sweep(&Usage::default()).unwrap();
        assert!(swept.removed.is_empty());
        assert_eq!(swept.data_dir_bytes, 0);
    }
}
