//! Policies: pure functions of what a group looks like now and its demand history to the size it should be, with a
//! reason. A policy holds no clock and does no IO; the same code runs in a cell's autoscaler loop and in the
//! simulated fleet the shared trace is scored on. A new policy is one type implementing `Policy`.
//!
//! - `Reactive`: what is wanted now (running and pending slots, the shortfall fenzo's trial placement found) plus
//!   headroom, up at once, down only once it has stayed lower for the scale-in cooldown (as cluster-autoscaler
//!   removes a node unneeded for ten minutes).
//! - `Predictive`: a model of demand by time of day and weekday/weekend times a linear trend, trained on the
//!   group's history and retrained daily, forecasting the boot delay ahead with a margin from its own errors.
//! - `Hybrid`: the reactive rule over the larger of the demand now and the forecast within the boot delay: the model
//!   carries the diurnal ramp, the headroom what no model foresees (spikes).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Minutes in a day and a week.
pub const DAY: u64 = 1440;
pub const WEEK: u64 = 7 * DAY;

/// A group's demand per minute (the most slots wanted in each minute), oldest first, bounded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The minute of the first sample.
    pub start: u64,
    pub demand: VecDeque<u32>,
}

/// The most minutes a history keeps (four weeks).
pub const MAX_HISTORY: usize = 4 * WEEK as usize;

impl History {
    /// Records `slots` wanted at `minute`: the minute's highest sample counts; a gap repeats the last value.
    pub fn record(&mut self, minute: u64, slots: u32) {
        if self.demand.is_empty() {
            self.start = minute;
            self.demand.push_back(slots);
            return;
        }
        let last = self.start + self.demand.len() as u64 - 1;
        if minute < self.start {
            return;
        }
        if minute <= last {
            let i = (minute - self.start) as usize;
            self.demand[i] = self.demand[i].max(slots);
            return;
        }
        let fill = self.demand.back().copied().unwrap_or(slots);
        for _ in last + 1..minute {
            self.demand.push_back(fill);
        }
        self.demand.push_back(slots);
        while self.demand.len() > MAX_HISTORY {
            self.demand.pop_front();
            self.start += 1;
        }
    }

    /// (minute, slots) for every sample.
    pub fn samples(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.demand.iter().enumerate().map(move |(i, d)| (self.start + i as u64, *d))
    }

    pub fn len(&self) -> usize {
        self.demand.len()
    }

    pub fn is_empty(&self) -> bool {
        self.demand.is_empty()
    }
}

/// What a policy sees of a group at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Minutes since the epoch (the simulator: since the trace's start; minute 0 is a Monday 00:00 UTC).
    pub minute: u64,
    /// The same moment in ms (cooldowns count in it).
    pub now_ms: u64,
    /// Slots wanted now: running and pending tasks of the group.
    pub demand: u32,
    /// Instances ready, and launched but not ready yet.
    pub ready: u32,
    pub booting: u32,
    /// More instances fenzo's trial placement of the pending tasks asks for (0 when it fits).
    pub shortfall: u32,
    pub slots_per_instance: u32,
    pub boot_minutes: u32,
    pub min: u32,
    pub max: u32,
    pub history: &'a History,
}

/// A policy's answer: the size the group should have, why, and what it expected (predictive ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub desired: u32,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<u32>,
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    fn decide(&mut self, o: &Observation<'_>) -> Decision;
}

fn hosts(slots: u64, per: u32) -> u32 {
    slots.div_ceil(u64::from(per.max(1))) as u32
}

fn clamp(n: u32, o: &Observation<'_>) -> u32 {
    n.clamp(o.min, o.max.max(o.min))
}

/// `Reactive`'s knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactiveConfig {
    /// Instances kept beyond what is wanted now.
    pub headroom: u32,
    /// Seconds a lower size must hold before the group shrinks to it.
    pub scale_in_cooldown_s: u64,
    /// Seconds after a scale-up before the next one (what was launched is given time to boot).
    pub scale_up_cooldown_s: u64,
}

