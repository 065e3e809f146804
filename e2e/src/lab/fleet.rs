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

/// How a watched process did.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Label (the node name).
    pub label: String,
    /// Time from the start until its done-condition held (or it exited successfully).
    pub done_after: Option<Duration>,
    /// CPU seconds it used until the last one was done (or it exited).
    pub cpu_s: f64,
    /// Its exit status, if it exited during the watch.
    pub exited: Option<String>,
    /// Path of its stderr log.
    pub stderr_path: PathBuf,
}

/// Watches long-running processes (servers that keep serving after they are done) until
/// `is_done(i)` holds for every one, or it exited. A process that exits successfully counts as
/// done then. Afterwards the survivors' CPU time is read and they are killed. Ends early with what
/// it has after `timeout`.
pub fn watch(
    procs: Vec<Proc>,
    start: Instant,
    timeout: Duration,
    is_done: impl Fn(usize) -> bool,
) -> Vec<Watched> {
    let n = procs.len();
    let mut done: Vec<Option<Duration>> = vec![None; n];
    let mut exited: Vec<Option<String>> = vec![None; n];
    let mut procs = procs;
    loop {
        let now = Instant::now();
        for (i, p) in procs.iter_mut().enumerate() {
            if done[i].is_some() || exited[i].is_some() {
                continue;
            }
            if is_done(i) {
                done[i] = Some(now - start);
                continue;
            }
            match procstat::read(p.pid()) {
                Some(s) if !s.is_zombie() => p.last = Some(s),
                other => {
                    if let Some(s) = other {
                        p.last = Some(s);
                    }
                    let status = p.child.wait();
                    let ok = matches!(&status, Ok(s) if s.success());
                    exited[i] = Some(match status {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("wait failed: {e}"),
                    });
                    if ok {
                        done[i] = Some(now - start);
                    }
                }
            }
        }
        let settled = (0..n).all(|i| done[i].is_some() || exited[i].is_some());
        if settled || start.elapsed() > timeout {
            break;
        }
        std::thread::sleep(POLL);
    }
    procs
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            if exited[i].is_none()
                && let Some(s) = procstat::read(p.pid())
            {
                p.last = Some(s);
            }
            Watched {
                label: p.label.clone(),
                done_after: done[i],
                cpu_s: p.last.map(|s| s.cpu_seconds()).unwrap_or(0.0),
                exited: exited[i].clone(),
                stderr_path: p.stderr.clone(),
            }
            // `p` is dropped here: a survivor is killed and reaped.
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn wait_all_times_exits_and_reads_cpu() {
        let d = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let procs = vec![
            Proc::spawn("quick", sh("echo hi"), d.path()).unwrap(),
            Proc::spawn(
                "busy",
                sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exit 3"),
                d.path(),
            )
            .unwrap(),
        ];
        let f = wait_all(procs, start, Duration::from_secs(60)).unwrap();
        assert_eq!(f[0].label, "quick");
        assert!(f[0].success);
        assert_eq!(f[0].stdout.trim(), "hi");
        assert!(!f[1].success);
        assert!(f[1].elapsed >= f[0].elapsed);
        assert!(f[1].cpu_s > 0.0, "the busy loop used CPU: {}", f[1].cpu_s);
    }

    #[test]
    fn wait_all_gives_up_after_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        let procs = vec![Proc::spawn("sleeper", sh("sleep 30"), d.path()).unwrap()];
        let e = wait_all(procs, Instant::now(), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, LabError::Timeout { .. }), "{e}");
    }

    #[test]
    fn watch_uses_the_done_condition_and_kills_survivors() {
        let d = tempfile::tempdir().unwrap();
        let flag = d.path().join("flag");
        // The clock starts before the processes do: the server's 0.3 s sleep cannot have begun
        // earlier, however slowly the spawns go on a loaded machine.
        let t0 = Instant::now();
        let procs = vec![
            Proc::spawn(
                "server",
                sh(&format!("sleep 0.3; touch {}; sleep 30", flag.display())),
                d.path(),
            )
            .unwrap(),
            Proc::spawn("exits", sh("exit 0"), d.path()).unwrap(),
            Proc::spawn("fails", sh("exit 1"), d.path()).unwrap(),
        ];
        let pid = procs[0].pid();
        let w = watch(procs, t0, Duration::from_secs(20), |i| i == 0 && flag.exists());
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not wait for the sleep"
        );
        assert!(w[0].done_after.unwrap() >= Duration::from_millis(250));
        assert!(w[0].exited.is_none());
        assert!(w[1].done_after.is_some());
        assert!(w[2].done_after.is_none());
        assert!(w[2].exited.is_some());
        // The survivor was killed.
        std::thread::sleep(Duration::from_millis(100));
        assert!(procstat::read(pid).is_none_or(|s| s.is_zombie()));
    }
}
