//! Access scoped by tag: a scoped user sees only the hosts carrying one of their tags, an
//! out-of-scope host answers exactly as a missing one, and a route without a scope rule
//! refuses them.

use axum::http::StatusCode;
use serde_json::{Value, json};
use yeet_proto::Identity;
use yeet_proto::api::{Role, paths};
use yeet_server::service::ServiceConfig;
use yeet_server::service::users::add_user;

use super::harness::*;

async fn scoped_user(api: &Api, name: &str, role: Role, tags: &[&str]) -> Identity {
    let id = identity();
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    add_user(
        api.service.store(),
        name,
        &id.public().to_openssh(),
        role,
        &tags,
    )
    .await
    .unwrap();
    id
}

async fn tag(api: &Api, host: &str, add: &str) {
    let body = serde_json::to_vec(&json!({"add": [add]})).unwrap();
    api.ok("POST", &paths::host_tags(host), &body, Sign::By(&api.admin))
        .await;
}

fn names(hosts: &Value) -> Vec<&str> {
    hosts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect()
}

#[tokio::test]
async fn a_scoped_user_sees_only_their_hosts_and_the_rest_look_missing() {
    let api = Api::new(ServiceConfig::default()).await;
    tag(&api, "host-a", "prod").await;
    tag(&api, "host-b", "staging").await;
    let kim = scoped_user(&api, "kim", Role::Viewer, &["prod", "eu"]).await;

    let listed = api.ok("GET", paths::HOSTS, b"", Sign::By(&kim)).await;
    assert_eq!(names(&listed), ["host-a"]);
    api.ok("GET", &paths::host("host-a"), b"", Sign::By(&kim))
        .await;
    // host-b exists but is out of scope; "ghost" does not exist: the answers differ only
    // by the name they echo.
    let (s_out, out) = api
        .call("GET", &paths::host("host-b"), b"", Sign::By(&kim))
        .await;
    let (s_missing, missing) = api
        .call("GET", &paths::host("ghost"), b"", Sign::By(&kim))
        .await;
    assert_eq!(s_out, s_missing);
    assert_eq!(
        out.to_string().replace("host-b", "NAME"),
        missing.to_string().replace("ghost", "NAME")
    );
    assert_eq!(out["error"]["code"], "unknown_host", "{out}");

    // The listing's ETag follows only what kim sees: a change to host-b leaves it.
    async fn etag(api: &Api, who: &Identity) -> String {
        let req = build("GET", paths::HOSTS, b"", Sign::By(who), None);
        let (_, headers, _) = api.send_with_headers(req).await;
        headers[axum::http::header::ETAG]
            .to_str()
            .unwrap()
            .to_owned()
    }
    let before = etag(&api, &kim).await;
    tag(&api, "host-b", "other").await;
    assert_eq!(
        etag(&api, &kim).await,
        before,
        "an out-of-scope change showed"
    );
    // A host gaining one of kim's tags comes into view; losing it, goes out.
    tag(&api, "host-b", "eu").await;
    assert_ne!(etag(&api, &kim).await, before);
    let listed = api.ok("GET", paths::HOSTS, b"", Sign::By(&kim)).await;
    assert_eq!(names(&listed), ["host-a", "host-b"]);
    let body = serde_json::to_vec(&json!({"remove": ["eu"]})).unwrap();
    api.ok(
        "POST",
        &paths::host_tags("host-b"),
        &body,
        Sign::By(&api.admin),
    )
    .await;
    let listed = api.ok("GET", paths::HOSTS, b"", Sign::By(&kim)).await;
    assert_eq!(names(&listed), ["host-a"]);

    // What kim may not do yet is refused, naming the reason; whoami tells the scope.
    let (s, v) = api.call("GET", paths::RELEASES, b"", Sign::By(&kim)).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden", "releases");
    let said = v["error"]["message"].as_str().unwrap();
    assert!(said.contains("eu or prod"), "{v}");
    let me = api.ok("GET", paths::WHOAMI, b"", Sign::By(&kim)).await;
    assert_eq!(me["tags"], json!(["eu", "prod"]));
}

#[tokio::test]
async fn a_scoped_publisher_uploads_but_changes_no_host_outside_its_scope() {
    let api = Api::new(ServiceConfig::default()).await;
    tag(&api, "host-a", "staging").await;
    let ci = scoped_user(&api, "ci-staging", Role::Publisher, &["staging"]).await;
    // Store paths belong to no host: asking what the cache lacks is allowed.
    let body = serde_json::to_vec(&json!({"hashes": []})).unwrap();
    api.ok("POST", paths::CACHE_MISSING, &body, Sign::By(&ci))
        .await;
    // Releasing, even to a host in scope, waits for its scope rule: refused, unchanged.
    let before = api.snapshot().await;
    let release =
        serde_json::to_vec(&json!({"hosts": {"host-b": PATH_A}, "message": "m"})).unwrap();
    let (s, v) = api
        .call("POST", paths::RELEASES, &release, Sign::By(&ci))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "release by a scoped publisher",
    );
    assert_eq!(api.snapshot().await, before);
}
