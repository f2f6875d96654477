//! The core scenarios on hosts that boot a real systemd (systemd-nspawn): the agent runs as
//! `yeet-agent.service` from the unit its system carries, rendered from the NixOS module's
//! own service definition, under a service manager whose PATH holds only systemd's tools
//! (as on NixOS); switches restart it with `systemctl restart` when its unit changed, and
//! activations run in transient units started with `systemd-run`. The assertions are the
//! namespace hosts' (tests/common).

#![allow(clippy::unwrap_used)]

mod common;

use common::SYSTEMD;
use fleet_sim::sim::{Fleet, HostKind, SYSTEMD_HOST_NEXT_AGENT_PACKAGE};

#[test]
fn switch_and_confirm() {
    common::switch_and_confirm(SYSTEMD, &["web-1", "web-2"]);
}

#[test]
fn a_failing_switch_rolls_back() {
    common::a_failing_switch_rolls_back_and_its_log_is_kept(SYSTEMD);
}

#[test]
fn a_config_only_change_that_cuts_the_agent_off_rolls_back() {
    common::a_config_only_change_that_cuts_the_agent_off_rolls_back(SYSTEMD);
}

#[test]
fn an_agent_that_cannot_start_rolls_back_and_comes_back() {
    common::an_agent_that_cannot_start_rolls_back_and_comes_back(SYSTEMD);
}

#[test]
fn a_failing_health_check_rolls_back() {
    common::a_failing_health_check_rolls_back_at_once(SYSTEMD);
}

#[test]
fn killing_the_agent_mid_activation_converges() {
    common::killing_the_agent_mid_activation_converges(SYSTEMD);
}

#[test]
fn a_kernel_change_takes_a_reboot() {
    common::a_kernel_change_takes_a_reboot(SYSTEMD);
}

#[test]
fn boot_mode_applies_at_the_next_boot() {
    common::boot_mode_applies_at_the_next_boot(SYSTEMD);
}

#[test]
fn a_burst_of_releases_ends_on_the_last() {
    common::a_burst_of_releases_ends_on_the_last(SYSTEMD);
}

