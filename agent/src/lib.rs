//! The node daemon: registration, heartbeats, assignment pull, runtimes (docker, process), volumes (zfs, dir),
//! logs and health checks.
//!
//! So far: registration and heartbeats (`daemon`, `node`), the Docker `runtime` and `volume` drivers; assignment
//! pull, logs and health checks come with the rest of issue #4. Architecture invariant: agent never depends on
//! scheduler; it talks to a cell through `titan-api` only.

pub mod daemon;
pub mod health;
pub mod logs;
pub mod node;
pub mod runtime;
pub mod server;
pub mod volume;
