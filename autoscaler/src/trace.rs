//! The shared diurnal demand trace (`shared/bench/autoscale-trace.md`), bit-exact: SplitMix64, the draws in the
//! order the definition gives, and `round_ties_even`. Demand is in task slots per minute.

/// SplitMix64 with wrapping arithmetic.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Box-Muller, the cosine branch only.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform();
        let u2 = self.uniform();
        (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

pub const SEED: u64 = 20240601;
pub const MINUTES_PER_DAY: usize = 1440;
pub const DAYS: usize = 21;
/// Days 0-13 are history; days 14-20 are scored.
pub const HISTORY_DAYS: usize = 14;
/// Slots a host holds.
pub const SLOTS_PER_HOST: u32 = 16;

const M: f64 = 800.0;
const A: f64 = 0.45;
const H2: f64 = 0.15;
const TROUGH_MIN: f64 = 300.0;
const WEEKEND: f64 = 0.85;
const GROWTH: f64 = 0.02;
const PHI: f64 = 0.95;
const SIGMA: f64 = 0.01;
const P_SPIKE: f64 = 1.0 / 1440.0;
const SPIKE_MIN: f64 = 0.2;
const SPIKE_RANGE: f64 = 0.6;
const SPIKE_LMIN: f64 = 10.0;
const SPIKE_LRANGE: f64 = 50.0;

/// The trace: demand per minute, and whether a spike was under way in each minute.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub demand: Vec<u32>,
    pub in_spike: Vec<bool>,
}

impl Trace {
    /// The 21-day trace of the definition.
    pub fn generate() -> Trace {
        let n = DAYS * MINUTES_PER_DAY;
        let mut rng = SplitMix64::new(SEED);
        let mut spike = vec![0.0f64; n];
        let mut in_spike = vec![false; n];
        let mut demand = Vec::with_capacity(n);
        let mut e = 0.0f64;
        for t in 0..n {
            let z = rng.normal();
            e = PHI * e + SIGMA * z;
            let u = rng.uniform();
            if u < P_SPIKE {
                let a = M * (SPIKE_MIN + SPIKE_RANGE * rng.uniform());
                let l = SPIKE_LMIN as usize + (SPIKE_LRANGE * rng.uniform()).floor() as usize;
                for k in t..(t + l).min(n) {
                    spike[k] += a;
                    in_spike[k] = true;
                }
            }
            let minute = (t % MINUTES_PER_DAY) as f64;
            let theta = 2.0 * std::f64::consts::PI * (minute - TROUGH_MIN) / MINUTES_PER_DAY as f64;
            let s = -theta.cos() + H2 * (2.0 * theta).sin();
            let w = if matches!((t / MINUTES_PER_DAY) % 7, 5 | 6) { WEEKEND } else { 1.0 };
            let g = 1.0 + GROWTH * t as f64 / 10080.0;
            let d = (M * g * w * (1.0 + A * s) * (1.0 + e) + spike[t]).round_ties_even().max(0.0);
            demand.push(d as u32);
        }
        Trace { demand, in_spike }
    }

    /// The values joined by newlines with a final newline (what the definition's SHA-256 is of).
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(self.demand.len() * 5);
        for d in &self.demand {
            s.push_str(&d.to_string());
            s.push('\n');
        }
        s
    }

    /// The first scored minute.
    pub fn scored_from(&self) -> usize {
        HISTORY_DAYS * MINUTES_PER_DAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_generator_and_the_trace_match_the_definition_bit_for_bit() {
        let mut rng = SplitMix64::new(SEED);
        assert_eq!(
            [rng.next_u64(), rng.next_u64(), rng.next_u64()],
            [470456245648421624, 11696867311691464299, 153245711798325687]
        );
        let trace = Trace::generate();
        assert_eq!(trace.demand.len(), 21 * 1440);
        assert_eq!(&trace.demand[..3], &[679, 690, 686]);
        let hash = sha2::Sha256::digest(trace.text().as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "204b24dc47e3a7bd543b3122c393e327ff068adee7604fe2573620b74a34622f");
    }
}
