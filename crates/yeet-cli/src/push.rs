//! Getting closures into a binary cache before a release names them: the server's embedded
//! cache (default; only missing paths are packed and uploaded, dependencies first), any
//! store Nix can write (`--cache URL`, i.e. `nix copy --to`), or a tool with its own client
//! (`--push-cmd`, e.g. `cachix push NAME`).

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use yeet_client::Client;

pub enum Target {
    Embedded { signing_key: Option<PathBuf> },
    Cache(String),
    Command(String),
}

/// Runs a Nix command (or a push tool) and returns its stdout; its stderr on failure.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what} (is Nix installed?)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every path in the closures of `paths`.
pub fn closure(paths: &[String]) -> Result<Vec<String>> {
    let out = run(
        Command::new("nix-store")
            .arg("--query")
            .arg("--requisites")
            .args(paths),
        "nix-store --query --requisites",
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// `nix copy --to TO PATHS`: Nix copies the closures, skipping what `TO` already has.
fn nix_copy(to: &str, paths: &[String]) -> Result<()> {
    run(
        nix_command().args(["copy", "--to", to]).args(paths),
        "nix copy",
    )
    .map(drop)
}

/// `nix` with the `nix-command` feature this needs on Nix versions that gate it.
fn nix_command() -> Command {
    let mut c = Command::new("nix");
    c.args(["--extra-experimental-features", "nix-command"]);
    c
}

/// Pushes the closures of `paths`; returns how many store paths were transferred.
pub fn push(client: &Client, target: &Target, paths: &[String]) -> Result<usize> {
    match target {
        Target::Cache(url) => {
            let spinner = spinner(&format!("nix copy --to {url}"));
            nix_copy(url, paths)?;
            spinner.finish_and_clear();
            Ok(paths.len())
        }
        Target::Command(cmd) => {
            let spinner = spinner(cmd);
            // The paths are appended as arguments, as `cachix push NAME PATH...` expects.
            run(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("{cmd} \"$@\""))
                    .arg("yeet-push")
                    .args(paths),
                cmd,
            )?;
            spinner.finish_and_clear();
            Ok(paths.len())
        }
        Target::Embedded { signing_key } => push_embedded(client, signing_key.as_deref(), paths),
    }
}

/// Makes `path` valid in the local store, fetching it from `cache` (trusted as nix.conf says).
/// `path` comes from the server (a host's report): only a plain output path is accepted, as
/// realising a derivation would build it here.
pub fn ensure_local(path: &str, cache: &str) -> Result<()> {
    let parsed: nix_meta::StorePath = path.parse().with_context(|| {
        format!(
            "the server sent {:?}, which is not a store path",
            path.escape_debug().to_string()
        )
    })?;
    if parsed.is_derivation() {
        bail!("the server sent a derivation ({parsed}) as a system; refusing to build it");
    }
    let valid = Command::new("nix-store")
        .args(["--check-validity", path])
        .output()
        .is_ok_and(|o| o.status.success());
    if valid {
        return Ok(());
    }
    run(Command::new("nix-store").args(["--realise", path, "--option", "extra-substituters", cache]), &format!("fetching {path}"))
        .with_context(|| format!("{path} is not in the local store; build it, or trust the fleet's key in nix.conf so it can be fetched from {cache}"))
        .map(drop)
}

/// `nix store diff-closures OLD NEW`: version changes and size deltas per package.
pub fn diff_closures(old: &str, new: &str) -> Result<String> {
    let out = run(
        nix_command().args(["store", "diff-closures", old, new]),
        "nix store diff-closures",
    )?;
    Ok(if out.trim().is_empty() {
        "no package-level differences\n".into()
    } else {
        out
    })
}

fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn hash_part(path: &str) -> Result<String> {
    Ok(path
        .parse::<nix_meta::StorePath>()
        .with_context(|| format!("{path} is not a store path"))?
        .hash_part()
        .to_owned())
}

fn push_embedded(client: &Client, signing_key: Option<&Path>, paths: &[String]) -> Result<usize> {
    let mut missing = Vec::new();
    for p in closure(paths)? {
        if client
            .get_public(&format!("/cache/{}.narinfo", hash_part(&p)?))?
            .is_none()
        {
            missing.push(p);
        }
    }
    if missing.is_empty() {
        return Ok(0);
    }
    // Let Nix pack the NARs and write the narinfos (with the signing key, if any), then
    // upload what it wrote.
    let staging = tempfile::tempdir().context("cannot create a staging directory")?;
    let mut url = format!("file://{}?compression=xz", staging.path().display());
    if let Some(key) = signing_key {
        url.push_str(&format!("&secret-key={}", key.display()));
    }
    let packing = spinner(&format!("packing {} store paths", missing.len()));
    nix_copy(&url, &missing)?;
    packing.finish_and_clear();

    let mut infos = BTreeMap::new();
    for p in &missing {
        let hash = hash_part(p)?;
        let file = staging.path().join(format!("{hash}.narinfo"));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("nix copy wrote no narinfo for {p}"))?;
        let info =
            nix_meta::NarInfo::parse(&text).with_context(|| format!("{}", file.display()))?;
        infos.insert(hash, info);
    }
    let order = dependencies_first(&infos);
    let total: u64 = order.iter().map(|h| infos[h].file_size.unwrap_or(0)).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("uploading {pos}/{len} bytes [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for hash in &order {
        let info = &infos[hash];
        bar.set_message(info.store_path.name().to_owned());
        // NAR first, narinfo last: a visible narinfo always has its NAR.
        client.put_file(
            &format!("/cache/{}", info.url),
            &staging.path().join(&info.url),
        )?;
        client.put_file(
            &format!("/cache/{hash}.narinfo"),
            &staging.path().join(format!("{hash}.narinfo")),
        )?;
        bar.inc(info.file_size.unwrap_or(0));
    }
    bar.finish_and_clear();
    Ok(order.len())
}

/// Orders narinfos so that every path comes after the paths it references.
fn dependencies_first(infos: &BTreeMap<String, nix_meta::NarInfo>) -> Vec<String> {
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < infos.len() {
        let before = order.len();
        for (hash, info) in infos {
            let ready = info.references.iter().all(|r| {
                r.hash_part() == hash
                    || !infos.contains_key(r.hash_part())
                    || done.contains(r.hash_part())
            });
            if !done.contains(hash.as_str()) && ready {
                done.insert(hash.clone());
                order.push(hash.clone());
            }
        }
        if order.len() == before {
            // A reference cycle cannot occur in a Nix store; upload the rest as they come.
            order.extend(infos.keys().filter(|h| !done.contains(h.as_str())).cloned());
            break;
        }
    }
    order
}
