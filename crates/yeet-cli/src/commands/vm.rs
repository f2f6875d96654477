//! `yeet vm HOST`: try a host's configuration in a VM before rolling it out. Builds NixOS's
//! VM runner for the host from the fleet flake and runs it; the VM's agent registers with
//! the server like any host, so it is approved by the code it shows.

use anyhow::{Context, Result, bail};
use std::path::Path;

use crate::flake;

#[derive(clap::Args)]
#[command(after_help = "\
NixOS hosts only (nix-darwin has no VM runner). The VM runs the host's configuration, agent
included: its agent must reach the server from inside the VM (with QEMU's user network the
machine running the VM is 10.0.2.2). It registers like any host: `yeet pending` lists it, and
`yeet approve NAME CODE` approves it with the code `yeet-agent status` shows in the VM (it
is also on the VM's console). Arguments after `--` go to the VM runner, e.g. `-- -m 4096`.")]
pub struct VmArgs {
    /// The host, as named in the flake's nixosConfigurations.
    #[arg(add = crate::completion::host_arg())]
    pub host: String,
    /// The flake to build from.
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// Passed to the VM runner.
    #[arg(last = true)]
    pub runner_args: Vec<String>,
}

/// The runner NixOS puts in `bin/` of `system.build.vm` (`run-<hostName>-vm`).
fn runner_in(vm: &Path) -> Result<std::path::PathBuf> {
    let bin = vm.join("bin");
    let mut runners: Vec<_> = std::fs::read_dir(&bin)
        .with_context(|| format!("{} has no bin/", vm.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("run-") && n.ends_with("-vm"))
        })
        .collect();
    match runners.len() {
        1 => Ok(runners.remove(0)),
        0 => bail!("{} has no run-*-vm runner", bin.display()),
        _ => bail!("{} has several run-*-vm runners", bin.display()),
    }
}

pub fn run(args: &VmArgs) -> Result<()> {
    let vm = flake::build_vm(&args.flake, &args.host)?;
    let runner = runner_in(Path::new(&vm))?;
    eprintln!(
        "starting {} ({}); its agent registers with the server: approve it with `yeet approve {} CODE` once it shows its code",
        args.host,
        runner.display(),
        args.host
    );
    let status = std::process::Command::new(&runner)
        .args(&args.runner_args)
        .status()
        .with_context(|| format!("cannot run {}", runner.display()))?;
    if !status.success() {
        bail!("the VM runner ended with {status}");
    }
    Ok(())
}
