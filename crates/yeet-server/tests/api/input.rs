//! Bad input: each malformed request gets its JSON error, changes nothing, and the server
//! keeps serving.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

/// One malformed request and the error it must get.
struct BadRequest<'a> {
    case: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    sign: Sign<'a>,
    /// Changes the request after it is signed (a header removed or broken).
    tweak: fn(&mut Request<Body>),
    status: StatusCode,
    code: &'static str,
}

fn release_body(host: &str, path: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"hosts": {host: path}})).unwrap()
}

#[rustfmt::skip]
fn bad_requests(api: &Api) -> Vec<BadRequest<'_>> {
    let keep: fn(&mut Request<Body>) = |_| {};
    let row = |case, method, path: &str, body: &[u8], sign, status, code| BadRequest {
        case,
        method,
        path: path.to_owned(),
        body: body.to_vec(),
        sign,
        tweak: keep,
        status,
        code,
    };
    let publisher = Sign::By(&api.publisher);
    let (admin, viewer) = (Sign::By(&api.admin), Sign::By(&api.viewer));
    let releases = paths::RELEASES;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let checkin =
        br#"{"current_system": "/bin/sh", "facts": {"os":"","arch":"","agent_version":""}}"#;
    let mut rows = vec![
        row("garbage JSON", "POST", releases, b"{not json", publisher, StatusCode::BAD_REQUEST, "invalid_json"),
        row("wrong JSON shape", "POST", releases, br#"{"hosts": 5}"#, publisher, StatusCode::BAD_REQUEST, "invalid_json"),
        row("oversized body", "POST", releases, &vec![b' '; 65 * 1024], publisher, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        row("not a store path", "POST", releases, &release_body("host-a", "/etc/passwd"), publisher, unprocessable, "invalid_store_path"),
        row("short store path", "POST", releases, &release_body("host-a", "/nix/store/short-x"), publisher, unprocessable, "invalid_store_path"),
        row("store path escaping the store", "POST", releases, &release_body("host-a", "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-a/../../etc"), publisher, unprocessable, "invalid_store_path"),
        row("release for an unknown host", "POST", releases, &release_body("nosuch", PATH_A), publisher, unprocessable, "unknown_host"),
        row("empty release", "POST", releases, br#"{"hosts": {}}"#, publisher, unprocessable, "empty_release"),
        row("bad name", "POST", &paths::host_rename("host-a"), br#"{"new_name": "Bad Name"}"#, admin, unprocessable, "invalid_name"),
        row("rename onto existing", "POST", &paths::host_rename("host-a"), br#"{"new_name": "host-b"}"#, admin, StatusCode::CONFLICT, "name_taken"),
        row("unknown host", "GET", &paths::host("nosuch"), b"", viewer, StatusCode::NOT_FOUND, "unknown_host"),
        row("checkin with bad path", "POST", paths::CHECKIN, checkin, Sign::By(&api.host_a), unprocessable, "invalid_store_path"),
        row("bad query string", "GET", &format!("{releases}?limit=abc"), b"", viewer, StatusCode::BAD_REQUEST, "invalid_query"),
        row("release id that is not a number", "GET", &paths::release("abc"), b"", viewer, StatusCode::BAD_REQUEST, "invalid_path"),
        row("unknown endpoint", "GET", "/v1/nope", b"", Sign::None, StatusCode::NOT_FOUND, "no_such_endpoint"),
        row("wrong method", "PUT", paths::HOSTS, b"", Sign::None, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    let mut no_content_type = row("no content type", "POST", releases, &release_body("host-a", PATH_A), publisher, StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json");
    no_content_type.tweak = |req| {
        req.headers_mut().remove("content-type");
    };
    let mut bad_nonce = row("malformed nonce", "GET", paths::HOSTS, b"", viewer, StatusCode::UNAUTHORIZED, "malformed_signature");
    bad_nonce.tweak = |req| {
        req.headers_mut()
            .insert("x-yeet-nonce", "zz".parse().unwrap());
    };
    rows.extend([no_content_type, bad_nonce]);
    rows
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_the_server_keeps_serving() {
    let api = Api::new(ServiceConfig::default()).await;
    let before = api.snapshot().await;
    for bad in bad_requests(&api) {
        let mut req = build(bad.method, &bad.path, &bad.body, bad.sign, None);
        (bad.tweak)(&mut req);
        let (s, v) = api.send(req).await;
        assert_error(s, &v, bad.status, bad.code, bad.case);
        if bad.case == "release for an unknown host" {
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains("nosuch") && msg.contains("host-a") && msg.contains("host-b"),
                "the refusal names the unknown and the approved hosts: {msg}"
            );
        }
    }
    assert_eq!(api.snapshot().await, before, "bad input changed state");

    // Still serving, and a good release now goes through and sets the desired system.
    let good = build(
        "POST",
        paths::RELEASES,
        &release_body("host-a", PATH_A),
        Sign::By(&api.publisher),
        None,
    );
    let (s, v) = api.send(good).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "POST",
            paths::CHECKIN,
            br#"{"current_system": null, "facts": {"os":"","arch":"","agent_version":""}}"#,
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(
        (s, &v["action"]["store_path"]),
        (StatusCode::OK, &json!(PATH_A)),
        "{v}"
    );
    let v = api
        .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(
        (v["desired_system"].as_str(), v["state"].as_str()),
        (Some(PATH_A), Some("standby")),
        "{v}"
    );
}

#[tokio::test]
async fn free_text_is_capped_and_cleaned_and_extreme_timestamps_are_refused() {
    let api = Api::new(ServiceConfig::default()).await;
    let evil = "ok\u{1b}]52;c;ZXZpbA==\u{7}\u{202e}txt.exe";
    let clean = "ok]52;c;ZXZpbA==txt.exe";
    // Check-in facts: cleaned and cut to 64 characters, however long.
    let checkin = json!({"state": "standby", "facts": {"os": evil, "arch": "x".repeat(60_000), "agent_version": "1"}});
    api.ok(
        "POST",
        paths::CHECKIN,
        &serde_json::to_vec(&checkin).unwrap(),
        Sign::By(&api.host_a),
    )
    .await;
    let host = api
        .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(host["facts"]["os"], clean);
    assert_eq!(host["facts"]["arch"].as_str().unwrap().len(), 64);
    // Report reasons.
    let report = json!({"store_path": PATH_A, "release_id": null, "result": "failed", "reason": format!("{evil}\nline two"),
                        "started_at": 1, "finished_at": 2});
    let v = api
        .ok(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&report).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(v["reason"], format!("{clean}\nline two"));
    // Release messages and revisions: cleaned, and refused when absurdly long.
    let release = |message: &str, revision: &str| {
        serde_json::to_vec(
            &json!({"hosts": {"host-a": PATH_A}, "message": message, "revision": revision}),
        )
        .unwrap()
    };
    let v = api
        .ok(
            "POST",
            paths::RELEASES,
            &release(evil, evil),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(
        (v["message"].as_str(), v["revision"].as_str()),
        (Some(clean), Some(clean))
    );
    let before = api.snapshot().await;
    for (message, revision, status, code) in [
        (
            "x".repeat(5000),
            "r".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "message_too_long",
        ),
        (
            "m".to_owned(),
            "r".repeat(1000),
            StatusCode::UNPROCESSABLE_ENTITY,
            "revision_too_long",
        ),
        (
            "m".to_owned(),
            "r".repeat(900_000),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ] {
        api.refused(
            build(
                "POST",
                paths::RELEASES,
                &release(&message, &revision),
                Sign::By(&api.publisher),
                None,
            ),
            status,
            code,
            code,
        )
        .await;
    }
    assert_eq!(api.snapshot().await, before);
    // Timestamps at the edges of i64 are stale, not a crash.
    for ts in ["-9223372036854775808", "9223372036854775807"] {
        let mut req = build("GET", paths::WHOAMI, b"", Sign::By(&api.admin), None);
        req.headers_mut()
            .insert("x-yeet-timestamp", ts.parse().unwrap());
        let (s, v) = api.send(req).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "stale_timestamp", ts);
    }
}
