//! One benchmark run: build the lab, publish the payload at the origin, measure the client-server
//! baseline and the Pollen swarm in the same lab, and set both against the lower bounds.
//!
//! Non-goals: repeated runs and statistics; a run is one sample.

use std::time::Duration;

use serde::Serialize;

use super::LabError;
use super::bounds::SwarmLinks;
use super::net::{Lab, LabBinaries};
use super::origin::Origin;
use super::report::{Bounds, PhaseReport};
use super::spec::LabSpec;
use super::{baseline, payload, swarm};

/// The origin byte budget of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// The origin sends about one copy of the payload (the default).
    OneCopy,
    /// No limit on origin reads.
    Unlimited,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// The lab.
    pub lab: LabSpec,
    /// Payload size in bytes.
    pub payload_bytes: u64,
    /// Origin budget for the swarm phase.
    pub budget: Budget,
    /// Run the client-server baseline.
    pub baseline: bool,
    /// Run the swarm with this launcher configuration.
    pub swarm: Option<swarm::SwarmConfig>,
    /// Longest a phase may take.
    pub timeout: Duration,
    /// Keep node logs here (default: a temporary directory removed after the run).
    pub log_dir: Option<std::path::PathBuf>,
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Describes this machine.
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The lab it ran in.
    pub lab: LabSpec,
    /// Payload size, bytes.
    pub payload_bytes: u64,
    /// The swarm's origin budget.
    pub budget: Budget,
    /// Lower bounds for this run.
    pub bounds: Bounds,
    /// Baseline and swarm.
    pub phases: Vec<PhaseReport>,
    /// Why the swarm phase did not run, if it did not.
    pub swarm_skipped: Option<String>,
    /// The machine.
    pub machine: Machine,
}

/// The bounds of a lab and payload (unshaped links count as infinitely fast).
pub fn bounds_for(lab: &LabSpec, payload_bytes: u64) -> Bounds {
    let r = |x: Option<super::Rate>| x.map_or(f64::INFINITY, |r| r.bits_per_sec() as f64);
    let links = SwarmLinks::uniform(
        payload_bytes,
        r(lab.origin_up),
        r(lab.node_up),
        r(lab.node_down),
        lab.node_count(),
    );
    Bounds {
        kumar_ross_s: links.kumar_ross(),
        origin_once_s: links.origin_once(),
    }
}

/// Runs a benchmark. Logs and the payload live in a temporary directory removed afterwards.
pub fn run(spec: &BenchSpec, bins: &LabBinaries) -> Result<RunReport, LabError> {
    let work = tempfile::Builder::new()
        .prefix("pollen-bench-")
        .tempdir()
        .map_err(|e| LabError::io("creating the run directory", e))?;
    let payload_path = work.path().join("payload.bin");
    let sha = payload::write(&payload_path, spec.payload_bytes, 0x9e37_79b9_7f4a_7c15)?;
    let bounds = bounds_for(&spec.lab, spec.payload_bytes);
    let logs = match &spec.log_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
            d.clone()
        }
        None => work.path().to_path_buf(),
    };
    let lab = Lab::build(spec.lab.clone(), bins)?;
    let origin = Origin::start(&lab, &payload_path, &sha)?;
    let mut phases = Vec::new();
    if spec.baseline {
        phases.push(baseline::run(&lab, &origin, &logs, spec.timeout, bounds)?);
    }
    let swarm_skipped = match &spec.swarm {
        Some(cfg) => match swarm::run_phase(
            &lab,
            &origin,
            cfg,
            &payload_path,
            spec.budget,
            &logs,
            spec.timeout,
            bounds,
        ) {
            Ok(p) => {
                phases.push(p);
                None
            }
            Err(e) => Some(format!("{e}")),
        },
        None => Some("not requested".into()),
    };
    drop(origin);
    drop(lab);
    Ok(RunReport {
        lab: spec.lab.clone(),
        payload_bytes: spec.payload_bytes,
        budget: spec.budget,
        bounds,
        phases,
        swarm_skipped,
        machine: Machine::this(),
    })
}
