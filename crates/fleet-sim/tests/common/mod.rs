//! The core scenarios, written once and run on every kind of simulated host: namespace
//! hosts with NixOS-shaped and nix-darwin-shaped systems (tests/agent.rs), and hosts that
//! boot a real systemd (tests/systemd.rs). Each takes the hosts it runs on, so that the
//! assertions cannot differ between them.

#![allow(clippy::unwrap_used, dead_code)]

use fleet_sim::sim::{Fleet, FleetOptions, HostKind, Platform, Variant, wait_until};
use std::time::{Duration, Instant};

pub const CONVERGE: Duration = Duration::from_secs(120);

/// Every host runs `path`, the server agrees, and nothing is in progress.
pub fn converged(fleet: &Fleet, path: &str) -> bool {
    let status = fleet.status();
    fleet.hosts.iter().all(|h| {
        let s = &status[&h.name];
        h.current_system().as_deref() == Some(path)
            && s["current_system"] == path
            && s["desired_system"] == path
            && s["state"] == "standby"
    })
}

/// The hosts a scenario runs on.
#[derive(Clone, Copy, Debug)]
pub struct Hosts {
    pub kind: HostKind,
    pub platform: Platform,
}

pub const NAMESPACE: Hosts = Hosts {
    kind: HostKind::Namespace,
    platform: Platform::NixOS,
};
pub const SYSTEMD: Hosts = Hosts {
    kind: HostKind::Systemd,
    platform: Platform::NixOS,
};
/// nix-darwin-shaped systems on namespace hosts: no systemd, no switch script.
pub const DARWIN: Hosts = Hosts {
    kind: HostKind::Namespace,
    platform: Platform::Darwin,
};

fn fleet(hosts: Hosts, names: &[&str], confirm_timeout: u64) -> Fleet {
    Fleet::with(
        names,
        FleetOptions {
            kind: hosts.kind,
            platform: hosts.platform,
            confirm_timeout,
            ..Default::default()
        },
    )
}

/// True while the host's agent runs: its unit is active on a systemd host, its process
/// exists on a namespace host.
pub fn agent_running(fleet: &Fleet, host: &str) -> bool {
    let h = fleet.hosts.iter().find(|h| h.name == host).unwrap();
    match h.kind {
        HostKind::Systemd => {
            let out = h.exec(&["systemctl", "is-active", "yeet-agent.service"]);
            String::from_utf8_lossy(&out.stdout).trim() == "active"
        }
        HostKind::Namespace => !h.pids_matching("yeet-agent run").is_empty(),
    }
}

/// A new system whose agent config changed (as a new agent version or setting would):
/// the switch restarts the agent, and the restarted agent confirms it.
pub fn switch_and_confirm(hosts: Hosts, names: &[&str]) {
    let fleet = fleet(hosts, names, 30);
    for h in &fleet.hosts {
        assert_eq!(
            (h.current_system(), h.booted_system()),
            (Some(fleet.base.clone()), Some(fleet.base.clone())),
            "{}: not booted into the base system",
            h.name
        );
    }
    if hosts.kind == HostKind::Systemd {
        // The premise that makes these hosts NixOS-like: a unit that inherits the service
        // manager's environment finds no Nix, so an activation must be handed its PATH.
        let out = fleet.hosts[0].exec(&[
            "systemd-run",
            "--wait",
            "--pipe",
            "--quiet",
            "/bin/sh",
            "-c",
            "command -v nix-store",
        ]);
        assert!(
            !out.status.success(),
            "the service manager's PATH has Nix: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let v1 = fleet.system_with_agent_config("system-v1", Variant::Good, "# v1");
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, v1.as_str())).collect();
    fleet.publish(&pairs, "v1");
    for h in names {
        let a = fleet.wait_for_activation(h, 1, CONVERGE);
        assert_eq!(
            (a["result"].as_str(), a["store_path"].as_str()),
            (Some("confirmed"), Some(v1.as_str())),
            "{h}: {a}"
        );
    }
    wait_until(CONVERGE, "current == desired on every host", || {
        converged(&fleet, &v1)
    });
    let log: serde_json::Value = fleet.server.yeet_json(&["log", names[0]]);
    let text = log["log"].as_str().unwrap();
    assert!(
        text.contains(hosts.platform.switch_step()) && text.contains("confirmed"),
        "{text}"
    );
    if hosts.platform == Platform::Darwin {
        // As darwin-rebuild: activate-user where present, then activate.
        let user = text.find("activate-user: ").unwrap();
        let system = text.find("activate: ").unwrap();
        assert!(user < system, "{text}");
    }
    for h in &fleet.hosts {
        // The switch restarted every agent (systemd: its unit changed), and the activation
        // still confirmed.
        let starts = h.agent_log().matches("yeet-agent starting").count();
        assert!(
            starts >= 2,
            "{}: the switch did not restart the agent ({starts} starts)",
            h.name
        );
        assert!(
            agent_running(&fleet, &h.name),
            "{}: agent not running",
            h.name
        );
        if hosts.kind == HostKind::Systemd {
            // The activation ran in a transient unit of its own, not in the agent's.
            let activation = h.journal("yeet-activate-*");
            assert!(
                activation.contains("Started yeet-activate-")
                    && activation.contains("yeet-agent activate"),
                "{}: no activation ran in a transient unit:\n{activation}",
                h.name
            );
        }
    }
}

