//! The agent on a simulated fleet with real Nix: hosts are mount and PID namespaces with
//! their own /nix, /run, /etc/yeet and /var/lib/yeet; systems are real derivations fetched
//! from a real signed cache; switches really restart the agent.

#![allow(clippy::unwrap_used)]

mod common;

use common::{CONVERGE, converged, interrupted_activation_converges};
use fleet_sim::sim::{Fleet, FleetOptions, Variant, wait_until};
use std::time::Duration;

#[test]
fn three_hosts_switch_and_confirm() {
    common::switch_and_confirm(common::NAMESPACE, &["web-1", "web-2", "db-1"]);
}

#[test]
fn killing_the_agent_mid_activation_converges() {
    common::killing_the_agent_mid_activation_converges(common::NAMESPACE);
}

#[test]
fn a_burst_of_releases_ends_on_the_last() {
    common::a_burst_of_releases_ends_on_the_last(common::NAMESPACE);
}

#[test]
fn boot_mode_applies_at_the_next_boot() {
    common::boot_mode_applies_at_the_next_boot(common::NAMESPACE);
}

#[test]
fn killing_the_activation_process_converges() {
    interrupted_activation_converges(common::NAMESPACE, |fleet| {
        let host = &fleet.hosts[0];
        wait_until(
            Duration::from_secs(30),
            "an activation process to kill",
            || host.kill("yeet-agent activate") > 0,
        );
    });
}

#[test]
fn a_power_cut_mid_activation_converges() {
    interrupted_activation_converges(common::NAMESPACE, |fleet| {
        fleet.host("web-1").power_off();
        fleet.boot("web-1");
    });
}

#[test]
fn a_publish_reaches_fifty_hosts() {
    let names: Vec<String> = (1..=50).map(|i| format!("node-{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // All 50 register from loopback at once: past the default burst, the rate limit would
    // only add waiting.
    let fleet = Fleet::with(
        &names,
        FleetOptions {
            confirm_timeout: 60,
            server_config: "registration_burst = 60\n".into(),
            ..Default::default()
        },
    );
    let v1 = fleet.system("system-fleet", Variant::Good, "6.1");
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, v1.as_str())).collect();
    fleet.publish(&pairs, "everyone");
    wait_until(Duration::from_secs(300), "all 50 hosts to converge", || {
        converged(&fleet, &v1)
    });
    for n in &names {
        assert_eq!(fleet.history(n)[0]["result"], "confirmed", "{n}");
    }
}

#[test]
fn a_failing_switch_rolls_back_and_its_log_is_kept() {
    common::a_failing_switch_rolls_back_and_its_log_is_kept(common::NAMESPACE);
}

#[test]
fn a_system_that_cuts_the_agent_off_rolls_back_within_the_confirm_timeout() {
    common::a_config_only_change_that_cuts_the_agent_off_rolls_back(common::NAMESPACE);
}

#[test]
fn a_failing_health_check_rolls_back_at_once() {
    common::a_failing_health_check_rolls_back_at_once(common::NAMESPACE);
}

#[test]
fn closures_not_signed_by_a_pinned_key_are_never_activated() {
    // The server does not check here, so the hosts' own check is what stops the closures.
    let fleet = Fleet::with(
        &["web-1", "web-2"],
        FleetOptions {
            server_checks_signatures: false,
            ..Default::default()
        },
    );
    let base = fleet.base.clone();
    let evil = fleet
        .cache
        .signing_with(&fleet.dir().join("evil-keys"), "evil-1");
    let foreign = fleet.system_signed_by("system-foreign", Variant::Good, "6.1", &evil);
    let unsigned = fleet.build("system-unsigned", Variant::Good, "6.1");
    fleet.cache.push_unsigned(&unsigned);
    // Publish without pushing: the cache holds only the foreign-signed and unsigned copies.
    fleet.publish_with(
        &[("web-1", &foreign), ("web-2", &unsigned)],
        "untrusted",
        &["--push-cmd", "true"],
    );
    // Nix refuses both while substituting; it does not say who signed the foreign one.
    for (host, why) in [
        ("web-1", "no signature by a key this host trusts"),
        ("web-2", "no signature by a key this host trusts"),
    ] {
        let a = fleet.wait_for_activation(host, 1, CONVERGE);
        assert_eq!(a["result"], "untrusted", "{host}: {a}");
        assert!(a["reason"].as_str().unwrap().contains(why), "{host}: {a}");
    }
    for h in &fleet.hosts {
        assert_eq!(
            h.current_system().as_deref(),
            Some(base.as_str()),
            "{} switched to an untrusted system",
            h.name
        );
        let profiles = h.root.join("nix/var/nix/profiles");
        assert_eq!(
            std::fs::read_link(profiles.join("system"))
                .unwrap()
                .to_str(),
            Some("system-1-link")
        );
        assert!(
            !profiles.join("system-2-link").exists(),
            "{}: a generation was added for an untrusted system",
            h.name
        );
    }
}

