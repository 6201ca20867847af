//! An agent as the caller describes it: totals, port ranges, attributes and eligibility, built with a builder.

use std::collections::BTreeMap;

use crate::resources::{cpus_to_milli, Resources};

/// An agent as the caller describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub id: String,
    pub hostname: String,
    /// Totals; `total.ports` is ignored in favour of `port_ranges`.
    pub total: Resources,
    /// Inclusive ranges dynamic ports are taken from.
    pub port_ranges: Vec<(u16, u16)>,
    pub attributes: BTreeMap<String, String>,
    /// False for disabled or draining agents: they keep their tasks but take no new ones.
    pub eligible: bool,
}

impl Agent {
    pub fn new(id: impl Into<String>) -> Agent {
        let id = id.into();
        Agent {
            hostname: id.clone(),
            id,
            total: Resources::default(),
            port_ranges: Vec::new(),
            attributes: BTreeMap::new(),
            eligible: true,
        }
    }

    pub fn hostname(mut self, h: impl Into<String>) -> Self {
        self.hostname = h.into();
        self
    }

    pub fn cpus(mut self, cpus: f64) -> Self {
        self.total.cpu_milli = cpus_to_milli(cpus);
        self
    }

    pub fn mem_mib(mut self, mib: u64) -> Self {
        self.total.mem_mib = mib;
        self
    }

    pub fn mem_gib(self, gib: u64) -> Self {
        self.mem_mib(gib * 1024)
    }

    pub fn disk_mib(mut self, mib: u64) -> Self {
        self.total.disk_mib = mib;
        self
    }

    pub fn net_mbps(mut self, mbps: u64) -> Self {
        self.total.net_mbps = mbps;
        self
    }

    pub fn ports(mut self, first: u16, last: u16) -> Self {
        self.port_ranges.push((first, last));
        self
    }

    pub fn scalar(mut self, name: &str, amount: u64) -> Self {
        self.total.scalars.set(name, amount);
        self
    }

    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    pub fn zone(self, zone: &str) -> Self {
        self.attr("zone", zone)
    }

    pub fn eligible(mut self, eligible: bool) -> Self {
        self.eligible = eligible;
        self
    }
}
