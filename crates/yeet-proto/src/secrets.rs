//! Secrets, as every party sees them: their names, the manifest a system carries
//! (`etc/yeet/secrets.json`, written by the `yeet.secrets` NixOS option), the digest of the
//! versions granted to a host, the wire types of the secret endpoints, and the age
//! operations (seal to a recipient, open with an identity) that the CLI, the server and the
//! agent share. Plaintext only ever lives in `Zeroizing` buffers, which are wiped on drop.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use thiserror::Error;
use zeroize::Zeroizing;

/// Where a system carries its manifest, relative to its store path.
pub const MANIFEST_PATH: &str = "etc/yeet/secrets.json";
/// The stable directory services read secrets from: a link to the live generation.
pub const SECRETS_DIR: &str = "/run/yeet/secrets";
/// The largest secret, in plaintext bytes. Secrets are keys, passwords and certificates;
/// bulk data belongs in the system or in a service's own state.
pub const MAX_SECRET_BYTES: usize = 256 * 1024;
/// The most secrets one system may ask for (and one fetch may carry).
pub const MAX_SECRETS: usize = 1000;
/// The largest manifest an agent reads.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "invalid secret name {0:?}: use 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("secret {name}: {reason}")]
    InvalidEntry { name: String, reason: String },
    #[error("the secrets manifest is not valid JSON of the expected shape: {0}")]
    Manifest(String),
    #[error("the manifest asks for {0} secrets; at most {MAX_SECRETS} are allowed")]
    TooMany(usize),
    #[error("invalid age recipient: {0}")]
    Recipient(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("the secret is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge,
    #[error("the secret is empty")]
    Empty,
}

/// Checks a secret's name. It becomes a file name under `/run/yeet/secrets`, so it can hold
/// neither `/` nor a leading `.`.
pub fn validate_secret_name(name: &str) -> Result<(), SecretError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SecretError::InvalidName(name.to_owned()))
    }
}

/// The default place of secret `name` on a host.
pub fn default_path(name: &str) -> String {
    format!("{SECRETS_DIR}/{name}")
}

/// What a system asks for one secret (`yeet.secrets.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretEntry {
    /// Where services find it: `/run/yeet/secrets/<name>`, or a path of the operator's
    /// choosing, which the agent makes a link to that file.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    /// Octal permission bits, such as "0400".
    #[serde(default = "owner_only")]
    pub mode: String,
    /// Units restarted (`systemctl try-restart`) when the secret changes without a switch.
    #[serde(default)]
    pub restart_units: Vec<String>,
}

fn root() -> String {
    "root".into()
}

fn owner_only() -> String {
    "0400".into()
}

impl SecretEntry {
    /// The permission bits (`mode` parsed; only rwx bits for owner, group and others).
    pub fn mode_bits(&self) -> Result<u32, String> {
        let bits = u32::from_str_radix(&self.mode, 8).map_err(|_| {
            format!(
                "mode {:?} is not an octal number such as \"0400\"",
                self.mode
            )
        })?;
        if bits > 0o777 || self.mode.is_empty() || self.mode.len() > 4 {
            return Err(format!(
                "mode {:?} sets more than the permission bits (0000-0777)",
                self.mode
            ));
        }
        Ok(bits)
    }

    /// Where the secret is read from: its own path, or the default.
    pub fn path_for(&self, name: &str) -> String {
        self.path.clone().unwrap_or_else(|| default_path(name))
    }

    fn check(&self, name: &str) -> Result<(), String> {
        self.mode_bits()?;
        for (what, who) in [("owner", &self.owner), ("group", &self.group)] {
            if !is_account_name(who) {
                return Err(format!(
                    "{what} {who:?} is neither a user or group name nor a number"
                ));
            }
        }
        let path = self.path_for(name);
        check_path(name, &path)?;
        for unit in &self.restart_units {
            if !is_unit_name(unit) {
                return Err(format!(
                    "restartUnits entry {unit:?} is not a systemd unit name such as \"nginx.service\""
                ));
            }
        }
        Ok(())
    }
}

/// A user or group name as `useradd` accepts it, or a numeric id.
fn is_account_name(s: &str) -> bool {
    if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let body = s.strip_suffix('$').unwrap_or(s);
    (1..=32).contains(&s.len())
        && body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
}

