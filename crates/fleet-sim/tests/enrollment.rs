//! The foundation's whole flow across real processes: the server binary, a `yeet-agent`
//! registering with an SSH host key, `yeet pending`, `yeet approve`, `yeet publish --path`,
//! and `yeet status --json` showing the desired system. Then the same over native TLS.

#![allow(clippy::unwrap_used)]

use fleet_sim::sim::{Fleet, FleetOptions, Variant, wait_until};
use fleet_sim::{
    Server, ServerOptions, code_in, fresh_postgres_database, run, ssh_host_key, test_certificates,
};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[test]
fn enroll_approve_publish_status_on_sqlite() {
    enroll_approve_publish_status(None);
}

#[test]
fn enroll_approve_publish_status_on_postgres() {
    enroll_approve_publish_status(Some(fresh_postgres_database()));
}

/// The agent runs in a simulated host (its own /nix, /run, /etc/yeet, /var/lib/yeet), since
/// once approved it really activates what is published.
fn enroll_approve_publish_status(database: Option<String>) {
    let fleet = Fleet::with(
        &[],
        FleetOptions {
            confirm_timeout: 30,
            database,
            // Suggestions only: the host must not get these by itself.
            agent_config: "suggest_tags = [\"kiosk\", \"eu\"]".into(),
            ..Default::default()
        },
    );
    let system = fleet.system("nixos-system-web-1", Variant::Good, "6.1");
    let host = fleet.boot_new_host("web-1");
    let mut code = String::new();
    wait_until(
        Duration::from_secs(60),
        "the agent to print its code",
        || {
            code = host
                .agent_log()
                .lines()
                .find_map(code_in)
                .unwrap_or_default();
            !code.is_empty()
        },
    );
    // `yeet-agent status` shows the same code.
    let status = host.status().unwrap();
    assert_eq!(status.verification_code.as_deref(), Some(code.as_str()));
    let server = &fleet.server;

    let pending: Vec<Value> = server.yeet_json(&["pending"]);
    assert_eq!(pending.len(), 1);
    assert!(
        !serde_json::to_string(&pending).unwrap().contains(&code),
        "pending must not reveal the code"
    );
    let fleet_table = server.yeet(&["status"]);
    assert!(
        fleet_table.contains("(web-1)") && fleet_table.contains("pending"),
        "{fleet_table}"
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

    let pending: Vec<Value> = server.yeet_json(&["pending"]);
    assert_eq!(
        pending[0]["facts"]["suggested_tags"],
        serde_json::json!(["eu", "kiosk"])
    );
    let approved: Value =
        server.yeet_json(&["approve", "web-1", &code.to_lowercase(), "--tag", "prod"]);
    assert_eq!(approved["name"], "web-1", "{approved}");
    assert_eq!(approved["tags"], serde_json::json!(["prod"]), "{approved}");
    tags_from_the_cli(server);
    let key: Value = server.yeet_json(&["key", "show"]);
    assert!(
        key["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:"))
            && key["public_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("ssh-ed25519 ")),
        "{key}"
    );
    let out = server.yeet(&[
        "publish",
        "--path",
        &format!("web-1={system}"),
        "-m",
        "first release",
        "--signing-key",
        &fleet.cache.secret_key.display().to_string(),
    ]);
    assert!(out.contains("release 1"), "{out}");

    wait_until(
        Duration::from_secs(60),
        "status to show the checked-in host",
        || {
            let hosts: Vec<Value> = server.yeet_json(&["status"]);
            hosts.len() == 1 && hosts[0]["last_seen"].is_i64()
        },
    );
    let hosts: Vec<Value> = server.yeet_json(&["status"]);
    assert_eq!(hosts[0]["name"], "web-1");
    assert_eq!(hosts[0]["desired_system"], system.as_str());
    assert_eq!(hosts[0]["desired_release"], 1);
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
        detail.contains(&system) && detail.contains(hosts[0]["key_id"].as_str().unwrap()),
        "{detail}"
    );
    // Names that carry URL syntax reach no other host and no other endpoint: `web-1?` is
    // not web-1, and `../releases/1` is not a release.
    for escaped in [
        "web-1?",
        "web-1#x",
        "web-1%3F",
        "../releases/1",
        "web-1/rename",
    ] {
        for args in [vec!["status", escaped], vec!["host", "rm", escaped]] {
            let out = run(server.yeet_cmd().args(&args));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains("unknown_host"),
                "yeet {args:?}: {stderr}"
            );
        }
    }
    let still: Vec<Value> = server.yeet_json(&["status"]);
    assert_eq!(still.len(), 1, "an escaped name removed a host: {still:?}");
    let releases: Vec<Value> = server.yeet_json(&["releases"]);
    assert_eq!(
        (
            releases[0]["message"].as_str(),
            releases[0]["author"].as_str()
        ),
        (Some("first release"), Some("admin"))
    );
    wait_until(
        Duration::from_secs(120),
        "the host to run the published system",
        || {
            let hosts: Vec<Value> = server.yeet_json(&["status"]);
            hosts[0]["current_system"] == system.as_str() && hosts[0]["state"] == "standby"
        },
    );
}

