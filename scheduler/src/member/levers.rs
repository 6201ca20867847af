//! The member's side of the location levers: planning an evacuation (quotas from the replicated state, capacity
//! from a trial placement in each target location's own cell), the trial other cells ask of this one, and the
//! levers worker: on the leader, it completes moves (evacuating -> evacuated, restoring -> active) once the
//! figures say so, pulls auto-failover when it is on and every guard holds, and keeps the levers' gauges.

use super::*;
use crate::federation::wire::{Trial, Tried, CONTENT_TYPE, TRIAL_PATH};
use crate::location::{self, Candidate, Elsewhere, Evacuation, Lever, LeverState, LocationRecord};
use crate::quota::{self, Demand};
use titan_api::location::{CapacityCheck, FleetNeed};

/// The lever a command pulled took effect.
pub(crate) struct LeverPulled {
    pub(crate) state: LeverState,
    pub(crate) version: u64,
}

impl Answer for LeverPulled {
    const TO: &'static str = "a lever";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Location { state, version, .. } => Ok(LeverPulled { state, version }),
            other => Err(other),
        }
    }
}

/// The levers' gauges and counters.
#[derive(Clone)]
pub(crate) struct LeverMetrics {
    state: IntGaugeVec,
    weight: IntGaugeVec,
    evacuation: IntGaugeVec,
    pub(crate) actions: IntCounterVec,
}

impl LeverMetrics {
    pub(crate) fn new(registry: &Registry, cell: &str, node: u64) -> Result<LeverMetrics, prometheus::Error> {
        use crate::metrics::location::*;
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(LeverMetrics {
            state: r.gauge_vec(&STATE)?,
            weight: r.gauge_vec(&WEIGHT)?,
            evacuation: r.gauge_vec(&EVACUATION)?,
            actions: r.counter_vec(&ACTIONS)?,
        })
    }
}

/// Every location of the federation (a standalone cell: its own, and any a lever names).
pub(crate) fn all_locations(config: &CellConfig) -> Vec<String> {
    config.federation.locations(&config.cell)
}

impl Handle {
    /// Places `tasks` on this cell's current capacity, trying only: what fits of each job, and what its fleet
    /// would have to add for the rest.
    pub(crate) fn trial_here(&self, tasks: &[(String, u32)]) -> Tried {
        let state = crate::scheduling::Host::read(self);
        let mut requests = Vec::new();
        let mut job_of: HashMap<String, String> = HashMap::new();
        for (job, n) in tasks {
            let Some(j) = state.job(job) else { continue };
            let ask = crate::placement::ask(&j.spec);
            let group = state.placement_group(&j.spec);
            for i in 0..*n {
                let id = format!("trial-{i}-{job}");
                requests.push(crate::placement::request_for(&id, job, &ask, &j.spec, group));
                job_of.insert(id, job.clone());
            }
        }
        let config = fenzo::PlacementConfig {
            capacity_groups: crate::placement::capacity_groups(state.quotas(), &self.config.cell),
            autoscale: Some(fenzo::AutoscaleConfig::default()),
            ..fenzo::PlacementConfig::default()
        };
        let placed = fenzo::place(state.capacity(), &requests, &config);
        let mut tried = Tried::default();
        for a in &placed.assignments {
            if let Some(job) = job_of.get(&a.task_id) {
                *tried.placed.entry(job.clone()).or_insert(0) += 1;
            }
        }
        tried.needs = placed
            .autoscale
            .iter()
            .filter(|h| h.shortfall > 0)
            .map(|h| (h.group.clone(), h.shortfall, h.pending_tasks))
            .collect();
        tried
    }

