//! Placement behaviour through the public API: every filter, scorer, queue rule and explanation, with the
//! invariants checked after every placement.

use std::collections::BTreeMap;

use fenzo::*;

fn snapshot(agents: Vec<Agent>) -> ClusterSnapshot {
    ClusterSnapshot::with_agents(agents).expect("test agents have distinct ids")
}

fn agent(id: &str) -> Agent {
    Agent::new(id).cpus(8.0).mem_mib(16_384).disk_mib(100_000).net_mbps(1_000).ports(31_000, 31_009)
}

fn task(id: &str) -> TaskRequest {
    TaskRequest::new(id, "job").cpus(1.0).mem_mib(1_024)
}

/// Places and checks the invariants; returns task id → agent id for the placed ones.
fn check_place(
    snap: &ClusterSnapshot,
    reqs: &[TaskRequest],
    config: &PlacementConfig,
) -> (BTreeMap<String, String>, Placement) {
    let p = place(snap, reqs, config);
    let violations = verify(snap, reqs, &p);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(p.assignments.len() + p.unplaced.len(), reqs.len(), "every request is answered once");
    let mut applied = snap.clone();
    assert!(applied.apply(&p, reqs).is_empty(), "a placement re-validates on the snapshot it was made on");
    (p.assignments.iter().map(|a| (a.task_id.clone(), a.agent_id.clone())).collect(), p)
}

fn on(map: &BTreeMap<String, String>, task: &str) -> Option<String> {
    map.get(task).cloned()
}

#[test]
fn bin_packing_fills_the_fullest_agent_and_spreading_the_emptiest() {
    let mut snap = snapshot(vec![agent("a1"), agent("a2"), agent("a3")]);
    snap.assign(&task("old1").cpus(4.0), "a2", None).expect("fits");
    snap.assign(&task("old2").cpus(2.0), "a3", None).expect("fits");
    for mode in [Mode::Compat, Mode::Best] {
        let config = PlacementConfig { mode, ..PlacementConfig::default() };
        let (got, _) = check_place(&snap, &[task("t")], &config);
        assert_eq!(on(&got, "t").as_deref(), Some("a2"), "{mode:?}");
        let config = PlacementConfig { mode, fitness: Fitness::Spread, ..PlacementConfig::default() };
        let (got, _) = check_place(&snap, &[task("t")], &config);
        assert_eq!(on(&got, "t").as_deref(), Some("a1"), "{mode:?}");
    }
}

#[test]
fn each_bin_packer_follows_its_own_dimension() {
    let mut snap = snapshot(vec![agent("cpu-heavy"), agent("mem-heavy"), agent("net-heavy")]);
    snap.assign(&task("x").cpus(6.0).mem_mib(1_000), "cpu-heavy", None).expect("fits");
    snap.assign(&task("y").cpus(1.0).mem_mib(12_000), "mem-heavy", None).expect("fits");
    snap.assign(&task("z").cpus(0.5).mem_mib(100).net_mbps(900), "net-heavy", None).expect("fits");
    let t = [task("t").net_mbps(10)];
    for (fitness, want) in [
        (Fitness::BinPackCpu, "cpu-heavy"),
        (Fitness::BinPackMemory, "mem-heavy"),
        (Fitness::Weighted(vec![(Fitness::BinPackCpuMemoryNetwork, 1.0)]), "net-heavy"),
    ] {
        for mode in [Mode::Compat, Mode::Best] {
            let config = PlacementConfig { mode, fitness: fitness.clone(), ..PlacementConfig::default() };
            let (got, _) = check_place(&snap, &t, &config);
            assert_eq!(on(&got, "t").as_deref(), Some(want), "{fitness:?} {mode:?}");
        }
    }
}

#[test]
fn compat_ties_go_to_the_smallest_hostname() {
    let snap =
        snapshot(vec![agent("z").hostname("host-2"), agent("y").hostname("host-0"), agent("x").hostname("host-1")]);
    let (got, _) = check_place(&snap, &[task("t")], &PlacementConfig::compat());
    assert_eq!(on(&got, "t").as_deref(), Some("y"));
}

