//! Turning one phase's raw measurements (per-node finish times and CPU, counter differences) into
//! the figures the benchmark reports, and printing them as a table. Pure.
//!
//! Non-goals: statistics over repeated runs.

use std::fmt::Write;

use serde::Serialize;

use super::counters::LabCounters;

/// One node's result in a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeResult {
    /// Node name.
    pub node: String,
    /// Seconds from the phase's start until the node held the payload; `None` if it failed.
    pub done_s: Option<f64>,
    /// CPU seconds the node's process used.
    pub cpu_s: f64,
}

/// WAN traffic of one site in a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteWan {
    /// Site number.
    pub site: usize,
    /// Bytes into the site over its WAN hop.
    pub in_bytes: u64,
    /// Bytes out of the site over its WAN hop.
    pub out_bytes: u64,
    /// `in_bytes` in payload copies.
    pub in_copies: f64,
    /// `out_bytes` in payload copies.
    pub out_copies: f64,
}

/// The figures of one phase (the client-server baseline, or the swarm).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// `baseline` or `swarm`.
    pub phase: String,
    /// Nodes in the phase.
    pub nodes: usize,
    /// Nodes that finished with the payload.
    pub completed: usize,
    /// Time to the first node, seconds.
    pub first_s: Option<f64>,
    /// Time until half the nodes finished (the ⌈N/2⌉-th), seconds.
    pub median_s: Option<f64>,
    /// Time to the last node, seconds (only when all completed).
    pub last_s: Option<f64>,
    /// `last_s` ÷ the Kumar–Ross bound.
    pub last_over_kumar_ross: Option<f64>,
    /// `last_s` ÷ the origin-once bound.
    pub last_over_origin_once: Option<f64>,
    /// Bytes the origin sent (interface counter, headers included).
    pub origin_bytes: u64,
    /// `origin_bytes` in payload copies.
    pub origin_copies: f64,
    /// WAN traffic per site.
    pub sites: Vec<SiteWan>,
    /// CPU seconds used by all node processes.
    pub node_cpu_s: f64,
    /// CPU seconds used by the lab's delay daemon during the phase.
    pub delay_cpu_s: f64,
    /// Share of the machine's CPU time (all cores) that was busy during the phase, kernel included;
    /// near 1.0 means the run was CPU-bound.
    pub machine_cpu_busy: f64,
    /// Packets the lab dropped beyond the configured loss (delay queue overflow); 0 in a sound run.
    pub lab_drops: u64,
    /// Per node.
    pub per_node: Vec<NodeResult>,
}

/// The two lower bounds of a run, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    /// Kumar–Ross (no origin budget).
    pub kumar_ross_s: f64,
    /// Origin-once (budget of one copy).
    pub origin_once_s: f64,
}

/// Builds a phase report.
pub fn phase_report(
    phase: &str,
    payload_bytes: u64,
    nodes: Vec<NodeResult>,
    traffic: &LabCounters,
    delay_cpu_s: f64,
    bounds: Bounds,
) -> PhaseReport {
    let f = payload_bytes as f64;
    let mut times: Vec<f64> = nodes.iter().filter_map(|n| n.done_s).collect();
    times.sort_by(f64::total_cmp);
    let n = nodes.len();
    let completed = times.len();
    let first_s = times.first().copied();
    let median_s = if n > 0 {
        times.get(n.div_ceil(2) - 1).copied()
    } else {
        None
    };
    let last_s = (completed == n && n > 0).then(|| times[n - 1]);
    PhaseReport {
        phase: phase.to_string(),
        nodes: n,
        completed,
        first_s,
        median_s,
        last_s,
        last_over_kumar_ross: last_s.map(|l| l / bounds.kumar_ross_s),
        last_over_origin_once: last_s.map(|l| l / bounds.origin_once_s),
        origin_bytes: traffic.origin_tx,
        origin_copies: traffic.origin_tx as f64 / f,
        sites: traffic
            .wan_in
            .iter()
            .zip(&traffic.wan_out)
            .enumerate()
            .map(|(site, (&i, &o))| SiteWan {
                site,
                in_bytes: i,
                out_bytes: o,
                in_copies: i as f64 / f,
                out_copies: o as f64 / f,
            })
            .collect(),
        node_cpu_s: nodes.iter().map(|n| n.cpu_s).sum(),
        delay_cpu_s,
        lab_drops: traffic.lab_drops,
        machine_cpu_busy: if traffic.cpu_total > 0 {
            traffic.cpu_busy as f64 / traffic.cpu_total as f64
        } else {
            0.0
        },
        per_node: nodes,
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "—".into())
}

