//! Staged rollouts on the real-Nix fleet: real agents on namespace hosts fetch, switch,
//! confirm or roll back real systems, and the server's rollout driver opens waves from
//! what they report. Driven entirely through the `yeet` CLI, as an operator would.

#![allow(clippy::unwrap_used)]

mod common;

use common::{CONVERGE, converged};
use fleet_sim::sim::{Fleet, Variant, wait_until};
use serde_json::Value;
use std::time::Duration;

/// The names of the hosts of wave `wave` (0-based) in `yeet rollout status --json`.
fn wave_hosts(rollout: &Value, wave: usize) -> Vec<String> {
    rollout["waves"][wave]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Four waves over 20 hosts (the two canaries, 10%, 50%, the rest), and one canary's new
/// system fails its switch: the rollout halts after wave 1, the other canary (which had
/// confirmed) is rolled back to v1 by the server, and no host of waves 2-4 is ever given
/// the release, watched for several driver ticks past the halt.
#[test]
fn a_failing_canary_halts_a_four_wave_rollout_and_its_wave_rolls_back() {
    let names: Vec<String> = (1..=2)
        .map(|i| format!("canary-{i}"))
        .chain((1..=18).map(|i| format!("web-{i:02}")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = Fleet::new(&names, 15);
    let v1 = fleet.build("system-v1", Variant::Good, "6.1");
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, v1.as_str())).collect();
    fleet.publish(&pairs, "v1 everywhere");
    wait_until(CONVERGE, "every host on v1", || converged(&fleet, &v1));

    for canary in ["canary-1", "canary-2"] {
        fleet.server.yeet(&["host", "tag", canary, "+canary"]);
    }
    let set = fleet.server.yeet(&[
        "rollout",
        "policy",
        "set",
        "prod",
        "--wave",
        "tag:canary",
        "--wave",
        "10%",
        "--wave",
        "50%",
        "--wave",
        "100%",
        "--max-failures",
        "0",
        "--on-failure",
        "rollback",
    ]);
    assert!(set.contains("tag:canary → 10% → 50% → 100%"), "{set}");
    // canary-1's new system fails its switch; everyone else's is good.
    let bad = fleet.build("system-v2-bad", Variant::Fail, "6.1");
    let good = fleet.build("system-v2", Variant::Good, "6.1");
    let v2: Vec<(&str, &str)> = names
        .iter()
        .map(|n| {
            (
                *n,
                if *n == "canary-1" {
                    bad.as_str()
                } else {
                    good.as_str()
                },
            )
        })
        .collect();
    let key = fleet.cache.secret_key.display().to_string();
    fleet.publish_with(&v2, "v2", &["--signing-key", &key, "--rollout", "prod"]);

    let status = |id: Option<&str>| -> Value {
        let mut args = vec!["rollout", "status"];
        args.extend(id);
        fleet.server.yeet_json(&args)
    };
    let first = status(None);
    let id = first["release"].as_i64().unwrap().to_string();
    let later: Vec<String> = (1..4).flat_map(|w| wave_hosts(&first, w)).collect();
    assert_eq!(wave_hosts(&first, 0), ["canary-1", "canary-2"]);
    assert_eq!(later.len(), 18, "{first}");
    wait_until(CONVERGE, "the rollout to halt", || {
        status(Some(&id))["state"] == "halted"
    });
    let halted = status(Some(&id));
    let reason = halted["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 failure(s) in wave 1 (max 0)"),
        "{reason}"
    );
    // The listing and a watch agree; a watch of a stopped rollout prints it and ends.
    let listed: Value = fleet.server.yeet_json(&["rollouts"]);
    assert_eq!(listed[0]["release"].to_string(), id, "{listed}");
    assert_eq!(listed[0]["state"], "halted", "{listed}");
    let watched = fleet_sim::run(
        fleet
            .server
            .yeet_cmd()
            .args(["rollout", "status", &id, "--watch"]),
    );
    let text = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.status.success() && text.contains("halted"),
        "{text}"
    );
    // CI following the release (`yeet wait`, as `publish --wait`) learns that it will not
    // land, and why, instead of waiting out its timeout for waves that never open.
    let started = std::time::Instant::now();
    let out =
        fleet_sim::run(
            fleet
                .server
                .yeet_cmd()
                .args(["wait", &id, "--timeout", "5m", "--json"]),
        );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcome = |host: &str| {
        report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .map(|h| (h["outcome"].clone(), h["reason"].clone()))
            .unwrap()
    };
    // The canaries: superseded by the rollback release, canary-1 with its switch's error.
    let (canary1, why) = outcome("canary-1");
    assert_eq!(canary1, "superseded", "{report}");
    assert!(why.as_str().unwrap().contains("switch failed"), "{report}");
    let (not_reached, why) = outcome(&later[0]);
    assert_eq!(not_reached, "not-reached", "{report}");
    assert!(why.as_str().unwrap().contains("halted"), "{report}");
    // The canaries end on v1: canary-1 rolled itself back, canary-2 by the server's
    // rollback release.
    wait_until(CONVERGE, "the canaries back on v1, standing by", || {
        let s = fleet.status();
        ["canary-1", "canary-2"].iter().all(|c| {
            s[*c]["current_system"] == v1.as_str()
                && s[*c]["desired_system"] == v1.as_str()
                && s[*c]["state"] == "standby"
        })
    });
    let canary2 = fleet.history("canary-2");
    assert_eq!(
        (
            canary2[0]["store_path"].as_str(),
            canary2[0]["result"].as_str()
        ),
        (Some(v1.as_str()), Some("confirmed")),
        "{canary2:?}"
    );
    assert_eq!(canary2[1]["store_path"], good.as_str());
    let canary1 = fleet.history("canary-1");
    assert_eq!(
        (
            canary1[0]["store_path"].as_str(),
            canary1[0]["result"].as_str()
        ),
        (Some(bad.as_str()), Some("rolled-back")),
        "{canary1:?}"
    );
    // Past the halt by several driver ticks: no later wave opened, and no host of waves
    // 2-4 ever tried v2.
    std::thread::sleep(Duration::from_secs(4));
    let opened: Value = fleet
        .server
        .yeet_json(&["audit", "--action", "rollout.wave-opened"]);
    assert_eq!(opened.as_array().unwrap().len(), 1, "{opened}");
    let s = fleet.status();
    for h in &later {
        assert_eq!(s[h]["desired_system"], v1.as_str(), "{h}");
        assert_eq!(s[h]["current_system"], v1.as_str(), "{h}");
        let tried_v2 = fleet
            .history(h)
            .iter()
            .any(|a| a["store_path"] == good.as_str());
        assert!(!tried_v2, "{h} was given v2 after the halt");
    }
}

