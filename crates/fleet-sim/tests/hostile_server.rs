//! A malicious server against the real agent on a simulated host with real Nix. The host
//! pins one key (`fleet-1`); the server tries every trick to get something else activated
//! as root: unreadable and option-laden cache URLs, unsigned, foreign-signed and
//! content-addressed paths, paths already in the host's store, derivations and escaped
//! paths, and an absurd check-in interval. Nothing may be activated, each attempt must be
//! reported with the right result, and the agent must still activate a properly signed
//! system afterwards (which also proves this test can see an activation happen).

#![allow(clippy::unwrap_used)]

use fleet_sim::hostile::HostileServer;
use fleet_sim::run;
use fleet_sim::sim::{
    Cache, HostKind, Platform, SimHost, SystemSpec, Variant, build_system, wait_until,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

struct Attack<'a> {
    host: &'a SimHost,
    server: &'a HostileServer,
    base: &'a str,
}

impl Attack<'_> {
    /// Offers `path` from `caches` and expects it reported as `result`, with nothing run.
    fn expect(&self, what: &str, path: &str, caches: &[&str], result: &str, reason_has: &str) {
        let before = self.server.reports().len();
        self.server.offer_switch(path, caches);
        wait_until(WAIT, &format!("the report on {what}"), || {
            self.server.reports().len() > before
        });
        let report = self.server.reports()[before].clone();
        assert_eq!(report["result"], result, "{what}: {report}");
        assert_eq!(report["store_path"], path, "{what}: {report}");
        let reason = report["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(reason_has), "{what}: {reason}");
        self.assert_untouched(what);
    }

    /// Offers something the agent must refuse before recording any activation.
    fn expect_refused_locally(&self, what: &str, path: &str) {
        let refusals = || self.host.agent_log().matches("the server named").count();
        let (before, checkins, refused) = (
            self.server.reports().len(),
            self.server.checkins(),
            refusals(),
        );
        self.server.offer_switch(path, &[]);
        wait_until(WAIT, &format!("{what} to be taken"), || {
            self.server.offers_taken()
        });
        // Two more rounds: an activation, had one started, would have been reported by then.
        wait_until(WAIT, "two more check-ins", || {
            self.server.checkins() >= checkins + 3
        });
        assert_eq!(self.server.reports().len(), before, "{what} was reported");
        // This offer's own refusal, not an earlier one's.
        assert!(
            refusals() > refused,
            "{what} was not refused: {}",
            self.host.agent_log()
        );
        self.assert_untouched(what);
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            self.host.current_system().as_deref(),
            Some(self.base),
            "{what}: the host switched"
        );
        assert!(
            !self.host.root.join("run/pwned").exists(),
            "{what}: a payload ran as root"
        );
        assert_eq!(
            generations(&self.host.root),
            1,
            "{what}: a generation was added"
        );
    }
}

/// Generations of the host's system profile.
fn generations(root: &Path) -> usize {
    std::fs::read_dir(root.join("nix/var/nix/profiles"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("system-") && n.ends_with("-link")
                })
                .count()
        })
        .unwrap_or(0)
}

