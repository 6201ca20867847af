//! What this machine is: its id (kept in the data directory across restarts), hostname and resources, detected
//! from the kernel unless configured.

use std::collections::BTreeMap;
use std::path::Path;

use titan_api::agent::{AgentRegistration, AgentResources};

/// Default dynamic port range, as Titus and Mesos use.
pub const DEFAULT_PORTS: (u16, u16) = (31_000, 31_999);

/// Overrides for what detection finds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declared {
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub ports: Option<(u16, u16)>,
}

/// The agent's id: read from `data_dir/agent-id`, or made (from the kernel's random UUID) and kept there.
pub fn agent_id(data_dir: &Path) -> std::io::Result<String> {
    let file = data_dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?.trim().to_string();
    std::fs::write(&file, &id)?;
    Ok(id)
}

/// Total memory in MiB from `/proc/meminfo`'s MemTotal line.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Space on the filesystem holding `dir`, in MiB.
fn disk_mib(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` is a properly sized, writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| (stat.f_blocks as u64).saturating_mul(stat.f_frsize as u64) / (1024 * 1024))
}

/// This machine's registration: detected resources, with `declared` taking precedence.
pub fn describe(
    id: String,
    addr: String,
    data_dir: &Path,
    declared: &Declared,
    attributes: BTreeMap<String, String>,
) -> AgentRegistration {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let cpus =
        declared.cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
    let memory_mib = declared
        .memory_mib
        .or_else(|| std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| parse_meminfo(&t)))
        .unwrap_or(0);
    let disk = declared.disk_mib.or_else(|| disk_mib(data_dir)).unwrap_or(0);
    let mut attributes = attributes;
    attributes.entry("hostname".into()).or_insert_with(|| hostname.clone());
    AgentRegistration {
        id,
        hostname,
        addr,
        resources: AgentResources {
            cpus,
            memory_mib,
            disk_mib: disk,
            port_ranges: vec![declared.ports.unwrap_or(DEFAULT_PORTS)],
        },
        attributes,
        running: Vec::new(),
    }
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`, "32768\t60999") and reserved ports
/// (`net.ipv4.ip_local_reserved_ports`, "8080,9000-9010"), from which it picks connections' source ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ephemeral {
    pub range: (u16, u16),
    pub reserved: Vec<(u16, u16)>,
}

impl Ephemeral {
    /// Reads both from `/proc/sys/net/ipv4`; `None` where they cannot be read (not Linux).
    pub fn of_this_machine() -> Option<Ephemeral> {
        let dir = Path::new("/proc/sys/net/ipv4");
        let range = std::fs::read_to_string(dir.join("ip_local_port_range")).ok()?;
        let reserved = std::fs::read_to_string(dir.join("ip_local_reserved_ports")).unwrap_or_default();
        Ephemeral::parse(&range, &reserved)
    }

    pub fn parse(range: &str, reserved: &str) -> Option<Ephemeral> {
        let mut bounds = range.split_whitespace().map(str::parse::<u16>);
        let range = (bounds.next()?.ok()?, bounds.next()?.ok()?);
        let reserved = reserved
            .trim()
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| match p.split_once('-') {
                Some((lo, hi)) => Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)),
                None => p.trim().parse().ok().map(|port| (port, port)),
            })
            .collect();
        Some(Ephemeral { range, reserved })
    }

    /// How many ports of `ports` the kernel may give a connection as its source port. A task's host port held
    /// that way cannot be published (Docker: "bind: address already in use"), so the agent warns about them.
    pub fn overlap(&self, ports: (u16, u16)) -> u32 {
        let (lo, hi) = (ports.0.max(self.range.0), ports.1.min(self.range.1));
        (lo..=hi).filter(|p| !self.reserved.iter().any(|&(a, b)| (a..=b).contains(p))).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ports_the_kernel_may_hand_to_connections_are_counted() {
        let linux = Ephemeral::parse("32768\t60999\n", "\n").expect("parsed");
        assert_eq!(linux, Ephemeral { range: (32768, 60999), reserved: vec![] });
        assert_eq!(linux.overlap(DEFAULT_PORTS), 0, "the default range is below Linux's ephemeral range");
        assert_eq!(linux.overlap((32000, 32999)), 232);
        assert_eq!(linux.overlap((33000, 33099)), 100);
        let reserving = Ephemeral::parse("32768 60999", "33000-33049,33099\n").expect("parsed");
        assert_eq!(reserving.reserved, vec![(33000, 33049), (33099, 33099)]);
        assert_eq!(reserving.overlap((33000, 33099)), 49, "reserved ports are never handed out");
        assert_eq!(Ephemeral::parse("garbage", ""), None);
        assert!(Ephemeral::of_this_machine().is_some(), "Linux has both files");
    }

    #[test]
    fn memory_comes_from_memtotal() {
        assert_eq!(parse_meminfo("MemTotal:       24683008 kB\nMemFree: 1 kB\n"), Some(24_104));
        assert_eq!(parse_meminfo("nothing here"), None);
    }

    #[test]
    fn the_id_is_kept_across_restarts_and_resources_are_detected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = agent_id(dir.path()).expect("made");
        assert_eq!(agent_id(dir.path()).expect("read back"), id);
        let declared = Declared { cpus: Some(3.0), ..Declared::default() };
        let r = describe(id, "127.0.0.1:1".into(), dir.path(), &declared, BTreeMap::new());
        assert_eq!(r.resources.cpus, 3.0);
        assert!(r.resources.memory_mib > 0 && r.resources.disk_mib > 0, "{:?}", r.resources);
        assert_eq!(r.resources.port_ranges, vec![DEFAULT_PORTS]);
        assert!(r.attributes.contains_key("hostname"));
        assert_eq!(r.validate(), Ok(()));
    }
}
