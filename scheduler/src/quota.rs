//! Location quotas, the pure part: the stored quota record, a job's demand per location, and admission.
//!
//! A job's demand in a location is its count there times its resources, while it is enabled (a disabled or killed
//! job demands nothing). A group's usage is the sum of its jobs' demands, kept per location as jobs change, so
//! admission looks at the locations a write touches and nothing else: O(locations), never O(jobs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use titan_api::quota::{Guaranteed, LocationQuota, QuotaSpec, Usage};

use crate::history::Change;
use crate::hlc::Hlc;
use crate::spec::Spec;

/// A location's limits as stored (our own type; the wire's `LocationQuota` converts at the edge).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub instances: Option<u64>,
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
    pub guaranteed_cpus: Option<f64>,
    pub guaranteed_memory_mib: Option<u64>,
}

/// A group's quota: its limits per location (a location left out has none), versioned, with its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaRecord {
    pub group: String,
    pub locations: BTreeMap<String, Limits>,
    /// Counts changes in this cell, for `If-Match`.
    pub version: u64,
    /// The whole quota is one replicated register.
    pub hlc: Hlc,
    pub history: Vec<Change>,
    /// Deleted: a tombstone, kept so the deletion reaches every cell and wins over older writes.
    #[serde(default)]
    pub deleted: bool,
}

/// The key of a quota in the federation's outbox (job ids are UUIDs, never with a '/').
pub fn outbox_key(group: &str) -> String {
    format!("quota/{group}")
}

/// The group an outbox key names, if it is a quota's.
pub fn group_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("quota/")
}

/// A quota as one cell sends it to another: the whole quota is one register, last writer wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicatedQuota {
    pub group: String,
    pub locations: BTreeMap<String, Limits>,
    pub hlc: Hlc,
    pub deleted: bool,
}

impl QuotaRecord {
    pub fn replicated(&self) -> ReplicatedQuota {
        ReplicatedQuota {
            group: self.group.clone(),
            locations: self.locations.clone(),
            hlc: self.hlc.clone(),
            deleted: self.deleted,
        }
    }
}

/// What merging an incoming quota into the one held (if any) does: take it (the newer write), or keep ours, and
/// whether ours won over another cell's write (a conflict).
pub fn takes(ours: Option<&QuotaRecord>, incoming: &ReplicatedQuota) -> (bool, bool) {
    match ours {
        None => (true, false),
        Some(q) if incoming.hlc > q.hlc => (true, false),
        Some(q) => (false, incoming.hlc < q.hlc && incoming.hlc.cell != q.hlc.cell),
    }
}

/// The most history entries a quota keeps.
pub const MAX_HISTORY: usize = 100;

impl QuotaRecord {
    /// Records a change: its version goes up by one, and `change` (of that version) joins the history.
    pub fn change(&mut self, mut change: Change) {
        self.version += 1;
        change.version = self.version;
        self.history.push(change);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }
}

/// One resource of a quota, as errors and metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resource {
    Instances,
    Cpus,
    MemoryMib,
    DiskGib,
}

impl Resource {
    pub const ALL: [Resource; 4] = [Resource::Instances, Resource::Cpus, Resource::MemoryMib, Resource::DiskGib];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Instances => "instances",
            Resource::Cpus => "cpus",
            Resource::MemoryMib => "memoryMiB",
            Resource::DiskGib => "diskGiB",
        }
    }
}