/// A systemd unit name with its type suffix. It is passed to `systemctl` after `--`, and a
/// leading `-` is refused as well.
fn is_unit_name(s: &str) -> bool {
    (3..=255).contains(&s.len())
        && !s.starts_with('-')
        && s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
}

/// A secret's path must be absolute and plain (no `.`, `..` or empty components), outside
/// the Nix store (which every user can read) and outside the agent's own directory, but for
/// the default place.
fn check_path(name: &str, path: &str) -> Result<(), String> {
    let plain = path.len() <= 4096
        && path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !path.bytes().any(|b| b == 0 || b == b'\n');
    if !plain {
        return Err(format!(
            "path {:?} must be absolute, without '.', '..' or empty components",
            path
        ));
    }
    if path.starts_with("/nix/store/") {
        return Err(format!(
            "path {path:?} is in the Nix store, which every user can read"
        ));
    }
    if path.starts_with("/run/yeet/") && path != default_path(name) {
        return Err(format!(
            "path {path:?} is inside the agent's own directory /run/yeet; leave the default or choose a path elsewhere"
        ));
    }
    Ok(())
}

/// The secrets a system asks for, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Unknown fields are ignored, here and in entries: an agent reads the manifest of the
    /// system it is about to switch to, which a newer module may have written.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretEntry>,
}

impl Manifest {
    /// Parses and checks a manifest: names, modes, owners, paths and unit names. Two
    /// secrets at one path are refused too.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, SecretError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| SecretError::Manifest(e.to_string()))?;
        if manifest.secrets.len() > MAX_SECRETS {
            return Err(SecretError::TooMany(manifest.secrets.len()));
        }
        let mut paths = std::collections::BTreeSet::new();
        for (name, entry) in &manifest.secrets {
            validate_secret_name(name)?;
            entry
                .check(name)
                .map_err(|reason| SecretError::InvalidEntry {
                    name: name.clone(),
                    reason,
                })?;
            if !paths.insert(entry.path_for(name)) {
                return Err(SecretError::InvalidEntry {
                    name: name.clone(),
                    reason: format!("path {} is another secret's path too", entry.path_for(name)),
                });
            }
        }
        Ok(manifest)
    }

    pub fn names(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// The digest of a host's granted secrets and their versions: it changes whenever a secret
/// granted to the host is rotated, granted, revoked or removed. Order does not matter.
pub fn versions_digest<'a>(versions: impl IntoIterator<Item = (&'a str, i64)>) -> String {
    let mut sorted: Vec<(&str, i64)> = versions.into_iter().collect();
    sorted.sort_unstable();
    let mut hash = Sha256::new();
    for (name, version) in sorted {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(version.to_string().as_bytes());
        hash.update([b'\n']);
    }
    hex::encode(&hash.finalize()[..16])
}

/// Encrypts `plaintext` to one recipient (binary age format).
pub fn seal(recipient: &dyn age::Recipient, plaintext: &[u8]) -> Result<Vec<u8>, SecretError> {
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient))
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    std::io::Write::write_all(&mut writer, plaintext)
        .and_then(|_| writer.finish().map(drop))
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Decrypts an age file (binary or ASCII-armored) with `identity`. The plaintext lands in a
/// buffer sized once from the ciphertext, so that no reallocation leaves an unwiped copy.
pub fn open(
    identity: &dyn age::Identity,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let decrypt = |e: &dyn std::fmt::Display| SecretError::Decrypt(e.to_string());
    let armored = age::armor::ArmoredReader::new(ciphertext);
    let decryptor = age::Decryptor::new_buffered(armored).map_err(|e| decrypt(&e))?;
    let reader = decryptor
        .decrypt(std::iter::once(identity))
        .map_err(|e| decrypt(&e))?;
    let limit = ciphertext.len().min(MAX_SECRET_BYTES + 1);
    let mut plaintext = Zeroizing::new(Vec::with_capacity(limit + 1));
    // Plaintext is never longer than its ciphertext; the limit also bounds a hostile file.
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut plaintext)
        .map_err(|e| decrypt(&e))?;
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge);
    }
    Ok(plaintext)
}

