//! CLI configuration: `~/.config/yeet/config.toml` (or `$XDG_CONFIG_HOME/yeet/config.toml`,
//! or `--config`), then `YEET_SERVER` / `YEET_KEY` / `YEET_CA_CERT` (and `yeet publish`'s
//! `YEET_COMPRESSION` / `YEET_SIGNING_KEY`), then flags.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    /// `yeet publish`: how NARs are compressed in the embedded cache.
    pub compression: Option<crate::pack::Compression>,
    /// `yeet publish`: the Nix secret key that signs what is uploaded.
    pub signing_key: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/yeet`, else `~/.config/yeet`.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("yeet"))
}

/// A file of values pinned per server (`~/.config/yeet/NAME`): one `ORIGIN VALUE` line
/// each. `what` names its values in errors.
fn pins_file(name: &str, what: &str) -> Result<PathBuf> {
    config_dir()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow::anyhow!("no home directory to keep {what} in; set HOME"))
}

/// The value pinned in pin file `name` for the server at `origin`, if any.
fn pinned(name: &str, what: &str, origin: &str) -> Result<Option<String>> {
    let path = pins_file(name, what)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text.lines().find_map(|l| {
        let (o, r) = l.trim().split_once(' ')?;
        (o == origin).then(|| r.trim().to_owned())
    }))
}

/// Pins `value` in pin file `name` for the server at `origin`, replacing an earlier pin.
fn pin(name: &str, what: &str, origin: &str, value: &str) -> Result<()> {
    let path = pins_file(name, what)?;
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.split_once(' ').is_none_or(|(o, _)| o != origin))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{origin} {value}"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

const RECIPIENTS: (&str, &str) = (
    "known_recipients",
    "pinned secrets recipients (or pass --recipient)",
);

/// The secrets recipient pinned for the server at `origin`, if any.
pub fn pinned_recipient(origin: &str) -> Result<Option<String>> {
    pinned(RECIPIENTS.0, RECIPIENTS.1, origin)
}

/// Pins `recipient` for the server at `origin`, replacing an earlier pin.
pub fn pin_recipient(origin: &str, recipient: &str) -> Result<()> {
    pin(RECIPIENTS.0, RECIPIENTS.1, origin, recipient)
}

const AUDIT_HEADS: (&str, &str) = ("known_audit_heads", "verified audit-log heads");

/// The newest audit event `yeet audit verify` verified on the server at `origin`:
/// its `seq` and hash.
pub fn pinned_audit_head(origin: &str) -> Result<Option<(i64, String)>> {
    Ok(pinned(AUDIT_HEADS.0, AUDIT_HEADS.1, origin)?.and_then(|v| {
        let (seq, hash) = v.split_once(' ')?;
        Some((seq.parse().ok()?, hash.to_owned()))
    }))
}

/// Pins the newest verified audit event of the server at `origin`.
pub fn pin_audit_head(origin: &str, seq: i64, hash: &str) -> Result<()> {
    pin(
        AUDIT_HEADS.0,
        AUDIT_HEADS.1,
        origin,
        &format!("{seq} {hash}"),
    )
}

/// Where `yeet key generate` writes by default, and the first place a key is looked for.
pub fn default_key_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("key"))
}

pub fn load(explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => match config_dir().map(|d| d.join("config.toml")) {
            Some(p) if p.exists() => p,
            _ => return Ok(FileConfig::default()),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
}

/// The key to sign with: flag/env, then the config file, then `~/.config/yeet/key`, then
/// `~/.ssh/id_ed25519`.
pub fn resolve_key(flag: Option<PathBuf>, file: &FileConfig) -> Result<PathBuf> {
    if let Some(k) = flag.or_else(|| file.key.clone()) {
        return Ok(k);
    }
    let candidates: Vec<PathBuf> = default_key_path()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/id_ed25519")))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    bail!(
        "no key found (looked at {}): run `yeet key generate`, or pass --key / set YEET_KEY",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "server = ").unwrap();
        let err = format!("{:#}", load(Some(&p)).unwrap_err());
        assert!(err.contains("config.toml"), "{err}");
        std::fs::write(&p, "sever = \"x\"").unwrap();
        let err = format!("{:#}", load(Some(&p)).unwrap_err());
        assert!(err.contains("sever"), "{err}");
        std::fs::write(&p, "server = \"http://s\"\nkey = \"/k\"").unwrap();
        let c = load(Some(&p)).unwrap();
        assert_eq!(resolve_key(None, &c).unwrap(), PathBuf::from("/k"));
        assert_eq!(
            resolve_key(Some("/flag".into()), &c).unwrap(),
            PathBuf::from("/flag")
        );
    }
}
