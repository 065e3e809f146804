//! Checking that the lab's links are what the spec says: a TCP transfer's rate between two
//! endpoints, and round-trip time and loss of UDP probes (binary `pollen-lab-probe`).
//!
//! Non-goals: judging the figures (tests and the benchmark decide the tolerances).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Instant;

use serde::Serialize;

use super::LabError;
use super::counters;
use super::net::{Lab, LabBinaries};

/// A measured TCP transfer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RateSample {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Payload rate at the receiver, bit/s.
    pub goodput_bps: f64,
    /// Rate on the sender's wire (interface counter, headers included), bit/s.
    pub wire_bps: f64,
}

/// Measured UDP round trips.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PingSample {
    /// Probes sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Fastest round trip, ms.
    pub rtt_min_ms: f64,
    /// Median round trip, ms.
    pub rtt_median_ms: f64,
}

impl PingSample {
    /// Fraction of probes without a reply (loss on either direction).
    pub fn round_trip_loss(&self) -> f64 {
        1.0 - self.received as f64 / self.sent as f64
    }
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(
    lab: &Lab,
    bins: &LabBinaries,
    ns: &str,
    args: &[&str],
) -> Result<(Killer, BufReader<std::process::ChildStdout>), LabError> {
    let mut child = lab
        .command(ns, &bins.probe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: format!("pollen-lab-probe {}", args.join(" ")),
            source,
        })?;
    let out = child.stdout.take();
    let k = Killer(child);
    let mut out = BufReader::new(out.ok_or_else(|| LabError::Failed("probe has no stdout".into()))?);
    let mut line = String::new();
    out.read_line(&mut line)
        .map_err(|e| LabError::io("reading the probe's ready line", e))?;
    if line.trim() != "ready" {
        return Err(LabError::Failed(format!("probe server said {:?}", line.trim())));
    }
    Ok((k, out))
}

fn json(text: &str) -> Result<serde_json::Value, LabError> {
    serde_json::from_str(text.trim()).map_err(|e| LabError::Parse {
        what: "probe output".into(),
        detail: format!("{e}: {text:?}"),
    })
}

/// Sends `bytes` over TCP from namespace `from_ns` (interface `eth0`) to `to_addr` in `to_ns`.
pub fn rate(
    lab: &Lab,
    bins: &LabBinaries,
    from_ns: &str,
    to_ns: &str,
    to_addr: std::net::Ipv4Addr,
    bytes: u64,
) -> Result<RateSample, LabError> {
    let listen = format!("{to_addr}:7001");
    let (sink, mut out) = start_server(
        lab,
        bins,
        to_ns,
        &["sink", "--listen", &listen, "--max-secs", "120"],
    )?;
    let before = counters::read(from_ns, "eth0")?.tx;
    let t0 = Instant::now();
    let status = lab
        .command(from_ns, &bins.probe)
        .args(["send", "--to", &listen, "--bytes", &bytes.to_string()])
        .stdin(Stdio::null())
        .status()
        .map_err(|source| LabError::Spawn {
            cmd: "pollen-lab-probe send".into(),
            source,
        })?;
    let secs = t0.elapsed().as_secs_f64();
    let wire = counters::read(from_ns, "eth0")?.tx - before;
    if !status.success() {
        return Err(LabError::Failed(format!("probe send: {status}")));
    }
    let mut line = String::new();
    out.read_line(&mut line)
        .map_err(|e| LabError::io("reading the sink's result", e))?;
    drop(sink);
    let v = json(&line)?;
    Ok(RateSample {
        bytes: v["bytes"].as_u64().unwrap_or(0),
        goodput_bps: v["bits_per_sec"].as_f64().unwrap_or(0.0),
        wire_bps: wire as f64 * 8.0 / secs,
    })
}

/// Sends `count` UDP probes every `interval_us` from `from_ns` to an echo server at `to_addr`.
pub fn ping(
    lab: &Lab,
    bins: &LabBinaries,
    from_ns: &str,
    to_ns: &str,
    to_addr: std::net::Ipv4Addr,
    count: u32,
    interval_us: u64,
) -> Result<PingSample, LabError> {
    let listen = format!("{to_addr}:7002");
    let (_echo, _out) = start_server(
        lab,
        bins,
        to_ns,
        &["echo", "--listen", &listen, "--max-secs", "120"],
    )?;
    let out = lab
        .command(from_ns, &bins.probe)
        .args([
            "ping",
            "--to",
            &listen,
            "--count",
            &count.to_string(),
            "--interval-us",
            &interval_us.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: "pollen-lab-probe ping".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Failed(format!(
            "probe ping: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let v = json(&String::from_utf8_lossy(&out.stdout))?;
    Ok(PingSample {
        sent: v["sent"].as_u64().unwrap_or(0),
        received: v["received"].as_u64().unwrap_or(0),
        rtt_min_ms: v["rtt_min_ms"].as_f64().unwrap_or(f64::NAN),
        rtt_median_ms: v["rtt_median_ms"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Load on every node at once: each sends to the next one round a ring.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RingSample {
    /// Nodes sending (and receiving).
    pub nodes: usize,
    /// Seconds until the last transfer ended.
    pub secs: f64,
    /// Sum of all payload bytes over `secs`, bit/s.
    pub aggregate_goodput_bps: f64,
    /// CPU seconds the delay daemon used meanwhile.
    pub delay_cpu_s: f64,
}

/// Every node sends `bytes` to its successor at once; measures the lab's carrying capacity and the
/// delay daemon's CPU under that load.
pub fn ring(lab: &Lab, bins: &LabBinaries, bytes: u64) -> Result<RingSample, LabError> {
    let nodes = lab.nodes();
    let n = nodes.len();
    if n < 2 {
        return Err(LabError::Spec("a ring needs two nodes".into()));
    }
    let mut sinks = Vec::new();
    for node in nodes {
        let listen = format!("{}:7003", node.addr);
        sinks.push(start_server(
            lab,
            bins,
            &node.ns,
            &["sink", "--listen", &listen, "--max-secs", "600"],
        )?);
    }
    let dir = tempfile::tempdir().map_err(|e| LabError::io("tempdir", e))?;
    let cpu0 = super::baseline::delay_cpu(lab);
    let start = Instant::now();
    let mut procs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let to = &nodes[(i + 1) % n];
        let mut cmd = lab.command(&node.ns, &bins.probe);
        cmd.args([
            "send",
            "--to",
            &format!("{}:7003", to.addr),
            "--bytes",
            &bytes.to_string(),
        ]);
        procs.push(super::fleet::Proc::spawn(&node.name, cmd, dir.path())?);
    }
    let done = super::fleet::wait_all(procs, start, std::time::Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    let delay_cpu_s = super::baseline::delay_cpu(lab) - cpu0;
    if let Some(f) = done.iter().find(|f| !f.success) {
        return Err(LabError::Failed(format!("ring sender {}: {}", f.label, f.status)));
    }
    let mut total = 0u64;
    for (_k, out) in &mut sinks {
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| LabError::io("reading a sink's result", e))?;
        total += json(&line)?["bytes"].as_u64().unwrap_or(0);
    }
    Ok(RingSample {
        nodes: n,
        secs,
        aggregate_goodput_bps: total as f64 * 8.0 / secs,
        delay_cpu_s,
    })
}
