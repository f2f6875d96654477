//! Secrets end to end, on hosts that boot a real systemd: a secret encrypted by the real
//! `age` CLI reaches the host it is granted to, with its owner, group and mode, and a unit
//! running as that owner reads it; a host it is not granted to refuses the system before
//! the switch; a rotation reaches the host without a release and restarts the unit that
//! uses it; a reboot while the server is down brings it back; a revocation deletes it. And
//! the secret's text appears nowhere it must not: the server's state, its logs, the
//! hosts' journals, activation logs, Nix stores.

#![allow(clippy::unwrap_used)]

mod common;

use fleet_sim::sim::{Fleet, HostKind, SimHost, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FIRST: &str = "yeet-leak-marker-4c1d-first";
const SECOND: &str = "yeet-leak-marker-4c1d-second";

/// A service that uses the secret as its owner would: it runs as www-data and logs a hash
/// of what it read each time it starts (never the text).
const DEMO_UNIT: &str = "[Unit]
Description=demo service reading a secret
[Service]
User=www-data
Environment=PATH=/usr/bin:/bin
ExecStart=/bin/sh -c 'echo \"started $(sha256sum < /run/yeet/secrets/db-password | cut -c1-16)\"; exec sleep infinity'
";

fn sh(host: &SimHost, script: &str) -> std::process::Output {
    host.exec(&["/bin/sh", "-c", script])
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The secret as the host's root reads it (`None` when absent).
fn secret_on(host: &SimHost) -> Option<String> {
    let out = sh(host, "cat /run/yeet/secrets/db-password");
    out.status.success().then(|| stdout(&out))
}

fn demo_starts(host: &SimHost) -> Vec<String> {
    host.journal("demo-web.service")
        .lines()
        .filter(|l| l.starts_with("started "))
        .map(str::to_owned)
        .collect()
}

fn sha16(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{text}\n")))[..16].to_owned()
}

/// Every regular file under `dir`, not following links (a host's store links to the
/// machine's own tools).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            out.extend(files_under(&e.path()));
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    out
}

fn assert_nowhere(marker: &str, what: &str, bytes: &[u8]) {
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the secret's text is in {what}"
    );
}

