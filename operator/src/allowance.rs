//! The rollout's origin budget, turned into per-node caps on origin reads.
//!
//! A rollout may set `spec.transfer.originBudgetPercent`: the bytes the whole fleet may read from the
//! origin registry, as a share of the artifact. The edge nodes' origin-once rule already keeps each chunk
//! to about one origin read; the budget is the cap for when that rule is not enough (nodes restarting
//! and re-reading, owners of chunks vanishing, a bug). The operator writes each working node a cap,
//! `originAllowanceBytes` in its assignment, which the node's engine honours live.
//!
//! How the caps are set:
//! - `remaining` is the budget minus the origin bytes every node of the rollout reported (finished nodes
//!   included). Each working node may read all of it: its cap is what it reported plus `remaining`
//!   rounded **up** to a step (a sixteenth of the budget, at least a chunk, at most the budget). Nodes never wait on a share
//!   that another node holds but does not need, so a budget never stalls a rollout before it is spent.
//! - **Few writes**: a node's cap is rewritten only when its headroom (cap minus reported use) differs
//!   from `remaining` by a step or more, so that a fleet of N nodes sees about 16·N writes in a rollout,
//!   not N per status report. When the budget is spent, every working node with headroom left is capped
//!   at what it reported.
//! - Nodes that finished keep the cap they had.
//!
//! The cap is **soft**: nodes read within their caps, but several nodes may read at once against the
//! same `remaining`, and what a node read since its last report is not yet counted. The fleet can
//! overshoot the budget by about a step per node reading from the origin at that moment, plus what was
//! read between reports; the origin-once rule keeps concurrent readers on different chunks.
//!
//! Pure: no clock, no I/O. Non-goals: predicting which node will need the origin, and counting nodes
//! taken out of the rollout's selection mid-way.

use std::collections::BTreeMap;

/// Steps the budget is cut into: how often, at most, a working node's cap is rewritten in a rollout.
pub const LEVELS: u64 = 16;

/// One assigned node's use of the origin for the current chunk index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUse {
    /// The EdgeNode's name.
    pub name: String,
    /// Still working on the assignment (not installed, not failed).
    pub working: bool,
    /// The cap currently written in its assignment, if any.
    pub granted: Option<u64>,
    /// Bytes it reported reading from the origin.
    pub used: u64,
}

/// The caps for one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Each node's cap on origin reads, in bytes in all.
    pub caps: BTreeMap<String, u64>,
    /// Budget left after what the nodes reported.
    pub remaining: u64,
}

/// The fleet's origin budget in bytes for an artifact of `size` bytes: `percent` of it, or `None` when
/// the rollout sets no budget.
pub fn budget_bytes(size: u64, percent: Option<i32>) -> Option<u64> {
    let percent = u64::from(percent?.max(100).unsigned_abs());
    Some(size.saturating_mul(percent) / 100)
}