    /// A trial placement of `tasks` in `location`: here, or asked of that location's cell.
    pub(crate) async fn trial_in(&self, location: &str, tasks: Vec<(String, u32)>) -> Result<Tried, String> {
        if location == self.config.cell {
            return Ok(self.trial_here(&tasks));
        }
        let Some(addrs) = self.config.federation.cells.get(location) else {
            return Err(format!("no cell of this federation is location {location}"));
        };
        let body =
            rmp_serde::to_vec_named(&Trial { from: self.config.cell.clone(), tasks }).map_err(|e| e.to_string())?;
        let mut last = String::from("no member answered");
        for addr in addrs {
            let sent = self
                .http
                .post(addr.as_str(), TRIAL_PATH)
                .timeout(Duration::from_secs(3))
                .header("content-type", CONTENT_TYPE)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
                    return rmp_serde::from_slice(&bytes).map_err(|e| e.to_string());
                }
                Ok(r) => last = format!("{addr} answered {}", r.status()),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(format!("cell {location} could not be asked: {last}"))
    }

    /// Plans the evacuation of `name`: each job's count there split over `named` targets (else its own other
    /// locations, else its failover preference) within their quotas, then cut to what a trial placement in each
    /// target's cell places. Writes nothing.
    pub(crate) async fn plan_evacuation(&self, name: &str, named: &[String]) -> (Evacuation, Vec<CapacityCheck>) {
        let all = all_locations(&self.config);
        let mut moves = {
            let state = crate::scheduling::Host::read(self);
            let open: BTreeSet<String> =
                all.iter().filter(|l| *l != name && state.lever_state(l) == LeverState::Active).cloned().collect();
            let jobs = state
                .jobs()
                .filter(|j| j.state == JobState::Enabled && j.counts.get(name).is_some_and(|n| *n > 0))
                .map(|j| Candidate {
                    id: &j.id,
                    counts: &j.counts,
                    failover: &j.spec.failover,
                    group: quota::group_of(&j.spec),
                    one: Demand::of(&j.spec, 1),
                });
            let room_of = |group: &str, location: &str, planned: &Demand, one: &Demand| {
                let mut used = state.usage(group, location);
                used.add(planned);
                location::room(state.quota(group).and_then(|q| q.locations.get(location)), &used, one)
            };
            location::plan(name, jobs, named, &open, &room_of)
        };
        let mut by_target: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
        for (job, mv) in &moves {
            for (l, n) in &mv.to {
                by_target.entry(l.clone()).or_default().push((job.clone(), *n));
            }
        }
        let mut capacity = Vec::new();
        for (target, tasks) in by_target {
            let requested: u32 = tasks.iter().map(|(_, n)| n).sum();
            match self.trial_in(&target, tasks).await {
                Ok(tried) => {
                    let needs: Vec<FleetNeed> = tried
                        .needs
                        .iter()
                        .map(|(g, agents, tasks)| FleetNeed {
                            instance_group: g.clone(),
                            agents: *agents,
                            tasks: *tasks,
                        })
                        .collect();
                    let why = if needs.is_empty() {
                        "no instance group there could take it".to_string()
                    } else {
                        let each: Vec<String> =
                            needs.iter().map(|n| format!("{} more agents of {}", n.agents, n.instance_group)).collect();
                        format!("the fleet there would need {}", each.join(", "))
                    };
                    location::trim(&mut moves, &target, &tried.placed, &why);
                    let placed = tried.placed.values().sum();
                    capacity.push(CapacityCheck {
                        location: target,
                        requested,
                        placed,
                        fleet_needs: needs,
                        error: None,
                    });
                }
                Err(e) => {
                    // Unknown capacity trims nothing: the instances go there and wait for room if need be.
                    tracing::warn!(target = %target, error = %e, "no trial placement for an evacuation");
                    capacity.push(CapacityCheck {
                        location: target,
                        requested,
                        placed: 0,
                        fleet_needs: Vec::new(),
                        error: Some(e),
                    });
                }
            }
        }
        let evacuation =
            Evacuation { started_ms: crate::clock::now_ms(), targets: named.to_vec(), moves, ..Evacuation::default() };
        (evacuation, capacity)
    }

