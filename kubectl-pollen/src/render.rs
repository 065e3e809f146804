//! Text rendering of a rollout and of the EdgeNode inventory (pure: objects in, text out).
//!
//! `status` shows what a fleet operator asks while a rollout runs: where it is (phase, wave,
//! installed/targeted, offload), each wave's bar, each node's bar with its bytes from peers and from the
//! origin, and every failure with its reason. Nodes that need attention come first (failed, then busy,
//! then waiting, then installed), so a long fleet still shows what matters within `max_nodes` lines.
//!
//! Non-goals: colour, terminal control (the caller clears the screen in `--watch`), API access.

use jiff::Timestamp;
use pollen_crds::{AssignmentPhase, EdgeNode, UpdateRollout};

/// How to render.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Width of a progress bar, in characters.
    pub bar_width: usize,
    /// At most this many node lines; the rest are summarised in one line.
    pub max_nodes: usize,
    /// "Now", for ages.
    pub now: Timestamp,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            bar_width: 20,
            max_nodes: 50,
            now: Timestamp::now(),
        }
    }
}

/// One node's part in one rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    /// EdgeNode name.
    pub name: String,
    /// The wave the operator put it in (from its assignment), if assigned.
    pub wave: Option<i32>,
    /// Its reported phase; `None` when assigned but not reported yet.
    pub phase: Option<AssignmentPhase>,
    /// Verified bytes.
    pub verified: i64,
    /// Payload size.
    pub total: i64,
    /// Bytes from peers.
    pub from_peers: i64,
    /// Bytes from the origin.
    pub from_origin: i64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Whether the node carries the quarantine label.
    pub quarantined: bool,
}

/// `namespace/name` of a rollout, as EdgeNode assignments name it.
pub fn rollout_key(ur: &UpdateRollout) -> String {
    format!(
        "{}/{}",
        ur.metadata.namespace.as_deref().unwrap_or("default"),
        ur.metadata.name.as_deref().unwrap_or("")
    )
}

