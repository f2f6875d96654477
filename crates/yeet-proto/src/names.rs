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

/// Longest tag, and most tags on one host or user: tags are labels, not data.
pub const MAX_TAG_LEN: usize = 32;
pub const MAX_TAGS: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidTags {
    #[error(
        "invalid tag {0:?}: use 1-32 characters of a-z, 0-9, '-', '_' or ':', starting with a letter or digit"
    )]
    Tag(String),
    #[error("too many tags ({0}): at most 32")]
    TooMany(usize),
}

/// Checks a tag. A small alphabet, so that tags need no quoting in a shell, a URL or a
/// table, and `+tag`/`-tag` on the command line cannot be mistaken for anything else.
pub fn validate_tag(tag: &str) -> Result<(), InvalidTags> {
    let ok = (1..=MAX_TAG_LEN).contains(&tag.len())
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(InvalidTags::Tag(tag.to_owned()))
    }
}

/// Checks a set of tags and returns it sorted, without repeats.
pub fn tag_set<S: AsRef<str>>(
    tags: impl IntoIterator<Item = S>,
) -> Result<std::collections::BTreeSet<String>, InvalidTags> {
    let mut set = std::collections::BTreeSet::new();
    for tag in tags {
        validate_tag(tag.as_ref())?;
        set.insert(tag.as_ref().to_owned());
    }
    if set.len() > MAX_TAGS {
        return Err(InvalidTags::TooMany(set.len()));
    }
    Ok(set)
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

    #[test]
    fn tags_use_a_small_alphabet_and_are_bounded() {
        for good in ["prod", "eu-west", "team:web", "k_1", "0", &"a".repeat(32)] {
            assert!(validate_tag(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Prod",
            "-x",
            ":x",
            "a b",
            "a/b",
            "a.b",
            "+x",
            "é",
            &"a".repeat(33),
        ] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
        let set = tag_set(["b", "a", "b"]).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(tag_set(&many), Err(InvalidTags::TooMany(33)));
    }
}
