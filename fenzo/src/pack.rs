//! Best mode: how one queue tier is placed.
//!
//! Tasks that are picky (attribute constraints, exclusive hosts) go first through the best-first search, while
//! every agent is still open to them. Tasks that only pack then go through the batch packer: it fills one agent
//! at a time, largest tasks first, choosing each task so that the agent's remaining memory stays in proportion to
//! its remaining cpu (at the ratio of the tasks still waiting), and keeps the small tasks back to fill the last
//! gaps exactly. First-fit-decreasing fills one dimension and strands the other; this does not.
//! Tasks with preferences or a spreading fitness, and whatever the packer could not place, go through the search
//! last, in queue order.
//!
//! When a tier does not fit, the queue decides who waits: the packer is given the longest prefix of the tier's
//! queue order that it can place entirely, and the rest are searched one by one in order.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::PlacementConfig;
use crate::constraint::Constraint;
use crate::filter::CompiledTask;
use crate::score::Fitness;
use crate::state::AgentIdx;
use crate::work::{Placed, Work};

/// How far (as a share of the agent's memory) a task's memory may miss the balanced target and still be taken
/// before a smaller task is preferred.
const BALANCE_TOLERANCE: f64 = 0.02;

/// How many tasks around the balanced target are tried per cpu class when constraints reject the closest.
const NEIGHBOURS_TRIED: usize = 8;

pub(crate) fn place_tier(
    work: &mut Work<'_>,
    compiled: &[CompiledTask<'_>],
    tier: &[usize],
    config: &PlacementConfig,
    placed: &mut Placed,
) {
    let picky = |i: &usize| {
        compiled[*i].request.constraints.iter().any(|c| {
            matches!(c, Constraint::AttributeEquals { .. } | Constraint::AttributeIn { .. } | Constraint::ExclusiveHost)
        })
    };
    // The packer balances cpu against memory: it serves the cpu+memory bin packer and nothing else.
    let packs = |i: &usize| config.fitness == Fitness::BinPackCpuMemory && compiled[*i].preferences.is_empty();
    let first: Vec<usize> = tier.iter().copied().filter(|i| picky(i)).collect();
    let packable: Vec<usize> = tier.iter().copied().filter(|i| !picky(i) && packs(i)).collect();
    let last: Vec<usize> = tier.iter().copied().filter(|i| !picky(i) && !packs(i)).collect();

    search_each(work, compiled, &first, config, placed);

    let mut trial = work.clone();
    let mut trial_placed = placed.clone();
    let left = pack(&mut trial, compiled, &packable, &mut trial_placed);
    if left.is_empty() {
        *work = trial;
        *placed = trial_placed;
    } else {
        // Longest fully packed prefix: `lo` always packs entirely, `hi` never does.
        let (mut lo, mut hi) = (0usize, packable.len());
        let mut kept = (work.clone(), placed.clone());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let mut w = work.clone();
            let mut p = placed.clone();
            if pack(&mut w, compiled, &packable[..mid], &mut p).is_empty() {
                lo = mid;
                kept = (w, p);
            } else {
                hi = mid;
            }
        }
        (*work, *placed) = kept;
        search_each(work, compiled, &packable[lo..], config, placed);
    }

    search_each(work, compiled, &last, config, placed);
}

fn search_each(
    work: &mut Work<'_>,
    compiled: &[CompiledTask<'_>],
    tasks: &[usize],
    config: &PlacementConfig,
    placed: &mut Placed,
) {
    for &i in tasks {
        if placed[i].is_some() {
            continue;
        }
        if let Some(c) = work.search(&compiled[i], config) {
            placed[i] = Some(work.assign(compiled[i].request, c.idx));
        }
    }
}

/// The tasks still waiting, by cpu then memory.
struct Pool {
    classes: BTreeMap<u64, BTreeSet<(u64, usize)>>,
    cpu: u64,
    mem: u64,
}

impl Pool {
    fn remove(&mut self, cpu: u64, mem: u64, seq: usize) {
        if let Some(set) = self.classes.get_mut(&cpu) {
            set.remove(&(mem, seq));
            if set.is_empty() {
                self.classes.remove(&cpu);
            }
        }
        self.cpu -= cpu;
        self.mem -= mem;
    }
}

/// Fills agents one at a time from `tasks`; returns the request indices it could not place.
fn pack(work: &mut Work<'_>, compiled: &[CompiledTask<'_>], tasks: &[usize], placed: &mut Placed) -> Vec<usize> {
    work.stats.pack_runs += 1;
    let mut pool = Pool { classes: BTreeMap::new(), cpu: 0, mem: 0 };
    for (seq, &i) in tasks.iter().enumerate() {
        let r = &compiled[i].request.resources;
        pool.classes.entry(r.cpu_milli).or_default().insert((r.mem_mib, seq));
        pool.cpu += r.cpu_milli;
        pool.mem += r.mem_mib;
    }

    for idx in fill_order(work) {
        if pool.classes.is_empty() {
            break;
        }
        let total = work.snap.agents[idx as usize].total.clone();
        while let Some((cpu, mem, seq)) = pick(work, compiled, tasks, &pool, idx, total.mem_mib) {
            let i = tasks[seq];
            placed[i] = Some(work.assign(compiled[i].request, idx));
            work.stats.packed += 1;
            pool.remove(cpu, mem, seq);
        }
    }
    let mut left: Vec<usize> = pool.classes.values().flat_map(|set| set.iter().map(|&(_, seq)| seq)).collect();
    left.sort_unstable();
    left.into_iter().map(|seq| tasks[seq]).collect()
}

