//! Secrets through the API: what admins, viewers and hosts may do, what a host receives
//! (re-encrypted to its one-time recipient), interop with files the real `age` CLI wrote,
//! the check-in digest and the long-poll wake on rotation, hostile input, and that the
//! plaintext reaches neither the database nor the state directory.

use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Value, json};
use std::process::Command;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

/// A refused admin request: method, path, body, status, code, what it tries.
type AdminCase = (
    &'static str,
    String,
    Vec<u8>,
    StatusCode,
    &'static str,
    &'static str,
);

const MARKER: &[u8] = b"yeet-leak-marker-7f3a9c";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A host's fetch with a fresh one-time identity; the response and the decrypted secrets.
async fn fetch(
    api: &Api,
    host: &yeet_proto::Identity,
    names: &[&str],
) -> (Value, Vec<(String, i64, Vec<u8>)>) {
    let one_time = age::x25519::Identity::generate();
    let body =
        serde_json::to_vec(&json!({"recipient": one_time.to_public().to_string(), "names": names}))
            .unwrap();
    let v = api
        .ok("POST", paths::AGENT_SECRETS, &body, Sign::By(host))
        .await;
    let opened = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(s["ciphertext"].as_str().unwrap())
                .unwrap();
            let plain = yeet_proto::secrets::open(&one_time, &sealed).unwrap();
            (
                s["name"].as_str().unwrap().to_owned(),
                s["version"].as_i64().unwrap(),
                plain.to_vec(),
            )
        })
        .collect();
    (v, opened)
}

fn checkin_body(digest: Option<&str>, wait_secs: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"current_system": null, "booted_system": null,
        "facts": {"os": "linux", "arch": "x86_64", "agent_version": "t"},
        "wait_secs": wait_secs, "secrets_digest": digest}))
    .unwrap()
}

#[tokio::test]
async fn a_granted_host_receives_its_secret_and_no_other_host_does() {
    let api = Api::new(ServiceConfig::default()).await;
    let added = api.add_secret("db-password", MARKER, &["host-a"]).await;
    assert_eq!(added["version"], 1);
    assert_eq!(added["created_by"], "alice");
    assert_eq!(added["hosts"][0]["host"], "host-a");
    assert!(!added.to_string().contains("yeet-leak-marker"));

    let (v, opened) = fetch(&api, &api.host_a, &["db-password"]).await;
    assert_eq!(opened, vec![("db-password".into(), 1, MARKER.to_vec())]);
    assert_eq!(v["missing"], json!([]));
    // Another host asks for it, and for a name that does not exist: both are "missing",
    // so it cannot tell a secret it may not have from one that is not there.
    let (v, opened) = fetch(&api, &api.host_b, &["db-password", "no-such"]).await;
    assert!(opened.is_empty());
    assert_eq!(v["missing"], json!(["db-password", "no-such"]));

    // The listing says who fetched which version; it never carries content.
    let list = api
        .ok("GET", paths::SECRETS, b"", Sign::By(&api.viewer))
        .await;
    let grant = &list[0]["hosts"][0];
    assert_eq!(
        (grant["host"].clone(), grant["fetched_version"].clone()),
        (json!("host-a"), json!(1))
    );
    assert!(!list.to_string().contains("yeet-leak-marker"), "{list}");
}

