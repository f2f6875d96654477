//! Maintenance windows: the hours, in a named time zone, in which hosts carrying given tags
//! may start an activation. Outside them the server withholds a host's switch (and a
//! rollout defers the host) until the next one opens. Pure: the tz database is built in,
//! so every replica and the CLI agree on when a window opens, whatever the machine has.

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::names::validate_tag;

/// A maintenance window as operators write it (`yeet window set`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// The hosts it covers: those carrying any of these tags.
    pub tags: Vec<String>,
    /// The days on which it opens: `mon-fri`, `sat,sun`, `mon,wed-fri`, `daily`.
    pub days: String,
    /// Opens at this wall-clock time (`02:00`, or `02:00:30`), on each of its days.
    pub from: String,
    /// Closes at this time; at or before `from`, on the next day (`22:00` to `02:00`).
    pub to: String,
    /// An IANA time zone (`Europe/Zurich`, `UTC`).
    pub tz: String,
}

/// A window as stored, with who last set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedWindow {
    pub name: String,
    pub window: MaintenanceWindow,
    pub updated_at: i64,
    pub updated_by: String,
}

/// Why a host's switch waits: the window that opens first among those covering it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowWait {
    pub window: String,
    /// When it opens (Unix seconds).
    pub opens_at: i64,
    /// The same, as people read it in the window's zone (`Tue 02:00 CET`).
    pub opens: String,
}

