//! Cron schedules: a validated 5-field expression (minute hour day-of-month month day-of-week, UTC) and the next
//! minute it fires after a given time. Pure arithmetic on days since the Unix epoch; no clock, no time zones.
//!
//! The one cron grammar: a job spec's `schedule` is validated by the same parser the scheduler ticks with, so
//! what is accepted is what runs.

/// Which values of each field fire, as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month and day of week both restricted: either matching fires (as in Vixie cron).
    either_day: bool,
}

const MINUTE_MS: u64 = 60_000;
/// How far ahead `next_after` looks: five years hold a 29 February, so a schedule that fires at all fires within
/// them (`parse` refuses one that does not, such as `0 0 30 2 *`).
const HORIZON_DAYS: i64 = 366 * 5;

/// The five fields of a cron expression, in order, with their ranges (day of week 7 is Sunday, like 0).
const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];

/// One field: a comma list of `*`, `N`, `A-B`, `*/S` or `A-B/S`, as a bit set of the values that fire.
fn field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (first, last, step) = item_range(item, lo, hi)?;
        let mut v = first;
        while v <= last {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn item_range(item: &str, lo: u32, hi: u32) -> Result<(u32, u32, u32), String> {
    if item.is_empty() {
        return Err("empty item in the list".to_owned());
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(number(step)?)),
        None => (item, None),
    };
    if let Some(step) = step {
        let span = hi - lo + 1;
        if step == 0 || step > span {
            return Err(format!("step {step} must be 1 to {span}"));
        }
    }
    if range == "*" {
        return Ok((lo, hi, step.unwrap_or(1)));
    }
    let (first, last) = match range.split_once('-') {
        Some((first, last)) => (number(first)?, number(last)?),
        // `5/10` is accepted by some crons and means different things in others; we take only the forms above.
        None if step.is_some() => return Err(format!("`{item}`: a step follows `*` or a range A-B")),
        None => {
            let n = number(range)?;
            (n, n)
        }
    };
    for n in [first, last] {
        if !(lo..=hi).contains(&n) {
            return Err(format!("{n} is outside {lo}-{hi}"));
        }
    }
    if first > last {
        return Err(format!("the range {first}-{last} runs backwards"));
    }
    Ok((first, last, step.unwrap_or(1)))
}

fn number(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a number"));
    }
    text.parse().map_err(|_| format!("{text} is too large"))
}

