//! Autoscaling policies on the shared diurnal trace (`shared/bench/autoscale-trace.md`): every policy, through the
//! same `Policy` code a cell's autoscaler runs, drives the simulated fleet minute by minute over the 21 days and is
//! scored on the last 7, beside the oracle, at boot delays of 3, 10 and 20 minutes; then each policy's main knob is
//! swept for its trade-off curve (pending against idle host-hours) at D = 10.
//!
//! `cargo bench --bench autoscale` prints one line per policy and boot delay:
//! `policy=hybrid boot=10 pending_task_min=.. pending_pct=.. spike_pct=.. host_h=.. idle_host_h=.. changes=.. launches=..`.
//! Pure computation, bounded by the trace's length. Under `cargo test` it runs D = 10 only, without the sweep.

use titan_autoscaler::policy::{HybridConfig, Policy, PolicyConfig, PredictiveConfig, ReactiveConfig};
use titan_autoscaler::sim::{run, Driver};
use titan_autoscaler::trace::Trace;

fn score(trace: &Trace, boot: u32, config: &PolicyConfig) -> titan_autoscaler::sim::Score {
    let mut policy: Box<dyn Policy> = config.build();
    run(trace, boot, &mut Driver::Policy(policy.as_mut()))
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let trace = Trace::generate();
    let boots: &[u32] = if smoke { &[10] } else { &[3, 10, 20] };
    let policies = |boot: u32| -> Vec<(&'static str, PolicyConfig)> {
        let _ = boot;
        vec![
            (
                "reactive",
                PolicyConfig::Reactive(ReactiveConfig { headroom: 3, scale_in_cooldown_s: 600, ..Default::default() }),
            ),
            ("predictive", PolicyConfig::Predictive(PredictiveConfig::default())),
            ("hybrid", PolicyConfig::Hybrid(HybridConfig::default())),
        ]
    };
    for &boot in boots {
        let oracle = run(&trace, boot, &mut Driver::Oracle);
        println!("{}", oracle.line("oracle", boot));
        for (name, config) in policies(boot) {
            println!("{}", score(&trace, boot, &config).line(name, boot));
        }
    }
    if smoke {
        return;
    }
    println!("# trade-off at boot=10: reactive headroom (instances)");
    for headroom in [0, 1, 2, 3, 4, 6, 8] {
        let c = PolicyConfig::Reactive(ReactiveConfig { headroom, scale_in_cooldown_s: 600, ..Default::default() });
        println!("headroom={headroom} {}", score(&trace, 10, &c).line("reactive", 10));
    }
    println!("# trade-off at boot=10: predictive quantile of its own under-forecasts");
    for quantile in [0.9, 0.95, 0.99, 0.995, 1.0] {
        let c = PolicyConfig::Predictive(PredictiveConfig { quantile, ..Default::default() });
        println!("quantile={quantile} {}", score(&trace, 10, &c).line("predictive", 10));
    }
    println!("# trade-off at boot=10: hybrid, reactive headroom and scale-in cooldown over the expected rise");
    for cooldown in [3, 5, 10] {
        for headroom in [2, 3, 4] {
            let c = PolicyConfig::Hybrid(HybridConfig {
                reactive: ReactiveConfig { headroom, scale_in_cooldown_s: cooldown * 60, ..Default::default() },
                ..Default::default()
            });
            println!("cooldown={cooldown} headroom={headroom} {}", score(&trace, 10, &c).line("hybrid", 10));
        }
    }
}
