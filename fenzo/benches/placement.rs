//! The placement benchmark on the shared workload (`shared/bench/placement-workload.md`).
//!
//! `cargo bench -p fenzo --bench placement -- SCENARIO MODE` (SCENARIO a..e, MODE compat|best) prints one line:
//! `scenario=c mode=compat placed=.. unplaced=.. hosts_used=.. lower_bound=.. checksum=.. wall_s=.. peak_rss_mib=..`
//! `wall_s` times `place` alone; generating the workload and building the snapshot are outside it. With no
//! arguments every scenario runs in both modes, each in a child process so that peak RSS is its own.

#[path = "../tests/workload/mod.rs"]
mod workload;

use std::process::{Command, ExitCode};
use std::time::Instant;

use fenzo::{place, ClusterSnapshot, Mode, PlacementConfig};

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib.div_ceil(1024))
        .unwrap_or(0)
}

fn run(scenario: workload::Scenario, mode: Mode) {
    let agents = workload::hosts(scenario.hosts);
    let tasks = workload::tasks(scenario.tasks, scenario.constraints);
    let snapshot = ClusterSnapshot::with_agents(agents).expect("host names are distinct");
    let config = PlacementConfig { mode, ..PlacementConfig::default() };

    let start = Instant::now();
    let placement = place(&snapshot, &tasks, &config);
    let wall = start.elapsed().as_secs_f64();

    println!(
        "scenario={} mode={} placed={} unplaced={} hosts_used={} lower_bound={} checksum={:016x} wall_s={:.3} peak_rss_mib={}",
        scenario.name,
        if mode == Mode::Compat { "compat" } else { "best" },
        placement.assignments.len(),
        placement.unplaced.len(),
        workload::hosts_used(&placement),
        workload::lower_bound(&tasks),
        workload::checksum(&tasks, &placement),
        wall,
        peak_rss_mib(),
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    match args.as_slice() {
        [] => {
            let me = std::env::current_exe().expect("the running benchmark has a path");
            for s in workload::SCENARIOS {
                for mode in ["compat", "best"] {
                    let ok = Command::new(&me).arg(s.name.to_string()).arg(mode).status();
                    if !ok.is_ok_and(|st| st.success()) {
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        [scenario, mode] => {
            let s = scenario.chars().next().and_then(workload::scenario);
            let m = match mode.as_str() {
                "compat" => Some(Mode::Compat),
                "best" => Some(Mode::Best),
                _ => None,
            };
            match (s, m, scenario.len()) {
                (Some(s), Some(m), 1) => {
                    run(s, m);
                    ExitCode::SUCCESS
                }
                _ => {
                    eprintln!("usage: placement [SCENARIO MODE], SCENARIO one of a b c d e, MODE compat or best");
                    ExitCode::from(2)
                }
            }
        }
        _ => {
            eprintln!("usage: placement [SCENARIO MODE], SCENARIO one of a b c d e, MODE compat or best");
            ExitCode::from(2)
        }
    }
}