#[tokio::test]
async fn rotation_grant_revoke_and_removal_are_recorded_with_their_author() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("token", b"v1", &[]).await;
    let (_, opened) = fetch(&api, &api.host_a, &["token"]).await;
    assert!(opened.is_empty(), "not granted yet");
    let hosts = serde_json::to_vec(&json!({"hosts": ["host-a", "host-b"]})).unwrap();
    api.ok(
        "POST",
        &paths::secret_grant("token"),
        &hosts,
        Sign::By(&api.admin),
    )
    .await;
    let recipient = api.recipient().await;
    let rotate = serde_json::to_vec(
        &json!({"ciphertext": b64(&yeet_proto::secrets::seal(&recipient, b"v2").unwrap())}),
    )
    .unwrap();
    let v = api
        .ok(
            "POST",
            &paths::secret_rotate("token"),
            &rotate,
            Sign::By(&api.admin),
        )
        .await;
    assert_eq!(v["version"], 2);
    let (_, opened) = fetch(&api, &api.host_b, &["token"]).await;
    assert_eq!(opened, vec![("token".into(), 2, b"v2".to_vec())]);
    let one = serde_json::to_vec(&json!({"hosts": ["host-b"]})).unwrap();
    let v = api
        .ok(
            "POST",
            &paths::secret_revoke("token"),
            &one,
            Sign::By(&api.admin),
        )
        .await;
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    let (_, opened) = fetch(&api, &api.host_b, &["token"]).await;
    assert!(opened.is_empty(), "revoked");
    let actions: Vec<(String, String)> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().into(),
                c["by"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("revoked", "alice"),
        ("rotated", "alice"),
        ("granted", "alice"),
        ("added", "alice"),
    ];
    assert_eq!(actions, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
    assert_eq!(v["history"][1]["detail"], "version 2", "{v}");
    api.ok("DELETE", &paths::secret("token"), b"", Sign::By(&api.admin))
        .await;
    let (v, opened) = fetch(&api, &api.host_a, &["token"]).await;
    assert!(opened.is_empty());
    assert_eq!(v["missing"], json!(["token"]));
    // The history outlives the secret, in the database.
    let changes = api.service.store().list_secret_changes(10).await.unwrap();
    assert_eq!(changes.first().map(|c| c.action.as_str()), Some("removed"));
}

#[tokio::test]
async fn files_encrypted_by_the_age_cli_are_accepted_binary_and_armored() {
    let api = Api::new(ServiceConfig::default()).await;
    let recipient = api.recipient().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "from the age CLI\n").unwrap();
    for (name, armor) in [("cli-binary", false), ("cli-armored", true)] {
        let out = dir.path().join(name);
        let status = Command::new("age")
            .args(["-r", &recipient])
            .args(armor.then_some("-a"))
            .arg("-o")
            .arg(&out)
            .arg(&plain)
            .status()
            .expect("the age CLI (apt-get install age)");
        assert!(status.success());
        let body = serde_json::to_vec(
            &json!({"name": name, "ciphertext": b64(&std::fs::read(&out).unwrap()), "hosts": ["host-a"]}),
        )
        .unwrap();
        api.ok("POST", paths::SECRETS, &body, Sign::By(&api.admin))
            .await;
    }
    let (_, opened) = fetch(&api, &api.host_a, &["cli-binary", "cli-armored"]).await;
    let texts: Vec<&[u8]> = opened.iter().map(|(_, _, p)| p.as_slice()).collect();
    assert_eq!(texts, [b"from the age CLI\n".as_slice(); 2]);
}