/// Policies and windows declared in the server's config file (as the NixOS module writes
/// them) are set when the server starts, with an audit event each; a second server on the
/// same database and file (a replica, or the next start) finds them set and records
/// nothing more.
#[test]
fn policies_and_windows_declared_in_the_config_are_set_at_start_once() {
    let server = fleet_sim::Server::start(fleet_sim::ServerOptions {
        config: r#"
default_rollout_policy = "prod"
[rollout_policies.prod]
waves = ["tag:canary", "100%"]
bake_secs = 600
[maintenance_windows.nights]
tags = ["prod"]
days = "mon-fri"
from = "02:00"
to = "04:00"
tz = "Europe/Zurich"
"#
        .into(),
        database: Some(fleet_sim::fresh_postgres_database()),
        ..Default::default()
    });
    let policies: Value = server.yeet_json(&["rollout", "policy", "list"]);
    assert_eq!(
        (&policies[0]["name"], &policies[0]["updated_by"]),
        (&Value::from("prod"), &Value::from("config file")),
        "{policies}"
    );
    assert_eq!(policies[0]["policy"]["bake_secs"], 600);
    let windows: Value = server.yeet_json(&["window", "list"]);
    assert_eq!(windows[0]["window"]["tz"], "Europe/Zurich", "{windows}");
    let _replica = server.replica();
    for action in ["rollout.policy.set", "window.set"] {
        let events: Value = server.yeet_json(&["audit", "--action", action]);
        assert_eq!(events.as_array().unwrap().len(), 1, "{action}: {events}");
    }
}