#[test]
fn best_mode_tie_breaks_follow_the_seed() {
    let snap = snapshot((0..16).map(|i| agent(&format!("a{i:02}"))).collect());
    let pick = |seed| {
        let config = PlacementConfig { seed, fitness: Fitness::Spread, ..PlacementConfig::default() };
        check_place(&snap, &[task("t")], &config).0["t"].clone()
    };
    assert_eq!(pick(7), pick(7), "same seed, same choice");
    let choices: std::collections::BTreeSet<String> = (0..8).map(pick).collect();
    assert!(choices.len() > 1, "different seeds spread ties: {choices:?}");
}

#[test]
fn resources_ports_and_scalars_are_allocated_and_exhaust() {
    let snap = snapshot(vec![agent("a1").scalar("gpu", 2)]);
    let reqs = [
        task("t1").ports(3).scalar("gpu", 1),
        task("t2").ports(3).scalar("gpu", 1),
        task("t3").scalar("gpu", 1),
        task("t4").ports(5),
        task("t5").disk_mib(200_000),
    ];
    let (got, p) = check_place(&snap, &reqs, &PlacementConfig::default());
    assert!(got.contains_key("t1") && got.contains_key("t2"));
    let mut ports: Vec<u16> = p.assignments.iter().flat_map(|a| a.ports.clone()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6, "three ports each, none shared: {ports:?}");
    assert!(ports.iter().all(|p| (31_000..31_010).contains(p)), "{ports:?}");
    let reason = |id: &str| p.unplaced.iter().find(|u| u.task_id == id).map(|u| u.reason.clone());
    let no_fit = |id: &str| match reason(id) {
        Some(Pending::NoFit(e)) => e,
        other => panic!("{id}: {other:?}"),
    };
    assert_eq!(no_fit("t3").rejected.keys().next(), Some(&Rejection::Exhausted(ResourceKind::Scalar("gpu".into()))));
    assert_eq!(no_fit("t4").rejected.keys().next(), Some(&Rejection::Exhausted(ResourceKind::Ports)));
    assert_eq!(no_fit("t5").larger_than_any_agent, Some(ResourceKind::Disk));
}

#[test]
fn ineligible_agents_take_nothing_and_exclusive_hosts_stay_alone() {
    let mut snap = snapshot(vec![agent("a1"), agent("a2"), agent("a3")]);
    snap.set_eligible("a3", false).expect("known agent");
    snap.assign(&task("busy"), "a2", None).expect("fits");
    let reqs = [
        task("solo").constraint(Constraint::ExclusiveHost),
        task("other"),
        task("solo2").constraint(Constraint::ExclusiveHost),
    ];
    for mode in [Mode::Compat, Mode::Best] {
        let config = PlacementConfig { mode, ..PlacementConfig::default() };
        let (got, p) = check_place(&snap, &reqs, &config);
        assert_eq!(on(&got, "solo").as_deref(), Some("a1"), "{mode:?}");
        assert_eq!(on(&got, "other").as_deref(), Some("a2"), "{mode:?}");
        assert!(!got.contains_key("solo2"), "{mode:?}");
        let Pending::NoFit(e) = &p.unplaced[0].reason else { panic!("no fit expected") };
        assert_eq!(e.rejected.get(&Rejection::Ineligible), Some(&1));
        assert_eq!(e.rejected.get(&Rejection::OccupiedExclusively), Some(&1));
        assert_eq!(e.rejected.get(&Rejection::Constraint("exclusive host".into())), Some(&1));
        assert_eq!(e.to_string(), "0/3 agents fit: 1 agent not eligible (disabled or draining), 1 agent runs an exclusive-host task, 1 constraint exclusive host");
    }
}

fn zoned() -> ClusterSnapshot {
    snapshot(
        (0..6)
            .map(|i| agent(&format!("a{i}")).zone(["a", "b", "c"][i % 3]).attr("type", if i < 3 { "m5" } else { "r5" }))
            .collect(),
    )
}

