//! The autoscaler worker: on the leader, every `interval_ms`, each configured instance group is looked at
//! (`autoscaling::groups`), its policy decides a size, the pure drain-safe `plan` says what to do, and this shell does
//! it: grow the fleet, drain or put back agents through Raft (so nothing new lands on an agent being removed), and
//! remove only instances whose agent is drained and empty (checked again against the state just before). A failing
//! or slow fleet backs off and is counted; it never holds up scheduling, which runs in its own worker.

use std::collections::VecDeque;

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec};
use titan_api::fleet::{AutoscalerView, DecisionView, GroupView};
use titan_autoscaler::config::{FleetKind, GroupConfig};
use titan_autoscaler::fleet::{Fleet, FleetError, InstanceState};
use titan_autoscaler::policy::{History, Observation, Policy};

use super::*;

/// The autoscaler's metrics.
#[derive(Clone)]
pub(crate) struct FleetMetrics {
    desired: IntGaugeVec,
    instances: IntGaugeVec,
    shortfall: IntGaugeVec,
    max: IntGaugeVec,
    idle: IntGaugeVec,
    forecast: GaugeVec,
    decisions: IntCounterVec,
    launches: IntCounterVec,
    terminations: IntCounterVec,
    errors: IntCounterVec,
}

impl FleetMetrics {
    pub(crate) fn new(registry: &Registry, cell: &str, node: u64) -> Result<FleetMetrics, prometheus::Error> {
        use crate::metrics::fleet::*;
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(FleetMetrics {
            desired: r.gauge_vec(&DESIRED)?,
            instances: r.gauge_vec(&INSTANCES)?,
            shortfall: r.gauge_vec(&SHORTFALL)?,
            max: r.gauge_vec(&MAX)?,
            idle: r.gauge_vec(&IDLE)?,
            forecast: r.float_gauge_vec(&FORECAST)?,
            decisions: r.counter_vec(&DECISIONS)?,
            launches: r.counter_vec(&LAUNCHES)?,
            terminations: r.counter_vec(&TERMINATIONS)?,
            errors: r.counter_vec(&ERRORS)?,
        })
    }
}

/// The most decisions a group's view keeps.
const DECISIONS_KEPT: usize = 20;

/// What the API shows, shared with the member.
pub(crate) type Status = Arc<std::sync::Mutex<AutoscalerView>>;

struct Group {
    config: GroupConfig,
    fleet: Box<dyn Fleet>,
    policy: Box<dyn Policy>,
    /// This minute's highest demand, recorded through Raft once the minute is over.
    sample: Option<(u64, u32)>,
    /// The instances last protected from the fleet's own scale-in (those whose agent holds tasks).
    protected: Vec<String>,
    decisions: VecDeque<DecisionView>,
    backoff: Option<(Instant, Duration)>,
    error: Option<String>,
    view: GroupView,
}

pub(crate) struct Autoscaler {
    handle: Handle,
    groups: Vec<Group>,
    metrics: FleetMetrics,
    status: Status,
}

/// The longest a fleet call may take before it counts as a timeout (and the group backs off).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn bounded<T>(call: titan_autoscaler::fleet::FleetFuture<'_, T>) -> Result<T, FleetError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => answer,
        Err(_) => Err(FleetError::Timeout(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
    }
}

/// Builds a group's fleet from its settings.
fn fleet_of(config: &CellConfig, g: &GroupConfig) -> Result<Box<dyn Fleet>, String> {
    match g.fleet {
        FleetKind::Simulated => {
            Ok(Box::new(titan_autoscaler::fleet::Simulated::new(g.boot_delay_ms, crate::clock::now_ms)))
        }
        FleetKind::Local => {
            let binary = std::env::current_exe().map_err(|e| format!("the titan binary: {e}"))?;
            // The agents reach the cell as its members reach each other (`listen` may be `0.0.0.0`).
            let cell_addr = if config.peers.is_empty() {
                config.advertised().to_string()
            } else {
                config.peers.values().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
            };
            let index = config.autoscaler.groups.iter().position(|o| o.name == g.name).unwrap_or(0) as u16;
            Ok(Box::new(titan_autoscaler::local::Local::new(titan_autoscaler::local::LocalSettings {
                binary,
                cell_addr,
                dir: config.data_dir.join("fleet").join(&g.name),
                group: g.name.clone(),
                cpus: g.slots,
                memory_mib: g.memory_mib,
                runtime: g.local_runtime.clone(),
                first_port: config.listen.port().saturating_add(100 + 40 * index),
                // Cells on one machine (`titan dev --cells`, 2 ports apart) take different blocks of 1,000.
                token_file: config.auth.enabled.then(|| config.bootstrap_token_file()),
                tls: config.tls.as_ref().map(|t| titan_autoscaler::local::LocalTls {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    ca: t.ca.clone(),
                }),
                port_blocks_from: 42_000u16
                    .saturating_add(4_000 * index)
                    .saturating_add(1_000 * ((config.listen.port() / 2) % 4)),
            })))
        }
        FleetKind::Ec2 => titan_autoscaler::ec2_fleet(g.asg.as_deref().unwrap_or_default()),
    }
}

