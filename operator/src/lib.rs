//! pollen-operator: turns an applied UpdateRollout into an installed fleet, wave by wave.
//!
//! Layers:
//! - [`planner`]: which node belongs to which wave (pure);
//! - [`progress`]: aggregation of EdgeNode statuses, thresholds, conflicts and the phase machine (pure);
//!
//! Non-goals: the node agent (in `pollen-edge-node`), the trust-chain cryptography (in `pollen-trust`).
#![warn(missing_docs)]

pub mod planner;
pub mod progress;
