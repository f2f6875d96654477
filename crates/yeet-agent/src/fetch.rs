//! Fetching a system closure with only the host's own trust: `nix-store --realise` with the
//! server's caches as substituters and the host's pinned keys (agent config plus nix.conf)
//! as the only trusted ones. Before that, the top-level narinfo is checked with `nix-meta`
//! where the cache is readable directly (`file://`, `http(s)://`), so an unsigned or
//! foreign-signed closure is reported as `untrusted` with a precise reason.

use nix_meta::{NarInfo, PublicKey, StorePath};
use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FetchError {
    /// Not signed by any key this host trusts: never activated.
    #[error("{0}")]
    Untrusted(String),
    #[error("{0}")]
    Failed(String),
}

/// `trusted-public-keys` and `extra-trusted-public-keys` from a nix.conf text.
pub fn nix_conf_keys(text: &str) -> Vec<PublicKey> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            matches!(
                k.trim(),
                "trusted-public-keys" | "extra-trusted-public-keys"
            )
        })
        .flat_map(|(_, v)| {
            v.split_whitespace()
                .filter_map(|k| k.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The keys this host trusts: its agent config's, plus its nix.conf's.
pub fn trusted_keys(configured: &[PublicKey], nix_conf: &str) -> Vec<PublicKey> {
    let mut keys = configured.to_vec();
    for k in nix_conf_keys(nix_conf) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Reads `<cache>/<hash>.narinfo` for caches yeet can read itself; `Ok(None)` for other
/// schemes (s3://, ssh://...), which only Nix's own check covers.
fn read_narinfo(cache: &str, path: &StorePath) -> Result<Option<String>, String> {
    let name = format!("{}.narinfo", path.hash_part());
    if let Some(dir) = cache.strip_prefix("file://") {
        let dir = dir.split('?').next().unwrap_or(dir);
        return std::fs::read_to_string(std::path::Path::new(dir).join(&name))
            .map(Some)
            .map_err(|e| format!("{cache}: {e}"));
    }
    if cache.starts_with("http://") || cache.starts_with("https://") {
        let url = format!("{}/{name}", cache.trim_end_matches('/'));
        let mut resp = ureq::get(&url).call().map_err(|e| format!("{url}: {e}"))?;
        return resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map(Some)
            .map_err(|e| format!("{url}: {e}"));
    }
    Ok(None)
}

/// Checks the top-level narinfo against the trusted keys. A store path names its content,
/// so one trusted signature in any cache suffices; if caches have it but none trusted-signed,
/// the closure is untrusted.
pub fn check_signature(
    store_path: &str,
    caches: &[String],
    keys: &[PublicKey],
) -> Result<(), FetchError> {
    let path: StorePath = store_path
        .parse()
        .map_err(|e: nix_meta::StorePathError| FetchError::Failed(e.to_string()))?;
    let (mut misses, mut refusals) = (Vec::new(), Vec::new());
    for cache in caches {
        match read_narinfo(cache, &path) {
            Ok(Some(text)) => {
                let verdict = NarInfo::parse(&text)
                    .map_err(|e| format!("{cache}: invalid narinfo: {e}"))
                    .and_then(|info| {
                        if info.store_path == path {
                            Ok(info)
                        } else {
                            Err(format!("{cache}: narinfo describes {}", info.store_path))
                        }
                    })
                    .and_then(|info| {
                        info.verify(keys)
                            .map(drop)
                            .map_err(|e| format!("{cache}: {e}"))
                    });
                match verdict {
                    Ok(()) => return Ok(()),
                    Err(why) => refusals.push(why),
                }
            }
            // A cache yeet cannot read itself: Nix's own check decides.
            Ok(None) => return Ok(()),
            Err(e) => misses.push(e),
        }
    }
    match (refusals.is_empty(), caches.is_empty()) {
        (false, _) => Err(FetchError::Untrusted(refusals.join("; "))),
        (true, true) => Ok(()),
        (true, false) => Err(FetchError::Failed(format!(
            "no cache has {store_path}: {}",
            misses.join("; ")
        ))),
    }
}

/// Realises the closure from the caches, trusting only `keys`. Nix's output is appended to `log`.
pub fn realise(
    store_path: &str,
    caches: &[String],
    keys: &[PublicKey],
    mut log: &File,
) -> Result<(), FetchError> {
    let keys_opt: Vec<String> = keys.iter().map(ToString::to_string).collect();
    let out = Command::new("nix-store")
        .args(["--realise", store_path])
        .args(["--option", "substituters", &caches.join(" ")])
        .args(["--option", "trusted-public-keys", &keys_opt.join(" ")])
        .args(["--option", "require-sigs", "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            FetchError::Failed(format!("cannot run nix-store (is Nix installed?): {e}"))
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    let _ = log
        .write_all(&out.stdout)
        .and_then(|_| log.write_all(&out.stderr));
    match out.status {
        s if s.success() => Ok(()),
        s if text.contains("signature") => Err(FetchError::Untrusted(format!(
            "nix-store refused {store_path}: no signature by a trusted key ({s})"
        ))),
        s => Err(FetchError::Failed(format!(
            "nix-store --realise {store_path} failed ({s}): {}",
            text.lines().last().unwrap_or("")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_conf_keys_are_merged() {
        let conf = "sandbox = false\ntrusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= bad\nextra-trusted-public-keys = test-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=\n";
        let names: Vec<String> = nix_conf_keys(conf).into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["cache.nixos.org-1", "test-1"]);
        let mine: PublicKey = "test-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg="
            .parse()
            .unwrap();
        assert_eq!(trusted_keys(&[mine], conf).len(), 2);
    }
}
