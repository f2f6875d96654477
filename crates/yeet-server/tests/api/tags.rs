//! Host tags: set by operators only, suggested (never chosen) by hosts, checked against
//! their alphabet, given at approval, and never lost to a concurrent change.

use axum::http::StatusCode;
use serde_json::{Value, json};
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

fn tags(v: &Value) -> Vec<String> {
    serde_json::from_value(v["tags"].clone()).unwrap()
}

fn suggested(v: &Value) -> Vec<String> {
    serde_json::from_value(v["facts"]["suggested_tags"].clone()).unwrap_or_default()
}

async fn tag(api: &Api, host: &str, body: Value) -> (StatusCode, Value) {
    api.call(
        "POST",
        &paths::host_tags(host),
        &serde_json::to_vec(&body).unwrap(),
        Sign::By(&api.admin),
    )
    .await
}

#[tokio::test]
async fn operators_tag_hosts_and_hosts_only_suggest() {
    let api = Api::new(ServiceConfig::default()).await;
    let (s, v) = tag(&api, "host-a", json!({"add": ["prod", "eu", "prod"]})).await;
    assert_eq!(
        (s, tags(&v)),
        (StatusCode::OK, vec!["eu".into(), "prod".into()])
    );
    let (s, v) = tag(
        &api,
        "host-a",
        json!({"add": ["team:web"], "remove": ["eu"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(tags(&v), ["prod", "team:web"]);
    let listed = api
        .ok("GET", paths::HOSTS, b"", Sign::By(&api.viewer))
        .await;
    let a = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "host-a")
        .unwrap();
    assert_eq!(tags(a), ["prod", "team:web"]);

    // Bad tags are refused whole: nothing of the request is applied.
    let before = api.snapshot().await;
    let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    for (case, body) in [
        ("upper case", json!({"add": ["Prod"]})),
        ("space", json!({"add": ["ok", "a b"]})),
        ("dot", json!({"remove": ["a.b"]})),
        ("too long", json!({"add": ["a".repeat(33)]})),
        ("too many at once", json!({"add": many})),
    ] {
        let (s, v) = tag(&api, "host-a", body).await;
        assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "invalid_tag", case);
    }
    // A host carries at most 32: 30 fit, 3 more do not.
    let thirty: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
    let (s, _) = tag(&api, "host-b", json!({"add": thirty.clone()})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = tag(&api, "host-b", json!({"add": ["x", "y", "z"]})).await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_tag",
        "33 tags",
    );
    let (s, _) = tag(&api, "host-b", json!({"remove": thirty})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused change changed something"
    );
    let (s, v) = tag(&api, "nobody", json!({"add": ["prod"]})).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_host", "unknown host");

    // A host that reports tags in its facts (valid, invalid, or as a field of its own)
    // gains none: they are shown as suggestions, the invalid ones dropped.
    let checkin = json!({"current_system": null, "facts": {"os": "", "arch": "", "agent_version": "",
        "suggested_tags": ["admin-all", "prod", "BAD TAG", "x/y"], "tags": ["root"]}, "tags": ["root"]});
    api.ok(
        "POST",
        paths::CHECKIN,
        &serde_json::to_vec(&checkin).unwrap(),
        Sign::By(&api.host_b),
    )
    .await;
    let b = api
        .ok("GET", &paths::host("host-b"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(tags(&b), Vec::<String>::new());
    assert_eq!(suggested(&b), ["admin-all", "prod"]);
    // An admin takes them, and may leave one out.
    let (s, v) = tag(
        &api,
        "host-b",
        json!({"accept_suggested": true, "remove": ["admin-all"]}),
    )
    .await;
    assert_eq!((s, tags(&v)), (StatusCode::OK, vec!["prod".into()]));
}

#[tokio::test]
async fn a_tag_change_wakes_fleet_watches() {
    let api = Api::new(ServiceConfig::default()).await;
    let (_, headers, _) = api
        .send_with_headers(build("GET", paths::HOSTS, b"", Sign::By(&api.viewer), None))
        .await;
    let etag = headers[axum::http::header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    let waiting = {
        let req = build(
            "GET",
            &format!("{}?wait=20", paths::HOSTS),
            b"",
            Sign::By(&api.viewer),
            None,
        );
        let (mut parts, body) = req.into_parts();
        parts
            .headers
            .insert(axum::http::header::IF_NONE_MATCH, etag.parse().unwrap());
        let router = api.send_with_headers(axum::http::Request::from_parts(parts, body));
        tokio::time::timeout(std::time::Duration::from_secs(10), router)
    };
    let change = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tag(&api, "host-a", json!({"add": ["prod"]})).await
    };
    let (answer, (s, _)) = tokio::join!(waiting, change);
    assert_eq!(s, StatusCode::OK);
    let (status, _, hosts) = answer.expect("the watch was not woken by the tag change");
    assert_eq!(status, StatusCode::OK);
    assert!(hosts.to_string().contains("\"prod\""), "{hosts}");
}

#[tokio::test]
async fn concurrent_tag_changes_are_all_kept() {
    let api = Api::new(ServiceConfig::default()).await;
    let changes = (0..24).map(|i| tag(&api, "host-a", json!({"add": [format!("c{i}")]})));
    for (s, v) in futures_util::future::join_all(changes).await {
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let a = api
        .ok("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(tags(&a).len(), 24, "a concurrent change was lost: {a}");
}

#[tokio::test]
async fn approval_gives_the_admins_tags_and_suggestions_only_when_configured() {
    for accept in [false, true] {
        let api = Api::new(ServiceConfig {
            accept_suggested_tags: accept,
            ..ServiceConfig::default()
        })
        .await;
        let id = identity();
        let body = json!({"public_key": id.public().to_openssh(), "hostname_hint": "k",
            "facts": {"os": "linux", "arch": "x86_64", "agent_version": "t", "suggested_tags": ["kiosk", "Bad!"]}});
        let v = api
            .ok(
                "POST",
                paths::REGISTER,
                &serde_json::to_vec(&body).unwrap(),
                Sign::By(&id),
            )
            .await;
        let code = v["code"].as_str().unwrap().to_owned();
        let pending = api
            .ok("GET", paths::REGISTRATIONS, b"", Sign::By(&api.viewer))
            .await;
        assert_eq!(suggested(&pending[0]), ["kiosk"], "{pending}");
        let bad = json!({"code": code, "name": "kiosk-1", "tags": ["no spaces"]});
        let (s, v) = api
            .call(
                "POST",
                paths::APPROVE,
                &serde_json::to_vec(&bad).unwrap(),
                Sign::By(&api.admin),
            )
            .await;
        assert_error(
            s,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_tag",
            "approve",
        );
        let approve = json!({"code": code, "name": "kiosk-1", "tags": ["eu"]});
        let v = api
            .ok(
                "POST",
                paths::APPROVE,
                &serde_json::to_vec(&approve).unwrap(),
                Sign::By(&api.admin),
            )
            .await;
        let want: Vec<String> = if accept {
            vec!["eu".into(), "kiosk".into()]
        } else {
            vec!["eu".into()]
        };
        assert_eq!(tags(&v), want, "accept_suggested_tags = {accept}");
    }
}
