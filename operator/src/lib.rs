//! pollen-operator: turns an applied UpdateRollout into an installed fleet, wave by wave.
//!
//! Layers:
//! - [`planner`]: which node belongs to which wave (pure);
//! - [`allowance`]: the rollout's origin budget shared out as per-node allowances (pure);
//! - [`ledger`]: the highest version delivered per repository and install path, and whether a
//!   verified artifact may be delivered (pure);
//! - [`progress`]: aggregation of EdgeNode statuses, thresholds, conflicts and the phase machine (pure);
//! - [`pipeline`]: the seam to the registry and the trust chain (resolve, verify, index);
//! - [`controller`]: the reconciler, its context and the watches;
//! - [`metrics`] and [`http`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`;
//! - [`csr`]: the node certificate signer on the CertificateSigningRequest API;
//! - [`revocation`]: quarantined and deleted EdgeNodes into the fleet's signed revocation list;
//! - [`node_labels`]: EdgeNode labels a device cannot forge (the node name, copied Node labels);
//! - [`signer`]: the approval rules for node certificate signing requests (pure);
//! - [`leader`]: leader election through a coordination.k8s.io Lease;
//! - [`trust_pipeline`]: the real pipeline on `pollen-trust`;
//! - [`app`]: the process: flags, mounted keys, endpoints, leader election, controller.
//!
//! Non-goals: the node agent (in `pollen-edge-node`), the trust-chain cryptography (in `pollen-trust`).
#![warn(missing_docs)]

pub mod allowance;
pub mod app;
pub mod controller;
pub mod csr;
#[cfg(test)]
pub mod fixtures;
pub mod grants;
pub mod http;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod node_labels;
pub mod pipeline;
pub mod planner;
pub mod progress;
pub mod revocation;
pub mod signer;
pub mod trust_pipeline;
