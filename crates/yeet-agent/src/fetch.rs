//! Fetching a system closure and deciding, on the host alone, whether it may be activated.
//!
//! The server's answer is data: its store path must be a valid output path (never a `.drv`,
//! which `nix-store --realise` would build), and its substituter URLs must use a scheme this
//! host allows and carry no options (`?trusted=1` or `?secret-key=` would change what Nix
//! accepts). The closure is realised with the host's pinned keys as the only trusted ones
//! and `require-sigs = true`, and then checked again from the host's *own* store: every
//! path of the closure must carry a signature by a pinned key, or belong to a system this
//! host already ran (the current or booted system, or a generation of the system profile,
//! which only root can create). Nix alone is not enough: it accepts paths that are already
//! valid locally (built by any local user), content-addressed paths, and substituters that
//! claim to be trusted. No cache's narinfo is ever consulted, so no scheme or empty cache
//! list can turn the check into a pass.

use nix_meta::{DEFAULT_STORE_DIR, PublicKey, StorePath, path_info};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use thiserror::Error;

use crate::config::{BOOTED_SYSTEM, CURRENT_SYSTEM, SYSTEM_PROFILE};

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

/// Substituter schemes a host accepts from the server unless its config says otherwise.
pub const DEFAULT_CACHE_SCHEMES: [&str; 5] = ["http", "https", "file", "s3", "ssh"];
/// Query parameters a substituter URL may carry: where to read from, never what to trust.
const ALLOWED_CACHE_PARAMS: [&str; 6] = [
    "region",
    "endpoint",
    "profile",
    "scheme",
    "priority",
    "want-mass-query",
];
const MAX_CACHES: usize = 16;
const MAX_CACHE_URL_LEN: usize = 1024;
/// Store paths per `nix-store --dump-db` call (about 100 KiB of arguments).
const DUMP_CHUNK: usize = 1000;
/// How many offending paths an `untrusted` reason names.
const NAMED_PATHS: usize = 3;

/// Parses a store path the server named: a valid path in /nix/store that is not a
/// derivation. Anything else never reaches a command line.
pub fn check_store_path(path: &str) -> Result<StorePath, String> {
    let parsed: StorePath = path.parse().map_err(|e: nix_meta::StorePathError| {
        format!("the server named an invalid store path: {e}")
    })?;
    if parsed.is_derivation() {
        return Err(format!(
            "the server named a derivation ({parsed}); realising it would build it, so it is refused"
        ));
    }
    Ok(parsed)
}

/// Checks the substituter URLs the server sent against the schemes this host allows.
pub fn check_cache_urls(caches: &[String], schemes: &[String]) -> Result<(), FetchError> {
    if caches.len() > MAX_CACHES {
        return Err(FetchError::Untrusted(format!(
            "the server listed {} caches; at most {MAX_CACHES} are accepted",
            caches.len()
        )));
    }
    for url in caches {
        check_cache_url(url, schemes).map_err(|why| {
            FetchError::Untrusted(format!(
                "refusing cache URL {:?}: {why}",
                yeet_proto::text::clean_line(url, 120)
            ))
        })?;
    }
    Ok(())
}