/// A window checked and ready to evaluate.
#[derive(Debug, Clone)]
pub struct Schedule {
    tags: Vec<String>,
    /// Monday first.
    days: [bool; 7],
    /// Seconds after local midnight.
    from_second: i64,
    /// Seconds from opening to closing: up to a whole day.
    length_seconds: i64,
    tz: TimeZone,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(name: &str) -> Result<usize, String> {
    DAY_NAMES
        .iter()
        .position(|d| *d == name)
        .ok_or_else(|| format!("day {name:?}: write mon, tue, wed, thu, fri, sat or sun"))
}

/// `mon-fri`, `sat,sun`, `fri-mon` (a range may wrap), `daily`.
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    if matches!(text.trim(), "daily" | "*") {
        return Ok([true; 7]);
    }
    for part in text.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (mut i, end) = (day_index(a)?, day_index(b)?);
                loop {
                    days[i] = true;
                    if i == end {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day_index(part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM` or `HH:MM:SS`, 00:00 to 24:00, as seconds after midnight.
fn parse_time(text: &str) -> Result<i64, String> {
    let invalid = || format!("time {text:?}: write HH:MM, e.g. 02:00");
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return Err(invalid());
    }
    let mut fields = [0i64; 3];
    for (f, p) in fields.iter_mut().zip(&parts) {
        *f = p.parse().map_err(|_| invalid())?;
    }
    let [h, m, sec] = fields;
    if h > 24 || m > 59 || sec > 59 || h == 24 && (m > 0 || sec > 0) {
        return Err(invalid());
    }
    Ok(h * 3600 + m * 60 + sec)
}

fn weekday_index(w: Weekday) -> usize {
    usize::from(w.to_monday_zero_offset().unsigned_abs())
}

impl MaintenanceWindow {
    /// Checks the window; the error says what to write instead.
    pub fn schedule(&self) -> Result<Schedule, String> {
        if self.tags.is_empty() {
            return Err("a window covers hosts by tag: give at least one --tag".into());
        }
        if self.tags.len() > crate::names::MAX_TAGS {
            return Err(format!(
                "a window names at most {} tags",
                crate::names::MAX_TAGS
            ));
        }
        for t in &self.tags {
            validate_tag(t).map_err(|e| e.to_string())?;
        }
        let days = parse_days(&self.days)?;
        let from = parse_time(&self.from)?;
        let to = parse_time(&self.to)?;
        let tz = TimeZone::get(&self.tz).map_err(|_| {
            format!(
                "time zone {:?} is not in the tz database: write e.g. Europe/Zurich or UTC",
                self.tz
            )
        })?;
        const DAY: i64 = 24 * 3600;
        let length = if to > from {
            to - from
        } else {
            to + DAY - from
        };
        Ok(Schedule {
            tags: self.tags.clone(),
            days,
            from_second: from % DAY,
            length_seconds: length,
            tz,
        })
    }
}

impl Schedule {
    /// True when the window covers a host with these tags.
    pub fn covers(&self, host_tags: &[String]) -> bool {
        host_tags.iter().any(|t| self.tags.contains(t))
    }

    /// The openings (start, end) that begin on the local day `date`, if it is one of its days.
    fn opening_on(&self, date: Date) -> Option<(i64, i64)> {
        if !self.days[weekday_index(date.weekday())] {
            return None;
        }
        let at = date
            .at(
                (self.from_second / 3600) as i8,
                (self.from_second % 3600 / 60) as i8,
                (self.from_second % 60) as i8,
                0,
            )
            .to_zoned(self.tz.clone())
            .ok()?
            .timestamp()
            .as_second();
        Some((at, at + self.length_seconds))
    }

    /// The openings around `at` (from the day before to a week after), in order.
    fn openings(&self, at: i64) -> Vec<(i64, i64)> {
        let Ok(now) = Timestamp::from_second(at) else {
            return Vec::new();
        };
        let today = now.to_zoned(self.tz.clone()).date();
        (-1..=8)
            .filter_map(|k| today.checked_add(jiff::Span::new().days(k)).ok())
            .filter_map(|d| self.opening_on(d))
            .collect()
    }

    /// True when the window is open at `at` (Unix seconds).
    pub fn is_open(&self, at: i64) -> bool {
        self.openings(at)
            .iter()
            .any(|(s, e)| (*s..*e).contains(&at))
    }

    /// When it next opens at or after `at`: `at` itself when open; `None` when it never
    /// opens (no day selected).
    pub fn next_open(&self, at: i64) -> Option<i64> {
        if self.is_open(at) {
            return Some(at);
        }
        self.openings(at)
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| *s >= at)
            .min()
    }

    /// `at` in the window's zone, as people read it: `Tue 02:00 CET`.
    pub fn show(&self, at: i64) -> String {
        Timestamp::from_second(at)
            .map(|t| {
                t.to_zoned(self.tz.clone())
                    .strftime("%a %H:%M %Z")
                    .to_string()
            })
            .unwrap_or_else(|_| at.to_string())
    }
}

/// Whether a host with `host_tags` must wait for a window at `at`: `None` when no window
/// covers it or one that does is open; otherwise the one that opens first.
pub fn wait_for_window<'a>(
    windows: impl IntoIterator<Item = (&'a str, &'a Schedule)>,
    host_tags: &[String],
    at: i64,
) -> Option<WindowWait> {
    let mut first: Option<(i64, &str, &Schedule)> = None;
    for (name, s) in windows {
        if !s.covers(host_tags) {
            continue;
        }
        match s.next_open(at) {
            Some(t) if t <= at => return None,
            Some(t) => {
                if first.is_none_or(|(f, _, _)| t < f) {
                    first = Some((t, name, s));
                }
            }
            None => {
                first = first.or(Some((i64::MAX, name, s)));
            }
        }
    }
    first.map(|(t, name, s)| WindowWait {
        window: name.to_owned(),
        opens_at: t,
        opens: if t == i64::MAX {
            "never (no day selected)".to_owned()
        } else {
            s.show(t)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window over the tag `prod`, as written.
    fn spec(days: &str, from: &str, to: &str, tz: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            tags: vec!["prod".into()],
            days: days.into(),
            from: from.into(),
            to: to.into(),
            tz: tz.into(),
        }
    }

    fn window(days: &str, from: &str, to: &str, tz: &str) -> Schedule {
        spec(days, from, to, tz).schedule().unwrap()
    }

    /// Unix seconds of a wall-clock time in a zone.
    fn at(text: &str, tz: &str) -> i64 {
        let dt: jiff::civil::DateTime = text.parse().unwrap();
        dt.to_zoned(TimeZone::get(tz).unwrap())
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn windows_open_on_their_days_and_hours_in_their_zone() {
        // 2026-12-07 is a Monday.
        let nights = window("mon-fri", "02:00", "04:00", "Europe/Zurich");
        assert!(nights.is_open(at("2026-12-07T02:30", "Europe/Zurich")));
        assert!(!nights.is_open(at("2026-12-07T04:00", "Europe/Zurich")));
        // In its own zone, not UTC: 01:30 UTC is 02:30 CET, 03:30 UTC is 04:30 CET.
        assert!(nights.is_open(at("2026-12-07T01:30", "UTC")));
        assert!(!nights.is_open(at("2026-12-07T03:30", "UTC")));
        assert!(
            !nights.is_open(at("2026-12-12T02:30", "Europe/Zurich")),
            "Saturday"
        );
        assert_eq!(
            nights.next_open(at("2026-12-11T05:00", "Europe/Zurich")),
            Some(at("2026-12-14T02:00", "Europe/Zurich")),
            "Friday after the window: Monday's"
        );
        assert_eq!(
            nights.show(at("2026-12-14T02:00", "Europe/Zurich")),
            "Mon 02:00 CET"
        );
        // Across midnight, belonging to the day it opens.
        let late = window("fri", "22:00", "02:00", "UTC");
        assert!(
            late.is_open(at("2026-12-12T01:00", "UTC")),
            "Saturday 01:00"
        );
        assert!(!late.is_open(at("2026-12-11T01:00", "UTC")), "Friday 01:00");
        // A whole day, wrapping ranges, daily.
        assert!(window("fri-mon", "00:00", "00:00", "UTC").is_open(at("2026-12-13T12:00", "UTC")));
        assert!(!window("fri-mon", "00:00", "00:00", "UTC").is_open(at("2026-12-09T12:00", "UTC")));
        assert!(window("daily", "12:00", "13:00", "UTC").is_open(at("2026-12-09T12:59", "UTC")));
        let seconds = window("daily", "12:00:30", "12:01", "UTC");
        assert!(!seconds.is_open(at("2026-12-09T12:00:29", "UTC")));
        assert!(seconds.is_open(at("2026-12-09T12:00:30", "UTC")));
    }

    #[test]
    fn bad_windows_say_what_to_write() {
        for (days, from, to, tz, why) in [
            ("mon-fry", "02:00", "04:00", "UTC", "day"),
            ("mon", "2:00", "04:00", "UTC", "HH:MM"),
            ("mon", "02:00", "24:30", "UTC", "HH:MM"),
            ("mon", "02:00:60", "04:00", "UTC", "HH:MM"),
            ("mon", "02:00", "04:00", "Mars/Olympus", "tz database"),
        ] {
            let err = spec(days, from, to, tz).schedule().unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_host_waits_for_the_first_of_its_windows_unless_one_is_open() {
        let a = window("mon", "02:00", "03:00", "UTC");
        let b = window("mon", "01:00", "05:00", "UTC");
        let tags = vec!["prod".to_string()];
        let monday_0030 = at("2026-12-07T00:30", "UTC");
        let wait = wait_for_window([("a", &a), ("b", &b)], &tags, monday_0030).unwrap();
        assert_eq!(
            (wait.window.as_str(), wait.opens_at),
            ("b", at("2026-12-07T01:00", "UTC"))
        );
        assert_eq!(
            wait_for_window([("a", &a), ("b", &b)], &tags, at("2026-12-07T01:30", "UTC")),
            None
        );
        assert_eq!(
            wait_for_window([("a", &a)], &["dev".to_string()], monday_0030),
            None
        );
    }
}
