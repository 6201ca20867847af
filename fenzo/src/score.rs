//! Scorers: how good one feasible agent is for one task, in 0.0..=1.0.
//!
//! The fitness functions are Fenzo's bin packers (cpu, memory, cpu+memory, cpu+memory+network) and their
//! opposite, spreading, optionally mixed with weights. Preferences (soft constraints) add their own weighted
//! share. Every scorer also gives an upper bound from an agent's free cpu and memory alone, which is what lets
//! the search walk the capacity index best-first and stop early instead of scoring every agent.

use crate::resources::Resources;

/// How to rank feasible agents.
#[derive(Clone, Debug, PartialEq)]
pub enum Fitness {
    /// Fill the agent whose cpu would be fullest.
    BinPackCpu,
    /// Fill the agent whose memory would be fullest.
    BinPackMemory,
    /// Fenzo's default: the mean of cpu and memory fullness.
    BinPackCpuMemory,
    /// The mean of cpu, memory and network fullness (network is left out on agents with no network total).
    BinPackCpuMemoryNetwork,
    /// The emptiest agent first: one minus cpu+memory fullness.
    Spread,
    /// A weighted mean of other fitness functions.
    Weighted(Vec<(Fitness, f64)>),
}

/// The order in which the capacity index should be walked for a fitness function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Least free capacity first.
    Pack,
    /// Most free capacity first.
    Spread,
    /// No order helps: every candidate must be scored.
    None,
}

fn ratio(used: u64, want: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used + want) as f64 / total as f64
    }
}

/// What a scorer sees of one agent: totals, what is used, and what the task wants.
pub(crate) struct Fit<'a> {
    pub(crate) total: &'a Resources,
    pub(crate) used_cpu: u64,
    pub(crate) used_mem: u64,
    pub(crate) used_net: u64,
    pub(crate) want: &'a Resources,
}

impl Fit<'_> {
    fn cpu(&self) -> f64 {
        ratio(self.used_cpu, self.want.cpu_milli, self.total.cpu_milli)
    }

    fn mem(&self) -> f64 {
        ratio(self.used_mem, self.want.mem_mib, self.total.mem_mib)
    }
}

impl Fitness {
    /// The fitness of placing the task on the agent, computed in f64 in Fenzo's order so that compat mode
    /// reproduces Fenzo's choices bit for bit.
    pub(crate) fn score(&self, f: &Fit<'_>) -> f64 {
        match self {
            Fitness::BinPackCpu => f.cpu(),
            Fitness::BinPackMemory => f.mem(),
            Fitness::BinPackCpuMemory => (f.cpu() + f.mem()) / 2.0,
            Fitness::BinPackCpuMemoryNetwork => {
                if f.total.net_mbps == 0 {
                    (f.cpu() + f.mem()) / 2.0
                } else {
                    (f.cpu() + f.mem() + ratio(f.used_net, f.want.net_mbps, f.total.net_mbps)) / 3.0
                }
            }
            Fitness::Spread => 1.0 - (f.cpu() + f.mem()) / 2.0,
            Fitness::Weighted(parts) => weighted(parts, |p| p.score(f)),
        }
    }

    /// An upper bound on `score` for any agent of the same totals, free cpu and free memory (network unknown),
    /// and whether it is exact (the score depends on nothing else).
    pub(crate) fn bound(&self, f: &Fit<'_>) -> (f64, bool) {
        match self {
            Fitness::BinPackCpuMemoryNetwork => {
                if f.total.net_mbps == 0 {
                    ((f.cpu() + f.mem()) / 2.0, true)
                } else {
                    ((f.cpu() + f.mem() + 1.0) / 3.0, false)
                }
            }
            Fitness::Weighted(parts) => {
                let exact = parts.iter().all(|(p, _)| p.bound(f).1);
                (weighted(parts, |p| p.bound(f).0), exact)
            }
            other => (other.score(f), true),
        }
    }

    pub(crate) fn direction(&self) -> Direction {
        match self {
            Fitness::Spread => Direction::Spread,
            Fitness::Weighted(parts) => {
                let mut dirs = parts.iter().filter(|(_, w)| *w > 0.0).map(|(p, _)| p.direction());
                match dirs.next() {
                    Some(first) if dirs.all(|d| d == first) => first,
                    _ => Direction::None,
                }
            }
            _ => Direction::Pack,
        }
    }
}

fn weighted(parts: &[(Fitness, f64)], f: impl Fn(&Fitness) -> f64) -> f64 {
    let total: f64 = parts.iter().map(|(_, w)| w.max(0.0)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    parts.iter().map(|(p, w)| f(p) * w.max(0.0)).sum::<f64>() / total
}

/// Fenzo's combined score: fitness and soft-constraint score mixed with fixed weights. With no soft
/// constraints (preference score 1.0) this is exactly `0.50 + 0.35 * fitness`, the formula Fenzo's
/// placements on the shared workload follow.
pub(crate) fn compat_score(fitness: f64, preferences: f64) -> f64 {
    0.50 * preferences + 0.35 * fitness
}

/// Our combined score: fitness has weight 1, each preference its own weight.
pub(crate) fn best_score(fitness: f64, preferences: f64, preference_weight: f64) -> f64 {
    (fitness + preferences * preference_weight) / (1.0 + preference_weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(total: &Resources, used_cpu: u64, used_mem: u64, want: &Resources) -> f64 {
        Fitness::BinPackCpuMemory.score(&Fit { total, used_cpu, used_mem, used_net: 0, want })
    }

    #[test]
    fn cpu_memory_fitness_is_fenzos_mean() {
        let total = Resources { cpu_milli: 16_000, mem_mib: 65_536, ..Default::default() };
        let want = Resources { cpu_milli: 1_000, mem_mib: 2_211, ..Default::default() };
        let f = fit(&total, 0, 0, &want);
        assert_eq!(f, ((1.0 + 0.0) / 16.0 + (2211.0 + 0.0) / 65536.0) / 2.0);
        assert_eq!(compat_score(f, 1.0), 0.50 + 0.35 * f);
    }

    #[test]
    fn bounds_are_never_below_scores() {
        let total = Resources { cpu_milli: 8_000, mem_mib: 1_000, net_mbps: 100, ..Default::default() };
        let want = Resources { cpu_milli: 1_000, mem_mib: 100, net_mbps: 10, ..Default::default() };
        for fitness in [
            Fitness::BinPackCpuMemoryNetwork,
            Fitness::Spread,
            Fitness::Weighted(vec![(Fitness::BinPackCpu, 2.0), (Fitness::BinPackCpuMemoryNetwork, 1.0)]),
        ] {
            for used_net in [0, 50, 90] {
                let f = Fit { total: &total, used_cpu: 3_000, used_mem: 500, used_net, want: &want };
                assert!(fitness.bound(&f).0 >= fitness.score(&f), "{fitness:?} net {used_net}");
            }
        }
    }

    #[test]
    fn mixed_directions_disable_ordering() {
        let mixed = Fitness::Weighted(vec![(Fitness::Spread, 1.0), (Fitness::BinPackCpu, 1.0)]);
        assert_eq!(mixed.direction(), Direction::None);
        assert_eq!(Fitness::Spread.direction(), Direction::Spread);
        assert_eq!(Fitness::BinPackCpuMemory.direction(), Direction::Pack);
    }
}