/// A content-addressed "system" (`nix-store --add`): Nix accepts such paths from any cache
/// without a signature. Its switch script points the host at itself and leaves a mark.
fn content_addressed_system(dir: &Path) -> String {
    let src = dir.join("ca-system");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    let script = src.join("bin/switch-to-configuration");
    std::fs::write(
        &script,
        "#!/bin/sh\ntouch /run/pwned\nln -sfn \"$(dirname \"$(dirname \"$0\")\")\" /run/current-system\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&script));
    let out = run(Command::new("nix-store").arg("--add").arg(&src));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_malicious_server_gets_nothing_activated() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start();
    let fleet_cache = Cache::new(&dir.path().join("fleet-keys"), "fleet-1");
    let unsigned = Cache::new(&dir.path().join("unsigned-keys"), "unused-1");
    let foreign = Cache::new(&dir.path().join("foreign-keys"), "evil-1");
    let salt = dir.path().display().to_string();
    let system = |name: &str, secrets: &str| {
        build_system(&SystemSpec {
            name,
            platform: Platform::NixOS,
            variant: Variant::Good,
            kernel: "6.1",
            server: &server.url,
            trusted_key: &fleet_cache.public_key,
            confirm_timeout: 20,
            salt: &salt,
            // However large the server's interval, the agent comes back within 2 s.
            extra_agent_config: "max_checkin_interval_secs = 2",
            agent_package: fleet_sim::sim::SYSTEMD_HOST_AGENT_PACKAGE,
            secrets,
        })
    };
    let base = system("base", "");
    fleet_cache.push(&base);
    let mut host = SimHost::new(dir.path(), "victim", HostKind::Namespace);
    host.start(&fleet_cache, &base);
    wait_until(WAIT, "the victim to check in", || server.checkins() > 0);
    let attack = Attack {
        host: &host,
        server: &server,
        base: &base,
    };

    // Cache URLs are data: an unknown scheme first used to end the check as a pass, and
    // `?trusted=1` made Nix skip signatures altogether.
    let evil = system("evil-unsigned", "");
    unsigned.push_unsigned(&evil);
    let trusted_url = format!("{}?trusted=1", unsigned.url());
    let secret_url = format!("{}?secret-key=/etc/yeet/host_key", unsigned.url());
    attack.expect(
        "an unknown scheme first",
        &evil,
        &["dummy://", &trusted_url],
        "untrusted",
        "dummy",
    );
    attack.expect("?trusted=1", &evil, &[&trusted_url], "untrusted", "trusted");
    attack.expect(
        "?secret-key=",
        &evil,
        &[&secret_url],
        "untrusted",
        "secret-key",
    );
    attack.expect(
        "a space-separated second cache",
        &evil,
        &[&format!("{} {trusted_url}", unsigned.url())],
        "untrusted",
        "whitespace",
    );

    // Nix itself refuses unsigned and foreign-signed paths from a cache.
    attack.expect(
        "an unsigned path",
        &evil,
        &[&unsigned.url()],
        "untrusted",
        "signature",
    );
    let foreign_signed = system("evil-foreign", "");
    foreign.push(&foreign_signed);
    attack.expect(
        "a foreign-signed path",
        &foreign_signed,
        &[&foreign.url()],
        "untrusted",
        "signature",
    );

    // Content-addressed paths need no signature in Nix: only the host's own check stops them.
    let ca = content_addressed_system(dir.path());
    unsigned.push_unsigned(&ca);
    attack.expect(
        "a content-addressed path behind an unknown scheme",
        &ca,
        &["dummy://", &unsigned.url()],
        "untrusted",
        "dummy",
    );
    attack.expect(
        "a content-addressed path",
        &ca,
        &[&unsigned.url()],
        "untrusted",
        "not signed by a key this host pins",
    );

    // A path already valid on the host (built there by a local user, say) is not trusted
    // for being present, whatever caches are named.
    let local = system("evil-local", "");
    let out = run(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--no-check-sigs",
            "--to",
        ])
        .arg(&host.root)
        .arg(&local));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    attack.expect(
        "a local path and no caches",
        &local,
        &[],
        "untrusted",
        "not signed by a key this host pins",
    );
    attack.expect(
        "a local path and an ssh cache",
        &local,
        &["ssh://nowhere.invalid"],
        "untrusted",
        "not signed by a key this host pins",
    );

    // Paths that are not plain output paths never reach a command line.
    let drv = String::from_utf8(
        run(Command::new("nix-store").args(["--query", "--deriver", &evil])).stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(drv.ends_with(".drv"), "{drv}");
    attack.expect_refused_locally("a derivation", &drv);
    attack.expect_refused_locally("an escaping path", "/nix/store/../../bin/sh");
    attack.expect_refused_locally("an option", "--option");

    // A signed system that needs a secret: the server answers the fetch with one more,
    // named to land outside the secrets directory. The agent refuses the whole answer,
    // writes nothing, and does not switch.
    let needs_secret = system("needs-secret", "{ db-password = { }; }");
    fleet_cache.push(&needs_secret);
    attack.expect(
        "a planted secret",
        &needs_secret,
        &[&fleet_cache.url()],
        "failed",
        "not asked for",
    );
    for planted in [
        "run/yeet/secrets",
        "run/yeet/secrets.d",
        "var-lib-yeet/secrets",
    ] {
        let at = host.root.join(planted);
        let empty = std::fs::read_dir(&at).map_or(true, |mut d| d.next().is_none());
        assert!(empty, "{} holds secrets", at.display());
    }
    assert!(!Path::new("/etc/cron.d/yeet-pwned").exists());

    // An absurd interval does not silence the host.
    let checkins = server.checkins();
    server.offer(serde_json::json!({"type": "none"}), u64::MAX);
    wait_until(
        Duration::from_secs(30),
        "a check-in after an absurd interval",
        || server.offers_taken() && server.checkins() > checkins + 2,
    );
    attack.assert_untouched("an absurd interval");

    // A system signed by the pinned key is activated: the agent still works, and the test
    // sees an activation when there is one.
    let good = system("good", "");
    fleet_cache.push(&good);
    let before = server.reports().len();
    server.offer_switch(&good, &[&fleet_cache.url()]);
    wait_until(WAIT, "the signed system's report", || {
        server.reports().len() > before
    });
    let report = server.reports()[before].clone();
    assert_eq!(report["result"], "confirmed", "{report}");
    assert_eq!(host.current_system().as_deref(), Some(good.as_str()));
    assert_eq!(generations(&host.root), 2);
}

