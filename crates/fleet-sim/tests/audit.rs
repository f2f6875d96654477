//! The audit log across real processes: the server binary records what operators did
//! through the `yeet` CLI (and what they were refused), `yeet audit` lists and filters it,
//! and both verifiers (`yeet audit verify` over the API, `yeet-server audit verify` on the
//! database) name the event a person with access to the database file changed, using
//! Python's sqlite3 module as the independent tool that does the tampering.

#![allow(clippy::unwrap_used)]

use fleet_sim::{Server, ServerOptions, bin, run};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs SQL on the server's SQLite database with Python's sqlite3 module.
fn tamper(server: &Server, sql: &str) {
    let db = server.dir.path().join("state/yeet.db");
    let out = run(Command::new("python3").args([
        "-c",
        "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()",
        &db.display().to_string(),
        sql,
    ]));
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `yeet-server audit verify`, on the server's own config and state directory.
fn verify_offline(server: &Server) -> Output {
    run(Command::new(bin("yeet-server"))
        .arg("--config")
        .arg(server.dir.path().join("server.toml"))
        .arg("--state-dir")
        .arg(server.dir.path().join("state"))
        .args(["audit", "verify"]))
}

fn says(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lines of the audit file, once it has `n` of them.
fn audit_file_lines(path: &std::path::Path, n: usize) -> Vec<yeet_proto::audit::AuditEvent> {
    let mut lines = Vec::new();
    fleet_sim::sim::wait_until(Duration::from_secs(30), "the audit file", || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines.len() >= n
    });
    lines
}

#[test]
fn operators_actions_are_recorded_listed_and_tampering_is_named() {
    let siem = tempfile::tempdir().unwrap();
    let audit_file = siem.path().join("audit.jsonl");
    let server = Server::start(ServerOptions {
        config: format!("audit_log_file = \"{}\"\n", audit_file.display()),
        ..Default::default()
    });
    let bob_key = fleet_sim::operator_key(&server.dir.path().join("bob_key"));
    let bob_pub = bob_key.with_extension("pub").display().to_string();
    server.yeet(&[
        "user",
        "add",
        "bob",
        "--public-key",
        &bob_pub,
        "--role",
        "viewer",
    ]);
    server.yeet(&["user", "set-role", "bob", "publisher"]);
    // Refused (nobody changes their own rights): recorded with its code.
    let refused = run(server.yeet_cmd().args(["user", "rm", "admin"]));
    assert!(!refused.status.success());

    let events: Vec<Value> = server.yeet_json(&["audit"]);
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("user.add", "done"),
            ("user.add", "done"),
            ("user.role", "done"),
            ("user.remove", "own_rights"),
        ],
        "{events:#?}"
    );
    // The first admin was added offline, by a Unix user on the server host.
    assert!(events[0]["actor"].as_str().unwrap().starts_with("local:"));
    let role = &events[2];
    assert_eq!(role["actor"], "admin");
    assert_eq!(role["address"], "127.0.0.1");
    assert!(role["key_id"].as_str().unwrap().starts_with("SHA256:"));
    assert_eq!(role["nonce"].as_str().unwrap().len(), 32);
    assert_eq!(role["details"]["role"], "publisher");
    let filtered: Vec<Value> = server.yeet_json(&["audit", "--action", "user.role"]);
    assert_eq!(filtered.len(), 1, "{filtered:#?}");
    let family: Vec<Value> = server.yeet_json(&["audit", "--action", "user", "--since", "1h"]);
    assert_eq!(family.len(), 4, "{family:#?}");
    let by_bob: Vec<Value> = server.yeet_json(&["audit", "--user", "bob"]);
    assert!(by_bob.is_empty(), "{by_bob:#?}");
    let table = server.yeet(&["audit"]);
    assert!(
        table.contains("user.role") && table.contains("own_rights"),
        "{table}"
    );
    // Bob, unscoped but no admin, sees only events about hosts: none here.
    let as_bob = run(server
        .yeet_cmd()
        .env("YEET_KEY", &bob_key)
        .args(["audit", "--json"]));
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&as_bob.stdout).unwrap(),
        Vec::<Value>::new()
    );
    let bob_verifies = run(server
        .yeet_cmd()
        .env("YEET_KEY", &bob_key)
        .args(["audit", "verify"]));
    assert!(
        !bob_verifies.status.success() && says(&bob_verifies).contains("only admins"),
        "{}",
        says(&bob_verifies)
    );

    // The file a SIEM follows holds the same chain, verified on its own.
    let copied = audit_file_lines(&audit_file, 4);
    assert_eq!(copied.len(), 4);
    yeet_proto::audit::verify_chain(&copied).unwrap();
    assert_eq!(copied[2].seq, events[2]["seq"].as_i64().unwrap());
    // Rotated away (as logrotate does): a new file continues after the last event.
    std::fs::rename(&audit_file, siem.path().join("audit.jsonl.1")).unwrap();
    server.yeet(&["user", "set-role", "bob", "viewer"]);
    let continued = audit_file_lines(&audit_file, 1);
    assert_eq!(continued.len(), 1, "{continued:#?}");
    assert_eq!(continued[0].prev_hash, copied[3].hash);
    let events: Vec<Value> = server.yeet_json(&["audit"]);

    // Intact: both verifiers say so, and the CLI pins the newest event.
    let intact = server.yeet(&["audit", "verify"]);
    assert!(intact.contains("intact: 5 events"), "{intact}");
    assert!(verify_offline(&server).status.success());

    let seq = role["seq"].as_i64().unwrap();
    tamper(
        &server,
        &format!(
            "UPDATE audit_events SET details = '{{\"role\":\"admin\",\"user\":\"bob\"}}' WHERE id = {seq}"
        ),
    );
    for out in [
        run(server.yeet_cmd().args(["audit", "verify"])),
        verify_offline(&server),
    ] {
        assert!(!out.status.success());
        assert!(
            says(&out).contains(&format!("event {seq} was altered")),
            "{}",
            says(&out)
        );
    }
    tamper(
        &server,
        &format!(
            "UPDATE audit_events SET details = '{}' WHERE id = {seq}",
            role["details"]
        ),
    );
    assert!(verify_offline(&server).status.success());

    // The newest event deleted: the chain that is left is consistent, which only the
    // pinned head shows.
    let newest = events[4]["seq"].as_i64().unwrap();
    tamper(
        &server,
        &format!("DELETE FROM audit_events WHERE id = {newest}"),
    );
    assert!(verify_offline(&server).status.success());
    let out = run(server.yeet_cmd().args(["audit", "verify"]));
    assert!(
        !out.status.success()
            && says(&out).contains(&format!("event {newest}, verified earlier, is gone")),
        "{}",
        says(&out)
    );
}
