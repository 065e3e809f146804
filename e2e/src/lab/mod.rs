//! The fleet lab: a small emulated WAN built from Linux network namespaces, and the measurements the
//! swarm benchmark takes on it.
//!
//! Layout of one lab (all names carry the prefix `pl<pid>-<seq>-`, so parallel runs never collide):
//!
//! ```text
//!  node ns (eth0) ──veth── e<i>  ┐
//!  node ns (eth0) ──veth── e<j>  ├─ site bridge s<k> ── w<k>a ══veth══ w<k>b ─┐
//!                                ┘                (shaped WAN hop)            ├─ core bridge ── eo ──veth── origin ns (eth0)
//!                          (other sites …) ────────────────────────────────────┘
//!                         └──────────────────── bridge namespace ───────────────────────┘
//! ```
//!
//! - Egress shaping with `tbf` (explicit 50 ms latency) on each endpoint's `eth0` (its uplink) and on the
//!   bridge-side port (its downlink); the WAN hop is shaped both ways on the `w<k>a`/`w<k>b` pair.
//! - Segmentation and receive offloads are off on every veth, so shaping stays smooth.
//! - Delay and loss are applied once per packet, in the bridge namespace, to packets entering from an
//!   endpoint port (`physdev --physdev-in e+`): loss with iptables `statistic`, delay by a user-space
//!   daemon ([`delay`], binary `pollen-lab-delay`) that holds each packet queued through NFQUEUE for
//!   half the round-trip time. This kernel has no `netem`.
//! - Addresses come from 10.200.0.0/16 and exist only inside the lab's own namespaces.
//!
//! Non-goals: emulating jitter, reordering or asymmetric delay; IPv6.

pub mod baseline;
pub mod bench;
pub mod bounds;
pub mod check;
pub mod cmd;
pub mod counters;
pub mod delay;
pub mod fleet;
pub mod net;
pub mod origin;
pub mod payload;
pub mod procstat;
pub mod report;
pub mod spec;
pub mod swarm;

use std::time::Duration;

pub use net::{Lab, LabBinaries, LabNode};
pub use spec::{LabSpec, Rate};

/// Errors of the fleet lab. Each names the command or file involved.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started at all (usually: not installed).
    #[error("could not start `{cmd}`")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// Reading or writing a local file failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Output of a command or a file did not have the expected form.
    #[error("could not parse {what}: {detail}")]
    Parse {
        /// What was parsed.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The lab description is not usable.
    #[error("invalid lab spec: {0}")]
    Spec(String),
    /// Something did not happen in time.
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// A process of the run failed.
    #[error("{0}")]
    Failed(String),
    /// The origin registry could not be started.
    #[error("origin registry")]
    Registry(#[from] crate::registry::RegistryError),
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
