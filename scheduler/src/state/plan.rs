//! A scheduling round as it applies: ticks, new tasks, placements re-validated against the agent's lease epoch and
//! fenzo's capacity view (a plan made on an older state is checked here, as Nomad's plan applier does), stops,
//! losses, reachability, drains and retention.

use super::*;

impl CellState {
    pub(super) fn apply_round(&mut self, round: &Round, at_ms: u64) -> RoundOutcome {
        let mut out = RoundOutcome::default();
        for t in &round.ticks {
            let Some(job) = self.jobs.get_mut(&t.job_id).map(Arc::make_mut) else { continue };
            if job.last_tick_ms.is_some_and(|last| last >= t.at_ms) {
                continue;
            }
            job.last_tick_ms = Some(t.at_ms);
            if t.start {
                job.current_run = Some(t.at_ms);
            }
            let kind = if t.start { "run started" } else { "run skipped: the previous one is still going" };
            self.event(Topic::Job, kind, &t.job_id, Some(&t.job_id), None, None, t.at_ms);
        }
        for n in &round.create {
            if self.create_task(n, at_ms) {
                out.created += 1;
            }
        }
        for p in &round.place {
            match self.place_task(p, at_ms) {
                Ok(()) => out.placed += 1,
                Err(why) => out.refused.push((p.task_id.clone(), why)),
            }
        }
        for (id, reason) in &round.stop {
            self.stop_task(id, *reason, at_ms);
        }
        for (id, reason) in &round.lose {
            // A task already being stopped keeps the reason it was stopped for (a scaled-down task lost with its
            // agent is still not to be replaced).
            let stopping = self.tasks.get(Id::of(id)).is_some_and(|t| t.desired == Desired::Stop && t.reason.is_some());
            self.transition(id, TaskState::Lost, if stopping { None } else { Some(*reason) }, at_ms);
        }
        for a in &round.unreachable {
            self.set_reachable(a, false, at_ms);
        }
        for a in &round.reachable {
            self.set_reachable(a, true, at_ms);
        }
        for id in &round.forget {
            self.forget_task(id);
        }
        for id in &round.forget_jobs {
            if self.forget_job(id, at_ms) {
                out.jobs_forgotten += 1;
            }
        }
        for a in &round.drained {
            let empty = self.tasks_on_agent(a).next().is_none();
            if let Some(rec) = self.agents.get_mut(Id::of(a)).filter(|r| r.state == AgentState::Draining && empty) {
                rec.state = AgentState::Drained;
                self.bump(a);
                self.event(Topic::Agent, "drained", a, None, Some(a), None, at_ms);
            }
        }
        out
    }

    pub(super) fn place_task(&mut self, p: &Placed, at_ms: u64) -> Result<(), String> {
        let task = self.tasks.get(Id::of(&p.task_id)).ok_or("no such task")?;
        if task.state != TaskState::Accepted || task.desired != Desired::Run {
            return Err(format!("the task is {} and wanted {:?}", task.state.as_str(), task.desired));
        }
        let agent = self.agents.get(Id::of(&p.agent)).ok_or("no such agent")?;
        if !agent.takes_work() {
            return Err(format!("agent is {} and reachable={}", agent.state.as_str(), agent.reachable));
        }
        if agent.lease_epoch != p.lease_epoch {
            return Err(format!("agent lease epoch is {}, the plan has {}", agent.lease_epoch, p.lease_epoch));
        }
        let job = self.jobs.get(&task.job_id).ok_or("no such job")?;
        let request = placement::request(task, &job.spec, self.placement_group(&job.spec));
        self.capacity.0.assign(&request, &p.agent, Some(&p.ports)).map_err(|e| e.to_string())?;
        if let Some(t) = self.tasks.get_mut(Id::of(&p.task_id)).map(Arc::make_mut) {
            t.agent = Some(p.agent.clone());
            t.ports = p.ports.clone();
            t.lease_epoch = p.lease_epoch;
        }
        self.by_agent.entry(p.agent.clone()).or_default().insert(p.task_id.clone());
        self.transition(&p.task_id, TaskState::Assigned, None, at_ms);
        Ok(())
    }
}
