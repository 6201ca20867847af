//! `place`: the one entry point, and the fixed pipeline every task goes through.
//!
//! 1. The queue orders the requests: tiers strictly, fair share inside a tier, quotas holding tasks back.
//! 2. Each task's hard filters run cheapest first (eligibility, resources, constraints) on agents the capacity
//!    index offers best-first; scorers rank the feasible ones; the search stops when no unvisited agent can do
//!    better, or a score reaches `good_enough`, or `max_candidates` feasible agents were scored.
//! 3. In `Mode::Best`, a tier whose tasks only pack goes through the batch packer first (`pack`), which fills
//!    agents keeping their free cpu and memory in balance; what it leaves goes through step 2.
//! 4. Every task left unplaced gets an explanation; autoscaling hints are derived when asked for.
//!
//! No clock, no IO, no randomness but the seed: the same inputs give the same placement.

use std::collections::HashMap;

use crate::autoscale;
use crate::config::{Mode, PlacementConfig};
use crate::explain;
use crate::filter::CompiledTask;
use crate::pack;
use crate::placement::{Assignment, Pending, Placement, Unplaced};
use crate::queue;
use crate::request::TaskRequest;
use crate::snapshot::ClusterSnapshot;
use crate::work::{Placed, Work};

/// Places `requests` on `snapshot` under `config`. The snapshot is not changed: apply the result with
/// `ClusterSnapshot::apply` (which re-validates it) once it is committed.
pub fn place(snapshot: &ClusterSnapshot, requests: &[TaskRequest], config: &PlacementConfig) -> Placement {
    let compiled: Vec<CompiledTask<'_>> = requests.iter().map(|r| CompiledTask::new(r, &snapshot.interner)).collect();
    let ordered = queue::order(snapshot, requests, &config.capacity_groups);
    let mut work = Work::new(snapshot, config);
    let mut placed: Placed = vec![None; requests.len()];

    for tier in &ordered.tiers {
        match config.mode {
            Mode::Compat => {
                for &i in tier {
                    if let Some(c) = work.search(&compiled[i], config) {
                        placed[i] = Some(work.assign(&requests[i], c.idx));
                    }
                }
            }
            Mode::Best => pack::place_tier(&mut work, &compiled, tier, config, &mut placed),
        }
    }

    let mut quota: HashMap<usize, Pending> =
        ordered.over_quota.into_iter().map(|(i, group, resource)| (i, Pending::Quota { group, resource })).collect();
    let mut explainer = explain::Explainer::new(&snapshot.agents, &work.state);
    let mut out = Placement::default();
    let mut no_fit: Vec<&TaskRequest> = Vec::new();
    let mut made = Vec::new();
    for (i, slot) in placed.into_iter().enumerate() {
        match slot {
            Some(m) => made.push((i, m)),
            None => {
                let reason = quota.remove(&i).unwrap_or_else(|| {
                    no_fit.push(&requests[i]);
                    Pending::NoFit(explainer.explain(&compiled[i]))
                });
                out.unplaced.push(Unplaced { task_id: requests[i].id.clone(), reason });
            }
        }
    }
    made.sort_unstable_by_key(|(_, m)| m.seq);
    out.assignments = made
        .into_iter()
        .map(|(i, m)| Assignment {
            task_id: requests[i].id.clone(),
            agent_id: snapshot.agents[m.agent as usize].spec.id.clone(),
            ports: m.ports,
        })
        .collect();
    out.stats = work.stats.clone();
    if let Some(ac) = &config.autoscale {
        out.autoscale = autoscale::hints(&work, &no_fit, ac, config, place);
    }
    out
}
