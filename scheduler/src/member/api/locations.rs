//! What SREs pull and read of the location levers, and the endpoints routers read.

use super::*;
use crate::location::{self, Evacuation, Lever, LeverState, LocationRecord};
use titan_api::location::{
    CapacityCheck, Endpoint, Endpoints, JobMoveProgress, LeverAnswer, LeverKind, LocationEndpoints, LocationList,
    LocationView, MoveProgress, PlannedMove,
};
use titan_api::router::LocationsApi;

impl Cell {
    /// Refuses a name that is no location of the federation.
    fn check_location(&self, name: &str, field: &str) -> Result<(), ApiError> {
        let all = all_locations(&self.config);
        if all.iter().any(|l| l == name) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no location {name:?} in this federation; the locations are {}", all.join(", ")),
        )
        .with_field(field))
    }

    /// A location's cell as this member sees it: self, up, suspect or down.
    fn cell_state(&self, name: &str) -> String {
        if name == self.config.cell {
            return "self".into();
        }
        self.handle.sees().get(name).cloned().unwrap_or_else(|| "unknown".into())
    }

    fn location_view(&self, name: &str, with_history: bool) -> LocationView {
        let state = self.read();
        let record = state.location(name).cloned().unwrap_or_else(|| LocationRecord::new(name));
        let progress = record.plan().map(|plan| {
            let heard = self.handle.elsewhere();
            let seen = crate::desired::Here { state: &state, cell: &self.config.cell, seen: &heard };
            let jobs = plan
                .moves
                .keys()
                .filter_map(|id| state.job(id))
                .filter(|j| j.state == JobState::Enabled)
                .map(|j| (j.id.as_str(), &j.counts));
            let p = location::progress(&record, jobs, &seen);
            MoveProgress {
                started_at_ms: plan.started_ms,
                automatic: plan.automatic,
                evidence: plan.evidence.clone(),
                targets: plan.targets.clone(),
                to_move: p.to_move,
                started_elsewhere: p.started_elsewhere,
                stopped_in_location: p.stopped_home,
                left_behind: p.left,
                done: p.done,
                jobs: p
                    .jobs
                    .into_iter()
                    .map(|j| {
                        let mv = &plan.moves[&j.job];
                        JobMoveProgress {
                            name: state.job(&j.job).map(|r| r.spec.name.clone()).unwrap_or_default(),
                            from: mv.from,
                            to: mv.to.clone(),
                            job_id: j.job,
                            to_move: j.to_move,
                            started_elsewhere: j.started_elsewhere,
                            stopped_in_location: j.stopped_home,
                            left_behind: j.left,
                            why_left: j.why_left,
                            running_in_location: j.running_home,
                        }
                    })
                    .collect(),
            }
        });
        LocationView {
            name: name.to_string(),
            state: record.state.as_str().into(),
            weight: record.weight,
            cell_state: self.cell_state(name),
            version: record.version,
            progress,
            history: if with_history { record.history.iter().map(HistoryEntry::from).collect() } else { Vec::new() },
        }
    }

    /// Checks the targets an SRE named: known locations, not the evacuated one, active.
    fn check_targets(&self, name: &str, to: &[String]) -> Result<(), ApiError> {
        let state = self.read();
        for (i, t) in to.iter().enumerate() {
            self.check_location(t, &format!("to[{i}]"))?;
            if t == name {
                return Err(ApiError::new(ErrorCode::InvalidParameter, format!("{t} is the location evacuated"))
                    .with_field(format!("to[{i}]")));
            }
            let s = state.lever_state(t);
            if s != LeverState::Active {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("{t} is {}: only an active location takes instances", s.as_str()),
                )
                .with_field(format!("to[{i}]")));
            }
        }
        Ok(())
    }

    /// What a lever moves, for its answer: an evacuation's plan, or a restore's moves back.
    fn planned(&self, plan: &Evacuation) -> Vec<PlannedMove> {
        let state = self.read();
        plan.moves
            .iter()
            .map(|(id, mv)| PlannedMove {
                job_id: id.clone(),
                name: state.job(id).map(|j| j.spec.name.clone()).unwrap_or_default(),
                from: mv.from,
                to: mv.to.clone(),
                left_behind: mv.left,
                why_left: mv.why_left.clone(),
            })
            .collect()
    }

    /// A restore's trial: the moved instances placed back in the location (the capacity it would need).
    async fn restore_trial(&self, name: &str, plan: &Evacuation) -> Vec<CapacityCheck> {
        let tasks: Vec<(String, u32)> =
            plan.moves.iter().map(|(id, mv)| (id.clone(), mv.moved())).filter(|(_, n)| *n > 0).collect();
        if tasks.is_empty() {
            return Vec::new();
        }
        let requested = tasks.iter().map(|(_, n)| n).sum();
        vec![match self.handle.trial_in(name, tasks).await {
            Ok(t) => CapacityCheck {
                location: name.to_string(),
                requested,
                placed: t.placed.values().sum(),
                fleet_needs: t
                    .needs
                    .iter()
                    .map(|(g, a, n)| titan_api::location::FleetNeed {
                        instance_group: g.clone(),
                        agents: *a,
                        tasks: *n,
                    })
                    .collect(),
                error: None,
            },
            Err(e) => CapacityCheck {
                location: name.to_string(),
                requested,
                placed: 0,
                fleet_needs: Vec::new(),
                error: Some(e),
            },
        }]
    }

    /// This cell's running, healthy tasks of `job`, with their agents' addresses.
    fn local_endpoints(&self, job: &str) -> Vec<Endpoint> {
        let state = self.read();
        state
            .tasks_of_job(job)
            .filter(|t| t.state == titan_api::task::TaskState::Running)
            .filter(|t| t.health != titan_api::task::TaskHealth::Unhealthy)
            .filter_map(|t| {
                let agent = state.agent(t.agent.as_deref()?)?;
                let r = &agent.registration;
                let host = r
                    .addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string())
                    .filter(|h| !h.is_empty() && h != "0.0.0.0")
                    .unwrap_or_else(|| r.hostname.clone());
                let address = t.ports.first().map(|p| format!("{host}:{p}"));
                Some(Endpoint { task_id: t.id.clone(), host, ports: t.ports.clone(), address })
            })
            .collect()
    }

    /// `job`'s endpoints in another location, asked of its cell.
    async fn remote_endpoints(&self, location: &str, job: &str) -> Result<Vec<Endpoint>, String> {
        let addrs = self.config.federation.cells.get(location).cloned().unwrap_or_default();
        let mut last = "no member answered".to_string();
        for addr in addrs {
            let path = format!("/v1/jobs/{job}/endpoints?local=true");
            match self.handle.http.get(addr.as_str(), &path).timeout(Duration::from_secs(1)).send().await {
                Ok(r) if r.status().is_success() => {
                    let e: Endpoints = r.json().await.map_err(|e| e.to_string())?;
                    return Ok(e.locations.into_iter().flat_map(|l| l.endpoints).collect());
                }
                Ok(r) => last = format!("{addr} answered {}", r.status()),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(format!("cell {location} could not be asked: {last}"))
    }
}

impl LocationsApi for Cell {
    fn list_locations(&self) -> ApiResult<'_, LocationList> {
        Box::pin(async move {
            let mut names: BTreeSet<String> = all_locations(&self.config).into_iter().collect();
            names.extend(self.read().locations().map(|l| l.name.clone()));
            Ok(LocationList { locations: names.iter().map(|n| self.location_view(n, false)).collect() })
        })
    }

    fn get_location(&self, name: String) -> ApiResult<'_, LocationView> {
        Box::pin(async move {
            self.check_location(&name, "name")?;
            Ok(self.location_view(&name, true))
        })
    }

    fn pull_lever(
        &self,
        name: String,
        kind: LeverKind,
        to: Vec<String>,
        dry_run: bool,
        actor: Actor,
    ) -> ApiResult<'_, LeverAnswer> {
        Box::pin(async move {
            self.check_location(&name, "name")?;
            let (record, jobs_here) = {
                let state = self.read();
                let record = state.location(&name).cloned().unwrap_or_else(|| LocationRecord::new(&name));
                let jobs = state
                    .jobs()
                    .filter(|j| j.state != JobState::Killed && j.counts.get(&name).is_some_and(|n| *n > 0))
                    .count() as u32;
                (record, jobs)
            };
            let probe = match kind {
                LeverKind::Freeze => Lever::Freeze,
                LeverKind::Unfreeze => Lever::Unfreeze,
                LeverKind::Evacuate => Lever::Evacuate(Evacuation::default()),
                LeverKind::Restore => Lever::Restore,
            };
            // Checked here for a clear answer before any planning; applying checks again against the state then.
            let next = probe.next(record.state).map_err(|e| rejection(Rejection::LeverIllegal(e)))?;
            let mut answer = LeverAnswer {
                location: name.clone(),
                lever: kind.as_str().into(),
                dry_run,
                from: record.state.as_str().into(),
                state: next.as_str().into(),
                weight: record.weight,
                version: record.version,
                jobs_affected: jobs_here,
                ..LeverAnswer::default()
            };
            let lever = match kind {
                LeverKind::Evacuate => {
                    self.check_targets(&name, &to)?;
                    let (plan, capacity) = self.handle.plan_evacuation(&name, &to).await;
                    answer.moves = self.planned(&plan);
                    answer.to_move = plan.moves.values().map(|m| m.moved()).sum();
                    answer.left_behind = plan.moves.values().map(|m| m.left).sum();
                    answer.jobs_affected = plan.moves.len() as u32;
                    answer.capacity = capacity;
                    answer.weight = 0;
                    Lever::Evacuate(plan)
                }
                LeverKind::Restore => {
                    if let Some(plan) = record.evacuation.as_ref() {
                        answer.moves = self.planned(plan);
                        answer.to_move = plan.moves.values().map(|m| m.moved()).sum();
                        answer.jobs_affected = plan.moves.len() as u32;
                        if dry_run {
                            answer.capacity = self.restore_trial(&name, plan).await;
                        }
                    }
                    Lever::Restore
                }
                _ => probe,
            };
            if dry_run {
                return Ok(answer);
            }
            let pulled = self.handle.pull(&name, lever, self.meta(actor), &self.levers).await?;
            answer.state = pulled.state.as_str().into();
            answer.version = pulled.version;
            answer.weight = self.read().location(&name).map_or(answer.weight, |r| r.weight);
            Ok(answer)
        })
    }

    fn set_weight(&self, name: String, weight: u8, dry_run: bool, actor: Actor) -> ApiResult<'_, LeverAnswer> {
        Box::pin(async move {
            self.check_location(&name, "name")?;
            let record = self.read().location(&name).cloned().unwrap_or_else(|| LocationRecord::new(&name));
            let mut answer = LeverAnswer {
                location: name.clone(),
                lever: "weight".into(),
                dry_run,
                from: record.state.as_str().into(),
                state: record.state.as_str().into(),
                weight,
                version: record.version,
                ..LeverAnswer::default()
            };
            if dry_run {
                return Ok(answer);
            }
            let pulled = self.handle.pull(&name, Lever::Weight(weight), self.meta(actor), &self.levers).await?;
            answer.version = pulled.version;
            Ok(answer)
        })
    }

    fn endpoints(&self, job: String, local: bool) -> ApiResult<'_, Endpoints> {
        Box::pin(async move {
            let counts =
                self.read().job(&job).map(|j| j.counts.clone()).ok_or_else(|| ApiError::not_found("job", &job))?;
            let me = self.config.cell.clone();
            let mut names: BTreeSet<String> =
                if local { BTreeSet::new() } else { all_locations(&self.config).into_iter().collect() };
            if !local {
                names.extend(counts.keys().cloned());
            }
            names.insert(me.clone());
            let mut locations = Vec::new();
            for name in names {
                let (state, weight) = {
                    let s = self.read();
                    s.location(&name).map_or((LeverState::Active, location::DEFAULT_WEIGHT), |r| (r.state, r.weight))
                };
                let (endpoints, error) = if name == me {
                    (self.local_endpoints(&job), None)
                } else if self.config.federation.cells.contains_key(&name) {
                    match self.remote_endpoints(&name, &job).await {
                        Ok(e) => (e, None),
                        Err(e) => (Vec::new(), Some(e)),
                    }
                } else {
                    (Vec::new(), Some(format!("no cell of this federation is location {name}")))
                };
                locations.push(LocationEndpoints {
                    cell_state: self.cell_state(&name),
                    location: name,
                    state: state.as_str().into(),
                    weight,
                    endpoints,
                    error,
                });
            }
            Ok(Endpoints { job_id: job, locations })
        })
    }
}
