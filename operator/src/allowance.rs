//! The fleet's origin budget, shared out as per-node allowances.
//!
//! A rollout may read `budget` bytes from the origin registry in total (`spec.transfer.originBudgetPercent`
//! of the artifact). The edge nodes' origin-once rule keeps each chunk to about one origin read, but a rule
//! is not a cap: a node that restarts, or chunks whose owner vanished, can cost more. This module turns the
//! fleet-wide budget into per-node allowances, written into each node's assignment
//! (`originAllowanceBytes`); a node never reads more from the origin than its allowance.
//!
//! Rules:
//! - **Never taken back**: while a node works on the assignment its allowance only grows, so a grant the
//!   node may already be using is never withdrawn, whatever the lag of its status reports.
//! - **Returned when done**: a node that installed or failed keeps exactly what it reported using; the
//!   rest goes back to the pool.
//! - **Sum within budget**: the allowances of working nodes plus the use of finished ones never exceed the
//!   budget, and every node stays within its allowance, so the fleet stays within the budget.
//! - **Steps**: a working node without an allowance gets a step, and one whose unused allowance fell under
//!   half a step gets another, while the pool lasts; nodes without an allowance first, then by name, so
//!   that the plan is deterministic. A step is the budget over twice the working nodes (at least four
//!   chunks): two steps cover a node's share under origin-once, and the pool keeps the rest for the nodes
//!   whose share comes out larger.
//!
//! Pure: no clock, no I/O. Non-goals: predicting which node will need the origin (the edge nodes'
//! origin-once rule decides), and nodes taken out of the rollout's selection mid-way (their use is no
//! longer counted).

use std::collections::BTreeMap;

/// One assigned node's use of the origin for the current chunk index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUse {
    /// The EdgeNode's name.
    pub name: String,
    /// Still working on the assignment (not installed, not failed).
    pub working: bool,
    /// The allowance currently written in its assignment, if any.
    pub granted: Option<u64>,
    /// Bytes it reported reading from the origin.
    pub used: u64,
}

/// Origin budget in bytes for an artifact of `size` bytes and a budget of `percent` of it.
pub fn budget_bytes(size: u64, percent: Option<i32>) -> u64 {
    let percent = u64::from(percent.unwrap_or(100).max(100).unsigned_abs());
    size.saturating_mul(percent) / 100
}