#[tokio::test]
async fn check_ins_carry_the_digest_and_a_rotation_wakes_a_held_one() {
    let api = std::sync::Arc::new(Api::new(ServiceConfig::default()).await);
    api.add_secret("k", b"one", &["host-a"]).await;
    let (fetched, _) = fetch(&api, &api.host_a, &["k"]).await;
    let digest = fetched["digest"].as_str().unwrap().to_owned();
    let v = api
        .ok(
            "POST",
            paths::CHECKIN,
            &checkin_body(Some(&digest), 0),
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(v["secrets_digest"], digest.as_str());
    // Host B is granted nothing: its digest is that of no secrets, not host A's.
    let b = api
        .ok(
            "POST",
            paths::CHECKIN,
            &checkin_body(None, 0),
            Sign::By(&api.host_b),
        )
        .await;
    assert_eq!(
        b["secrets_digest"],
        yeet_proto::secrets::versions_digest([])
    );

    // A held check-in with the current digest waits; a rotation answers it.
    let held = {
        let api = api.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let v = api
                .ok(
                    "POST",
                    paths::CHECKIN,
                    &checkin_body(Some(&digest), 30),
                    Sign::By(&api.host_a),
                )
                .await;
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "the check-in was not held");
    let recipient = api.recipient().await;
    let rotate = serde_json::to_vec(
        &json!({"ciphertext": b64(&yeet_proto::secrets::seal(&recipient, b"two").unwrap())}),
    )
    .unwrap();
    api.ok(
        "POST",
        &paths::secret_rotate("k"),
        &rotate,
        Sign::By(&api.admin),
    )
    .await;
    let (v, waited) = held.await.unwrap();
    assert!(waited < std::time::Duration::from_secs(20), "{waited:?}");
    assert_ne!(v["secrets_digest"], digest.as_str());
    assert_eq!(v["action"]["type"], "none");
    // A stale digest is answered at once.
    let started = std::time::Instant::now();
    api.ok(
        "POST",
        paths::CHECKIN,
        &checkin_body(Some(&digest), 30),
        Sign::By(&api.host_a),
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[tokio::test]
async fn hostile_secret_requests_are_refused_and_change_nothing() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("exists", b"x", &["host-a"]).await;
    let before = api.snapshot().await;
    let stranger = age::x25519::Identity::generate().to_public();
    let for_stranger = b64(&yeet_proto::secrets::seal(&stranger, b"x").unwrap());
    let recipient = api.recipient().await;
    let empty = b64(&yeet_proto::secrets::seal(&recipient, b"").unwrap());
    let huge = b64(&yeet_proto::secrets::seal(
        &recipient,
        &vec![1u8; yeet_proto::secrets::MAX_SECRET_BYTES + 1],
    )
    .unwrap());
    let valid = b64(&yeet_proto::secrets::seal(&recipient, b"x").unwrap());
    let truncated = {
        let mut bytes = yeet_proto::secrets::seal(&recipient, b"secret bytes").unwrap();
        bytes.truncate(bytes.len() - 4);
        b64(&bytes)
    };
    let add = |name: &str, ciphertext: &str, hosts: &[&str]| {
        serde_json::to_vec(&json!({"name": name, "ciphertext": ciphertext, "hosts": hosts}))
            .unwrap()
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let cases: Vec<AdminCase> = vec![
        (
            "POST",
            paths::SECRETS.into(),
            add("../etc", &valid, &[]),
            unprocessable,
            "invalid_secret_name",
            "escaping name",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("a\nb", &valid, &[]),
            unprocessable,
            "invalid_secret_name",
            "newline in name",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("new", "%%%", &[]),
            unprocessable,
            "invalid_secret",
            "not base64",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("new", &for_stranger, &[]),
            unprocessable,
            "invalid_secret",
            "encrypted to someone else",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("new", &empty, &[]),
            unprocessable,
            "invalid_secret",
            "empty",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("new", &huge, &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "huge",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("new", &truncated, &[]),
            unprocessable,
            "invalid_secret",
            "truncated upload",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("new", &valid, &["nobody"]),
            unprocessable,
            "unknown_host",
            "unknown host",
        ),
        (
            "POST",
            paths::SECRETS.into(),
            add("exists", &valid, &[]),
            StatusCode::CONFLICT,
            "secret_exists",
            "taken name",
        ),
        (
            "POST",
            paths::secret_rotate("nope"),
            serde_json::to_vec(&json!({"ciphertext": valid})).unwrap(),
            StatusCode::NOT_FOUND,
            "unknown_secret",
            "rotate unknown",
        ),
        (
            "POST",
            paths::secret_grant("nope"),
            serde_json::to_vec(&json!({"hosts": ["host-a"]})).unwrap(),
            StatusCode::NOT_FOUND,
            "unknown_secret",
            "grant unknown",
        ),
        (
            "POST",
            paths::secret_grant("exists"),
            serde_json::to_vec(&json!({"hosts": []})).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "grant to nobody",
        ),
        (
            "POST",
            paths::secret_revoke("exists"),
            serde_json::to_vec(&json!({"hosts": ["gone"]})).unwrap(),
            unprocessable,
            "unknown_host",
            "revoke from removed host",
        ),
        (
            "DELETE",
            paths::secret("nope"),
            vec![],
            StatusCode::NOT_FOUND,
            "unknown_secret",
            "remove unknown",
        ),
        (
            "DELETE",
            paths::secret("a%2Fb"),
            vec![],
            unprocessable,
            "invalid_secret_name",
            "encoded slash",
        ),
    ];
    for (method, path, body, status, code, case) in cases {
        api.refused(
            build(method, &path, &body, Sign::By(&api.admin), None),
            status,
            code,
            case,
        )
        .await;
    }
    let fetch_body = |recipient: &str, names: Vec<String>| {
        serde_json::to_vec(&json!({"recipient": recipient, "names": names})).unwrap()
    };
    let one_time = age::x25519::Identity::generate().to_public().to_string();
    let ssh_recipient = api.host_a.public().to_openssh();
    let too_many: Vec<String> = (0..=yeet_proto::secrets::MAX_SECRETS)
        .map(|i| format!("s{i}"))
        .collect();
    let host_cases: Vec<(Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            fetch_body("age1garbage", vec!["exists".into()]),
            unprocessable,
            "invalid_recipient",
            "garbage recipient",
        ),
        (
            fetch_body(&ssh_recipient, vec!["exists".into()]),
            unprocessable,
            "invalid_recipient",
            "not a one-time X25519 recipient",
        ),
        (
            fetch_body(&one_time, vec!["../../etc/shadow".into()]),
            unprocessable,
            "invalid_secret_name",
            "escaping name",
        ),
        (
            fetch_body(&one_time, too_many),
            unprocessable,
            "too_many_secrets",
            "too many names",
        ),
    ];
    for (body, status, code, case) in host_cases {
        api.refused(
            build(
                "POST",
                paths::AGENT_SECRETS,
                &body,
                Sign::By(&api.host_a),
                None,
            ),
            status,
            code,
            case,
        )
        .await;
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed state"
    );
}

#[tokio::test]
async fn a_replayed_fetch_is_refused() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("k", b"x", &["host-a"]).await;
    let body = serde_json::to_vec(&json!({"recipient": age::x25519::Identity::generate().to_public().to_string(), "names": ["k"]})).unwrap();
    let first = build(
        "POST",
        paths::AGENT_SECRETS,
        &body,
        Sign::By(&api.host_a),
        None,
    );
    let mut replay = axum::http::Request::builder()
        .method("POST")
        .uri(paths::AGENT_SECRETS)
        .body(axum::body::Body::from(body.clone()))
        .unwrap();
    *replay.headers_mut() = first.headers().clone();
    let (s, _) = api.send(first).await;
    assert_eq!(s, StatusCode::OK);
    api.refused(
        replay,
        StatusCode::UNAUTHORIZED,
        "replayed_nonce",
        "replayed fetch",
    )
    .await;
}

#[tokio::test]
async fn plaintext_reaches_neither_the_database_nor_the_state_directory() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("leak", MARKER, &["host-a"]).await;
    let recipient = api.recipient().await;
    let rotate = serde_json::to_vec(
        &json!({"ciphertext": b64(&yeet_proto::secrets::seal(&recipient, MARKER).unwrap())}),
    )
    .unwrap();
    api.ok(
        "POST",
        &paths::secret_rotate("leak"),
        &rotate,
        Sign::By(&api.admin),
    )
    .await;
    fetch(&api, &api.host_a, &["leak"]).await;
    api.service.store().close().await;
    for dir in [api._db.dir(), api.cache_dir.path()] {
        for entry in walk(dir) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER),
                "{} holds the plaintext",
                entry.display()
            );
        }
    }
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(api.cache_dir.path().join("secrets.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn the_secrets_key_must_be_private_and_the_fleets() {
    use std::os::unix::fs::PermissionsExt;
    use yeet_server::service::secrets::{SecretKeeper, SecretKeyError};
    let db = super::common::TestDb::sqlite().await;
    let store = db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.key");
    let keeper = SecretKeeper::load(&first, true, &store).await.unwrap();
    let recipient = keeper.recipient().to_owned();
    // Loaded again: the same key.
    let again = SecretKeeper::load(&first, true, &store).await.unwrap();
    assert_eq!(again.recipient(), recipient);
    // Readable by others: refused, with the fix.
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SecretKeeper::load(&first, true, &store)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SecretKeyError::Exposed(..)), "{err}");
    assert!(err.to_string().contains("chmod 0400"), "{err}");
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o400)).unwrap();
    // A replica without the key does not make a new one: the fleet's secrets would be
    // unreadable to it.
    let err = SecretKeeper::load(&dir.path().join("missing.key"), true, &store)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SecretKeyError::Missing(..)), "{err}");
    assert!(!dir.path().join("missing.key").exists());
    // A replica with another key is refused, naming both recipients.
    let other = dir.path().join("other.key");
    let other_store = super::common::TestDb::sqlite().await;
    let other_keeper = SecretKeeper::load(&other, true, &other_store.open().await)
        .await
        .unwrap();
    let err = SecretKeeper::load(&other, true, &store)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains(&recipient) && err.to_string().contains(other_keeper.recipient()),
        "{err}"
    );
    // A corrupt key file is a clear error, not a new key.
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&first, "AGE-SECRET-KEY-1garbage\n").unwrap();
    let err = SecretKeeper::load(&first, true, &store)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SecretKeyError::Invalid(..)), "{err}");
}

