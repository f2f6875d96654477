//! The host's systems: reading `/run/current-system` and friends, setting the system
//! profile, applying a system (a NixOS system's `switch-to-configuration`, a nix-darwin
//! system's `activate`), and the health check. Everything shells out to the real tools
//! (`nix-env`, the system's own scripts, `/bin/sh`).

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::{ActivationMode, SYSTEM_PROFILE};

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

/// What kind of system a store path is, known from what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// A NixOS system: `bin/switch-to-configuration`.
    NixOS,
    /// A nix-darwin system: `activate` (and `activate-user` on older releases), no switch
    /// script.
    Darwin,
}

pub fn platform_of(path: &str) -> Result<Platform, String> {
    let system = Path::new(path);
    if system.join("bin/switch-to-configuration").exists() {
        Ok(Platform::NixOS)
    } else if system.join("activate").exists() {
        Ok(Platform::Darwin)
    } else {
        Err(format!(
            "{path} is neither a NixOS system (bin/switch-to-configuration) nor a nix-darwin system (activate): publish a system's toplevel"
        ))
    }
}

/// Applies the system at `path`, whose profile generation is already set. NixOS:
/// `bin/switch-to-configuration switch|boot`. nix-darwin, as `darwin-rebuild switch` does:
/// `activate-user` where present, then `activate`; it has no boot entries, and its
/// activate-system daemon activates the profile's system at boot, so `boot` does nothing
/// more.
pub fn apply(path: &str, action: ActivationMode, log: &File) -> Result<(), String> {
    let system = Path::new(path);
    match (platform_of(path)?, action) {
        (Platform::NixOS, _) => run_logged(
            Command::new(system.join("bin/switch-to-configuration")).arg(action.as_str()),
            log,
            &format!("switch-to-configuration {}", action.as_str()),
        ),
        (Platform::Darwin, ActivationMode::Switch) => {
            let user = system.join("activate-user");
            if user.exists() {
                run_logged(&mut Command::new(user), log, "activate-user")?;
            }
            run_logged(&mut Command::new(system.join("activate")), log, "activate")
        }
        (Platform::Darwin, ActivationMode::Boot) => Ok(()),
    }
}

/// What `apply` runs, for the log.
pub fn describe(path: &str, action: ActivationMode) -> String {
    match (platform_of(path), action) {
        (Ok(Platform::Darwin), ActivationMode::Switch) => "the nix-darwin system's activate".into(),
        (Ok(Platform::Darwin), ActivationMode::Boot) => {
            "nothing more: nix-darwin activates the profile's system at boot".into()
        }
        _ => format!("switch-to-configuration {}", action.as_str()),
    }
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
    fn darwin_systems_are_applied_as_darwin_rebuild_does() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("darwin-system");
        std::fs::create_dir_all(&sys).unwrap();
        let trace = dir.path().join("trace");
        for script in ["activate-user", "activate"] {
            // A child shell writes the script, so this process never holds it open for
            // writing: a sibling test forking meanwhile would inherit that descriptor
            // until its exec, and running the script would fail with "Text file busy".
            let written = Command::new("/bin/sh")
                .arg("-c")
                .arg(r#"printf '#!/bin/sh\necho %s >> %s\n' "$2" "$3" > "$1" && chmod 755 "$1""#)
                .arg("sh")
                .arg(sys.join(script))
                .arg(script)
                .arg(&trace)
                .status()
                .unwrap();
            assert!(written.success());
        }
        let path = sys.to_str().unwrap();
        let log = File::create(dir.path().join("log")).unwrap();
        assert_eq!(platform_of(path), Ok(Platform::Darwin));
        apply(path, ActivationMode::Boot, &log).unwrap();
        assert!(!trace.exists(), "boot mode ran an activation script");
        apply(path, ActivationMode::Switch, &log).unwrap();
        assert_eq!(
            std::fs::read_to_string(&trace).unwrap(),
            "activate-user\nactivate\n"
        );
        // Older than activate-user, or newer without it: activate alone.
        std::fs::remove_file(sys.join("activate-user")).unwrap();
        apply(path, ActivationMode::Switch, &log).unwrap();
        assert!(
            std::fs::read_to_string(&trace)
                .unwrap()
                .ends_with("activate\nactivate\n")
        );
        let neither = dir.path().to_str().unwrap();
        let err = apply(neither, ActivationMode::Switch, &log).unwrap_err();
        assert!(err.contains("neither a NixOS system"), "{err}");
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