impl Default for ReactiveConfig {
    fn default() -> Self {
        ReactiveConfig { headroom: 1, scale_in_cooldown_s: 600, scale_up_cooldown_s: 0 }
    }
}

/// What is wanted now plus headroom; shrinks only to the largest need of the cooldown window.
pub struct Reactive {
    pub config: ReactiveConfig,
    /// (ms, instances needed) over the cooldown window.
    recent: VecDeque<(u64, u32)>,
    /// When the group last grew.
    grew_ms: Option<u64>,
}

impl Reactive {
    pub fn new(config: ReactiveConfig) -> Reactive {
        Reactive { config, recent: VecDeque::new(), grew_ms: None }
    }

    /// The instances wanted now: demand in whole instances, or the ready ones and what fenzo's trial placement says
    /// is missing (fragmentation can need more than the slots say), plus headroom.
    fn need(&self, o: &Observation<'_>) -> u32 {
        let by_demand = hosts(u64::from(o.demand), o.slots_per_instance);
        let by_shortfall = if o.shortfall > 0 { o.ready + o.shortfall } else { 0 };
        by_demand.max(by_shortfall) + self.config.headroom
    }
}

impl Policy for Reactive {
    fn name(&self) -> &'static str {
        "reactive"
    }

    fn decide(&mut self, o: &Observation<'_>) -> Decision {
        let need = self.need(o);
        self.recent.push_back((o.now_ms, need));
        let horizon = o.now_ms.saturating_sub(self.config.scale_in_cooldown_s * 1000);
        while self.recent.front().is_some_and(|(m, _)| *m < horizon) {
            self.recent.pop_front();
        }
        let held = self.recent.iter().map(|(_, n)| *n).max().unwrap_or(need);
        let have = o.ready + o.booting;
        let cooling = self.grew_ms.is_some_and(|t| o.now_ms < t + self.config.scale_up_cooldown_s * 1000);
        if held > have && cooling {
            return Decision {
                desired: clamp(have, o),
                reason: format!("{need} wanted; waiting {} s after the last scale-up", self.config.scale_up_cooldown_s),
                forecast: None,
            };
        }
        if held > have {
            self.grew_ms = Some(o.now_ms);
        }
        let desired = clamp(held, o);
        let reason = if need > o.ready + o.booting {
            format!("{} slots wanted need {need} instances with {} headroom", o.demand, self.config.headroom)
        } else if held > need {
            format!("holding {held}: needed within the last {} s", self.config.scale_in_cooldown_s)
        } else {
            format!("{} slots wanted: {need} instances with {} headroom", o.demand, self.config.headroom)
        };
        Decision { desired, reason, forecast: None }
    }
}

/// `Predictive`'s knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictiveConfig {
    /// Minutes of the day per profile bucket.
    pub bucket_minutes: u32,
    /// The forecast is raised by this quantile of its past under-forecasts (0.5-1.0).
    pub quantile: f64,
    /// Minutes beyond the boot delay the forecast covers (the group holds the largest forecast over the window).
    pub lookahead_minutes: u32,
    /// Least history (minutes) before forecasting; less, and the policy answers the minimum.
    pub min_history_minutes: u32,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        PredictiveConfig { bucket_minutes: 10, quantile: 0.99, lookahead_minutes: 5, min_history_minutes: DAY as u32 }
    }
}

/// A fitted model: demand(m) = (a + b m) * profile(bucket of day, weekend), and its error margin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    a: f64,
    b: f64,
    bucket: u64,
    /// Per bucket of the day, weekdays then weekends.
    profile: Vec<[f64; 2]>,
    /// Multiplier covering `quantile` of the history's ratios of actual to forecast.
    margin: f64,
    /// The day it was fitted on.
    day: u64,
}

fn weekend(minute: u64) -> usize {
    usize::from(matches!((minute / DAY) % 7, 5 | 6))
}

