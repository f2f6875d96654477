//! Building hosts' systems from a flake: `nixosConfigurations.<host>.config.system.build.toplevel`
//! (or `darwinConfigurations.<host>.system`). Each host's derivation is evaluated, identical
//! derivations are built once, and the flake's revision (and whether the tree was dirty) is
//! recorded for the release.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

pub struct Built {
    /// Host → system store path.
    pub systems: BTreeMap<String, String>,
    pub revision: Option<String>,
    pub dirty: bool,
    /// How many distinct derivations were built.
    pub distinct: usize,
}

fn nix(args: &[&str], what: &str) -> Result<String> {
    let out = crate::push::run(Command::new("nix").args(FEATURES).args(args), what)?;
    Ok(out.trim().to_owned())
}

/// The host names a flake defines.
pub fn hosts_in(flake: &str) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for kind in ["nixosConfigurations", "darwinConfigurations"] {
        if let Ok(json) = nix(
            &[
                "eval",
                "--json",
                &format!("{flake}#{kind}"),
                "--apply",
                "builtins.attrNames",
            ],
            "listing hosts",
        ) {
            all.extend(serde_json::from_str::<Vec<String>>(&json).unwrap_or_default());
        }
    }
    Ok(all)
}

fn drv_path(flake: &str, host: &str) -> Result<String> {
    let nixos = format!("{flake}#nixosConfigurations.{host}.config.system.build.toplevel.drvPath");
    let darwin = format!("{flake}#darwinConfigurations.{host}.system.drvPath");
    nix(&["eval", "--raw", &nixos], "evaluating")
        .or_else(|_| nix(&["eval", "--raw", &darwin], &format!("evaluating {host}")))
}

/// Builds `nixosConfigurations.<host>.config.system.build.vm` (NixOS's VM runner for the
/// host's configuration) and returns its output. A nix-darwin host has none: that is said.
pub fn build_vm(flake: &str, host: &str) -> Result<String> {
    let attr = format!("{flake}#nixosConfigurations.{host}.config.system.build.vm");
    let darwin = format!("{flake}#darwinConfigurations.{host}.system.drvPath");
    let drv = match nix(&["eval", "--raw", &format!("{attr}.drvPath")], "evaluating") {
        Ok(drv) => drv,
        Err(_) if nix(&["eval", "--raw", &darwin], "evaluating").is_ok() => {
            bail!("{host} is a nix-darwin configuration; `yeet vm` is for NixOS hosts only")
        }
        Err(e) => return Err(e.context(format!("{host} has no {attr}"))),
    };
    let building = ProgressBar::new_spinner();
    building.set_message(format!("building {host}'s VM"));
    building.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = crate::push::run(
        Command::new("nix-store").arg("--realise").arg(&drv),
        &format!("building {host}'s VM"),
    );
    building.finish_and_clear();
    out?.lines()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("{drv} has no output"))
}

pub fn build(flake: &str, hosts: &[String]) -> Result<Built> {
    let eval = ProgressBar::new(hosts.len() as u64).with_style(
        ProgressStyle::with_template("evaluating {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut drvs = BTreeMap::new();
    for host in hosts {
        eval.set_message(host.clone());
        drvs.insert(host.clone(), drv_path(flake, host)?);
        eval.inc(1);
    }
    eval.finish_and_clear();
    // One system may serve hundreds of hosts: each distinct derivation is built once.
    let distinct: BTreeSet<&String> = drvs.values().collect();
    let building = ProgressBar::new_spinner();
    building.set_message(format!("building {} distinct system(s)", distinct.len()));
    building.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = Command::new("nix-store")
        .arg("--realise")
        .args(&distinct)
        .output()
        .context("cannot run nix-store")?;
    building.finish_and_clear();
    if !out.status.success() {
        bail!(
            "building failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut outputs = BTreeMap::new();
    for drv in &distinct {
        let q = Command::new("nix-store")
            .args(["--query", "--outputs"])
            .arg(drv)
            .output()
            .context("cannot run nix-store")?;
        let first = String::from_utf8_lossy(&q.stdout)
            .lines()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("{drv} has no outputs"))?;
        outputs.insert(drv.to_string(), first);
    }
    let systems = drvs
        .iter()
        .map(|(h, d)| (h.clone(), outputs[d].clone()))
        .collect();
    let meta: serde_json::Value = serde_json::from_str(&nix(
        &["flake", "metadata", "--json", flake],
        "reading flake metadata",
    )?)?;
    let revision = meta["revision"].as_str().map(str::to_owned);
    let dirty = revision.is_none() && meta["locked"]["type"] == "git";
    Ok(Built {
        systems,
        revision,
        dirty,
        distinct: distinct.len(),
    })
}
