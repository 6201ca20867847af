//! Quotas in the state: each group's quota, each group's desired usage per location (kept as jobs change, so
//! admission reads the locations a write touches, never every job), and the admission of job writes.

use super::*;
use crate::command::Meta;
use crate::quota::{self, Demand, Exceeded, Limits, QuotaRecord, ReplicatedQuota};

impl CellState {
    /// A group's quota (a deleted one is none).
    pub fn quota(&self, group: &str) -> Option<&QuotaRecord> {
        self.quotas.get(group).filter(|q| !q.deleted)
    }

    pub fn quotas(&self) -> impl Iterator<Item = &QuotaRecord> {
        self.quotas.values().filter(|q| !q.deleted)
    }

    /// A quota as held here, deleted ones included (what other cells are sent).
    pub fn quota_record(&self, group: &str) -> Option<&QuotaRecord> {
        self.quotas.get(group)
    }

    /// Merges quotas another cell sent, each one register: the newer write wins. Returns how many changed here
    /// and how many incoming writes lost to a newer one made in another cell.
    pub(super) fn merge_quotas(&mut self, from: &str, incoming: &[ReplicatedQuota], meta: &Meta) -> (u32, u32) {
        let (mut changed, mut conflicts) = (0, 0);
        for q in incoming {
            let (take, lost) = quota::takes(self.quotas.get(&q.group), q);
            conflicts += u32::from(lost);
            if !take {
                continue;
            }
            let record = self.quotas.entry(q.group.clone()).or_insert_with(|| QuotaRecord {
                group: q.group.clone(),
                locations: BTreeMap::new(),
                version: 0,
                hlc: q.hlc.clone(),
                history: Vec::new(),
                deleted: false,
            });
            record.locations = q.locations.clone();
            record.hlc = q.hlc.clone();
            record.deleted = q.deleted;
            let what = if q.deleted {
                format!("deleted (from {from})")
            } else {
                format!("set: {} (from {from})", describe_limits(&q.locations))
            };
            record.change(crate::history::Change {
                version: 0,
                at_ms: meta.at_ms,
                who: format!("cell:{from}"),
                why: None,
                what,
                cell: q.hlc.cell.clone(),
            });
            changed += 1;
            self.event(Topic::Quota, "quota merged", &q.group, None, None, None, meta.at_ms);
            self.note_outbox(&quota::outbox_key(&q.group));
        }
        if changed > 0 {
            self.rebuild_capacity();
        }
        (changed, conflicts)
    }

    /// A group's desired usage in a location: the demand of its enabled jobs there.
    pub fn usage(&self, group: &str, location: &str) -> Demand {
        self.usage.get(group).and_then(|l| l.get(location)).copied().unwrap_or_default()
    }

    /// What a group's tasks on agents here take, as fenzo counts it (tasks count toward a group with a quota or a
    /// capacity group): O(1).
    pub fn running(&self, group: &str) -> Demand {
        let u = self.capacity().capacity_group_usage(Some(group));
        Demand {
            instances: u64::from(u.tasks),
            millicpus: u.resources.cpu_milli,
            memory_mib: u.resources.mem_mib,
            disk_gib: u.resources.disk_mib / 1024,
        }
    }

    /// Every group with usage.
    pub fn groups_with_usage(&self) -> impl Iterator<Item = &String> {
        self.usage.keys()
    }

    /// A group's desired usage in every location it asks for.
    pub fn usage_of(&self, group: &str) -> Option<&BTreeMap<String, Demand>> {
        self.usage.get(group)
    }