/// What a group (or one job) asks for in one location. Cpus are kept in millicores, so sums are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    pub instances: u64,
    pub millicpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Demand {
    pub fn add(&mut self, d: &Demand) {
        self.instances += d.instances;
        self.millicpus += d.millicpus;
        self.memory_mib += d.memory_mib;
        self.disk_gib += d.disk_gib;
    }

    pub fn sub(&mut self, d: &Demand) {
        self.instances = self.instances.saturating_sub(d.instances);
        self.millicpus = self.millicpus.saturating_sub(d.millicpus);
        self.memory_mib = self.memory_mib.saturating_sub(d.memory_mib);
        self.disk_gib = self.disk_gib.saturating_sub(d.disk_gib);
    }

    /// One resource, in the unit the quota states it (cpus as cpus).
    pub fn get(&self, r: Resource) -> f64 {
        match r {
            Resource::Instances => self.instances as f64,
            Resource::Cpus => self.millicpus as f64 / 1000.0,
            Resource::MemoryMib => self.memory_mib as f64,
            Resource::DiskGib => self.disk_gib as f64,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Demand::default()
    }

    pub fn usage(&self) -> Usage {
        Usage {
            instances: self.instances,
            cpus: self.millicpus as f64 / 1000.0,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib as f64,
        }
    }

    /// `n` instances of `spec`.
    pub fn of(spec: &Spec, n: u32) -> Demand {
        let n = u64::from(n);
        Demand {
            instances: n,
            millicpus: n * (spec.cpus * 1000.0).round() as u64,
            memory_mib: n * spec.memory,
            disk_gib: n * spec.disk,
        }
    }
}

impl Limits {
    /// The limit on `r`, if there is one.
    pub fn get(&self, r: Resource) -> Option<f64> {
        match r {
            Resource::Instances => self.instances.map(|v| v as f64),
            Resource::Cpus => self.cpus,
            Resource::MemoryMib => self.memory_mib.map(|v| v as f64),
            Resource::DiskGib => self.disk_gib.map(|v| v as f64),
        }
    }
}

/// The group a job counts toward: its capacity group, else its application.
pub fn group_of(spec: &Spec) -> &str {
    spec.capacity_group.as_deref().unwrap_or(&spec.application_name)
}

/// A job's demand per location: its counts times its resources while it is enabled; nothing otherwise.
pub fn demand(spec: &Spec, counts: &BTreeMap<String, u32>, enabled: bool) -> BTreeMap<String, Demand> {
    if !enabled {
        return BTreeMap::new();
    }
    counts.iter().filter(|(_, n)| **n > 0).map(|(l, n)| (l.clone(), Demand::of(spec, *n))).collect()
}

/// Why a write is not admitted: the first limit it would exceed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exceeded {
    pub group: String,
    pub location: String,
    pub resource: Resource,
    pub limit: f64,
    /// The group's desired usage before the write.
    pub used: f64,
    /// What the write adds.
    pub asked: f64,
}

// Figures are sums of whole units and millicores, never NaN.
impl Eq for Exceeded {}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group {} in {}: {} would be {}, over the limit {} (used {}, asked {})",
            self.group,
            self.location,
            self.resource.as_str(),
            self.used + self.asked,
            self.limit,
            self.used,
            self.asked
        )
    }
}

/// Admits a job's change from demand `before` to `after` for `group`, whose usage per location (this job's
/// `before` included) is `used`: every resource the change raises in a location must stay within that location's
/// limit. What a change lowers, or leaves, is always admitted, so a quota lowered below usage stops only growth.
pub fn admit(
    group: &str,
    quota: Option<&QuotaRecord>,
    used: impl Fn(&str) -> Demand,
    before: &BTreeMap<String, Demand>,
    after: &BTreeMap<String, Demand>,
) -> Result<(), Exceeded> {
    let Some(quota) = quota else { return Ok(()) };
    for (location, new) in after {
        let Some(limits) = quota.locations.get(location) else { continue };
        let old = before.get(location).copied().unwrap_or_default();
        let now = used(location);
        for r in Resource::ALL {
            let (was, will) = (old.get(r), new.get(r));
            let Some(limit) = limits.get(r).filter(|_| will > was) else { continue };
            let others = now.get(r) - was;
            // Cpus are millicores, exact; a tiny tolerance for the float of the limit.
            if others + will > limit + 1e-9 {
                return Err(Exceeded {
                    group: group.to_string(),
                    location: location.clone(),
                    resource: r,
                    limit,
                    used: now.get(r),
                    asked: will - was,
                });
            }
        }
    }
    Ok(())
}

impl From<&LocationQuota> for Limits {
    fn from(q: &LocationQuota) -> Limits {
        let g = q.guaranteed.as_ref();
        Limits {
            instances: q.instances,
            cpus: q.cpus,
            memory_mib: q.memory_mib,
            disk_gib: q.disk_gib,
            guaranteed_cpus: g.and_then(|g| g.cpus),
            guaranteed_memory_mib: g.and_then(|g| g.memory_mib),
        }
    }
}

