//! The wave planner: which selected EdgeNode belongs to which wave of a rollout.
//!
//! A pure, deterministic function of the rollout's uid, the selected node names (in any order), the
//! wave list, and the waves of nodes that already hold an assignment ("pinned" nodes).
//!
//! # How nodes are split
//! - Each wave's size is its `count`, or `ceil(percent × total / 100)` (at least one node).
//! - Wave boundaries are cumulative: wave *k* ends after the sum of the sizes of waves `0..=k`,
//!   clamped to the number of nodes. Whatever is left after the last wave joins the last wave, so
//!   the last wave always ends at `total`. A wave whose start is already at `total` is empty.
//! - An empty wave list means one wave holding every node.
//! - Nodes are ranked by `sha256(uid ‖ 0 ‖ name)`, never by name or list order, so the canary of
//!   one rollout is not always the alphabetically first device, and the order does not depend on
//!   how the API server lists them. The rank of position *p* falls into the first wave whose
//!   cumulative end exceeds *p*.
//!
//! # Stability
//! - Operator restarts: the plan depends only on the uid, the node set and the spec, so a restart
//!   recomputes exactly the same plan; and nodes that already hold an assignment keep the wave
//!   recorded in it (the assignment on the EdgeNode is the source of truth).
//! - Nodes joining mid-rollout: a pinned node never moves. A new node takes the wave of its rank
//!   position among all nodes; if that wave already started, it is assigned at once with that wave.
//!   Because boundaries are recomputed from the new total, a node that has no assignment yet (it is
//!   in a wave that has not started) may move by one wave boundary when the total changes.
//! - Nodes leaving (deleted, or no longer matched by the selector): they drop out of the plan and
//!   out of the totals; the others keep their waves.
//!
//! Non-goals: no I/O, no knowledge of node health or phases (see [`crate::progress`]).

use std::collections::BTreeMap;

use pollen_crds::Wave;
use sha2::{Digest, Sha256};

/// Why a wave list cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A wave sets both `count` and `percent`, or neither.
    #[error("wave {index} must set exactly one of count or percent")]
    AmbiguousWave {
        /// The wave's index, from 0.
        index: usize,
    },
    /// A wave's count or percent is out of range.
    #[error("wave {index} has an out-of-range size {value}")]
    WaveOutOfRange {
        /// The wave's index, from 0.
        index: usize,
        /// The offending value.
        value: i32,
    },
}

/// The size of one wave, as the spec gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaveSize {
    /// An absolute number of nodes.
    Count(u32),
    /// A percentage of the targeted nodes (1–100), rounded up.
    Percent(u32),
}

impl WaveSize {
    /// Read a wave from the spec, checking what the schema also checks.
    pub fn from_wave(index: usize, wave: &Wave) -> Result<Self, PlanError> {
        match (wave.count, wave.percent) {
            (Some(c), None) if c >= 1 => Ok(Self::Count(c as u32)),
            (None, Some(p)) if (1..=100).contains(&p) => Ok(Self::Percent(p as u32)),
            (Some(c), None) => Err(PlanError::WaveOutOfRange { index, value: c }),
            (None, Some(p)) => Err(PlanError::WaveOutOfRange { index, value: p }),
            _ => Err(PlanError::AmbiguousWave { index }),
        }
    }

    fn nodes(self, total: usize) -> usize {
        match self {
            Self::Count(c) => c as usize,
            Self::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }
}

/// Parse every wave of a spec (an empty list stays empty: one implicit wave).
pub fn wave_sizes(waves: &[Wave]) -> Result<Vec<WaveSize>, PlanError> {
    waves
        .iter()
        .enumerate()
        .map(|(i, w)| WaveSize::from_wave(i, w))
        .collect()
}

/// The cumulative end (exclusive) of each wave for `total` nodes. Always at least one entry; the
/// last entry is always `total`.
pub fn wave_ends(total: usize, sizes: &[WaveSize]) -> Vec<usize> {
    if sizes.is_empty() {
        return vec![total];
    }
    let mut ends = Vec::with_capacity(sizes.len());
    let mut end = 0usize;
    for s in sizes {
        end = (end + s.nodes(total)).min(total);
        ends.push(end);
    }
    *ends.last_mut().expect("non-empty") = total;
    ends
}

/// The stable rank key of a node within a rollout.
pub fn rank_key(rollout_uid: &str, node: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(rollout_uid.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    h.finalize().into()
}

/// The result of planning: every selected node and its wave.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Node name → wave index (from 0).
    pub wave_of: BTreeMap<String, u32>,
    /// How many waves the rollout has (at least one).
    pub wave_count: u32,
}

impl Plan {
    /// The nodes of one wave, sorted by name.
    pub fn nodes_in(&self, wave: u32) -> Vec<&str> {
        self.wave_of
            .iter()
            .filter(|(_, w)| **w == wave)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// How many nodes each wave holds.
    pub fn wave_sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0; self.wave_count as usize];
        for w in self.wave_of.values() {
            sizes[*w as usize] += 1;
        }
        sizes
    }
}

