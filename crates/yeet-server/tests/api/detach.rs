//! Detachment: refused by default policy, permitted once an admin allows it, recorded with
//! who and why; releases keep being recorded but not offered; the host or an admin ends it,
//! and a held check-in learns of that at once.

use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn checkin_body(current: &str, wait_secs: u64, detached: bool) -> Vec<u8> {
    body(json!({"current_system": current, "booted_system": current,
        "facts": {"os": "linux", "arch": "x86_64", "agent_version": "t"},
        "wait_secs": wait_secs, "detached": detached}))
}

/// Asks to detach as `sign`; the refusal must be `detach_refused`.
async fn detach_refused(api: &Api, request: &[u8], sign: Sign<'_>, case: &str) -> Value {
    let (s, v) = api.call("POST", paths::AGENT_DETACH, request, sign).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "detach_refused", case);
    v
}

#[tokio::test]
async fn detach_follows_policy_and_either_side_ends_it() {
    let api = Api::new(ServiceConfig::default()).await;
    let host_a = Sign::By(&api.host_a);
    let admin = Sign::By(&api.admin);
    let p = |n: u8| format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-{n}");
    let release = |path: String| body(json!({"hosts": {"host-a": path}}));
    api.ok(
        "POST",
        paths::RELEASES,
        &release(p(1)),
        Sign::By(&api.publisher),
    )
    .await;

    // Refused by default, with the command that would allow it.
    let request = body(json!({"reason": "try a kernel\u{1b}[2J", "user": "alice (uid 1000)"}));
    let v = detach_refused(&api, &request, host_a, "default policy").await;
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("yeet host policy host-a --allow-detach"),
        "{message}"
    );
    let (s, v) = api
        .call("POST", &paths::host_attach("host-a"), b"", admin)
        .await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "not_detached",
        "attach while attached",
    );

    let info = api.allow_detach("host-a").await;
    assert_eq!(
        info["policy"],
        json!({"allow_detach": true, "reboot": "never"})
    );
    let detachment = api.ok("POST", paths::AGENT_DETACH, &request, host_a).await;
    // Free text from the host is kept printable.
    assert_eq!(detachment["reason"], "try a kernel[2J");
    assert_eq!(detachment["user"], "alice (uid 1000)");
    // Asking again changes nothing.
    let again = api.ok("POST", paths::AGENT_DETACH, &request, host_a).await;
    assert_eq!(again, detachment);

    // The host reports its local system; a new release is recorded, not offered.
    let local = "/nix/store/a322pzff5rm7kwfwfbhcza6wr2b84wlm-local";
    api.ok(
        "POST",
        paths::RELEASES,
        &release(p(2)),
        Sign::By(&api.publisher),
    )
    .await;
    let v = api
        .ok(
            "POST",
            paths::CHECKIN,
            &checkin_body(local, 0, true),
            host_a,
        )
        .await;
    assert_eq!(v["action"], json!({"type": "none"}), "{v}");
    assert_eq!(v["detached"], detachment);
    assert_eq!(v["desired_system"], p(2));
    let shown = api
        .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(
        (
            &shown["state"],
            &shown["current_system"],
            &shown["detached"]
        ),
        (&json!("detached"), &json!(local), &detachment)
    );

    // A held check-in answers as soon as an admin ends the detachment, with the newest
    // release (not the one current when the host detached).
    let held = {
        let router = api.router.clone();
        let req = build(
            "POST",
            paths::CHECKIN,
            &checkin_body(local, 60, true),
            host_a,
            None,
        );
        tokio::spawn(async move {
            use tower::ServiceExt;
            router.oneshot(req).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a detached host's check-in is held");
    let v = api
        .ok("POST", &paths::host_attach("host-a"), b"", admin)
        .await;
    assert_eq!(v["detached"], Value::Null);
    let resp = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("the held check-in answers once the detachment ends")
        .unwrap();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["detached"], Value::Null, "{v}");
    assert_eq!(v["action"]["type"], "switch", "{v}");
    assert_eq!(v["action"]["store_path"], p(2), "{v}");

    // The host may detach again and end it itself; ending twice is harmless.
    api.ok("POST", paths::AGENT_DETACH, &request, host_a).await;
    for _ in 0..2 {
        api.ok("POST", paths::AGENT_ATTACH, b"{}", host_a).await;
    }
    let history = api.service.store().list_detachments().await.unwrap();
    let ended_by: Vec<Option<&str>> = history.iter().map(|d| d.ended_by.as_deref()).collect();
    assert_eq!(ended_by, [Some("operator alice"), Some("host")]);

    // Denying detachment refuses new requests.
    let deny = body(json!({"allow_detach": false}));
    api.ok("PUT", &paths::host_policy("host-a"), &deny, admin)
        .await;
    detach_refused(&api, &request, host_a, "denied again").await;
    // Another host's detachment is its own: host-b's policy was never set.
    detach_refused(&api, &request, Sign::By(&api.host_b), "host-b").await;
}

#[tokio::test]
async fn policy_and_attach_name_unknown_hosts() {
    let api = Api::new(ServiceConfig::default()).await;
    let admin = Sign::By(&api.admin);
    let allow = body(json!({"allow_detach": true}));
    let (s, v) = api
        .call("PUT", &paths::host_policy("nope"), &allow, admin)
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_host", "policy");
    let (s, v) = api
        .call("POST", &paths::host_attach("nope"), b"", admin)
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_host", "attach");
    let (s, v) = api
        .call(
            "PUT",
            &paths::host_policy("host-a"),
            b"{\"allow_detach\": 3}",
            admin,
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "policy body",
    );
}