#[test]
fn secrets_reach_granted_hosts_rotate_and_survive_a_reboot() {
    let fleet = Fleet::of(HostKind::Systemd, &["web-1", "web-2"], 30);
    let dir = fleet.dir().to_owned();

    // Encrypted by the real age CLI to the server's recipient; sent as it is.
    let recipient = fleet
        .server
        .yeet(&["secret", "recipient"])
        .trim()
        .to_owned();
    std::fs::write(dir.join("db-password"), format!("{FIRST}\n")).unwrap();
    let status = Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(dir.join("db-password.age"))
        .arg(dir.join("db-password"))
        .status()
        .expect("the age CLI");
    assert!(status.success());
    std::fs::remove_file(dir.join("db-password")).unwrap();
    let encrypted = dir.join("db-password.age").display().to_string();
    fleet.server.yeet(&[
        "secret",
        "add",
        "db-password",
        "--encrypted",
        &encrypted,
        "--host",
        "web-1",
    ]);

    let system = fleet.system_with_secrets(
        "system-with-secret",
        r#"{ db-password = { owner = "www-data"; group = "www-data"; mode = "0440"; restartUnits = [ "demo-web.service" ]; }; }"#,
    );
    fleet.publish(
        &[("web-1", &system), ("web-2", &system)],
        "needs db-password",
    );

    // web-2 may not have it: refused before the switch, naming it, nothing changed.
    let refused = fleet.wait_for_activation("web-2", 1, common::CONVERGE);
    let reason = refused["reason"].as_str().unwrap();
    assert_eq!(refused["result"], "failed", "{refused}");
    assert!(
        reason.contains("db-password") && reason.contains("yeet secret grant"),
        "{reason}"
    );
    let (web1, web2) = (&fleet.hosts[0], &fleet.hosts[1]);
    assert_eq!(web2.current_system(), Some(fleet.base.clone()));
    assert_eq!(secret_on(web2), None);
    let log: serde_json::Value = fleet.server.yeet_json(&["log", "web-2"]);
    assert!(
        !log["log"]
            .as_str()
            .unwrap()
            .contains("switch-to-configuration switch")
    );

    // web-1 has it, with its owner, group and mode, and the owner's unit reads it.
    let done = fleet.wait_for_activation("web-1", 1, common::CONVERGE);
    assert_eq!(done["result"], "confirmed", "{done}\n{}", web1.agent_log());
    assert_eq!(web1.current_system(), Some(system.clone()));
    let stat = sh(web1, "stat -L -c '%U %G %a' /run/yeet/secrets/db-password");
    assert_eq!(stdout(&stat), "www-data www-data 440");
    let read_as = |user: &str| {
        web1.exec(&[
            "systemd-run",
            "--wait",
            "--pipe",
            "--quiet",
            &format!("--uid={user}"),
            "/bin/cat",
            "/run/yeet/secrets/db-password",
        ])
    };
    let as_owner = read_as("www-data");
    assert_eq!(
        stdout(&as_owner),
        FIRST,
        "{}",
        String::from_utf8_lossy(&as_owner.stderr)
    );
    assert!(
        !read_as("nobody").status.success(),
        "another user read the secret"
    );

    // The copy kept for reboots is agenix's format: it opens with the host's SSH key.
    let kept = web1.root.join("var-lib-yeet/secrets/db-password.age");
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(web1.root.join("etc-yeet/host_key"))
        .arg(&kept)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        FIRST,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service that uses it.
    std::fs::write(
        web1.root.join("fs/etc/systemd/system/demo-web.service"),
        DEMO_UNIT,
    )
    .unwrap();
    let started = sh(
        web1,
        "systemctl daemon-reload && systemctl start demo-web.service",
    );
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    wait_until(Duration::from_secs(30), "demo-web to start", || {
        demo_starts(web1).len() == 1
    });
    assert_eq!(demo_starts(web1), [format!("started {}", sha16(FIRST))]);

    // Rotation: no release, the file changes, the unit restarts with the new secret.
    let releases = fleet
        .server
        .yeet_json::<Vec<serde_json::Value>>(&["releases"])
        .len();
    std::fs::write(dir.join("second"), format!("{SECOND}\n")).unwrap();
    let rotated_at = Instant::now();
    let out = fleet_sim::run(
        fleet
            .server
            .yeet_cmd()
            .args(["secret", "rotate", "db-password", "--stdin"])
            .stdin(std::fs::File::open(dir.join("second")).unwrap()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(dir.join("second")).unwrap();
    wait_until(
        Duration::from_secs(60),
        "the rotated secret on web-1",
        || secret_on(web1).as_deref() == Some(SECOND),
    );
    println!(
        "secret rotation: `yeet secret rotate` to the new file on the host took {:?}",
        rotated_at.elapsed()
    );
    wait_until(Duration::from_secs(30), "demo-web to restart", || {
        demo_starts(web1).len() == 2
    });
    assert_eq!(demo_starts(web1)[1], format!("started {}", sha16(SECOND)));
    assert_eq!(
        fleet
            .server
            .yeet_json::<Vec<serde_json::Value>>(&["releases"])
            .len(),
        releases
    );
    let list: Vec<serde_json::Value> = fleet.server.yeet_json(&["secret", "list"]);
    assert_eq!(list[0]["version"], 2);
    wait_until(
        Duration::from_secs(30),
        "web-1's fetch of version 2 to be listed",
        || {
            let list: Vec<serde_json::Value> = fleet.server.yeet_json(&["secret", "list"]);
            list[0]["hosts"][0]["fetched_version"] == 2
        },
    );

    // A switch that fails, to a system that asks for one more secret: the rollback puts the
    // previous generation back, without the new secret.
    std::fs::write(dir.join("token"), "api token\n").unwrap();
    let token = dir.join("token").display().to_string();
    fleet.server.yeet(&[
        "secret",
        "add",
        "api-token",
        "--from-file",
        &token,
        "--host",
        "web-1",
    ]);
    let failing = fleet.system_from("system-fails-with-secrets", |spec| {
        spec.variant = fleet_sim::sim::Variant::Fail;
        spec.secrets = r#"{ db-password = { owner = "www-data"; group = "www-data"; mode = "0440"; restartUnits = [ "demo-web.service" ]; }; api-token = { }; }"#;
    });
    fleet.publish(&[("web-1", &failing)], "fails to switch");
    let back = fleet.wait_for_activation("web-1", 2, common::CONVERGE);
    assert_eq!(back["result"], "rolled-back", "{back}");
    assert_eq!(web1.current_system(), Some(system.clone()));
    assert_eq!(secret_on(web1).as_deref(), Some(SECOND));
    let token_there = sh(web1, "test -e /run/yeet/secrets/api-token");
    assert!(
        !token_there.status.success(),
        "the failed system's secret stayed"
    );
    let generations = sh(web1, "ls /run/yeet/secrets.d | wc -l");
    assert_eq!(
        stdout(&generations),
        "1",
        "the failed generation was not removed"
    );

    // A reboot while the server is down: the secret is back before any contact.
    let server_pid = fleet.server.proc.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &server_pid])
            .status()
            .unwrap()
            .success()
    );
    let mut fleet = fleet;
    fleet.reboot("web-1");
    let web1 = &fleet.hosts[0];
    wait_until(
        Duration::from_secs(60),
        "the secret back after the reboot",
        || secret_on(web1).as_deref() == Some(SECOND),
    );
    let stat = sh(web1, "stat -L -c '%U %G %a' /run/yeet/secrets/db-password");
    assert_eq!(stdout(&stat), "www-data www-data 440");
    assert!(
        Command::new("kill")
            .args(["-CONT", &server_pid])
            .status()
            .unwrap()
            .success()
    );

    // Revoking a secret web-1's running system uses is refused without --yes (no terminal
    // to ask at), naming the host; nothing changes. With --yes it is done, and said.
    let out = fleet_sim::run(
        fleet
            .server
            .yeet_cmd()
            .args(["secret", "revoke", "db-password", "web-1"])
            .stdin(std::process::Stdio::null()),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("web-1 fetched db-password")
            && said.contains("--yes"),
        "{said}"
    );
    let listed: serde_json::Value = fleet.server.yeet_json(&["secret", "list"]);
    assert_eq!(listed[0]["hosts"][0]["host"], "web-1", "{listed}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(secret_on(web1).as_deref(), Some(SECOND));
    // Revoked: deleted from the host at its next check-in, the kept copy too.
    let revoked: serde_json::Value =
        fleet
            .server
            .yeet_json(&["secret", "revoke", "db-password", "web-1", "--yes"]);
    assert_eq!(revoked["hosts"], serde_json::json!([]), "{revoked}");
    wait_until(
        Duration::from_secs(90),
        "the revoked secret to leave web-1",
        || secret_on(web1).is_none() && !kept.exists(),
    );

    // The secret's text is nowhere it must not be.
    for marker in [FIRST, SECOND] {
        for file in files_under(fleet.server.dir.path()) {
            assert_nowhere(
                marker,
                &file.display().to_string(),
                &std::fs::read(&file).unwrap(),
            );
        }
        let server_output = [
            fleet.server.proc.stdout.all(),
            fleet.server.proc.stderr.all(),
        ]
        .concat();
        // The scans read real logs: they name what was done to the secret.
        assert!(
            server_output
                .iter()
                .any(|l| l.contains("secret rotated") && l.contains("db-password"))
        );
        assert_nowhere(
            marker,
            "the server's log",
            server_output.join("\n").as_bytes(),
        );
        for host in &fleet.hosts {
            let journal = Command::new("journalctl")
                .arg("--directory")
                .arg(host.root.join("fs/var/log/journal"))
                .args(["--output=cat", "--no-pager"])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&journal.stdout).contains("yeet-agent starting"));
            assert_nowhere(marker, &format!("{}'s journal", host.name), &journal.stdout);
            for dir in ["nix/store", "var-lib-yeet", "etc-yeet"] {
                for file in files_under(&host.root.join(dir)) {
                    let bytes = std::fs::read(&file).unwrap_or_default();
                    assert_nowhere(marker, &file.display().to_string(), &bytes);
                }
            }
            let log: serde_json::Value = fleet.server.yeet_json(&["log", &host.name]);
            assert_nowhere(marker, "an activation log", log.to_string().as_bytes());
        }
    }
}