    /// Commits `lever` on `name`, counting it.
    pub(crate) async fn pull(
        &self,
        name: &str,
        lever: Lever,
        meta: Meta,
        metrics: &LeverMetrics,
    ) -> Result<LeverPulled, ApiError> {
        let kind = lever.kind();
        let automatic = matches!(&lever, Lever::Evacuate(e) if e.automatic);
        let cmd = Command::Lever { location: name.to_string(), lever, meta };
        let pulled: LeverPulled = typed(self.proposer.commit_command(cmd).await?)?;
        metrics.actions.with_label_values(&[kind, if automatic { "true" } else { "false" }]).inc();
        tracing::info!(location = name, lever = kind, automatic, state = pulled.state.as_str(), "lever pulled");
        Ok(pulled)
    }
}

/// The cell that completes a move: the one that pulled the lever, or, while that one is seen down, the first of
/// the cells that are not.
pub(crate) fn driver(record: &LocationRecord, me: &str, all: &[String], seen: &dyn Elsewhere) -> String {
    let origin = &record.hlc.cell;
    if !origin.is_empty() && (origin == me || !seen.is_down(origin)) && all.contains(origin) {
        return origin.clone();
    }
    all.iter().find(|c| *c == me || !seen.is_down(c)).cloned().unwrap_or_else(|| me.to_string())
}

/// `[federation.failover]`'s view of one moment: what auto-failover decides from.
pub(crate) struct FailoverView<'a> {
    pub me: &'a str,
    pub all: &'a [String],
    /// How long this cell has not heard each other cell.
    pub silent: &'a BTreeMap<String, Duration>,
    /// Each other cell this one hears: how that cell sees the others (up, suspect, down).
    pub theirs: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub states: &'a BTreeMap<String, LeverState>,
    pub down: Duration,
    pub auto_after: Duration,
}

/// The location auto-failover evacuates now, with its evidence; none unless every guard holds: no location is
/// moving or moved already; this cell reaches a majority of all cells; the location's cell was silent here for
/// `auto_after`, and a majority of the other cells (this one among them) see it down; this cell is the first of the
/// cells it hears (so one cell decides).
pub(crate) fn auto_failover(v: &FailoverView<'_>) -> Option<(String, String)> {
    if v.states.values().any(|s| s.moved_out() || *s == LeverState::Restoring) {
        return None;
    }
    let heard: Vec<&String> =
        v.all.iter().filter(|c| *c != v.me && v.silent.get(*c).is_some_and(|s| *s < v.down)).collect();
    let reach = heard.len() + 1;
    if reach * 2 <= v.all.len() {
        return None;
    }
    for location in v.all.iter().filter(|l| *l != v.me) {
        let Some(silent) = v.silent.get(location).filter(|s| **s >= v.auto_after) else { continue };
        if v.states.get(location).is_some_and(|s| *s != LeverState::Active && *s != LeverState::Frozen) {
            continue;
        }
        let others = v.all.len() - 1;
        let mut agree = vec![v.me.to_string()];
        for c in &heard {
            if v.theirs.get(*c).and_then(|t| t.get(location)).is_some_and(|s| s == "down") {
                agree.push((*c).clone());
            }
        }
        if agree.len() * 2 <= others {
            continue;
        }
        let first = v.all.iter().filter(|c| *c != location).find(|c| *c == v.me || heard.contains(c));
        if first.map(String::as_str) != Some(v.me) {
            continue;
        }
        let evidence = format!(
            "{location} silent for {} s here; seen down by {} ({} of {others} other cells); {} reaches {reach} of {} cells",
            silent.as_secs(),
            agree.join(", "),
            agree.len(),
            v.me,
            v.all.len()
        );
        return Some((location.clone(), evidence));
    }
    None
}

/// The levers worker: every second, on every member its gauges; on the leader, moves completed and auto-failover.
pub(crate) struct Levers {
    handle: Handle,
    metrics: LeverMetrics,
    started: Instant,
    steps: u64,
    status: String,
}

impl Levers {
    pub(crate) fn new(handle: Handle, metrics: LeverMetrics) -> Levers {
        Levers { handle, metrics, started: Instant::now(), steps: 0, status: String::new() }
    }

