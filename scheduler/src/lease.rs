//! Agents' leases: how long an agent may stay silent before it is unreachable, and what the leader remembers of
//! each agent's last heartbeat. Leader-local, never replicated: nothing per heartbeat goes through Raft.
//!
//! The lease grows with the fleet, as Nomad's heartbeat TTL does: agents beat every third of their lease, so a
//! fixed lease makes the leader's work at rest grow with every agent. Here the lease is long enough that the whole
//! fleet beats at most `max_heartbeats_per_second`, and never shorter than `lease_ms`. With the defaults (10 s,
//! 1,000 per second) a cell of up to 3,333 agents keeps the 10 s lease; 10,000 agents get 30 s; 50,000 get 150 s.

use crate::config::SchedulerConfig;

/// Heartbeats in one lease: agents beat every third of it, so one lost or late beat does not lose the lease.
pub const BEATS_PER_LEASE: u64 = 3;

/// When the leader last heard from an agent, and the lease it gave the agent in that answer: until `at_ms +
/// lease_ms` the agent is reachable, whatever the fleet has grown or shrunk to since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    pub at_ms: u64,
    pub lease_ms: u64,
}

/// The lease an agent is given when the cell has `fleet` agents: `lease_ms`, or longer when a fleet beating every
/// third of it would send more than `max_heartbeats_per_second` (0: the lease never grows).
pub fn lease_ms(config: &SchedulerConfig, fleet: usize) -> u64 {
    let rate = u64::from(config.max_heartbeats_per_second);
    if rate == 0 {
        return config.lease_ms;
    }
    let scaled = (fleet as u64).saturating_mul(BEATS_PER_LEASE).saturating_mul(1_000).div_ceil(rate);
    config.lease_ms.max(scaled)
}

/// How long an agent has been silent at `now_ms`, and the lease it is judged by: it is reachable while the first
/// is within the second. An agent not heard since this member became leader (`leader_since_ms`) is judged from
/// then, with the lease the fleet gets now (a new leader does not know what the old one told it; the fleet it
/// counts is the one the old leader counted).
pub fn quiet(heard: Option<Heard>, now_ms: u64, leader_since_ms: u64, fleet_lease_ms: u64) -> (u64, u64) {
    let (at, lease) = match heard {
        Some(h) if h.at_ms >= leader_since_ms => (h.at_ms, h.lease_ms),
        Some(h) => (leader_since_ms, h.lease_ms.max(fleet_lease_ms)),
        None => (leader_since_ms, fleet_lease_ms),
    };
    (now_ms.saturating_sub(at), lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lease_ms: u64, rate: u32) -> SchedulerConfig {
        SchedulerConfig { lease_ms, max_heartbeats_per_second: rate, ..SchedulerConfig::default() }
    }

    #[test]
    fn the_lease_grows_with_the_fleet_beyond_the_rate() {
        let c = config(10_000, 1_000);
        assert_eq!(lease_ms(&c, 0), 10_000);
        assert_eq!(lease_ms(&c, 3_333), 10_000);
        assert_eq!(lease_ms(&c, 3_334), 10_002);
        assert_eq!(lease_ms(&c, 10_000), 30_000);
        assert_eq!(lease_ms(&c, 50_000), 150_000);
        // Beats per second at that lease stay within the rate.
        for fleet in [1usize, 999, 3_334, 10_000, 123_457] {
            let lease = lease_ms(&c, fleet);
            assert!(fleet as f64 * BEATS_PER_LEASE as f64 * 1_000.0 / lease as f64 <= 1_000.0 + 1e-9, "{fleet}");
        }
    }

    #[test]
    fn a_rate_of_zero_keeps_the_lease_fixed() {
        assert_eq!(lease_ms(&config(10_000, 0), 1_000_000), 10_000);
        assert_eq!(lease_ms(&config(u64::MAX, 1), usize::MAX), u64::MAX);
    }

    #[test]
    fn an_agent_keeps_the_lease_it_was_given() {
        let heard = Some(Heard { at_ms: 1_000, lease_ms: 30_000 });
        // The fleet shrank since: the lease the agent was told still holds.
        assert_eq!(quiet(heard, 25_000, 0, 10_000), (24_000, 30_000));
        assert_eq!(quiet(heard, 31_001, 0, 10_000), (30_001, 30_000));
        // Not heard at all: judged from the leader's start with the fleet's lease.
        assert_eq!(quiet(None, 15_000, 4_000, 10_000), (11_000, 10_000));
        // Heard only before this leader began: from the leader's start, with the longer of the two leases.
        assert_eq!(quiet(heard, 40_000, 5_000, 10_000), (35_000, 30_000));
        assert_eq!(quiet(heard, 40_000, 5_000, 60_000), (35_000, 60_000));
    }
}
