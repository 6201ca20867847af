//! The node daemon: registration, heartbeats, assignment pull, runtimes (docker, process), volumes (zfs, dir),
//! logs and health checks.
//!
//! `daemon` keeps the lease and pulls assignments; `supervisor` decides (purely, in `supervisor::plan`) and acts:
//! it launches, adopts, watches, health-checks and stops tasks through a `runtime` (Docker or host processes)
//! with `volume`s, `logs` and `health` probes, and queues their statuses for the cell. Architecture invariant:
//! agent never depends on scheduler; it talks to a cell through `titan-api` only.

pub mod daemon;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod runtime;
pub mod server;
pub mod supervisor;
pub mod volume;