/// `yeet secret` with bad input: each refusal says what to do, and nothing is stored.
#[test]
fn the_secret_command_refuses_bad_input_clearly() {
    let server = fleet_sim::Server::start(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let fails = |args: &[&str], stdin: Option<&Path>| -> String {
        let mut cmd = server.yeet_cmd();
        cmd.args(args);
        if let Some(input) = stdin {
            cmd.stdin(std::fs::File::open(input).unwrap());
        }
        let out = fleet_sim::run(&mut cmd);
        assert!(!out.status.success(), "yeet {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let huge = dir.path().join("huge");
    std::fs::write(&huge, vec![b'x'; yeet_proto::secrets::MAX_SECRET_BYTES + 1]).unwrap();
    let foreign = dir.path().join("foreign.age");
    let stranger = age::x25519::Identity::generate().to_public();
    std::fs::write(
        &foreign,
        yeet_proto::secrets::seal(&stranger, b"x").unwrap(),
    )
    .unwrap();
    let f = |p: &Path| p.display().to_string();
    for (args, stdin, expected) in [
        (
            vec!["secret", "add", "k", "--stdin"],
            Some(empty.as_path()),
            "empty",
        ),
        (
            vec!["secret", "add", "k", "--from-file", &f(&huge)],
            None,
            "larger than 256 KiB",
        ),
        (
            vec!["secret", "add", "k", "--from-file", "/nonexistent"],
            None,
            "cannot read /nonexistent",
        ),
        (
            vec!["secret", "add", "k", "--encrypted", &f(&foreign)],
            None,
            "yeet secret recipient",
        ),
        (
            vec!["secret", "add", "a/b", "--from-file", &f(&huge)],
            None,
            "larger than",
        ),
        (
            vec!["secret", "add", "../k", "--stdin"],
            Some(huge.as_path()),
            "larger than",
        ),
        (
            vec!["secret", "rotate", "nope", "--encrypted", &f(&foreign)],
            None,
            "yeet secret list",
        ),
        (
            vec!["secret", "grant", "nope", "web-1"],
            None,
            "no host named web-1",
        ),
        (vec!["secret", "rm", "nope"], None, "yeet secret list"),
        (vec!["secret", "add", "k"], None, "--from-file"),
    ] {
        let err = fails(&args, stdin);
        assert!(err.contains(expected), "yeet {args:?}: {err}");
    }
    let small = dir.path().join("small");
    std::fs::write(&small, "fine").unwrap();
    let err = fails(&["secret", "add", "a/b", "--from-file", &f(&small)], None);
    assert!(err.contains("invalid secret name"), "{err}");
    let err = fails(
        &[
            "secret",
            "add",
            "k",
            "--from-file",
            &f(&small),
            "--host",
            "nobody",
        ],
        None,
    );
    assert!(err.contains("no host named nobody"), "{err}");
    let listed: Vec<serde_json::Value> = server.yeet_json(&["secret", "list"]);
    assert!(listed.is_empty(), "{listed:?}");
    // And a good one is listed without its content.
    server.yeet(&["secret", "add", "k", "--from-file", &f(&small)]);
    let listed = server.yeet(&["secret", "list", "--json"]);
    assert!(
        listed.contains("\"k\"") && !listed.contains("fine"),
        "{listed}"
    );
}

/// After a check-in is answered early (a rotation woke it), the agent holds a new long-poll
/// at once instead of sleeping out the rest of the check-in interval. With a 60-second
/// interval, three rotations in a row and then a revocation each reach the host within 20
/// seconds; before, the second waited for the interval (about a minute).
#[test]
fn secret_changes_in_a_row_do_not_wait_out_the_checkin_interval() {
    let fleet = Fleet::with(
        &["web-1"],
        fleet_sim::sim::FleetOptions {
            server_config: "checkin_interval_secs = 60\n".into(),
            ..Default::default()
        },
    );
    fleet.add_secret("api-token", "first", "web-1");
    let system = fleet.system_with_secrets("with-token", "{ api-token = { }; }");
    fleet.publish(&[("web-1", &system)], "needs api-token");
    let done = fleet.wait_for_activation("web-1", 1, common::CONVERGE);
    assert_eq!(done["result"], "confirmed", "{done}");
    let (rotations, revocation) =
        fleet.secret_change_latencies("web-1", "api-token", 3, Duration::from_secs(20));
    eprintln!("rotations took {rotations:?}, the revocation {revocation:?}");
}
