//! One cell's control plane: the Raft store and state machine, the implementation of the job API on top of it,
//! and (in later issues) the reconciler, the scheduling loop, federation between cells and the location levers.
//!
//! Architecture invariant: the scheduler talks to agents and clients only through `titan-api` types; it never
//! depends on the agent crate.

pub mod cell;
pub mod config;
// openraft's `StorageError` is large and is what its storage traits return; boxing it in our helpers would only
// move the conversion elsewhere.
#[allow(clippy::result_large_err)]
pub mod raft;
pub mod state_machine;
pub mod store;

pub use cell::{Cell, CellError};
pub use config::{parse_peers, CellConfig, RaftTuning};