    fn observe(&self, records: &[LocationRecord], progress: &BTreeMap<String, location::Progress>) {
        let m = &self.metrics;
        let mut names: BTreeSet<String> = all_locations(&self.handle.config).into_iter().collect();
        names.extend(records.iter().map(|r| r.name.clone()));
        for name in names {
            let record = records.iter().find(|r| r.name == name);
            let state = record.map_or(LeverState::Active, |r| r.state);
            for s in LeverState::ALL {
                m.state.with_label_values(&[&name, s.as_str()]).set(i64::from(s == state));
            }
            m.weight.with_label_values(&[&name]).set(i64::from(record.map_or(location::DEFAULT_WEIGHT, |r| r.weight)));
            let p = progress.get(&name).cloned().unwrap_or_default();
            for (phase, n) in [
                ("to_move", p.to_move),
                ("started_elsewhere", p.started_elsewhere),
                ("stopped_in_location", p.stopped_home),
                ("left_behind", p.left),
            ] {
                m.evacuation.with_label_values(&[&name, phase]).set(i64::from(n));
            }
        }
    }

    async fn tick(&mut self) -> Result<(), String> {
        let me = self.handle.config.cell.clone();
        let all = all_locations(&self.handle.config);
        let leader = crate::scheduling::Host::is_leader(&self.handle);
        let (records, progress, complete) = {
            let state = crate::scheduling::Host::read(&self.handle);
            let heard = self.handle.elsewhere();
            let seen = crate::desired::Here { state: &state, cell: &me, seen: &heard };
            let records: Vec<LocationRecord> = state.locations().cloned().collect();
            let mut progress = BTreeMap::new();
            let mut complete = Vec::new();
            for r in records.iter().filter(|r| r.plan().is_some()) {
                let jobs = r
                    .plan()
                    .into_iter()
                    .flat_map(|p| p.moves.keys())
                    .filter_map(|id| state.job(id))
                    .filter(|j| j.state == JobState::Enabled)
                    .map(|j| (j.id.as_str(), &j.counts));
                let p = location::progress(r, jobs, &seen);
                if p.done && driver(r, &me, &all, &seen) == me {
                    complete.push((r.name.clone(), r.state));
                }
                progress.insert(r.name.clone(), p);
            }
            (records, progress, complete)
        };
        self.observe(&records, &progress);
        if let Some((name, p)) = progress.iter().next() {
            self.status = format!("{name}: {} of {} moved instances running elsewhere", p.started_elsewhere, p.to_move);
        } else {
            self.status = "no move under way".into();
        }
        if !leader {
            return Ok(());
        }
        for (name, state) in complete {
            let (lever, why) = match state {
                LeverState::Evacuating => (Lever::Evacuated, "every moved instance runs elsewhere"),
                LeverState::Restoring => (Lever::Restored, "the location runs its own counts again"),
                _ => continue,
            };
            let meta = self.meta(why.to_string());
            if let Err(e) = self.handle.pull(&name, lever, meta, &self.metrics).await {
                // Another cell may have completed it first: the lever is then illegal here, and that is fine.
                tracing::debug!(location = %name, error = %e, "a move was not completed");
            }
        }
        self.failover(&records).await
    }

    fn meta(&self, why: String) -> Meta {
        Meta {
            who: "titan:levers".into(),
            why: Some(why),
            at_ms: crate::clock::now_ms(),
            request: uuid::Uuid::new_v4().to_string(),
            cell: self.handle.config.cell.clone(),
        }
    }

