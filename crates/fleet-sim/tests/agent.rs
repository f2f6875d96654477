//! The agent on a simulated fleet with real Nix: hosts are mount and PID namespaces with
//! their own /nix, /run, /etc/yeet and /var/lib/yeet; systems are real derivations fetched
//! from a real signed cache; switches really restart the agent.

#![allow(clippy::unwrap_used)]

use fleet_sim::sim::{Fleet, Variant, wait_until};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(120);

fn converged(fleet: &Fleet, path: &str) -> bool {
    let status = fleet.status();
    fleet.hosts.iter().all(|h| {
        let s = &status[&h.name];
        h.current_system().as_deref() == Some(path)
            && s["current_system"] == path
            && s["desired_system"] == path
            && s["state"] == "standby"
    })
}

#[test]
fn three_hosts_switch_and_confirm() {
    let fleet = Fleet::new(&["web-1", "web-2", "db-1"], 30);
    let v1 = fleet.system("system-v1", Variant::Good, "6.1");
    fleet.publish(&[("web-1", &v1), ("web-2", &v1), ("db-1", &v1)], "v1");
    for h in ["web-1", "web-2", "db-1"] {
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
    let log: serde_json::Value = fleet.server.yeet_json(&["log", "web-1"]);
    let text = log["log"].as_str().unwrap();
    assert!(
        text.contains("switch-to-configuration switch") && text.contains("confirmed"),
        "{text}"
    );
}

#[test]
fn a_failing_switch_rolls_back_and_its_log_is_kept() {
    let fleet = Fleet::new(&["web-1"], 30);
    let base = fleet.base.clone();
    let broken = fleet.system("system-broken", Variant::Fail, "6.1");
    fleet.publish(&[("web-1", &broken)], "broken");
    let a = fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(a["result"], "rolled-back", "{a}");
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("switch-to-configuration switch failed"),
        "{a}"
    );
    let log: serde_json::Value = fleet.server.yeet_json(&["log", "web-1"]);
    assert!(
        log["log"]
            .as_str()
            .unwrap()
            .contains("demo-web.service failed"),
        "{log}"
    );
    let text = fleet.server.yeet(&["log", "web-1"]);
    assert!(
        text.contains("rolled-back") && text.contains("demo-web.service failed"),
        "{text}"
    );
    wait_until(
        CONVERGE,
        "the host to be back on its previous system",
        || fleet.hosts[0].current_system().as_deref() == Some(base.as_str()),
    );
    wait_until(CONVERGE, "status to show the rollback", || {
        fleet.status()["web-1"]["state"] == "rolled-back"
    });
    // It is not retried: the history stays at one attempt.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet.history("web-1").len(), 1);
}
