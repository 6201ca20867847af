//! The directory driver, for nodes without a ZFS pool: one directory per volume under a root, snapshots and
//! clones as copies. Quotas are recorded and reported but not enforced by the filesystem.

use std::path::{Path, PathBuf};

use super::{check_name, Volume, VolumeDriver, VolumeError};

const QUOTA_FILE: &str = ".titan-quota";
const SNAPSHOTS: &str = ".titan-snapshots";

pub struct DirDriver {
    root: PathBuf,
}

fn io(e: std::io::Error) -> VolumeError {
    VolumeError::Io(e.to_string())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn size_of(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { size_of(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

impl DirDriver {
    pub fn new(root: impl Into<PathBuf>) -> Result<DirDriver, VolumeError> {
        let root = root.into();
        std::fs::create_dir_all(root.join(SNAPSHOTS)).map_err(io)?;
        Ok(DirDriver { root })
    }

    fn path(&self, name: &str) -> Result<PathBuf, VolumeError> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn snapshot_path(&self, name: &str, snapshot: &str) -> Result<PathBuf, VolumeError> {
        check_name(name)?;
        check_name(snapshot)?;
        Ok(self.root.join(SNAPSHOTS).join(format!("{name}@{snapshot}")))
    }

    fn make(&self, name: &str, quota_bytes: u64, from: Option<&Path>) -> Result<Volume, VolumeError> {
        let path = self.path(name)?;
        if path.exists() {
            return Err(VolumeError::Exists(name.to_string()));
        }
        match from {
            Some(src) => copy_tree(src, &path).map_err(io)?,
            None => std::fs::create_dir_all(&path).map_err(io)?,
        }
        std::fs::write(self.root.join(format!("{name}{QUOTA_FILE}")), quota_bytes.to_string()).map_err(io)?;
        self.get(name)
    }
}

impl VolumeDriver for DirDriver {
    fn create(&self, name: &str, quota_bytes: u64) -> Result<Volume, VolumeError> {
        self.make(name, quota_bytes, None)
    }

    fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        let path = self.path(name)?;
        if !path.is_dir() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        let quota = std::fs::read_to_string(self.root.join(format!("{name}{QUOTA_FILE}")))
            .ok()
            .and_then(|q| q.trim().parse().ok())
            .unwrap_or(0);
        Ok(Volume { name: name.to_string(), used_bytes: size_of(&path).map_err(io)?, path, quota_bytes: quota })
    }

    fn list(&self) -> Result<Vec<String>, VolumeError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && check_name(&name).is_ok() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn destroy(&self, name: &str) -> Result<(), VolumeError> {
        let path = self.path(name)?;
        if !path.is_dir() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        std::fs::remove_dir_all(&path).map_err(io)?;
        let _ = std::fs::remove_file(self.root.join(format!("{name}{QUOTA_FILE}")));
        let prefix = format!("{name}@");
        for entry in std::fs::read_dir(self.root.join(SNAPSHOTS)).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_dir_all(entry.path()).map_err(io)?;
            }
        }
        Ok(())
    }

    fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), VolumeError> {
        let path = self.path(name)?;
        if !path.is_dir() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        copy_tree(&path, &self.snapshot_path(name, snapshot)?).map_err(io)
    }

    fn clone_from(&self, source: &str, snapshot: &str, name: &str, quota_bytes: u64) -> Result<Volume, VolumeError> {
        let snap = self.snapshot_path(source, snapshot)?;
        if !snap.is_dir() {
            return Err(VolumeError::SnapshotNotFound { volume: source.to_string(), snapshot: snapshot.to_string() });
        }
        self.make(name, quota_bytes, Some(&snap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_behave_like_datasets() {
        let root = tempfile::tempdir().expect("temp dir");
        let d = DirDriver::new(root.path()).expect("root");
        let v = d.create("data", 1 << 20).expect("created");
        assert_eq!(d.create("data", 1), Err(VolumeError::Exists("data".into())));
        std::fs::write(v.path.join("seed.txt"), "hello").expect("write");
        d.snapshot("data", "s1").expect("snapshot");
        std::fs::write(v.path.join("seed.txt"), "changed after the snapshot").expect("write");
        let c = d.clone_from("data", "s1", "copy", 0).expect("cloned");
        assert_eq!(std::fs::read_to_string(c.path.join("seed.txt")).expect("read"), "hello");
        assert_eq!(d.get("data").expect("get").used_bytes, 26);
        assert_eq!(d.get("data").expect("get").quota_bytes, 1 << 20);
        assert_eq!(d.list().expect("list"), vec!["copy".to_string(), "data".to_string()]);
        d.destroy("data").expect("destroyed");
        assert_eq!(
            d.clone_from("data", "s1", "again", 0),
            Err(VolumeError::SnapshotNotFound { volume: "data".into(), snapshot: "s1".into() })
        );
        assert_eq!(d.get("data"), Err(VolumeError::NotFound("data".into())));
    }
}
