//! How each crate declares its metrics: one catalogue of `Def`s per crate (its `metrics` module), registered through
//! a `Registrar` that adds the process's constant labels (a member's `cell` and `node`, an agent's `agent`) once.
//! The catalogues are also what dashboards and alert rules may query: a test checks every exported family is in one.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// What kind of metric a `Def` is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A histogram with these bucket bounds.
    Histogram(&'static [f64]),
}

/// One metric: its name, what it counts, its kind and its variable labels (the constant ones come from the
/// `Registrar`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

impl Def {
    pub const fn counter(name: &'static str, help: &'static str) -> Def {
        Def { name, help, kind: Kind::Counter, labels: &[] }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Def {
        Def { name, help, kind: Kind::Gauge, labels: &[] }
    }

    pub const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Def {
        Def { name, help, kind: Kind::Histogram(buckets), labels: &[] }
    }

    /// The same metric, by these labels.
    pub const fn by(self, labels: &'static [&'static str]) -> Def {
        Def { labels, ..self }
    }

    /// The names this metric's samples are exported under (a histogram's `_bucket`, `_sum` and `_count`).
    pub fn exported(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram(_) => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", self.name)).collect(),
            _ => vec![self.name.to_string()],
        }
    }
}

/// Whether a sample name (as in the text exposition, `titan_x_bucket`) belongs to one of `catalogue`'s metrics.
pub fn known(catalogue: &[Def], sample: &str) -> bool {
    catalogue.iter().any(|d| d.exported().iter().any(|n| n == sample))
}

/// Registers catalogue metrics in a registry, each with the same constant labels.
pub struct Registrar<'a> {
    registry: &'a Registry,
    labels: Vec<(String, String)>,
}

impl<'a> Registrar<'a> {
    pub fn new(registry: &'a Registry, labels: &[(&str, &str)]) -> Registrar<'a> {
        Registrar { registry, labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    fn opts(&self, d: &Def) -> Opts {
        self.labels.iter().fold(Opts::new(d.name, d.help), |o, (k, v)| o.const_label(k, v))
    }

    fn histogram_opts(&self, d: &Def) -> HistogramOpts {
        let buckets = match d.kind {
            Kind::Histogram(b) => b.to_vec(),
            _ => prometheus::DEFAULT_BUCKETS.to_vec(),
        };
        HistogramOpts::from(self.opts(d)).buckets(buckets)
    }

    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> Result<M, prometheus::Error> {
        self.registry.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn check(&self, d: &Def, kind: &str, vec: bool) -> Result<(), prometheus::Error> {
        if let Some(l) = d.labels.iter().find(|l| self.labels.iter().any(|(k, _)| k == *l)) {
            return Err(prometheus::Error::Msg(format!("{}: label {l} is also a constant label", d.name)));
        }
        let matches = match d.kind {
            Kind::Counter => kind == "counter",
            Kind::Gauge => kind == "gauge",
            Kind::Histogram(_) => kind == "histogram",
        };
        if !matches || d.labels.is_empty() == vec {
            return Err(prometheus::Error::Msg(format!(
                "{} is declared {:?} by {:?}, registered as a {kind}{}",
                d.name,
                d.kind,
                d.labels,
                if vec { " by labels" } else { "" }
            )));
        }
        Ok(())
    }

    pub fn counter(&self, d: &Def) -> Result<IntCounter, prometheus::Error> {
        self.check(d, "counter", false)?;
        self.register(IntCounter::with_opts(self.opts(d))?)
    }

    pub fn counter_vec(&self, d: &Def) -> Result<IntCounterVec, prometheus::Error> {
        self.check(d, "counter", true)?;
        self.register(IntCounterVec::new(self.opts(d), d.labels)?)
    }

    pub fn gauge(&self, d: &Def) -> Result<IntGauge, prometheus::Error> {
        self.check(d, "gauge", false)?;
        self.register(IntGauge::with_opts(self.opts(d))?)
    }

    /// A gauge of fractional values (seconds).
    pub fn float_gauge(&self, d: &Def) -> Result<prometheus::Gauge, prometheus::Error> {
        self.check(d, "gauge", false)?;
        self.register(prometheus::Gauge::with_opts(self.opts(d))?)
    }

    /// Gauges of fractional values (seconds), by labels.
    pub fn float_gauge_vec(&self, d: &Def) -> Result<prometheus::GaugeVec, prometheus::Error> {
        self.check(d, "gauge", true)?;
        self.register(prometheus::GaugeVec::new(self.opts(d), d.labels)?)
    }

    pub fn gauge_vec(&self, d: &Def) -> Result<IntGaugeVec, prometheus::Error> {
        self.check(d, "gauge", true)?;
        self.register(IntGaugeVec::new(self.opts(d), d.labels)?)
    }

    pub fn histogram(&self, d: &Def) -> Result<Histogram, prometheus::Error> {
        self.check(d, "histogram", false)?;
        self.register(Histogram::with_opts(self.histogram_opts(d))?)
    }

    pub fn histogram_vec(&self, d: &Def) -> Result<HistogramVec, prometheus::Error> {
        self.check(d, "histogram", true)?;
        self.register(HistogramVec::new(self.histogram_opts(d), d.labels)?)
    }
}

/// The API's own metrics: every route's requests.
pub mod http {
    use super::Def;

    pub const REQUESTS: Def = Def::counter("titan_http_requests_total", "HTTP requests by route, method and status")
        .by(&["route", "method", "status"]);
    pub const SECONDS: Def = Def::histogram(
        "titan_http_request_duration_seconds",
        "HTTP request latency by route and method",
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
    )
    .by(&["route", "method"]);

    pub const ALL: &[Def] = &[REQUESTS, SECONDS];
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Def = Def::counter("t_total", "a counter");
    const G: Def = Def::gauge("t_things", "a gauge").by(&["kind"]);
    const H: Def = Def::histogram("t_seconds", "a histogram", &[0.1, 1.0]);

    #[test]
    fn a_metric_is_registered_with_the_constant_labels_and_found_in_its_catalogue() {
        let registry = Registry::new();
        let r = Registrar::new(&registry, &[("cell", "dc1"), ("node", "2")]);
        r.counter(&C).unwrap().inc();
        r.gauge_vec(&G).unwrap().with_label_values(&["x"]).set(3);
        r.histogram(&H).unwrap().observe(0.5);
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(text.contains(r#"t_total{cell="dc1",node="2"} 1"#), "{text}");
        assert!(text.contains(r#"t_things{cell="dc1",kind="x",node="2"} 3"#), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            assert!(known(&[C, G, H], sample), "{sample} is in the catalogue");
        }
        assert!(!known(&[C, G, H], "t_other"));
    }

    #[test]
    fn a_metric_registered_as_another_kind_or_shape_than_declared_is_refused() {
        let registry = Registry::new();
        let r = Registrar::new(&registry, &[]);
        assert!(r.gauge(&C).is_err(), "a counter is not a gauge");
        assert!(r.gauge(&G).is_err(), "declared by labels");
        assert!(r.counter_vec(&C).is_err(), "declared without labels");
        assert!(r.counter(&C).is_ok());
        assert!(r.counter(&C).is_err(), "registered twice");
        let labelled = Registrar::new(&registry, &[("kind", "x")]);
        assert!(labelled.gauge_vec(&Def::gauge("t_other", "-").by(&["kind"])).is_err(), "a label twice");
    }
}
