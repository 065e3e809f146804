//! Running one process per node at once and timing each: when it exits (seen as a zombie in
//! `/proc`, before it is reaped) and how much CPU it used.
//!
//! Non-goals: restarting processes, reading their output while they run (it goes to log files).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LabError;
use super::procstat;

/// How often the monitor looks at the processes.
const POLL: Duration = Duration::from_millis(10);

/// A started process.
#[derive(Debug)]
pub struct Proc {
    /// Label (the node name).
    pub label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    last: Option<procstat::ProcStat>,
}

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Label (the node name).
    pub label: String,
    /// Time from the run's start to its exit.
    pub elapsed: Duration,
    /// CPU seconds (user + system) it used.
    pub cpu_s: f64,
    /// Exit status was success.
    pub success: bool,
    /// Exit status, as text.
    pub status: String,
    /// Its stdout (the file it wrote).
    pub stdout: String,
    /// Path of its stderr log.
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to `<log_dir>/<label>.out|.err`.
    pub fn spawn(label: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc, LabError> {
        let stdout = log_dir.join(format!("{label}.out"));
        let stderr = log_dir.join(format!("{label}.err"));
        let open = |p: &Path| {
            std::fs::File::create(p).map_err(|e| LabError::io(format!("creating {}", p.display()), e))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?)
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: format!("{cmd:?}"),
                source,
            })?;
        Ok(Proc {
            label: label.to_string(),
            child,
            stdout,
            stderr,
            last: None,
        })
    }

    /// PID of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn finish(mut self, elapsed: Duration) -> Finished {
        let status = self.child.wait();
        let (success, status) = match status {
            Ok(s) => (s.success(), s.to_string()),
            Err(e) => (false, format!("wait failed: {e}")),
        };
        Finished {
            label: std::mem::take(&mut self.label),
            elapsed,
            cpu_s: self.last.map(|s| s.cpu_seconds()).unwrap_or(0.0),
            success,
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr_path: std::mem::take(&mut self.stderr),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only processes still unfinished reach here with a live child.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for every process, timing each from `start`. After `timeout` the rest are killed and an
/// error lists them. Results come back in the order given.
pub fn wait_all(procs: Vec<Proc>, start: Instant, timeout: Duration) -> Result<Vec<Finished>, LabError> {
    let n = procs.len();
    let mut pending: Vec<(usize, Proc)> = procs.into_iter().enumerate().collect();
    let mut done: Vec<Option<Finished>> = (0..n).map(|_| None).collect();
    while !pending.is_empty() {
        let now = Instant::now();
        let mut still = Vec::with_capacity(pending.len());
        for (i, mut p) in pending {
            match procstat::read(p.pid()) {
                Some(s) if !s.is_zombie() => {
                    p.last = Some(s);
                    still.push((i, p));
                }
                Some(s) => {
                    p.last = Some(s);
                    done[i] = Some(p.finish(now - start));
                }
                None => done[i] = Some(p.finish(now - start)),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if start.elapsed() > timeout {
            let names: Vec<String> = pending.iter().map(|(_, p)| p.label.clone()).collect();
            return Err(LabError::Timeout {
                what: format!(
                    "{} of {n} processes still running: {}",
                    names.len(),
                    names.join(" ")
                ),
                after: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(done.into_iter().flatten().collect())
}
