//! Resource vectors: what a task asks for and what an agent has, in exact integer units.
//!
//! Cpus are kept in millicpus so that assigning and releasing never drifts the way summed floats do; memory and
//! disk are MiB, network Mbps, dynamic ports a count (concrete ports come from the agent's ranges, see `ports`).
//! Named scalar resources (gpus, fpgas, ...) are whole units keyed by name.

use std::fmt;

/// Millicpus in one cpu.
pub const MILLI: u64 = 1000;

/// Converts fractional cpus to millicpus, rounding to the nearest millicpu. Negative or non-finite input is
/// a caller bug that api/ rejects before it gets here; it maps to zero rather than wrapping.
pub fn cpus_to_milli(cpus: f64) -> u64 {
    if cpus.is_finite() && cpus > 0.0 {
        (cpus * MILLI as f64).round() as u64
    } else {
        0
    }
}

/// Named scalar resources, sorted by name, without zero entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scalars(Vec<(String, u64)>);

impl Scalars {
    pub fn get(&self, name: &str) -> u64 {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)).map(|i| self.0[i].1).unwrap_or(0)
    }

    pub fn set(&mut self, name: &str, amount: u64) {
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) if amount == 0 => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = amount,
            Err(_) if amount == 0 => {}
            Err(i) => self.0.insert(i, (name.to_string(), amount)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(n, a)| (n.as_str(), *a))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A quantity of every resource kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_milli: u64,
    pub mem_mib: u64,
    pub disk_mib: u64,
    pub net_mbps: u64,
    /// Dynamic ports: a count here; the agent's ranges supply the numbers.
    pub ports: u32,
    pub scalars: Scalars,
}

/// The kinds of resource, as named in explanations and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Cpu,
    Memory,
    Disk,
    Network,
    Ports,
    Scalar(String),
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceKind::Cpu => f.write_str("cpu"),
            ResourceKind::Memory => f.write_str("memory"),
            ResourceKind::Disk => f.write_str("disk"),
            ResourceKind::Network => f.write_str("network"),
            ResourceKind::Ports => f.write_str("ports"),
            ResourceKind::Scalar(name) => write!(f, "scalar:{name}"),
        }
    }
}

impl Resources {
    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli += other.cpu_milli;
        self.mem_mib += other.mem_mib;
        self.disk_mib += other.disk_mib;
        self.net_mbps += other.net_mbps;
        self.ports += other.ports;
        for (name, amount) in other.scalars.iter() {
            let now = self.scalars.get(name);
            self.scalars.set(name, now + amount);
        }
    }

    /// Subtracts `other`, saturating at zero: releasing more than was assigned is a caller bug, and a snapshot
    /// that went negative would accept work it has no room for.
    pub fn sub(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_sub(other.cpu_milli);
        self.mem_mib = self.mem_mib.saturating_sub(other.mem_mib);
        self.disk_mib = self.disk_mib.saturating_sub(other.disk_mib);
        self.net_mbps = self.net_mbps.saturating_sub(other.net_mbps);
        self.ports = self.ports.saturating_sub(other.ports);
        for (name, amount) in other.scalars.iter() {
            let now = self.scalars.get(name);
            self.scalars.set(name, now.saturating_sub(amount));
        }
    }

    /// The first resource (in the filter order cpu, memory, disk, network, ports, scalars) where `used + want`
    /// exceeds `total`, or `None` when it all fits.
    pub fn first_shortfall(total: &Resources, used: &Resources, want: &Resources) -> Option<ResourceKind> {
        if used.cpu_milli + want.cpu_milli > total.cpu_milli {
            return Some(ResourceKind::Cpu);
        }
        if used.mem_mib + want.mem_mib > total.mem_mib {
            return Some(ResourceKind::Memory);
        }
        if used.disk_mib + want.disk_mib > total.disk_mib {
            return Some(ResourceKind::Disk);
        }
        if used.net_mbps + want.net_mbps > total.net_mbps {
            return Some(ResourceKind::Network);
        }
        if used.ports + want.ports > total.ports {
            return Some(ResourceKind::Ports);
        }
        for (name, amount) in want.scalars.iter() {
            if used.scalars.get(name) + amount > total.scalars.get(name) {
                return Some(ResourceKind::Scalar(name.to_string()));
            }
        }
        None
    }

    /// The first resource where `want` alone exceeds `total`: the task is larger than this agent even empty.
    pub fn exceeds(total: &Resources, want: &Resources) -> Option<ResourceKind> {
        Resources::first_shortfall(total, &Resources::default(), want)
    }

    pub fn cpus(&self) -> f64 {
        self.cpu_milli as f64 / MILLI as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_stay_sorted_and_drop_zeroes() {
        let mut s = Scalars::default();
        s.set("gpu", 2);
        s.set("fpga", 1);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![("fpga", 1), ("gpu", 2)]);
        s.set("gpu", 0);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![("fpga", 1)]);
        assert_eq!(s.get("gpu"), 0);
    }

    #[test]
    fn shortfall_names_the_first_exhausted_resource() {
        let mut total = Resources { cpu_milli: 4000, mem_mib: 1024, ports: 2, ..Default::default() };
        total.scalars.set("gpu", 1);
        let used = Resources { cpu_milli: 3000, ..Default::default() };
        let mut want = Resources { cpu_milli: 1000, mem_mib: 1024, ports: 2, ..Default::default() };
        assert_eq!(Resources::first_shortfall(&total, &used, &want), None);
        want.scalars.set("gpu", 2);
        assert_eq!(Resources::first_shortfall(&total, &used, &want), Some(ResourceKind::Scalar("gpu".into())));
        want.cpu_milli = 1500;
        assert_eq!(Resources::first_shortfall(&total, &used, &want), Some(ResourceKind::Cpu));
    }

    #[test]
    fn cpus_round_to_millicpus() {
        assert_eq!(cpus_to_milli(0.5), 500);
        assert_eq!(cpus_to_milli(0.1), 100);
        assert_eq!(cpus_to_milli(-1.0), 0);
        assert_eq!(cpus_to_milli(f64::NAN), 0);
    }
}
