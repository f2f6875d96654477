//! Detach, local switches, force and attach, through `yeet-agent` on hosts that boot a real
//! systemd: the server's policy refuses, then permits, a detachment; a locally chosen,
//! trusted system is switched to and confirmed while a release published meanwhile waits;
//! an untrusted one is refused with nothing activated; a modifying call during an
//! activation is refused as busy; attaching brings the newest release. A forced switch
//! needs no server, holds while it is away, and yields to the desired system once it is
//! back. And `check-now` starts an update at once on a host that would otherwise wait an
//! hour.

#![allow(clippy::unwrap_used)]

mod common;

use fleet_sim::sim::{Fleet, FleetOptions, HostKind, SimHost, Variant, wait_until};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const AGENT: &str = "/opt/yeet-agent/bin/yeet-agent";
const CONVERGE: Duration = Duration::from_secs(120);

/// `yeet-agent ARGS` as root on the host.
fn agent(host: &SimHost, args: &[&str]) -> Output {
    let mut cmd = vec![AGENT];
    cmd.extend_from_slice(args);
    host.exec(&cmd)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn host_show(fleet: &Fleet, name: &str) -> Value {
    fleet.server.yeet_json(&["host", "show", name])
}

#[test]
fn detach_switch_locally_then_attach_to_the_newest_release() {
    let fleet = Fleet::of(HostKind::Systemd, &["web-1"], 30);
    let local = fleet.system("local-1", Variant::Good, "6.1");
    let slow = fleet.system("slow-1", Variant::Slow, "6.1");
    // An unsigned closure, as a local build would be.
    let unsigned = fleet.build("unsigned-1", Variant::Good, "6.1");
    fleet.cache.push_unsigned(&unsigned);
    let base = fleet.base.clone();
    let host = fleet.find_host("web-1");
    host.realise(&fleet.cache, &local, true);
    host.realise(&fleet.cache, &slow, true);
    host.realise(&fleet.cache, &unsigned, false);

    // Refused by the default policy, with what an admin would run.
    let out = agent(host, &["detach", "--reason", "try the new kernel"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("yeet host policy web-1 --allow-detach"),
        "{}",
        text(&out)
    );
    // Switching needs a detachment first.
    let out = agent(host, &["switch", &local]);
    assert!(text(&out).contains("not detached"), "{}", text(&out));

    fleet
        .server
        .yeet(&["host", "policy", "web-1", "--allow-detach"]);
    let host = fleet.find_host("web-1");
    let out = agent(host, &["detach", "--reason", "try the new kernel"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = host_show(&fleet, "web-1");
    assert_eq!(shown["state"], "detached", "{shown}");
    assert_eq!(shown["detached"]["user"], "root (uid 0)", "{shown}");
    assert_eq!(shown["detached"]["reason"], "try the new kernel", "{shown}");

    // A path this host's store lacks is refused, saying how to copy it here.
    let host = fleet.find_host("web-1");
    let missing = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-not-copied-here";
    let out = agent(host, &["switch", missing]);
    assert!(
        !out.status.success()
            && text(&out).contains("is not in this host's store")
            && text(&out).contains("nix copy --to"),
        "{}",
        text(&out)
    );
    assert_eq!(host.current_system().as_deref(), Some(base.as_str()));

    // An untrusted closure is refused; nothing is activated.
    let out = agent(host, &["switch", &unsigned]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("untrusted"), "{}", text(&out));
    assert_eq!(host.current_system().as_deref(), Some(base.as_str()));

    // A trusted local system: switched to, with its progress shown, and confirmed.
    let out = agent(host, &["switch", &local]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("confirmed") && text(&out).contains("switch-to-configuration"),
        "{}",
        text(&out)
    );
    assert_eq!(host.current_system().as_deref(), Some(local.as_str()));

    // A release published meanwhile is recorded, and known to the host, but not applied.
    let release = fleet.system("release-2", Variant::Good, "6.1");
    fleet.publish(&[("web-1", &release)], "while web-1 is detached");
    let host = fleet.find_host("web-1");
    assert!(agent(host, &["check-now"]).status.success());
    wait_until(CONVERGE, "the host to learn its desired system", || {
        host.status()
            .is_some_and(|s| s.desired_system.as_deref() == Some(release.as_str()))
    });
    let status = host.status().unwrap();
    assert_eq!(status.attachment, "detached");
    assert_eq!(host.current_system().as_deref(), Some(local.as_str()));

    // A modifying call while an activation runs is refused as busy.
    let leader = host.leader().unwrap().to_string();
    let slow_switch = Command::new("nsenter")
        .args(["-t", &leader, "-a", "--", AGENT, "switch", &slow])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(CONVERGE, "the slow switch to run", || {
        host.status()
            .and_then(|s| s.activation)
            .is_some_and(|a| a.phase == "switching")
    });
    for args in [
        vec!["attach"],
        vec!["switch", local.as_str()],
        vec!["detach"],
    ] {
        let out = agent(host, &args);
        assert!(
            !out.status.success() && text(&out).contains("busy"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = slow_switch.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.current_system().as_deref(), Some(slow.as_str()));

    // Attaching brings the newest release, not the system it ran when it detached.
    let out = agent(host, &["attach"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(CONVERGE, "web-1 to run the release", || {
        fleet.find_host("web-1").current_system().as_deref() == Some(release.as_str())
    });
    let shown = host_show(&fleet, "web-1");
    assert_eq!(shown["detached"], Value::Null, "{shown}");
    // The server kept the local activations in the host's history.
    let history = fleet.history("web-1");
    for path in [&local, &slow] {
        assert!(
            history
                .iter()
                .any(|a| a["store_path"] == path.as_str() && a["result"] == "confirmed"),
            "{path} is not in {history:?}"
        );
    }
}

#[test]
fn a_forced_switch_holds_while_the_server_is_away_then_yields() {
    let fleet = Fleet::of(HostKind::Systemd, &["web-1"], 30);
    // A secret the fleet's system uses: the host keeps a copy encrypted to its own key.
    fleet.add_secret("api-token", "held-token", "web-1");
    const WITH_TOKEN: &str = "{ api-token = { }; }";
    let desired = fleet.system_with_secrets("desired-1", WITH_TOKEN);
    fleet.publish(&[("web-1", &desired)], "the fleet's system");
    wait_until(CONVERGE, "web-1 to run the release", || {
        fleet.find_host("web-1").current_system().as_deref() == Some(desired.as_str())
    });
    // A new agent package in it, so that the switch restarts the agent (as most do): the
    // restarted agent must confirm it without the server. It needs the secret too.
    let local = fleet.system_from("forced-1", |spec| {
        spec.agent_package = fleet_sim::sim::SYSTEMD_HOST_NEXT_AGENT_PACKAGE;
        spec.secrets = WITH_TOKEN;
    });
    // And one that needs a secret this host was never granted.
    let unheld =
        fleet.system_with_secrets("forced-unheld", "{ api-token = { }; other-token = { }; }");
    for path in [&local, &unheld] {
        fleet.find_host("web-1").realise(&fleet.cache, path, true);
    }

    // The server stops answering (as behind a dead link): the switch needs none of it.
    let server_pid = fleet.server.proc.child.id().to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &server_pid])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    let host = fleet.find_host("web-1");
    // The secret it does not hold fails the switch before anything changes, naming it, and
    // the host does not claim to be forced.
    let out = agent(host, &["switch", "--force", &unheld]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("other-token") && text(&out).contains("holds no copy"),
        "{}",
        text(&out)
    );
    assert_eq!(host.current_system().as_deref(), Some(desired.as_str()));
    let status = host.status().unwrap();
    assert_eq!(status.attachment, "attached", "{status:?}");
    let out = agent(host, &["switch", "--force", &local]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.current_system().as_deref(), Some(local.as_str()));
    let status = host.status().unwrap();
    assert_eq!(status.attachment, "forced", "{status:?}");
    // It holds past its confirm window (30 s): the restarted agent and the health check
    // confirm it, not the server (it was rolled back at the deadline before).
    std::thread::sleep(Duration::from_secs(45));
    assert_eq!(
        host.current_system().as_deref(),
        Some(local.as_str()),
        "the forced switch did not hold while the server was away:\n{}",
        host.agent_log()
    );
    let status = host.status().unwrap();
    assert_eq!(status.attachment, "forced", "{status:?}");
    // Its secret came from the host's own copy, with no server.
    let read = host.exec(&["/bin/cat", "/run/yeet/secrets/api-token"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "held-token");

    // Back: the forced switch is reported, and the host returns to its desired system.
    signal("-CONT");
    wait_until(
        Duration::from_secs(240),
        "web-1 to return to the release",
        || fleet.find_host("web-1").current_system().as_deref() == Some(desired.as_str()),
    );
    let history = fleet.history("web-1");
    assert!(
        history
            .iter()
            .any(|a| a["store_path"] == local.as_str() && a["result"] == "confirmed"),
        "the forced switch is not in {history:?}"
    );
}

#[test]
fn check_now_starts_an_update_at_once() {
    // An hour between check-ins, and no long-poll.
    let fleet = Fleet::with(
        &["web-1"],
        FleetOptions {
            agent_config: "long_poll_secs = 0\nmax_checkin_interval_secs = 3600\n".into(),
            server_config: "checkin_interval_secs = 3600\n".into(),
            ..Default::default()
        },
    );
    // The host has checked in once since its approval; now it waits its hour.
    wait_until(CONVERGE, "web-1's first check-in", || {
        fleet.status()["web-1"]["last_seen"].is_i64()
    });
    let next = fleet.system("next-1", Variant::Good, "6.1");
    fleet.publish(&[("web-1", &next)], "waits an hour without check-now");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fleet.find_host("web-1").current_system(),
        Some(fleet.base.clone()),
        "the host checked in although it should wait an hour"
    );
    let socket = fleet.find_host("web-1").agent_socket().unwrap();
    let asked = Instant::now();
    let asked_ms = yeet_proto::clock::unix_now_ms();
    {
        use yeet_agent::local_client::{AgentProxy, answer, with_agent};
        with_agent(&socket, async |c| answer(c.check_now().await)).unwrap();
    }
    wait_until(CONVERGE, "web-1 to run the next system", || {
        fleet.find_host("web-1").current_system().as_deref() == Some(next.as_str())
    });
    let started_ms = fleet
        .find_host("web-1")
        .logged_at_ms("activating a new system", &next)
        .unwrap();
    eprintln!(
        "check-now → activation start: {} ms; → switched: {:?}",
        started_ms.saturating_sub(asked_ms),
        asked.elapsed()
    );
}
