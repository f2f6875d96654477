//! `yeet publish` to the embedded cache with real Nix: signatures are checked before any
//! byte is uploaded, a tampered store path is never published, NARs are zstd (or plain)
//! and hosts' Nix reads them, a publish that changes nothing creates no release, and
//! `--json` says what was pushed and skipped.

#![allow(clippy::unwrap_used)]

mod common;

use common::CONVERGE;
use fleet_sim::sim::{Fleet, Variant};
use serde_json::Value;
use std::path::Path;

/// Every file in the embedded cache (narinfos and NARs), as paths relative to it.
fn cache_files(cache: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["", "nar"] {
        for e in std::fs::read_dir(cache.join(dir)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_file() && name != "nix-cache-info" {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

/// Runs `yeet publish ARGS`; returns whether it succeeded, its stdout and its stderr.
fn publish(fleet: &Fleet, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = fleet.server.yeet_cmd();
    cmd.arg("publish").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = fleet_sim::run(&mut cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh store path (content unique to this run) that nothing else uses.
fn fresh_store_path(dir: &Path) -> String {
    let src = dir.join("tamper-me");
    std::fs::create_dir_all(&src).unwrap();
    let unique = format!("{:?}", std::time::SystemTime::now());
    std::fs::write(src.join("file"), unique).unwrap();
    let out = fleet_sim::run(
        std::process::Command::new("nix-store")
            .arg("--add")
            .arg(&src),
    );
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn publishing_checks_before_uploading_and_reports_what_it_did() {
    let fleet = Fleet::new(&["web-1"], 30);
    let cache = fleet.server.dir.path().join("state/cache");
    let key = fleet.cache.secret_key.display().to_string();
    let v1 = fleet.build("system-publish-1", Variant::Good, "6.1");
    let pair = format!("web-1={v1}");

    // Unsigned: refused before a single NAR goes up.
    let (ok, _, err) = publish(&fleet, &["--path", &pair], &[]);
    assert!(!ok, "an unsigned closure was published");
    assert!(
        err.contains("not signed by a key the server trusts")
            && err.contains("nothing was uploaded"),
        "{err}"
    );
    assert_eq!(
        cache_files(&cache),
        Vec::<String>::new(),
        "files were uploaded"
    );

    // A signing key the server does not trust is refused at once, with the names it trusts.
    let other = fleet.dir().join("other-key.sec");
    let out = fleet_sim::run(
        std::process::Command::new("nix-store")
            .args(["--generate-binary-cache-key", "other-1"])
            .arg(&other)
            .arg(fleet.dir().join("other-key.pub")),
    );
    assert!(out.status.success());
    let (ok, _, err) = publish(
        &fleet,
        &[
            "--path",
            &pair,
            "--signing-key",
            &other.display().to_string(),
        ],
        &[],
    );
    let trusted_name = fleet.cache.public_key.split(':').next().unwrap();
    assert!(
        !ok && err.contains("(other-1) is not one the server trusts")
            && err.contains(&format!("trusts only keys named {trusted_name}"))
            && err.contains("nothing was uploaded"),
        "{err}"
    );
    assert_eq!(cache_files(&cache), Vec::<String>::new());

    // A store path whose files no longer match what the store registered is never packed.
    let tampered = fresh_store_path(fleet.dir());
    let file = Path::new(&tampered).join("file");
    let out = fleet_sim::run(std::process::Command::new("chmod").args(["-R", "u+w", &tampered]));
    assert!(out.status.success());
    std::fs::write(&file, "tampered after it was registered").unwrap();
    let (ok, _, err) = publish(
        &fleet,
        &[
            "--path",
            &format!("web-1={tampered}"),
            "--signing-key",
            &key,
        ],
        &[],
    );
    // nix-store --export checks the hash itself; the packer checks it again.
    assert!(
        !ok && err.contains(&tampered)
            && (err.contains("has changed")
                || err.contains("does not match the store's registration")),
        "{err}"
    );
    assert_eq!(cache_files(&cache), Vec::<String>::new());

    // A typo in a host's name is refused before anything is uploaded, naming the fleet.
    let (ok, _, err) = publish(
        &fleet,
        &["--path", &format!("web1={v1}"), "--signing-key", &key],
        &[],
    );
    assert!(
        !ok && err.contains("not approved in the fleet: web1")
            && err.contains("approved hosts: web-1"),
        "{err}"
    );
    assert_eq!(
        cache_files(&cache),
        Vec::<String>::new(),
        "uploaded for a host the fleet does not have"
    );

    // Signed: the closure goes up as zstd, and --json says what happened. The system is
    // named by its `./result` link, as after `nix build`.
    let result = fleet.dir().join("result");
    std::os::unix::fs::symlink(&v1, &result).unwrap();
    let closure = fleet_sim::run(std::process::Command::new("nix-store").args(["-qR", &v1]));
    let closure_size = String::from_utf8_lossy(&closure.stdout).lines().count();
    let (ok, out, err) = publish(
        &fleet,
        &["--path", &format!("web-1={}", result.display()), "--json"],
        &[("YEET_SIGNING_KEY", &key)],
    );
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["systems"]["web-1"], v1.as_str(), "{report}");
    assert!(report["release"]["id"].is_i64(), "{report}");
    assert_eq!(report["changed_hosts"], serde_json::json!(["web-1"]));
    assert_eq!(report["push"]["closure_paths"], closure_size);
    assert_eq!(report["push"]["pushed_paths"], closure_size);
    assert_eq!(report["push"]["skipped_paths"], 0);
    assert!(
        report["push"]["pushed_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    let files = cache_files(&cache);
    let nars: Vec<&String> = files.iter().filter(|f| f.starts_with("nar/")).collect();
    assert_eq!(nars.len(), closure_size, "{files:?}");
    assert!(nars.iter().all(|f| f.ends_with(".nar.zst")), "{files:?}");
    fleet.wait_for_activation("web-1", 1, CONVERGE);
    assert_eq!(
        fleet.hosts[0].current_system().as_deref(),
        Some(v1.as_str())
    );

    // The same publish again changes no host: nothing is pushed, no release is created.
    let releases = |fleet: &Fleet| fleet.server.yeet_json::<Vec<Value>>(&["releases"]).len();
    let before = releases(&fleet);
    let (ok, _, err) = publish(&fleet, &["--path", &pair, "--signing-key", &key], &[]);
    assert!(ok && err.contains("no host's system changes"), "{err}");
    assert_eq!(releases(&fleet), before);
    let (ok, out, err) = publish(&fleet, &["--path", &pair, "--allow-empty", "--json"], &[]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["push"]["pushed_paths"], 0, "{report}");
    assert_eq!(report["push"]["skipped_paths"], closure_size);
    assert_eq!(releases(&fleet), before + 1);

    // Uncompressed NARs, chosen by the environment, are read by the host's Nix as well.
    let v2 = fleet.build("system-publish-2", Variant::Good, "6.2");
    let (ok, _, err) = publish(
        &fleet,
        &["--path", &format!("web-1={v2}"), "--signing-key", &key],
        &[("YEET_COMPRESSION", "none")],
    );
    assert!(ok, "{err}");
    let hash = v2
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .unwrap();
    let narinfo = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    assert!(narinfo.contains("Compression: none"), "{narinfo}");
    fleet.wait_for_activation("web-1", 2, CONVERGE);
    assert_eq!(
        fleet.hosts[0].current_system().as_deref(),
        Some(v2.as_str())
    );
}

/// A publish killed mid-upload keeps what it finished: the re-run uploads only the rest
/// (counted in paths and bytes), and the release it then creates converges.
#[test]
fn an_interrupted_publish_resumes_where_it_stopped() {
    let fleet = Fleet::new(&["web-1"], 30);
    let cache = fleet.server.dir.path().join("state/cache");
    // 40 paths of 4 MiB of random bytes (no compressor shrinks them), all referenced by
    // one top path: 160 MiB, enough to stop part-way.
    let top =
        fleet_sim::random_closure(40, 4 << 20, &fleet.dir().display().to_string(), fleet.dir());
    let key = fleet.cache.secret_key.display().to_string();
    let path_arg = format!("web-1={top}");
    let args = ["publish", "--path", &path_arg, "--signing-key", &key];

    let files = |dir: &std::path::Path, suffix: &str| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                    .count()
            })
            .unwrap_or(0)
    };
    let narinfos = || files(&cache, ".narinfo");
    let nars = || files(&cache.join("nar"), ".nar.zst");
    let (before, nars_before) = (narinfos(), nars());
    let mut first = fleet
        .server
        .yeet_cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed (as by Ctrl-C, or a CI runner stopped) while NARs are still going up: once a
    // quarter of them are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while nars() < nars_before + 10 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the publish ended before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no path was published"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let kept = narinfos() - before;
    assert!(
        (5..41).contains(&kept),
        "{kept} paths visible after the kill, with {} NARs up",
        nars() - nars_before
    );

    let (ok, stdout, stderr) = publish(&fleet, &[&args[1..], &["--json"]].concat(), &[]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let push = &report["push"];
    let (pushed, skipped) = (
        push["pushed_paths"].as_u64().unwrap(),
        push["skipped_paths"].as_u64().unwrap(),
    );
    assert_eq!(
        pushed + skipped,
        push["closure_paths"].as_u64().unwrap(),
        "{report}"
    );
    // Every path the killed publish made visible is skipped, with its bytes.
    assert!(skipped >= kept as u64, "{kept} kept, {report}");
    assert_eq!(pushed as usize, 41 - kept, "{report}");
    let left = (41 - kept as u64) * (4 << 20);
    assert!(
        push["pushed_nar_bytes"].as_u64().unwrap() < left,
        "{report}"
    );
    assert!(report["release"]["id"].as_i64().is_some(), "{report}");
    // The cache holds the whole closure, signed: Nix copies it into an empty store.
    let fresh = fleet.dir().join("fresh-store");
    let copied = fleet_sim::run(
        std::process::Command::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--from",
            ])
            .arg(format!("{}/cache", fleet.server.url))
            .arg("--to")
            .arg(format!("local?root={}", fresh.display()))
            .args(["--option", "trusted-public-keys", &fleet.cache.public_key])
            .arg(&top),
    );
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
}

/// An upload the server refuses part-way through a closure ends the publish at once with
/// the server's reason, although `nix-store --export` still has megabytes to send: the
/// export is cut off, not waited for (a publish used to hang here forever).
#[test]
fn a_refused_upload_ends_the_publish_with_the_servers_reason() {
    let server = fleet_sim::Server::start(fleet_sim::ServerOptions {
        config: "max_upload_bytes = 1048576\n".into(),
        ..Default::default()
    });
    server.approved_host("web-1");
    // 12 paths of 2 MiB of random bytes: each NAR is over the limit, and each export
    // stream has far more than a pipe holds behind the first.
    let top = fleet_sim::random_closure(12, 2 << 20, "refused-upload", server.dir.path());
    let mut publish = server
        .yeet_cmd()
        .args(["publish", "--path", &format!("web-1={top}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while publish.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            publish.kill().unwrap();
            panic!("the publish still ran 60 s after its first upload was refused");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = publish.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("limited to 1048576 bytes") && stderr.contains("max_upload_bytes"),
        "{stderr}"
    );
    // The export's own complaint about the pipe closed on it is not what is shown.
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    let desired: Value = server.yeet_json(&["status"]);
    assert!(desired[0]["desired_system"].is_null(), "{desired}");
}