/// An X25519 recipient (`age1...`), as the server's key and the agent's ephemeral keys are.
pub fn x25519_recipient(text: &str) -> Result<age::x25519::Recipient, SecretError> {
    text.trim()
        .parse()
        .map_err(|e: &str| SecretError::Recipient(e.to_owned()))
}

/// An X25519 identity (`AGE-SECRET-KEY-1...`), read from a key file as `age-keygen` writes
/// it: the first line that holds one; comments and blank lines are skipped.
pub fn x25519_identity(file_text: &str) -> Result<age::x25519::Identity, SecretError> {
    file_text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| SecretError::Decrypt("no AGE-SECRET-KEY-1... line in the key file".into()))?
        .parse()
        .map_err(|e: &str| SecretError::Decrypt(format!("invalid identity: {e}")))
}

// The wire types of the secret endpoints.

/// `GET /v1/secrets-recipient`: what to encrypt secrets to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretRecipient {
    pub recipient: String,
}

/// `POST /v1/secrets`: a new secret, encrypted to the server's recipient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddSecretRequest {
    pub name: String,
    /// The age file, base64.
    pub ciphertext: String,
    /// Hosts granted at once.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `POST /v1/secrets/{name}/rotate`: a new version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotateSecretRequest {
    pub ciphertext: String,
}

/// `POST /v1/secrets/{name}/grant` and `.../revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretHostsRequest {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Tags: every host carrying one holds the secret while it carries it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A secret's metadata, as listed: never its content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
    pub hosts: Vec<SecretGrant>,
    /// The tags it is granted to (their hosts are among `hosts`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Every change, newest first.
    pub history: Vec<SecretChange>,
}

/// A host granted a secret, and the version it last fetched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretGrant {
    pub host: String,
    pub granted_at: i64,
    pub granted_by: String,
    pub fetched_version: Option<i64>,
    pub fetched_at: Option<i64>,
    /// The tag the host holds it by; absent for a direct grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_tag: Option<String>,
}

/// One recorded change to a secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretChange {
    pub at: i64,
    pub by: String,
    /// "added", "rotated", "granted", "revoked" or "removed".
    pub action: String,
    /// The version, or the hosts granted or revoked.
    pub detail: String,
}

