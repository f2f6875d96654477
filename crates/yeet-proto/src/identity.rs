//! Identities: OpenSSH ed25519 keys. A host signs with its SSH host key, an operator with
//! `~/.ssh/id_ed25519` or a key from `yeet key generate`. Keys are named by their OpenSSH
//! SHA-256 fingerprint (`SHA256:...`, as `ssh-keygen -lf` prints), the "key id".

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{HashAlg, LineEnding};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not an OpenSSH key: {0}")]
    Parse(String),
    #[error(
        "the key is {0}, but yeet needs an ed25519 key (create one with `yeet key generate` or `ssh-keygen -t ed25519`)"
    )]
    NotEd25519(String),
    #[error(
        "the private key is passphrase-protected; yeet needs an unencrypted key (remove the passphrase with `ssh-keygen -p -f FILE`)"
    )]
    Encrypted,
    #[error("the public key is not a valid ed25519 point")]
    BadPoint,
}

/// A private signing identity.
pub struct Identity {
    signing: SigningKey,
    public: PublicIdentity,
}

impl Identity {
    /// Parses an OpenSSH private key file's contents.
    pub fn from_openssh(text: &str) -> Result<Self, IdentityError> {
        let key = ssh_key::PrivateKey::from_openssh(text)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        if key.is_encrypted() {
            return Err(IdentityError::Encrypted);
        }
        match key.key_data() {
            KeypairData::Ed25519(kp) => Ok(Self::from_seed(&kp.private.to_bytes())),
            other => Err(IdentityError::NotEd25519(
                other
                    .algorithm()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            )),
        }
    }

    /// Builds an identity from a 32-byte seed (callers bring the randomness).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicIdentity::from_verifying_key(signing.verifying_key());
        Identity { signing, public }
    }

    /// The private key in OpenSSH format, for writing to a 0600 file.
    pub fn to_openssh(&self, comment: &str) -> Result<String, IdentityError> {
        let kp = Ed25519Keypair::from_seed(&self.signing.to_bytes());
        let key = ssh_key::PrivateKey::new(KeypairData::Ed25519(kp), comment)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        key.to_openssh(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| IdentityError::Parse(e.to_string()))
    }

    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public.key_id())
    }
}

/// A public identity: what the server stores for a host or user.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    key: VerifyingKey,
    key_id: String,
}

impl PublicIdentity {
    fn from_verifying_key(key: VerifyingKey) -> Self {
        let data = KeyData::Ed25519(Ed25519PublicKey(key.to_bytes()));
        let key_id = data.fingerprint(HashAlg::Sha256).to_string();
        PublicIdentity { key, key_id }
    }

    /// Parses an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub fn from_openssh(line: &str) -> Result<Self, IdentityError> {
        let key = ssh_key::PublicKey::from_openssh(line.trim())
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        match key.key_data() {
            KeyData::Ed25519(pk) => {
                let vk = VerifyingKey::from_bytes(&pk.0).map_err(|_| IdentityError::BadPoint)?;
                Ok(Self::from_verifying_key(vk))
            }
            other => Err(IdentityError::NotEd25519(other.algorithm().to_string())),
        }
    }

    /// The OpenSSH public key line, without a comment.
    pub fn to_openssh(&self) -> String {
        let data = KeyData::Ed25519(Ed25519PublicKey(self.key.to_bytes()));
        // Encoding a 32-byte ed25519 key cannot fail; fall back to an empty string rather than panic.
        ssh_key::PublicKey::from(data)
            .to_openssh()
            .unwrap_or_default()
    }

    /// `SHA256:<base64>`, identical to `ssh-keygen -lf`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", self.key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(s in "(ssh-ed25519 |-----BEGIN OPENSSH PRIVATE KEY-----\n)?\\PC{0,200}") {
            let _ = PublicIdentity::from_openssh(&s);
            let _ = Identity::from_openssh(&s);
        }

        #[test]
        fn corrupted_private_keys_are_errors_not_panics(seed in any::<[u8; 32]>(), pos in any::<usize>(), byte in any::<u8>()) {
            let text = Identity::from_seed(&seed).to_openssh("c").unwrap();
            let mut bytes = text.into_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(s) = String::from_utf8(bytes) {
                let _ = Identity::from_openssh(&s);
            }
        }
    }

    #[test]
    fn openssh_roundtrip_and_fingerprint() {
        let id = Identity::from_seed(&[1; 32]);
        let text = id.to_openssh("me@host").unwrap();
        let back = Identity::from_openssh(&text).unwrap();
        assert_eq!(back.public(), id.public());
        let public = PublicIdentity::from_openssh(&id.public().to_openssh()).unwrap();
        assert_eq!(&public, id.public());
        assert!(public.key_id().starts_with("SHA256:"));
        let sig = id.sign(b"m");
        assert!(public.verifies(b"m", &sig));
        assert!(!public.verifies(b"n", &sig));
    }

    #[test]
    fn rejects_garbage_and_other_algorithms() {
        assert!(matches!(
            Identity::from_openssh("nope"),
            Err(IdentityError::Parse(_))
        ));
        assert!(matches!(
            PublicIdentity::from_openssh("ssh-ed25519 !!!"),
            Err(IdentityError::Parse(_))
        ));
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC0 x";
        assert!(PublicIdentity::from_openssh(rsa).is_err());
    }
}
