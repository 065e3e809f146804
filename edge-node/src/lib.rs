//! Pollen's edge-node data plane: a verified chunk swarm over QUIC with mutual TLS.
//!
//! Layers, from pure to I/O:
//! - [`bitfield`], [`protocol`], [`picker`] and [`crl_intake`]: pure logic (wire format, piece and peer
//!   choice, admission of peers' revocation lists), tested without sockets or clocks;
//! - [`store`] and [`install`]: the chunk store (verify before marking present, crash-safe bitfield) and
//!   the atomic installer;
//! - [`tls`], [`net`], [`engine`]: QUIC with mutual TLS against the fleet CA, and the engine that drives a
//!   swarm for one verified index, with its origin fallback (range GETs through `pollen_trust::registry`,
//!   so with the registry's TLS and auth);
//! - [`activation`]: the daily window in which a verified payload may be installed;
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.
//!
//! - [`agent`]: the Kubernetes node agent, which registers the EdgeNode, feeds assignments to the engine,
//!   and removes the chunk stores they no longer need (within `--store-budget`).
//!
//! Non-goals: Kubernetes beyond the agent (the operator decides who gets what), and publishing or signing (see `pollen-trust`).

pub mod activation;
pub mod agent;
pub mod bitfield;
pub mod crl_intake;
pub mod engine;
pub mod install;
pub mod metrics;
pub mod net;
pub mod picker;
pub mod protocol;
pub mod ratelimit;
pub mod standalone;
pub mod store;
pub mod tls;