#[test]
fn attribute_constraints_pick_matching_agents() {
    let eq = |n: &str, v: &str| Constraint::AttributeEquals { name: n.into(), value: v.into() };
    let reqs = [
        task("eq").constraint(eq("zone", "b")),
        task("neq").constraint(Constraint::AttributeNotEquals { name: "type".into(), value: "m5".into() }),
        task("in").constraint(Constraint::AttributeIn { name: "zone".into(), values: vec!["c".into(), "x".into()] }),
        task("none").constraint(eq("zone", "nowhere")),
        task("both").constraint(eq("zone", "a")).constraint(eq("type", "r5")),
    ];
    for mode in [Mode::Compat, Mode::Best] {
        let config = PlacementConfig { mode, ..PlacementConfig::default() };
        let (got, p) = check_place(&zoned(), &reqs, &config);
        assert!(["a1", "a4"].contains(&got["eq"].as_str()));
        assert!(["a3", "a4", "a5"].contains(&got["neq"].as_str()));
        assert!(["a2", "a5"].contains(&got["in"].as_str()));
        assert_eq!(got["both"], "a3");
        assert_eq!(p.unplaced.len(), 1);
        let Pending::NoFit(e) = &p.unplaced[0].reason else { panic!("no fit expected") };
        assert_eq!(e.rejected.get(&Rejection::Constraint("zone=nowhere".into())), Some(&6));
    }
}

#[test]
fn unique_max_per_and_balanced_spread_a_job() {
    let job = |n: usize, c: Constraint| -> Vec<TaskRequest> {
        (0..n).map(|i| TaskRequest::new(format!("t{i}"), "j").cpus(0.5).mem_mib(256).constraint(c.clone())).collect()
    };
    for mode in [Mode::Compat, Mode::Best] {
        let config = PlacementConfig { mode, ..PlacementConfig::default() };
        let (got, p) = check_place(&zoned(), &job(8, Constraint::Unique { scope: None, by: By::Host }), &config);
        assert_eq!((got.len(), p.unplaced.len()), (6, 2), "one per host on six hosts");
        let by_zone = Constraint::MaxPer { scope: None, by: By::Attribute("zone".into()), max: 2 };
        let (got, _) = check_place(&zoned(), &job(8, by_zone), &config);
        assert_eq!(got.len(), 6, "two per zone over three zones");
        let balanced = Constraint::Balanced { scope: None, attribute: "zone".into(), expected: 3 };
        let (got, _) = check_place(&zoned(), &job(7, balanced), &config);
        assert_eq!(got.len(), 7, "balanced never refuses when a level value is open");
        let mut per_zone = BTreeMap::new();
        for a in got.values() {
            let zone = zoned().agent(a).expect("placed on a known agent").attributes["zone"].clone();
            *per_zone.entry(zone).or_insert(0) += 1;
        }
        let mut counts: Vec<i32> = per_zone.values().copied().collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![2, 2, 3], "{mode:?}");
    }
}

#[test]
fn named_groups_scope_constraints_across_jobs() {
    let unique = Constraint::Unique { scope: Some(Scope::Group("db".into())), by: By::Attribute("zone".into()) };
    let reqs: Vec<TaskRequest> = (0..4)
        .map(|i| TaskRequest::new(format!("t{i}"), format!("job{i}")).cpus(1.0).group("db").constraint(unique.clone()))
        .collect();
    let (got, p) = check_place(&zoned(), &reqs, &PlacementConfig::default());
    assert_eq!((got.len(), p.unplaced.len()), (3, 1), "one per zone across jobs of the group");
}

#[test]
fn preferences_steer_without_forbidding() {
    let prefer_b = Constraint::AttributeEquals { name: "zone".into(), value: "b".into() };
    let mut snap = zoned();
    snap.assign(&task("load").cpus(4.0), "a0", None).expect("fits");
    for mode in [Mode::Compat, Mode::Best] {
        let config = PlacementConfig { mode, ..PlacementConfig::default() };
        let (got, _) = check_place(&snap, &[task("t").prefer(prefer_b.clone(), 1.0)], &config);
        assert!(["a1", "a4"].contains(&got["t"].as_str()), "{mode:?}: preference outweighs packing");
        if mode == Mode::Best {
            // Compat mode mixes preferences in with Fenzo's fixed weights; best mode honours each weight.
            let (got, _) = check_place(&snap, &[task("t").prefer(prefer_b.clone(), 0.01)], &config);
            assert_eq!(got["t"], "a0", "a light preference loses to packing");
        }
        let nowhere = Constraint::AttributeEquals { name: "zone".into(), value: "x".into() };
        let (got, _) = check_place(&snap, &[task("t").prefer(nowhere, 5.0)], &config);
        assert_eq!(got["t"], "a0", "{mode:?}: an impossible preference does not block");
    }
}

