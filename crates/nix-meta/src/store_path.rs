//! Store paths: `<store dir>/<32 nix32 chars>-<name>`, validated the way Nix validates them,
//! so that a path from the network can be handed to `nix-store` without surprises.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

use crate::nix32;

/// The store directory every NixOS host uses.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
const HASH_LEN: usize = 32;
const MAX_NAME_LEN: usize = 211;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("{0:?} is not inside the store directory {1}")]
    NotInStore(String, String),
    #[error("{0:?} has no `<hash>-<name>` base name")]
    Malformed(String),
    #[error("{0:?} has an invalid hash part")]
    BadHash(String),
    #[error(
        "{0:?} has an invalid name (allowed: letters, digits and +-._?=, not starting with a dot, at most 211 characters)"
    )]
    BadName(String),
}

/// A validated store path. Kept as its base name; the store directory is given when printed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    base_name: String,
}

impl StorePath {
    /// Parses a base name such as `q322pzff5rm7kwfwfbhcza6wr2b84wlm-test-system`, as narinfo
    /// `References` and `Deriver` fields contain.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let malformed = || StorePathError::Malformed(base.to_owned());
        let (hash, name) = (
            base.get(..HASH_LEN).ok_or_else(malformed)?,
            base.get(HASH_LEN..).ok_or_else(malformed)?,
        );
        let name = name.strip_prefix('-').ok_or_else(malformed)?;
        if nix32::decode(hash).is_err() {
            return Err(StorePathError::BadHash(base.to_owned()));
        }
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if !name_ok {
            return Err(StorePathError::BadName(base.to_owned()));
        }
        Ok(StorePath {
            base_name: base.to_owned(),
        })
    }

    /// Parses a full path inside `store_dir`. Sub-paths (`.../bin/foo`) are rejected.
    pub fn parse_in(store_dir: &str, path: &str) -> Result<Self, StorePathError> {
        let base = path
            .strip_prefix(store_dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned(), store_dir.to_owned()))?;
        Self::from_base_name(base)
    }

    /// The 32-character hash part, which names the narinfo file in a binary cache.
    pub fn hash_part(&self) -> &str {
        &self.base_name[..HASH_LEN]
    }

    pub fn name(&self) -> &str {
        &self.base_name[HASH_LEN + 1..]
    }

    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    /// A store derivation (`.drv`): realising one *builds* it, running its builder, so a
    /// path from the network that names one is never handed to `nix-store --realise`.
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }

    /// The full path inside `store_dir`.
    pub fn in_store(&self, store_dir: &str) -> String {
        format!("{store_dir}/{}", self.base_name)
    }
}

/// Parses a full path in the default store directory.
impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_in(DEFAULT_STORE_DIR, s)
    }
}

/// Prints the full path in the default store directory.
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DEFAULT_STORE_DIR}/{}", self.base_name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-test-system";

    #[test]
    fn parses_and_prints() {
        let p: StorePath = GOOD.parse().unwrap();
        assert_eq!(p.hash_part(), "q322pzff5rm7kwfwfbhcza6wr2b84wlm");
        assert_eq!(p.name(), "test-system");
        assert_eq!(p.to_string(), GOOD);
        assert_eq!(
            p.in_store("/tmp/store"),
            "/tmp/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-test-system"
        );
    }

    #[test]
    fn rejects_invalid_paths() {
        for bad in [
            "",
            "/nix/store",
            "/nix/store/",
            "/etc/passwd",
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm",
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-",
            "/nix/store/e322pzff5rm7kwfwfbhcza6wr2b84wlm-x",
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-a/b",
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-.hidden",
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-a b",
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-../../etc",
            "/nix/storeq322pzff5rm7kwfwfbhcza6wr2b84wlm-x",
        ] {
            assert!(bad.parse::<StorePath>().is_err(), "{bad:?} was accepted");
        }
        let long = format!(
            "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-{}",
            "a".repeat(212)
        );
        assert!(long.parse::<StorePath>().is_err());
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,120}") {
            let _ = s.parse::<StorePath>();
            let _ = StorePath::from_base_name(&s);
        }

        #[test]
        fn valid_paths_roundtrip(hash in proptest::collection::vec(any::<u8>(), 20), name in "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,60}") {
            let path = format!("/nix/store/{}-{name}", nix32::encode(&hash));
            let p: StorePath = path.parse().unwrap();
            prop_assert_eq!(p.to_string(), path);
        }
    }
}