/// The nodes taking part in rollout `key` (assigned, or still reporting on it), sorted so that the ones
/// needing attention come first: failed, busy, waiting, installed; then by wave and name.
pub fn rollout_nodes(key: &str, nodes: &[EdgeNode]) -> Vec<NodeRow> {
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .filter_map(|n| {
            let assignment = n.spec.assignments.iter().find(|a| a.rollout == key);
            let reported = n.status.as_ref().and_then(|s| {
                s.assignments.iter().find(|a| {
                    a.rollout == key && assignment.is_none_or(|asg| asg.chunk_index == a.chunk_index)
                })
            });
            if assignment.is_none() && reported.is_none() {
                return None;
            }
            Some(NodeRow {
                name: n.metadata.name.clone().unwrap_or_default(),
                wave: assignment.map(|a| a.wave),
                phase: reported.map(|r| r.phase),
                verified: reported.map_or(0, |r| r.verified_bytes),
                total: reported.map_or(0, |r| r.total_bytes),
                from_peers: reported.map_or(0, |r| r.bytes_from_peers),
                from_origin: reported.map_or(0, |r| r.bytes_from_origin),
                last_error: reported.and_then(|r| r.last_error.clone()),
                quarantined: n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(pollen_crds::labels::QUARANTINE))
                    .is_some_and(|v| v == "true"),
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        (attention(a), a.wave.unwrap_or(i32::MAX), &a.name).cmp(&(
            attention(b),
            b.wave.unwrap_or(i32::MAX),
            &b.name,
        ))
    });
    rows
}

fn attention(r: &NodeRow) -> u8 {
    match r.phase {
        Some(AssignmentPhase::Failed | AssignmentPhase::RolledBack) => 0,
        _ if r.quarantined => 0,
        Some(AssignmentPhase::Verifying | AssignmentPhase::Downloading | AssignmentPhase::Installing) => 1,
        Some(AssignmentPhase::Pending | AssignmentPhase::Staged) | None => 2,
        Some(AssignmentPhase::Installed) => 3,
    }
}

/// A progress bar of `width` cells for `fraction` (clamped to 0..=1), followed by the percentage.
pub fn bar(fraction: f64, width: usize) -> String {
    let f = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (f * width as f64).round() as usize;
    format!(
        "{}{} {:>3.0}%",
        "█".repeat(filled),
        "░".repeat(width - filled),
        f * 100.0
    )
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{} B", n.max(0))
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A kubectl-style age: `45s`, `12m`, `5h`, `3d`.
pub fn age(from: Timestamp, now: Timestamp) -> String {
    let s = now.as_second().saturating_sub(from.as_second()).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Lays out rows as left-aligned columns separated by three spaces (like kubectl's tables).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The status view of one rollout and its nodes.
pub fn status(ur: &UpdateRollout, rows: &[NodeRow], opts: &RenderOptions) -> String {
    let key = rollout_key(ur);
    let st = ur.status.clone().unwrap_or_default();
    let mut out = String::new();
    let waves_total = st.waves.len().max(1);
    let wave = st
        .current_wave
        .map_or("-".to_string(), |w| format!("{}/{}", w + 1, waves_total));
    let moved = st.bytes_from_peers + st.bytes_from_origin;
    let offload = if moved > 0 {
        format!("{:.1}%", 100.0 * ratio(st.bytes_from_peers, moved))
    } else {
        "-".to_string()
    };
    out.push_str(&table(&[
        vec![
            "ROLLOUT".into(),
            "PHASE".into(),
            "WAVE".into(),
            "INSTALLED".into(),
            "FAILED".into(),
            "OFFLOAD".into(),
        ],
        vec![
            key.clone(),
            format!("{:?}", st.phase),
            wave,
            format!("{}/{}", st.nodes.installed, st.nodes.targeted),
            st.nodes.failed.to_string(),
            offload,
        ],
    ]));
    let artifact = st
        .artifact_digest
        .as_deref()
        .unwrap_or(&ur.spec.artifact.reference);
    let size = st
        .artifact_size
        .map(|s| format!(" ({})", human_bytes(s)))
        .unwrap_or_default();
    out.push_str(&format!(
        "artifact: {artifact}{size} -> {}\n",
        ur.spec.install.target_path
    ));
    match (&st.version, &st.downgraded_from) {
        (Some(v), Some(from)) => out.push_str(&format!(
            "version:  {v} (signed; a downgrade from {from}, allowDowngrade)\n"
        )),
        (Some(v), None) => out.push_str(&format!("version:  {v} (signed)\n")),
        (None, _) => {}
    }
    out.push_str(&format!(
        "bytes:    peers {}   origin {}\n",
        human_bytes(st.bytes_from_peers),
        human_bytes(st.bytes_from_origin)
    ));
    if ur.spec.strategy.paused {
        out.push_str("paused:   yes (no new wave starts; `kubectl pollen resume` to go on)\n");
    }

    if !st.waves.is_empty() {
        out.push('\n');
        let mut t = vec![vec![
            "WAVE".into(),
            "NODES".into(),
            "PROGRESS".into(),
            "INSTALLED".into(),
            "FAILED".into(),
            String::new(),
        ]];
        for w in &st.waves {
            let note = if st.current_wave == Some(w.index) {
                "<- current"
            } else if !w.started {
                "not started"
            } else {
                ""
            };
            t.push(vec![
                w.index.to_string(),
                w.targeted.to_string(),
                bar(ratio(w.installed as i64, w.targeted as i64), opts.bar_width),
                format!("{}/{}", w.installed, w.targeted),
                w.failed.to_string(),
                note.into(),
            ]);
        }
        out.push_str(&table(&t));
    }

    if !rows.is_empty() {
        out.push('\n');
        let mut t = vec![vec![
            "NODE".into(),
            "WAVE".into(),
            "PHASE".into(),
            "PROGRESS".into(),
            "PEERS".into(),
            "ORIGIN".into(),
        ]];
        for r in rows.iter().take(opts.max_nodes) {
            let phase = match (r.phase, r.quarantined) {
                (_, true) => "Quarantined".to_string(),
                (Some(p), _) => format!("{p:?}"),
                (None, _) => "Assigned".to_string(),
            };
            let done = if r.phase == Some(AssignmentPhase::Installed) {
                1.0
            } else {
                ratio(r.verified, r.total)
            };
            t.push(vec![
                r.name.clone(),
                r.wave.map_or("-".into(), |w| w.to_string()),
                phase,
                bar(done, opts.bar_width),
                human_bytes(r.from_peers),
                human_bytes(r.from_origin),
            ]);
        }
        out.push_str(&table(&t));
        if rows.len() > opts.max_nodes {
            let rest = &rows[opts.max_nodes..];
            let installed = rest
                .iter()
                .filter(|r| r.phase == Some(AssignmentPhase::Installed))
                .count();
            out.push_str(&format!(
                "... and {} more nodes ({installed} installed); --max-nodes shows more\n",
                rest.len()
            ));
        }
    }

    let failures: Vec<String> = rows
        .iter()
        .filter(|r| attention(r) == 0)
        .map(|r| {
            let why = r.last_error.as_deref().unwrap_or(if r.quarantined {
                "quarantined"
            } else {
                "no reason given"
            });
            let phase = r.phase.map_or("Quarantined".to_string(), |p| format!("{p:?}"));
            format!(
                "  {} (wave {}): {phase}: {why}",
                r.name,
                r.wave.map_or("-".into(), |w| w.to_string())
            )
        })
        .collect();
    let conditions: Vec<String> = st
        .conditions
        .iter()
        .filter(|c| is_problem(&c.type_, &c.status))
        .map(|c| format!("  {}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect();
    if !failures.is_empty() || !conditions.is_empty() {
        out.push_str("\nFAILURES\n");
        for l in conditions.iter().chain(&failures) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Whether a rollout condition reports a problem. `False` is bad news only for the checks that must
/// pass (`Resolved`, `Verified`, `Indexed`); `Progressing=False` (finished) and `Complete=False` (still
/// running) are not failures. `Failed` and `Conflict` are problems when `True`.
pub fn is_problem(type_: &str, status: &str) -> bool {
    matches!(
        (type_, status),
        ("Resolved" | "Verified" | "Indexed", "False") | ("Failed" | "Conflict", "True")
    )
}

/// The EdgeNode inventory: site, endpoint, architecture, agent version, certificate expiry, active
/// assignments, the current installed version of each install path, and the last heartbeat.
pub fn nodes(list: &[EdgeNode], opts: &RenderOptions) -> String {
    let mut sorted: Vec<&EdgeNode> = list.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut t = vec![
        [
            "NAME",
            "SITE",
            "ENDPOINT",
            "ARCH",
            "AGENT",
            "CERT-EXPIRES",
            "ACTIVE",
            "INSTALLED",
            "HEARTBEAT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in sorted {
        let st = n.status.clone().unwrap_or_default();
        let inv = st.inventory.as_ref();
        let mut installed: Vec<String> = st
            .installed
            .iter()
            .filter(|v| v.current)
            .map(|v| format!("{}@{}", v.target_path, short_digest(&v.digest)))
            .collect();
        let others = st.installed.iter().filter(|v| !v.current).count();
        if others > 0 {
            installed.push(format!("(+{others} kept)"));
        }
        let quarantined = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(pollen_crds::labels::QUARANTINE))
            .is_some_and(|v| v == "true");
        let mut name = n.metadata.name.clone().unwrap_or_default();
        if quarantined {
            name.push_str(" (quarantined)");
        }
        t.push(vec![
            name,
            st.site.unwrap_or_else(|| "-".into()),
            st.endpoint.unwrap_or_else(|| "-".into()),
            inv.map_or("-".into(), |i| i.architecture.clone()),
            inv.map_or("-".into(), |i| i.agent_version.clone()),
            st.certificate.as_ref().map_or("-".into(), |c| {
                if c.not_after.0 <= opts.now {
                    "expired".to_string()
                } else {
                    format!("in {}", age(opts.now, c.not_after.0))
                }
            }),
            st.active_assignments.to_string(),
            if installed.is_empty() {
                "-".into()
            } else {
                installed.join(" ")
            },
            st.heartbeat
                .as_ref()
                .map_or("-".into(), |h| format!("{} ago", age(h.0, opts.now))),
        ]);
    }
    table(&t)
}

/// `sha256:0123456789ab…` shortened to `sha256:0123456789ab`.
fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => d.chars().take(19).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use pollen_crds::{
        Assignment, AssignmentStatus, CertificateInfo, EdgeNodeSpec, EdgeNodeStatus, InstalledVersion,
        Inventory, NodeCounts, RolloutPhase, UpdateRolloutStatus, WaveStatus,
    };

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rollout(paused: bool) -> UpdateRollout {
        let mut ur: UpdateRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "pollen.dev/v1alpha1", "kind": "UpdateRollout",
            "metadata": {"name": "gw-fw", "namespace": "fleet"},
            "spec": {
                "artifact": {"reference": "registry.example/fw/gw:1.4.2"},
                "trustPolicy": "fleet", "selector": {},
                "strategy": {"paused": paused},
                "install": {"targetPath": "firmware/gw.bin"}
            }
        }))
        .unwrap();
        ur.status = Some(UpdateRolloutStatus {
            phase: RolloutPhase::Distributing,
            current_wave: Some(1),
            artifact_digest: Some(format!("registry.example/fw/gw@sha256:{}", "a".repeat(64))),
            artifact_size: Some(12 * 1024 * 1024),
            waves: vec![
                WaveStatus {
                    index: 0,
                    targeted: 1,
                    installed: 1,
                    failed: 0,
                    started: true,
                },
                WaveStatus {
                    index: 1,
                    targeted: 4,
                    installed: 2,
                    failed: 1,
                    started: true,
                },
                WaveStatus {
                    index: 2,
                    targeted: 5,
                    installed: 0,
                    failed: 0,
                    started: false,
                },
            ],
            nodes: NodeCounts {
                targeted: 10,
                pending: 6,
                downloading: 0,
                staged: 0,
                installed: 3,
                failed: 1,
                quarantined: 0,
            },
            bytes_from_peers: 30 * 1024 * 1024,
            bytes_from_origin: 10 * 1024 * 1024,
            conditions: vec![Condition {
                type_: "Verified".into(),
                status: "True".into(),
                reason: "SignatureVerified".into(),
                message: "ok".into(),
                last_transition_time: Time(ts("2026-01-01T00:00:00Z")),
                observed_generation: None,
            }],
            ..Default::default()
        });
        ur
    }

    fn node(
        name: &str,
        wave: i32,
        phase: Option<AssignmentPhase>,
        verified: i64,
        error: Option<&str>,
    ) -> EdgeNode {
        let key = "fleet/gw-fw";
        let mut n = EdgeNode::new(
            name,
            EdgeNodeSpec {
                assignments: vec![Assignment {
                    rollout: key.into(),
                    chunk_index: "reg/idx@sha256:1".into(),
                    wave,
                    sequence: 1,
                    target_path: "firmware/gw.bin".into(),
                    trust_policy: "fleet".into(),
                    upload_bytes_per_second: None,
                    download_bytes_per_second: None,
                    peer_wait: None,
                    origin_requests: None,
                    origin_allowance_bytes: None,
                    activation_window: None,
                    peer_grant: None,
                }],
            },
        );
        n.status = phase.map(|p| EdgeNodeStatus {
            assignments: vec![AssignmentStatus {
                rollout: key.into(),
                chunk_index: "reg/idx@sha256:1".into(),
                phase: p,
                verified_bytes: verified,
                total_bytes: 1000,
                bytes_from_peers: verified * 3 / 4,
                bytes_from_origin: verified / 4,
                last_error: error.map(String::from),
                updated_at: None,
            }],
            ..Default::default()
        });
        n
    }

    #[test]
    fn bars_fill_in_proportion_and_clamp() {
        assert_eq!(bar(0.5, 10), "█████░░░░░  50%");
        assert_eq!(bar(0.0, 4), "░░░░   0%");
        assert_eq!(bar(1.0, 4), "████ 100%");
        assert_eq!(bar(7.0, 4), "████ 100%");
        assert_eq!(bar(f64::NAN, 4), "░░░░   0%");
    }

    #[test]
    fn bytes_and_ages_read_like_kubectl() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(human_bytes(-5), "0 B");
        let now = ts("2026-01-01T12:00:00Z");
        assert_eq!(age(ts("2026-01-01T11:59:15Z"), now), "45s");
        assert_eq!(age(ts("2026-01-01T11:48:00Z"), now), "12m");
        assert_eq!(age(ts("2025-12-29T12:00:00Z"), now), "3d");
    }

    #[test]
    fn nodes_of_the_rollout_come_failed_first_then_busy_then_waiting_then_installed() {
        let mut other = node("other", 0, Some(AssignmentPhase::Installed), 1000, None);
        other.spec.assignments[0].rollout = "fleet/another".into();
        other.status.as_mut().unwrap().assignments[0].rollout = "fleet/another".into();
        let nodes = vec![
            node("a-installed", 0, Some(AssignmentPhase::Installed), 1000, None),
            node("b-waiting", 2, None, 0, None),
            node("c-busy", 1, Some(AssignmentPhase::Downloading), 400, None),
            node(
                "d-failed",
                1,
                Some(AssignmentPhase::Failed),
                100,
                Some("disk full"),
            ),
            other,
        ];
        let rows = rollout_nodes("fleet/gw-fw", &nodes);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["d-failed", "c-busy", "b-waiting", "a-installed"]);
        assert_eq!(rows[1].verified, 400);
        assert_eq!(rows[2].phase, None);
    }

    #[test]
    fn a_superseded_index_is_not_reported_as_progress() {
        let mut n = node("gw-1", 0, Some(AssignmentPhase::Downloading), 900, None);
        n.spec.assignments[0].chunk_index = "reg/idx@sha256:2".into();
        let rows = rollout_nodes("fleet/gw-fw", &[n]);
        assert_eq!(rows[0].phase, None, "status about the old index must not count");
    }

    #[test]
    fn status_shows_waves_nodes_bytes_and_failures() {
        let ur = rollout(false);
        let nodes = vec![
            node("gw-1", 0, Some(AssignmentPhase::Installed), 1000, None),
            node("gw-2", 1, Some(AssignmentPhase::Downloading), 500, None),
            node(
                "gw-3",
                1,
                Some(AssignmentPhase::Failed),
                100,
                Some("chunk 7 failed verification from gw-9"),
            ),
        ];
        let rows = rollout_nodes(&rollout_key(&ur), &nodes);
        let text = status(
            &ur,
            &rows,
            &RenderOptions {
                bar_width: 10,
                max_nodes: 50,
                now: ts("2026-01-01T00:00:00Z"),
            },
        );
        assert!(text.contains("fleet/gw-fw"), "{text}");
        assert!(text.contains("Distributing"), "{text}");
        assert!(text.contains("2/3"), "wave 1 of 3 shown 1-based: {text}");
        assert!(text.contains("3/10"), "installed/targeted: {text}");
        assert!(text.contains("75.0%"), "offload 30 of 40 MiB: {text}");
        assert!(text.contains("peers 30.0 MiB   origin 10.0 MiB"), "{text}");
        assert!(text.contains("(12.0 MiB)"), "{text}");
        assert!(text.contains("█████░░░░░  50%   2/4"), "wave 1 bar: {text}");
        assert!(text.contains("<- current"), "{text}");
        assert!(text.contains("not started"), "{text}");
        assert!(
            text.contains("gw-3 (wave 1): Failed: chunk 7 failed verification from gw-9"),
            "{text}"
        );
        assert!(!text.contains("paused:"), "{text}");
        assert!(!text.contains("version:"), "no claim, no line: {text}");
        // The failed node is listed first among the nodes.
        let first_node_line = text
            .lines()
            .skip_while(|l| !l.starts_with("NODE"))
            .nth(1)
            .unwrap();
        assert!(first_node_line.starts_with("gw-3"), "{text}");
        let paused = status(&rollout(true), &rows, &RenderOptions::default());
        assert!(paused.contains("paused:   yes"), "{paused}");
        let mut versioned = rollout(false);
        versioned.status.as_mut().unwrap().version = Some("1.4.2".into());
        let text = status(&versioned, &rows, &RenderOptions::default());
        assert!(text.contains("version:  1.4.2 (signed)\n"), "{text}");
        versioned.status.as_mut().unwrap().downgraded_from = Some("2.0.0".into());
        let text = status(&versioned, &rows, &RenderOptions::default());
        assert!(
            text.contains("version:  1.4.2 (signed; a downgrade from 2.0.0, allowDowngrade)"),
            "{text}"
        );
    }

    #[test]
    fn status_of_a_failed_verification_shows_the_condition() {
        let mut ur = rollout(false);
        let st = ur.status.as_mut().unwrap();
        st.phase = RolloutPhase::Failed;
        st.waves.clear();
        st.current_wave = None;
        st.conditions[0].status = "False".into();
        st.conditions[0].reason = "UntrustedSignature".into();
        st.conditions[0].message = "signed by an unknown key".into();
        let text = status(&ur, &[], &RenderOptions::default());
        assert!(
            text.contains("FAILURES\n  Verified=False UntrustedSignature: signed by an unknown key"),
            "{text}"
        );
        assert!(!text.contains("WAVE   NODES"), "{text}");
    }

    #[test]
    fn progress_and_completion_conditions_are_not_failures() {
        assert!(
            !is_problem("Progressing", "False"),
            "a finished rollout stops progressing"
        );
        assert!(
            !is_problem("Complete", "False"),
            "a running rollout is not complete yet"
        );
        assert!(!is_problem("Verified", "True"));
        assert!(is_problem("Verified", "False"));
        assert!(is_problem("Indexed", "False"));
        assert!(is_problem("Failed", "True"));
        assert!(is_problem("Conflict", "True"));
        assert!(!is_problem("Failed", "False"));
        let mut ur = rollout(false);
        let st = ur.status.as_mut().unwrap();
        for c in &mut st.conditions {
            c.status = "True".into();
        }
        st.conditions[0].type_ = "Progressing".into();
        st.conditions[0].status = "False".into();
        st.conditions[0].reason = "AllNodesInstalled".into();
        let text = status(&ur, &[], &RenderOptions::default());
        assert!(!text.contains("Progressing=False"), "{text}");
    }

    #[test]
    fn long_fleets_are_summarised() {
        let ur = rollout(false);
        let nodes: Vec<EdgeNode> = (0..8)
            .map(|i| {
                node(
                    &format!("gw-{i}"),
                    0,
                    Some(AssignmentPhase::Installed),
                    1000,
                    None,
                )
            })
            .collect();
        let rows = rollout_nodes(&rollout_key(&ur), &nodes);
        let text = status(
            &ur,
            &rows,
            &RenderOptions {
                bar_width: 4,
                max_nodes: 3,
                now: Timestamp::UNIX_EPOCH,
            },
        );
        assert!(text.contains("... and 5 more nodes (5 installed)"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("gw-")).count(), 3, "{text}");
    }

    #[test]
    fn inventory_shows_versions_certificates_and_heartbeats() {
        let now = ts("2026-01-01T12:00:00Z");
        let mut n = EdgeNode::new("gw-1", EdgeNodeSpec::default());
        n.metadata.labels = Some([(pollen_crds::labels::QUARANTINE.to_string(), "true".to_string())].into());
        n.status = Some(EdgeNodeStatus {
            endpoint: Some("10.0.0.5:7400".into()),
            site: Some("hall-a".into()),
            certificate: Some(CertificateInfo {
                serial: "01".into(),
                not_after: Time(ts("2026-01-01T20:00:00Z")),
                pem: None,
            }),
            inventory: Some(Inventory {
                architecture: "aarch64".into(),
                free_disk_bytes: 1,
                agent_version: "0.1.0".into(),
            }),
            installed: vec![
                InstalledVersion {
                    target_path: "firmware/gw.bin".into(),
                    digest: format!("sha256:{}", "b".repeat(64)),
                    rollout: None,
                    current: true,
                    installed_at: None,
                },
                InstalledVersion {
                    target_path: "firmware/gw.bin".into(),
                    digest: format!("sha256:{}", "c".repeat(64)),
                    rollout: None,
                    current: false,
                    installed_at: None,
                },
            ],
            heartbeat: Some(Time(ts("2026-01-01T11:59:30Z"))),
            ..Default::default()
        });
        let bare = EdgeNode::new("gw-0", EdgeNodeSpec::default());
        let text = nodes(
            &[n, bare],
            &RenderOptions {
                bar_width: 10,
                max_nodes: 10,
                now,
            },
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].starts_with("gw-0 "), "sorted by name: {text}");
        let gw1 = lines[2];
        for want in [
            "gw-1 (quarantined)",
            "hall-a",
            "10.0.0.5:7400",
            "aarch64",
            "in 8h",
            "firmware/gw.bin@sha256:bbbbbbbbbbbb (+1 kept)",
            "30s ago",
        ] {
            assert!(gw1.contains(want), "{want:?} missing in {gw1:?}");
        }
    }
}
