//! Task volumes: datasets (ZFS) or directories that a container mounts, with a size limit, that can be
//! snapshotted and cloned to seed a new volume from an old one.

mod dir;
mod zfs;

use std::path::PathBuf;

pub use dir::DirDriver;
pub use zfs::ZfsDriver;

/// A volume as it stands on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// Where it is mounted on the host, for the container runtime to bind.
    pub path: PathBuf,
    /// The size limit in bytes (0: none).
    pub quota_bytes: u64,
    pub used_bytes: u64,
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error(
        "volume name {0:?} must be 1-64 characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("volume {0} already exists")]
    Exists(String),
    #[error("no volume {0}")]
    NotFound(String),
    #[error("no snapshot {snapshot} of volume {volume}")]
    SnapshotNotFound { volume: String, snapshot: String },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("unexpected output from `{command}`: {output:?}")]
    Output { command: String, output: String },
    #[error("{0}")]
    Io(String),
}

/// What every volume driver does.
pub trait VolumeDriver: Send + Sync {
    /// Creates an empty volume limited to `quota_bytes`.
    fn create(&self, name: &str, quota_bytes: u64) -> Result<Volume, VolumeError>;
    fn get(&self, name: &str) -> Result<Volume, VolumeError>;
    /// Names of every volume this driver manages.
    fn list(&self) -> Result<Vec<String>, VolumeError>;
    /// Removes a volume and its snapshots.
    fn destroy(&self, name: &str) -> Result<(), VolumeError>;
    /// A point-in-time copy of a volume, kept until the volume is destroyed.
    fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), VolumeError>;
    /// A new volume starting from a snapshot of another.
    fn clone_from(&self, source: &str, snapshot: &str, name: &str, quota_bytes: u64) -> Result<Volume, VolumeError>;
}

/// Volume and snapshot names become dataset and directory names: a strict alphabet keeps them from being read as
/// options, paths or properties.
pub fn check_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        for good in ["data", "job-1.web_0", "0a"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-o", "a/b", "a@b", "A", ".hidden", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
