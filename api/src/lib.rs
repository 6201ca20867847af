//! The REST contract of Titan: wire types, validation, the error body, the OpenAPI document, a typed client and
//! an axum router over a trait that a cell implements.
//!
//! Empty until the cell and its job API land (issue #3). Architecture invariant: api knows nothing of Raft,
//! sled or the placement engine's internals.
