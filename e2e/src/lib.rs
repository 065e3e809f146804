//! Pollen's end-to-end harness: real parts for tests (registry, API server, outside tools), the fleet
//! lab and benchmarks.

pub mod apiserver;
pub mod fleet;
pub mod lab;
pub mod registry;
pub mod secure_registry;
pub mod tools;