impl Cron {
    /// Parses an expression, refusing one that never fires (`0 0 31 2 *`): the message names the field at fault.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != FIELDS.len() {
            return Err(format!(
                "`{expr}` has {} fields; a schedule has 5: minute hour day-of-month month day-of-week",
                f.len()
            ));
        }
        let mut bits = [0u64; 5];
        for (i, (text, (name, lo, hi))) in f.iter().zip(FIELDS).enumerate() {
            bits[i] = field(text, lo, hi).map_err(|why| format!("{name} field `{text}`: {why}"))?;
        }
        let [minutes, hours, days, months, mut weekdays] = bits;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        let cron = Cron { minutes, hours, days, months, weekdays, either_day: f[2] != "*" && f[4] != "*" };
        // Every schedule that fires at all fires within any window of HORIZON_DAYS (a 29 February included).
        if cron.next_after(0).is_none() {
            return Err(format!("`{expr}` never fires: no month named has the day of month named"));
        }
        Ok(cron)
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, month, dom) = civil(day);
        if self.months & (1 << month) == 0 {
            return false;
        }
        let weekday = (day + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday.
        let by_dom = self.days & (1 << dom) != 0;
        let by_dow = self.weekdays & (1 << weekday) != 0;
        if self.either_day {
            by_dom || by_dow
        } else {
            by_dom && by_dow
        }
    }

    /// The first minute strictly after `after_ms` that the schedule fires at, in ms since the epoch.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let start = after_ms / MINUTE_MS + 1;
        let first_day = (start / 1440) as i64;
        for day in first_day..first_day + HORIZON_DAYS {
            if !self.day_matches(day) {
                continue;
            }
            let from = if day == first_day { start % 1440 } else { 0 };
            for hour in (from / 60)..24 {
                if self.hours & (1 << hour) == 0 {
                    continue;
                }
                let first_minute = if hour == from / 60 { from % 60 } else { 0 };
                for minute in first_minute..60 {
                    if self.minutes & (1 << minute) != 0 {
                        return Some(((day as u64) * 1440 + hour * 60 + minute) * MINUTE_MS);
                    }
                }
            }
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ms of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: u64, mi: u64) -> u64 {
        // Days from civil (the inverse of `civil`), for the tests only.
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if mo > 2 { mo - 3 } else { mo + 9 } as i64;
        let doy = (153 * mp + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        ((days as u64) * 1440 + h * 60 + mi) * MINUTE_MS
    }

    #[test]
    fn schedules_that_never_fire_are_refused() {
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30-31 2 *"] {
            let e = Cron::parse(never).expect_err(never);
            assert!(e.contains("never fires"), "{never}: {e}");
        }
        // A day of the week as well fires on that weekday (either matches); 29 February fires in leap years.
        for fires in ["0 0 31 2 1", "0 0 29 2 *", "0 0 31 1-2 *"] {
            assert!(Cron::parse(fires).is_ok(), "{fires}");
        }
    }

    #[test]
    fn the_grammar_is_the_strict_one() {
        for bad in ["5/10 * * * *", "*/0 * * * *", "*/61 * * * *", "30-10 * * * *", "1,,2 * * * *", "@daily"] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
        let steps = Cron::parse("0-30/10 */2 1-15/7 * *").expect("valid");
        assert_eq!(steps.minutes, 1 | 1 << 10 | 1 << 20 | 1 << 30);
        assert_eq!(steps.days, 1 << 1 | 1 << 8 | 1 << 15);
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(at(2024, 2, 29, 0, 0) / MINUTE_MS / 1440, 19_782);
        assert_eq!(civil(19_782), (2024, 2, 29));
    }

    #[test]
    fn next_ticks_follow_the_fields() {
        let every5 = Cron::parse("*/5 * * * *").expect("valid");
        assert_eq!(every5.next_after(at(2026, 11, 22, 3, 12)), Some(at(2026, 11, 22, 3, 15)));
        assert_eq!(every5.next_after(at(2026, 11, 22, 3, 15)), Some(at(2026, 11, 22, 3, 20)), "strictly after");
        let nightly = Cron::parse("30 2 * * *").expect("valid");
        assert_eq!(nightly.next_after(at(2026, 11, 22, 3, 0)), Some(at(2026, 11, 23, 2, 30)));
        // Sunday 2026-11-22; `0 9 * * 1-5` next fires Monday.
        let weekdays = Cron::parse("0 9 * * 1-5").expect("valid");
        assert_eq!(weekdays.next_after(at(2026, 11, 22, 10, 0)), Some(at(2026, 11, 23, 9, 0)));
        let sunday = Cron::parse("0 0 * * 7").expect("valid");
        assert_eq!(sunday.next_after(at(2026, 11, 23, 0, 0)), Some(at(2026, 11, 29, 0, 0)), "7 is Sunday");
        let leap = Cron::parse("0 0 29 2 *").expect("valid");
        assert_eq!(leap.next_after(at(2026, 3, 1, 0, 0)), Some(at(2028, 2, 29, 0, 0)));
        // Both day fields restricted: either matches (the 1st, or any Monday).
        let either = Cron::parse("0 0 1 * 1").expect("valid");
        assert_eq!(either.next_after(at(2026, 11, 22, 0, 0)), Some(at(2026, 11, 23, 0, 0)));
        assert!(Cron::parse("* * *").is_err());
    }
}