/// Split `nodes` into waves.
///
/// `pinned` holds the waves recorded in existing assignments; those nodes keep them (clamped to the
/// last wave if the wave list shrank). Names in `pinned` that are not in `nodes` are ignored.
/// Duplicate names in `nodes` count once.
pub fn plan(
    rollout_uid: &str,
    nodes: &[String],
    waves: &[Wave],
    pinned: &BTreeMap<String, u32>,
) -> Result<Plan, PlanError> {
    let sizes = wave_sizes(waves)?;
    let mut ranked: Vec<([u8; 32], &str)> = nodes
        .iter()
        .map(|n| (rank_key(rollout_uid, n), n.as_str()))
        .collect();
    ranked.sort_unstable();
    ranked.dedup_by(|a, b| a.1 == b.1);
    let ends = wave_ends(ranked.len(), &sizes);
    let wave_count = ends.len() as u32;
    let mut wave_of = BTreeMap::new();
    let mut wave = 0usize;
    for (pos, (_, name)) in ranked.iter().enumerate() {
        while pos >= ends[wave] {
            wave += 1;
        }
        let w = match pinned.get(*name) {
            Some(p) => (*p).min(wave_count - 1),
            None => wave as u32,
        };
        wave_of.insert((*name).to_string(), w);
    }
    Ok(Plan { wave_of, wave_count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn count(c: i32) -> Wave {
        Wave {
            count: Some(c),
            percent: None,
            pause: None,
        }
    }
    fn percent(p: i32) -> Wave {
        Wave {
            count: None,
            percent: Some(p),
            pause: None,
        }
    }
    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    #[test]
    fn canary_then_quarter_then_rest() {
        let waves = [count(1), percent(25), percent(100)];
        let p = plan("uid-1", &names(100), &waves, &BTreeMap::new()).unwrap();
        assert_eq!(p.wave_count, 3);
        assert_eq!(p.wave_sizes(), vec![1, 25, 74]);
    }

    #[test]
    fn remainder_joins_the_last_wave_and_overflow_leaves_empty_waves() {
        let ends = wave_ends(10, &[WaveSize::Count(2), WaveSize::Count(3)]);
        assert_eq!(ends, vec![2, 10]);
        let ends = wave_ends(
            3,
            &[WaveSize::Count(2), WaveSize::Count(5), WaveSize::Percent(10)],
        );
        assert_eq!(ends, vec![2, 3, 3]);
    }

    #[test]
    fn percent_rounds_up_to_at_least_one_node() {
        assert_eq!(
            wave_ends(7, &[WaveSize::Percent(1), WaveSize::Percent(50)]),
            vec![1, 7]
        );
        assert_eq!(
            wave_ends(7, &[WaveSize::Percent(50), WaveSize::Percent(50)]),
            vec![4, 7]
        );
    }

    #[test]
    fn empty_wave_list_is_one_wave() {
        let p = plan("u", &names(5), &[], &BTreeMap::new()).unwrap();
        assert_eq!(p.wave_count, 1);
        assert_eq!(p.wave_sizes(), vec![5]);
        let p = plan("u", &[], &[], &BTreeMap::new()).unwrap();
        assert_eq!(p.wave_sizes(), vec![0]);
    }

    #[test]
    fn bad_waves_are_typed_errors() {
        let both = Wave {
            count: Some(1),
            percent: Some(5),
            pause: None,
        };
        assert_eq!(
            plan("u", &names(3), &[count(1), both], &BTreeMap::new()),
            Err(PlanError::AmbiguousWave { index: 1 })
        );
        let neither = Wave {
            count: None,
            percent: None,
            pause: None,
        };
        assert_eq!(
            plan("u", &names(3), &[neither], &BTreeMap::new()),
            Err(PlanError::AmbiguousWave { index: 0 })
        );
        assert_eq!(
            plan("u", &names(3), &[percent(101)], &BTreeMap::new()),
            Err(PlanError::WaveOutOfRange { index: 0, value: 101 })
        );
        assert_eq!(
            plan("u", &names(3), &[count(0)], &BTreeMap::new()),
            Err(PlanError::WaveOutOfRange { index: 0, value: 0 })
        );
    }

    #[test]
    fn different_rollouts_pick_different_canaries() {
        let nodes = names(50);
        let canaries: std::collections::BTreeSet<String> = (0..20)
            .map(|i| {
                let p = plan(
                    &format!("uid-{i}"),
                    &nodes,
                    &[count(1), percent(100)],
                    &BTreeMap::new(),
                )
                .unwrap();
                p.nodes_in(0)[0].to_string()
            })
            .collect();
        assert!(
            canaries.len() > 5,
            "the canary must depend on the rollout: {canaries:?}"
        );
    }

    #[test]
    fn pinned_nodes_keep_their_wave_when_nodes_join() {
        let waves = [count(2), percent(50)];
        let before = plan("uid-9", &names(10), &waves, &BTreeMap::new()).unwrap();
        // Waves 0 and 1 started: their nodes hold assignments.
        let pinned: BTreeMap<String, u32> = before
            .wave_of
            .iter()
            .filter(|(_, w)| **w <= 1)
            .map(|(n, w)| (n.clone(), *w))
            .collect();
        let after = plan("uid-9", &names(40), &waves, &pinned).unwrap();
        for (n, w) in &pinned {
            assert_eq!(after.wave_of[n], *w, "{n} moved");
        }
        assert_eq!(after.wave_of.len(), 40);
    }

    #[test]
    fn pinned_wave_beyond_a_shrunk_wave_list_is_clamped() {
        let pinned = BTreeMap::from([("node-0001".to_string(), 5)]);
        let p = plan("u", &names(4), &[count(1), count(1)], &pinned).unwrap();
        assert_eq!(p.wave_of["node-0001"], 1);
    }

    fn arb_waves() -> impl Strategy<Value = Vec<Wave>> {
        prop::collection::vec(
            prop_oneof![(1i32..20).prop_map(count), (1i32..=100).prop_map(percent)],
            0..6,
        )
    }

    proptest! {
        #[test]
        fn every_node_gets_one_wave_independent_of_order(
            n in 0usize..120, waves in arb_waves(), uid in "[a-f0-9-]{8,36}", seed in any::<u64>()
        ) {
            let nodes = names(n);
            let mut shuffled = nodes.clone();
            // Deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let a = plan(&uid, &nodes, &waves, &BTreeMap::new()).unwrap();
            let b = plan(&uid, &shuffled, &waves, &BTreeMap::new()).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.wave_of.len(), n);
            prop_assert_eq!(a.wave_count as usize, waves.len().max(1));
            let sizes = a.wave_sizes();
            prop_assert_eq!(sizes.iter().sum::<usize>(), n);
            // Sizes follow the cumulative boundaries.
            let ends = wave_ends(n, &wave_sizes(&waves).unwrap());
            let mut start = 0;
            for (w, end) in ends.iter().enumerate() {
                prop_assert_eq!(sizes[w], end - start);
                start = *end;
            }
        }

        #[test]
        fn replanning_with_the_plan_pinned_changes_nothing(n in 1usize..80, waves in arb_waves(), extra in 0usize..30) {
            let first = plan("uid", &names(n), &waves, &BTreeMap::new()).unwrap();
            let again = plan("uid", &names(n), &waves, &first.wave_of).unwrap();
            prop_assert_eq!(&first, &again);
            let grown = plan("uid", &names(n + extra), &waves, &first.wave_of).unwrap();
            for (node, w) in &first.wave_of {
                prop_assert_eq!(grown.wave_of[node], *w);
            }
        }
    }
}