/// `yeet host tag`, `host list --tag` and `status --tag` on web-1, tagged `prod` at approval
/// and suggesting `eu` and `kiosk`; it ends tagged `prod` again.
fn tags_from_the_cli(server: &Server) {
    let hosts: Vec<Value> = server.yeet_json(&["host", "list"]);
    assert_eq!(hosts[0]["tags"], serde_json::json!(["prod"]));
    let table = server.yeet(&["host", "list"]);
    assert!(
        table.contains("prod") && table.contains("eu, kiosk"),
        "{table}"
    );
    // -TAG is a removal, not an option, wherever options stand.
    let h: Value = server.yeet_json(&["host", "tag", "web-1", "--accept-suggested", "-eu"]);
    assert_eq!(h["tags"], serde_json::json!(["kiosk", "prod"]), "{h}");
    let out = server.yeet(&["host", "tag", "web-1", "+canary", "-kiosk"]);
    assert!(out.contains("canary, prod"), "{out}");
    let kiosks: Vec<Value> = server.yeet_json(&["status", "--tag", "kiosk"]);
    assert!(kiosks.is_empty(), "{kiosks:?}");
    let canaries: Vec<Value> = server.yeet_json(&["host", "list", "--tag", "canary", "--tag", "x"]);
    assert_eq!(canaries.len(), 1);
    let none = server.yeet(&["status", "--tag", "nothing"]);
    assert!(none.contains("no host carries nothing"), "{none}");
    for (args, says) in [
        (vec!["host", "tag", "web-1"], "+TAG to add"),
        (vec!["host", "tag", "web-1", "+Bad"], "invalid tag"),
        (
            vec!["host", "tag", "web-1", "--bogus"],
            "put options before the tags",
        ),
    ] {
        let out = run(server.yeet_cmd().args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "yeet {args:?}: {stderr}"
        );
    }
    server.yeet(&["host", "tag", "web-1", "-canary"]);
    let table = server.yeet(&["status"]);
    assert!(table.contains("TAGS") && table.contains("prod"), "{table}");
}

