//! The node daemon: registration, heartbeats, assignment pull, runtimes (docker, process), volumes (zfs, dir),
//! logs and health checks.
//!
//! Empty until the agent lands (issue #4). Architecture invariant: agent never depends on scheduler.
