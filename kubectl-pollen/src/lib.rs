//! `kubectl-pollen`: the kubectl plugin for Pollen (`kubectl pollen …`).
//!
//! Layers:
//! - [`render`]: pure text rendering of a rollout's status (per-wave and per-node bars, peer versus
//!   origin bytes, failures with their reasons) and of the EdgeNode inventory;
//! - [`actions`]: pure request bodies for `pause` and `resume`, and what `abort` does;
//! - [`output`]: `-o json|yaml` documents, shaped as kubectl prints them;
//! - [`cluster`]: the few API calls, reading the kubeconfig the way kubectl does.
//!
//! Non-goals: editing rollouts beyond pausing, resuming and deleting them (use `kubectl edit`), and any
//! cluster access the user's kubeconfig does not already grant.
#![warn(missing_docs)]

pub mod actions;
pub mod cluster;
pub mod output;
pub mod render;