impl Model {
    /// Fits on `h` (regression of demand on time for the trend, then the mean ratio to it per bucket and day kind).
    pub fn fit(h: &History, bucket: u32, quantile: f64) -> Option<Model> {
        let n = h.len();
        if n < 2 {
            return None;
        }
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for (m, d) in h.samples() {
            let (x, y) = (m as f64, f64::from(d));
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let nf = n as f64;
        let var = sxx - sx * sx / nf;
        let b = if var.abs() < f64::EPSILON { 0.0 } else { (sxy - sx * sy / nf) / var };
        let a = (sy - b * sx) / nf;
        let bucket = u64::from(bucket.max(1));
        let buckets = DAY.div_ceil(bucket) as usize;
        let mut sum = vec![[0.0f64; 2]; buckets];
        let mut count = vec![[0u32; 2]; buckets];
        for (m, d) in h.samples() {
            let trend = (a + b * m as f64).max(1.0);
            let (i, k) = (((m % DAY) / bucket) as usize, weekend(m));
            sum[i][k] += f64::from(d) / trend;
            count[i][k] += 1;
        }
        let profile: Vec<[f64; 2]> = (0..buckets)
            .map(|i| {
                let mean = |k: usize| (count[i][k] > 0).then(|| sum[i][k] / f64::from(count[i][k]));
                // A day kind not seen yet borrows the other's shape.
                let (wd, we) = (mean(0), mean(1));
                [wd.or(we).unwrap_or(1.0), we.or(wd).unwrap_or(1.0)]
            })
            .collect();
        let mut model = Model { a, b, bucket, profile, margin: 1.0, day: h.start / DAY };
        let mut ratios: Vec<f64> = h.samples().map(|(m, d)| f64::from(d) / model.forecast(m).max(1.0)).collect();
        ratios.sort_by(f64::total_cmp);
        let q = ((ratios.len() as f64 - 1.0) * quantile.clamp(0.0, 1.0)).round() as usize;
        model.margin = ratios.get(q).copied().unwrap_or(1.0).max(1.0);
        Some(model)
    }

    /// Expected slots at `minute` (no margin).
    pub fn forecast(&self, minute: u64) -> f64 {
        let i = ((minute % DAY) / self.bucket) as usize;
        let shape = self.profile.get(i).map_or(1.0, |p| p[weekend(minute)]);
        (self.a + self.b * minute as f64).max(0.0) * shape
    }
}

pub struct Predictive {
    pub config: PredictiveConfig,
    model: Option<Model>,
    fitted_day: Option<u64>,
}

impl Predictive {
    pub fn new(config: PredictiveConfig) -> Predictive {
        Predictive { config, model: None, fitted_day: None }
    }

    /// The model, refitted once a day when there is enough history.
    fn model(&mut self, o: &Observation<'_>) -> Option<&Model> {
        let day = o.minute / DAY;
        if self.fitted_day != Some(day) && o.history.len() >= self.config.min_history_minutes as usize {
            self.model = Model::fit(o.history, self.config.bucket_minutes, self.config.quantile);
            self.fitted_day = Some(day);
        }
        self.model.as_ref()
    }

    /// Slots forecast over the boot delay and lookahead from `o.minute`, with the margin; none without a model.
    pub fn forecast(&mut self, o: &Observation<'_>) -> Option<u32> {
        let lookahead = self.config.lookahead_minutes;
        let model = self.model(o)?;
        let end = o.minute + u64::from(o.boot_minutes + lookahead);
        let peak = (o.minute..=end).map(|m| model.forecast(m)).fold(0.0, f64::max);
        Some((peak * model.margin).ceil() as u32)
    }

