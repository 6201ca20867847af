//! The simulated fleet: a group of identical hosts driven minute by minute by a `Policy` over a demand trace, and
//! scored as `shared/bench/autoscale-trace.md` says. A host launched at minute t is paid from t+1 and usable from
//! t+D; scale-in removes only idle, ready hosts (booting ones finish booting); demand a minute's ready hosts cannot
//! hold is pending for that minute (no backlog). Demand packs onto hosts (16 slots each), so the hosts in use are
//! the served slots in whole hosts and the rest (booting ones included) are idle.

use crate::policy::{History, Observation, Policy};
use crate::trace::{Trace, SLOTS_PER_HOST};

/// A run's score over the scored minutes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    pub pending_task_minutes: u64,
    pub pending_in_spikes: u64,
    pub demand_task_minutes: u64,
    pub host_minutes: u64,
    pub idle_host_minutes: u64,
    /// Minutes with a launch or a removal.
    pub changes: u64,
    pub launches: u64,
}

impl Score {
    pub fn pending_pct(&self) -> f64 {
        100.0 * self.pending_task_minutes as f64 / self.demand_task_minutes.max(1) as f64
    }

    pub fn spike_pct(&self) -> f64 {
        100.0 * self.pending_in_spikes as f64 / self.pending_task_minutes.max(1) as f64
    }

    pub fn host_hours(&self) -> f64 {
        self.host_minutes as f64 / 60.0
    }

    pub fn idle_host_hours(&self) -> f64 {
        self.idle_host_minutes as f64 / 60.0
    }

    /// The line the bench prints.
    pub fn line(&self, policy: &str, boot: u32) -> String {
        format!(
            "policy={policy} boot={boot} pending_task_min={} pending_pct={:.3} spike_pct={:.1} host_h={:.1} idle_host_h={:.1} \
             changes={} launches={}",
            self.pending_task_minutes,
            self.pending_pct(),
            self.spike_pct(),
            self.host_hours(),
            self.idle_host_hours(),
            self.changes,
            self.launches
        )
    }
}

/// Decides a size each minute: a policy, or the oracle (which sees the future).
pub enum Driver<'a> {
    Policy(&'a mut dyn Policy),
    /// The cheapest schedule with no pending: as many hosts as the largest need over the next D minutes.
    Oracle,
}

/// Runs `driver` over the whole trace with boot delay `boot` minutes, scoring the scored days. The fleet starts
/// with the hosts minute 0 needs, ready.
pub fn run(trace: &Trace, boot: u32, driver: &mut Driver<'_>) -> Score {
    let s = SLOTS_PER_HOST;
    let n = trace.demand.len();
    let d = boot as usize;
    let mut ready: u32 = trace.demand[0].div_ceil(s);
    // Hosts booting, by the minute they become ready.
    let mut booting: std::collections::VecDeque<(usize, u32)> = std::collections::VecDeque::new();
    let mut history = History::default();
    let mut score = Score::default();
    let from = trace.scored_from();
    for t in 0..n {
        while booting.front().is_some_and(|(at, _)| *at <= t) {
            ready += booting.pop_front().map_or(0, |(_, k)| k);
        }
        let in_boot: u32 = booting.iter().map(|(_, k)| *k).sum();
        // Paid this minute: every host that existed at the end of the last one.
        let paid = ready + in_boot;
        let demand = trace.demand[t];
        let served = demand.min(ready * s);
        let pending = demand - served;
        let used = served.div_ceil(s);
        let desired = match driver {
            Driver::Oracle => (t..=(t + d).min(n - 1)).map(|k| trace.demand[k].div_ceil(s)).max().unwrap_or(0),
            Driver::Policy(p) => {
                let o = Observation {
                    minute: t as u64,
                    now_ms: t as u64 * 60_000,
                    demand,
                    ready,
                    booting: in_boot,
                    shortfall: pending.div_ceil(s),
                    slots_per_instance: s,
                    boot_minutes: boot,
                    min: 0,
                    max: u32::MAX,
                    history: &history,
                };
                p.decide(&o).desired
            }
        };
        history.record(t as u64, demand);
        let have = ready + in_boot;
        let mut changed = false;
        if desired > have {
            let k = desired - have;
            booting.push_back((t + d, k));
            if t >= from {
                score.launches += u64::from(k);
            }
            changed = true;
        } else if desired < have {
            let removable = (have - desired).min(ready - used);
            if removable > 0 {
                ready -= removable;
                changed = true;
            }
        }
        if t >= from {
            score.demand_task_minutes += u64::from(demand);
            score.pending_task_minutes += u64::from(pending);
            if trace.in_spike[t] {
                score.pending_in_spikes += u64::from(pending);
            }
            score.host_minutes += u64::from(paid);
            score.idle_host_minutes += u64::from(paid.saturating_sub(used));
            score.changes += u64::from(changed);
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Reactive, ReactiveConfig};

    #[test]
    fn the_oracle_never_leaves_demand_pending_and_a_slow_reactive_policy_does() {
        let trace = Trace::generate();
        let oracle = run(&trace, 10, &mut Driver::Oracle);
        assert_eq!(oracle.pending_task_minutes, 0);
        assert!(oracle.idle_host_hours() > 0.0);
        let mut p = Reactive::new(ReactiveConfig { headroom: 0, scale_in_cooldown_s: 600, ..Default::default() });
        let reactive = run(&trace, 10, &mut Driver::Policy(&mut p));
        assert!(reactive.pending_task_minutes > 0, "a policy that waits for demand leaves some pending");
        assert!(reactive.spike_pct() > 0.0);
    }
}