impl Autoscaler {
    pub(crate) fn new(handle: Handle, metrics: FleetMetrics, status: Status) -> Result<Autoscaler, String> {
        let config = handle.config.clone();
        let mut groups = Vec::new();
        for g in &config.autoscaler.groups {
            groups.push(Group {
                fleet: fleet_of(&config, g)?,
                policy: g.policy.build(),
                config: g.clone(),
                sample: None,
                protected: Vec::new(),
                decisions: VecDeque::new(),
                backoff: None,
                error: None,
                view: GroupView::default(),
            });
        }
        // Every group's counters exist from the start at 0 (a panel or an alert over them then has a series to
        // read before the first launch or error, and `increase` counts the first one).
        for g in &groups {
            let name = g.config.name.as_str();
            metrics.max.with_label_values(&[name]).set(i64::from(g.config.max));
            metrics.launches.with_label_values(&[name]);
            metrics.terminations.with_label_values(&[name]);
            for direction in ["up", "down"] {
                metrics.decisions.with_label_values(&[name, direction, g.policy.name()]);
            }
            for kind in FleetError::KINDS {
                metrics.errors.with_label_values(&[name, kind]);
            }
        }
        Ok(Autoscaler { handle, groups, metrics, status })
    }

    fn meta(&self, why: String) -> Meta {
        Meta {
            who: "titan:autoscaler".into(),
            why: Some(why),
            at_ms: crate::clock::now_ms(),
            request: uuid::Uuid::new_v4().to_string(),
            cell: self.handle.config.cell.clone(),
        }
    }

    async fn set_agent(&self, id: &str, state: AgentState, why: &str) -> Result<(), String> {
        let cmd = Command::SetAgentState { id: id.to_string(), state, meta: self.meta(why.to_string()) };
        self.handle.proposer.commit_command(cmd).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// One look at every group.
    async fn tick(&mut self) {
        let views = {
            let state = crate::scheduling::Host::read(&self.handle);
            let configs: Vec<GroupConfig> = self.groups.iter().map(|g| g.config.clone()).collect();
            crate::autoscaling::groups(&state, &configs)
        };
        for i in 0..self.groups.len() {
            let name = self.groups[i].config.name.clone();
            let Some(view) = views.get(&name) else { continue };
            if let Some((until, _)) = self.groups[i].backoff {
                if Instant::now() < until {
                    continue;
                }
            }
            match self.group_step(i, view).await {
                Ok(()) => {
                    self.groups[i].backoff = None;
                    self.groups[i].error = None;
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&[&name, e.kind()]).inc();
                    // An event per failure that starts a back-off (not per retry).
                    if self.groups[i].backoff.is_none() {
                        let cmd = Command::Fleet {
                            group: name.clone(),
                            samples: Vec::new(),
                            decision: None,
                            meta: self.meta(e.to_string()),
                            error: Some(format!("{}: {e}", e.kind())),
                        };
                        if let Err(c) = self.handle.proposer.commit_command(cmd).await {
                            tracing::warn!(group = %name, error = %c, "the fleet error's event was not committed");
                        }
                    }
                    let g = &mut self.groups[i];
                    let wait = g.backoff.map_or(Duration::from_secs(1), |(_, w)| (w * 2).min(Duration::from_secs(60)));
                    tracing::warn!(group = %name, error = %e, retry_in_s = wait.as_secs(), "fleet call failed");
                    g.backoff = Some((Instant::now() + wait, wait));
                    g.error = Some(e.to_string());
                }
            }
        }
        self.publish(true);
    }

