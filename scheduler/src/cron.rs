//! Cron schedules: a validated 5-field expression (minute hour day-of-month month day-of-week, UTC) and the next
//! minute it fires after a given time. Pure arithmetic on days since the Unix epoch; no clock, no time zones.

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
/// How far ahead `next_after` looks (a schedule like `0 0 30 2 *` never fires).
const HORIZON_DAYS: i64 = 366 * 5;

fn field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("bad step in `{item}`"))?),
            None => (item, 1),
        };
        let (first, last) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                a.parse().map_err(|_| format!("bad range `{range}`"))?,
                b.parse().map_err(|_| format!("bad range `{range}`"))?,
            )
        } else {
            let n: u32 = range.parse().map_err(|_| format!("bad value `{range}`"))?;
            (n, n)
        };
        if step == 0 || first < lo || last > hi || first > last {
            return Err(format!("`{item}` is outside {lo}-{hi}"));
        }
        let mut v = first;
        while v <= last {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("`{expr}` does not have 5 fields"));
        }
        let mut weekdays = field(f[4], 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes: field(f[0], 0, 59)?,
            hours: field(f[1], 0, 23)?,
            days: field(f[2], 1, 31)?,
            months: field(f[3], 1, 12)?,
            weekdays,
            either_day: f[2] != "*" && f[4] != "*",
        })
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
        assert_eq!(Cron::parse("0 0 31 2 *").expect("valid").next_after(0), None, "never fires");
        assert!(Cron::parse("* * *").is_err());
    }
}
