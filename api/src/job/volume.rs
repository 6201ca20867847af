//! Volumes mounted into each task of a job.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::error::ApiError;

/// A volume mounted into each task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSpec {
    /// Unique within the job.
    pub name: String,
    /// Where it is mounted in the container: absolute, without `..`.
    pub path: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// Whether the volume outlives its task (and follows the job's replacement tasks).
    #[serde(default)]
    pub persistent: bool,
    /// A snapshot of another volume to seed this one from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl VolumeSpec {
    pub(super) fn validate(&self, at: &str) -> Result<(), ApiError> {
        let field = |name: &str| join(at, name);
        check_dns_label(&self.name).map_err(|m| ApiError::field(field("name"), m))?;
        check_mount_path(&self.path).map_err(|m| ApiError::field(field("path"), m))?;
        if self.size_gib == 0 || self.size_gib > MAX_DISK_GIB {
            return Err(ApiError::field(field("sizeGib"), format!("must be 1 to {MAX_DISK_GIB} GiB")));
        }
        if let Some(from) = &self.from {
            check_label(from).map_err(|m| ApiError::field(field("from"), m))?;
        }
        Ok(())
    }
}