    /// The capacity group fenzo counts a task of `spec` toward: its job's capacity group, or its application when
    /// a quota names that; none otherwise (fenzo then orders it with the ungrouped).
    pub fn placement_group<'a>(&self, spec: &'a Spec) -> Option<&'a str> {
        spec.capacity_group.as_deref().or_else(|| {
            let app = spec.application_name.as_str();
            self.quota(app).is_some().then_some(app)
        })
    }

    /// What a write of job `id` to `spec` with `counts` would do to its group: the desired usage per location
    /// after it, or the limit it would exceed. Nothing changes (a dry run).
    pub fn check_admission(
        &self,
        id: &str,
        spec: &Spec,
        counts: &BTreeMap<String, u32>,
        enabled: bool,
    ) -> Result<BTreeMap<String, Demand>, Exceeded> {
        self.admit(id, spec, counts, enabled)?;
        let group = quota::group_of(spec);
        let after = quota::demand(spec, counts, enabled);
        let mine = self.demand_of.get(id).filter(|(g, _)| g == group).map(|(_, d)| d);
        Ok(counts
            .keys()
            .map(|l| {
                let mut u = self.usage(group, l);
                if let Some(d) = mine.and_then(|m| m.get(l)) {
                    u.sub(d);
                }
                if let Some(d) = after.get(l) {
                    u.add(d);
                }
                (l.clone(), u)
            })
            .collect())
    }

    /// Admits job `id` going to `spec` with `counts`, enabled or not, against its group's quota.
    pub(super) fn admit(
        &self,
        id: &str,
        spec: &Spec,
        counts: &BTreeMap<String, u32>,
        enabled: bool,
    ) -> Result<(), Exceeded> {
        let group = quota::group_of(spec);
        let after = quota::demand(spec, counts, enabled);
        let empty = BTreeMap::new();
        // What the job asks for now counts toward the group it is in now (an update may move it to another).
        let before = match self.demand_of.get(id) {
            Some((g, d)) if g == group => d,
            _ => &empty,
        };
        quota::admit(group, self.quota(group), |l| self.usage(group, l), before, &after)
    }

    /// Moves job `id`'s demand in the usage index to what it asks for now.
    pub(super) fn note_demand(&mut self, id: &str) {
        if let Some((group, old)) = self.demand_of.remove(id) {
            if let Some(by_location) = self.usage.get_mut(&group) {
                for (l, d) in &old {
                    if let Some(u) = by_location.get_mut(l) {
                        u.sub(d);
                    }
                }
                by_location.retain(|_, u| !u.is_zero());
                if by_location.is_empty() {
                    self.usage.remove(&group);
                }
            }
        }
        let Some(job) = self.jobs.get(id) else { return };
        let demand = quota::demand(&job.spec, &job.counts, job.state == JobState::Enabled);
        if demand.is_empty() {
            return;
        }
        let group = quota::group_of(&job.spec).to_string();
        let by_location = self.usage.entry(group.clone()).or_default();
        for (l, d) in &demand {
            by_location.entry(l.clone()).or_default().add(d);
        }
        self.demand_of.insert(id.to_string(), (group, demand));
    }

    pub(super) fn put_quota(
        &mut self,
        group: &str,
        locations: &BTreeMap<String, Limits>,
        if_version: Option<u64>,
        meta: &Meta,
    ) -> Response {
        let current = self.quota(group).map_or(0, |q| q.version);
        if let Some(expected) = if_version.filter(|e| *e != current) {
            return Response::Rejected(Rejection::QuotaVersionMismatch { group: group.into(), expected, current });
        }
        let hlc = self.stamp(meta);
        let record = self.quotas.entry(group.to_string()).or_insert_with(|| QuotaRecord {
            group: group.to_string(),
            locations: BTreeMap::new(),
            version: 0,
            hlc: hlc.clone(),
            history: Vec::new(),
            deleted: false,
        });
        let what = if record.version == 0 || record.deleted { "created" } else { "changed" };
        record.locations = locations.clone();
        record.hlc = hlc;
        record.deleted = false;
        record.change(change(meta, format!("{what}: {}", describe_limits(locations))));
        let version = record.version;
        self.note_outbox(&quota::outbox_key(group));
        // Which tasks fenzo counts toward which group may have changed.
        self.rebuild_capacity();
        self.event(Topic::Quota, &format!("quota {what}"), group, None, None, meta.why.as_deref(), meta.at_ms);
        Response::Quota { group: group.to_string(), version }
    }

    pub(super) fn delete_quota(&mut self, group: &str, if_version: Option<u64>, meta: &Meta) -> Response {
        let Some(current) = self.quota(group).map(|q| q.version) else {
            return Response::Rejected(Rejection::QuotaNotFound { group: group.to_string() });
        };
        if let Some(expected) = if_version.filter(|e| *e != current) {
            return Response::Rejected(Rejection::QuotaVersionMismatch { group: group.into(), expected, current });
        }
        // A tombstone, so the deletion reaches the other cells and wins over older writes there.
        let hlc = self.stamp(meta);
        if let Some(record) = self.quotas.get_mut(group) {
            record.deleted = true;
            record.locations.clear();
            record.hlc = hlc;
            record.change(change(meta, "deleted".into()));
        }
        self.note_outbox(&quota::outbox_key(group));
        self.rebuild_capacity();
        self.event(Topic::Quota, "quota deleted", group, None, None, meta.why.as_deref(), meta.at_ms);
        Response::Quota { group: group.to_string(), version: 0 }
    }

    /// Rebuilds the usage index from the jobs.
    pub(super) fn reindex_usage(&mut self) {
        self.usage.clear();
        self.demand_of.clear();
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.note_demand(&id);
        }
    }
}

/// A change `meta` makes, for a quota's history (its version is set as it is recorded).
fn change(meta: &Meta, what: String) -> crate::history::Change {
    crate::history::Change {
        version: 0,
        at_ms: meta.at_ms,
        who: meta.who.clone(),
        why: meta.why.clone(),
        what,
        cell: meta.cell.clone(),
    }
}

/// `dc1: instances 40, cpus 64; dc2: no limit`, for history.
fn describe_limits(locations: &BTreeMap<String, Limits>) -> String {
    if locations.is_empty() {
        return "no location limited".into();
    }
    locations
        .iter()
        .map(|(l, q)| {
            let mut parts = Vec::new();
            for r in quota::Resource::ALL {
                if let Some(v) = q.get(r) {
                    parts.push(format!("{} {v}", r.as_str()));
                }
            }
            if let Some(c) = q.guaranteed_cpus {
                parts.push(format!("guaranteed cpus {c}"));
            }
            if let Some(m) = q.guaranteed_memory_mib {
                parts.push(format!("guaranteed memoryMiB {m}"));
            }
            format!("{l}: {}", if parts.is_empty() { "no limit".into() } else { parts.join(", ") })
        })
        .collect::<Vec<_>>()
        .join("; ")
}
