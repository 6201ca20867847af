//! Agents in a round: which went silent or came back, and which of their tasks are lost now.

use super::*;

/// Whether a task on an agent with a lease of `lease_ms`, silent for `quiet` ms, is to be declared lost: its job's
/// grace has passed.
pub(super) fn overdue(state: &CellState, t: &TaskRecord, quiet: u64, lease_ms: u64, config: &SchedulerConfig) -> bool {
    quiet > config.lose_after_ms(state.job(&t.job_id).map(|j| &*j.spec), lease_ms)
}

/// The unreachable original a live replacement `t` may run beside: its predecessor, lost with an agent that is
/// still unreachable, of a job that does not stop its tasks on a disconnect. That agent, once back, stops what
/// the cell no longer lists; until then both may run.
pub fn may_run_beside(state: &CellState, t: &TaskRecord) -> Option<String> {
    if t.is_terminal() {
        return None;
    }
    let original = state.task(t.replaces.as_deref()?)?;
    if original.state != TaskState::Lost || original.reason != Some(Reason::AgentLost) {
        return None;
    }
    if state.job(&t.job_id).is_some_and(|j| j.spec.disconnect.is_some()) {
        return None;
    }
    let agent = state.agent(original.agent.as_deref()?)?;
    (!agent.reachable).then(|| original.id.clone())
}

/// Agents that went silent, came back, or have tasks to be declared lost now (returned, with how long each has
/// been silent and the lease it is judged by); nothing when the round does not check leases.
pub(super) fn agents(
    state: &CellState,
    seen: &Observed<'_>,
    config: &SchedulerConfig,
    d: &mut Decision,
) -> BTreeMap<String, (u64, u64)> {
    let Some(heartbeats) = seen.heartbeats else { return BTreeMap::new() };
    let mut silent = 0usize;
    let mut total = 0usize;
    let mut due: Vec<(u64, String, (u64, u64))> = Vec::new();
    let fleet_lease = crate::lease::lease_ms(config, state.agent_count());
    for a in state.agents() {
        let id = &a.registration.id;
        total += 1;
        let heard = heartbeats.get(id).copied();
        let (quiet, lease) = crate::lease::quiet(heard, seen.now_ms, seen.leader_since_ms, fleet_lease);
        if quiet <= lease {
            if !a.reachable {
                d.round.reachable.push(id.clone());
            }
            continue;
        }
        silent += 1;
        if a.reachable {
            d.round.unreachable.push(id.clone());
        }
        if quiet > lease + config.lost_grace_ms
            && state.tasks_on_agent(id).any(|t| overdue(state, t, quiet, lease, config))
        {
            due.push((seen.now_ms - quiet, id.clone(), (quiet, lease)));
        }
    }
    // A few silent agents are failures; many at once are more likely a partition between them and us. One alone
    // is never a partition.
    d.breaker_open = silent > 1 && silent as f64 > config.breaker_fraction * total as f64;
    if d.breaker_open {
        return BTreeMap::new();
    }
    due.sort();
    let allowed = config.max_lost_agents_per_minute.saturating_sub(seen.lost_last_minute) as usize;
    let lost: BTreeMap<String, (u64, u64)> = due.into_iter().take(allowed).map(|(_, id, q)| (id, q)).collect();
    d.lost_agents = lost.keys().cloned().collect();
    lost
}
