//! The queue: the order in which one placement round considers tasks, and which tasks their quota holds back.
//!
//! Tiers are served strictly in order. Inside a tier, each capacity group is a bucket; the next task comes from
//! the bucket furthest below its guarantee, measured as dominant resource share (the larger of its cpu and memory
//! shares of the cluster) relative to the guaranteed share. Groups at or over their guarantee come after every
//! group under it, least-used first. A task that would take its group over a limit stays pending with reason
//! quota; its group's later tasks are still tried, since a smaller one may fit under the limit.

use std::collections::{BTreeMap, VecDeque};

use crate::request::TaskRequest;
use crate::resources::{ResourceKind, Resources};
use crate::snapshot::ClusterSnapshot;
use crate::state::GroupUsage;

/// Fair-share guarantee and limits of one capacity group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CapacityGroup {
    /// The capacity the group is entitled to; it is served first while below it.
    pub guarantee: Resources,
    pub max_cpu_milli: Option<u64>,
    pub max_mem_mib: Option<u64>,
    pub max_tasks: Option<u32>,
}

impl CapacityGroup {
    /// The first limit `usage + want` would break.
    fn exceeded(&self, usage: &GroupUsage, want: &Resources) -> Option<ResourceKind> {
        if self.max_tasks.is_some_and(|m| usage.tasks + 1 > m) {
            return Some(ResourceKind::Scalar("instances".into()));
        }
        if self.max_cpu_milli.is_some_and(|m| usage.resources.cpu_milli + want.cpu_milli > m) {
            return Some(ResourceKind::Cpu);
        }
        if self.max_mem_mib.is_some_and(|m| usage.resources.mem_mib + want.mem_mib > m) {
            return Some(ResourceKind::Memory);
        }
        None
    }
}

/// The queue's verdict: request indices per tier in the order to try them, and those held by quota.
#[derive(Debug, Default)]
pub(crate) struct Ordered {
    pub(crate) tiers: Vec<Vec<usize>>,
    pub(crate) over_quota: Vec<(usize, String, ResourceKind)>,
}

fn share(r: &Resources, total: &Resources) -> f64 {
    let part = |a: u64, t: u64| if t == 0 { 0.0 } else { a as f64 / t as f64 };
    part(r.cpu_milli, total.cpu_milli).max(part(r.mem_mib, total.mem_mib))
}

pub(crate) fn order(
    snap: &ClusterSnapshot,
    requests: &[TaskRequest],
    groups: &BTreeMap<String, CapacityGroup>,
) -> Ordered {
    let mut cluster = Resources::default();
    for (info, usage) in snap.agents.iter().zip(&snap.state.usage) {
        if usage.eligible {
            cluster.add(&info.total);
        }
    }
    let mut usage: BTreeMap<&str, GroupUsage> =
        snap.state.capacity.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();

    let mut tiers: BTreeMap<u8, BTreeMap<&str, VecDeque<usize>>> = BTreeMap::new();
    for (i, r) in requests.iter().enumerate() {
        let group = r.capacity_group.as_deref().unwrap_or("");
        tiers.entry(r.tier).or_default().entry(group).or_default().push_back(i);
    }

    let none = CapacityGroup::default();
    let mut out = Ordered::default();
    for (_, mut buckets) in tiers {
        let mut order = Vec::new();
        while !buckets.is_empty() {
            let pick = buckets
                .keys()
                .copied()
                .min_by(|a, b| {
                    let key = |g: &str| {
                        let used = usage.get(g).map(|u| share(&u.resources, &cluster)).unwrap_or(0.0);
                        let guaranteed = share(&groups.get(g).unwrap_or(&none).guarantee, &cluster);
                        if used < guaranteed {
                            (0u8, used / guaranteed)
                        } else {
                            (1u8, used)
                        }
                    };
                    let (ka, kb) = (key(a), key(b));
                    ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(b))
                })
                .expect("the loop runs while buckets remain");
            let bucket = buckets.get_mut(pick).expect("picked from the keys");
            let i = bucket.pop_front().expect("empty buckets are removed");
            if bucket.is_empty() {
                buckets.remove(pick);
            }
            let used = usage.entry(pick).or_default();
            let want = &requests[i].resources;
            match groups.get(pick).and_then(|g| g.exceeded(used, want)) {
                Some(kind) => out.over_quota.push((i, pick.to_string(), kind)),
                None => {
                    used.resources.add(want);
                    used.tasks += 1;
                    order.push(i);
                }
            }
        }
        out.tiers.push(order);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Agent;

    fn cluster() -> ClusterSnapshot {
        ClusterSnapshot::with_agents((0..4).map(|i| Agent::new(format!("a{i}")).cpus(10.0).mem_mib(10_000)))
            .expect("distinct ids")
    }

    fn check(requests: &[TaskRequest], groups: &[(&str, CapacityGroup)], tiers: &[&[&str]], held: &[&str]) {
        let groups: BTreeMap<String, CapacityGroup> = groups.iter().map(|(n, g)| (n.to_string(), g.clone())).collect();
        let got = order(&cluster(), requests, &groups);
        let ids = |v: &Vec<usize>| v.iter().map(|&i| requests[i].id.as_str()).collect::<Vec<_>>();
        assert_eq!(got.tiers.iter().map(ids).collect::<Vec<_>>(), tiers);
        let got_held: Vec<&str> = got.over_quota.iter().map(|(i, _, _)| requests[*i].id.as_str()).collect();
        assert_eq!(got_held, held);
    }

    fn task(id: &str, group: &str, tier: u8, cpus: f64) -> TaskRequest {
        TaskRequest::new(id, "j").capacity_group(group).tier(tier).cpus(cpus).mem_mib(100)
    }

    #[test]
    fn tiers_are_strict_and_groups_interleave_by_share() {
        let reqs = [
            task("b1", "b", 1, 1.0),
            task("a1", "a", 0, 4.0),
            task("a2", "a", 0, 4.0),
            task("c1", "c", 0, 1.0),
            task("c2", "c", 0, 1.0),
        ];
        // a and c start level; a1 takes a to 10% share, so c is served twice before a again.
        check(&reqs, &[], &[&["a1", "c1", "c2", "a2"], &["b1"]], &[]);
    }

    #[test]
    fn guarantees_serve_groups_below_them_first() {
        let reqs = [task("a1", "a", 0, 2.0), task("a2", "a", 0, 2.0), task("g1", "g", 0, 2.0), task("g2", "g", 0, 2.0)];
        let g = CapacityGroup { guarantee: Resources { cpu_milli: 8_000, ..Default::default() }, ..Default::default() };
        check(&reqs, &[("g", g)], &[&["g1", "g2", "a1", "a2"]], &[]);
    }

    #[test]
    fn limits_hold_tasks_with_quota_and_let_smaller_ones_through() {
        let reqs = [task("a1", "a", 0, 3.0), task("a2", "a", 0, 3.0), task("a3", "a", 0, 1.0)];
        let g = CapacityGroup { max_cpu_milli: Some(4_000), ..Default::default() };
        check(&reqs, &[("a", g)], &[&["a1", "a3"]], &["a2"]);
        let g = CapacityGroup { max_tasks: Some(1), ..Default::default() };
        check(&reqs, &[("a", g)], &[&["a1"]], &["a2", "a3"]);
    }
}