    async fn group_step(&mut self, i: usize, view: &crate::autoscaling::Group) -> Result<(), FleetError> {
        let instances = bounded(self.groups[i].fleet.describe()).await?;
        let now = crate::clock::now_ms();
        let minute = now / 60_000;
        let g = &mut self.groups[i];
        let c = g.config.clone();
        let with_agent = |id: &str| view.agents.iter().any(|a| a.instance == id);
        let live: Vec<_> = instances.iter().filter(|x| x.state != InstanceState::Terminating).collect();
        let ready = live.iter().filter(|x| with_agent(&x.id)).count() as u32;
        let booting = live.len() as u32 - ready;
        let demand = view.used_slots + view.pending_slots;
        let mut samples = Vec::new();
        match g.sample {
            Some((m, peak)) if m == minute => g.sample = Some((m, peak.max(demand))),
            Some(done) => {
                samples.push(done);
                g.sample = Some((minute, demand));
            }
            None => g.sample = Some((minute, demand)),
        }
        // The history is the replicated one, so a new leader's policy knows the past.
        let decision = {
            let state = crate::scheduling::Host::read(&self.handle);
            let empty = History::default();
            let o = Observation {
                minute,
                now_ms: now,
                demand,
                ready,
                booting,
                shortfall: view.shortfall,
                slots_per_instance: c.slots,
                boot_minutes: (c.boot_delay_ms / 60_000) as u32,
                min: c.min,
                max: c.max,
                history: state.fleet_history(&c.name).unwrap_or(&empty),
            };
            g.policy.decide(&o)
        };
        let plan = titan_autoscaler::plan::plan(&titan_autoscaler::plan::View {
            instances: &instances,
            agents: &view.agents,
            release_order: &view.release_order,
            desired: decision.desired,
            max_drain_share: c.max_drain_share,
            now_ms: now,
            boot_grace_ms: c.boot_grace_ms,
        });
        let policy = g.policy.name();
        // Busy instances are protected from the fleet's own scale-in (AWS's), idle ones not; told on change only.
        let mut busy: Vec<String> = view.agents.iter().filter(|a| a.tasks > 0).map(|a| a.instance.clone()).collect();
        busy.sort();
        if busy != g.protected {
            let idle: Vec<String> = view
                .agents
                .iter()
                .filter(|a| a.tasks == 0 && g.protected.contains(&a.instance))
                .map(|a| a.instance.clone())
                .collect();
            bounded(g.fleet.protect(busy.clone(), idle)).await?;
            g.protected = busy;
        }
        // The view first, so a failing action still shows what was wanted.
        let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
        for x in &instances {
            *by_state.entry(x.state.as_str().to_string()).or_insert(0) += 1;
        }
        let idle = view.agents.iter().filter(|a| a.tasks == 0 && !a.draining).count() as u32;
        g.view = GroupView {
            name: c.name.clone(),
            fleet: format!("{:?}", c.fleet).to_lowercase(),
            policy: policy.to_string(),
            min: c.min,
            max: c.max,
            slots: c.slots,
            desired: decision.desired,
            instances: by_state.clone(),
            booting,
            agents: view.agent_states.clone(),
            idle,
            demand_slots: demand,
            shortfall: view.shortfall,
            forecast_slots: decision.forecast,
            decisions: g.decisions.iter().cloned().collect(),
            error: g.error.clone(),
        };
        let m = &self.metrics;
        m.desired.with_label_values(&[&c.name]).set(i64::from(decision.desired));
        for s in [InstanceState::Pending, InstanceState::Running, InstanceState::Terminating] {
            let n = by_state.get(s.as_str()).copied().unwrap_or(0);
            m.instances.with_label_values(&[&c.name, s.as_str()]).set(i64::from(n));
        }
        m.instances.with_label_values(&[&c.name, "booting"]).set(i64::from(booting));
        m.shortfall.with_label_values(&[&c.name]).set(i64::from(view.pending_slots));
        m.idle.with_label_values(&[&c.name]).set(i64::from(idle * c.slots));
        m.forecast.with_label_values(&[&c.name]).set(f64::from(decision.forecast.unwrap_or(0)));
        if plan.is_empty() {
            if !samples.is_empty() {
                self.record(&c.name, samples, None).await;
            }
            return Ok(());
        }
        let mut actions = Vec::new();
        let up = plan.grow_to.is_some() || !plan.undrain.is_empty();
        for a in &plan.undrain {
            self.set_agent(a, AgentState::Active, &decision.reason).await.map_err(FleetError::Other)?;
            actions.push(format!("put agent {a} back to work"));
        }
        if let Some(size) = plan.grow_to {
            let before = live.len() as u32;
            bounded(self.groups[i].fleet.grow(size)).await?;
            let launched = size.saturating_sub(before);
            self.metrics.launches.with_label_values(&[&c.name]).inc_by(u64::from(launched));
            actions.push(format!("launched {launched}"));
        }
        for a in &plan.drain {
            self.set_agent(a, AgentState::Draining, &decision.reason).await.map_err(FleetError::Other)?;
            actions.push(format!("draining agent {a}"));
        }
        if !plan.remove.is_empty() {
            // Checked again against the state now: an instance whose agent holds a task is never removed.
            let safe: Vec<String> = {
                let state = crate::scheduling::Host::read(&self.handle);
                plan.remove
                    .iter()
                    .filter(|inst| {
                        let agent = state.agents().find(|a| {
                            a.registration.attributes.get(crate::autoscaling::INSTANCE_ATTRIBUTE) == Some(*inst)
                        });
                        agent.is_none_or(|a| state.tasks_on_agent(&a.registration.id).all(|t| t.is_terminal()))
                    })
                    .cloned()
                    .collect()
            };
            if !safe.is_empty() {
                bounded(self.groups[i].fleet.remove(safe.clone())).await?;
                self.metrics.terminations.with_label_values(&[&c.name]).inc_by(safe.len() as u64);
                actions.push(format!("removed {}", safe.join(", ")));
                // Their agents are gone for good: not waited for as unreachable ones would be.
                for a in view.agents.iter().filter(|a| safe.contains(&a.instance)) {
                    self.set_agent(&a.id, AgentState::Gone, "its instance was removed")
                        .await
                        .map_err(FleetError::Other)?;
                }
            }
        }
        let direction = if up { "up" } else { "down" };
        self.metrics.decisions.with_label_values(&[&c.name, direction, policy]).inc();
        tracing::info!(group = %c.name, desired = decision.desired, reason = %decision.reason, actions = ?actions, "autoscaler decision");
        let record = crate::command::FleetDecision {
            desired: decision.desired,
            direction: direction.into(),
            reason: decision.reason.clone(),
            actions: actions.clone(),
        };
        self.record(&c.name, samples, Some(record)).await;
        let g = &mut self.groups[i];
        g.decisions.push_back(DecisionView {
            at_ms: now,
            direction: direction.into(),
            desired: decision.desired,
            reason: decision.reason,
            actions,
        });
        while g.decisions.len() > DECISIONS_KEPT {
            g.decisions.pop_front();
        }
        g.view.decisions = g.decisions.iter().cloned().collect();
        Ok(())
    }

