//! The Nix files: every one parses (`nix-instantiate --parse`), and the modules' settings
//! files (plain Nix, evaluated here with every option set) write only keys that the agent's
//! and the server's own `check-config` accept, one for each key they accept. nixpkgs is not
//! available here, so the modules themselves cannot be evaluated (see the README).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && !matches!(name.as_str(), "target" | ".git") {
            nix_files(&path, out);
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    nix_files(&root, &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    for expected in [
        "flake.nix",
        "nix/package.nix",
        "nix/modules/agent.nix",
        "nix/modules/server.nix",
        "nix/modules/darwin-agent.nix",
        "nix/template/flake.nix",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is missing: {names:?}"
        );
    }
    for file in &files {
        let out = std::process::Command::new("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .output()
            .expect("nix-instantiate (nix-bin)");
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Evaluates a plain Nix expression (no nixpkgs) to JSON.
fn eval_json(expr: &str) -> serde_json::Value {
    let out = std::process::Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", expr])
        .output()
        .expect("nix-instantiate (nix-bin)");
    assert!(
        out.status.success(),
        "{expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes `settings` as TOML (as the module's `pkgs.formats.toml` does) and runs
/// `BINARY check-config` on it: (accepted, stdout + stderr).
fn check_config(binary: &str, settings: &serde_json::Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let value: toml::Value = serde_json::from_value(settings.clone()).unwrap();
    std::fs::write(&file, toml::to_string(&value).unwrap()).unwrap();
    let out = fleet_sim::run(
        std::process::Command::new(fleet_sim::bin(binary))
            .arg("check-config")
            .arg(&file),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The keys `BINARY check-config --list-keys` accepts.
fn accepted_keys(binary: &str) -> std::collections::BTreeSet<String> {
    let out = fleet_sim::run(
        std::process::Command::new(fleet_sim::bin(binary)).args(["check-config", "--list-keys"]),
    );
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn keys_of(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn modules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nix/modules")
}

/// The agent module, with every option set: `overrides` is merged over that.
fn agent_settings(overrides: &str) -> serde_json::Value {
    let file = modules_dir().join("agent-settings.nix");
    eval_json(&format!(
        r#"import {} ({{
          server = "https://yeet.example.org:8470";
          trustedKeys = [ "fleet-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=" ];
          activationMode = "boot";
          key = "/run/secrets/yeet-agent-key";
          caCert = "/etc/ssl/yeet-ca.pem";
          hostname = "web-1";
          pollInterval = 30;
          longPoll = 55;
          confirmTimeout = 120;
          healthCheck = "systemctl is-system-running --wait";
          allowedCacheSchemes = [ "https" "s3" ];
          maxCheckinInterval = 300;
          socketGroup = "yeet";
          adminGroup = "wheel";
          suggestTags = [ "kiosk" "eu" ];
          reboot = "in-window";
          settings = {{ }};
        }} // {overrides})"#,
        file.display()
    ))
}

#[test]
fn every_agent_setting_the_module_writes_is_accepted_and_typos_fail_the_build() {
    let all = agent_settings("{ }");
    // Every key the agent accepts has an option, and the module writes nothing else.
    assert_eq!(keys_of(&all), accepted_keys("yeet-agent"));
    let (ok, text) = check_config("yeet-agent", &all);
    assert!(ok, "{text}");
    // A misspelt key in `settings` is refused, by name.
    let (ok, text) = check_config(
        "yeet-agent",
        &agent_settings("{ settings = { poll_intervall_secs = 5; }; }"),
    );
    assert!(!ok && text.contains("poll_intervall_secs"), "{text}");
    // A private key that a Nix path put into the store.
    let (ok, text) = check_config(
        "yeet-agent",
        &agent_settings(r#"{ key = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-agent_key"; }"#),
    );
    assert!(!ok && text.contains("Nix store"), "{text}");
    // The template's placeholder key: the build says what to put there.
    let (ok, text) = check_config(
        "yeet-agent",
        &agent_settings(
            r#"{ trustedKeys = [ "fleet-1:REPLACE-WITH-THE-CONTENT-OF-cache-key.pub" ]; }"#,
        ),
    );
    assert!(!ok && text.contains("cache-key.pub"), "{text}");
    // A value of the wrong type.
    let (ok, text) = check_config("yeet-agent", &agent_settings(r#"{ longPoll = "soon"; }"#));
    assert!(!ok && text.contains("long_poll_secs"), "{text}");
    // A reboot policy the agent does not know.
    let (ok, text) = check_config("yeet-agent", &agent_settings(r#"{ reboot = "always"; }"#));
    assert!(!ok && text.contains("reboot"), "{text}");
    // A tag outside the alphabet is named at build time, not dropped at run time.
    let (ok, text) = check_config(
        "yeet-agent",
        &agent_settings(r#"{ suggestTags = [ "Kiosk" ]; }"#),
    );
    assert!(
        !ok && text.contains("Kiosk") && text.contains("suggest_tags"),
        "{text}"
    );
}

/// The server module, with every option set: `overrides` is merged over that.
fn server_settings(overrides: &str) -> serde_json::Value {
    let file = modules_dir().join("server-settings.nix");
    eval_json(&format!(
        r#"let
          s = import {};
          tuning = builtins.listToAttrs (map (t: {{
            name = builtins.elemAt t 0;
            value = if builtins.elemAt t 2 == "bool" then true else 7;
          }}) s.tuning);
        in s.render ({{
          address = "0.0.0.0";
          port = 8470;
          database = "postgres://yeet@db.internal/yeet";
          tls = {{ certificate = "/etc/ssl/yeet.pem"; key = "/run/secrets/yeet-tls-key"; }};
          trustedCacheKeys = [ "fleet-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=" ];
          caches = [ "https://cache.example.org" ];
          publicUrls = [ "https://yeet.example.org" ];
          osquery = {{ log_retention_days = 90; max_open_carves = 2; }};
          auditLogFile = "/var/log/yeet-server/audit.jsonl";
          defaultRolloutPolicy = "prod";
          rolloutPolicies = {{ prod = {{ waves = [ "tag:canary" "10%" "100%" ]; bake_secs = 900; max_failures = "1"; on_failure = "rollback"; health = [ "failed-units=0" ]; }}; }};
          maintenanceWindows = {{ nights = {{ tags = [ "prod" ]; days = "mon-fri"; from = "02:00"; to = "04:00"; tz = "Europe/Zurich"; }}; }};
          settings = {{ }};
        }} // tuning // {overrides})"#,
        file.display()
    ))
}

#[test]
fn every_server_setting_the_module_writes_is_accepted_and_typos_fail_the_build() {
    let all = server_settings("{ }");
    // The secrets key reaches the server as a systemd credential (`secretsKey`), not as a
    // setting; `settings.secrets_key` remains for other service managers.
    let mut accepted = accepted_keys("yeet-server");
    assert!(accepted.remove("secrets_key"));
    assert_eq!(keys_of(&all), accepted);
    let (ok, text) = check_config("yeet-server", &all);
    assert!(ok, "{text}");
    let (ok, text) = check_config(
        "yeet-server",
        &server_settings("{ settings = { max_conections = 5; }; }"),
    );
    assert!(!ok && text.contains("max_conections"), "{text}");
    let (ok, text) = check_config(
        "yeet-server",
        &server_settings(
            r#"{ tls = { certificate = "/etc/ssl/yeet.pem"; key = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-key.pem"; }; }"#,
        ),
    );
    assert!(!ok && text.contains("Nix store"), "{text}");
    let (ok, text) = check_config(
        "yeet-server",
        &server_settings(r#"{ publicUrls = [ "yeet.example.org" ]; }"#),
    );
    assert!(!ok && text.contains("public_urls"), "{text}");
    // A malformed policy or window fails the build, naming it.
    let (ok, text) = check_config(
        "yeet-server",
        &server_settings(r#"{ rolloutPolicies = { prod = { waves = [ "canary" ]; }; }; }"#),
    );
    assert!(!ok && text.contains("tag:TAG"), "{text}");
    let (ok, text) = check_config(
        "yeet-server",
        &server_settings(
            r#"{ maintenanceWindows = { nights = { tags = [ "prod" ]; days = "mon-fri"; from = "2am"; to = "04:00"; tz = "UTC"; }; }; }"#,
        ),
    );
    assert!(!ok && text.contains("maintenance_windows.nights"), "{text}");
    // Reachable from other machines, it must know its URLs.
    let (ok, text) = check_config("yeet-server", &server_settings("{ publicUrls = [ ]; }"));
    assert!(!ok && text.contains("set public_urls"), "{text}");
}

/// What `yeet.secrets` writes (the modules' and the test systems' shared code) is what the
/// agent parses, defaults included; and the agent's check of owners and modes is the one
/// that applies to it.
#[test]
fn the_secrets_manifest_the_modules_write_is_what_the_agent_reads() {
    let file = modules_dir().join("secrets-manifest.nix");
    let manifest = |secrets: &str| {
        let text = eval_json(&format!("(import {}).manifest {secrets}", file.display()));
        yeet_proto::secrets::Manifest::parse(text.as_str().unwrap().as_bytes())
    };
    let m = manifest(
        r#"{ db-password = { owner = "postgres"; mode = "0440"; restartUnits = [ "postgresql.service" ]; }; tls = { path = "/etc/nginx/tls.key"; group = "nginx"; }; }"#,
    )
    .unwrap();
    let db = &m.secrets["db-password"];
    assert_eq!(
        (db.owner.as_str(), db.group.as_str(), db.mode_bits()),
        ("postgres", "root", Ok(0o440))
    );
    assert_eq!(db.path.as_deref(), Some("/run/yeet/secrets/db-password"));
    assert_eq!(db.restart_units, ["postgresql.service"]);
    assert_eq!(m.secrets["tls"].path.as_deref(), Some("/etc/nginx/tls.key"));
    // A bad value in the configuration fails in the agent's parser, by name.
    let err = manifest(r#"{ k = { mode = "4755"; }; }"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("permission bits"), "{err}");
}

#[test]
fn the_polkit_policy_is_well_formed_xml_naming_every_action() {
    let policy = eval_json(&format!(
        "import {}",
        modules_dir().join("agent-polkit.nix").display()
    ));
    let xml = policy.as_str().unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    // An independent parser: Python's.
    let mut parse = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom as m; d = m.parseString(sys.stdin.read()); \
             print(' '.join(a.getAttribute('id') for a in d.getElementsByTagName('action')))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    parse
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = parse.wait_with_output().unwrap();
    assert!(out.status.success(), "the policy is not well-formed XML");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "org.yeet.agent.detach org.yeet.agent.switch org.yeet.agent.force-switch org.yeet.agent.attach"
    );
}

/// The osqueryd flags the agent module gives services.osquery name the server's endpoints
/// (`osquery_tls::paths`, which the server routes) and its https host, and the enroll secret
/// where yeet delivers it; an http:// server is refused at evaluation, by name.
#[test]
fn the_osquery_flags_point_at_the_servers_endpoints() {
    let file = modules_dir().join("agent-osquery.nix");
    let flags = eval_json(&format!(
        r#"import {} {{ serverUrl = "https://yeet.example.org:8470/"; secretPath = "/run/yeet/secrets/osquery-enroll"; caCert = "/etc/ssl/yeet-ca.pem"; }}"#,
        file.display()
    ));
    use osquery_tls::paths;
    for (flag, path) in [
        ("enroll_tls_endpoint", paths::ENROLL),
        ("config_tls_endpoint", paths::CONFIG),
        ("logger_tls_endpoint", paths::LOG),
        ("distributed_tls_read_endpoint", paths::DISTRIBUTED_READ),
        ("distributed_tls_write_endpoint", paths::DISTRIBUTED_WRITE),
        ("carver_start_endpoint", paths::CARVE_INIT),
        ("carver_continue_endpoint", paths::CARVE_BLOCK),
    ] {
        assert_eq!(flags[flag], path, "{flag}");
    }
    assert_eq!(flags["tls_hostname"], "yeet.example.org:8470");
    assert_eq!(flags["tls_server_certs"], "/etc/ssl/yeet-ca.pem");
    assert_eq!(
        flags["enroll_secret_path"],
        "/run/yeet/secrets/osquery-enroll"
    );
    let out = std::process::Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr"])
        .arg(format!(
            r#"import {} {{ serverUrl = "http://yeet:8470"; secretPath = "/s"; }}"#,
            file.display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an https://"));
}