/// The operator's side: a hostile server's free text (host names, facts, hints, reasons,
/// release messages, logs) must reach the operator's terminal without its escape sequences
/// and bidi overrides, in tables and in `--json` alike, while `--json` keeps the data exact.
#[test]
fn a_malicious_server_cannot_drive_the_operators_terminal() {
    use fleet_sim::hostile::HOSTILE_TEXT;
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start();
    let key = fleet_sim::operator_key(&dir.path().join("operator_key"));
    let yeet = |args: &[&str]| {
        let out = run(Command::new(fleet_sim::bin("yeet"))
            .args(args)
            .env("YEET_SERVER", &server.url)
            .env("YEET_KEY", &key)
            .env("HOME", dir.path())
            .env_remove("YEET_CONFIG"));
        assert!(
            out.status.success(),
            "yeet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [
        &["status"][..],
        &["pending"],
        &["log", "victim"],
        &["history", "victim"],
        &["releases"],
        &["status", "--json"],
        &["releases", "--json"],
    ] {
        let shown = yeet(args);
        assert!(
            shown.contains("evil"),
            "yeet {args:?} showed nothing: {shown}"
        );
        for bad in ['\u{1b}', '\u{7}', '\u{202e}'] {
            assert!(
                !shown.contains(bad),
                "yeet {args:?} printed {bad:?} to the terminal: {shown:?}"
            );
        }
    }
    // A refusal's code and message reach the operator as an error, cleaned the same way.
    let refused = run(Command::new(fleet_sim::bin("yeet"))
        .arg("whoami")
        .env("YEET_SERVER", &server.url)
        .env("YEET_KEY", &key)
        .env("HOME", dir.path())
        .env_remove("YEET_CONFIG"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("evil"),
        "{stderr}"
    );
    for bad in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(
            !stderr.contains(bad),
            "an error printed {bad:?} to the terminal: {stderr:?}"
        );
    }
    // --json escapes rather than drops: a script reads exactly what the server sent.
    let hosts: serde_json::Value = serde_json::from_str(&yeet(&["status", "--json"])).unwrap();
    assert_eq!(hosts[0]["facts"]["os"], HOSTILE_TEXT);
}

/// A hostile server, the fleet's cache and a base system for a victim host whose agent
/// config has `extra_agent_config`, pushed to the cache.
fn victim_setup(extra_agent_config: &str) -> (tempfile::TempDir, HostileServer, Cache, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start();
    let cache = Cache::new(&dir.path().join("fleet-keys"), "fleet-1");
    let salt = dir.path().display().to_string();
    let base = build_system(&SystemSpec {
        name: "base",
        platform: Platform::NixOS,
        variant: Variant::Good,
        kernel: "6.1",
        server: &server.url,
        trusted_key: &cache.public_key,
        confirm_timeout: 20,
        salt: &salt,
        extra_agent_config,
        agent_package: fleet_sim::sim::SYSTEMD_HOST_AGENT_PACKAGE,
        secrets: "",
    });
    cache.push(&base);
    (dir, server, cache, base)
}

/// A server that answers every held check-in at once with nothing to run (it does not hold
/// them) cannot make the agent spin: after a few quick answers the agent asks at its
/// interval, not every 250 ms as it does after a real wake.
#[test]
fn a_server_that_never_holds_cannot_make_the_agent_spin() {
    let (dir, server, cache, base) = victim_setup("max_checkin_interval_secs = 5");
    // Nothing to run, come back in 5 s: every answer, at once.
    for _ in 0..200 {
        server.offer(serde_json::json!({"type": "none"}), 5);
    }
    let mut host = SimHost::new(dir.path(), "victim", HostKind::Namespace);
    host.start(&cache, &base);
    wait_until(WAIT, "the victim to check in", || server.checkins() > 0);
    std::thread::sleep(Duration::from_secs(3));
    let before = server.checkins();
    std::thread::sleep(Duration::from_secs(10));
    let asked = server.checkins() - before;
    // At its 5 s interval that is about 2; spinning every 250 ms, about 40.
    assert!(asked <= 6, "{asked} check-ins in 10 s");
    host.power_off();
}

/// A server that orders a reboot in every answer cannot reboot a host that needs none. The
/// host boots real systemd, where `systemctl reboot` would take its container down: it
/// keeps checking in (after the first orders, at its interval), reports nothing, and stays
/// up through a dozen orders.
#[test]
fn a_server_cannot_reboot_a_host_that_needs_no_reboot() {
    let (dir, server, cache, base) =
        victim_setup("max_checkin_interval_secs = 1\nreboot = \"in-window\"");
    server.order_reboots();
    let mut host = SimHost::new(dir.path(), "victim", HostKind::Systemd);
    host.start(&cache, &base);
    wait_until(WAIT, "the victim to check in", || server.checkins() > 0);
    let first = server.checkins();
    wait_until(WAIT, "a dozen more check-ins", || {
        server.checkins() >= first + 12
    });
    assert!(host.is_up(), "the host went down: {}", host.agent_log());
    let checkins = server.checkins();
    let states: Vec<Value> = (0..checkins)
        .map(|i| server.checkin(i)["state"].clone())
        .collect();
    assert!(
        states.iter().all(|s| s == "standby"),
        "the host did not say it needs no reboot: {states:?}"
    );
    assert!(server.reports().is_empty(), "{:?}", server.reports());
    assert!(
        !host.agent_log().contains("rebooting"),
        "{}",
        host.agent_log()
    );
    assert!(!host.root.join("var-lib-yeet/reboot.json").exists());
    host.power_off();
}