async fn retag(api: &Api, host: &str, body: Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    api.ok(
        "POST",
        &paths::host_tags(host),
        &bytes,
        Sign::By(&api.admin),
    )
    .await;
}

/// The digest of the secrets granted to `host` now, as its check-in answer gives it.
async fn granted_digest(api: &Api, host: &yeet_proto::Identity) -> String {
    let v = api
        .ok(
            "POST",
            paths::CHECKIN,
            &checkin_body(None, 0),
            Sign::By(host),
        )
        .await;
    v["secrets_digest"].as_str().unwrap_or_default().to_owned()
}

/// A secret granted to a tag reaches the hosts that carry it, as their tags change, and
/// their check-in digests change with it; a scoped admin grants only to their own tags.
#[tokio::test]
async fn a_secret_granted_to_a_tag_follows_the_hosts_tags() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("wifi", b"pass", &[]).await;
    retag(&api, "host-a", json!({"add": ["kiosk"]})).await;
    let a_before = granted_digest(&api, &api.host_a).await;
    let b_before = granted_digest(&api, &api.host_b).await;
    let granted = api
        .ok(
            "POST",
            &paths::secret_grant("wifi"),
            br#"{"tags": ["kiosk"]}"#,
            Sign::By(&api.admin),
        )
        .await;
    assert_eq!(granted["tags"], json!(["kiosk"]));
    assert_eq!(granted["hosts"][0]["host"], "host-a");
    assert_eq!(granted["hosts"][0]["via_tag"], "kiosk");
    assert_ne!(
        granted_digest(&api, &api.host_a).await,
        a_before,
        "host-a was not told"
    );
    assert_eq!(granted_digest(&api, &api.host_b).await, b_before);
    // host-b gains the tag and the secret; host-a loses both.
    retag(&api, "host-b", json!({"add": ["kiosk"]})).await;
    retag(&api, "host-a", json!({"remove": ["kiosk"]})).await;
    let listed = api
        .ok("GET", paths::SECRETS, b"", Sign::By(&api.viewer))
        .await;
    let holders: Vec<&str> = listed[0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["host"].as_str())
        .collect();
    assert_eq!(holders, ["host-b"]);
    assert_eq!(
        granted_digest(&api, &api.host_a).await,
        a_before,
        "host-a kept a secret its tag gave"
    );
    assert_ne!(granted_digest(&api, &api.host_b).await, b_before);
    // A scoped admin may grant to their own tags only.
    let sam = identity();
    yeet_server::service::users::add_user(
        api.service.store(),
        "sam",
        &sam.public().to_openssh(),
        yeet_proto::api::Role::Admin,
        &["kiosk".to_owned()],
        &crate::common::ev(),
    )
    .await
    .unwrap();
    let (s, v) = api
        .call(
            "POST",
            &paths::secret_grant("wifi"),
            br#"{"tags": ["db"]}"#,
            Sign::By(&sam),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "a scoped admin grants to a foreign tag",
    );
    let (s, v) = api
        .call(
            "POST",
            &paths::secret_grant("wifi"),
            br#"{"tags": ["Bad Tag"]}"#,
            Sign::By(&api.admin),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_tag",
        "a bad tag",
    );
}
