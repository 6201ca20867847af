//! Property tests over random clusters: every placement keeps the invariants, answers every request once,
//! re-validates on its snapshot, leaves nothing pending that could have been placed, and, in compat mode,
//! matches a naive oracle that scores every agent for every task.

use std::collections::BTreeMap;

use fenzo::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct AgentSpec {
    cpus: u64,
    mem: u64,
    zone: usize,
    eligible: bool,
    ports: u16,
    gpus: u64,
}

#[derive(Clone, Debug)]
struct TaskSpec {
    cpu_milli: u64,
    mem: u64,
    ports: u32,
    gpus: u64,
    job: usize,
    tier: u8,
    group: bool,
}

fn agent_spec() -> impl Strategy<Value = AgentSpec> {
    (
        prop::sample::select(vec![1u64, 2, 4, 8, 16]),
        prop::sample::select(vec![1_024u64, 4_096, 16_384, 65_536]),
        0..3usize,
        prop::bool::weighted(0.9),
        0..4u16,
        prop::sample::select(vec![0u64, 0, 0, 1, 2]),
    )
        .prop_map(|(cpus, mem, zone, eligible, ports, gpus)| AgentSpec { cpus, mem, zone, eligible, ports, gpus })
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (1..40u64, 0..8_192u64, 0..3u32, prop::sample::select(vec![0u64, 0, 0, 0, 1]), 0..5usize, 0..2u8, any::<bool>())
        .prop_map(|(c, mem, ports, gpus, job, tier, group)| TaskSpec {
            cpu_milli: c * 100,
            mem,
            ports,
            gpus,
            job,
            tier,
            group,
        })
}

/// One constraint per job, so that a job's tasks agree (as the scheduler will submit them).
fn job_constraint(kind: usize, job: usize) -> Option<Constraint> {
    let zone = ["a", "b", "c"][job % 3].to_string();
    match kind {
        0 => None,
        1 => Some(Constraint::Unique { scope: None, by: By::Host }),
        2 => Some(Constraint::MaxPer { scope: None, by: By::Attribute("zone".into()), max: 2 }),
        3 => Some(Constraint::Balanced { scope: None, attribute: "zone".into(), expected: 3 }),
        4 => Some(Constraint::AttributeEquals { name: "zone".into(), value: zone }),
        5 => Some(Constraint::AttributeNotEquals { name: "zone".into(), value: zone }),
        6 => Some(Constraint::AttributeIn { name: "zone".into(), values: vec![zone, "x".into()] }),
        _ => Some(Constraint::ExclusiveHost),
    }
}

fn build(agents: &[AgentSpec], existing: &[(TaskSpec, usize)]) -> ClusterSnapshot {
    let mut snap = ClusterSnapshot::new();
    for (i, a) in agents.iter().enumerate() {
        // Ids and hostnames sort differently, so compat's hostname tie-break is really exercised.
        let mut agent = Agent::new(format!("agent-{:02}", agents.len() - i))
            .hostname(format!("host-{i:02}"))
            .cpus(a.cpus as f64)
            .mem_mib(a.mem)
            .zone(["a", "b", "c"][a.zone])
            .scalar("gpu", a.gpus)
            .eligible(a.eligible);
        if a.ports > 0 {
            agent = agent.ports(40_000, 40_000 + a.ports - 1);
        }
        snap.add_agent(agent).expect("distinct ids");
    }
    let ids: Vec<String> = snap.agents().map(|a| a.id.clone()).collect();
    for (k, (t, at)) in existing.iter().enumerate() {
        let req = TaskRequest::new(format!("old-{k}"), format!("old-job-{}", t.job))
            .cpus(t.cpu_milli as f64 / 1000.0)
            .mem_mib(t.mem);
        // Existing tasks that do not fit are simply not there.
        let _ = snap.assign(&req, &ids[at % ids.len()], None);
    }
    snap
}

fn requests(tasks: &[TaskSpec], kinds: &[usize], with_queue: bool) -> Vec<TaskRequest> {
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = TaskRequest::new(format!("t{i:03}"), format!("job-{}", t.job))
                .cpus(t.cpu_milli as f64 / 1000.0)
                .mem_mib(t.mem)
                .ports(t.ports)
                .scalar("gpu", t.gpus);
            if let Some(c) = job_constraint(kinds[t.job], t.job) {
                r = r.constraint(c);
            }
            if with_queue {
                r = r.tier(t.tier);
                if t.group {
                    r = r.capacity_group("g");
                }
            }
            r
        })
        .collect()
}

fn fitness(k: usize) -> Fitness {
    match k {
        0 => Fitness::BinPackCpuMemory,
        1 => Fitness::BinPackCpu,
        2 => Fitness::BinPackMemory,
        3 => Fitness::Spread,
        4 => Fitness::BinPackCpuMemoryNetwork,
        _ => Fitness::Weighted(vec![(Fitness::Spread, 1.0), (Fitness::BinPackCpu, 2.0)]),
    }
}

