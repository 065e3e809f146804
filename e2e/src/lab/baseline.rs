//! The client-server baseline: every node downloads the payload blob from the origin registry at
//! the same moment, over plain HTTP (`curl` inside each node's namespace).
//!
//! Non-goals: retries or range requests; this is the naive fleet update Pollen is compared with.

use std::path::Path;
use std::time::{Duration, Instant};

use super::LabError;
use super::counters::LabCounters;
use super::fleet::{Proc, wait_all};
use super::net::Lab;
use super::origin::Origin;
use super::procstat;
use super::report::{Bounds, NodeResult, PhaseReport, phase_report};

/// CPU seconds of the lab's delay daemon so far (0 without delay).
pub fn delay_cpu(lab: &Lab) -> f64 {
    lab.delay_pid()
        .and_then(procstat::read)
        .map(|s| s.cpu_seconds())
        .unwrap_or(0.0)
}

/// Runs the baseline and reports it. Node logs go to `log_dir`.
pub fn run(
    lab: &Lab,
    origin: &Origin,
    log_dir: &Path,
    timeout: Duration,
    bounds: Bounds,
) -> Result<PhaseReport, LabError> {
    let url = origin.blob_url();
    let before = LabCounters::read(lab)?;
    let cpu_before = delay_cpu(lab);
    let start = Instant::now();
    let mut procs = Vec::new();
    for node in lab.nodes() {
        let mut cmd = lab.command(&node.ns, Path::new("curl"));
        cmd.args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-m",
            &timeout.as_secs().to_string(),
            "-w",
            "%{size_download}",
            &url,
        ]);
        procs.push(Proc::spawn(&format!("baseline-{}", node.name), cmd, log_dir)?);
    }
    let finished = wait_all(procs, start, timeout + Duration::from_secs(5))?;
    let traffic = LabCounters::read(lab)?.since(&before);
    let delay_cpu_s = delay_cpu(lab) - cpu_before;
    let nodes = lab
        .nodes()
        .iter()
        .zip(finished)
        .map(|(node, f)| {
            let got: u64 = f.stdout.trim().parse().unwrap_or(0);
            let ok = f.success && got == origin.size;
            if !ok {
                let err = std::fs::read_to_string(&f.stderr_path).unwrap_or_default();
                eprintln!(
                    "baseline: {} failed ({}, {got} of {} bytes): {}",
                    node.name,
                    f.status,
                    origin.size,
                    err.trim()
                );
            }
            NodeResult {
                node: node.name.clone(),
                done_s: ok.then_some(f.elapsed.as_secs_f64()),
                cpu_s: f.cpu_s,
                site: node.site,
                data: None,
            }
        })
        .collect();
    Ok(phase_report(
        "baseline",
        origin.size,
        nodes,
        &traffic,
        delay_cpu_s,
        bounds,
    ))
}
