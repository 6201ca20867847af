//! The REST contract of Titan: wire types, validation, the error body, the OpenAPI document, a typed client and
//! an axum router over a trait that a cell implements.
//!
//! Architecture invariant: api knows nothing of Raft, sled or the placement engine's internals.

pub mod acl;
pub mod agent;
pub mod body;
pub mod client;
pub mod cron;
pub mod error;
pub mod event;
pub mod fleet;
pub mod job;
pub mod location;
pub mod metrics;
pub mod openapi;
pub mod quota;
pub mod router;
pub mod task;
pub mod tls;
pub mod view;

pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorCode};
pub use router::{router, Actor, CellApi, HttpMetrics};
