//! What the agent should be doing, from its EdgeNode's `spec.assignments`.
//!
//! Pure: compares the assignments the operator wrote with the work the agent is
//! running and says what to start and what to cancel. An assignment is identified by
//! its rollout; a new chunk index for the same rollout (a new artifact) supersedes the
//! running one: cancel, then start.

use std::collections::BTreeMap;

use pollen_crds::Assignment;

/// One step to bring the running work in line with the assignments.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Start work on this assignment.
    Start(Box<Assignment>),
    /// Cancel the running work of this rollout (removed, or superseded by a new index).
    Cancel {
        /// The rollout, as `namespace/name`.
        rollout: String,
    },
}

/// The steps that turn `running` (rollout → chunk index) into `desired`, cancels first.
pub fn steps(desired: &[Assignment], running: &BTreeMap<String, String>) -> Vec<Step> {
    let wanted: BTreeMap<&str, &Assignment> = desired.iter().map(|a| (a.rollout.as_str(), a)).collect();
    let mut cancels = Vec::new();
    let mut starts = Vec::new();
    for (rollout, index) in running {
        match wanted.get(rollout.as_str()) {
            Some(a) if &a.chunk_index == index => {}
            _ => cancels.push(Step::Cancel {
                rollout: rollout.clone(),
            }),
        }
    }
    for (rollout, a) in wanted {
        if running.get(rollout) != Some(&a.chunk_index) {
            starts.push(Step::Start(Box::new(a.clone())));
        }
    }
    cancels.extend(starts);
    cancels
}

/// An assignment of `rollout` to chunk index `index`, with no limits (for tests).
#[cfg(test)]
pub(crate) fn test_assignment(rollout: &str, index: &str) -> Assignment {
    Assignment {
        rollout: rollout.into(),
        chunk_index: index.into(),
        wave: 0,
        sequence: 1,
        target_path: "fw.bin".into(),
        trust_policy: "tp".into(),
        upload_bytes_per_second: None,
        download_bytes_per_second: None,
        peer_wait: None,
        origin_requests: None,
        origin_allowance_bytes: None,
        activation_window: None,
        peer_grant: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(rollout: &str, index: &str) -> Assignment {
        test_assignment(rollout, index)
    }

    #[test]
    fn new_assignments_start() {
        let s = steps(&[a("ns/r1", "i1")], &BTreeMap::new());
        assert_eq!(s, vec![Step::Start(Box::new(a("ns/r1", "i1")))]);
    }

    #[test]
    fn unchanged_assignments_do_nothing() {
        let running = BTreeMap::from([("ns/r1".to_string(), "i1".to_string())]);
        assert!(steps(&[a("ns/r1", "i1")], &running).is_empty());
    }

    #[test]
    fn a_new_index_supersedes_the_running_one() {
        let running = BTreeMap::from([("ns/r1".to_string(), "i1".to_string())]);
        let s = steps(&[a("ns/r1", "i2")], &running);
        assert_eq!(
            s,
            vec![
                Step::Cancel {
                    rollout: "ns/r1".into()
                },
                Step::Start(Box::new(a("ns/r1", "i2")))
            ]
        );
    }

    #[test]
    fn removed_assignments_are_cancelled() {
        let running = BTreeMap::from([
            ("ns/r1".to_string(), "i1".to_string()),
            ("ns/r2".to_string(), "i9".to_string()),
        ]);
        let s = steps(&[a("ns/r2", "i9")], &running);
        assert_eq!(
            s,
            vec![Step::Cancel {
                rollout: "ns/r1".into()
            }]
        );
    }
}