/// Agents to fill: those already running something, fullest first, then empty ones by rank.
fn fill_order(work: &Work<'_>) -> Vec<AgentIdx> {
    let agents = &work.snap.agents;
    let mut order: Vec<(bool, f64, u32, AgentIdx)> = Vec::new();
    for (idx, usage) in work.state.usage.iter().enumerate() {
        if !usage.eligible || usage.exclusive {
            continue;
        }
        let total = &agents[idx].total;
        let part = |u: u64, t: u64| if t == 0 { 0.0 } else { u as f64 / t as f64 };
        let load = part(usage.used.cpu_milli, total.cpu_milli) + part(usage.used.mem_mib, total.mem_mib);
        let idx = idx as AgentIdx;
        order.push((usage.tasks == 0, -load, work.index.rank(idx), idx));
    }
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    order.into_iter().map(|(_, _, _, idx)| idx).collect()
}

/// The next task for agent `idx`: the largest cpu class holding a task whose memory is within tolerance of the
/// balanced target, else the task closest to its target over all classes.
fn pick(
    work: &Work<'_>,
    compiled: &[CompiledTask<'_>],
    tasks: &[usize],
    pool: &Pool,
    idx: AgentIdx,
    total_mem: u64,
) -> Option<(u64, u64, usize)> {
    let used = &work.state.usage[idx as usize].used;
    let info = &work.snap.agents[idx as usize];
    let free_cpu = info.total.cpu_milli.saturating_sub(used.cpu_milli);
    let free_mem = info.total.mem_mib.saturating_sub(used.mem_mib);
    let ratio = if pool.cpu == 0 { 0.0 } else { pool.mem as f64 / pool.cpu as f64 };
    let scale = total_mem.max(1) as f64;

    if work.state.usage[idx as usize].tasks == 0 {
        // Open an empty agent with the hardest task left: the largest, and of those the one whose memory per cpu
        // is furthest from the pool's, while the tasks that can balance it are still plentiful.
        for (&cpu, set) in pool.classes.range(..=free_cpu).rev() {
            let ends = [set.iter().next(), set.iter().next_back()];
            let mut ends: Vec<(u64, usize)> =
                ends.into_iter().flatten().copied().filter(|&(m, _)| m <= free_mem).collect();
            ends.sort_by(|a, b| {
                let dev = |m: u64| (m as f64 / cpu as f64 - ratio).abs();
                dev(b.0).total_cmp(&dev(a.0))
            });
            if let Some(&(mem, seq)) = ends.iter().find(|(_, seq)| work.check(idx, &compiled[tasks[*seq]])) {
                return Some((cpu, mem, seq));
            }
        }
    }

    let mut best: Option<(f64, u64, u64, usize)> = None;
    for (&cpu, set) in pool.classes.range(..=free_cpu).rev() {
        let target = if cpu == free_cpu {
            free_mem as f64
        } else {
            (free_mem as f64 - ratio * (free_cpu - cpu) as f64).min(free_mem as f64)
        };
        let Some((mem, seq)) = closest(set, target, free_mem, |seq| work.check(idx, &compiled[tasks[seq]])) else {
            continue;
        };
        let miss = (mem as f64 - target).abs() / scale;
        if miss <= BALANCE_TOLERANCE {
            return Some((cpu, mem, seq));
        }
        if best.is_none_or(|b| miss < b.0) {
            best = Some((miss, cpu, mem, seq));
        }
    }
    best.map(|(_, cpu, mem, seq)| (cpu, mem, seq))
}

/// The feasible task with memory at most `cap` closest to `target`, looking a few tasks either side.
fn closest(
    set: &BTreeSet<(u64, usize)>,
    target: f64,
    cap: u64,
    feasible: impl Fn(usize) -> bool,
) -> Option<(u64, usize)> {
    let pivot = (target.max(0.0).round() as u64).min(cap);
    let below = set.range(..=(pivot, usize::MAX)).rev();
    let above = set.range((pivot, usize::MAX)..).take_while(|(m, _)| *m <= cap);
    let mut best: Option<(f64, u64, usize)> = None;
    for &(mem, seq) in below
        .take(NEIGHBOURS_TRIED)
        .filter(|(_, s)| feasible(*s))
        .take(1)
        .chain(above.take(NEIGHBOURS_TRIED).filter(|(_, s)| feasible(*s)).take(1))
    {
        let miss = (mem as f64 - target).abs();
        if best.is_none_or(|b| miss < b.0) {
            best = Some((miss, mem, seq));
        }
    }
    best.map(|(_, m, s)| (m, s))
}
