//! `yeet publish --wait` and `yeet wait` on a real-Nix fleet, as CI gates on them: exit 0
//! only once every changed host has switched and confirmed; 3, naming the host, when one
//! rolls back; 4, naming it, when one is off past the timeout. And the fleet's view as it
//! changes: `yeet status --watch` draws a change without being asked again, and a host
//! that vanished mid-poll is shown offline within a poll interval.

#![allow(clippy::unwrap_used)]

mod common;

use fleet_sim::sim::{Fleet, FleetOptions, Variant};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::Duration;

/// Runs `yeet publish --wait --json` of `pairs` with `extra` arguments; returns the exit
/// code, the parsed report and stderr.
fn publish_and_wait(fleet: &Fleet, pairs: &[(&str, &str)], extra: &[&str]) -> (i32, Value, String) {
    let key = fleet.cache.secret_key.display().to_string();
    let mut cmd = fleet.server.yeet_cmd();
    cmd.args(["publish", "--wait", "--json", "--signing-key", &key]);
    for (host, path) in pairs {
        cmd.arg("--path").arg(format!("{host}={path}"));
    }
    cmd.args(extra);
    let out = fleet_sim::run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// host → outcome, from a wait report.
fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn publish_wait_gates_on_every_host_confirming_and_names_the_ones_that_did_not() {
    let mut fleet = Fleet::with(
        &["web-1", "web-2", "db-1"],
        FleetOptions {
            confirm_timeout: 20,
            ..Default::default()
        },
    );
    // All three confirm: exit 0, and by then each host really runs the system and has
    // reported the confirmed activation (not merely been told to switch).
    let v1 = fleet.system_with_agent_config("system-v1", Variant::Good, "# v1");
    let pairs: Vec<(&str, &str)> = ["web-1", "web-2", "db-1"]
        .iter()
        .map(|h| (*h, v1.as_str()))
        .collect();
    let (code, report, stderr) = publish_and_wait(&fleet, &pairs, &["--timeout", "3m"]);
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert_eq!(report["wait"]["result"], "landed", "{report}");
    for (host, outcome) in outcomes(&report["wait"]) {
        assert_eq!(outcome, "confirmed", "{host}: {report}");
        assert_eq!(
            fleet.host(&host).current_system().as_deref(),
            Some(v1.as_str())
        );
        let newest = &fleet.history(&host)[0];
        assert_eq!(
            (newest["result"].as_str(), newest["store_path"].as_str()),
            (Some("confirmed"), Some(v1.as_str())),
            "{host}: {newest}"
        );
    }

    // web-1 gets a system whose health check fails, web-2 a good one: exit 3, web-1 named
    // with its rollback and the reason, web-2 confirmed all the same.
    let sick = fleet.system("system-sick", Variant::Unhealthy, "6.1");
    let v2 = fleet.system_with_agent_config("system-v2", Variant::Good, "# v2");
    let (code, report, stderr) = publish_and_wait(
        &fleet,
        &[("web-1", &sick), ("web-2", &v2)],
        &["--timeout", "3m"],
    );
    assert_eq!(code, 3, "{report}\n{stderr}");
    assert_eq!(
        outcomes(&report["wait"]),
        [
            ("web-1".to_owned(), "rolled-back".to_owned()),
            ("web-2".to_owned(), "confirmed".to_owned())
        ],
        "{report}"
    );
    assert!(
        stderr.contains("web-1 (rolled-back)") && stderr.contains("yeet log"),
        "{stderr}"
    );
    assert!(
        report["wait"]["hosts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("health check"),
        "{report}"
    );
    // `yeet wait` of the same release later says the same at once.
    let release = report["release"]["id"].as_i64().unwrap().to_string();
    let out = fleet_sim::run(
        fleet
            .server
            .yeet_cmd()
            .args(["wait", &release, "--timeout", "1m"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("web-1 (rolled-back)"), "{stderr}");

    // db-1 is off: a release for it cannot land. Exit 4 once the timeout ran out, naming db-1.
    fleet.host("db-1").power_off();
    let v3 = fleet.system_with_agent_config("system-v3", Variant::Good, "# v3");
    let started = std::time::Instant::now();
    let (code, report, stderr) = publish_and_wait(&fleet, &[("db-1", &v3)], &["--timeout", "15s"]);
    assert_eq!(code, 4, "{report}\n{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "gave up early"
    );
    assert_eq!(report["wait"]["result"], "timed-out", "{report}");
    let outcome = &outcomes(&report["wait"])[0];
    assert!(
        outcome.0 == "db-1" && ["waiting", "offline"].contains(&outcome.1.as_str()),
        "{report}"
    );
    assert!(
        stderr.contains("db-1 (") && stderr.contains("15s"),
        "{stderr}"
    );
}

/// `yeet status --watch --json` prints the fleet, then a line only when something changed:
/// the switch shows up without a new command, and a quiet fleet prints nothing.
#[test]
fn status_watch_draws_changes_as_they_happen() {
    let fleet = Fleet::new(&["web-1"], 30);
    let mut watch = fleet
        .server
        .yeet_cmd()
        .args(["status", "--watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<Vec<Value>>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let hosts: Vec<Value> = serde_json::from_str(&line).unwrap();
            if lines_tx.send(hosts).is_err() {
                break;
            }
        }
    });
    // The host's first check-in may come after the first drawing; it is drawn when it does.
    loop {
        let hosts = lines.recv_timeout(Duration::from_secs(60)).unwrap();
        if hosts[0]["current_system"] == fleet.base.as_str() && hosts[0]["state"] == "standby" {
            break;
        }
    }
    // Quiet: more than one of the server's 25 s holds pass without a line.
    assert!(
        lines.recv_timeout(Duration::from_secs(30)).is_err(),
        "a line without a change"
    );
    let v1 = fleet.system_with_agent_config("system-v1", Variant::Good, "# v1");
    fleet.publish(&[("web-1", &v1)], "v1");
    let mut drawings = 0;
    loop {
        let hosts = lines
            .recv_timeout(common::CONVERGE)
            .expect("the switch was never drawn");
        drawings += 1;
        if hosts[0]["current_system"] == v1.as_str() && hosts[0]["state"] == "standby" {
            break;
        }
    }
    // Each drawing is a change (desired, updating, switched, confirmed), not a poll.
    assert!(drawings <= 8, "{drawings} drawings for one switch");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A host whose held check-in's connection closes (the machine lost power) is shown
/// offline a poll interval later, not after the 10-minute threshold; an agent that merely
/// restarted checks in again at once and is never shown offline.
#[test]
fn a_host_gone_mid_poll_is_offline_within_a_poll_interval() {
    let mut fleet = Fleet::with(
        &["web-1", "web-2"],
        FleetOptions {
            server_config: "checkin_interval_secs = 5\n".into(),
            ..Default::default()
        },
    );
    let state =
        |fleet: &Fleet, host: &str| fleet.status()[host]["state"].as_str().unwrap().to_owned();
    fleet_sim::sim::wait_until(Duration::from_secs(60), "both hosts in standby", || {
        state(&fleet, "web-1") == "standby" && state(&fleet, "web-2") == "standby"
    });
    // What the hosts report about themselves reaches `yeet host show`: this machine's
    // kernel and boot time (namespace hosts share them), and an OS version.
    let shown: Value = fleet.server.yeet_json(&["host", "show", "web-1"]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let btime: i64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(shown["facts"]["kernel"], kernel.trim(), "{shown}");
    assert_eq!(shown["facts"]["booted_at"], btime, "{shown}");
    assert!(
        !shown["facts"]["os_version"].as_str().unwrap().is_empty(),
        "{shown}"
    );
    let table = fleet.server.yeet(&["host", "show", "web-1"]);
    assert!(
        table.contains(kernel.trim()) && table.contains("(up "),
        "{table}"
    );
    // web-2's agent restarts (killed; its supervisor starts it again): watched for four
    // poll intervals, it is never offline.
    assert!(fleet.host("web-2").kill("yeet-agent run") > 0);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        assert_eq!(state(&fleet, "web-2"), "standby");
        std::thread::sleep(Duration::from_millis(500));
    }
    // web-1 loses power mid-poll: offline well before the 600 s threshold.
    fleet.host("web-1").power_off();
    fleet_sim::sim::wait_until(Duration::from_secs(60), "web-1 shown offline", || {
        state(&fleet, "web-1") == "offline"
    });
    assert_eq!(state(&fleet, "web-2"), "standby");
    // Back on: online again at its first check-in.
    fleet.boot("web-1");
    fleet_sim::sim::wait_until(Duration::from_secs(60), "web-1 back", || {
        state(&fleet, "web-1") == "standby"
    });
}

/// `yeet status` opens with one line of counts by state (and what waits for approval), and
/// `yeet status --problems` lists only the hosts that need people, each with why: a failed
/// activation, a reboot it will not take by itself, a host approved but never seen. A host
/// in standby is not listed.
#[test]
fn status_summarises_the_fleet_and_lists_the_problems_with_why() {
    use fleet_sim::{Server, ServerOptions};
    use yeet_proto::api::{
        ActivationReport, ActivationResult, AgentState, CheckinRequest, CreateReleaseRequest,
        RegisterRequest,
    };
    const SYSTEM: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-problems";
    let server = Server::start(ServerOptions::default());
    let ok = server.approved_host("ok-1");
    let reboot = server.approved_host("reboot-1");
    let failed = server.approved_host("failed-1");
    server.approved_host("new-1");
    let checkin = |client: &yeet_client::Client, state: AgentState| {
        client
            .checkin(&CheckinRequest {
                current_system: Some(SYSTEM.into()),
                state,
                ..Default::default()
            })
            .unwrap();
    };
    checkin(&ok, AgentState::Standby);
    checkin(&reboot, AgentState::RebootRequired);
    checkin(&failed, AgentState::Standby);
    let next = SYSTEM.replace("problems", "next");
    let release = server
        .client()
        .create_release(&CreateReleaseRequest {
            hosts: [("failed-1".to_string(), next.clone())].into(),
            ..Default::default()
        })
        .unwrap();
    failed
        .report(&ActivationReport {
            store_path: next.clone(),
            release_id: Some(release.id),
            result: ActivationResult::Failed,
            reason: "cannot fetch".into(),
            started_at: yeet_proto::clock::unix_now(),
            finished_at: yeet_proto::clock::unix_now(),
            reboot_required: false,
            log_gzip_base64: String::new(),
        })
        .unwrap();
    // A machine waiting for approval.
    let waiting = yeet_proto::Identity::from_seed(&[7u8; 32]);
    let public_key = waiting.public().to_openssh();
    yeet_client::Client::new(&server.url, waiting, None, Duration::from_secs(30))
        .unwrap()
        .register(&RegisterRequest {
            public_key,
            hostname_hint: "later-1".into(),
            facts: Default::default(),
            wait_secs: 0,
        })
        .unwrap();

    let table = server.yeet(&["status"]);
    let first = table.lines().next().unwrap();
    assert_eq!(
        first,
        "4 hosts: 1 failed, 1 new, 1 reboot-required, 1 standby, 1 pending approval; 3 need attention: `yeet status --problems`",
        "{table}"
    );
    let problems: Vec<Value> = server.yeet_json(&["status", "--problems"]);
    let listed: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p["host"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("failed-1", "failed"),
            ("new-1", "new"),
            ("reboot-1", "reboot-required")
        ],
        "{problems:?}"
    );
    let why = |host: &str| {
        problems.iter().find(|p| p["host"] == host).unwrap()["why"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        why("failed-1").contains("`yeet log failed-1`"),
        "{problems:?}"
    );
    assert!(why("reboot-1").contains("--reboot"), "{problems:?}");
    let text = server.yeet(&["status", "--problems"]);
    assert!(
        text.contains("failed-1") && !text.contains("ok-1"),
        "{text}"
    );
    // Once the host may reboot by itself, it is still listed, with when.
    server.yeet(&["host", "policy", "reboot-1", "--reboot", "in-window"]);
    let problems: Vec<Value> = server.yeet_json(&["status", "--problems"]);
    let reboot_why = problems.iter().find(|p| p["host"] == "reboot-1").unwrap()["why"].clone();
    assert_eq!(
        reboot_why, "needs a reboot; it reboots by itself now",
        "{problems:?}"
    );
}
