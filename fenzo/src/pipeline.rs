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

use std::collections::{BTreeMap, HashMap};

use crate::autoscale::{self, AutoscaleConfig, GroupHint};
use crate::explain::{self, Explanation};
use crate::filter::{self, CompiledTask};
use crate::index::{Candidate, CapacityIndex, Limits};
use crate::pack;
use crate::queue::{self, CapacityGroup};
use crate::request::TaskRequest;
use crate::resources::ResourceKind;
use crate::score::{self, Fit, Fitness};
use crate::snapshot::{AgentIdx, ClusterSnapshot, State};

/// Default for `PlacementConfig::good_enough`: only a perfect score stops a search early.
pub const DEFAULT_GOOD_ENOUGH: f64 = 1.0;

/// Which placement semantics to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Fenzo's: one task at a time in queue order, each on its best-scoring agent, score
    /// `0.50 * preferences + 0.35 * fitness`, ties to the smallest hostname.
    Compat,
    /// Ours: batch packing where it helps, then best-first search; ties broken by a seeded agent order.
    Best,
}

/// How to place.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementConfig {
    pub mode: Mode,
    pub fitness: Fitness,
    /// A search stops at the first agent scoring at least this (0.0..=1.0).
    pub good_enough: f64,
    /// A search stops after scoring this many feasible agents; 0 means no limit.
    pub max_candidates: usize,
    /// Orders equal-scoring agents in `Mode::Best`.
    pub seed: u64,
    /// Guarantees (fair-share weights) and limits (quotas) per capacity group.
    pub capacity_groups: BTreeMap<String, CapacityGroup>,
    /// When set, the placement carries per-instance-group scaling hints.
    pub autoscale: Option<AutoscaleConfig>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            mode: Mode::Best,
            fitness: Fitness::BinPackCpuMemory,
            good_enough: DEFAULT_GOOD_ENOUGH,
            max_candidates: 0,
            seed: 0,
            capacity_groups: BTreeMap::new(),
            autoscale: None,
        }
    }
}

/// A configuration rule that does not hold.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("good_enough must be within 0.0..=1.0, got {0}")]
    GoodEnough(f64),
    #[error("fitness weight must be finite and not negative, got {0}")]
    FitnessWeight(f64),
    #[error("weighted fitness needs at least one positive weight")]
    NoFitnessWeight,
}

impl PlacementConfig {
    /// Fenzo-compatible placement with its cpu+memory bin packer.
    pub fn compat() -> PlacementConfig {
        PlacementConfig { mode: Mode::Compat, ..PlacementConfig::default() }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.good_enough) {
            return Err(ConfigError::GoodEnough(self.good_enough));
        }
        validate_fitness(&self.fitness)
    }
}

fn validate_fitness(f: &Fitness) -> Result<(), ConfigError> {
    if let Fitness::Weighted(parts) = f {
        for (p, w) in parts {
            if !w.is_finite() || *w < 0.0 {
                return Err(ConfigError::FitnessWeight(*w));
            }
            validate_fitness(p)?;
        }
        if !parts.iter().any(|(_, w)| *w > 0.0) {
            return Err(ConfigError::NoFitnessWeight);
        }
    }
    Ok(())
}

/// One task put on one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: String,
    pub agent_id: String,
    /// The concrete ports allocated from the agent's ranges, one per requested dynamic port.
    pub ports: Vec<u16>,
}

/// Why a task stays pending.
#[derive(Clone, Debug, PartialEq)]
pub enum Pending {
    /// Its capacity group's limit on `resource` would be exceeded.
    Quota { group: String, resource: ResourceKind },
    /// No agent could take it; the explanation counts why.
    NoFit(Explanation),
}

/// A task that was not placed.
#[derive(Clone, Debug, PartialEq)]
pub struct Unplaced {
    pub task_id: String,
    pub reason: Pending,
}

/// The result of one placement round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// In the order they were made: `ClusterSnapshot::apply` replays them in this order, so each is re-validated
    /// against the state the engine saw when it made it.
    pub assignments: Vec<Assignment>,
    /// In request order.
    pub unplaced: Vec<Unplaced>,
    pub autoscale: Vec<GroupHint>,
    pub stats: PlacementStats,
}

/// What a placement round did, for the caller's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementStats {
    /// Best-first searches of the capacity index (one per task placed that way).
    pub searches: u64,
    /// Index entries those searches looked at.
    pub agents_examined: u64,
    /// Feasible agents they scored.
    pub agents_scored: u64,
    /// Runs of the batch packer (more than one per tier when the tier does not fit).
    pub pack_runs: u64,
    /// Tasks the batch packer placed.
    pub packed: u64,
}

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
    agent: AgentIdx,
    ports: Vec<u16>,
    seq: u64,
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
/// agents share new work across placement rounds instead of the first hostname taking all of it.
fn ranks(snap: &ClusterSnapshot, config: &PlacementConfig) -> Vec<u32> {
    let mut order: Vec<AgentIdx> = (0..snap.agents.len() as AgentIdx).collect();
    match config.mode {
        Mode::Compat => order.sort_by(|a, b| {
            let (a, b) = (&snap.agents[*a as usize].spec, &snap.agents[*b as usize].spec);
            (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id))
        }),
        Mode::Best => order.sort_by_key(|i| {
            let id = &snap.agents[*i as usize].spec.id;
            (mix(config.seed ^ fnv1a(id.as_bytes())), *i)
        }),
    }
    let mut rank = vec![0u32; order.len()];
    for (r, idx) in order.into_iter().enumerate() {
        rank[idx as usize] = r as u32;
    }
    rank
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

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
    let mut explainer = explain::Explainer::new(&work);
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
        out.autoscale = autoscale::hints(&work, &no_fit, ac, config);
    }
    out
}
