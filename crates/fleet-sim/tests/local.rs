//! The agent's local varlink socket, on a host that boots a real systemd, seen through an
//! independent client (Python's `varlink` package, from PyPI) run as real local users: the
//! interface introspects and parses; a member of `yeet` reads the status (with the code
//! while pending) and triggers a check-in, and is refused a detach; a member of
//! `yeet-admin` passes that check; a user outside `yeet` cannot open the socket. And as an
//! attacker in `yeet`: a message that never ends, calls whose replies are never read, and a
//! pile of idle connections do not keep others from being served, and a connection whose
//! replies are never read is closed at the write deadline.

#![allow(clippy::unwrap_used)]

mod common;

use fleet_sim::sim::{Fleet, HostKind, SimHost, wait_until};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Where `./test.sh` installs the `varlink` package for the test hosts' Python.
const PYTHON_PACKAGES: &str = "/opt/yeet-test-python";
const SOCKET: &str = "/run/yeet/agent.varlink";
const CLIENT: &str = "/opt/yeet-test/varlink_client.py";

fn sh(host: &SimHost, script: &str) -> std::process::Output {
    let out = host.exec(&["/bin/sh", "-c", script]);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the Python client as `user` on the host; its JSON answer.
fn python(host: &SimHost, user: &str, args: &[&str]) -> Value {
    let mut cmd = vec![
        "runuser",
        "-u",
        user,
        "--",
        "env",
        "PYTHONPATH=/opt/yeet-test-python",
        "/usr/bin/python3",
        CLIENT,
        SOCKET,
    ];
    cmd.extend_from_slice(args);
    let out = host.exec(&cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "{user} {args:?}: no JSON answer: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn call(host: &SimHost, user: &str, method: &str, params: &str) -> Value {
    python(host, user, &["call", method, params])
}

#[test]
fn the_socket_serves_an_independent_client_by_group() {
    assert!(
        std::path::Path::new(PYTHON_PACKAGES)
            .join("varlink")
            .is_dir(),
        "the varlink Python package is missing from {PYTHON_PACKAGES}: run ./test.sh, which installs it"
    );
    let fleet = Fleet::of(HostKind::Systemd, &[], 30);
    let host = fleet.boot_new_host("desk-1");
    let code = host.shown_code(Duration::from_secs(120));
    // Local users, as an admin would set them up; the agent picks up its group at start.
    sh(
        &host,
        "groupadd yeet && groupadd yeet-admin \
         && useradd -M -N -G yeet alice && useradd -M -N bob \
         && useradd -M -N -G yeet,yeet-admin carol \
         && systemctl restart yeet-agent",
    );
    let socket = host.agent_socket().unwrap();
    let yeet_gid: u32 =
        String::from_utf8_lossy(&sh(&host, "getent group yeet | cut -d: -f3").stdout)
            .trim()
            .parse()
            .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the socket to belong to yeet",
        || {
            std::fs::metadata(&socket)
                .is_ok_and(|m| m.gid() == yeet_gid && m.mode() & 0o777 == 0o660)
        },
    );
    let client = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/varlink_client.py"
    ))
    .unwrap();
    let at = std::path::Path::new("/proc")
        .join(host.leader().unwrap().to_string())
        .join("root/opt/yeet-test");
    std::fs::create_dir_all(&at).unwrap();
    std::fs::write(at.join("varlink_client.py"), client).unwrap();

    // Introspection: the Python package fetches and parses the interface description.
    let described = python(&host, "alice", &["introspect"]);
    assert!(
        described["interfaces"]
            .as_array()
            .unwrap()
            .contains(&Value::from("org.yeet.Agent")),
        "{described}"
    );
    let methods: Vec<&str> = described["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in [
        "GetStatus",
        "GetLog",
        "CheckNow",
        "Detach",
        "Switch",
        "ForceSwitch",
        "Attach",
        "PermissionDenied",
        "Busy",
        "NotDetached",
        "DetachRefused",
        "Untrusted",
        "ServerUnreachable",
    ] {
        assert!(methods.contains(&m), "{m} is not in {methods:?}");
    }
    // org.varlink.service.GetInfo names this project (it once named the one yeet grew from).
    let info = &described["info"];
    assert_eq!(
        (
            info["vendor"].as_str(),
            info["product"].as_str(),
            info["url"].as_str()
        ),
        (Some("yeet"), Some("yeet-agent"), Some("flake:yeet")),
        "{info}"
    );
    let description = described["description"].as_str().unwrap();
    // Every method and error is documented in the interface text itself.
    assert!(
        description.contains("Wakes the agent to check in")
            && description.contains("Switch and Attach need a detached host"),
        "{description}"
    );

    // A member of `yeet` reads the status, with the code while pending (once the
    // restarted agent registered again), and checks in.
    let mut status = Value::Null;
    wait_until(Duration::from_secs(60), "alice to see the code", || {
        status = call(&host, "alice", "GetStatus", "{}");
        status["ok"]["status"]["verificationCode"] == code.as_str()
    });
    assert_eq!(status["ok"]["status"]["enrollment"], "pending-approval");
    // So does `yeet-agent status`, run by alice (no root needed).
    let out = host.exec(&[
        "runuser",
        "-u",
        "alice",
        "--",
        "/opt/yeet-agent/bin/yeet-agent",
        "status",
        "--json",
    ]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "yeet-agent status as alice: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // In the CLIs' casing (snake_case), whatever varlink's.
    assert_eq!(shown["verification_code"], code.as_str(), "{shown}");
    assert!(!shown.to_string().contains("verificationCode"), "{shown}");
    let out = host.exec(&[
        "runuser",
        "-u",
        "bob",
        "--",
        "/opt/yeet-agent/bin/yeet-agent",
        "status",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("socket group (yeet)"),
        "{said}"
    );
    assert_eq!(
        call(&host, "alice", "CheckNow", "{}")["ok"],
        Value::Object(Default::default())
    );
    // ... but may not change the system.
    let refused = call(&host, "alice", "Detach", r#"{"reason": "mine"}"#);
    assert_eq!(
        refused["error"], "org.yeet.Agent.PermissionDenied",
        "{refused}"
    );
    assert!(
        refused["parameters"]["reason"]
            .as_str()
            .unwrap()
            .contains("yeet-admin"),
        "{refused}"
    );
    // A member of `yeet-admin` passes the check; the server then refuses (not approved).
    let admin = call(&host, "carol", "Detach", r#"{"reason": "testing"}"#);
    assert_eq!(admin["error"], "org.yeet.Agent.ServerRefused", "{admin}");
    // Outside `yeet`, the socket does not open.
    let outsider = call(&host, "bob", "GetStatus", "{}");
    assert!(
        outsider["connect_error"]
            .as_str()
            .is_some_and(|e| e.contains("Permission denied")),
        "{outsider}"
    );

    // Hostile members of `yeet`: a message that never ends is cut off...
    let oversized = python(&host, "alice", &["oversized"]);
    assert_eq!(oversized["closed"], true, "{oversized}");
    // ... and neither unread replies nor idle connections keep others from being served.
    let mut attackers: Vec<std::process::Child> = [["unread", "5000", "30"], ["hog", "300", "30"]]
        .iter()
        .map(|args| {
            let child = std::process::Command::new("nsenter")
                .args(["-t", &host.leader().unwrap().to_string(), "-a", "--"])
                .args([
                    "runuser",
                    "-u",
                    "alice",
                    "--",
                    "env",
                    "PYTHONPATH=/opt/yeet-test-python",
                ])
                .args(["/usr/bin/python3", CLIENT, SOCKET])
                .args(args)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // The unread replies' connection first, within alice's share.
            std::thread::sleep(Duration::from_secs(1));
            child
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let served = call(&host, "carol", "GetStatus", "{}");
    assert_eq!(
        served["ok"]["status"]["verificationCode"],
        code.as_str(),
        "{served}"
    );
    eprintln!(
        "GetStatus answered in {:?} while alice held idle connections and unread replies",
        started.elapsed()
    );
    // Served during the attack, not after it: the attackers still run.
    for a in &mut attackers {
        assert!(a.try_wait().unwrap().is_none(), "an attacker ended early");
    }
    // alice's own further connections beyond her share are closed at once.
    let alice = call(&host, "alice", "GetStatus", "{}");
    assert!(alice["connect_error"].is_string(), "{alice}");
    for a in &mut attackers {
        let _ = a.kill();
        let _ = a.wait();
    }
    // The agent still serves everyone once the attackers are gone.
    wait_until(Duration::from_secs(30), "alice to be served again", || {
        call(&host, "alice", "GetStatus", "{}")["ok"].is_object()
    });
    // A client that never reads its replies does not keep its connection: once the socket's
    // buffer is full, the agent's write gives up after its deadline (30 s) and closes it.
    // Looked at 45 s in, past that deadline; before, the write waited for good.
    let unread = python(&host, "alice", &["unread-then-drain", "20000", "45"]);
    assert_eq!(unread["closed"], true, "{unread}");
    assert!(
        unread["replies"].as_u64().unwrap() < unread["sent"].as_u64().unwrap(),
        "the buffer never filled: {unread}"
    );
    drop(fleet);
}