/// The naive compat oracle: every agent scored for every task, in order, by Fenzo's formula.
fn oracle(snap: &ClusterSnapshot, reqs: &[TaskRequest], fit: &Fitness) -> BTreeMap<String, String> {
    let mut snap = snap.clone();
    let mut out = BTreeMap::new();
    let agents: Vec<Agent> = snap.agents().cloned().collect();
    for r in reqs {
        let mut best: Option<(f64, String, String)> = None;
        for a in &agents {
            let mut trial = snap.clone();
            if trial.assign(r, &a.id, None).is_err() {
                continue;
            }
            let (used, _) = snap.usage(&a.id).expect("known");
            let part = |u: u64, w: u64, t: u64| {
                if t == 0 {
                    0.0
                } else {
                    (u + w) as f64 / t as f64
                }
            };
            let cpu = part(used.cpu_milli, r.resources.cpu_milli, a.total.cpu_milli);
            let mem = part(used.mem_mib, r.resources.mem_mib, a.total.mem_mib);
            let f = match fit {
                Fitness::BinPackCpu => cpu,
                Fitness::BinPackMemory => mem,
                Fitness::BinPackCpuMemory => (cpu + mem) / 2.0,
                Fitness::Spread => 1.0 - (cpu + mem) / 2.0,
                other => unreachable!("the oracle is only run on {other:?}'s siblings"),
            };
            let score = 0.50 + 0.35 * f;
            let better = match &best {
                None => true,
                Some((s, host, _)) => score > *s || (score == *s && a.hostname < *host),
            };
            if better {
                best = Some((score, a.hostname.clone(), a.id.clone()));
            }
        }
        if let Some((_, _, id)) = best {
            snap.assign(r, &id, None).expect("the trial assignment succeeded");
            out.insert(r.id.clone(), id);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn placements_keep_every_invariant(
        agents in prop::collection::vec(agent_spec(), 1..24),
        existing in prop::collection::vec((task_spec(), 0..24usize), 0..12),
        tasks in prop::collection::vec(task_spec(), 0..60),
        kinds in prop::collection::vec(0..8usize, 5),
        fit in 0..6usize,
        best in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let snap = build(&agents, &existing);
        let reqs = requests(&tasks, &kinds, true);
        let mut groups = BTreeMap::new();
        groups.insert("g".to_string(), CapacityGroup { max_cpu_milli: Some(3_000), ..Default::default() });
        let config = PlacementConfig {
            mode: if best { Mode::Best } else { Mode::Compat },
            fitness: fitness(fit),
            seed,
            capacity_groups: groups,
            autoscale: Some(AutoscaleConfig::default()),
            ..PlacementConfig::default()
        };
        let p = place(&snap, &reqs, &config);
        prop_assert_eq!(verify(&snap, &reqs, &p), Vec::<Violation>::new());
        prop_assert_eq!(p.assignments.len() + p.unplaced.len(), reqs.len());
        let mut after = snap.clone();
        prop_assert_eq!(after.apply(&p, &reqs), Vec::<SnapshotError>::new());
        // Nothing pending could have been placed (balanced rules loosen as a job's other tasks land, so they
        // are not held to this).
        for u in &p.unplaced {
            let r = reqs.iter().find(|r| r.id == u.task_id).expect("unplaced tasks were requested");
            if !matches!(u.reason, Pending::NoFit(_)) || r.constraints.iter().any(|c| matches!(c, Constraint::Balanced { .. })) {
                continue;
            }
            for a in after.agents() {
                let mut trial = after.clone();
                prop_assert!(trial.assign(r, &a.id, None).is_err(), "{} fits on {} but is pending", r.id, a.id);
            }
        }
        // Same inputs, same placement.
        prop_assert_eq!(place(&snap, &reqs, &config), p);
    }

    #[test]
    fn compat_search_matches_the_naive_oracle(
        agents in prop::collection::vec(agent_spec(), 1..20),
        existing in prop::collection::vec((task_spec(), 0..20usize), 0..10),
        tasks in prop::collection::vec(task_spec(), 0..40),
        kinds in prop::collection::vec(0..8usize, 5),
        fit in 0..4usize,
    ) {
        let snap = build(&agents, &existing);
        let reqs = requests(&tasks, &kinds, false);
        let fitness = fitness(fit);
        let config = PlacementConfig { fitness: fitness.clone(), ..PlacementConfig::compat() };
        let p = place(&snap, &reqs, &config);
        let got: BTreeMap<String, String> =
            p.assignments.iter().map(|a| (a.task_id.clone(), a.agent_id.clone())).collect();
        prop_assert_eq!(got, oracle(&snap, &reqs, &fitness));
    }
}
