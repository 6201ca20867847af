//! The ZFS driver: one dataset per volume under a parent dataset, driven through the `zfs` command with the same
//! arguments on ZFS on Linux and on zfs-fuse. Numbers come from `zfs get -H -p` (exact bytes, tab-separated),
//! which both implement; `zfs list -p` is not in zfs-fuse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::{check_name, Volume, VolumeDriver, VolumeError};

/// How often `destroy` retries a dataset that reports busy.
const DESTROY_ATTEMPTS: u32 = 10;

pub struct ZfsDriver {
    /// The dataset volumes are created under, e.g. `tank/titan`.
    parent: String,
    zfs: PathBuf,
}

impl ZfsDriver {
    /// Volumes go under `parent`, which must exist.
    pub fn new(parent: impl Into<String>) -> ZfsDriver {
        ZfsDriver { parent: parent.into(), zfs: PathBuf::from("zfs") }
    }

    fn dataset(&self, name: &str) -> Result<String, VolumeError> {
        check_name(name)?;
        Ok(format!("{}/{name}", self.parent))
    }

    fn run(&self, args: &[&str]) -> Result<String, VolumeError> {
        let command = format!("zfs {}", args.join(" "));
        let out = Command::new(&self.zfs)
            .args(args)
            .output()
            .map_err(|e| VolumeError::Command { command: command.clone(), message: e.to_string() })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(VolumeError::Command { command, message })
        }
    }

    fn exists(&self, dataset: &str) -> Result<bool, VolumeError> {
        match self.run(&["list", "-H", "-o", "name", dataset]) {
            Ok(_) => Ok(true),
            Err(VolumeError::Command { message, .. }) if message.contains("does not exist") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Parses `zfs get -H -p -o property,value p1,p2,...` output into a map.
fn parse_properties(command: &str, output: &str) -> Result<BTreeMap<String, String>, VolumeError> {
    let mut props = BTreeMap::new();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line
            .split_once('\t')
            .ok_or_else(|| VolumeError::Output { command: command.to_string(), output: output.to_string() })?;
        props.insert(k.to_string(), v.to_string());
    }
    Ok(props)
}

/// A byte count from `-p` output; `-` and `none` (no quota) read as 0.
fn bytes(command: &str, props: &BTreeMap<String, String>, key: &str) -> Result<u64, VolumeError> {
    match props.get(key).map(String::as_str) {
        Some("-") | Some("none") => Ok(0),
        Some(v) => {
            v.parse().map_err(|_| VolumeError::Output { command: command.to_string(), output: format!("{key}={v}") })
        }
        None => Err(VolumeError::Output { command: command.to_string(), output: format!("no {key}") }),
    }
}

impl VolumeDriver for ZfsDriver {
    fn create(&self, name: &str, quota_bytes: u64) -> Result<Volume, VolumeError> {
        let ds = self.dataset(name)?;
        if self.exists(&ds)? {
            return Err(VolumeError::Exists(name.to_string()));
        }
        let quota = format!("quota={}", if quota_bytes == 0 { "none".to_string() } else { quota_bytes.to_string() });
        self.run(&["create", "-o", &quota, &ds])?;
        self.get(name)
    }

    fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        let ds = self.dataset(name)?;
        if !self.exists(&ds)? {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        let args = ["get", "-H", "-p", "-o", "property,value", "used,quota,mountpoint", ds.as_str()];
        let command = format!("zfs {}", args.join(" "));
        let props = parse_properties(&command, &self.run(&args)?)?;
        let path = props
            .get("mountpoint")
            .map(PathBuf::from)
            .ok_or_else(|| VolumeError::Output { command: command.clone(), output: "no mountpoint".into() })?;
        Ok(Volume {
            name: name.to_string(),
            path,
            quota_bytes: bytes(&command, &props, "quota")?,
            used_bytes: bytes(&command, &props, "used")?,
        })
    }

    fn list(&self) -> Result<Vec<String>, VolumeError> {
        let out = self.run(&["list", "-H", "-o", "name", "-t", "filesystem", "-r", &self.parent])?;
        let prefix = format!("{}/", self.parent);
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect())
    }

    fn destroy(&self, name: &str) -> Result<(), VolumeError> {
        let ds = self.dataset(name)?;
        if !self.exists(&ds)? {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        // Unmount first: zfs-fuse reports a mounted dataset as busy to `destroy` even with nothing open in it, and
        // may take a moment to let go; the agent destroys a volume only once its container is gone.
        let mut attempts = 0;
        loop {
            let _ = self.run(&["unmount", &ds]);
            match self.run(&["destroy", "-r", &ds]) {
                Err(VolumeError::Command { message, .. })
                    if message.contains("busy") && attempts < DESTROY_ATTEMPTS =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other.map(|_| ()),
            }
        }
    }

    fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), VolumeError> {
        check_name(snapshot)?;
        let ds = self.dataset(name)?;
        if !self.exists(&ds)? {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        self.run(&["snapshot", &format!("{ds}@{snapshot}")]).map(|_| ())
    }

    fn clone_from(&self, source: &str, snapshot: &str, name: &str, quota_bytes: u64) -> Result<Volume, VolumeError> {
        check_name(snapshot)?;
        let from = format!("{}@{snapshot}", self.dataset(source)?);
        let ds = self.dataset(name)?;
        if !self.exists(&from)? {
            return Err(VolumeError::SnapshotNotFound { volume: source.to_string(), snapshot: snapshot.to_string() });
        }
        if self.exists(&ds)? {
            return Err(VolumeError::Exists(name.to_string()));
        }
        let quota = format!("quota={}", if quota_bytes == 0 { "none".to_string() } else { quota_bytes.to_string() });
        self.run(&["clone", "-o", &quota, &from, &ds])?;
        self.get(name)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn properties_parse_from_tab_separated_output() {
        let out = "used\t114688\nquota\t10485760\nmountpoint\t/pool/v\n";
        let props = parse_properties("zfs get", out).expect("parses");
        assert_eq!(bytes("zfs get", &props, "used"), Ok(114_688));
        assert_eq!(bytes("zfs get", &props, "quota"), Ok(10_485_760));
        let none = parse_properties("zfs get", "quota\tnone\n").expect("parses");
        assert_eq!(bytes("zfs get", &none, "quota"), Ok(0));
        assert!(parse_properties("zfs get", "garbage").is_err());
        assert!(bytes("zfs get", &props, "missing").is_err());
    }

    /// A pool on a file for one test, destroyed at the end however the test ends.
    struct Pool {
        name: String,
        _dir: tempfile::TempDir,
    }

    impl Pool {
        fn new(tag: &str) -> Pool {
            let dir = tempfile::tempdir().expect("temp dir");
            let file = dir.path().join("pool.img");
            std::fs::File::create(&file).and_then(|f| f.set_len(128 << 20)).expect("pool file");
            let name = format!("titantest{}{tag}", std::process::id());
            let out = Command::new("zpool")
                .args(["create", "-f", &name])
                .arg(&file)
                .output()
                .expect("zpool runs (scripts/deps installs and starts zfs-fuse)");
            assert!(out.status.success(), "zpool create: {}", String::from_utf8_lossy(&out.stderr));
            Pool { name, _dir: dir }
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            // zfs-fuse may hold the pool busy for a moment after the last unmount.
            for _ in 0..50 {
                let done = Command::new("zpool").args(["destroy", "-f", &self.name]).output();
                if done.is_ok_and(|o| o.status.success()) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    #[test]
    fn datasets_are_created_with_quotas_snapshotted_cloned_and_destroyed() {
        let pool = Pool::new("a");
        let zfs = ZfsDriver::new(pool.name.clone());
        let v = zfs.create("data", 8 << 20).expect("created");
        assert_eq!((v.quota_bytes, v.path.is_dir()), (8 << 20, true));
        assert_eq!(zfs.create("data", 1 << 20), Err(VolumeError::Exists("data".into())));

        // Data written into the volume is what a clone of its snapshot starts with.
        std::fs::write(v.path.join("seed.txt"), "from the first task").expect("write into the volume");
        zfs.snapshot("data", "s1").expect("snapshot");
        let c = zfs.clone_from("data", "s1", "data-copy", 0).expect("cloned");
        assert_eq!(std::fs::read_to_string(c.path.join("seed.txt")).expect("read the clone"), "from the first task");
        assert_eq!(c.quota_bytes, 0);
        assert_eq!(
            zfs.clone_from("data", "nope", "x", 0),
            Err(VolumeError::SnapshotNotFound { volume: "data".into(), snapshot: "nope".into() })
        );

        // The quota holds: writing past it fails.
        let big = vec![7u8; 12 << 20];
        assert!(std::fs::write(v.path.join("big.bin"), &big).is_err(), "a write past the quota is refused");
        assert!(zfs.get("data").expect("still there").used_bytes > 0);

        let mut names = zfs.list().expect("listed");
        names.sort();
        assert_eq!(names, vec!["data".to_string(), "data-copy".to_string()]);
        zfs.destroy("data-copy").expect("destroyed");
        assert_eq!(zfs.get("data-copy"), Err(VolumeError::NotFound("data-copy".into())));
        assert_eq!(zfs.destroy("data-copy"), Err(VolumeError::NotFound("data-copy".into())));
        assert_eq!(zfs.create("../etc", 1), Err(VolumeError::InvalidName("../etc".into())));
    }
}
