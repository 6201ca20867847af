//! Fleet autoscaling: policies (reactive, predictive) that read fenzo's idle and shortfall hints, and fleets
//! (EC2 auto scaling groups, local processes, simulated) that carry out their decisions.
//!
//! The AWS SDK crates live here and nowhere else: they compile slowly.

pub mod config;
pub mod fleet;
pub mod local;
pub mod plan;
pub mod policy;
pub mod sim;
pub mod trace;
