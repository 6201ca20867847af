//! What happens to a job's tasks around its runs: a scheduled run's overlap, a disconnect from the cell, and how
//! many voluntary disruptions may take down at once.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::error::ApiError;

/// What a scheduled run does when the previous run still has tasks going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverlapPolicy {
    /// The new run is skipped.
    Skip,
    /// The previous run's tasks are stopped and the new run starts.
    Replace,
}

/// Longest `disconnect.stopAfterSeconds`: a day. Past it the choice is hardly a choice, and the cell's replacement
/// grace grows with it.
pub const MAX_DISCONNECT_STOP_AFTER_SECONDS: u64 = 86_400;

/// A job's choice for a disconnect, as Nomad's `disconnect.stop_on_client_after`: its tasks are stopped by their
/// agent once it has not renewed its lease for `stopAfterSeconds`, and the cell replaces them only after a longer
/// grace, so an original and its replacement never run at once. Without it, tasks ride out a disconnect and a
/// replacement may run beside an unreachable original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisconnectSpec {
    /// Seconds without a lease renewal after which the agent stops the job's tasks; 1 to 86400.
    pub stop_after_seconds: u64,
}

impl DisconnectSpec {
    pub(super) fn validate(&self, at: &str) -> Result<(), ApiError> {
        if !(1..=MAX_DISCONNECT_STOP_AFTER_SECONDS).contains(&self.stop_after_seconds) {
            return Err(ApiError::field(
                join(at, "stopAfterSeconds"),
                format!("must be 1 to {MAX_DISCONNECT_STOP_AFTER_SECONDS} seconds"),
            ));
        }
        Ok(())
    }

    pub fn stop_after_ms(&self) -> u64 {
        self.stop_after_seconds.saturating_mul(1000)
    }
}

/// How many of the job's tasks voluntary disruptions may take down at once: a count or a percentage, not both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisruptionBudgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Of the job's instances in a location, rounded down but never below one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable_percent: Option<u32>,
}

impl DisruptionBudgetSpec {
    pub(super) fn validate(&self, at: &str) -> Result<(), ApiError> {
        match (self.max_unavailable, self.max_unavailable_percent) {
            (None, None) => Err(ApiError::field(at, "give maxUnavailable or maxUnavailablePercent")),
            (Some(_), Some(_)) => Err(ApiError::field(
                join(at, "maxUnavailablePercent"),
                "give maxUnavailable or maxUnavailablePercent, not both",
            )),
            (Some(0), None) => Err(ApiError::field(
                join(at, "maxUnavailable"),
                "must be at least 1: a budget of 0 would block every drain",
            )),
            (None, Some(percent)) if !(1..=100).contains(&percent) => {
                Err(ApiError::field(join(at, "maxUnavailablePercent"), "must be 1 to 100"))
            }
            _ => Ok(()),
        }
    }
}