/// The server process killed with SIGKILL in the middle of a bake, and started again on
/// its state directory and database: the rollout goes on with the bake's time left. From
/// the audit log's events: wave 2 opens once, no sooner than the bake's 6 s after it
/// began, and well before a bake restarted by the new process would have ended.
#[test]
fn a_server_killed_mid_bake_resumes_the_bake_after_a_restart() {
    use fleet_sim::{Server, ServerOptions};
    use yeet_proto::api::{
        ActivationReport, ActivationResult, CheckinRequest, CreateReleaseRequest,
    };
    const SYSTEM: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-baked";
    let mut server = Server::start(ServerOptions::default());
    let seeds = [
        ("canary-1", server.approved_host_seed("canary-1")),
        ("web-1", server.approved_host_seed("web-1")),
    ];
    let client = |server: &Server, name: &str| {
        let seed = seeds.iter().find(|(n, _)| *n == name).unwrap().1;
        server.host_client(&seed, Duration::from_secs(30))
    };
    let online = |server: &Server| {
        for (name, _) in &seeds {
            client(server, name)
                .checkin(&CheckinRequest::default())
                .unwrap();
        }
    };
    server.yeet(&["host", "tag", "canary-1", "+canary"]);
    server.yeet(&[
        "rollout",
        "policy",
        "set",
        "baked",
        "--wave",
        "tag:canary",
        "--wave",
        "100%",
        "--bake",
        "6s",
    ]);
    online(&server);
    let release = server
        .client()
        .create_release(&CreateReleaseRequest {
            hosts: [
                ("canary-1".to_string(), SYSTEM.to_string()),
                ("web-1".to_string(), SYSTEM.to_string()),
            ]
            .into(),
            rollout: Some("baked".into()),
            ..Default::default()
        })
        .unwrap();
    let id = release.id.to_string();
    let status = |server: &Server| -> Value { server.yeet_json(&["rollout", "status", &id]) };
    wait_until(CONVERGE, "wave 1 to open", || status(&server)["wave"] == 0);
    let now = yeet_proto::clock::unix_now();
    client(&server, "canary-1")
        .report(&ActivationReport {
            store_path: SYSTEM.into(),
            release_id: Some(release.id),
            result: ActivationResult::Confirmed,
            reason: "switched and confirmed".into(),
            started_at: now,
            finished_at: now,
            reboot_required: false,
            log_gzip_base64: String::new(),
        })
        .unwrap();
    let events = |server: &Server, action: &str| -> Vec<Value> {
        server.yeet_json(&["audit", "--action", action])
    };
    wait_until(CONVERGE, "the bake to start", || {
        !events(&server, "rollout.bake-started").is_empty()
    });
    let baking = events(&server, "rollout.bake-started")[0]["at_ms"]
        .as_i64()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.kill_and_restart();
    let restarted = yeet_proto::clock::unix_now_ms();
    online(&server);
    wait_until(CONVERGE, "wave 2 to open", || status(&server)["wave"] == 1);
    let opened: Vec<Value> = events(&server, "rollout.wave-opened");
    assert_eq!(opened.len(), 2, "{opened:?}");
    let second = opened
        .iter()
        .map(|e| e["at_ms"].as_i64().unwrap())
        .max()
        .unwrap();
    let waited = second - baking;
    eprintln!(
        "wave 2 opened {waited} ms after the bake began (6000 ms bake; the server was killed and restarted {} ms in)",
        restarted - baking
    );
    assert!(waited >= 6000, "wave 2 opened {waited} ms into a 6 s bake");
    // A bake begun again by the new process would end 6 s after it started.
    assert!(
        second < restarted + 6000,
        "wave 2 opened {} ms after the restart: the bake started over",
        second - restarted
    );
    let web = &server.yeet_json::<Value>(&["host", "show", "web-1"]);
    assert_eq!(web["desired_system"], SYSTEM, "{web}");
}
