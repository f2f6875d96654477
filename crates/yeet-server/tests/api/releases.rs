//! Releases and rollbacks.

use axum::http::StatusCode;
use serde_json::{Value, json};
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

/// `host` reports an activation of `path` that ended with `result`.
/// Publishes `hosts` (name → path) as the publisher.
async fn publish(api: &Api, hosts: Value) -> Value {
    let body = serde_json::to_vec(&json!({ "hosts": hosts })).unwrap();
    api.ok("POST", paths::RELEASES, &body, Sign::By(&api.publisher))
        .await
}

async fn rollback(api: &Api, request: Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&request).unwrap();
    api.call("POST", paths::ROLLBACK, &body, Sign::By(&api.publisher))
        .await
}

/// v1…v4 published and confirmed one after another: rolling back walks v4 → v3 → v2 → v1,
/// never returning to the system it rolled back from (it toggled v4 → v3 → v4 before), and
/// a system the host never confirmed is skipped.
#[tokio::test]
async fn repeated_rollbacks_walk_back_and_never_toggle() {
    let api = Api::new(ServiceConfig::default()).await;
    let p = |n: u8| format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-{n}");
    for n in 1..=4 {
        publish(&api, json!({"host-a": p(n)})).await;
        api.report(&api.host_a, &p(n), "confirmed").await;
    }
    // A fifth that rolled back on the host, then a sixth it refused.
    publish(&api, json!({"host-a": p(5)})).await;
    api.report(&api.host_a, &p(5), "rolled-back").await;
    publish(&api, json!({"host-a": p(6)})).await;
    api.report(&api.host_a, &p(6), "untrusted").await;
    let mut walked = Vec::new();
    loop {
        let (status, v) = rollback(&api, json!({"hosts": ["host-a"]})).await;
        if status != StatusCode::OK {
            assert_error(
                status,
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                "nothing_to_roll_back",
                "end",
            );
            assert!(
                v["error"]["message"].as_str().unwrap().contains("publish"),
                "{v}"
            );
            break;
        }
        let path = v["hosts"]["host-a"].as_str().unwrap().to_owned();
        // The host switches to it, as an agent would.
        api.report(&api.host_a, &path, "confirmed").await;
        walked.push(path);
        assert!(walked.len() < 10, "rollbacks never ended: {walked:?}");
    }
    assert_eq!(walked, [p(4), p(3), p(2), p(1)]);
    // Publishing v2 again makes it new: a rollback from it goes to the newest confirmed
    // system before that publish.
    publish(&api, json!({"host-a": p(2)})).await;
    let (_, v) = rollback(&api, json!({"hosts": ["host-a"]})).await;
    assert_eq!(v["hosts"]["host-a"], p(4).as_str(), "{v}");
}

#[tokio::test]
async fn rollback_of_a_release_follows_machines_not_names() {
    let api = Api::new(ServiceConfig::default()).await;
    let p = |n: u8| format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-{n}");
    let api = &api;
    let send = |method: &'static str, path: String, body: Value| async move {
        let body = serde_json::to_vec(&body).unwrap();
        api.call(method, &path, &body, Sign::By(&api.admin)).await
    };
    for hosts in [
        json!({"host-a": p(1), "host-b": p(1)}),
        json!({"host-a": p(2)}),
    ] {
        let (s, v) = send("POST", paths::RELEASES.into(), json!({"hosts": hosts})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    api.report(&api.host_a, &p(1), "confirmed").await;
    api.report(&api.host_b, &p(1), "confirmed").await;
    // The two machines swap names.
    for (from, to) in [("host-a", "tmp"), ("host-b", "host-a"), ("tmp", "host-b")] {
        let (s, v) = send("POST", paths::host_rename(from), json!({"new_name": to})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // Release 2 named the machine now called host-b; only it goes back.
    let (s, v) = send("POST", paths::ROLLBACK.into(), json!({"release": 2})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hosts"], json!({"host-b": p(1)}), "{v}");
}

#[tokio::test]
async fn rollback_points_hosts_at_their_previous_systems() {
    let api = Api::new(ServiceConfig::default()).await;
    let p = |n: u8| format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-{n}");
    let rollback = |body: Value| serde_json::to_vec(&body).unwrap();
    for hosts in [
        json!({"host-a": p(1), "host-b": p(1)}),
        json!({"host-a": p(2), "host-b": p(2)}),
        json!({"host-a": p(3)}),
    ] {
        publish(&api, hosts.clone()).await;
        for (name, path) in hosts.as_object().unwrap() {
            let host = if name == "host-a" {
                &api.host_a
            } else {
                &api.host_b
            };
            api.report(host, path.as_str().unwrap(), "confirmed").await;
        }
    }
    // By host: host-a goes from 3 back to 2.
    let (s, v) = api
        .call(
            "POST",
            paths::ROLLBACK,
            &rollback(json!({"hosts": ["host-a"]})),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(
        (s, v["hosts"]["host-a"].as_str()),
        (StatusCode::OK, Some(p(2).as_str())),
        "{v}"
    );
    assert_eq!(v["message"], "rollback of host-a");
    // By release: every host of release 2 back to the system it confirmed before release 2.
    let v = api
        .ok(
            "POST",
            paths::ROLLBACK,
            &rollback(json!({"release": 2})),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(v["hosts"], json!({"host-a": p(1), "host-b": p(1)}));
    let shown = api
        .ok(
            "GET",
            &paths::release(&v["id"].to_string()),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(shown["hosts"], v["hosts"]);
    // The desired state follows.
    let host = api
        .ok("GET", &paths::host("host-b"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(host["desired_system"], p(1).as_str());
    // Nothing earlier to go back to, unknown releases, and both forms at once are refused.
    #[rustfmt::skip]
    let refusals = [
        (json!({"release": 1}), StatusCode::UNPROCESSABLE_ENTITY, "nothing_to_roll_back", "first release"),
        (json!({"release": 99}), StatusCode::NOT_FOUND, "unknown_release", "unknown release"),
        (json!({"release": 2, "hosts": ["host-a"]}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_rollback", "both forms"),
    ];
    for (request, status, code, case) in refusals {
        let req = build(
            "POST",
            paths::ROLLBACK,
            &rollback(request),
            Sign::By(&api.publisher),
            None,
        );
        api.refused(req, status, code, case).await;
    }
    api.refused(
        build(
            "GET",
            &paths::release("99"),
            b"",
            Sign::By(&api.viewer),
            None,
        ),
        StatusCode::NOT_FOUND,
        "unknown_release",
        "show unknown",
    )
    .await;
}

/// A release naming tens of thousands of hosts is a body of several megabytes: within the
/// configured `max_body_bytes` it reaches the service (which names the unknown hosts), past
/// it it is refused as too large, saying what to raise.
#[tokio::test]
async fn a_release_for_a_large_fleet_is_limited_only_by_max_body_bytes() {
    let api = Api::with_body_limit(ServiceConfig::default(), 16 << 20).await;
    let hosts: serde_json::Map<String, serde_json::Value> = (0..40_000)
        .map(|i| (format!("host-{i:05}"), serde_json::json!(PATH_A)))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "hosts": hosts })).unwrap();
    assert!(body.len() > 2 << 20, "{} bytes", body.len());
    let (s, v) = api
        .call("POST", paths::RELEASES, &body, Sign::By(&api.publisher))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_host",
        "40,000 hosts",
    );

    let small = Api::new(ServiceConfig::default()).await;
    let (s, v) = small
        .call("POST", paths::RELEASES, &body, Sign::By(&small.publisher))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "over the limit",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes"),
        "{v}"
    );
}