#[test]
fn a_host_offline_through_two_releases_gets_only_the_latest() {
    let mut fleet = Fleet::new(&["web-1"], 30);
    let (v2, v3) = (
        fleet.system("system-v2", Variant::Good, "6.1"),
        fleet.system("system-v3", Variant::Good, "6.1"),
    );
    fleet.host("web-1").power_off();
    fleet.publish(&[("web-1", &v2)], "v2");
    fleet.publish(&[("web-1", &v3)], "v3");
    fleet.boot("web-1");
    let a = fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(
        (a["result"].as_str(), a["store_path"].as_str()),
        (Some("confirmed"), Some(v3.as_str())),
        "{a}"
    );
    wait_until(CONVERGE, "web-1 on v3", || converged(&fleet, &v3));
    assert_eq!(fleet.history("web-1").len(), 1, "v2 was attempted too");
}

#[test]
fn a_darwin_system_is_activated_and_confirmed() {
    common::switch_and_confirm(common::DARWIN, &["mac-1"]);
}

#[test]
fn a_failing_darwin_activation_rolls_back() {
    common::a_failing_switch_rolls_back_and_its_log_is_kept(common::DARWIN);
}

#[test]
fn a_darwin_system_that_cuts_the_agent_off_rolls_back() {
    common::a_config_only_change_that_cuts_the_agent_off_rolls_back(common::DARWIN);
}

#[test]
fn a_darwin_system_in_boot_mode_applies_at_the_next_boot() {
    common::boot_mode_applies_at_the_next_boot(common::DARWIN);
}

#[test]
fn a_kernel_change_takes_a_reboot() {
    common::a_kernel_change_takes_a_reboot(common::NAMESPACE);
}

#[test]
fn a_removed_host_stops_and_enrolls_again() {
    let fleet = Fleet::new(&["web-1"], 30);
    let host = &fleet.hosts[0];
    wait_until(CONVERGE, "web-1 to check in", || {
        fleet.status()["web-1"]["last_seen"].is_i64()
    });
    fleet.server.yeet(&["host", "rm", "web-1"]);
    let code = host.shown_code(CONVERGE);
    let pending: Vec<serde_json::Value> = fleet.server.yeet_json(&["pending"]);
    assert_eq!(pending.len(), 1, "{pending:?}");
    fleet.server.yeet(&["approve", "web-1-again", &code]);
    wait_until(CONVERGE, "the host back under its new name", || {
        fleet
            .status()
            .get("web-1-again")
            .is_some_and(|h| h["last_seen"].is_i64())
    });
}

