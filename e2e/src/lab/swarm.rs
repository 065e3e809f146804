//! The Pollen swarm phase: `pollen-edge-node standalone` in every node namespace.
//!
//! NOT YET RUNNABLE: the launcher is written once the edge node's standalone command line exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LabError;
use super::bench::Budget;
use super::net::Lab;
use super::origin::Origin;
use super::report::{Bounds, PhaseReport};

/// How to launch the swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The `pollen-edge-node` binary.
    pub edge_node: PathBuf,
}

/// Runs the swarm phase.
pub fn run(
    _lab: &Lab,
    _origin: &Origin,
    cfg: &SwarmConfig,
    _budget: Budget,
    _log_dir: &Path,
    _timeout: Duration,
    _bounds: Bounds,
) -> Result<PhaseReport, LabError> {
    Err(LabError::Failed(format!(
        "swarm launcher not runnable yet ({} standalone is not wired)",
        cfg.edge_node.display()
    )))
}