    /// How much the model expects demand to rise over the boot delay from now (its level errors cancel out).
    pub fn rise(&mut self, o: &Observation<'_>) -> Option<u32> {
        let lookahead = self.config.lookahead_minutes;
        let model = self.model(o)?;
        let now = model.forecast(o.minute);
        let end = o.minute + u64::from(o.boot_minutes + lookahead);
        let peak = (o.minute..=end).map(|m| model.forecast(m)).fold(0.0, f64::max);
        Some((peak - now).max(0.0).ceil() as u32)
    }
}

impl Policy for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn decide(&mut self, o: &Observation<'_>) -> Decision {
        match self.forecast(o) {
            Some(slots) => {
                let n = hosts(u64::from(slots), o.slots_per_instance);
                Decision {
                    desired: clamp(n, o),
                    reason: format!("forecast {slots} slots within {} minutes", o.boot_minutes),
                    forecast: Some(slots),
                }
            }
            None => Decision {
                desired: clamp(o.ready + o.booting, o),
                reason: format!(
                    "learning: {} of {} minutes of history",
                    o.history.len(),
                    self.config.min_history_minutes
                ),
                forecast: None,
            },
        }
    }
}

/// `Hybrid`'s knobs: the forecast's (by default the model's median: its margin is the reactive headroom) and the
/// reactive rule's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HybridConfig {
    pub predictive: PredictiveConfig,
    pub reactive: ReactiveConfig,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            predictive: PredictiveConfig { quantile: 0.5, lookahead_minutes: 0, ..PredictiveConfig::default() },
            reactive: ReactiveConfig { headroom: 3, ..ReactiveConfig::default() },
        }
    }
}

pub struct Hybrid {
    predictive: Predictive,
    reactive: Reactive,
}

impl Hybrid {
    pub fn new(config: HybridConfig) -> Hybrid {
        Hybrid { predictive: Predictive::new(config.predictive), reactive: Reactive::new(config.reactive) }
    }
}

impl Policy for Hybrid {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn decide(&mut self, o: &Observation<'_>) -> Decision {
        // The reactive rule applied to what is wanted now plus the rise the model expects within the boot delay:
        // the model carries the diurnal ramp (its errors in level cancel out), the headroom the noise and what no
        // model foresees.
        let rise = self.predictive.rise(o).unwrap_or(0);
        let ahead = Observation { demand: o.demand + rise, ..*o };
        let d = self.reactive.decide(&ahead);
        let reason = if rise > 0 {
            format!("{rise} more slots expected within {} minutes: {}", o.boot_minutes, d.reason)
        } else {
            d.reason
        };
        Decision { reason, forecast: Some(o.demand + rise).filter(|_| rise > 0), ..d }
    }
}

/// A policy by name with its parameters, as `[[autoscaler.groups]]` gives them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PolicyConfig {
    Reactive(ReactiveConfig),
    Predictive(PredictiveConfig),
    Hybrid(HybridConfig),
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig::Reactive(ReactiveConfig::default())
    }
}

impl PolicyConfig {
    pub fn build(&self) -> Box<dyn Policy> {
        match self {
            PolicyConfig::Reactive(c) => Box::new(Reactive::new(c.clone())),
            PolicyConfig::Predictive(c) => Box::new(Predictive::new(c.clone())),
            PolicyConfig::Hybrid(c) => Box::new(Hybrid::new(c.clone())),
        }
    }

