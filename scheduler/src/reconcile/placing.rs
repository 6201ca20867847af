//! The round's placement: fenzo places what is Accepted, on the committed capacity view; a replacement goes where
//! its persistent volumes are, and avoids the agents where its predecessors failed.

use super::*;

/// How far back a replacement chain is followed to find where a job's persistent volumes live.
pub(super) const MAX_PIN_CHAIN: usize = 16;

/// A replacement of a task with persistent volumes goes where its predecessor ran, since the volumes are there;
/// unless that agent takes no work any more (lost, draining, gone), where the volume is given up for a fresh one.
pub(super) fn pinned(state: &CellState, request: TaskRequest, replaces: Option<&str>, spec: &Spec) -> TaskRequest {
    if !spec.volumes.iter().any(|v| v.persistent) {
        return request;
    }
    let mut at = replaces;
    for _ in 0..MAX_PIN_CHAIN {
        let Some(t) = at.and_then(|id| state.task(id)) else { return request };
        if let Some(agent) = &t.agent {
            return match state.agent(agent) {
                Some(a) if a.takes_work() => request.constraint(fenzo::Constraint::AttributeEquals {
                    name: placement::AGENT_ATTRIBUTE.to_string(),
                    value: agent.clone(),
                }),
                _ => request,
            };
        }
        at = t.replaces.as_deref();
    }
    request
}

/// How much an agent where a task's predecessor failed loses from its score for the replacement: as much as the
/// best fit earns, so any other agent that fits is taken first (Nomad's reschedule node penalty).
pub(super) const FAILED_HERE_PENALTY: f64 = 1.0;

/// Whether a task ended in a way that could repeat on the same agent: it failed there (exit, OOM, health) or the
/// agent could not start or keep it (a port held by something else, a missing image, a stuck start).
pub(super) fn failed_on_its_agent(t: &TaskRecord) -> bool {
    matches!(t.state, TaskState::Failed | TaskState::Rejected)
        || matches!(
            t.reason,
            Some(
                Reason::LaunchError
                    | Reason::InsufficientResources
                    | Reason::StuckTimeout
                    | Reason::Unhealthy
                    | Reason::OomKilled
                    | Reason::Vanished
            )
        )
}

/// The agents where a task's predecessors failed (`replaces` and its own predecessors, newest first).
pub(super) fn failed_agents<'a>(state: &'a CellState, replaces: Option<&'a str>) -> Vec<&'a str> {
    let mut agents: Vec<&str> = Vec::new();
    let mut at = replaces;
    for _ in 0..MAX_PIN_CHAIN {
        let Some(t) = at.and_then(|id| state.task(id)) else { break };
        if let Some(agent) = t.agent.as_deref().filter(|a| failed_on_its_agent(t) && !agents.contains(a)) {
            agents.push(agent);
        }
        at = t.replaces.as_deref();
    }
    agents
}

/// A replacement's request: where its volumes are, and preferring agents other than those where its predecessors
/// failed, so that a cause tied to one agent (a host port held outside Titan, a broken runtime) does not fail every
/// retry the same way. A preference, not a rule: when only such agents fit, the task still goes to one of them.
pub(super) fn replacement(
    state: &CellState,
    mut request: TaskRequest,
    replaces: Option<&str>,
    spec: &Spec,
    avoiding: &mut HashMap<String, Vec<String>>,
) -> TaskRequest {
    let failed = failed_agents(state, replaces);
    for agent in &failed {
        let not_there = fenzo::Constraint::AttributeNotEquals {
            name: placement::AGENT_ATTRIBUTE.to_string(),
            value: agent.to_string(),
        };
        request = request.prefer(not_there, FAILED_HERE_PENALTY);
    }
    if !failed.is_empty() {
        avoiding.insert(request.id.clone(), failed.iter().map(|a| a.to_string()).collect());
    }
    pinned(state, request, replaces, spec)
}

/// Places the Accepted tasks (those in the state and those created this round) with fenzo, on the committed
/// capacity view.
pub(super) fn place(state: &CellState, here: &str, config: &SchedulerConfig, retry_pending: bool, d: &mut Decision) {
    let stopping: BTreeSet<&str> = d.round.stop.iter().map(|(id, _)| id.as_str()).collect();
    let mut requests: Vec<TaskRequest> = Vec::new();
    let mut avoiding: HashMap<String, Vec<String>> = HashMap::new();
    let earlier = if retry_pending { Some(state.accepted_tasks()) } else { None };
    for t in earlier.into_iter().flatten() {
        if stopping.contains(t.id.as_str()) {
            continue;
        }
        if let Some(job) = state.job(&t.job_id) {
            let r = placement::request(t, &job.spec, state.placement_group(&job.spec));
            requests.push(replacement(state, r, t.replaces.as_deref(), &job.spec, &mut avoiding));
        }
    }
    for n in &d.round.create {
        if let Some(job) = state.job(&n.job_id) {
            let group = state.placement_group(&job.spec);
            let r = placement::request_for(&n.id, &n.job_id, &placement::ask(&job.spec), &job.spec, group);
            requests.push(replacement(state, r, n.replaces.as_deref(), &job.spec, &mut avoiding));
        }
    }
    if requests.is_empty() {
        return;
    }
    d.truncated = requests.len() > config.max_placements_per_round;
    requests.truncate(config.max_placements_per_round);
    let capacity = state.capacity();
    let groups = placement::capacity_groups(state.quotas(), here);
    let placed = if groups.is_empty() {
        fenzo::place(capacity, &requests, &PlacementConfig::default())
    } else {
        fenzo::place(capacity, &requests, &PlacementConfig { capacity_groups: groups, ..PlacementConfig::default() })
    };
    for a in placed.assignments {
        let epoch = state.agent(&a.agent_id).map(|r| r.lease_epoch).unwrap_or(0);
        if let Some(failed) = avoiding.get(&a.task_id) {
            if failed.contains(&a.agent_id) {
                d.retries_placed.where_failed += 1;
            } else {
                d.retries_placed.elsewhere += 1;
            }
        }
        d.round.place.push(Placed { task_id: a.task_id, agent: a.agent_id, lease_epoch: epoch, ports: a.ports });
    }
    for u in placed.unplaced {
        let why = match u.reason {
            Pending::Quota { group, resource } => {
                format!("quota: capacity group {group} is at its {} limit in {here}", quota_resource(&resource))
            }
            Pending::NoFit(e) => e.to_string(),
        };
        d.pending.insert(u.task_id, why);
    }
    d.placement = Some(placed.stats);
}

/// A fenzo resource as quotas name it.
fn quota_resource(r: &fenzo::ResourceKind) -> String {
    match r {
        fenzo::ResourceKind::Cpu => "cpus".into(),
        fenzo::ResourceKind::Memory => "memoryMiB".into(),
        fenzo::ResourceKind::Disk => "diskGiB".into(),
        fenzo::ResourceKind::Scalar(name) => name.clone(),
        other => other.to_string(),
    }
}