    async fn failover(&mut self, records: &[LocationRecord]) -> Result<(), String> {
        let config = &self.handle.config.federation;
        if !config.failover.enabled || !config.is_federated() {
            return Ok(());
        }
        let all = all_locations(&self.handle.config);
        let me = self.handle.config.cell.clone();
        let (silent, theirs) = self.handle.heard(self.started.elapsed());
        let states: BTreeMap<String, LeverState> = records.iter().map(|r| (r.name.clone(), r.state)).collect();
        let view = FailoverView {
            me: &me,
            all: &all,
            silent: &silent,
            theirs: &theirs,
            states: &states,
            down: Duration::from_millis(config.down_ms),
            auto_after: Duration::from_millis(config.failover.auto_after_ms),
        };
        let Some((location, evidence)) = auto_failover(&view) else { return Ok(()) };
        tracing::warn!(location = %location, evidence = %evidence, "auto-failover: evacuating a location");
        let (mut plan, _) = self.handle.plan_evacuation(&location, &[]).await;
        plan.automatic = true;
        plan.evidence = Some(evidence.clone());
        let meta = Meta { who: "titan:auto-failover".into(), ..self.meta(format!("auto-failover: {evidence}")) };
        self.handle.pull(&location, Lever::Evacuate(plan), meta, &self.metrics).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Worker for Levers {
    fn name(&self) -> String {
        "levers".into()
    }

    fn status(&self) -> String {
        self.status.clone()
    }

    async fn step(&mut self) -> Result<Next, String> {
        self.steps += 1;
        self.tick().await?;
        Ok(Next::Idle)
    }

    async fn wait(&mut self) -> Next {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Next::Busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    struct Case {
        silent: BTreeMap<String, Duration>,
        theirs: BTreeMap<String, BTreeMap<String, String>>,
        states: BTreeMap<String, LeverState>,
    }

    fn case(silent: &[(&str, u64)], theirs: &[(&str, &str, &str)]) -> Case {
        let mut t: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (who, of, state) in theirs {
            t.entry(who.to_string()).or_default().insert(of.to_string(), state.to_string());
        }
        Case {
            silent: silent.iter().map(|(c, s)| (c.to_string(), Duration::from_secs(*s))).collect(),
            theirs: t,
            states: BTreeMap::new(),
        }
    }

    fn decide(me: &str, all: &[String], c: &Case) -> Option<String> {
        auto_failover(&FailoverView {
            me,
            all,
            silent: &c.silent,
            theirs: &c.theirs,
            states: &c.states,
            down: Duration::from_secs(15),
            auto_after: Duration::from_secs(300),
        })
        .map(|(l, _)| l)
    }

    #[test]
    fn auto_failover_fires_once_for_a_dead_cell_seen_down_by_a_majority() {
        let all = names(&["dc1", "dc2", "dc3"]);
        let c = case(&[("dc1", 400), ("dc3", 1)], &[("dc3", "dc1", "down"), ("dc3", "dc2", "up")]);
        assert_eq!(decide("dc2", &all, &c).as_deref(), Some("dc1"), "dc2 is the first cell that hears a majority");
        let c3 = case(&[("dc1", 400), ("dc2", 1)], &[("dc2", "dc1", "down"), ("dc2", "dc3", "up")]);
        assert_eq!(decide("dc3", &all, &c3), None, "dc3 leaves it to dc2");
        let early = case(&[("dc1", 200), ("dc3", 1)], &[("dc3", "dc1", "down")]);
        assert_eq!(decide("dc2", &all, &early), None, "not silent for auto_after yet");
        let disagree = case(&[("dc1", 400), ("dc3", 1)], &[("dc3", "dc1", "up")]);
        assert_eq!(decide("dc2", &all, &disagree), None, "dc3 still hears dc1: a partition between dc2 and dc1");
    }

    #[test]
    fn an_isolated_cell_evacuates_nothing_and_one_move_at_a_time() {
        let all = names(&["dc1", "dc2", "dc3"]);
        let alone = case(&[("dc1", 400), ("dc3", 400)], &[]);
        assert_eq!(decide("dc2", &all, &alone), None, "dc2 reaches 1 of 3 cells");
        let mut busy = case(&[("dc1", 400), ("dc3", 1)], &[("dc3", "dc1", "down")]);
        busy.states.insert("dc3".into(), LeverState::Evacuated);
        assert_eq!(decide("dc2", &all, &busy), None, "a location is already evacuated");
        busy.states.insert("dc3".into(), LeverState::Frozen);
        assert_eq!(decide("dc2", &all, &busy).as_deref(), Some("dc1"), "a frozen one does not block");
    }
}
