//! Agents in the state: registrations (each raising the lease epoch), reachability, drains, and the versions
//! their assignment long-polls wait on.

use super::*;

impl CellState {
    pub(super) fn bump(&mut self, agent: &str) {
        self.seq += 1;
        if let Some(a) = self.agents.get_mut(Id::of(agent)) {
            a.version = self.seq;
            self.fx.touched.push((agent.to_string(), self.seq));
        }
    }

    pub(super) fn set_reachable(&mut self, agent: &str, reachable: bool, at_ms: u64) {
        let Some(a) = self.agents.get_mut(Id::of(agent)) else { return };
        if a.reachable == reachable {
            return;
        }
        self.fx.capacity_moved = true;
        a.reachable = reachable;
        let eligible = a.takes_work();
        let kind = if reachable { "reachable" } else { "unreachable" };
        self.event(Topic::Agent, kind, agent, None, Some(agent), None, at_ms);
        let _ = self.capacity.0.set_eligible(agent, eligible);
        let ids: Vec<String> = self.by_agent.get(agent).into_iter().flatten().cloned().collect();
        for id in ids {
            let Some(t) = self.tasks.get_mut(Id::of(&id)).map(Arc::make_mut) else { continue };
            if !reachable && t.state != TaskState::Unreachable {
                t.before_unreachable = Some(t.state);
                self.transition(&id, TaskState::Unreachable, None, at_ms);
            } else if reachable && t.state == TaskState::Unreachable {
                let back = match (t.desired, t.before_unreachable.take()) {
                    (Desired::Stop, _) => TaskState::Killing,
                    (Desired::Run, Some(s)) => s,
                    (Desired::Run, None) => TaskState::Running,
                };
                self.transition(&id, back, None, at_ms);
            }
        }
        self.bump(agent);
    }

    pub(super) fn register_agent(&mut self, registration: &crate::agent::Registration, at_ms: u64) -> Response {
        self.fx.capacity_moved = true;
        let id = registration.id.clone();
        let previous = self.agents.get(Id::of(&id));
        let (epoch, state) = match previous {
            // A gone agent that comes back is active again; a draining one stays draining.
            Some(a) => (a.lease_epoch + 1, if a.state == AgentState::Gone { AgentState::Active } else { a.state }),
            None => (1, AgentState::Active),
        };
        let reshaped = previous.is_some_and(|a| {
            a.registration.resources != registration.resources
                || a.registration.attributes != registration.attributes
                || a.registration.hostname != registration.hostname
        });
        let is_new = previous.is_none();
        let version = previous.map(|a| a.version).unwrap_or(0);
        let record = AgentRecord {
            registration: registration.clone(),
            state,
            lease_epoch: epoch,
            registered_at_ms: at_ms,
            reachable: true,
            version,
        };
        if is_new {
            if let Err(e) = self.capacity.0.add_agent(placement::agent(&record, record.takes_work())) {
                tracing::error!(agent = %id, error = %e, "agent not added to the capacity view");
            }
        }
        self.agents.insert(Key::from(id.as_str()), record);
        // Its tasks: those it still runs (or has not started) carry on under the new epoch; the others died
        // with the agent's previous life.
        let running: BTreeSet<&String> = registration.running.iter().collect();
        let ids: Vec<String> = self.by_agent.get(&id).into_iter().flatten().cloned().collect();
        for tid in ids {
            let Some(t) = self.tasks.get_mut(Id::of(&tid)).map(Arc::make_mut) else { continue };
            let before = t.before_unreachable.take();
            if running.contains(&tid) || t.state == TaskState::Assigned || before == Some(TaskState::Assigned) {
                t.lease_epoch = epoch;
                if t.state == TaskState::Unreachable {
                    let back = if t.desired == Desired::Stop {
                        TaskState::Killing
                    } else {
                        before.unwrap_or(TaskState::Running)
                    };
                    self.transition(&tid, back, None, at_ms);
                }
            } else if t.desired == Desired::Stop {
                self.transition(&tid, TaskState::Killed, None, at_ms);
            } else {
                self.transition(&tid, TaskState::Lost, Some(Reason::AgentRestarted), at_ms);
            }
        }
        self.event(Topic::Agent, "registered", &id, None, Some(&id), None, at_ms);
        if reshaped {
            self.rebuild_capacity();
        } else if let Some(a) = self.agents.get(Id::of(&id)) {
            let _ = self.capacity.0.set_eligible(&id, a.takes_work());
        }
        self.bump(&id);
        Response::Agent { id, lease_epoch: epoch }
    }

    pub fn agent(&self, id: &str) -> Option<&AgentRecord> {
        self.agents.get(Id::of(id))
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values()
    }

    /// How many agents are registered (the fleet an agent's lease is sized by).
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }
}
