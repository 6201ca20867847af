//! The node daemon: registration, heartbeats, assignment pull, runtimes (docker, process), volumes (zfs, dir),
//! logs and health checks.
//!
//! So far `volume` and the Docker `runtime` exist (issue #4 builds the rest). Architecture invariant: agent never depends on
//! scheduler; it talks to a cell through `titan-api` only.

pub mod runtime;
pub mod volume;