/// The allowance of every node in `nodes`, within `budget` bytes in all, for chunks of `chunk` bytes.
pub fn plan(budget: u64, chunk: u64, nodes: &[NodeUse]) -> BTreeMap<String, u64> {
    let working = nodes.iter().filter(|n| n.working).count() as u64;
    let step = if working == 0 {
        0
    } else {
        (budget / (2 * working)).max(4 * chunk)
    };
    let mut out = BTreeMap::new();
    let mut committed = 0u64;
    for n in nodes {
        let a = if n.working {
            n.granted.unwrap_or(0).max(n.used)
        } else {
            n.used
        };
        committed = committed.saturating_add(a);
        out.insert(n.name.clone(), a);
    }
    let mut pool = budget.saturating_sub(committed);
    let mut order: Vec<&NodeUse> = nodes.iter().filter(|n| n.working).collect();
    order.sort_by(|a, b| (a.granted.is_some(), &a.name).cmp(&(b.granted.is_some(), &b.name)));
    for n in order {
        let cur = out.get_mut(&n.name).expect("every node has an entry");
        let unused = cur.saturating_sub(n.used);
        if n.granted.is_none() || unused < step / 2 {
            let g = step.min(pool);
            *cur += g;
            pool -= g;
        }
    }
    out
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

    fn total_committed(nodes: &[NodeUse], plan: &BTreeMap<String, u64>) -> u64 {
        nodes
            .iter()
            .map(|n| {
                if n.working {
                    plan[&n.name].max(n.used)
                } else {
                    n.used
                }
            })
            .sum()
    }

    #[test]
    fn budget_is_a_percentage_of_the_artifact_at_least_one_copy() {
        assert_eq!(budget_bytes(64 * MIB, None), 64 * MIB);
        assert_eq!(budget_bytes(64 * MIB, Some(150)), 96 * MIB);
        // The CRD's minimum is 100; a lower value (an old object) still means one copy.
        assert_eq!(budget_bytes(64 * MIB, Some(10)), 64 * MIB);
        assert_eq!(budget_bytes(u64::MAX, Some(1000)), u64::MAX / 100);
    }

    #[test]
    fn first_grants_are_half_a_share_each_and_keep_a_pool() {
        let nodes: Vec<NodeUse> = (0..8).map(|i| node(&format!("n{i}"), true, None, 0)).collect();
        let p = plan(64 * MIB, CHUNK, &nodes);
        assert!(p.values().all(|&a| a == 4 * MIB), "{p:?}");
        assert_eq!(p.values().sum::<u64>(), 32 * MIB);
    }

    #[test]
    fn a_node_low_on_allowance_gets_another_step_and_others_do_not() {
        let nodes = vec![
            node("a", true, Some(4 * MIB), 3 * MIB),
            node("b", true, Some(4 * MIB), MIB),
        ];
        let p = plan(16 * MIB, CHUNK, &nodes);
        assert_eq!(p["a"], 8 * MIB, "unused 1 MiB < half a step of 4 MiB");
        assert_eq!(p["b"], 4 * MIB);
    }

    #[test]
    fn grants_are_never_taken_back_while_a_node_works() {
        // More nodes joined, so the step shrank; the old grants stay.
        let mut nodes = vec![
            node("a", true, Some(8 * MIB), MIB),
            node("b", true, Some(8 * MIB), 0),
        ];
        nodes.extend((0..6).map(|i| node(&format!("w{i}"), true, None, 0)));
        let p = plan(16 * MIB, CHUNK, &nodes);
        assert_eq!(p["a"], 8 * MIB);
        assert_eq!(p["b"], 8 * MIB);
        assert!(p.iter().filter(|(k, _)| k.starts_with('w')).all(|(_, &v)| v == 0));
        // A node that reported more than its grant (it cannot, but reports are not trusted) keeps that.
        let p = plan(16 * MIB, CHUNK, &[node("a", true, Some(MIB), 2 * MIB)]);
        assert!(p["a"] >= 2 * MIB);
    }

    #[test]
    fn finished_nodes_return_what_they_did_not_use() {
        let nodes = vec![
            node("done", false, Some(8 * MIB), 3 * MIB),
            node("failed", false, Some(4 * MIB), 0),
            node("late", true, None, 0),
        ];
        let p = plan(16 * MIB, CHUNK, &nodes);
        assert_eq!(p["done"], 3 * MIB);
        assert_eq!(p["failed"], 0);
        assert_eq!(
            p["late"],
            8 * MIB,
            "a step: the budget over twice the one working node"
        );
    }

    #[test]
    fn the_pool_runs_dry_without_going_over_budget() {
        let nodes = vec![
            node("a", true, Some(6 * MIB), 6 * MIB),
            node("b", true, Some(6 * MIB), 6 * MIB),
            node("c", true, None, 0),
        ];
        let p = plan(16 * MIB, CHUNK, &nodes);
        assert_eq!(p.values().sum::<u64>(), 16 * MIB, "{p:?}");
        // Nodes without an allowance come first.
        assert!(p["c"] > 0);
    }

    #[test]
    fn a_step_is_at_least_four_chunks() {
        let nodes: Vec<NodeUse> = (0..100)
            .map(|i| node(&format!("n{i:03}"), true, None, 0))
            .collect();
        let p = plan(MIB, CHUNK, &nodes);
        assert!(p.values().all(|&a| a == 0 || a == 4 * CHUNK), "{p:?}");
        assert_eq!(p.values().sum::<u64>(), MIB);
    }

    /// Simulates a fleet under the plan: each round every working node reads up to what its allowance
    /// allows (at most `want` per round) and reports with one round of lag. The fleet never reads more
    /// than the budget.
    #[test]
    fn simulated_fleet_never_reads_more_than_the_budget() {
        let budget = 64 * MIB;
        let mut granted: BTreeMap<String, u64> = BTreeMap::new();
        let mut read: BTreeMap<String, u64> = BTreeMap::new();
        let mut reported: BTreeMap<String, u64> = BTreeMap::new();
        let names: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
        for round in 0..200u64 {
            let nodes: Vec<NodeUse> = names
                .iter()
                .map(|n| NodeUse {
                    name: n.clone(),
                    // Nodes finish one by one after round 50.
                    working: round < 50 + 10 * (n[1..].parse::<u64>().unwrap()),
                    granted: granted.get(n).copied(),
                    used: reported.get(n).copied().unwrap_or(0),
                })
                .collect();
            let p = plan(budget, CHUNK, &nodes);
            assert!(total_committed(&nodes, &p) <= budget, "round {round}: {p:?}");
            reported = read.clone();
            for n in &nodes {
                if !n.working {
                    continue;
                }
                let a = p[&n.name];
                let r = read.entry(n.name.clone()).or_default();
                *r = (*r + 256 * 1024).min(a);
            }
            granted = p;
            assert!(read.values().sum::<u64>() <= budget, "round {round}");
        }
        assert!(
            read.values().sum::<u64>() > budget / 2,
            "the budget is used: {read:?}"
        );
    }
}
