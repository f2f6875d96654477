//! The host's systems: reading `/run/current-system` and friends, setting the system
//! profile, running `switch-to-configuration`, and the health check. Everything shells out
//! to the real tools (`nix-env`, the system's own switch script, `sh`).

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::SYSTEM_PROFILE;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The store path a system symlink such as `/run/current-system` points at, if valid.
pub fn system_link(link: &str) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    let s = target.to_str()?.to_owned();
    s.parse::<nix_meta::StorePath>().ok().map(|_| s)
}

/// The system the profile's default generation points at (what the next boot runs).
pub fn profile_system() -> Option<String> {
    let target = std::fs::canonicalize(SYSTEM_PROFILE).ok()?;
    let s = target.to_str()?.to_owned();
    s.parse::<nix_meta::StorePath>().ok().map(|_| s)
}

/// True when `new` boots a different kernel or initrd than `booted`: the new system is
/// then fully active only after a reboot.
pub fn kernel_differs(booted: &str, new: &str) -> bool {
    ["kernel", "initrd"].iter().any(|part| {
        let read = |sys: &str| std::fs::canonicalize(Path::new(sys).join(part)).ok();
        read(booted) != read(new)
    })
}

/// Runs `cmd`, appending its output to `log`; Err carries a one-line reason.
fn run_logged(cmd: &mut Command, log: &File, what: &str) -> Result<(), String> {
    let out = log
        .try_clone()
        .map_err(|e| format!("cannot write the activation log: {e}"))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot write the activation log: {e}"))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Points the system profile at `path` (a new generation, as `nixos-rebuild` does).
pub fn set_profile(path: &str, log: &File) -> Result<(), String> {
    run_logged(
        Command::new("nix-env").args(["-p", SYSTEM_PROFILE, "--set", path]),
        log,
        "setting the system profile",
    )
}

/// Runs `<path>/bin/switch-to-configuration <action>`.
pub fn switch_to(path: &str, action: &str, log: &File) -> Result<(), String> {
    let script = Path::new(path).join("bin/switch-to-configuration");
    run_logged(
        Command::new(&script).arg(action),
        log,
        &format!("switch-to-configuration {action}"),
    )
}

/// Runs the health check through `/bin/sh -c` (which NixOS, Debian and macOS all have,
/// while the agent unit's PATH may hold no shell), appending its output to `log`. It runs
/// as root with the agent's environment and working directory.
pub fn health_check(cmd: &str, log: &File) -> Result<(), String> {
    let shell = if Path::new("/bin/sh").exists() {
        "/bin/sh"
    } else {
        "sh"
    };
    run_logged(
        Command::new(shell).arg("-c").arg(cmd),
        log,
        &format!("health check `{cmd}`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_changes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, kernel: &str| {
            let sys = dir.path().join(name);
            std::fs::create_dir_all(&sys).unwrap();
            std::fs::write(dir.path().join(kernel), kernel).unwrap();
            std::os::unix::fs::symlink(dir.path().join(kernel), sys.join("kernel")).unwrap();
            sys.to_str().unwrap().to_owned()
        };
        let (a, b, c) = (mk("a", "k1"), mk("b", "k1"), mk("c", "k2"));
        assert!(!kernel_differs(&a, &b));
        assert!(kernel_differs(&a, &c));
    }

    #[test]
    fn failing_commands_are_reasons_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("log")).unwrap();
        assert!(health_check("echo fine", &log).is_ok());
        let err = health_check("echo broken >&2; exit 3", &log).unwrap_err();
        assert!(err.contains("health check") && err.contains('3'), "{err}");
        let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(text.contains("fine") && text.contains("broken"), "{text}");
    }
}
