//! One cell's control plane: the Raft store and state machine, the reconciler, the scheduling loop, federation
//! between cells and the location levers.
//!
//! Empty until the cell lands (issue #3) and the scheduling loop joins it to fenzo (issue #5).
