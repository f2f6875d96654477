//! SHA-256 hashes as they appear in narinfo files (`NarHash`, `FileHash`). Nix accepts the
//! digest in nix32, hex or SRI form; signatures are always computed over the nix32 form, so
//! every form is parsed into bytes and printed back as `sha256:<nix32>`.

use base64::Engine;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

use crate::nix32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NarHashError {
    #[error("hash {0:?} is not SHA-256 (expected `sha256:...` or `sha256-...`)")]
    UnsupportedAlgorithm(String),
    #[error("hash {0:?} has a malformed digest")]
    BadDigest(String),
}

/// A SHA-256 digest of a NAR or of a compressed NAR file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarHash(pub [u8; 32]);

impl FromStr for NarHash {
    type Err = NarHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NarHashError::BadDigest(s.to_owned());
        let bytes = if let Some(digest) = s.strip_prefix("sha256:") {
            match digest.len() {
                52 => nix32::decode(digest).map_err(|_| bad())?,
                64 => decode_hex(digest).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        } else if let Some(digest) = s.strip_prefix("sha256-") {
            base64::engine::general_purpose::STANDARD
                .decode(digest)
                .map_err(|_| bad())?
        } else {
            return Err(NarHashError::UnsupportedAlgorithm(s.to_owned()));
        };
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(NarHash(arr))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", nix32::encode(&self.0))
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parser_never_panics(s in "(sha256[:-])?\\PC{0,80}") {
            let _ = s.parse::<NarHash>();
        }

        #[test]
        fn display_roundtrips(bytes in any::<[u8; 32]>()) {
            let h = NarHash(bytes);
            prop_assert_eq!(h.to_string().parse::<NarHash>().unwrap(), h);
        }
    }

    #[test]
    fn all_forms_agree() {
        let nix = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        let hex = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sri = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let a: NarHash = nix.parse().unwrap();
        assert_eq!(a, hex.parse().unwrap());
        assert_eq!(a, sri.parse().unwrap());
        assert_eq!(a.to_string(), nix);
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        assert!(matches!(
            "md5:abc".parse::<NarHash>(),
            Err(NarHashError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:xyz".parse::<NarHash>(),
            Err(NarHashError::BadDigest(_))
        ));
        assert!(matches!(
            "sha256:é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85"
                .parse::<NarHash>(),
            Err(NarHashError::BadDigest(_))
        ));
    }
}
