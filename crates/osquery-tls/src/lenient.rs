//! Numbers and booleans as osqueryd versions send them. Clients built on boost's
//! `property_tree` (osquery before 4.x, and some forks) serialize every value as a string:
//! `"unixTime": "1700000000"`, `"severity": "0"`, `"block_count": "3"`, `"numerics": "false"`.
//! Newer clients send JSON numbers. These deserializers accept both, and serialize back as
//! numbers. Use them with `#[serde(deserialize_with = "lenient::u64")]`.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// Parses a whole-number string, with surrounding spaces allowed.
fn parse_integer<T: std::str::FromStr, E: de::Error>(s: &str, what: &str) -> Result<T, E> {
    s.trim()
        .parse()
        .map_err(|_| E::custom(format!("expected {what}, found the string {s:?}")))
}

struct IntegerVisitor<T>(std::marker::PhantomData<T>);

impl<T> Visitor<'_> for IntegerVisitor<T>
where
    T: TryFrom<u64> + TryFrom<i64> + std::str::FromStr,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer, or a string holding one")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Some serializers write whole numbers as 3.0; anything else is not an integer.
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            self.visit_i64(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        parse_integer(v, "an integer")
    }
}

/// A `u64` sent as a number or a string.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(IntegerVisitor(std::marker::PhantomData))
}

/// An `i64` sent as a number or a string.
pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntegerVisitor(std::marker::PhantomData))
}

/// An optional `u64`: absent, `null` and `""` are `None`.
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(OptionalVisitor(IntegerVisitor(std::marker::PhantomData)))
}

/// An optional `i64`: absent, `null` and `""` are `None`.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(OptionalVisitor(IntegerVisitor(std::marker::PhantomData)))
}

/// Wraps a visitor so that `null` and the empty string mean "absent".
struct OptionalVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for OptionalVisitor<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)?;
        f.write_str(", or nothing")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.0.visit_u64(v).map(Some)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.0.visit_i64(v).map(Some)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.0.visit_f64(v).map(Some)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.0.visit_bool(v).map(Some)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.trim().is_empty() {
            Ok(None)
        } else {
            self.0.visit_str(v).map(Some)
        }
    }
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean, 0 or 1, or a string holding one")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::custom(format!("{v} is not a boolean"))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("{v} is not a boolean")))
            .and_then(|v| self.visit_u64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err(E::custom(format!(
                "expected a boolean, found the string {v:?}"
            ))),
        }
    }
}

/// A `bool` sent as `true`, `1` or `"true"` (and their opposites).
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(BoolVisitor)
}

/// An optional `bool`: absent and `null` are `None`.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    d.deserialize_any(OptionalVisitor(BoolVisitor))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Numbers {
        #[serde(deserialize_with = "super::u64")]
        count: u64,
        #[serde(default, deserialize_with = "super::opt_i64")]
        severity: Option<i64>,
        #[serde(default, deserialize_with = "super::bool")]
        numerics: bool,
    }

    fn parse(json: &str) -> Result<Numbers, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn numbers_as_numbers_and_as_strings_are_the_same() {
        let new = parse(r#"{"count": 3, "severity": 1, "numerics": true}"#).unwrap();
        let old = parse(r#"{"count": "3", "severity": "1", "numerics": "true"}"#).unwrap();
        assert_eq!(new, old);
        assert_eq!(new.count, 3);
        assert_eq!(new.severity, Some(1));
        assert!(new.numerics);
    }

    #[test]
    fn empty_and_null_optionals_are_absent() {
        for json in [
            r#"{"count": 0}"#,
            r#"{"count": 0, "severity": null}"#,
            r#"{"count": 0, "severity": ""}"#,
        ] {
            assert_eq!(parse(json).unwrap().severity, None, "{json}");
        }
    }

    #[test]
    fn garbage_is_an_error_that_names_it() {
        let err = parse(r#"{"count": "three"}"#).unwrap_err().to_string();
        assert!(err.contains("\"three\""), "{err}");
        assert!(parse(r#"{"count": -1}"#).is_err());
        assert!(parse(r#"{"count": 1.5}"#).is_err());
        assert!(parse(r#"{"count": 1, "numerics": "maybe"}"#).is_err());
        assert!(parse(r#"{"count": [1]}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_u64_reads_back_from_both_forms(n: u64) {
            let as_number = parse(&format!(r#"{{"count": {n}}}"#)).unwrap();
            let as_string = parse(&format!(r#"{{"count": "{n}"}}"#)).unwrap();
            proptest::prop_assert_eq!(as_number.count, n);
            proptest::prop_assert_eq!(as_string.count, n);
        }
    }
}
