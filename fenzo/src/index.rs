//! The capacity index: eligible agents bucketed by (total cpu, total memory, free cpu) and, inside a bucket,
//! ordered by free memory. It lets a search visit agents best-first for the bin packers and the spreader and stop
//! as soon as no unvisited agent can beat the best one found, so placing a task costs about the number of
//! buckets, not the number of agents.

use std::collections::{BTreeMap, BTreeSet};

use crate::placement::PlacementStats;
use crate::resources::Resources;
use crate::score::Direction;
use crate::state::{AgentIdx, AgentInfo, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BucketKey {
    total_cpu: u64,
    total_mem: u64,
    free_cpu: u64,
}

/// (free memory, tie-break rank, agent).
type Entry = (u64, u32, AgentIdx);

#[derive(Clone, Debug, Default)]
pub(crate) struct CapacityIndex {
    buckets: BTreeMap<BucketKey, BTreeSet<Entry>>,
    at: Vec<Option<(BucketKey, Entry)>>,
    /// Tie-break rank per agent: lower wins among equal scores.
    rank: Vec<u32>,
}

/// The best agent a search found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) idx: AgentIdx,
    pub(crate) score: f64,
    pub(crate) rank: u32,
}

impl Candidate {
    fn beats(&self, other: &Option<Candidate>) -> bool {
        match other {
            None => true,
            Some(o) => self.score > o.score || (self.score == o.score && self.rank < o.rank),
        }
    }
}

/// How far a search may go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Stop once a candidate scores at least this.
    pub(crate) good_enough: f64,
    /// Stop after scoring this many feasible agents (0: no limit).
    pub(crate) max_candidates: usize,
}

impl CapacityIndex {
    pub(crate) fn new(agents: &[AgentInfo], state: &State, rank: Vec<u32>) -> CapacityIndex {
        let mut index = CapacityIndex { buckets: BTreeMap::new(), at: vec![None; agents.len()], rank };
        for idx in 0..agents.len() as AgentIdx {
            index.update(agents, state, idx);
        }
        index
    }

    pub(crate) fn rank(&self, idx: AgentIdx) -> u32 {
        self.rank[idx as usize]
    }

    /// Moves agent `idx` to the bucket its current usage belongs in (or out, when it takes no new work).
    pub(crate) fn update(&mut self, agents: &[AgentInfo], state: &State, idx: AgentIdx) {
        if let Some((key, entry)) = self.at[idx as usize].take() {
            if let Some(set) = self.buckets.get_mut(&key) {
                set.remove(&entry);
                if set.is_empty() {
                    self.buckets.remove(&key);
                }
            }
        }
        let usage = &state.usage[idx as usize];
        if !usage.eligible || usage.exclusive {
            return;
        }
        let total = &agents[idx as usize].total;
        let key = BucketKey {
            total_cpu: total.cpu_milli,
            total_mem: total.mem_mib,
            free_cpu: total.cpu_milli.saturating_sub(usage.used.cpu_milli),
        };
        let entry = (total.mem_mib.saturating_sub(usage.used.mem_mib), self.rank[idx as usize], idx);
        self.buckets.entry(key).or_default().insert(entry);
        self.at[idx as usize] = Some((key, entry));
    }

    /// Finds the best feasible agent for a task wanting `want`.
    ///
    /// `bound(agent, free_cpu, free_mem)` gives an upper bound on the score of any agent with that agent's totals
    /// and the given free cpu and memory, and whether it is exact; `eval(agent)` gives the agent's real score, or
    /// `None` when a hard filter rejects it. Agents are visited best bound first; equal scores go to the lower rank.
    pub(crate) fn search(
        &self,
        want: &Resources,
        direction: Direction,
        limits: Limits,
        bound: impl Fn(AgentIdx, u64, u64) -> (f64, bool),
        mut eval: impl FnMut(AgentIdx) -> Option<f64>,
        stats: &mut PlacementStats,
    ) -> Option<Candidate> {
        stats.searches += 1;
        let floor: Entry = (want.mem_mib, 0, 0);
        let mut order: Vec<(f64, &BTreeSet<Entry>, u64)> = Vec::new();
        for (key, set) in &self.buckets {
            if key.free_cpu < want.cpu_milli || key.total_mem < want.mem_mib {
                continue;
            }
            let head = match direction {
                Direction::Pack => set.range(floor..).next(),
                Direction::Spread | Direction::None => set.range(floor..).next_back(),
            };
            let Some(&(fm, _, idx)) = head else { continue };
            let ub = match direction {
                Direction::None => f64::INFINITY,
                _ => bound(idx, key.free_cpu, fm).0,
            };
            order.push((ub, set, key.free_cpu));
        }
        order.sort_by(|a, b| b.0.total_cmp(&a.0));

        let mut best: Option<Candidate> = None;
        let mut scored = 0usize;
        for (ub, set, free_cpu) in order {
            if best.is_some_and(|b| ub < b.score) {
                break;
            }
            // Agents with equal free memory form a run with one bound; a run is walked in rank order, so once one
            // of its agents is scored the rest can only tie with it, and ties go to the lower rank already seen.
            let mut next = match direction {
                Direction::Pack => set.range(floor..).next(),
                Direction::Spread | Direction::None => set.range(floor..).next_back(),
            }
            .map(|e| e.0);
            while let Some(fm) = next {
                let run = set.range((fm, 0, 0)..=(fm, u32::MAX, AgentIdx::MAX));
                for &(_, rank, idx) in run {
                    stats.agents_examined += 1;
                    let (eub, exact) = match direction {
                        Direction::None => (f64::INFINITY, false),
                        _ => bound(idx, free_cpu, fm),
                    };
                    if let Some(b) = best {
                        if eub < b.score {
                            // Runs further along have no higher bound.
                            next = None;
                            break;
                        }
                        if exact && eub == b.score && rank > b.rank {
                            break;
                        }
                    }
                    let Some(score) = eval(idx) else { continue };
                    scored += 1;
                    stats.agents_scored += 1;
                    let c = Candidate { idx, score, rank };
                    if c.beats(&best) {
                        best = Some(c);
                    }
                    if best.is_some_and(|b| b.score >= limits.good_enough)
                        || (limits.max_candidates > 0 && scored >= limits.max_candidates)
                    {
                        return best;
                    }
                    if exact {
                        break;
                    }
                }
                if next.is_none() {
                    break;
                }
                next = match direction {
                    Direction::Pack => set.range((fm + 1, 0, 0)..).next(),
                    Direction::Spread | Direction::None => set.range(floor..(fm, 0, 0)).next_back(),
                }
                .map(|e| e.0);
            }
        }
        best
    }
}
