//! The shared placement workload of `shared/bench/placement-workload.md`, generated bit for bit: SplitMix64 with
//! seed 42, hosts `host-%05d` (16 cpus, 65536 MiB, ports 31000-31999, zone a/b/c by index), tasks `task-%06d`
//! with three draws each, and the scenario d constraints.

#![allow(dead_code)]

use fenzo::{Agent, By, Constraint, Placement, TaskRequest};

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_int(&mut self, n: u64) -> u64 {
        (self.next_u64() >> 33) % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub name: char,
    pub hosts: usize,
    pub tasks: usize,
    pub constraints: bool,
}

pub const SCENARIOS: [Scenario; 5] = [
    Scenario { name: 'a', hosts: 1_000, tasks: 10_000, constraints: false },
    Scenario { name: 'b', hosts: 5_000, tasks: 50_000, constraints: false },
    Scenario { name: 'c', hosts: 10_000, tasks: 100_000, constraints: false },
    Scenario { name: 'd', hosts: 1_000, tasks: 10_000, constraints: true },
    Scenario { name: 'e', hosts: 1_000, tasks: 12_000, constraints: false },
];

pub fn scenario(name: char) -> Option<Scenario> {
    SCENARIOS.iter().copied().find(|s| s.name == name)
}

pub fn hosts(n: usize) -> Vec<Agent> {
    (0..n)
        .map(|i| {
            Agent::new(format!("host-{i:05}"))
                .cpus(16.0)
                .mem_mib(65_536)
                .ports(31_000, 31_999)
                .zone(["a", "b", "c"][i % 3])
        })
        .collect()
}

/// Tasks in workload order; cpus are exact halves, so millicpus carry them without rounding.
pub fn tasks(n: usize, constraints: bool) -> Vec<TaskRequest> {
    let mut rng = SplitMix64::new(42);
    (0..n)
        .map(|j| {
            let job = j / 10;
            let r1 = rng.next_int(100);
            let cpu_halves: u64 = match r1 {
                0..=39 => 1,
                40..=69 => 2,
                70..=89 => 4,
                90..=96 => 8,
                _ => 16,
            };
            let r2 = rng.next_int(101);
            // memory = (2 * cpus) * 2048 * (50 + r2) / 100, with 2 * cpus = cpu_halves.
            let mem = cpu_halves * 2048 * (50 + r2) / 100;
            let ports = rng.next_int(3) as u32;
            let mut t = TaskRequest::new(format!("task-{j:06}"), format!("job-{job:05}"))
                .cpus(cpu_halves as f64 / 2.0)
                .mem_mib(mem)
                .ports(ports);
            if constraints {
                match job % 4 {
                    0 => t = t.constraint(Constraint::Unique { scope: None, by: By::Host }),
                    1 => t = t.constraint(Constraint::Balanced { scope: None, attribute: "zone".into(), expected: 3 }),
                    _ => {}
                }
            }
            t
        })
        .collect()
}

/// `ceil(max(sum cpus / 16, sum memory / 65536))`.
pub fn lower_bound(tasks: &[TaskRequest]) -> u64 {
    let cpu: u64 = tasks.iter().map(|t| t.resources.cpu_milli).sum();
    let mem: u64 = tasks.iter().map(|t| t.resources.mem_mib).sum();
    cpu.div_ceil(16_000).max(mem.div_ceil(65_536))
}

/// FNV-1a over `task-XXXXXX=host-XXXXX\n` lines in task order (`-` for an unplaced task).
pub fn checksum(tasks: &[TaskRequest], placement: &Placement) -> u64 {
    let host: std::collections::HashMap<&str, &str> =
        placement.assignments.iter().map(|a| (a.task_id.as_str(), a.agent_id.as_str())).collect();
    let mut text = String::with_capacity(tasks.len() * 24);
    for t in tasks {
        text.push_str(&t.id);
        text.push('=');
        text.push_str(host.get(t.id.as_str()).copied().unwrap_or("-"));
        text.push('\n');
    }
    fenzo::fnv1a(text.as_bytes())
}

pub fn hosts_used(placement: &Placement) -> usize {
    let mut used: Vec<&str> = placement.assignments.iter().map(|a| a.agent_id.as_str()).collect();
    used.sort_unstable();
    used.dedup();
    used.len()
}
