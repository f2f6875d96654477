//! The foundation's whole flow across real processes: the server binary, a `yeet-agent`
//! registering with an SSH host key, `yeet pending`, `yeet approve`, `yeet publish --path`,
//! and `yeet status --json` showing the desired system. Then the same over native TLS.

#![allow(clippy::unwrap_used)]

use fleet_sim::{
    Server, ServerOptions, code_in, fresh_postgres_database, run, ssh_host_key, test_certificates,
};
use serde_json::Value;
use std::time::Duration;

const SYSTEM: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-nixos-system-web-1";

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enroll_approve_publish_status_on_sqlite() {
    enroll_approve_publish_status(ServerOptions::default());
}

#[test]
fn enroll_approve_publish_status_on_postgres() {
    enroll_approve_publish_status(ServerOptions {
        database: Some(fresh_postgres_database()),
        ..Default::default()
    });
}

fn enroll_approve_publish_status(options: ServerOptions) {
    let mut server = Server::start(options);
    let key = ssh_host_key(server.dir.path(), "host_key");
    let agent = server.agent(&key, &[]);
    let code = agent
        .stdout
        .wait_for(Duration::from_secs(30), "the verification code", code_in);

    let pending: Vec<Value> = server.yeet_json(&["pending"]);
    assert_eq!(pending.len(), 1);
    assert!(
        !serde_json::to_string(&pending).unwrap().contains(&code),
        "pending must not reveal the code"
    );
    let table = server.yeet(&["pending"]);
    assert!(
        table.contains(pending[0]["key_id"].as_str().unwrap()) && !table.contains(&code),
        "{table}"
    );

    // A wrong code is refused with a hint, and nothing is approved.
    let out = run(server.yeet_cmd().args(["approve", "web-1", "ZZZZ-ZZZZ"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("yeet-agent prints"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.yeet(&["approve", "web-1", &code.to_lowercase()]);
    agent.stderr.wait_for(
        Duration::from_secs(30),
        "the agent to learn it was approved",
        |l| l.contains("approved").then_some(()),
    );
    let out = server.yeet(&[
        "publish",
        "--path",
        &format!("web-1={SYSTEM}"),
        "-m",
        "first release",
    ]);
    assert!(out.contains("release 1"), "{out}");

    wait_until(
        Duration::from_secs(30),
        "status to show the checked-in host",
        || {
            let hosts: Vec<Value> = server.yeet_json(&["status"]);
            hosts.len() == 1 && hosts[0]["last_seen"].is_i64()
        },
    );
    let hosts: Vec<Value> = server.yeet_json(&["status"]);
    assert_eq!(hosts[0]["name"], "web-1");
    assert_eq!(hosts[0]["desired_system"], SYSTEM);
    assert_eq!(hosts[0]["desired_release"], 1);
    assert_eq!(hosts[0]["state"], "standby");
    assert_eq!(
        hosts[0]["facts"]["agent_version"],
        env!("CARGO_PKG_VERSION")
    );
    let one: Vec<Value> = server.yeet_json(&["status", "web-1"]);
    assert_eq!(one[0]["key_id"], hosts[0]["key_id"]);
    let table = server.yeet(&["status"]);
    assert!(
        table.contains("web-1") && table.contains("nixos-system-web-1"),
        "{table}"
    );
    let detail = server.yeet(&["status", "web-1"]);
    assert!(
        detail.contains(SYSTEM) && detail.contains(hosts[0]["key_id"].as_str().unwrap()),
        "{detail}"
    );
    let releases: Vec<Value> = server.yeet_json(&["releases"]);
    assert_eq!(
        (
            releases[0]["message"].as_str(),
            releases[0]["author"].as_str()
        ),
        (Some("first release"), Some("admin"))
    );
    agent.stderr.wait_for(
        Duration::from_secs(30),
        "the agent to see its desired system",
        |l| l.contains(SYSTEM).then_some(()),
    );

    // Graceful shutdown: SIGTERM ends the server cleanly.
    assert!(server.proc.terminate().success());
}

#[test]
fn cli_errors_say_what_to_do_next() {
    let server = Server::start(ServerOptions::default());
    let out = run(server.yeet_cmd().env_remove("YEET_SERVER").arg("status"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--server") && err.contains("YEET_SERVER"),
        "{err}"
    );
    let out = run(server
        .yeet_cmd()
        .env("YEET_SERVER", "http://127.0.0.1:9")
        .arg("status"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach"),
        "{err}"
    );
    // A key the server does not know.
    let stranger = ssh_host_key(server.dir.path(), "stranger");
    let out = run(server.yeet_cmd().env("YEET_KEY", &stranger).arg("status"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown_key"),
        "{err}"
    );
    let out = run(server
        .yeet_cmd()
        .args(["publish", "--path", "web=/etc/passwd"]));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/etc/passwd"));
}

#[test]
fn native_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let server = Server::start(ServerOptions {
        tls: Some((cert, key)),
        ca_cert: Some(ca),
        ..Default::default()
    });
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let me: Value = server.yeet_json(&["whoami"]);
    assert_eq!(me["role"], "admin");
    // Without the CA the certificate is refused, and plain HTTP cannot talk to it.
    let out = run(server.yeet_cmd().env_remove("YEET_CA_CERT").arg("whoami"));
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );
    let host_key = ssh_host_key(server.dir.path(), "host_key");
    let agent = server.agent(&host_key, &[]);
    agent
        .stdout
        .wait_for(Duration::from_secs(30), "a code over TLS", code_in);
}