/// Publishes a good system, interrupts the activation with `interrupt` as soon as it has
/// begun, and checks that the host still converges with exactly one confirmed attempt.
pub fn interrupted_activation_converges(hosts: Hosts, interrupt: impl FnOnce(&mut Fleet)) {
    let mut fleet = fleet(hosts, &["web-1"], 30);
    let v1 = fleet.system_with_agent_config("system-v1", Variant::Good, "# v1");
    let state = fleet.hosts[0].root.join("var-lib-yeet/activation.json");
    fleet.publish(&[("web-1", &v1)], "v1");
    wait_until(CONVERGE, "the activation to begin", || state.exists());
    interrupt(&mut fleet);
    let a = fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(
        (a["result"].as_str(), a["store_path"].as_str()),
        (Some("confirmed"), Some(v1.as_str())),
        "{a}"
    );
    wait_until(CONVERGE, "web-1 on v1", || converged(&fleet, &v1));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fleet.history("web-1").len(),
        1,
        "the activation was reported more than once"
    );
}

pub fn killing_the_agent_mid_activation_converges(hosts: Hosts) {
    interrupted_activation_converges(hosts, |fleet| {
        // The switch itself restarts the agent; catch one that is running.
        let host = &fleet.hosts[0];
        wait_until(Duration::from_secs(30), "an agent to kill", || {
            host.kill("yeet-agent run") > 0
        });
    });
}

