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
    /// The node's site.
    pub site: usize,
    /// Verified chunk bytes read from the origin and from other sites' peers, as the node counted
    /// them (its completion log line; swarm only, `None` when it did not say).
    pub data: Option<DataBytes>,
}

/// Chunk bytes one node fetched, headers and retransmissions excluded (what was needed on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DataBytes {
    /// From the origin.
    pub origin: u64,
    /// From peers of other sites (across the WAN).
    pub cross_site: u64,
}

/// The node's [`DataBytes`] from its log: the `origin_bytes=` and `cross_site_bytes=` fields of the
/// engine's `index complete` line, terminal colour codes allowed.
pub fn data_from_log(log: &str) -> Option<DataBytes> {
    let line = log.lines().rev().find(|l| l.contains("index complete"))?;
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence, `ESC [ … m`.
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let field = |key: &str| -> Option<u64> {
        plain
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    Some(DataBytes {
        origin: field("origin_bytes")?,
        cross_site: field("cross_site_bytes")?,
    })
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
    /// Chunk bytes the site's nodes needed from outside (origin and other sites), in payload copies:
    /// what one copy per site means, without transport overhead (`None` unless every node said).
    pub data_in_copies: Option<f64>,
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
    /// Chunk bytes the nodes read from the origin, in payload copies (`None` unless every node said):
    /// the share of `origin_copies` that is data, not headers or retransmissions.
    pub origin_data_copies: Option<f64>,
    /// TCP segments the origin sent again, as a share of all it sent (0 when it sent none).
    pub origin_retrans_share: f64,
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
    let data: Option<Vec<(usize, DataBytes)>> = (n > 0)
        .then(|| nodes.iter().map(|x| x.data.map(|d| (x.site, d))).collect())
        .flatten();
    let origin_data_copies = data
        .as_ref()
        .map(|d| d.iter().map(|(_, b)| b.origin).sum::<u64>() as f64 / f);
    let data_in = |site: usize| {
        data.as_ref().map(|d| {
            d.iter()
                .filter(|(s, _)| *s == site)
                .map(|(_, b)| b.origin + b.cross_site)
                .sum::<u64>() as f64
                / f
        })
    };
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
        origin_data_copies,
        origin_retrans_share: if traffic.origin_tcp.out > 0 {
            traffic.origin_tcp.retrans as f64 / traffic.origin_tcp.out as f64
        } else {
            0.0
        },
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
                data_in_copies: data_in(site),
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
        "{:<9} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>6} {:>8} {:>9} {:>9} {:>5}  site WAN in/out × (data in)",
        "phase",
        "done",
        "first s",
        "median s",
        "last s",
        "/KR",
        "/once",
        "origin ×",
        "data",
        "rexmit",
        "node cpu",
        "delay cpu",
        "lab drops",
        "busy",
    );
    for p in phases {
        let wan: Vec<String> = p
            .sites
            .iter()
            .map(|w| match w.data_in_copies {
                Some(d) => format!("{:.2}/{:.2} ({d:.3})", w.in_copies, w.out_copies),
                None => format!("{:.2}/{:.2}", w.in_copies, w.out_copies),
            })
            .collect();
        let _ = writeln!(
            s,
            "{:<9} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8.3} {:>6} {:>5.1}% {:>8.1} {:>9.1} {:>9} {:>4.0}%  {}",
            p.phase,
            format!("{}/{}", p.completed, p.nodes),
            opt(p.first_s, 1),
            opt(p.median_s, 1),
            opt(p.last_s, 1),
            opt(p.last_over_kumar_ross, 2),
            opt(p.last_over_origin_once, 2),
            p.origin_copies,
            opt(p.origin_data_copies, 3),
            p.origin_retrans_share * 100.0,
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
    use super::super::counters::TcpSegs;
    use super::*;

    fn nodes(times: &[Option<f64>]) -> Vec<NodeResult> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| NodeResult {
                node: format!("n{i}"),
                done_s: *t,
                cpu_s: 0.5,
                site: i % 2,
                data: None,
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
            origin_tcp: TcpSegs {
                out: 400,
                retrans: 10,
            },
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
        assert!((r.origin_retrans_share - 0.025).abs() < 1e-12);
        let t = table(&[r], B);
        assert!(t.contains("swarm"), "{t}");
        assert!(t.contains("2.100"), "{t}");
        assert!(t.contains("2.5%"), "{t}");
    }

    #[test]
    fn data_copies_from_the_nodes_logs() {
        let line = "\u{1b}[2m2026-11-23T12:35:08Z\u{1b}[0m INFO peer: index complete \u{1b}[3mseconds\u{1b}[0m\u{1b}[2m=\u{1b}[0m63.5 \
                    \u{1b}[3morigin_bytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m300 \u{1b}[3mcross_site_bytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m600 x=1";
        let log = format!("starting\n{line}\nseeding\n");
        assert_eq!(
            data_from_log(&log),
            Some(DataBytes {
                origin: 300,
                cross_site: 600
            })
        );
        assert_eq!(
            data_from_log("index complete origin_bytes=5 cross_site_bytes=7"),
            Some(DataBytes {
                origin: 5,
                cross_site: 7
            })
        );
        assert_eq!(data_from_log("index complete origin_bytes=5"), None);
        assert_eq!(data_from_log("origin_bytes=5 cross_site_bytes=7"), None);

        let mut ns = nodes(&[Some(1.0), Some(2.0), Some(3.0)]);
        for (n, (o, x)) in ns.iter_mut().zip([(400, 600), (100, 900), (500, 500)]) {
            n.data = Some(DataBytes {
                origin: o,
                cross_site: x,
            });
        }
        let r = phase_report(
            "swarm",
            1_000,
            ns.clone(),
            &LabCounters {
                wan_in: vec![2_100, 1_050],
                wan_out: vec![0, 0],
                ..LabCounters::default()
            },
            0.0,
            B,
        );
        assert_eq!(r.origin_data_copies, Some(1.0));
        // Site 0 holds n0 and n2, site 1 holds n1.
        assert_eq!(r.sites[0].data_in_copies, Some(2.0));
        assert_eq!(r.sites[1].data_in_copies, Some(1.0));
        assert!(table(&[r], B).contains("(2.000)"));
        // One node without figures: no data columns, rather than a partial sum.
        ns[1].data = None;
        let r = phase_report("swarm", 1_000, ns, &LabCounters::default(), 0.0, B);
        assert_eq!(r.origin_data_copies, None);
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
