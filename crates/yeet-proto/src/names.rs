//! Host names as yeet accepts them: the names operators type and the labels hosts show.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid host name {0:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
)]
pub struct InvalidHostName(pub String);

/// Checks a host name. Lower-case only, so that names never differ by case alone.
pub fn validate_host_name(name: &str) -> Result<(), InvalidHostName> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(InvalidHostName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_rejects_odd_ones() {
        for good in ["web-1", "db.example", "a", "x_y"] {
            assert!(validate_host_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "-x", ".x", "a b", "a/b", &"a".repeat(64)] {
            assert!(validate_host_name(bad).is_err(), "{bad}");
        }
    }
}