fn check_cache_url(url: &str, schemes: &[String]) -> Result<(), String> {
    if url.len() > MAX_CACHE_URL_LEN {
        return Err(format!("longer than {MAX_CACHE_URL_LEN} bytes"));
    }
    // Nix's `substituters` is a space-separated list: whitespace would smuggle in another.
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("it is not a URL (scheme://...)")?;
    if !schemes.iter().any(|s| s == scheme) {
        return Err(format!(
            "scheme {scheme:?} is not allowed on this host (allowed: {}; set allowed_cache_schemes in /etc/yeet/agent.toml)",
            schemes.join(", ")
        ));
    }
    if rest.contains('#') {
        return Err("it has a fragment".into());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if !ALLOWED_CACHE_PARAMS.contains(&name) {
                return Err(format!(
                    "option {name:?} is not accepted from the server (allowed: {})",
                    ALLOWED_CACHE_PARAMS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Runs a Nix command, appending its standard error to `log`.
fn run_nix(cmd: &mut Command, mut log: &File) -> Result<Output, FetchError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        FetchError::Failed(format!(
            "cannot run {:?} (is Nix installed and on PATH?): {e}",
            cmd.get_program()
        ))
    })?;
    let _ = log.write_all(&out.stderr);
    Ok(out)
}

/// Runs a Nix command that must succeed and returns its standard output.
fn nix_stdout(cmd: &mut Command, what: &str, log: &File) -> Result<String, FetchError> {
    let out = run_nix(cmd, log)?;
    if !out.status.success() {
        return Err(FetchError::Failed(format!(
            "{what} failed ({}): {}",
            out.status,
            last_line(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| FetchError::Failed(format!("{what} printed something that is not UTF-8")))
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

/// Realises the closure from the caches, trusting only `keys`, with `root` as its
/// garbage-collector root. Nix's messages are appended to `log`. Success only means the
/// paths are valid here; [`verify_closure`] decides trust.
pub fn realise(
    store_path: &StorePath,
    caches: &[String],
    keys: &[PublicKey],
    root: &Path,
    log: &File,
) -> Result<(), FetchError> {
    let keys_opt: Vec<String> = keys.iter().map(ToString::to_string).collect();
    let out = run_nix(
        Command::new("nix-store")
            .arg("--realise")
            .arg(store_path.to_string())
            .arg("--add-root")
            .arg(root)
            .args(["--option", "substituters", &caches.join(" ")])
            .args(["--option", "trusted-public-keys", &keys_opt.join(" ")])
            .args(["--option", "require-sigs", "true"])
            // An output path is only ever substituted; never let anything be built.
            .args(["--option", "max-jobs", "0"])
            // A cache that does not answer, or stops sending, fails the fetch in bounded time.
            .args(["--option", "connect-timeout", "15"])
            .args(["--option", "stalled-download-timeout", "60"]),
        log,
    )?;
    let text = String::from_utf8_lossy(&out.stderr);
    match out.status {
        s if s.success() => Ok(()),
        // Nix says "is not signed by any of the keys" (2.4+) or "lacks a signature".
        s if text.contains("not signed") || text.contains("signature") => {
            Err(FetchError::Untrusted(format!(
                "nix-store refused {store_path}: no signature by a key this host trusts ({s})"
            )))
        }
        s => Err(FetchError::Failed(format!(
            "nix-store --realise {store_path} failed ({s}): {}",
            last_line(&out.stderr)
        ))),
    }
}

/// The closure of `roots` in the host's store (roots that are gone are skipped).
fn requisites(roots: &[String], log: &File) -> Result<BTreeSet<StorePath>, FetchError> {
    let roots: Vec<&String> = roots.iter().filter(|r| Path::new(r).exists()).collect();
    if roots.is_empty() {
        return Ok(BTreeSet::new());
    }
    let out = nix_stdout(
        Command::new("nix-store")
            .args(["--query", "--requisites"])
            .args(roots),
        "nix-store --query --requisites",
        log,
    )?;
    out.lines()
        .map(|l| {
            l.parse()
                .map_err(|e| FetchError::Failed(format!("nix-store printed a bad path: {e}")))
        })
        .collect()
}

/// Systems root already ran: the current and booted systems and every generation of the
/// system profile. Their closures are trusted without a pinned signature, so that paths
/// built on the host itself (by `nixos-install`, or an earlier local `nixos-rebuild`) need
/// not be re-signed; any *other* unsigned path (built by a local user, say) is refused.
fn systems_run_before() -> Vec<String> {
    let mut roots: Vec<String> = [CURRENT_SYSTEM, BOOTED_SYSTEM]
        .iter()
        .filter_map(|l| crate::system::system_link(l))
        .collect();
    let profile = Path::new(SYSTEM_PROFILE);
    let (Some(dir), Some(name)) = (
        profile.parent(),
        profile.file_name().and_then(|n| n.to_str()),
    ) else {
        return roots;
    };
    let generation = |file: &str| {
        file.strip_prefix(name)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix("-link"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(generation)
                && let Some(target) = std::fs::canonicalize(e.path())
                    .ok()
                    .and_then(|t| t.to_str().map(str::to_owned))
                    .filter(|t| t.parse::<StorePath>().is_ok())
            {
                roots.push(target);
            }
        }
    }
    roots
}

/// What the host's store registered for `paths` (`nix-store --dump-db`), asked in chunks of
/// `chunk`: a large closure as one argument list would exceed the kernel's limit.
fn registrations(
    paths: &[String],
    chunk: usize,
    log: &File,
) -> Result<Vec<path_info::PathInfo>, FetchError> {
    let mut dump = String::new();
    for part in paths.chunks(chunk.max(1)) {
        dump.push_str(&nix_stdout(
            Command::new("nix-store").arg("--dump-db").args(part),
            "nix-store --dump-db",
            log,
        )?);
    }
    path_info::parse_registrations(DEFAULT_STORE_DIR, &dump)
        .map_err(|e| FetchError::Failed(e.to_string()))
}

/// Checks the realised closure of `top` from the host's own store: each path is signed by a
/// pinned key (over the NAR hash, size and references this store registered), or is part
/// of a system this host ran before. See the module documentation for why.
pub fn verify_closure(top: &StorePath, keys: &[PublicKey], log: &File) -> Result<(), FetchError> {
    let closure = requisites(&[top.to_string()], log)?;
    if !closure.contains(top) {
        return Err(FetchError::Failed(format!(
            "{top} is not valid in this host's store"
        )));
    }
    let paths: Vec<String> = closure.iter().map(ToString::to_string).collect();
    let json = nix_stdout(
        Command::new("nix")
            .args(["--extra-experimental-features", "nix-command"])
            .args(["path-info", "--json", "--recursive"])
            .arg(top.to_string()),
        "nix path-info --json",
        log,
    )?;
    let mut infos = registrations(&paths, DUMP_CHUNK, log)?;
    let mut sigs = path_info::parse_signatures(DEFAULT_STORE_DIR, &json)
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let registered: BTreeSet<&StorePath> = infos.iter().map(|i| &i.store_path).collect();
    if registered != closure.iter().collect() {
        return Err(FetchError::Failed(
            "the store's registrations do not match the closure it listed".into(),
        ));
    }
    let mut unsigned = Vec::new();
    for info in &mut infos {
        info.sigs = sigs.remove(&info.store_path).unwrap_or_default();
        if let Err(e) = info.verify(keys) {
            unsigned.push((info.store_path.clone(), e));
        }
    }
    if unsigned.is_empty() {
        return Ok(());
    }
    let known = requisites(&systems_run_before(), log)?;
    unsigned.retain(|(p, _)| !known.contains(p));
    if unsigned.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = unsigned
        .iter()
        .take(NAMED_PATHS)
        .map(|(_, e)| e.to_string())
        .collect();
    Err(FetchError::Untrusted(format!(
        "{} of {} paths in the closure of {top} are not signed by a key this host pins and were not part of a system it ran before: {}{}",
        unsigned.len(),
        closure.len(),
        named.join("; "),
        if unsigned.len() > NAMED_PATHS {
            "; ..."
        } else {
            ""
        }
    )))
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

    /// A real two-path closure, asked of the real store one path per `nix-store` call.
    #[test]
    fn registrations_are_read_in_chunks_from_the_real_store() {
        let dir = tempfile::tempdir().unwrap();
        let expr = dir.path().join("closure.nix");
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase();
        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        std::fs::write(
            &expr,
            format!(
                r#"let dep = derivation {{ name = "agent-dep-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = ["-c" "mkdir $out; echo $out > $out/self"]; }};
                in derivation {{ name = "agent-top-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = ["-c" "mkdir $out; ln -s ${{dep}} $out/dep"]; }}"#
            ),
        )
        .unwrap();
        let out = Command::new("nix-build")
            .arg(&expr)
            .arg("--no-out-link")
            .output()
            .expect("nix-build (is nix-bin installed?)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let top = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let log = File::create(dir.path().join("log")).unwrap();
        let closure: Vec<String> = requisites(std::slice::from_ref(&top), &log)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(closure.len(), 2);
        let whole = registrations(&closure, 1000, &log).unwrap();
        let chunked = registrations(&closure, 1, &log).unwrap();
        assert_eq!(chunked, whole);
        // The dependency refers to itself; the top refers to the dependency.
        assert!(whole.iter().all(|i| i.references.len() == 1));
    }

    #[test]
    fn server_paths_must_be_plain_output_paths() {
        assert!(check_store_path("/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top").is_ok());
        for bad in [
            "/nix/store/../../bin/sh",
            "/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top/../../x",
            "--option",
            "/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top.drv",
            "/tmp/xp7p4yp8l0387n3g7sk009xhppcycrml-top",
            "",
        ] {
            assert!(check_store_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_urls_are_data_not_options() {
        let schemes: Vec<String> = DEFAULT_CACHE_SCHEMES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ok = |u: &str| check_cache_urls(&[u.to_owned()], &schemes).is_ok();
        assert!(ok("https://cache.example.org"));
        assert!(ok("file:///srv/cache"));
        assert!(ok("s3://bucket?region=eu-west-1&endpoint=minio.lan"));
        assert!(ok("ssh://builder"));
        for bad in [
            "dummy://",
            "file:///srv/cache?trusted=1",
            "file:///srv/cache?secret-key=/etc/key",
            "https://c.example.org?priority=1&trusted=true",
            "ssh-ng://builder",
            "daemon",
            "https://a.example.org https://b.example.org",
            "https://a.example.org\n",
            "https://a.example.org#x",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(check_cache_urls(&vec!["https://a".to_owned(); 17], &schemes).is_err());
        // Nothing to check is not a pass of anything: the closure is still verified.
        assert!(check_cache_urls(&[], &schemes).is_ok());
    }
}
