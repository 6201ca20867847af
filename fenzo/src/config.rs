//! How to place: the mode, the fitness, when a search may stop, the tie-break seed, capacity groups and
//! autoscaling, with the rules a configuration must keep.

use std::collections::BTreeMap;

use crate::queue::CapacityGroup;
use crate::score::Fitness;

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

/// Default agent attribute naming an agent's instance group.
pub const DEFAULT_GROUP_ATTRIBUTE: &str = "instance_group";
/// Default agent attribute naming an agent's zone.
pub const DEFAULT_ZONE_ATTRIBUTE: &str = "zone";
/// Default cap on phantom agents tried per group in one round.
pub const DEFAULT_MAX_NEW_AGENTS: u32 = 1_000;

/// Which agent attributes name an agent's instance group and zone, and how far one group may grow in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoscaleConfig {
    pub group_attribute: String,
    pub zone_attribute: String,
    /// No group is told to grow by more than this in one round.
    pub max_new_agents: u32,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            group_attribute: DEFAULT_GROUP_ATTRIBUTE.to_string(),
            zone_attribute: DEFAULT_ZONE_ATTRIBUTE.to_string(),
            max_new_agents: DEFAULT_MAX_NEW_AGENTS,
        }
    }
}