impl From<&Limits> for LocationQuota {
    fn from(l: &Limits) -> LocationQuota {
        let guaranteed = (l.guaranteed_cpus.is_some() || l.guaranteed_memory_mib.is_some())
            .then_some(Guaranteed { cpus: l.guaranteed_cpus, memory_mib: l.guaranteed_memory_mib });
        LocationQuota {
            instances: l.instances,
            cpus: l.cpus,
            memory_mib: l.memory_mib,
            disk_gib: l.disk_gib,
            guaranteed,
        }
    }
}

/// A quota body as stored.
pub fn limits_of(spec: &QuotaSpec) -> BTreeMap<String, Limits> {
    spec.locations.iter().map(|(l, q)| (l.clone(), Limits::from(q))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_api::job::{BodyFormat, JobSpec};

    fn spec(cpus: f64, memory: u64) -> Spec {
        let body = format!(
            r#"{{"name":"web","applicationName":"shop","location":"dc1:1","cpus":{cpus},"memory":{memory},"disk":2,"image":"busybox"}}"#
        );
        Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid"))
    }

    fn quota(limits: Limits) -> QuotaRecord {
        QuotaRecord {
            group: "shop".into(),
            locations: BTreeMap::from([("dc1".into(), limits)]),
            version: 1,
            hlc: Hlc::default(),
            history: Vec::new(),
            deleted: false,
        }
    }

    fn at(n: u32, s: &Spec) -> BTreeMap<String, Demand> {
        demand(s, &BTreeMap::from([("dc1".to_string(), n)]), true)
    }

    #[test]
    fn exactly_at_each_limit_passes_and_one_over_fails_naming_the_resource() {
        let s = spec(0.5, 256);
        let limits = [
            (Limits { instances: Some(4), ..Default::default() }, Resource::Instances),
            (Limits { cpus: Some(2.0), ..Default::default() }, Resource::Cpus),
            (Limits { memory_mib: Some(1024), ..Default::default() }, Resource::MemoryMib),
            (Limits { disk_gib: Some(8), ..Default::default() }, Resource::DiskGib),
        ];
        for (limits, resource) in limits {
            let q = quota(limits);
            let used = |_: &str| Demand::default();
            assert_eq!(
                admit("shop", Some(&q), used, &BTreeMap::new(), &at(4, &s)),
                Ok(()),
                "{resource:?} at the limit"
            );
            let e = admit("shop", Some(&q), used, &BTreeMap::new(), &at(5, &s)).expect_err("one over");
            assert_eq!(e.resource, resource);
            assert_eq!((e.location.as_str(), e.used), ("dc1", 0.0));
        }
    }

    #[test]
    fn usage_of_other_jobs_counts_lowering_is_always_admitted_and_unlimited_locations_take_anything() {
        let s = spec(1.0, 100);
        let q = quota(Limits { instances: Some(10), ..Default::default() });
        // 8 in use, this job's 2 of them: it may go to 4, not 5.
        let used = |l: &str| if l == "dc1" { Demand { instances: 8, ..Default::default() } } else { Demand::default() };
        assert!(admit("shop", Some(&q), used, &at(2, &s), &at(4, &s)).is_ok());
        let e = admit("shop", Some(&q), used, &at(2, &s), &at(5, &s)).expect_err("over");
        assert_eq!((e.used, e.asked, e.limit), (8.0, 3.0, 10.0));
        // A quota below usage: scaling down, or not changing, is admitted.
        let tight = quota(Limits { instances: Some(1), ..Default::default() });
        assert!(admit("shop", Some(&tight), used, &at(2, &s), &at(1, &s)).is_ok());
        assert!(admit("shop", Some(&tight), used, &at(2, &s), &at(2, &s)).is_ok());
        let elsewhere = demand(&s, &BTreeMap::from([("dc9".to_string(), 1000)]), true);
        assert!(admit("shop", Some(&tight), used, &BTreeMap::new(), &elsewhere).is_ok());
        assert!(admit("shop", None, used, &BTreeMap::new(), &at(1000, &s)).is_ok());
        assert!(demand(&s, &BTreeMap::from([("dc1".to_string(), 3)]), false).is_empty(), "disabled asks nothing");
    }
}
