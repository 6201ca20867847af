//! The shared workload: the generator matches the published values, compat mode reproduces Fenzo's placements
//! on scenarios a and d exactly, and best mode packs within the bounds.

mod workload;

use fenzo::{place, verify, ClusterSnapshot, Mode, PlacementConfig};
use workload::*;

#[test]
fn generator_matches_the_published_values() {
    let mut rng = SplitMix64::new(42);
    let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
    assert_eq!(first, vec![0xbdd732262feb6e95, 0x28efe333b266f103, 0x47526757130f9f52]);
    let t = tasks(5, false);
    let got: Vec<(f64, u64, u32)> =
        t.iter().map(|t| (t.resources.cpus(), t.resources.mem_mib, t.resources.ports)).collect();
    assert_eq!(got, vec![(1.0, 2211, 0), (0.5, 2252, 2), (2.0, 8765, 2), (0.5, 2396, 0), (1.0, 2990, 2)]);
    let a = tasks(10_000, false);
    assert_eq!(a.iter().map(|t| t.resources.cpu_milli).sum::<u64>(), 14_224_500);
    assert_eq!(a.iter().map(|t| t.resources.mem_mib).sum::<u64>(), 58_260_248);
    assert_eq!(lower_bound(&a), 890);
}

fn run(name: char, mode: Mode) -> (u64, usize, usize, u64) {
    let s = scenario(name).expect("known scenario");
    let snap = ClusterSnapshot::with_agents(hosts(s.hosts)).expect("distinct hosts");
    let reqs = tasks(s.tasks, s.constraints);
    let config = PlacementConfig { mode, ..PlacementConfig::default() };
    let p = place(&snap, &reqs, &config);
    let violations = verify(&snap, &reqs, &p);
    assert!(violations.is_empty(), "scenario {name}: {:?}", &violations[..violations.len().min(5)]);
    (checksum(&reqs, &p), hosts_used(&p), p.unplaced.len(), lower_bound(&reqs))
}

#[test]
fn compat_reproduces_fenzo_on_scenario_a() {
    let (sum, used, unplaced, _) = run('a', Mode::Compat);
    assert_eq!((format!("{sum:016x}"), used, unplaced), ("d329a8fb774e48f1".to_string(), 936, 0));
}

#[test]
fn compat_reproduces_fenzo_on_scenario_d() {
    let (sum, used, unplaced, _) = run('d', Mode::Compat);
    assert_eq!((format!("{sum:016x}"), used, unplaced), ("7a70c54500cafd4d".to_string(), 938, 0));
}

#[test]
fn best_packs_scenario_a_within_one_percent() {
    let (_, used, unplaced, lb) = run('a', Mode::Best);
    assert_eq!(unplaced, 0);
    assert!(used as f64 <= lb as f64 * 1.01, "{used} hosts for lower bound {lb}");
}

#[test]
fn best_packs_scenario_d_within_two_percent() {
    let (_, used, unplaced, lb) = run('d', Mode::Best);
    assert_eq!(unplaced, 0);
    assert!(used as f64 <= lb as f64 * 1.02, "{used} hosts for lower bound {lb}");
}