    /// Commits a group's demand samples and a decision that acted (the events' source). A failure is logged: the
    /// next minute's record carries on.
    async fn record(&self, group: &str, samples: Vec<(u64, u32)>, decision: Option<crate::command::FleetDecision>) {
        let why = decision.as_ref().map(|d| d.reason.clone()).unwrap_or_else(|| "demand sample".into());
        let cmd = Command::Fleet { group: group.to_string(), samples, decision, meta: self.meta(why), error: None };
        if let Err(e) = self.handle.proposer.commit_command(cmd).await {
            tracing::warn!(group, error = %e, "the autoscaler's record was not committed");
        }
    }

    fn publish(&self, leading: bool) {
        let groups = self.groups.iter().map(|g| GroupView { error: g.error.clone(), ..g.view.clone() }).collect();
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = AutoscalerView { leading, groups };
    }
}

impl Worker for Autoscaler {
    fn name(&self) -> String {
        "autoscaler".into()
    }

    fn status(&self) -> String {
        let groups: Vec<String> =
            self.groups.iter().map(|g| format!("{} at {}", g.config.name, g.view.desired)).collect();
        groups.join(", ")
    }

    async fn step(&mut self) -> Result<Next, String> {
        if crate::scheduling::Host::is_leader(&self.handle) {
            self.tick().await;
        } else {
            self.publish(false);
        }
        Ok(Next::Idle)
    }

    async fn wait(&mut self) -> Next {
        tokio::time::sleep(Duration::from_millis(self.handle.config.autoscaler.interval_ms)).await;
        Next::Busy
    }
}