/// `POST /v1/agent/secrets`: a host asks for the secrets its system names, to be
/// re-encrypted to a recipient made for this request only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FetchSecretsRequest {
    pub recipient: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FetchSecretsResponse {
    pub secrets: Vec<DeliveredSecret>,
    /// Names that do not exist or are not granted to this host (the two are not told
    /// apart, so a host learns nothing of secrets that are not its own).
    pub missing: Vec<String>,
    /// `versions_digest` of everything granted to the host, as of this answer.
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveredSecret {
    pub name: String,
    pub version: i64,
    /// An age file for the request's recipient, base64.
    pub ciphertext: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest the README shows, for systems built without the modules, is one the
    /// agent accepts, with the fields it says.
    #[test]
    fn the_readmes_manifest_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```json").expect("the README shows a manifest") + 7;
        let end = start + readme[start..].find("```").expect("the block ends");
        let manifest = Manifest::parse(&readme.as_bytes()[start..end]).unwrap();
        let entry = &manifest.secrets["db-password"];
        assert_eq!(
            (
                entry.owner.as_str(),
                entry.mode.as_str(),
                entry.restart_units.as_slice()
            ),
            (
                "postgres",
                "0400",
                ["postgresql.service".to_owned()].as_slice()
            )
        );
    }

    #[test]
    fn names_are_file_names_and_nothing_else() {
        for good in ["db-password", "tls.key", "A1", "osquery-enroll", "x_y"] {
            assert!(validate_secret_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "-x",
            "a b",
            &"a".repeat(65),
            "é",
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_as_the_module_writes_it_parses() {
        let text = br#"{"secrets": {
            "db-password": {"path": "/run/yeet/secrets/db-password", "owner": "postgres",
                            "group": "postgres", "mode": "0440", "restartUnits": ["postgresql.service"]},
            "tls.key": {"path": "/etc/nginx/tls.key", "owner": "root", "group": "nginx", "mode": "0640",
                        "restartUnits": [], "futureOption": true}
        }, "version": 2}"#;
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.names(), ["db-password", "tls.key"]);
        assert_eq!(m.secrets["db-password"].mode_bits(), Ok(0o440));
        // Defaults: root, 0400, the default path.
        let m = Manifest::parse(br#"{"secrets": {"k": {}}}"#).unwrap();
        assert_eq!(m.secrets["k"].path_for("k"), "/run/yeet/secrets/k");
        assert_eq!(m.secrets["k"].mode_bits(), Ok(0o400));
        assert_eq!(m.secrets["k"].owner, "root");
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let entry = |json: &str| format!(r#"{{"secrets": {{"k": {json}}}}}"#);
        for (bad, why) in [
            (
                entry(r#"{"path": "/run/yeet/secrets.d/1/other"}"#),
                "agent's own",
            ),
            (entry(r#"{"path": "/etc/../etc/shadow"}"#), "'..'"),
            (entry(r#"{"path": "relative"}"#), "absolute"),
            (entry(r#"{"path": "/nix/store/x-secret"}"#), "Nix store"),
            (entry(r#"{"mode": "4755"}"#), "permission bits"),
            (entry(r#"{"mode": "rw"}"#), "octal"),
            (entry(r#"{"owner": "root\n"}"#), "user or group"),
            (entry(r#"{"owner": "$(reboot)"}"#), "user or group"),
            (entry(r#"{"restartUnits": ["--now"]}"#), "unit name"),
            (entry(r#"{"restartUnits": ["a b.service"]}"#), "unit name"),
            (
                r#"{"secrets": {"../x": {}}}"#.to_string(),
                "invalid secret name",
            ),
            (
                r#"{"secrets": {"a": {"path": "/etc/s"}, "b": {"path": "/etc/s"}}}"#.to_string(),
                "another secret's path",
            ),
            ("[1,2]".to_string(), "expected shape"),
        ] {
            let err = Manifest::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let many: BTreeMap<String, SecretEntry> = (0..=MAX_SECRETS)
            .map(|i| (format!("s{i}"), serde_json::from_str("{}").unwrap()))
            .collect();
        let text = serde_json::to_vec(&Manifest { secrets: many }).unwrap();
        assert_eq!(
            Manifest::parse(&text),
            Err(SecretError::TooMany(MAX_SECRETS + 1))
        );
    }

    #[test]
    fn the_digest_follows_versions_not_order() {
        let a = versions_digest([("a", 1), ("b", 2)]);
        assert_eq!(a, versions_digest([("b", 2), ("a", 1)]));
        assert_ne!(a, versions_digest([("a", 1), ("b", 3)]));
        assert_ne!(a, versions_digest([("a", 1)]));
        // Names and versions cannot run into each other.
        assert_ne!(versions_digest([("a1", 1)]), versions_digest([("a", 11)]));
        assert_eq!(versions_digest([]), versions_digest([]));
    }

    #[test]
    fn sealed_secrets_open_only_with_their_identity() {
        let identity = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let sealed = seal(&identity.to_public(), b"hunter2").unwrap();
        assert_eq!(open(&identity, &sealed).unwrap().as_slice(), b"hunter2");
        assert!(matches!(
            open(&other, &sealed),
            Err(SecretError::Decrypt(_))
        ));
        assert!(open(&identity, b"not an age file").is_err());
        // Cut short: refused, not truncated.
        assert!(open(&identity, &sealed[..sealed.len() - 5]).is_err());
        let big = vec![7u8; MAX_SECRET_BYTES + 1];
        let sealed = seal(&identity.to_public(), &big).unwrap();
        assert_eq!(open(&identity, &sealed), Err(SecretError::TooLarge));
    }

    #[test]
    fn key_files_as_age_keygen_writes_them_are_read() {
        let identity = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let text = format!(
            "# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        );
        let read = x25519_identity(&text).unwrap();
        assert_eq!(
            read.to_public().to_string(),
            identity.to_public().to_string()
        );
        assert!(x25519_identity("# nothing here\n").is_err());
        let recipient = identity.to_public().to_string();
        assert!(x25519_recipient(&recipient).is_ok());
        assert!(x25519_recipient("age1nope").is_err());
    }
}