/// Publishes `system` to web-1 (the fleet's only host) and waits for the activation: it
/// must be rolled back for a reason that contains `why`, the host must be back on the base
/// system and show the rollback, its agent must run, and the system is not tried again.
/// Returns the activation.
fn assert_rolls_back(fleet: &Fleet, system: &str, why: &str) -> serde_json::Value {
    fleet.publish(&[("web-1", system)], "a system that must not stay");
    let a = fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(a["result"], "rolled-back", "{a}");
    assert!(a["reason"].as_str().unwrap().contains(why), "{a}");
    assert!(
        a["finished_at"].as_i64().unwrap() - a["started_at"].as_i64().unwrap()
            < fleet.options.confirm_timeout as i64 + 30,
        "{a}"
    );
    wait_until(
        CONVERGE,
        "the host to be back on its previous system",
        || fleet.hosts[0].current_system().as_deref() == Some(fleet.base.as_str()),
    );
    // The rollback restored the old config, and an agent that reaches the server.
    wait_until(CONVERGE, "status to show the rollback", || {
        fleet.status()["web-1"]["state"] == "rolled-back"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fleet.history("web-1").len(),
        1,
        "the system was tried again"
    );
    assert!(
        agent_running(fleet, "web-1"),
        "no agent after the rollback:\n{}",
        fleet.hosts[0].agent_log()
    );
    a
}

pub fn a_failing_switch_rolls_back_and_its_log_is_kept(hosts: Hosts) {
    let fleet = fleet(hosts, &["web-1"], 30);
    let broken = fleet.system("system-broken", Variant::Fail, "6.1");
    let why = format!("{} failed", hosts.platform.switch_step());
    assert_rolls_back(&fleet, &broken, &why);
    let log: serde_json::Value = fleet.server.yeet_json(&["log", "web-1"]);
    assert!(
        log["log"]
            .as_str()
            .unwrap()
            .contains("demo-web failed to start"),
        "{log}"
    );
    let text = fleet.server.yeet(&["log", "web-1"]);
    assert!(
        text.contains("rolled-back") && text.contains("demo-web failed to start"),
        "{text}"
    );
}

/// The new system differs from the running one only in the agent's config, which points
/// at a dead server: the agent must restart with that config (on NixOS only restartTriggers
/// make it), fail to reach the server, and the system must roll back.
pub fn a_config_only_change_that_cuts_the_agent_off_rolls_back(hosts: Hosts) {
    let fleet = fleet(hosts, &["web-1"], 8);
    let isolated = fleet.system("system-isolated", Variant::DeadServer, "6.1");
    if hosts.kind == HostKind::Systemd {
        // Prove the premise: the two systems' agent units differ in nothing but the
        // restart trigger (the config file's store path).
        let unit = |sys: &str| {
            let text =
                std::fs::read_to_string(format!("{sys}/etc/systemd/yeet-agent.service")).unwrap();
            text.lines()
                .filter(|l| !l.starts_with("X-Restart-Triggers="))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(unit(&fleet.base), unit(&isolated));
    }
    assert_rolls_back(&fleet, &isolated, "not confirmed within 8s");
}

/// The new system's agent cannot start (its key is missing) and is restarted every two
/// seconds until the confirm timeout: the rollback must still bring back an agent. Under
/// systemd's default start limit (5 starts in 10 s) the unit would be given up for good.
pub fn an_agent_that_cannot_start_rolls_back_and_comes_back(hosts: Hosts) {
    let fleet = fleet(hosts, &["web-1"], 20);
    let keyless = fleet.system("system-keyless", Variant::MissingKey, "6.1");
    assert_rolls_back(&fleet, &keyless, "not confirmed within 20s");
    let log = fleet.hosts[0].agent_log();
    assert!(log.contains("missing_key"), "{log}");
}

pub fn a_failing_health_check_rolls_back_at_once(hosts: Hosts) {
    let fleet = fleet(hosts, &["web-1"], 60);
    let sick = fleet.system("system-sick", Variant::Unhealthy, "6.1");
    let a = assert_rolls_back(&fleet, &sick, "health check");
    // Rolled back on the health check, not by waiting out the 60 s window: a timeout would
    // say "not confirmed within" instead (no clock comparison needed).
    assert!(
        !a["reason"]
            .as_str()
            .unwrap()
            .contains("not confirmed within"),
        "{a}"
    );
    let log: serde_json::Value = fleet.server.yeet_json(&["log", "web-1"]);
    assert!(
        log["log"]
            .as_str()
            .unwrap()
            .contains("the web service does not answer"),
        "{log}"
    );
}

/// A new kernel: confirmed, reported as reboot-required; after a reboot the booted system
/// is the new one and nothing is pending.
pub fn a_kernel_change_takes_a_reboot(hosts: Hosts) {
    let mut fleet = fleet(hosts, &["web-1"], 30);
    let newer = fleet.system("system-kernel", Variant::Good, "6.6");
    fleet.publish(&[("web-1", &newer)], "new kernel");
    let a = fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(
        (a["result"].as_str(), a["reboot_required"].as_bool()),
        (Some("confirmed"), Some(true)),
        "{a}"
    );
    wait_until(CONVERGE, "status reboot-required", || {
        fleet.status()["web-1"]["state"] == "reboot-required"
    });
    fleet.reboot("web-1");
    let h = &fleet.hosts[0];
    assert_eq!(
        (h.current_system(), h.booted_system()),
        (Some(newer.clone()), Some(newer.clone()))
    );
    wait_until(CONVERGE, "standby after the reboot", || {
        converged(&fleet, &newer)
    });
    assert_eq!(fleet.history("web-1").len(), 1);
}

/// `activation_mode = "boot"`: the new system becomes the boot default only; the host runs
/// the old one, says a reboot is required, and runs the new one after it.
pub fn boot_mode_applies_at_the_next_boot(hosts: Hosts) {
    let mut fleet = Fleet::with(
        &["web-1"],
        FleetOptions {
            kind: hosts.kind,
            platform: hosts.platform,
            agent_config: "activation_mode = \"boot\"".into(),
            ..Default::default()
        },
    );
    let base = fleet.base.clone();
    let v1 = fleet.system_with_agent_config("system-v1", Variant::Good, "# v1");
    fleet.publish(&[("web-1", &v1)], "v1 at the next boot");
    let a = fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(a["result"], "confirmed", "{a}");
    assert!(a["reason"].as_str().unwrap().contains("next reboot"), "{a}");
    assert_eq!(fleet.hosts[0].current_system(), Some(base.clone()));
    wait_until(CONVERGE, "status reboot-required", || {
        fleet.status()["web-1"]["state"] == "reboot-required"
    });
    fleet.reboot("web-1");
    assert_eq!(fleet.hosts[0].booted_system(), Some(v1.clone()));
    wait_until(CONVERGE, "web-1 on v1 after the reboot", || {
        converged(&fleet, &v1)
    });
    assert_eq!(fleet.history("web-1").len(), 1);
}

/// Six releases within ten seconds, each changing the agent's unit (so each switch restarts
/// it): the host ends confirmed on the last, and its agent is still running.
pub fn a_burst_of_releases_ends_on_the_last(hosts: Hosts) {
    let fleet = fleet(hosts, &["web-1"], 30);
    let systems: Vec<String> = (1..=6)
        .map(|i| {
            fleet.system_with_agent_config(
                &format!("system-burst-{i}"),
                Variant::Good,
                &format!("# release {i}"),
            )
        })
        .collect();
    let started = Instant::now();
    for (i, sys) in systems.iter().enumerate() {
        fleet.publish(&[("web-1", sys)], &format!("burst {i}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("six releases published in {:?}", started.elapsed());
    let last = systems.last().unwrap();
    wait_until(CONVERGE, "web-1 on the last release", || {
        converged(&fleet, last)
    });
    let newest = &fleet.history("web-1")[0];
    assert_eq!(
        (newest["result"].as_str(), newest["store_path"].as_str()),
        (Some("confirmed"), Some(last.as_str())),
        "{newest}"
    );
    assert!(
        agent_running(&fleet, "web-1"),
        "the agent is not running after the burst:\n{}",
        fleet.hosts[0].agent_log()
    );
}