/// The caps of every node in `nodes`, within `budget` bytes in all, for chunks of `chunk` bytes.
pub fn caps(budget: u64, chunk: u64, nodes: &[NodeUse]) -> Caps {
    let used: u64 = nodes.iter().map(|n| n.used).fold(0, u64::saturating_add);
    let remaining = budget.saturating_sub(used);
    let step = (budget / LEVELS).max(chunk).min(budget).max(1);
    let level = remaining.div_ceil(step).saturating_mul(step);
    let caps = nodes
        .iter()
        .map(|n| {
            let cap = match n.granted {
                None if !n.working => n.used,
                Some(g) if !n.working => g,
                None => n.used.saturating_add(level),
                Some(g) => {
                    let headroom = g.saturating_sub(n.used);
                    let stale = if level == 0 {
                        headroom > 0
                    } else {
                        headroom.abs_diff(level) >= step
                    };
                    if stale { n.used.saturating_add(level) } else { g }
                }
            };
            (n.name.clone(), cap)
        })
        .collect();
    Caps { caps, remaining }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const CHUNK: u64 = 64 * 1024;

    fn node(name: &str, working: bool, granted: Option<u64>, used: u64) -> NodeUse {
        NodeUse {
            name: name.into(),
            working,
            granted,
            used,
        }
    }

    #[test]
    fn the_budget_is_a_share_of_the_artifact_when_set() {
        assert_eq!(budget_bytes(64 * MIB, None), None);
        assert_eq!(budget_bytes(64 * MIB, Some(100)), Some(64 * MIB));
        assert_eq!(budget_bytes(64 * MIB, Some(150)), Some(96 * MIB));
        // The CRD's minimum is 100; a lower value (an old object) still means one copy.
        assert_eq!(budget_bytes(64 * MIB, Some(10)), Some(64 * MIB));
        assert_eq!(budget_bytes(u64::MAX, Some(1000)), Some(u64::MAX / 100));
    }

    #[test]
    fn every_working_node_may_read_all_that_remains() {
        let budget = 64 * MIB;
        let nodes = [
            node("a", true, None, 0),
            node("b", true, None, 10 * MIB),
            node("c", false, None, 6 * MIB),
        ];
        let c = caps(budget, CHUNK, &nodes);
        assert_eq!(c.remaining, 48 * MIB);
        assert_eq!(c.caps["a"], 48 * MIB);
        assert_eq!(c.caps["b"], 58 * MIB);
        assert_eq!(c.caps["c"], 6 * MIB, "a finished node gets nothing more");
    }

    #[test]
    fn what_remains_is_rounded_up_to_a_step_so_that_nothing_stops_early() {
        let budget = 64 * MIB; // step: 4 MiB
        let c = caps(budget, CHUNK, &[node("a", true, None, 61 * MIB)]);
        assert_eq!(c.remaining, 3 * MIB);
        assert_eq!(c.caps["a"], 65 * MIB);
        // A tiny budget: the step is one chunk.
        let c = caps(4 * CHUNK, CHUNK, &[node("a", true, None, CHUNK / 2)]);
        assert_eq!(c.caps["a"], CHUNK / 2 + 4 * CHUNK);
    }

    #[test]
    fn caps_are_rewritten_only_when_a_step_off() {
        let budget = 64 * MIB;
        // Written when 48 MiB remained; the node has read 2 MiB more since, and the fleet with it.
        let a = node("a", true, Some(48 * MIB), 2 * MIB);
        let b = node("b", true, Some(48 * MIB), 0);
        let c = caps(
            budget,
            CHUNK,
            &[a.clone(), b.clone(), node("x", false, Some(1), 14 * MIB)],
        );
        assert_eq!(c.remaining, 48 * MIB);
        assert_eq!(c.caps["a"], 48 * MIB, "headroom 46 MiB is within a step of 48");
        assert_eq!(c.caps["b"], 48 * MIB);
        // The fleet read 8 MiB more elsewhere: 40 MiB remain, b's headroom (48) is two steps off.
        let c = caps(budget, CHUNK, &[a, b, node("x", false, Some(1), 22 * MIB)]);
        assert_eq!(c.remaining, 40 * MIB);
        assert_eq!(c.caps["a"], 2 * MIB + 40 * MIB);
        assert_eq!(c.caps["b"], 40 * MIB);
    }

    #[test]
    fn a_spent_budget_caps_every_working_node_at_what_it_read() {
        let budget = 64 * MIB;
        let nodes = [
            node("a", true, Some(40 * MIB), 39 * MIB),
            node("b", true, Some(30 * MIB), 25 * MIB),
            node("c", true, Some(3 * MIB), 3 * MIB),
        ];
        let c = caps(budget, CHUNK, &nodes);
        assert_eq!(c.remaining, 0);
        assert_eq!(c.caps["a"], 39 * MIB);
        assert_eq!(c.caps["b"], 25 * MIB);
        assert_eq!(c.caps["c"], 3 * MIB);
    }

    /// A simulated rollout: nodes take turns reading one chunk from the origin until the payload is
    /// read once, reporting after each read; the operator recomputes the caps after every report. The
    /// fleet never reads past a cap, finishes its one copy under a budget of one copy, and the caps are
    /// rewritten about `LEVELS` times per node, not once per report.
    #[test]
    fn a_budget_of_one_copy_lets_the_fleet_read_one_copy_with_few_writes() {
        let chunks = 1024u64;
        let budget = chunks * CHUNK;
        let n = 20usize;
        let mut nodes: Vec<NodeUse> = (0..n).map(|i| node(&format!("n{i:02}"), true, None, 0)).collect();
        let mut writes = 0u64;
        let apply = |nodes: &mut Vec<NodeUse>, writes: &mut u64| {
            let c = caps(budget, CHUNK, nodes);
            for x in nodes.iter_mut() {
                if x.granted != Some(c.caps[&x.name]) {
                    *writes += 1;
                    x.granted = Some(c.caps[&x.name]);
                }
            }
        };
        apply(&mut nodes, &mut writes);
        let mut read = 0u64;
        let mut turn = 0usize;
        while read < chunks {
            let x = &mut nodes[turn % n];
            turn += 1;
            if x.used + CHUNK > x.granted.unwrap() {
                continue;
            }
            x.used += CHUNK;
            read += 1;
            apply(&mut nodes, &mut writes);
        }
        let total: u64 = nodes.iter().map(|x| x.used).sum();
        assert_eq!(total, budget);
        assert!(nodes.iter().all(|x| x.used <= x.granted.unwrap()));
        // 20 first writes, then about one per node per level.
        assert!(writes <= (LEVELS + 2) * n as u64, "{writes} writes");
        // Spent: every cap is now what its node read.
        assert!(nodes.iter().all(|x| x.granted == Some(x.used)), "{nodes:?}");
    }
}
