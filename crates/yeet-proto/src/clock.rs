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