#[test]
fn good_enough_stops_at_the_first_acceptable_agent() {
    let mut snap = snapshot(vec![agent("a1"), agent("a2")]);
    snap.assign(&task("load").cpus(7.0).mem_mib(15_000), "a2", None).expect("fits");
    let spread = PlacementConfig { fitness: Fitness::Spread, ..PlacementConfig::default() };
    assert_eq!(check_place(&snap, &[task("t")], &spread).0["t"], "a1");
    // Any agent scores above 0.0: the first visited is taken even though it is not the best.
    let hasty = PlacementConfig { good_enough: 0.0, fitness: Fitness::BinPackCpu, ..PlacementConfig::default() };
    assert_eq!(check_place(&snap, &[task("t")], &hasty).0["t"], "a2");
}

#[test]
fn quotas_hold_tasks_and_tiers_take_capacity_first() {
    let snap = snapshot(vec![agent("a1")]);
    let mut groups = BTreeMap::new();
    groups.insert("batch".to_string(), CapacityGroup { max_cpu_milli: Some(2_000), ..Default::default() });
    let reqs = [
        task("low").cpus(6.0).tier(1),
        task("b1").cpus(1.0).capacity_group("batch"),
        task("b2").cpus(1.5).capacity_group("batch"),
        task("high").cpus(6.0).tier(0),
    ];
    for mode in [Mode::Compat, Mode::Best] {
        let config = PlacementConfig { mode, capacity_groups: groups.clone(), ..PlacementConfig::default() };
        let (got, p) = check_place(&snap, &reqs, &config);
        assert_eq!(got.keys().cloned().collect::<Vec<_>>(), vec!["b1", "high"], "{mode:?}");
        let reasons: BTreeMap<&str, &Pending> = p.unplaced.iter().map(|u| (u.task_id.as_str(), &u.reason)).collect();
        assert_eq!(reasons["b2"], &Pending::Quota { group: "batch".into(), resource: ResourceKind::Cpu });
        assert!(matches!(reasons["low"], Pending::NoFit(_)));
    }
}

#[test]
fn snapshot_updates_incrementally_and_revalidates() {
    let mut snap = snapshot(vec![agent("a1")]);
    let big = task("big").cpus(6.0);
    let reqs = [big.clone()];
    let p = place(&snap, &reqs, &PlacementConfig::default());
    assert!(snap.apply(&p, &reqs).is_empty());
    assert_eq!(snap.usage("a1").map(|(r, n)| (r.cpu_milli, n)), Some((6_000, 1)));
    // The same plan applied twice is refused: the task is already there.
    assert_eq!(snap.apply(&p, &reqs), vec![SnapshotError::DuplicateTask("big".into())]);
    // A plan made on an older snapshot is re-validated against the newer one.
    let stale = place(&snap, &[task("x").cpus(2.0)], &PlacementConfig::default());
    snap.assign(&task("y").cpus(1.0), "a1", None).expect("fits");
    let refused = snap.apply(&stale, &[task("x").cpus(2.0)]);
    assert!(matches!(
        &refused[..],
        [SnapshotError::DoesNotFit { reason: Rejection::Exhausted(ResourceKind::Cpu), .. }]
    ));
    snap.release("big").expect("assigned above");
    assert_eq!(snap.usage("a1").map(|(r, n)| (r.cpu_milli, n)), Some((1_000, 1)));
    assert_eq!(snap.release("big"), Err(SnapshotError::UnknownTask("big".into())));
    let p = place(&snap, &[task("x").cpus(2.0)], &PlacementConfig::default());
    assert_eq!(p.assignments.len(), 1, "released capacity is reused without rebuilding the snapshot");
}

/// Tasks start their port search at a slot of their own (a hash of their id), so a task and its replacement (a new
/// id) rarely get the same port, and tasks spread over the range.
#[test]
fn tasks_spread_over_the_port_range() {
    let snap = snapshot(vec![agent("a1").cpus(64.0)]);
    let reqs: Vec<TaskRequest> = (0..8).map(|i| task(&format!("t{i}")).cpus(0.1).ports(1)).collect();
    let (_, p) = check_place(&snap, &reqs, &PlacementConfig::default());
    let ports: std::collections::BTreeSet<u16> = p.assignments.iter().flat_map(|a| a.ports.clone()).collect();
    assert_eq!(ports.len(), 8);
    assert!(ports.iter().any(|p| *p > 31_007), "not only the lowest ports: {ports:?}");
}