#[test]
fn hosts_fetch_from_the_embedded_cache_and_unchanged_paths_are_not_uploaded_again() {
    let fleet = Fleet::new(&["web-1", "web-2"], 30);
    // Built but never pushed to the file cache: only `yeet publish` puts it anywhere.
    let v1 = fleet.build("system-embedded", Variant::Good, "6.1");
    let key = fleet.cache.secret_key.display().to_string();
    let publish = |host: &str| {
        let out = fleet_sim::run(fleet.server.yeet_cmd().args([
            "publish",
            "--path",
            &format!("{host}={v1}"),
            "--signing-key",
            &key,
        ]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The whole closure goes up the first time: nothing of it is in the embedded cache yet.
    let closure = fleet_sim::run(std::process::Command::new("nix-store").args(["-qR", &v1]));
    let closure_size = String::from_utf8_lossy(&closure.stdout).lines().count();
    let first = publish("web-1");
    assert!(
        first.contains(&format!("pushed {closure_size} store path(s)")),
        "{first}"
    );
    let again = publish("web-2");
    assert!(
        again.contains("pushed 0 store path(s)"),
        "only missing paths are uploaded: {again}"
    );
    for h in ["web-1", "web-2"] {
        let a = fleet.wait_for_activation(h, 1, CONVERGE);
        assert_eq!(
            (a["result"].as_str(), a["store_path"].as_str()),
            (Some("confirmed"), Some(v1.as_str())),
            "{h}: {a}"
        );
    }
    let text: serde_json::Value = fleet.server.yeet_json(&["log", "web-1"]);
    let log = text["log"].as_str().unwrap();
    assert!(
        log.contains("/cache"),
        "fetched from the embedded cache: {text}"
    );
    // The fetch roots the system under the agent's state directory, so Nix does not warn
    // (and a collection before the profile switch cannot delete it).
    assert!(!log.contains("--add-root"), "{log}");
    let root = fleet.hosts[0].root.join("var-lib-yeet/fetched-system");
    assert_eq!(
        std::fs::read_link(&root).ok().as_deref(),
        Some(std::path::Path::new(&v1)),
        "{}",
        root.display()
    );
}

#[test]
fn the_server_refuses_releases_whose_closures_are_not_signed_by_the_fleet() {
    let fleet = Fleet::new(&["web-1"], 30);
    let cache_url = fleet.cache.url();
    let refused = |path: &str, extra: &[&str], why: &str| {
        let mut args = vec!["publish", "--path"];
        let pair = format!("web-1={path}");
        args.push(&pair);
        args.extend_from_slice(extra);
        let out = fleet_sim::run(fleet.server.yeet_cmd().args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why) && err.contains(path),
            "expected a refusal naming {why}: {err}"
        );
        let releases: Vec<serde_json::Value> = fleet.server.yeet_json(&["releases"]);
        assert!(releases.is_empty(), "a refused release was created");
    };
    let missing = fleet.build("system-missing", Variant::Good, "6.1");
    refused(
        &missing,
        &["--push-cmd", "true"],
        "has no narinfo in the embedded cache",
    );
    let unsigned = fleet.build("system-unsigned", Variant::Good, "6.1");
    fleet.cache.push_unsigned(&unsigned);
    refused(
        &unsigned,
        &["--push-cmd", "true", "--cache-url", &cache_url],
        "carries no signature",
    );
    let evil = fleet
        .cache
        .signing_with(&fleet.dir().join("evil-keys"), "evil-1");
    let foreign = fleet.system_signed_by("system-foreign", Variant::Good, "6.1", &evil);
    refused(
        &foreign,
        &["--push-cmd", "true", "--cache-url", &cache_url],
        "expected a signature by one of: fleet-1",
    );
    // Signed by the fleet key through a file:// cache: accepted.
    let good = fleet.system("system-good", Variant::Good, "6.1");
    fleet.publish_with(
        &[("web-1", &good)],
        "good",
        &[
            "--cache",
            &format!(
                "{cache_url}?secret-key={}",
                fleet.cache.secret_key.display()
            ),
        ],
    );
    let releases: Vec<serde_json::Value> = fleet.server.yeet_json(&["releases"]);
    assert_eq!(releases.len(), 1);
}

#[test]
fn publish_from_a_flake_builds_shared_systems_once_and_the_fleet_converges() {
    let fleet = Fleet::new(&["web-1", "web-2", "db-1"], 30);
    let flake = fleet.flake();
    let head = String::from_utf8(
        fleet_sim::run(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&flake)
                .args(["rev-parse", "HEAD"]),
        )
        .stdout,
    )
    .unwrap();
    let key = fleet.cache.secret_key.display().to_string();
    let flake_ref = format!("git+file://{}", flake.display());
    let publish = |extra: &[&str]| {
        let out = fleet_sim::run(
            fleet
                .server
                .yeet_cmd()
                .args([
                    "publish",
                    "--flake",
                    &flake_ref,
                    "--signing-key",
                    &key,
                    "-m",
                    "from the flake",
                ])
                .args(extra),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), err)
    };
    // An unknown host is refused, naming the fleet's hosts.
    let (ok, err) = publish(&["web-1", "mail-1"]);
    assert!(
        !ok && err.contains("mail-1") && err.contains("db-1, web-1, web-2"),
        "{err}"
    );
    let (ok, err) = publish(&["--all"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("built 2 distinct system(s) for 3 host(s)"),
        "{err}"
    );
    let releases: Vec<serde_json::Value> = fleet.server.yeet_json(&["releases"]);
    assert_eq!(
        (
            releases[0]["revision"].as_str(),
            releases[0]["dirty"].as_bool()
        ),
        (Some(head.trim()), Some(false)),
        "{}",
        releases[0]
    );
    let hosts = releases[0]["hosts"].as_object().unwrap();
    assert_eq!(hosts["web-1"], hosts["web-2"]);
    assert_ne!(hosts["web-1"], hosts["db-1"]);
    for h in ["web-1", "web-2", "db-1"] {
        let a = fleet.wait_for_activation(h, 1, CONVERGE);
        assert_eq!(
            (a["result"].as_str(), a["store_path"].as_str()),
            (Some("confirmed"), hosts[h].as_str()),
            "{h}: {a}"
        );
    }
    // A dirty tree is recorded as such.
    std::fs::write(
        flake.join("build-system.sh"),
        format!(
            "{}\n# uncommitted\n",
            std::fs::read_to_string(flake.join("build-system.sh")).unwrap()
        ),
    )
    .unwrap();
    let (ok, err) = publish(&["db-1"]);
    assert!(ok, "{err}");
    let releases: Vec<serde_json::Value> = fleet.server.yeet_json(&["releases"]);
    assert_eq!(
        (
            releases[0]["revision"].is_null(),
            releases[0]["dirty"].as_bool()
        ),
        (true, Some(true)),
        "{}",
        releases[0]
    );
}

#[test]
fn cache_gc_keeps_exactly_what_the_newest_releases_reference() {
    let fleet = Fleet::new(&["web-1"], 30);
    let cache_dir = fleet.server.dir.path().join("state/cache");
    let narinfo = |path: &str| {
        cache_dir.join(format!(
            "{}.narinfo",
            &path["/nix/store/".len().."/nix/store/".len() + 32]
        ))
    };
    let v1 = fleet.build("system-gc-1", Variant::Good, "5.15");
    let v2 = fleet.build("system-gc-2", Variant::Good, "6.1");
    let v3 = fleet.build("system-gc-3", Variant::Good, "6.1");
    for v in [&v1, &v2, &v3] {
        fleet.publish(&[("web-1", v)], "gc");
    }
    for v in [&v1, &v2, &v3] {
        assert!(narinfo(v).exists(), "{v} was not uploaded");
    }
    let nars_before = std::fs::read_dir(cache_dir.join("nar")).unwrap().count();
    let report: serde_json::Value =
        fleet
            .server
            .yeet_json(&["cache", "gc", "--keep", "2", "--grace-secs", "0"]);
    // v1 and its kernel 5.15 go; v2, v3 and the shared kernel 6.1 stay (plus the base system's
    // paths, which no release names: the base is not in the embedded cache at all).
    assert_eq!(report["deleted_paths"], 2, "{report}");
    assert!(!narinfo(&v1).exists());
    assert!(narinfo(&v2).exists() && narinfo(&v3).exists());
    assert_eq!(
        std::fs::read_dir(cache_dir.join("nar")).unwrap().count(),
        nars_before - 2
    );
    assert!(report["bytes_freed"].as_u64().unwrap() > 0, "{report}");
    let again: serde_json::Value =
        fleet
            .server
            .yeet_json(&["cache", "gc", "--keep", "2", "--grace-secs", "0"]);
    assert_eq!(
        (
            again["deleted_paths"].as_u64(),
            again["bytes_freed"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );
    // The host still gets what it is told to run: the newest release, v3.
    wait_until(CONVERGE, "web-1 on v3", || converged(&fleet, &v3));
}

#[test]
fn yeet_diff_shows_package_changes_between_current_and_desired() {
    let fleet = Fleet::new(&["web-1"], 30);
    // A broken system with a newer kernel: it rolls back, so current and desired differ.
    let broken = fleet.system("system-diff", Variant::Fail, "6.6");
    fleet.publish(&[("web-1", &broken)], "newer kernel, broken switch");
    fleet.wait_for_activation("web-1", 1, CONVERGE);
    wait_until(CONVERGE, "web-1 to report its system", || {
        fleet.status()["web-1"]["current_system"] == fleet.base.as_str()
    });
    let diff = fleet.server.yeet(&["diff", "web-1"]);
    assert!(diff.contains("linux: 6.1 → 6.6"), "{diff}");
    let report: serde_json::Value = fleet.server.yeet_json(&["diff", "web-1"]);
    assert_eq!(report["current_system"], fleet.base.as_str(), "{report}");
    assert!(
        report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("linux: 6.1 → 6.6")),
        "{report}"
    );
}

#[test]
fn publish_through_a_push_command_and_roll_back() {
    let fleet = Fleet::new(&["web-1"], 30);
    let (v1, v2) = (
        fleet.build("system-push-1", Variant::Good, "6.1"),
        fleet.build("system-push-2", Variant::Good, "6.1"),
    );
    // A push tool of its own: here a script around `nix copy`, as `cachix push` would be.
    let script = fleet.dir().join("push.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec nix --extra-experimental-features nix-command copy --to '{}?secret-key={}' \"$@\"\n",
            fleet.cache.url(),
            fleet.cache.secret_key.display()
        ),
    )
    .unwrap();
    let cache_url = fleet.cache.url();
    let push = format!("sh {}", script.display());
    for (v, msg) in [(&v1, "v1"), (&v2, "v2")] {
        fleet.publish_with(
            &[("web-1", v)],
            msg,
            &["--push-cmd", &push, "--cache-url", &cache_url],
        );
        wait_until(CONVERGE, &format!("web-1 on {msg}"), || {
            converged(&fleet, v)
        });
    }
    // Roll back: a new release with v1 again, and the host follows.
    let release: serde_json::Value = fleet.server.yeet_json(&["rollback", "web-1"]);
    assert_eq!(release["hosts"]["web-1"], v1.as_str(), "{release}");
    wait_until(CONVERGE, "web-1 back on v1", || converged(&fleet, &v1));
    assert_eq!(fleet.history("web-1").len(), 3);
}
