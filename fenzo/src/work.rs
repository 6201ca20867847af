//! The mutable copy of the cluster one placement round works on: the state, the capacity index over it, the
//! assignments made so far, and the best-first search the stages share. Tie-break ranks are fixed here once
//! per round.

use crate::config::{Mode, PlacementConfig};
use crate::filter::{self, CompiledTask};
use crate::index::{Candidate, CapacityIndex, Limits};
use crate::placement::PlacementStats;
use crate::request::TaskRequest;
use crate::score::{self, Fit};
use crate::snapshot::ClusterSnapshot;
use crate::state::{AgentIdx, State};

/// The mutable copy of the cluster one placement works on.
#[derive(Clone)]
pub(crate) struct Work<'s> {
    pub(crate) snap: &'s ClusterSnapshot,
    pub(crate) state: State,
    pub(crate) index: CapacityIndex,
    /// Assignments made so far; numbers them in the order they were made.
    made: u64,
    pub(crate) stats: PlacementStats,
}

/// One assignment made during a round: the agent, the ports, and its position in the round.
#[derive(Clone, Debug)]
pub(crate) struct Made {
    pub(crate) agent: AgentIdx,
    pub(crate) ports: Vec<u16>,
    pub(crate) seq: u64,
}

/// Per request, the assignment made for it, if any.
pub(crate) type Placed = Vec<Option<Made>>;

impl<'s> Work<'s> {
    pub(crate) fn new(snap: &'s ClusterSnapshot, config: &PlacementConfig) -> Work<'s> {
        let rank = ranks(snap, config);
        let index = CapacityIndex::new(&snap.agents, &snap.state, rank);
        Work { snap, state: snap.state.clone(), index, made: 0, stats: PlacementStats::default() }
    }

    pub(crate) fn assign(&mut self, task: &TaskRequest, idx: AgentIdx) -> Made {
        let ports = self.state.record(&self.snap.agents, idx, task, None);
        self.index.update(&self.snap.agents, &self.state, idx);
        self.made += 1;
        Made { agent: idx, ports, seq: self.made }
    }

    pub(crate) fn check(&self, idx: AgentIdx, task: &CompiledTask<'_>) -> bool {
        filter::check(&self.snap.agents, &self.state, idx, task).is_ok()
    }

    /// The best feasible agent for one task under `config`.
    pub(crate) fn search(&mut self, task: &CompiledTask<'_>, config: &PlacementConfig) -> Option<Candidate> {
        let Work { snap, state, index, stats, .. } = self;
        let state: &State = state;
        let want = &task.request.resources;
        let pref_weight: f64 = task.preferences.iter().map(|(_, w)| w.max(0.0)).sum();
        let combine = |fitness: f64, prefs: f64| match config.mode {
            Mode::Compat => score::compat_score(fitness, prefs),
            Mode::Best => score::best_score(fitness, prefs, pref_weight),
        };
        let agents = &snap.agents;
        let bound = |idx: AgentIdx, free_cpu: u64, free_mem: u64| {
            let total = &agents[idx as usize].total;
            let fit = Fit {
                total,
                used_cpu: total.cpu_milli - free_cpu,
                used_mem: total.mem_mib - free_mem,
                used_net: 0,
                want,
            };
            let (b, exact) = config.fitness.bound(&fit);
            (combine(b, 1.0), exact && pref_weight == 0.0)
        };
        let eval = |idx: AgentIdx| {
            filter::check(agents, state, idx, task).ok()?;
            let used = &state.usage[idx as usize].used;
            let fit = Fit {
                total: &agents[idx as usize].total,
                used_cpu: used.cpu_milli,
                used_mem: used.mem_mib,
                used_net: used.net_mbps,
                want,
            };
            let prefs = filter::preference_score(agents, state, idx, task);
            Some(combine(config.fitness.score(&fit), prefs))
        };
        let limits = Limits { good_enough: config.good_enough, max_candidates: config.max_candidates };
        index.search(want, config.fitness.direction(), limits, bound, eval, stats)
    }
}

/// Tie-break ranks: hostname order in compat mode (Fenzo's rule), a seeded shuffle in best mode so that equal
/// agents share new work across placement rounds instead of the first hostname taking all of it. Best mode mixes
/// the seed into each agent's id hash, made when the agent was added, and sorts plain integers: a round with ten
/// thousand agents spends well under a millisecond here (hashing each id in every comparison took milliseconds).
fn ranks(snap: &ClusterSnapshot, config: &PlacementConfig) -> Vec<u32> {
    let order: Vec<AgentIdx> = match config.mode {
        Mode::Compat => {
            let mut order: Vec<AgentIdx> = (0..snap.agents.len() as AgentIdx).collect();
            order.sort_by(|a, b| {
                let (a, b) = (&snap.agents[*a as usize].spec, &snap.agents[*b as usize].spec);
                (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id))
            });
            order
        }
        Mode::Best => {
            let mut keyed: Vec<(u64, AgentIdx)> =
                snap.agents.iter().enumerate().map(|(i, a)| (mix(config.seed ^ a.id_hash), i as AgentIdx)).collect();
            keyed.sort_unstable();
            keyed.into_iter().map(|(_, i)| i).collect()
        }
    };
    let mut rank = vec![0u32; order.len()];
    for (r, idx) in order.into_iter().enumerate() {
        rank[idx as usize] = r as u32;
    }
    rank
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
