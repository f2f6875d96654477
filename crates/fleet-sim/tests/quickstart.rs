//! The README's quickstart, run as written: its code blocks, in order, each command line as
//! a shell runs it, against a simulated host with real Nix, until the host has switched to
//! the published system and confirmed it. What a test cannot do as a person would is
//! stood in for, and only that: the server and the agent run in the background (a person
//! gives each a terminal), the agent in the host's namespaces, the server's address is the
//! test's own port instead of 8470, the approval code is the one the host showed instead
//! of the example's, and `nix build` of the fleet flake (no nixpkgs here) is a test system
//! built the same way the fleet tests build theirs.

#![allow(clippy::unwrap_used)]

use fleet_sim::sim::{Cache, HostKind, Platform, SimHost, SystemSpec, Variant, build_system};
use fleet_sim::{Proc, bin_dir};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The command lines of the README's quickstart code blocks, in order (comment-only lines
/// left out; a line's trailing comment is the shell's to ignore).
fn quickstart_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme.find("## Quickstart, by hand").unwrap();
    let end = start + readme[start..].find("\n## ").unwrap();
    let mut lines = Vec::new();
    let mut in_block = false;
    for line in readme[start..end].lines().map(str::trim) {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if in_block && !line.is_empty() && !line.starts_with('#') {
            lines.push(line.to_owned());
        }
    }
    lines
}

/// The words of a command line before its comment, for the lines the test stands in for.
fn words(line: &str) -> Vec<String> {
    line.split(" #")
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readmes_quickstart_reaches_a_confirmed_switch() {
    let lines = quickstart_lines();
    assert!(lines.len() >= 10, "{lines:?}");
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("quickstart");
    std::fs::create_dir_all(&here).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let url = format!("http://{address}");
    let mut env: BTreeMap<String, String> = BTreeMap::from([
        ("HOME".into(), here.display().to_string()),
        (
            "PATH".into(),
            format!(
                "{}:{}",
                bin_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        // Where a person's server would use /var/lib/yeet-server and port 8470.
        (
            "YEET_SERVER_STATE_DIR".into(),
            dir.path().join("state").display().to_string(),
        ),
        ("YEET_SERVER_LISTEN".into(), address.clone()),
    ]);
    // The host's boot system comes from a cache of the test's own; what it is told to run
    // comes from the quickstart.
    let boot_cache = Cache::new(&dir.path().join("boot-cache"), "boot-1");
    let salt = dir.path().display().to_string();
    let spec = |name: &'static str, trusted_key: &str| {
        build_system(&SystemSpec {
            name,
            platform: Platform::NixOS,
            variant: Variant::Good,
            kernel: "6.1",
            server: &url,
            trusted_key,
            confirm_timeout: 60,
            salt: &salt,
            extra_agent_config: "",
            agent_package: fleet_sim::sim::SYSTEMD_HOST_AGENT_PACKAGE,
            secrets: "",
        })
    };
    let base = spec("base", &boot_cache.public_key);
    boot_cache.push(&base);
    let mut host = SimHost::new(dir.path(), "web-1", HostKind::Namespace);
    // The server, kept running (and killed when the test ends).
    let mut server: Option<Proc> = None;
    let mut published = None;

    for line in &lines {
        let line = line.replace("127.0.0.1:8470", &address);
        let argv = words(&line);
        let shell = |line: &str, env: &BTreeMap<String, String>| {
            let out = fleet_sim::run(
                Command::new("bash")
                    .args(["-euo", "pipefail", "-c", line])
                    .current_dir(&here)
                    .env_clear()
                    .envs(env),
            );
            // The server's log is echoed above, as `[server] ...`.
            assert!(
                out.status.success(),
                "the quickstart's `{line}` failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        match argv.first().map(String::as_str) {
            Some("yeet-server") if argv.get(1).map(String::as_str) != Some("admin") => {
                let mut cmd = Command::new(bin_dir().join("yeet-server"));
                cmd.args(&argv[1..])
                    .current_dir(&here)
                    .env_clear()
                    .envs(&env);
                let started = Proc::spawn(cmd, "server");
                fleet_sim::sim::wait_until(Duration::from_secs(30), "the server", || {
                    std::net::TcpStream::connect(&address).is_ok()
                });
                server = Some(started);
            }
            Some("yeet-agent") => {
                assert_eq!(argv[1], "run", "{line}");
                host.agent_args = argv[2..].to_vec();
                host.agent_dir = Some(here.clone());
                host.start(&boot_cache, &base);
            }
            Some("export") => {
                let (name, value) = argv[1].split_once('=').unwrap();
                env.insert(name.to_owned(), value.to_owned());
            }
            Some("yeet") if argv.get(1).map(String::as_str) == Some("approve") => {
                let code = host.shown_code(Duration::from_secs(60));
                let example = argv[3].clone();
                shell(&line.replace(&example, &code), &env);
            }
            Some("nix") if argv.get(1).map(String::as_str) == Some("build") => {
                // The fleet flake's web-1, trusting the key the quickstart made.
                let key = std::fs::read_to_string(here.join("cache-key.pub")).unwrap();
                let system = spec("web-1-system", key.trim());
                std::os::unix::fs::symlink(&system, here.join("result")).unwrap();
                published = Some(system);
            }
            _ => {
                let out = shell(&line, &env);
                if argv.get(1).map(String::as_str) == Some("status") {
                    assert!(out.contains("web-1"), "{out}");
                }
            }
        }
    }

    // `yeet publish --wait` returned 0, so the host confirmed; the host itself runs it too.
    let published = published.expect("the quickstart builds a system");
    assert_eq!(host.current_system().as_deref(), Some(published.as_str()));
    let log = host.agent_log();
    assert!(log.contains("confirmed"), "{log}");
    let server = server.as_mut().expect("the quickstart starts the server");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
}
