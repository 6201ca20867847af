//! One cell's control plane: the Raft store and state machine, the implementation of the job API on top of it,
//! the reconciler and the scheduling loop that turn jobs into placed tasks, and (in later issues) federation
//! between cells and the location levers.
//!
//! Architecture invariant: the scheduler talks to agents and clients only through `titan-api` types; it never
//! depends on the agent crate.

pub mod address;
pub mod agent;
pub mod application;
pub mod autoscaling;
pub mod capacity;
pub mod clock;
pub mod command;
pub mod config;
pub mod desired;
pub mod federation;
pub mod history;
pub mod hlc;
pub mod job;
pub mod key;
pub mod lease;
pub mod location;
pub mod member;
pub mod metrics;
// openraft's `StorageError` is large and is what its storage traits return; boxing it in our helpers would only
// move the conversion elsewhere.
pub mod placement;
pub mod quota;
#[allow(clippy::result_large_err)]
pub mod raft;
pub mod reconcile;
pub mod scheduling;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod store;
pub mod task;
pub mod token;
pub mod watch;
pub mod worker;

pub use address::PeerAddr;
pub use config::{parse_peers, CellConfig, RaftTuning};
pub use member::{Cell, CellError};