#[test]
fn running_tasks_keep_their_ports() {
    let mut snap = snapshot(vec![agent("a1")]);
    assert_eq!(snap.assign(&task("r").ports(2), "a1", Some(&[31_000, 31_005])), Ok(vec![31_000, 31_005]));
    assert!(matches!(
        snap.assign(&task("q").ports(1), "a1", Some(&[31_005])),
        Err(SnapshotError::PortsUnavailable { .. })
    ));
    let (_, p) = check_place(&snap, &[task("n").ports(2)], &PlacementConfig::default());
    let got = &p.assignments[0].ports;
    assert!(got.len() == 2 && got[0] != got[1], "{got:?}");
    assert!(got.iter().all(|p| (31_000..31_010).contains(p) && ![31_000, 31_005].contains(p)), "{got:?}");
}

#[test]
fn autoscale_hints_count_shortfall_by_trial_placement_and_release_idle_agents_evenly() {
    let group = |id: &str, zone: &str| agent(id).attr("instance_group", "m5").zone(zone);
    let mut snap = snapshot(vec![
        group("a", "z1"),
        group("b", "z1"),
        group("c", "z1"),
        group("d", "z2"),
        group("e", "z2"),
        agent("other").attr("instance_group", "r5").cpus(2.0).zone("z1"),
    ]);
    snap.assign(&task("keep").cpus(1.0), "a", None).expect("fits");
    let config = PlacementConfig { autoscale: Some(AutoscaleConfig::default()), ..PlacementConfig::default() };
    let idle = place(&snap, &[], &config).autoscale;
    let m5 = idle.iter().find(|h| h.group == "m5").expect("m5 hint");
    assert_eq!(m5.agents, 5);
    assert_eq!(m5.shortfall, 0);
    // z1 has three agents and z2 two: release from z1 until level, then alternate (ties to the first zone
    // name); z1's busy agent stays.
    let zones: Vec<String> =
        m5.idle.iter().map(|id| snap.agent(id).expect("known").attributes["zone"].clone()).collect();
    assert_eq!(zones, vec!["z1", "z1", "z2", "z2"]);

    // Twelve 3-cpu tasks beyond what the cluster holds: 2 per 8-cpu agent, so six more m5 agents.
    let reqs: Vec<TaskRequest> = (0..22).map(|i| task(&format!("t{i}")).cpus(3.0).mem_mib(2_000)).collect();
    let p = place(&snap, &reqs, &config);
    let m5 = p.autoscale.iter().find(|h| h.group == "m5").expect("m5 hint");
    assert_eq!(p.unplaced.len(), 12);
    assert!(m5.idle.is_empty());
    assert_eq!((m5.shortfall, m5.pending_tasks), (6, 12));
    let r5 = p.autoscale.iter().find(|h| h.group == "r5").expect("r5 hint");
    assert_eq!((r5.shortfall, r5.pending_tasks), (0, 0), "tasks covered by m5 are not counted twice");
}

#[test]
fn config_is_validated() {
    let bad = PlacementConfig { good_enough: 1.5, ..PlacementConfig::default() };
    assert_eq!(bad.validate(), Err(ConfigError::GoodEnough(1.5)));
    let bad =
        PlacementConfig { fitness: Fitness::Weighted(vec![(Fitness::Spread, -1.0)]), ..PlacementConfig::default() };
    assert_eq!(bad.validate(), Err(ConfigError::FitnessWeight(-1.0)));
    let bad =
        PlacementConfig { fitness: Fitness::Weighted(vec![(Fitness::Spread, 0.0)]), ..PlacementConfig::default() };
    assert_eq!(bad.validate(), Err(ConfigError::NoFitnessWeight));
    assert_eq!(PlacementConfig::compat().validate(), Ok(()));
}

#[test]
fn stats_count_the_work_done() {
    let snap = snapshot((0..50).map(|i| agent(&format!("a{i:02}"))).collect());
    let reqs: Vec<TaskRequest> = (0..20).map(|i| task(&format!("t{i}"))).collect();
    let p = place(&snap, &reqs, &PlacementConfig::compat());
    assert_eq!(p.stats.searches, 20);
    assert!(p.stats.agents_scored >= 20 && p.stats.agents_examined < 20 * 50, "{:?}", p.stats);
    let p = place(&snap, &reqs, &PlacementConfig::default());
    assert_eq!((p.stats.pack_runs, p.stats.packed, p.stats.searches), (1, 20, 0));
}