/// A new system brings a new yeet package: after the switch, systemd runs the new binary
/// (the unit's ExecStart changed), and that agent is the one that confirms.
#[test]
fn an_agent_upgraded_by_a_switch_runs_the_new_binary_and_confirms() {
    let fleet = Fleet::of(HostKind::Systemd, &["web-1"], 30);
    let upgraded =
        fleet.system_with_agent_package("system-new-agent", SYSTEMD_HOST_NEXT_AGENT_PACKAGE);
    fleet.publish(&[("web-1", &upgraded)], "a new agent");
    let a = fleet.wait_for_activation("web-1", 1, common::CONVERGE);
    assert_eq!(
        (a["result"].as_str(), a["store_path"].as_str()),
        (Some("confirmed"), Some(upgraded.as_str())),
        "{a}\n{}",
        fleet.hosts[0].agent_log()
    );
    let host = &fleet.hosts[0];
    let out = host.exec(&[
        "systemctl",
        "show",
        "--property=MainPID",
        "--value",
        "yeet-agent",
    ]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = host.exec(&["cat", &format!("/proc/{pid}/cmdline")]);
    let cmdline = String::from_utf8_lossy(&out.stdout).replace('\0', " ");
    assert!(
        cmdline.starts_with(&format!(
            "{SYSTEMD_HOST_NEXT_AGENT_PACKAGE}/bin/yeet-agent run"
        )),
        "the agent runs {cmdline:?}"
    );
    // The confirmation came after the restart: the new agent's first start precedes it.
    let log = host.agent_log();
    let restarted = log.rfind("yeet-agent starting").unwrap();
    let reported = log.rfind("activation reported").unwrap();
    assert!(restarted < reported, "{log}");
}

/// `--health failed-units=0` on hosts that boot real systemd: the canary's new system
/// switches and confirms, but leaves a failed unit, which its agent reports from
/// `systemctl`; the rollout halts during the canary wave's bake, and the other host never
/// gets the release. Without the health gate the wave would bake on for ten minutes.
#[test]
fn a_failed_unit_halts_a_rollout_during_its_bake() {
    use common::{CONVERGE, converged};
    use fleet_sim::sim::{Variant, wait_until};
    let fleet = Fleet::of(HostKind::Systemd, &["canary-1", "web-1"], 30);
    let v1 = fleet.build("system-v1", Variant::Good, "6.1");
    fleet.publish(&[("canary-1", &v1), ("web-1", &v1)], "v1");
    wait_until(CONVERGE, "both hosts on v1", || converged(&fleet, &v1));
    let failed_units = |host: usize| {
        let out =
            fleet.hosts[host].exec(&["systemctl", "show", "--property=NFailedUnits", "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        failed_units(0),
        "0",
        "the base system already has failed units"
    );
    fleet.server.yeet(&["host", "tag", "canary-1", "+canary"]);
    fleet.server.yeet(&[
        "rollout",
        "policy",
        "set",
        "healthy",
        "--wave",
        "tag:canary",
        "--wave",
        "100%",
        "--bake",
        "10m",
        "--health",
        "failed-units=0",
        "--max-failures",
        "0",
    ]);
    let broken = fleet.build("system-v2-broken-unit", Variant::FailedUnit, "6.1");
    let good = fleet.build("system-v2", Variant::Good, "6.1");
    let key = fleet.cache.secret_key.display().to_string();
    fleet.publish_with(
        &[("canary-1", &broken), ("web-1", &good)],
        "v2",
        &["--signing-key", &key, "--rollout", "healthy"],
    );
    let status = || -> serde_json::Value { fleet.server.yeet_json(&["rollout", "status"]) };
    wait_until(CONVERGE, "the rollout to halt", || {
        status()["state"] == "halted"
    });
    let halted = status();
    let canary = &halted["waves"][0]["hosts"][0];
    assert_eq!(canary["state"], "failed", "{halted}");
    assert!(
        canary["reason"]
            .as_str()
            .unwrap()
            .starts_with("unhealthy: "),
        "{halted}"
    );
    assert_ne!(failed_units(0), "0");
    // The canary's own activation confirmed: only the health gate saw the failure.
    let a = &fleet.history("canary-1")[0];
    assert_eq!(
        (a["store_path"].as_str(), a["result"].as_str()),
        (Some(broken.as_str()), Some("confirmed")),
        "{a}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let web = &fleet.status()["web-1"];
    assert_eq!(web["desired_system"], v1.as_str(), "{web}");
    assert!(
        fleet
            .history("web-1")
            .iter()
            .all(|a| a["store_path"] != good.as_str())
    );
}

/// A boot-mode release on a host whose policy is `--reboot in-window`, on hosts that boot
/// real systemd. Under the default policy the host waits, `reboot-required`, and stays up.
/// Once reboots are allowed, it still waits for its maintenance window (opening a few
/// seconds later); inside it, the agent reboots the machine by itself (`systemctl reboot`
/// ends the container, which the test boots again as firmware would), and after the boot
/// checks and reports that the new system came up, as an activation of the release.
#[test]
fn a_boot_mode_release_reboots_the_host_inside_its_window() {
    use common::{CONVERGE, converged};
    use fleet_sim::sim::{FleetOptions, Variant, wait_until};
    use std::time::Duration;
    let mut fleet = Fleet::with(
        &["db-1"],
        FleetOptions {
            kind: HostKind::Systemd,
            agent_config: "activation_mode = \"boot\"".into(),
            ..Default::default()
        },
    );
    fleet.server.yeet(&["host", "tag", "db-1", "+prod"]);
    let v1 = fleet.build("system-v1", Variant::Good, "6.1");
    fleet.publish(&[("db-1", &v1)], "v1 at the next boot");
    let a = fleet.wait_for_activation("db-1", 1, CONVERGE);
    assert_eq!(a["result"], "confirmed", "{a}");
    let release = a["release_id"].clone();
    wait_until(CONVERGE, "status reboot-required", || {
        fleet.status()["db-1"]["state"] == "reboot-required"
    });
    // The default policy: no reboot, however long it waits.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        fleet.host("db-1").is_up(),
        "rebooted under the default policy"
    );
    // A window that opens 15 s from now, then reboots allowed inside it.
    let opens = yeet_proto::clock::unix_now() + 15;
    let hms = |t: i64| {
        let s = t.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    };
    fleet.server.yeet(&[
        "window",
        "set",
        "nights",
        "--tag",
        "prod",
        "--days",
        "daily",
        "--from",
        &hms(opens),
        "--to",
        &hms(opens + 3600),
        "--tz",
        "UTC",
    ]);
    fleet
        .server
        .yeet(&["host", "policy", "db-1", "--reboot", "in-window"]);
    let shown: serde_json::Value = fleet.server.yeet_json(&["host", "show", "db-1"]);
    assert_eq!(shown["window_wait"]["window"], "nights", "{shown}");
    let went_down = fleet.follow_reboot("db-1", Duration::from_secs(120));
    eprintln!(
        "db-1 went down {} ms after its window opened",
        went_down - opens * 1000
    );
    assert!(
        went_down >= opens * 1000,
        "db-1 rebooted {} ms before its window opened",
        opens * 1000 - went_down
    );
    assert_eq!(fleet.find_host("db-1").booted_system(), Some(v1.clone()));
    let a = fleet.wait_for_activation("db-1", 2, CONVERGE);
    assert_eq!(
        (a["result"].as_str(), a["store_path"].as_str()),
        (Some("confirmed"), Some(v1.as_str())),
        "{a}"
    );
    assert_eq!(a["release_id"], release, "{a}");
    let reason = a["reason"].as_str().unwrap();
    assert!(
        reason.contains("rebooted (inside maintenance window `nights`)"),
        "{reason}"
    );
    wait_until(CONVERGE, "db-1 on v1 after the reboot", || {
        converged(&fleet, &v1) && fleet.status()["db-1"]["state"] == "standby"
    });
    // Nothing asks for another reboot: the machine stays up.
    std::thread::sleep(Duration::from_secs(5));
    assert!(fleet.host("db-1").is_up(), "rebooted again");
    assert_eq!(fleet.history("db-1").len(), 2);
}
