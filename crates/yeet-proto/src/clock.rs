//! The one place yeet reads the wall clock as Unix time: signatures, nonces, check-ins and
//! the database all count seconds since the epoch.

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long ago Unix time `t` was, for people: `42s ago`, `5m ago`, `3h ago`, `2d ago`, or
/// `never`.
pub fn ago(t: Option<i64>) -> String {
    let Some(t) = t else { return "never".into() };
    let d = (unix_now() - t).max(0);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// Unix time `t` as a UTC date and minute for people: `2026-12-07 05:41 UTC`.
pub fn utc_time(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar), counted
    // in 400-year eras that start on 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against dates `date -u -d @T` prints: the epoch, a leap day, a century rule, today.
    #[test]
    fn utc_times_are_the_calendars() {
        for (t, shown) in [
            (0, "1970-01-01 00:00 UTC"),
            (951_782_400, "2000-02-29 00:00 UTC"),
            (4_107_542_400, "2100-03-01 00:00 UTC"),
            (1_796_621_040, "2026-12-07 05:24 UTC"),
            (-86_400, "1969-12-31 00:00 UTC"),
        ] {
            assert_eq!(utc_time(t), shown, "{t}");
        }
    }
}
