//! Cron schedules as Kubernetes reads them (robfig/cron's standard parser): five fields — minute, hour,
//! day of month, month, day of week — with `*`, `?`, lists, ranges, steps and month/day names, or one of
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`; evaluated in a time
//! zone. When both day fields are restricted a day matching either runs, as cron does.

use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + offset);
    }
    s.parse::<u32>().map_err(|_| {
        format!("failed to parse int from {s}: strconv.Atoi: parsing \"{s}\": invalid syntax")
    })
}

/// One field's bits and whether it was `*`/`?`.
fn field(
    spec: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_offset: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = step.is_none();
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, name_offset)?, value(b, names, name_offset)?)
        } else {
            let v = value(range, names, name_offset)?;
            // `5/10` means from 5 to the end in steps of 10.
            (v, if step.is_some() { max } else { v })
        };
        if lo < min {
            return Err(format!(
                "beginning of range ({lo}) below minimum ({min}): {spec}"
            ));
        }
        if hi > max {
            return Err(format!("end of range ({hi}) above maximum ({max}): {spec}"));
        }
        if lo > hi {
            return Err(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {spec}"
            ));
        }
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {spec}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                f.len(),
                f.join(" ")
            ));
        }
        let (minutes, _) = field(f[0], 0, 59, &[], 0)?;
        let (hours, _) = field(f[1], 0, 23, &[], 0)?;
        let (days, days_star) = field(f[2], 1, 31, &[], 0)?;
        let (months, _) = field(f[3], 1, 12, MONTHS, 1)?;
        let (weekdays, weekdays_star) = field(f[4], 0, 6, WEEKDAYS, 0)?;
        Ok(Self {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star,
            weekdays_star,
        })
    }

    fn day_matches(&self, dt: &DateTime) -> bool {
        let dom = self.days & (1 << dt.day()) != 0;
        let dow = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time after `after`, within five years.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let zoned = after.to_zoned(tz.clone());
        let start = zoned.datetime();
        let mut t = DateTime::new(
            start.year(),
            start.month(),
            start.day(),
            start.hour(),
            start.minute(),
            0,
            0,
        )
        .ok()?
        .checked_add(1.minute())
        .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let first = t.first_of_month().checked_add(1.month()).ok()?;
                t = first
                    .date()
                    .to_datetime(k8s_openapi::jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(&t) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(k8s_openapi::jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = DateTime::new(t.year(), t.month(), t.day(), t.hour(), 0, 0, 0)
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let ts = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The latest scheduled time in (`earliest`, `now`], and how many were missed in between (at most
    /// counted to 101, as upstream stops counting).
    pub fn most_recent(
        &self,
        earliest: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
    ) -> (Option<Timestamp>, usize) {
        let mut last = None;
        let mut count = 0;
        let mut t = earliest;
        while let Some(n) = self.next(t, tz) {
            if n > now {
                break;
            }
            last = Some(n);
            count += 1;
            t = n;
            if count > 100 {
                // Too many to walk: jump to the last ones before now.
                let mut probe = now.checked_sub(2.hours()).unwrap_or(now);
                if probe < t {
                    probe = t;
                }
                t = probe;
                while let Some(n) = self.next(t, tz) {
                    if n > now {
                        break;
                    }
                    last = Some(n);
                    t = n;
                }
                break;
            }
        }
        (last, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_fields_names_and_descriptors() {
        let every = Schedule::parse("*/1 * * * *").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            every.next(ts("2026-01-01T10:00:30Z"), &utc),
            Some(ts("2026-01-01T10:01:00Z"))
        );
        let s = Schedule::parse("30 2 * JAN-MAR MON,fri").unwrap();
        // 2026-01-02 is a Friday.
        assert_eq!(
            s.next(ts("2026-01-01T03:00:00Z"), &utc),
            Some(ts("2026-01-02T02:30:00Z"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next(ts("2026-01-01T10:00:00Z"), &utc),
            Some(ts("2026-01-01T11:00:00Z"))
        );
        assert!(Schedule::parse("* * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("@sometimes").is_err());
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th or any Friday.
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        let utc = TimeZone::UTC;
        // 2026-02-06 is a Friday, before the 13th.
        assert_eq!(
            s.next(ts("2026-02-01T00:00:00Z"), &utc),
            Some(ts("2026-02-06T00:00:00Z"))
        );
    }

    #[test]
    fn the_most_recent_missed_time_is_found() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        let (last, n) = s.most_recent(
            ts("2026-01-01T10:00:00Z"),
            ts("2026-01-01T10:17:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!(last, Some(ts("2026-01-01T10:15:00Z")));
        assert_eq!(n, 3);
    }
}