    /// The first rule the parameters break, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let p = match self {
            PolicyConfig::Reactive(_) => return Ok(()),
            PolicyConfig::Predictive(p) => p,
            PolicyConfig::Hybrid(h) => &h.predictive,
        };
        if !(0.5..=1.0).contains(&p.quantile) {
            return Err(format!("policy.quantile must be 0.5 to 1.0, got {}", p.quantile));
        }
        if p.bucket_minutes == 0 || p.bucket_minutes as u64 > DAY {
            return Err(format!("policy.bucket_minutes must be 1 to 1440, got {}", p.bucket_minutes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(h: &History, minute: u64, demand: u32, ready: u32) -> Observation<'_> {
        Observation {
            minute,
            now_ms: minute * 60_000,
            demand,
            ready,
            booting: 0,
            shortfall: 0,
            slots_per_instance: 16,
            boot_minutes: 10,
            min: 0,
            max: 1000,
            history: h,
        }
    }

    #[test]
    fn reactive_grows_at_once_and_shrinks_only_after_the_cooldown() {
        let h = History::default();
        let mut p = Reactive::new(ReactiveConfig { headroom: 2, scale_in_cooldown_s: 600, ..Default::default() });
        assert_eq!(p.decide(&obs(&h, 0, 160, 5)).desired, 12, "10 instances of demand and 2 headroom");
        assert_eq!(p.decide(&obs(&h, 5, 16, 12)).desired, 12, "held within the cooldown");
        assert_eq!(p.decide(&obs(&h, 11, 16, 12)).desired, 3, "the cooldown passed");
        let d = p.decide(&obs(&h, 12, 0, 3));
        assert_eq!(d.desired, 3, "held: the need at minute 11 is within the window");
        let mut slow = Reactive::new(ReactiveConfig { headroom: 0, scale_in_cooldown_s: 0, scale_up_cooldown_s: 120 });
        assert_eq!(slow.decide(&obs(&h, 30, 32, 0)).desired, 2);
        assert_eq!(slow.decide(&obs(&h, 31, 64, 2)).desired, 2, "within the scale-up cooldown");
        assert_eq!(slow.decide(&obs(&h, 33, 64, 2)).desired, 4, "after it");
        let mut bounded = Observation { min: 4, max: 6, ..obs(&h, 20, 1000, 0) };
        assert_eq!(p.decide(&bounded).desired, 6, "never above max");
        bounded.demand = 0;
        bounded.minute = 100;
        bounded.now_ms = 100 * 60_000;
        assert_eq!(p.decide(&bounded).desired, 4, "never below min");
    }

    #[test]
    fn history_keeps_each_minutes_peak_fills_gaps_and_stays_bounded() {
        let mut h = History::default();
        h.record(10, 5);
        h.record(10, 3);
        h.record(13, 7);
        assert_eq!(h.samples().collect::<Vec<_>>(), vec![(10, 5), (11, 5), (12, 5), (13, 7)]);
        for m in 14..14 + MAX_HISTORY as u64 {
            h.record(m, 1);
        }
        assert_eq!(h.len(), MAX_HISTORY);
    }

    #[test]
    fn predictive_learns_a_daily_shape_and_a_trend_and_forecasts_the_boot_delay_ahead() {
        let mut h = History::default();
        let shape = |m: u64| if (m % DAY) < 720 { 100.0 } else { 300.0 };
        for m in 0..7 * DAY {
            h.record(m, (shape(m) * (1.0 + m as f64 / (7 * DAY) as f64 * 0.1)) as u32);
        }
        let mut p = Predictive::new(PredictiveConfig { quantile: 0.5, lookahead_minutes: 0, ..Default::default() });
        // Ten minutes before the afternoon step, the forecast already covers it.
        let at = 7 * DAY + 710;
        let d = p.decide(&obs(&h, at, 100, 7));
        let f = d.forecast.expect("a model");
        assert!((300..400).contains(&f), "forecast {f}");
        assert_eq!(d.desired, f.div_ceil(16));
        let early = p.decide(&obs(&h, 7 * DAY + 100, 100, 7)).forecast.expect("a model");
        assert!((95..140).contains(&early), "a morning forecast {early}");
        let none = Predictive::new(PredictiveConfig::default()).decide(&obs(&History::default(), 0, 50, 3));
        assert_eq!((none.desired, none.forecast), (3, None), "without history it keeps the size");
    }

    #[test]
    fn policy_settings_are_checked_by_name() {
        let bad = PolicyConfig::Predictive(PredictiveConfig { quantile: 2.0, ..Default::default() });
        assert!(bad.validate().unwrap_err().starts_with("policy.quantile"));
        let toml_like: PolicyConfig = serde_json::from_str(r#"{"kind":"hybrid","reactive":{"headroom":3}}"#).unwrap();
        assert!(matches!(toml_like, PolicyConfig::Hybrid(ref h) if h.reactive.headroom == 3));
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"kind":"magic"}"#).is_err());
    }
}