/// A plain-text table of phases, one row each.
pub fn table(phases: &[PhaseReport], bounds: Bounds) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bounds: Kumar–Ross {:.1} s, origin-once {:.1} s",
        bounds.kumar_ross_s, bounds.origin_once_s
    );
    let _ = writeln!(
        s,
        "{:<9} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>5}  site WAN in/out ×",
        "phase",
        "done",
        "first s",
        "median s",
        "last s",
        "/KR",
        "/once",
        "origin ×",
        "node cpu",
        "delay cpu",
        "lab drops",
        "busy",
    );
    for p in phases {
        let wan: Vec<String> = p
            .sites
            .iter()
            .map(|w| format!("{:.2}/{:.2}", w.in_copies, w.out_copies))
            .collect();
        let _ = writeln!(
            s,
            "{:<9} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8.3} {:>8.1} {:>9.1} {:>9} {:>4.0}%  {}",
            p.phase,
            format!("{}/{}", p.completed, p.nodes),
            opt(p.first_s, 1),
            opt(p.median_s, 1),
            opt(p.last_s, 1),
            opt(p.last_over_kumar_ross, 2),
            opt(p.last_over_origin_once, 2),
            p.origin_copies,
            p.node_cpu_s,
            p.delay_cpu_s,
            p.lab_drops,
            p.machine_cpu_busy * 100.0,
            wan.join(" ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(times: &[Option<f64>]) -> Vec<NodeResult> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| NodeResult {
                node: format!("n{i}"),
                done_s: *t,
                cpu_s: 0.5,
            })
            .collect()
    }

    const B: Bounds = Bounds {
        kumar_ross_s: 10.0,
        origin_once_s: 20.0,
    };

    #[test]
    fn figures_from_times_and_counters() {
        let traffic = LabCounters {
            origin_tx: 2_100,
            wan_out: vec![100, 0],
            wan_in: vec![1_000, 1_050],
            lab_drops: 3,
            cpu_busy: 150,
            cpu_total: 200,
        };
        let r = phase_report(
            "swarm",
            1_000,
            nodes(&[Some(4.0), Some(1.0), Some(3.0), Some(22.0)]),
            &traffic,
            0.2,
            B,
        );
        assert_eq!(r.completed, 4);
        assert_eq!(r.first_s, Some(1.0));
        assert_eq!(r.median_s, Some(3.0));
        assert_eq!(r.last_s, Some(22.0));
        assert_eq!(r.last_over_kumar_ross, Some(2.2));
        assert_eq!(r.last_over_origin_once, Some(1.1));
        assert!((r.origin_copies - 2.1).abs() < 1e-12);
        assert!((r.sites[1].in_copies - 1.05).abs() < 1e-12);
        assert!((r.node_cpu_s - 2.0).abs() < 1e-12);
        assert_eq!(r.lab_drops, 3);
        assert!((r.machine_cpu_busy - 0.75).abs() < 1e-12);
        let t = table(&[r], B);
        assert!(t.contains("swarm"), "{t}");
        assert!(t.contains("2.100"), "{t}");
    }

    #[test]
    fn a_failed_node_leaves_no_last_time() {
        let r = phase_report(
            "baseline",
            10,
            nodes(&[Some(1.0), None, Some(2.0)]),
            &LabCounters::default(),
            0.0,
            B,
        );
        assert_eq!(r.completed, 2);
        assert_eq!(r.median_s, Some(2.0));
        assert_eq!(r.last_s, None);
        assert_eq!(r.last_over_kumar_ross, None);
    }
}
