//! What parsing a 1 MiB body costs at the bounds of `titan_api::body`: the worst bodies accepted and refused.
//!
//! `cargo bench -p titan-api --bench parse` prints one line per body and format:
//! `body=nested-at-limit format=YAML bytes=1048576 outcome=invalid_spec median_ms=... max_ms=...`.
//! An accepted body here is one that passes the bounds and is then parsed in full (it still fails as a job spec,
//! after all the parser's work); a refused one is answered `body_too_complex` by the scan alone. For comparison,
//! `unbounded` lines give serde_yaml's own cost on smaller bodies of open brackets, which grows with the square of
//! their size.

use std::time::{Duration, Instant};

use titan_api::body::{MAX_ALIASES, MAX_DEPTH};
use titan_api::job::{BodyFormat, JobSpec};

const MIB: usize = 1 << 20;
const RUNS: usize = 5;

/// Repeats `unit` joined by `sep` inside `open`..`close` until the whole is just under `size` bytes.
fn fill(open: &str, unit: &str, sep: &str, close: &str, size: usize) -> String {
    let n = (size - open.len() - close.len()) / (unit.len() + sep.len());
    format!("{open}{}{close}", vec![unit; n].join(sep))
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The bodies, each about 1 MiB: (name, format, body).
fn bodies() -> Vec<(&'static str, BodyFormat, String)> {
    // A top-level sequence of sequences nested to the limit, as many as fit.
    let at_limit = fill("[", &nested(MAX_DEPTH - 1), ",", "]", MIB);
    // An anchor as large as the body allows, replayed by every alias allowed.
    let aliases = format!("b: [{}]\n", vec!["*x"; MAX_ALIASES].join(", "));
    let anchored = fill("a: &x [", "1", ", ", "]\n", MIB - aliases.len());
    vec![
        ("nested-at-limit", BodyFormat::Json, at_limit.clone()),
        ("nested-at-limit", BodyFormat::Yaml, at_limit),
        ("flat-sequence", BodyFormat::Json, fill("[", "1", ",", "]", MIB)),
        ("flat-sequence", BodyFormat::Yaml, fill("[", "1", ",", "]", MIB)),
        ("anchor-and-all-aliases", BodyFormat::Yaml, format!("{anchored}{aliases}")),
        ("open-brackets", BodyFormat::Json, "[".repeat(MIB)),
        ("open-brackets", BodyFormat::Yaml, "[".repeat(MIB)),
        (
            "one-alias-too-many",
            BodyFormat::Yaml,
            format!("a: &x [1]\nb: [{}]\n", vec!["*x"; MAX_ALIASES + 1].join(", ")),
        ),
    ]
}

fn time<T>(mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (times[RUNS / 2], times[RUNS - 1], last.expect("RUNS is above 0"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    for (name, format, body) in bodies() {
        let (median, max, result) = time(|| JobSpec::parse(body.as_bytes(), format));
        let outcome = result.err().map(|e| e.code.as_str()).unwrap_or("accepted");
        println!(
            "body={name} format={format:?} bytes={} outcome={outcome} median_ms={:.2} max_ms={:.2}",
            body.len(),
            ms(median),
            ms(max)
        );
    }
    // What the scan spares: serde_yaml alone on open brackets, at sizes that stay within a few seconds.
    for kib in [16, 32, 64] {
        let body = "[".repeat(kib << 10);
        let (median, max, _) = time(|| serde_yaml::from_slice::<serde::de::IgnoredAny>(body.as_bytes()).is_ok());
        println!(
            "body=open-brackets format=Yaml bytes={} outcome=unbounded median_ms={:.2} max_ms={:.2}",
            body.len(),
            ms(median),
            ms(max)
        );
    }
}
