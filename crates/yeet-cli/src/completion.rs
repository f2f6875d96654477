//! Shell completion: clap's completion engine, called by the shell at each TAB (the script
//! `yeet completions SHELL` prints registers it), with host names completed from the list
//! the last `yeet status` (or publish) fetched, kept in a small file: completing never asks
//! the server, so it never blocks the shell.

use clap_complete::engine::CompletionCandidate;
use std::ffi::OsStr;
use std::path::PathBuf;
use yeet_proto::api::HostInfo;

/// The environment variable through which the shell asks `yeet` for completions.
pub const COMPLETE_VAR: &str = "YEET_COMPLETE";

/// Where the fleet's host names are remembered: `$XDG_CACHE_HOME/yeet/hosts`, else
/// `~/.cache/yeet/hosts`.
fn hosts_file() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("yeet/hosts"))
}

/// Remembers the fleet's host names for completion. Best effort: a cache that cannot be
/// written costs completions, never the command. Names the server sent that are no valid
/// host names are left out (they would reach the shell).
pub fn remember_hosts(hosts: &[HostInfo]) {
    let Some(file) = hosts_file() else { return };
    let names: Vec<&str> = hosts
        .iter()
        .map(|h| h.name.as_str())
        .filter(|n| yeet_proto::names::validate_host_name(n).is_ok())
        .collect();
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let staged = dir.join(format!(".hosts.{}", std::process::id()));
    if std::fs::write(&staged, names.join("\n") + "\n").is_ok() {
        let _ = std::fs::rename(&staged, &file);
    }
}

/// Candidates for an argument that names a host: the remembered names starting with what
/// was typed.
pub fn host_names(typed: &OsStr) -> Vec<CompletionCandidate> {
    let typed = typed.to_string_lossy();
    let Some(known) = hosts_file().and_then(|f| std::fs::read_to_string(f).ok()) else {
        return Vec::new();
    };
    known
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && name.starts_with(typed.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

/// What arguments that name a host complete with (`#[arg(add = host_arg())]`).
pub fn host_arg() -> clap_complete::engine::ArgValueCompleter {
    clap_complete::engine::ArgValueCompleter::new(host_names)
}

/// `yeet completions SHELL`: the script that registers `yeet`'s completions with the shell.
pub fn print_registration(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| anyhow::anyhow!("no completions for {name}"))?;
    completer.write_registration(COMPLETE_VAR, "yeet", "yeet", "yeet", &mut std::io::stdout())?;
    Ok(())
}