/// `yeet user …` over the API against a real server, and the offline `yeet-server admin`
/// commands on the same database: keys work and stop at once, nobody changes their own
/// rights, the last unscoped admin stays.
#[test]
fn users_are_managed_from_the_cli() {
    let server = Server::start(ServerOptions::default());
    let bob_key = fleet_sim::operator_key(&server.dir.path().join("bob_key"));
    let bob_pub = bob_key.with_extension("pub").display().to_string();
    let added: Value = server.yeet_json(&[
        "user",
        "add",
        "bob",
        "--public-key",
        &bob_pub,
        "--role",
        "publisher",
        "--tag",
        "staging",
    ]);
    assert_eq!(added["tags"], serde_json::json!(["staging"]), "{added}");
    let as_bob = |args: &[&str]| run(server.yeet_cmd().env("YEET_KEY", &bob_key).args(args));
    let me = as_bob(&["whoami"]);
    let said = String::from_utf8_lossy(&me.stdout);
    assert!(
        said.contains("bob (publisher, hosts tagged staging)"),
        "{said}"
    );
    let table = server.yeet(&["user", "list"]);
    assert!(
        table.contains("all hosts") && table.contains("hosts tagged staging"),
        "{table}"
    );
    let users: Vec<Value> = server.yeet_json(&["user", "list"]);
    assert_eq!(users.len(), 2);
    for (args, says) in [
        (
            vec!["user", "set-role", "admin", "viewer"],
            "ask another admin",
        ),
        (vec!["user", "rm", "admin"], "ask another admin"),
        (
            vec!["user", "set-tags", "bob", "--tag", "Bad"],
            "invalid tag",
        ),
        (
            vec![
                "user",
                "add",
                "carl",
                "--public-key",
                "/nonexistent.pub",
                "--role",
                "viewer",
            ],
            "cannot read the key file",
        ),
    ] {
        let out = run(server.yeet_cmd().args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "yeet {args:?}: {stderr}"
        );
    }
    // Bob, a publisher, cannot make himself an admin.
    let out = as_bob(&["user", "set-role", "bob", "admin"]);
    assert!(!out.status.success(), "a publisher promoted himself");
    // Offline, on the server host: the last unscoped admin cannot be removed either.
    let offline = |args: &[&str]| {
        run(Command::new(fleet_sim::bin("yeet-server"))
            .arg("--config")
            .arg(server.dir.path().join("server.toml"))
            .arg("--state-dir")
            .arg(server.dir.path().join("state"))
            .args(args))
    };
    let out = offline(&["admin", "rm", "admin"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("last admin"),
        "{stderr}"
    );
    let listed = offline(&["admin", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Bob, scoped to staging, publishes to his host, and another team's host is to him a
    // host that does not exist: refused before anything is uploaded.
    for (host, tag) in [("stg-1", "+staging"), ("prod-1", "+prod")] {
        server.approved_host(host);
        server.yeet(&["host", "tag", host, tag]);
    }
    let system = fleet_sim::random_closure(1, 1 << 20, "scoped-publish", server.dir.path());
    let out = as_bob(&["publish", "--path", &format!("prod-1={system}")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("prod-1"),
        "{stderr}"
    );
    let missing: Value = server.yeet_json(&["status"]);
    assert!(
        missing
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["desired_system"].is_null())
    );
    let out = as_bob(&["publish", "--path", &format!("stg-1={system}"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = as_bob(&["status", "--json"]);
    let seen: Vec<Value> = serde_json::from_slice(&seen.stdout).unwrap();
    let names: Vec<&str> = seen.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, ["stg-1"]);
    assert_eq!(seen[0]["desired_system"], system.as_str());
    server.yeet(&["user", "rm", "bob"]);
    let out = as_bob(&["whoami"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown_key"),
        "{stderr}"
    );
}

#[test]
fn the_server_shuts_down_gracefully() {
    let mut server = Server::start(ServerOptions::default());
    server.yeet(&["whoami"]);
    assert!(server.proc.terminate().success());
}

#[test]
fn cli_errors_say_what_to_do_next() {
    let server = Server::start(ServerOptions::default());
    // Empty listings say what to do, not an empty table.
    for (listing, hint) in [
        (&["pending"][..], "yeet-agent starts"),
        (&["releases"][..], "yeet publish"),
        (&["secret", "list"][..], "yeet secret add"),
        (&["osquery", "nodes"][..], "osquery-enroll"),
        (
            &["osquery", "schedule", "list"][..],
            "yeet osquery schedule add",
        ),
        (
            &["osquery", "options", "list"][..],
            "yeet osquery options set",
        ),
        (&["carves", "list"][..], "yeet carve HOST PATH"),
    ] {
        let said = server.yeet(listing);
        assert!(
            said.contains(hint) && !said.contains('┌'),
            "yeet {listing:?}: {said}"
        );
    }
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
    // A missing key file: one line, each cause once (it used to repeat the OS error, and
    // the server printed "Error:" with a backtrace).
    let out = run(server
        .yeet_cmd()
        .env("YEET_KEY", "/nonexistent/key")
        .arg("status"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.trim()
                == "error: cannot read key file /nonexistent/key: No such file or directory (os error 2)",
        "{err}"
    );
    let out = run(Command::new(fleet_sim::bin("yeet-server"))
        .args(["--config", "/nonexistent/server.toml", "admin", "list"])
        .env("RUST_BACKTRACE", "1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.trim()
                == "error: cannot read config file /nonexistent/server.toml: No such file or directory (os error 2)",
        "{err}"
    );
    // https:// to a plain-HTTP server says so, and which URL to use.
    let plain = server.url.clone();
    let out = run(server
        .yeet_cmd()
        .env("YEET_SERVER", plain.replacen("http://", "https://", 1))
        .arg("status"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("answered in plain HTTP, not TLS")
            && err.contains(&format!("use {plain} instead")),
        "{err}"
    );
    // A key the server does not know.
    let stranger = ssh_host_key(server.dir.path(), "stranger");
    let out = run(server.yeet_cmd().env("YEET_KEY", &stranger).arg("status"));
    let err = String::from_utf8_lossy(&out.stderr);
    // It names the key's fingerprint and the command that adds it, with the public key.
    let public = std::fs::read_to_string(stranger.with_extension("pub")).unwrap();
    let fingerprint = yeet_proto::PublicIdentity::from_openssh(public.trim())
        .unwrap()
        .key_id()
        .to_owned();
    assert!(
        !out.status.success()
            && err.contains("unknown_key")
            && err.contains(&fingerprint)
            && err.contains("yeet-server admin add NAME")
            && err.contains(public.split_whitespace().nth(1).unwrap()),
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

/// `yeet vm HOST` builds the host's VM runner from the fleet flake and runs it; the VM's
/// agent registers like any host and is approved by the code it shows. The flake's runner
/// stands in for QEMU: it starts the agent in a mount namespace of its own. A nix-darwin
/// host has no VM, and `yeet vm` says so.
#[test]
fn yeet_vm_runs_the_hosts_vm_whose_agent_enrolls() {
    use std::io::BufRead;
    let fleet = fleet_sim::sim::Fleet::new(&[], 30);
    let flake = format!("git+file://{}", fleet.flake().display());
    let key = fleet_sim::ssh_host_key(fleet.dir(), "vm-key");
    let mut vm = fleet.server.yeet_cmd();
    vm.args(["vm", "web-1", "--flake", &flake])
        .env("YEET_VM_AGENT", fleet_sim::bin("yeet-agent"))
        .env("YEET_VM_SERVER", &fleet.server.url)
        .env("YEET_VM_KEY", &key)
        // Polling every 10 minutes, the VM's agent still learns of its approval at once:
        // it holds its registration, and the approval answers it.
        .env("YEET_AGENT_POLL_INTERVAL", "600")
        .stdout(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut vm, 0);
    let mut vm = vm.spawn().unwrap();
    // Stops "the VM" (its process group) however the test ends: a failed wait must not
    // leave its agent running (and holding the test's output open).
    struct StopGroup(u32);
    impl Drop for StopGroup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.0)])
                .status();
        }
    }
    let stop = StopGroup(vm.id());
    // The VM's console shows the code, as a booting NixOS VM's agent would.
    let console = std::io::BufReader::new(vm.stdout.take().unwrap());
    let code = console
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("verification code: ").map(str::to_owned))
        .expect("the VM's agent shows a verification code");
    let pending: Vec<Value> = fleet.server.yeet_json(&["pending"]);
    assert!(
        pending.iter().any(|p| p["hostname_hint"] == "web-1"),
        "{pending:?}"
    );
    // Past the agent's quick second registration (a second after it shows a code): from
    // then on it either holds a registration or sleeps out its 10-minute interval.
    std::thread::sleep(std::time::Duration::from_secs(3));
    fleet.server.yeet(&["approve", "web-vm", &code]);
    fleet_sim::sim::wait_until(
        std::time::Duration::from_secs(60),
        "the VM to check in",
        || fleet.status()["web-vm"]["last_seen"].is_i64(),
    );
    drop(stop);
    let _ = vm.wait();

    // A nix-darwin host has no VM.
    let mac = fleet.dir().join("mac-flake");
    std::fs::create_dir_all(&mac).unwrap();
    std::fs::write(
        mac.join("flake.nix"),
        "{ outputs = { self }: { darwinConfigurations.mac-1.system = derivation { name = \"mac\"; system = \"x86_64-darwin\"; builder = \"/bin/sh\"; }; }; }",
    )
    .unwrap();
    let out = fleet_sim::run(fleet.server.yeet_cmd().args([
        "vm",
        "mac-1",
        "--flake",
        &format!("path:{}", mac.display()),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nix-darwin") && err.contains("NixOS hosts only"),
        "{err}"
    );
}
