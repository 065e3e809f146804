//! What `pause`, `resume` and `abort` send to the API server (pure).
//!
//! Pausing sets `spec.strategy.paused`: the operator stops at the next wave boundary, and nodes already
//! assigned keep going. Aborting deletes the UpdateRollout: the operator's finalizer withdraws its
//! assignments from every EdgeNode, and versions already installed stay where they are (the API has no
//! other "abort" verb, and this is the documented way to stop a rollout for good).
//!
//! Non-goals: rolling installed nodes back (apply a rollout of the previous version).

use serde_json::{Value, json};

/// The merge patch that pauses (`true`) or resumes (`false`) a rollout.
pub fn pause_patch(paused: bool) -> Value {
    json!({ "spec": { "strategy": { "paused": paused } } })
}

/// What the user is told after an action, for a rollout `namespace/name`.
pub fn done_message(action: Action, rollout: &str) -> String {
    match action {
        Action::Pause => {
            format!("updaterollout {rollout} paused (no new wave starts; assigned nodes keep going)")
        }
        Action::Resume => format!("updaterollout {rollout} resumed"),
        Action::Abort => format!(
            "updaterollout {rollout} deleted: the operator withdraws its assignments; installed versions stay"
        ),
    }
}

/// The three actions on a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop at the next wave boundary.
    Pause,
    /// Go on from where it stopped.
    Resume,
    /// Delete the rollout (its assignments are withdrawn).
    Abort,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_touch_only_the_paused_flag() {
        assert_eq!(
            pause_patch(true).to_string(),
            r#"{"spec":{"strategy":{"paused":true}}}"#
        );
        assert_eq!(pause_patch(false)["spec"]["strategy"]["paused"], false);
        let body = pause_patch(true);
        assert_eq!(body.as_object().unwrap().len(), 1, "nothing but spec");
        assert_eq!(
            body["spec"].as_object().unwrap().len(),
            1,
            "nothing but spec.strategy"
        );
    }

    #[test]
    fn messages_name_the_rollout_and_the_effect() {
        assert!(done_message(Action::Abort, "fleet/fw").contains("installed versions stay"));
        assert!(done_message(Action::Pause, "fleet/fw").starts_with("updaterollout fleet/fw paused"));
    }
}
