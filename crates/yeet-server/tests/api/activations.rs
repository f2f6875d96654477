//! Hosts checking in and reporting: removed keys, renames, activation history and logs,
//! long-polls.

use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use yeet_proto::Identity;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

#[tokio::test]
async fn removed_host_key_stops_working_at_once_and_renames_follow() {
    let api = Api::new(ServiceConfig::default()).await;
    let checkin = br#"{"current_system": null, "facts": {"os":"","arch":"","agent_version":""}}"#;
    let (s, v) = api
        .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!((s, v["host"].as_str()), (StatusCode::OK, Some("host-a")));
    let (s, _) = api
        .call(
            "POST",
            &paths::host_rename("host-a"),
            br#"{"new_name": "web"}"#,
            Sign::By(&api.admin),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = api
        .ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(v["host"].as_str(), Some("web"), "{v}");
    let (s, _) = api
        .call("DELETE", &paths::host("web"), b"", Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK);
    api.refused(
        build("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a), None),
        StatusCode::UNAUTHORIZED,
        "unknown_key",
        "removed host checks in",
    )
    .await;
}

#[tokio::test]
async fn activation_reports_build_a_history_and_the_latest_log() {
    let api = Api::new(ServiceConfig::default()).await;
    let report = |result: &str, log: &str| {
        serde_json::to_vec(&json!({"store_path": PATH_A, "release_id": 1, "result": result, "reason": format!("r-{result}"),
                                   "started_at": 10, "finished_at": 20, "reboot_required": result == "confirmed",
                                   "log_gzip_base64": gzip_base64(log)})).unwrap()
    };
    api.refused(
        build(
            "GET",
            &paths::host_log("host-a"),
            b"",
            Sign::By(&api.viewer),
            None,
        ),
        StatusCode::NOT_FOUND,
        "no_activation",
        "log before any activation",
    )
    .await;
    for (result, log) in [("rolled-back", "first log"), ("confirmed", "second log")] {
        api.ok(
            "POST",
            paths::REPORT,
            &report(result, log),
            Sign::By(&api.host_a),
        )
        .await;
    }
    let history = api
        .ok(
            "GET",
            &paths::host_activations("host-a"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    let results: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["confirmed", "rolled-back"]);
    assert_eq!(history[0]["reboot_required"], true);
    let log = api
        .ok(
            "GET",
            &paths::host_log("host-a"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(
        (log["log"].as_str(), log["activation"]["reason"].as_str()),
        (Some("second log"), Some("r-confirmed"))
    );
    // host-b has its own (empty) history.
    let other = api
        .ok(
            "GET",
            &paths::host_activations("host-b"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(other, json!([]));

    // Broken reports: each refused, none recorded.
    let bomb = gzip_base64(&"a".repeat(2 << 20));
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    #[rustfmt::skip]
    let broken = [
        (json!({"log_gzip_base64": "%%%"}), unprocessable, "invalid_log", "bad base64"),
        (json!({"log_gzip_base64": bomb}), unprocessable, "log_too_large", "gzip bomb"),
        (json!({"log_gzip_base64": "", "result": "exploded"}), StatusCode::BAD_REQUEST, "invalid_json", "unknown result"),
    ];
    for (changes, status, code, case) in broken {
        let mut bad = serde_json::from_slice::<Value>(&report("failed", "x")).unwrap();
        for (key, value) in changes.as_object().unwrap() {
            bad[key] = value.clone();
        }
        let body = serde_json::to_vec(&bad).unwrap();
        let req = build("POST", paths::REPORT, &body, Sign::By(&api.host_a), None);
        api.refused(req, status, code, case).await;
    }
    let history = api
        .ok(
            "GET",
            &paths::host_activations("host-a"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(
        history.as_array().unwrap().len(),
        2,
        "a refused report was stored"
    );
}

/// Starts a check-in by `host` that asks to be held 30 s, reporting `current_system`.
fn held_checkin(
    api: &Arc<Api>,
    host: fn(&Api) -> &Identity,
    current_system: Option<&'static str>,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let api = api.clone();
    tokio::spawn(async move {
        let body = serde_json::to_vec(&json!({"current_system": current_system, "facts": {"os":"","arch":"","agent_version":""}, "wait_secs": 30})).unwrap();
        api.send(build(
            "POST",
            paths::CHECKIN,
            &body,
            Sign::By(host(&api)),
            None,
        ))
        .await
    })
}

#[tokio::test]
async fn a_host_holds_one_long_poll_at_a_time() {
    let api = Arc::new(Api::new(ServiceConfig::default()).await);
    let first = held_checkin(&api, |a| &a.host_a, None);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!first.is_finished(), "the first check-in was not held");
    // A second held check-in by the same key releases the first at once.
    let second = held_checkin(&api, |a| &a.host_a, None);
    let (s, v) = tokio::time::timeout(std::time::Duration::from_secs(10), first)
        .await
        .expect("the first check-in was still held after a second one began")
        .unwrap();
    assert_eq!(
        (s, v["action"]["type"].as_str()),
        (StatusCode::OK, Some("none"))
    );
    // Another host's held check-in is unaffected by either.
    let other = held_checkin(&api, |a| &a.host_b, None);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!second.is_finished() && !other.is_finished());
    api.service.begin_shutdown();
    for task in [second, other] {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test]
async fn long_poll_answers_when_a_release_lands() {
    let api = Arc::new(Api::new(ServiceConfig::default()).await);
    let checkin = |wait: u64| {
        serde_json::to_vec(&json!({"current_system": null, "facts": {"os":"","arch":"","agent_version":""}, "wait_secs": wait})).unwrap()
    };
    // Nothing to do: held for the requested time, then `none`.
    let started = std::time::Instant::now();
    let (s, v) = api
        .call("POST", paths::CHECKIN, &checkin(1), Sign::By(&api.host_a))
        .await;
    assert_eq!(
        (s, v["action"]["type"].as_str()),
        (StatusCode::OK, Some("none"))
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "the check-in was not held"
    );
    // A held check-in wakes with the new system as soon as it is published.
    let waiter = {
        let api = api.clone();
        let body = checkin(30);
        tokio::spawn(async move {
            let req = build("POST", paths::CHECKIN, &body, Sign::By(&api.host_a), None);
            let started = std::time::Instant::now();
            (api.send(req).await, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let release = serde_json::to_vec(&json!({"hosts": {"host-a": PATH_A}})).unwrap();
    let (s, _) = api
        .call("POST", paths::RELEASES, &release, Sign::By(&api.publisher))
        .await;
    assert_eq!(s, StatusCode::OK);
    let ((s, v), waited) = waiter.await.unwrap();
    assert_eq!(
        (s, v["action"]["store_path"].as_str()),
        (StatusCode::OK, Some(PATH_A)),
        "{v}"
    );
    eprintln!("long-poll answered {waited:?} after it started (release published at ~300 ms)");
    // A host whose current system is the desired one is held again.
    let v = api.ok("POST", paths::CHECKIN, &serde_json::to_vec(&json!({"current_system": PATH_A, "facts": {"os":"","arch":"","agent_version":""}, "wait_secs": 1})).unwrap(), Sign::By(&api.host_a)).await;
    assert_eq!(v["action"]["type"], "none");
    // Shutting down releases held check-ins at once.
    let held = held_checkin(&api, |a| &a.host_a, Some(PATH_A));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    api.service.begin_shutdown();
    let (s, v) = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s, v["action"]["type"].as_str()),
        (StatusCode::OK, Some("none"))
    );
}

/// The host's state says how its newest attempt at the desired system ended: a system the
/// host refused (`untrusted`) or that failed before switching (`failed`) is not shown as
/// `rolled-back`, since nothing switched.
#[tokio::test]
async fn a_hosts_state_says_how_its_attempt_ended() {
    let api = Api::new(ServiceConfig::default()).await;
    let checkin = br#"{"current_system": null, "facts": {"os":"","arch":"","agent_version":""}}"#;
    for (i, result) in ["untrusted", "failed", "rolled-back"]
        .into_iter()
        .enumerate()
    {
        let path = format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wl{i}-system-{result}");
        let release = serde_json::to_vec(&json!({"hosts": {"host-a": path}})).unwrap();
        api.ok("POST", paths::RELEASES, &release, Sign::By(&api.publisher))
            .await;
        api.ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
            .await;
        api.report(&api.host_a, &path, result).await;
        let host = api
            .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
            .await;
        assert_eq!(host["state"], result, "{host}");
    }
}

#[tokio::test]
async fn a_system_that_failed_on_a_host_is_not_offered_again() {
    let api = Api::new(ServiceConfig::default()).await;
    let checkin = br#"{"current_system": null, "facts": {"os":"","arch":"","agent_version":""}}"#;
    let release = |path: &str| serde_json::to_vec(&json!({"hosts": {"host-a": path}})).unwrap();
    let (s, _) = api
        .call(
            "POST",
            paths::RELEASES,
            &release(PATH_A),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = api
        .ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(v["action"]["type"], "switch");
    let report = json!({"store_path": PATH_A, "release_id": 1, "result": "rolled-back", "reason": "switch failed", "started_at": 1, "finished_at": 2});
    let (s, _) = api
        .call(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&report).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = api
        .ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(
        v["action"]["type"], "none",
        "a failed system was offered again: {v}"
    );
    let host = api
        .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(
        (host["state"].as_str(), host["last_result"].as_str()),
        (Some("rolled-back"), Some("rolled-back")),
        "{host}"
    );
    // A newer release with another system is offered.
    let fixed = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-fixed";
    api.call(
        "POST",
        paths::RELEASES,
        &release(fixed),
        Sign::By(&api.publisher),
    )
    .await;
    let v = api
        .ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(v["action"]["store_path"], fixed);
    let host = api
        .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(host["state"], "standby", "{host}");
}

/// A host that tried its desired system is offered it again when the cause may be gone:
/// `yeet retry` (any result), a grant or rotation of a secret (a failed attempt changed
/// nothing on the host), and new trusted keys on the host (an untrusted attempt). Before,
/// only a release with another store path helped.
#[tokio::test]
async fn a_tried_system_is_offered_again_when_its_cause_may_be_gone() {
    let api = Api::new(ServiceConfig::default()).await;
    let checkin = |trust: &str| {
        serde_json::to_vec(&json!({"current_system": null,
            "facts": {"os": "", "arch": "", "agent_version": "", "trust_digest": trust}}))
        .unwrap()
    };
    let offered = |trust: &'static str| {
        let api = &api;
        async move {
            let v = api
                .ok(
                    "POST",
                    paths::CHECKIN,
                    &checkin(trust),
                    Sign::By(&api.host_a),
                )
                .await;
            v["action"]["type"] == "switch"
        }
    };
    let ends = |result: &'static str| api.report(&api.host_a, PATH_A, result);
    let retry = |hosts: Value| {
        let api = &api;
        async move {
            let body = serde_json::to_vec(&json!({ "hosts": hosts })).unwrap();
            api.call("POST", paths::RETRY, &body, Sign::By(&api.publisher))
                .await
        }
    };
    api.ok(
        "POST",
        paths::RELEASES,
        &serde_json::to_vec(&json!({"hosts": {"host-a": PATH_A}})).unwrap(),
        Sign::By(&api.publisher),
    )
    .await;
    assert!(offered("keys-1").await);

    // `yeet retry`, after a rollback.
    ends("rolled-back").await;
    assert!(!offered("keys-1").await, "offered again before the retry");
    let (s, v) = retry(json!(["host-a"])).await;
    assert_eq!(
        (s, &v["retried"]),
        (StatusCode::OK, &json!(["host-a"])),
        "{v}"
    );
    assert!(offered("keys-1").await, "not offered after the retry");
    // Refused: no host, an unknown one, one without a release; and by a viewer.
    for (hosts, status, code) in [
        (
            json!([]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_to_retry",
        ),
        (json!(["nope"]), StatusCode::NOT_FOUND, "unknown_host"),
        (
            json!(["host-b"]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_to_retry",
        ),
    ] {
        let (s, v) = retry(hosts.clone()).await;
        assert_error(s, &v, status, code, &hosts.to_string());
    }
    let viewer = build(
        "POST",
        paths::RETRY,
        br#"{"hosts": ["host-a"]}"#,
        Sign::By(&api.viewer),
        None,
    );
    api.refused(viewer, StatusCode::FORBIDDEN, "forbidden", "viewer")
        .await;

    // A grant of a secret, after an attempt that failed (a secret was missing).
    ends("failed").await;
    assert!(!offered("keys-1").await);
    api.add_secret("db-password", b"s3cret", &[]).await;
    assert!(
        !offered("keys-1").await,
        "a secret granted to nobody changed nothing"
    );
    let grant = serde_json::to_vec(&json!({"hosts": ["host-a"]})).unwrap();
    api.ok(
        "POST",
        &paths::secret_grant("db-password"),
        &grant,
        Sign::By(&api.admin),
    )
    .await;
    assert!(offered("keys-1").await, "not offered after the grant");
    // ... and a rotation of a secret the host holds.
    ends("failed").await;
    assert!(!offered("keys-1").await);
    let rotate = api.add_secret_body("db-password", b"n3w", &[]).await;
    api.ok(
        "POST",
        &paths::secret_rotate("db-password"),
        &rotate,
        Sign::By(&api.admin),
    )
    .await;
    assert!(offered("keys-1").await, "not offered after the rotation");

    // Untrusted: offered again once the host trusts other keys, not before.
    ends("untrusted").await;
    assert!(!offered("keys-1").await);
    assert!(
        offered("keys-2").await,
        "not offered after the host's keys changed"
    );
    // A rollback is not retried by a grant or new keys: the system broke the host.
    ends("rolled-back").await;
    api.ok(
        "POST",
        &paths::secret_rotate("db-password"),
        &api.add_secret_body("db-password", b"again", &[]).await,
        Sign::By(&api.admin),
    )
    .await;
    assert!(!offered("keys-3").await);
}

/// SQLite's write lock held from outside for a moment (a backup, a slow SD card's commit,
/// a stuck writer): operator reads and check-ins that change nothing still answer while
/// it is held (they used to write their nonce to the main database first, and wait with
/// it); a report and a check-in that changes what the host runs wait for the lock and are
/// stored once it goes; nothing answers 500.
#[tokio::test]
async fn a_held_write_lock_slows_writes_and_not_reads() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let api = Api::new(ServiceConfig::default()).await;
    let checkin = br#"{"current_system": null, "facts": {"os":"","arch":"","agent_version":""}}"#;
    let report = serde_json::to_vec(&json!({"store_path": PATH_A, "release_id": null,
        "result": "failed", "reason": "r", "started_at": 1, "finished_at": 2}))
    .unwrap();
    // host-b's report is known before the lock: its check-ins below change nothing.
    api.ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_b))
        .await;
    let mut holder = api.hold_write_lock().await;
    let writes_answered = AtomicUsize::new(0);
    let write = |body: Vec<u8>, path: &'static str| {
        let (api, writes_answered) = (&api, &writes_answered);
        async move {
            let answer = api.call("POST", path, &body, Sign::By(&api.host_a)).await;
            writes_answered.fetch_add(1, Ordering::SeqCst);
            answer
        }
    };
    let while_locked = async {
        // Reads answer, one after another, with the lock held all along.
        for _ in 0..3 {
            let hosts = api
                .ok("GET", paths::HOSTS, b"", Sign::By(&api.viewer))
                .await;
            assert!(hosts.to_string().contains("host-a"), "{hosts}");
            let (status, answer) = api
                .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_b))
                .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a check-in under the lock: {answer}"
            );
        }
        // The writes are still waiting: slower, not refused (the busy timeout is 5 s).
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(
            writes_answered.load(Ordering::SeqCst),
            0,
            "a write was answered while the lock was held"
        );
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    };
    let (first_checkin, sent_report, ()) = tokio::join!(
        write(checkin.to_vec(), paths::CHECKIN),
        write(report, paths::REPORT),
        while_locked
    );
    for (what, (status, answer)) in [("check-in", first_checkin), ("report", sent_report)] {
        assert_eq!(status, StatusCode::OK, "the waiting {what}: {answer}");
    }
    assert_eq!(stored_reports(&api, "host-a").await, 1);
}

/// The activation reports stored for `host`, as a viewer lists them.
async fn stored_reports(api: &Api, host: &str) -> usize {
    let history = api
        .ok(
            "GET",
            &paths::host_activations(host),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    history.as_array().map_or(0, Vec::len)
}

/// SQLite's write lock held from outside past its busy timeout (a slow SD card, a backup, a
/// stuck writer): a write answers `503 busy` with `Retry-After`, never `500`, and the report
/// the host sends again afterwards is stored.
#[tokio::test]
async fn a_locked_database_answers_busy_and_loses_no_report() {
    let api = Api::new(ServiceConfig::default()).await;
    let report = serde_json::to_vec(&json!({"store_path": PATH_A, "release_id": null,
        "result": "failed", "reason": "r", "started_at": 1, "finished_at": 2}))
    .unwrap();
    let mut holder = api.hold_write_lock().await;
    let (status, headers, answer) = api
        .send_with_headers(build(
            "POST",
            paths::REPORT,
            &report,
            Sign::By(&api.host_a),
            None,
        ))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy")),
        "{answer}"
    );
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    drop(holder);
    // The host sends it again, as the agent does after an error: stored.
    api.ok("POST", paths::REPORT, &report, Sign::By(&api.host_a))
        .await;
    assert_eq!(stored_reports(&api, "host-a").await, 1);
}

/// A fleet watch: the listing carries its tag; asked with that tag, the server holds the
/// request and answers `304` when nothing changed, at once when the tag is stale or forged,
/// and with the new listing as soon as a host's report changes. A host key may not watch.
#[tokio::test]
async fn a_fleet_watch_is_held_until_the_listing_changes() {
    let api = Arc::new(Api::new(ServiceConfig::default()).await);
    let watch = |tag: &str, wait: u64| {
        let mut req = build(
            "GET",
            &format!("{}?wait={wait}", paths::HOSTS),
            b"",
            Sign::By(&api.viewer),
            None,
        );
        req.headers_mut()
            .insert("if-none-match", format!("\"{tag}\"").parse().unwrap());
        req
    };
    let (s, headers, _) = api
        .send_with_headers(build("GET", paths::HOSTS, b"", Sign::By(&api.viewer), None))
        .await;
    assert_eq!(s, StatusCode::OK);
    let tag = headers["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    // Unchanged: held for the wait, then 304.
    let started = std::time::Instant::now();
    let (s, _, _) = api.send_with_headers(watch(&tag, 1)).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    // A tag that is not the listing's (stale, forged, garbage) is answered at once.
    for other in ["0000", "*", "W/\\\"x", &"f".repeat(4096)] {
        let (s, _, v) = api.send_with_headers(watch(other, 25)).await;
        assert_eq!(s, StatusCode::OK, "{other:?}: {v}");
    }
    // A change while held: answered with the new listing and a new tag.
    let held = {
        let api = api.clone();
        let req = watch(&tag, 25);
        tokio::spawn(async move { api.send_with_headers(req).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "answered before any change");
    let checkin = br#"{"current_system": "/nix/store/00000000000000000000000000000000-changed", "facts": {"os":"","arch":"","agent_version":""}}"#;
    api.ok("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    let (s, headers, v) = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .expect("the change did not answer the watch")
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(headers["etag"].to_str().unwrap().trim_matches('"'), tag);
    let changed = v
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "host-a")
        .unwrap();
    assert!(
        changed["current_system"]
            .as_str()
            .unwrap()
            .ends_with("-changed"),
        "{v}"
    );
    // Watching is a viewer's: a host key is refused.
    let mut by_host = build(
        "GET",
        &format!("{}?wait=1", paths::HOSTS),
        b"",
        Sign::By(&api.host_a),
        None,
    );
    by_host
        .headers_mut()
        .insert("if-none-match", format!("\"{tag}\"").parse().unwrap());
    let (s, v) = api.send(by_host).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

/// A key that floods the server with fleet watches holds at most 8: the ninth is refused at
/// once (each held watch reads the whole fleet at every change), and ending one frees its
/// place.
#[tokio::test]
async fn one_key_cannot_hold_a_flood_of_fleet_watches() {
    let api = Arc::new(Api::new(ServiceConfig::default()).await);
    let (_, headers, _) = api
        .send_with_headers(build("GET", paths::HOSTS, b"", Sign::By(&api.viewer), None))
        .await;
    let tag = headers["etag"].to_str().unwrap().to_owned();
    let watch_for = |wait: u64| {
        let mut req = build(
            "GET",
            &format!("{}?wait={wait}", paths::HOSTS),
            b"",
            Sign::By(&api.viewer),
            None,
        );
        req.headers_mut()
            .insert("if-none-match", tag.parse().unwrap());
        req
    };
    let held: Vec<_> = (0..8)
        .map(|_| {
            let (api, req) = (api.clone(), watch_for(25));
            tokio::spawn(async move { api.send_with_headers(req).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "a watch was not held"
    );
    let (s, v) = tokio::time::timeout(std::time::Duration::from_secs(2), api.send(watch_for(25)))
        .await
        .expect("the ninth watch was held too");
    assert_error(
        s,
        &v,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "ninth watch",
    );
    // Another key is not limited by this one's watches.
    let (s, _) = api
        .call("GET", paths::HOSTS, b"", Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK);
    // A watch that ends (its client gone) gives its place back: a one-second watch is then
    // held and answered 304.
    held[0].abort();
    let freed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while api.send(watch_for(1)).await.0 != StatusCode::NOT_MODIFIED {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "an ended watch kept its place");
    for h in held {
        h.abort();
    }
}
