//! Binary-cache signing keys in the `name:base64` formats that
//! `nix-store --generate-binary-cache-key` writes, and `name:base64` detached signatures.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("expected `name:base64`, got something without a name")]
    MissingName,
    #[error("key or signature {0:?} is not valid base64")]
    BadBase64(String),
    #[error("key or signature {name:?} has {got} bytes, expected {expected}")]
    BadLength {
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("public key {0:?} is not a valid ed25519 point")]
    BadPoint(String),
    #[error("secret key {0:?} does not match its embedded public key")]
    Mismatch(String),
}

fn split(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, data) = s.trim().split_once(':').ok_or(KeyError::MissingName)?;
    if name.is_empty() {
        return Err(KeyError::MissingName);
    }
    let bytes = B64
        .decode(data)
        .map_err(|_| KeyError::BadBase64(name.to_owned()))?;
    Ok((name, bytes))
}

fn exact<const N: usize>(name: &str, bytes: Vec<u8>) -> Result<[u8; N], KeyError> {
    let got = bytes.len();
    bytes.try_into().map_err(|_| KeyError::BadLength {
        name: name.to_owned(),
        got,
        expected: N,
    })
}

/// A trusted public key, e.g. `cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    pub key: VerifyingKey,
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s)?;
        let key = VerifyingKey::from_bytes(&exact::<32>(name, bytes)?)
            .map_err(|_| KeyError::BadPoint(name.to_owned()))?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PublicKey {
    /// A key as people pass it on a command line: the key itself, or the path of a file
    /// that holds it (the `.pub` file `nix-store --generate-binary-cache-key` writes). The
    /// error says which of the two it was not.
    pub fn from_key_or_file(given: &str) -> Result<PublicKey, String> {
        if let Ok(key) = given.trim().parse() {
            return Ok(key);
        }
        let in_file = std::fs::read_to_string(given).map_err(|e| {
            format!("{given:?} is neither a key (name:base64) nor a readable file ({e})")
        })?;
        in_file
            .trim()
            .parse()
            .map_err(|e| format!("{given} holds no Nix public key: {e}"))
    }

    /// Verifies a detached signature made by this key over `message`. A signature made by a
    /// key of another name never verifies, as in Nix.
    pub fn verifies(&self, message: &[u8], sig: &Signature) -> bool {
        sig.key_name == self.name
            && self
                .key
                .verify(message, &ed25519_dalek::Signature::from_bytes(&sig.bytes))
                .is_ok()
    }
}

/// A secret signing key: 64 bytes (seed, then public key) in Nix's format.
#[derive(Clone)]
pub struct SecretKey {
    pub name: String,
    pub key: SigningKey,
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s)?;
        let bytes = exact::<64>(name, bytes)?;
        let key = SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| KeyError::Mismatch(name.to_owned()))?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl SecretKey {
    /// Builds a key from a 32-byte seed (callers bring their own randomness: this crate does no I/O).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(message).to_bytes(),
        }
    }

    /// The secret key in Nix's file format. Deliberately not `Display`, so that it is never
    /// printed by accident.
    pub fn to_nix_format(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

/// A detached signature as found in a narinfo `Sig:` line.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_name: String,
    pub bytes: [u8; 64],
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s)?;
        Ok(Signature {
            key_name: name.to_owned(),
            bytes: exact::<64>(name, bytes)?,
        })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, B64.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Written by `nix-store --generate-binary-cache-key test-1 sk pk` (Nix 2.8).
    const SK: &str = "test-1:RFi97CbaSuLnbX+AUgUbyz2Ss1dj9JUMJOZUOfNKdvnAnm6yUdI5HyUVzxpkIB4LUJaX7Fh4DPN+bApJprssKA==";
    const PK: &str = "test-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=";

    #[test]
    fn parses_nix_generated_keys() {
        let sk: SecretKey = SK.parse().unwrap();
        let pk: PublicKey = PK.parse().unwrap();
        assert_eq!(sk.public(), pk);
        assert_eq!(pk.to_string(), PK);
        assert_eq!(sk.to_nix_format(), SK);
        let sig = sk.sign(b"hello");
        assert!(pk.verifies(b"hello", &sig));
        assert!(!pk.verifies(b"hellO", &sig));
        let renamed = Signature {
            key_name: "other".into(),
            ..sig.clone()
        };
        assert!(!pk.verifies(b"hello", &renamed));
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
        assert!(!format!("{sk:?}").contains("RFi97"));
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!("nocolon".parse::<PublicKey>(), Err(KeyError::MissingName));
        assert_eq!(":AAAA".parse::<PublicKey>(), Err(KeyError::MissingName));
        assert!(matches!(
            "k:!!!".parse::<PublicKey>(),
            Err(KeyError::BadBase64(_))
        ));
        assert!(matches!(
            "k:AAAA".parse::<PublicKey>(),
            Err(KeyError::BadLength { .. })
        ));
        assert!(matches!(
            PK.parse::<SecretKey>(),
            Err(KeyError::BadLength { .. })
        ));
        // A secret key whose public half was swapped for another key's.
        let sk: SecretKey = SK.parse().unwrap();
        let mut bytes = sk.key.to_keypair_bytes();
        bytes[40] ^= 1;
        let forged = format!("test-1:{}", B64.encode(bytes));
        assert!(matches!(
            forged.parse::<SecretKey>(),
            Err(KeyError::Mismatch(_))
        ));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,120}") {
            let _ = s.parse::<PublicKey>();
            let _ = s.parse::<SecretKey>();
            let _ = s.parse::<Signature>();
        }

        #[test]
        fn sign_verify_roundtrip(seed in any::<[u8; 32]>(), msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            let sk = SecretKey::from_seed("k-1", &seed);
            let pk: PublicKey = sk.public().to_string().parse().unwrap();
            let sig: Signature = sk.sign(&msg).to_string().parse().unwrap();
            prop_assert!(pk.verifies(&msg, &sig));
        }
    }
}
