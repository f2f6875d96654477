//! The field names of a `#[derive(Deserialize)]` struct, read from serde itself: a config
//! file's accepted keys are then listed from the one struct that parses it, and the Nix
//! modules can be tested against that list rather than against a copy of it.

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The keys `T` accepts (its field names after serde's renames).
pub fn of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut collector = FieldCollector(&[]);
    // It always fails: the collector answers no data, only records what was asked for.
    let _ = T::deserialize(&mut collector);
    collector.0
}

struct FieldCollector(&'static [&'static str]);

impl<'de> Deserializer<'de> for &mut FieldCollector {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(de::Error::custom("only the field names were asked for"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        plain: u8,
        #[serde(rename = "renamed-key")]
        other: Option<String>,
    }

    #[test]
    fn lists_the_keys_a_struct_accepts() {
        assert_eq!(super::of::<Example>(), ["plain", "renamed-key"]);
        assert!(super::of::<u8>().is_empty());
    }
}
