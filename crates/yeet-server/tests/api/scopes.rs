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
        &crate::common::ev(),
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

    // What serves the whole fleet refuses kim, naming the reason; whoami tells the scope.
    let (s, v) = api
        .call(
            "GET",
            yeet_proto::osquery::paths::SCHEDULE,
            b"",
            Sign::By(&kim),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "osquery schedule",
    );
    let said = v["error"]["message"].as_str().unwrap();
    assert!(said.contains("eu or prod"), "{v}");
    let me = api.ok("GET", paths::WHOAMI, b"", Sign::By(&kim)).await;
    assert_eq!(me["tags"], json!(["eu", "prod"]));
}

/// Two calls that must be refused alike: one naming an out-of-scope host, one a host that
/// does not exist; their answers differ only by the name they echo.
async fn alike(
    api: &Api,
    who: &Identity,
    method: &str,
    out_of_scope: (&str, &str),
    missing: (&str, &str),
) {
    let call = |path: &str, body: &str| {
        let req = build(method, path, body.as_bytes(), Sign::By(who), None);
        api.send(req)
    };
    let (s1, v1) = call(out_of_scope.0, out_of_scope.1).await;
    let (s2, v2) = call(missing.0, missing.1).await;
    assert!(
        s1.is_client_error(),
        "{method} {}: {s1} {v1}",
        out_of_scope.0
    );
    assert_eq!(
        (s1, v1.to_string().replace("host-b", "NAME")),
        (s2, v2.to_string().replace("ghost", "NAME")),
        "{method} {}",
        out_of_scope.0
    );
}

#[tokio::test]
async fn a_scoped_publisher_acts_on_its_hosts_only_and_sees_their_releases() {
    let api = Api::new(ServiceConfig::default()).await;
    tag(&api, "host-a", "staging").await;
    tag(&api, "host-b", "prod").await;
    let ci = scoped_user(&api, "ci-staging", Role::Publisher, &["staging"]).await;
    // Store paths belong to no host: asking what the cache lacks is allowed.
    let body = serde_json::to_vec(&json!({"hashes": []})).unwrap();
    api.ok("POST", paths::CACHE_MISSING, &body, Sign::By(&ci))
        .await;
    let own = api
        .ok(
            "POST",
            paths::RELEASES,
            br#"{"hosts": {"host-a": "/nix/store/00000000000000000000000000000000-a"}}"#,
            Sign::By(&ci),
        )
        .await;
    assert_eq!(
        own["hosts"],
        json!({"host-a": "/nix/store/00000000000000000000000000000000-a"})
    );

    // Out of scope is indistinguishable from missing, and changes nothing.
    let before = api.snapshot().await;
    let path = "/nix/store/00000000000000000000000000000000-b";
    alike(
        &api,
        &ci,
        "POST",
        (
            paths::RELEASES,
            &format!(r#"{{"hosts": {{"host-b": "{path}"}}}}"#),
        ),
        (
            paths::RELEASES,
            &format!(r#"{{"hosts": {{"ghost": "{path}"}}}}"#),
        ),
    )
    .await;
    alike(
        &api,
        &ci,
        "POST",
        (
            paths::RELEASES,
            &format!(r#"{{"hosts": {{"host-a": "{path}", "host-b": "{path}"}}}}"#),
        ),
        (
            paths::RELEASES,
            &format!(r#"{{"hosts": {{"host-a": "{path}", "ghost": "{path}"}}}}"#),
        ),
    )
    .await;
    for route in [paths::ROLLBACK, paths::RETRY] {
        alike(
            &api,
            &ci,
            "POST",
            (route, r#"{"hosts": ["host-b"]}"#),
            (route, r#"{"hosts": ["ghost"]}"#),
        )
        .await;
    }
    for (out, missing) in [
        (paths::host_log("host-b"), paths::host_log("ghost")),
        (
            paths::host_activations("host-b"),
            paths::host_activations("ghost"),
        ),
        (
            format!("{}?host=host-b", paths::RELEASES),
            format!("{}?host=ghost", paths::RELEASES),
        ),
    ] {
        alike(&api, &ci, "GET", (&out, ""), (&missing, "")).await;
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed something"
    );
    // Each refusal is recorded, under the scoped user's name, with its code.
    let events = api.audit_events().await;
    let refused: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.actor == "ci-staging" && e.outcome != "done" && e.action != "read")
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    // The reads of host-b's and ghost's log, history and releases too, as `read`.
    let reads: Vec<&str> = events
        .iter()
        .filter(|e| e.actor == "ci-staging" && e.action == "read")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(reads, ["unknown_host"; 6], "{events:#?}");
    assert_eq!(
        refused,
        [
            ("release.create", "unknown_host"),
            ("release.create", "unknown_host"),
            ("release.create", "unknown_host"),
            ("release.create", "unknown_host"),
            ("release.rollback", "unknown_host"),
            ("release.rollback", "unknown_host"),
            ("release.retry", "unknown_host"),
            ("release.retry", "unknown_host"),
        ],
        "{events:#?}"
    );
    // The scoped user's own view of the log: their own actions and those about their
    // hosts (host-a's tagging), never host-b's.
    let seen = api.ok("GET", paths::AUDIT, b"", Sign::By(&ci)).await;
    let seen = seen["events"].as_array().unwrap();
    assert!(
        seen.iter()
            .any(|e| e["action"] == "host.tag" && e["hosts"] == json!(["host-a"])),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|e| e["actor"] == "ci-staging"
            || e["hosts"].as_array().unwrap().iter().all(|h| h == "host-a")),
        "{seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| e["hosts"].to_string().contains("host-b")),
        "{seen:#?}"
    );

    // An unscoped admin's release naming both: the scoped user sees its staging half; one
    // naming only host-b is, to them, no release at all.
    let both = api
        .ok(
            "POST",
            paths::RELEASES,
            format!(r#"{{"hosts": {{"host-a": "{path}", "host-b": "{path}"}}}}"#).as_bytes(),
            Sign::By(&api.admin),
        )
        .await;
    let prod_only = api
        .ok(
            "POST",
            paths::RELEASES,
            format!(r#"{{"hosts": {{"host-b": "{path}"}}}}"#).as_bytes(),
            Sign::By(&api.admin),
        )
        .await;
    let listed = api.ok("GET", paths::RELEASES, b"", Sign::By(&ci)).await;
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(
        ids,
        [both["id"].as_i64().unwrap(), own["id"].as_i64().unwrap()]
    );
    assert_eq!(listed[0]["hosts"], json!({"host-a": path}));
    let shown = api
        .ok(
            "GET",
            &paths::release(&both["id"].to_string()),
            b"",
            Sign::By(&ci),
        )
        .await;
    assert_eq!(shown["hosts"], json!({"host-a": path}));
    let hidden = prod_only["id"].as_i64().unwrap();
    let (s1, v1) = api
        .call(
            "GET",
            &paths::release(&hidden.to_string()),
            b"",
            Sign::By(&ci),
        )
        .await;
    let (s2, v2) = api
        .call("GET", &paths::release("998"), b"", Sign::By(&ci))
        .await;
    assert_eq!(
        (s1, v1.to_string().replace(&hidden.to_string(), "N")),
        (s2, v2.to_string().replace("998", "N"))
    );
    let body = serde_json::to_vec(&json!({"release": hidden})).unwrap();
    let (s, v) = api
        .call("POST", paths::ROLLBACK, &body, Sign::By(&ci))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "unknown_release",
        "rollback of a hidden release",
    );
    // The unscoped see everything.
    let all = api
        .ok("GET", paths::RELEASES, b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(all.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_scoped_admin_approves_hosts_into_their_scope() {
    let api = Api::new(ServiceConfig::default()).await;
    let sam = scoped_user(&api, "sam", Role::Admin, &["kiosk"]).await;
    let machine = identity();
    let code = api.register(&machine).await;
    let pending = api
        .ok("GET", paths::REGISTRATIONS, b"", Sign::By(&sam))
        .await;
    assert_eq!(pending.as_array().unwrap().len(), 1);
    let body =
        serde_json::to_vec(&json!({"code": code, "name": "kiosk-1", "tags": ["eu"]})).unwrap();
    let host = api.ok("POST", paths::APPROVE, &body, Sign::By(&sam)).await;
    assert_eq!(host["tags"], json!(["eu", "kiosk"]));
    let listed = api.ok("GET", paths::HOSTS, b"", Sign::By(&sam)).await;
    assert_eq!(names(&listed), ["kiosk-1"]);
}

#[tokio::test]
async fn a_scoped_admin_manages_their_hosts_and_cannot_touch_the_rest() {
    let api = Api::new(ServiceConfig::default()).await;
    tag(&api, "host-a", "kiosk").await;
    tag(&api, "host-b", "db").await;
    let sam = scoped_user(&api, "sam", Role::Admin, &["kiosk"]).await;
    let before = api.snapshot().await;
    for (method, out, missing, body) in [
        (
            "PUT",
            paths::host_policy("host-b"),
            paths::host_policy("ghost"),
            r#"{"allow_detach": true}"#,
        ),
        (
            "POST",
            paths::host_attach("host-b"),
            paths::host_attach("ghost"),
            "{}",
        ),
        (
            "POST",
            paths::host_rename("host-b"),
            paths::host_rename("ghost"),
            r#"{"new_name": "mine"}"#,
        ),
        ("DELETE", paths::host("host-b"), paths::host("ghost"), ""),
    ] {
        alike(&api, &sam, method, (&out, body), (&missing, body)).await;
    }
    // Tags decide scopes: only admins without tags set them.
    let (s, v) = api
        .call(
            "POST",
            &paths::host_tags("host-a"),
            br#"{"remove": ["kiosk"]}"#,
            Sign::By(&sam),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "a scoped admin retags",
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed something"
    );
    // Their own host: policy, rename and removal work.
    api.ok(
        "PUT",
        &paths::host_policy("host-a"),
        br#"{"allow_detach": true}"#,
        Sign::By(&sam),
    )
    .await;
    api.ok(
        "POST",
        &paths::host_rename("host-a"),
        br#"{"new_name": "kiosk-a"}"#,
        Sign::By(&sam),
    )
    .await;
    api.ok("DELETE", &paths::host("kiosk-a"), b"", Sign::By(&sam))
        .await;
    let all = api.ok("GET", paths::HOSTS, b"", Sign::By(&api.admin)).await;
    assert_eq!(names(&all), ["host-b"]);
}

#[tokio::test]
async fn a_scoped_admin_keeps_to_their_secrets() {
    let api = Api::new(ServiceConfig::default()).await;
    tag(&api, "host-a", "kiosk").await;
    tag(&api, "host-b", "db").await;
    let sam = scoped_user(&api, "sam", Role::Admin, &["kiosk"]).await;
    api.add_secret("db-pass", b"x", &["host-b"]).await;
    api.add_secret("shared", b"y", &["host-a", "host-b"]).await;

    let listed = api.ok("GET", paths::SECRETS, b"", Sign::By(&sam)).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "shared");
    let grants: Vec<&str> = listed[0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["host"].as_str())
        .collect();
    assert_eq!(grants, ["host-a"]);
    assert_eq!(listed[0]["history"], json!([]));

    let before = api.snapshot().await;
    // Another team's secret is, to sam, no secret; one shared with other teams is refused.
    let grant_a = r#"{"hosts": ["host-a"]}"#;
    let (s1, v1) = api
        .call(
            "POST",
            &paths::secret_grant("db-pass"),
            grant_a.as_bytes(),
            Sign::By(&sam),
        )
        .await;
    let (s2, v2) = api
        .call(
            "POST",
            &paths::secret_grant("nope"),
            grant_a.as_bytes(),
            Sign::By(&sam),
        )
        .await;
    assert_eq!(
        (s1, v1.to_string().replace("db-pass", "N")),
        (s2, v2.to_string().replace("nope", "N"))
    );
    for (method, path) in [
        ("POST", paths::secret_grant("shared")),
        ("POST", paths::secret_revoke("shared")),
        ("DELETE", paths::secret("shared")),
    ] {
        let body = if method == "DELETE" { "" } else { grant_a };
        let (s, v) = api
            .call(method, &path, body.as_bytes(), Sign::By(&sam))
            .await;
        assert_error(
            s,
            &v,
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("{method} {path}"),
        );
    }
    // A new secret goes to their hosts only.
    let to_b = api.add_secret_body("kiosk-wifi", b"z", &["host-b"]).await;
    let to_ghost = api.add_secret_body("kiosk-wifi", b"z", &["ghost"]).await;
    let (s1, v1) = api
        .call("POST", paths::SECRETS, &to_b, Sign::By(&sam))
        .await;
    let (s2, v2) = api
        .call("POST", paths::SECRETS, &to_ghost, Sign::By(&sam))
        .await;
    assert_eq!(
        (s1, v1.to_string().replace("host-b", "N")),
        (s2, v2.to_string().replace("ghost", "N"))
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed something"
    );

    let own = api.add_secret_body("kiosk-wifi", b"z", &["host-a"]).await;
    let made = api.ok("POST", paths::SECRETS, &own, Sign::By(&sam)).await;
    assert_eq!(made["name"], "kiosk-wifi");
    let (s, v) = api
        .call(
            "POST",
            &paths::secret_revoke("kiosk-wifi"),
            grant_a.as_bytes(),
            Sign::By(&sam),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "ungranted_secret",
        "revoking the last grant",
    );
    // Granted to their tag as well, then directly revoked: host-a keeps it by the tag.
    let by_tag = r#"{"tags": ["kiosk"]}"#;
    api.ok(
        "POST",
        &paths::secret_grant("kiosk-wifi"),
        by_tag.as_bytes(),
        Sign::By(&sam),
    )
    .await;
    api.ok(
        "POST",
        &paths::secret_revoke("kiosk-wifi"),
        grant_a.as_bytes(),
        Sign::By(&sam),
    )
    .await;
    // Revoking the tag now would leave it granted to nobody, as revoking the last host would.
    let (s, v) = api
        .call(
            "POST",
            &paths::secret_revoke("kiosk-wifi"),
            by_tag.as_bytes(),
            Sign::By(&sam),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "ungranted_secret",
        "revoking the last tag grant",
    );
    api.ok("DELETE", &paths::secret("kiosk-wifi"), b"", Sign::By(&sam))
        .await;
}

/// Rollouts under scopes: a scoped publisher cannot start one that touches a host outside
/// their scope (it is unknown to them), sees only their hosts in a rollout, cannot steer
/// one that also moves other teams' hosts, and a rollout of only other teams' hosts is
/// unknown to them.
#[tokio::test]
async fn scoped_publishers_roll_out_only_their_hosts() {
    let api = Api::new(ServiceConfig::default()).await;
    tag(&api, "host-a", "team-a").await;
    tag(&api, "host-b", "team-b").await;
    let pat = scoped_user(&api, "pat", Role::Publisher, &["team-a"]).await;
    let body = serde_json::to_vec(&json!({"waves": ["100%"]})).unwrap();
    api.ok(
        "PUT",
        &paths::rollout_policy("all"),
        &body,
        Sign::By(&api.admin),
    )
    .await;
    let path = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-1";
    let release =
        |hosts: Value| serde_json::to_vec(&json!({"hosts": hosts, "rollout": "all"})).unwrap();
    let (s, v) = api
        .call(
            "POST",
            paths::RELEASES,
            &release(json!({"host-a": path, "host-b": path})),
            Sign::By(&pat),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_host",
        "out of scope",
    );
    // An unscoped publisher rolls out to both teams; pat sees only host-a, steers nothing.
    let both = api
        .ok(
            "POST",
            paths::RELEASES,
            &release(json!({"host-a": path, "host-b": path})),
            Sign::By(&api.publisher),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let seen = api
        .ok(
            "GET",
            &paths::rollout(&both.to_string()),
            b"",
            Sign::By(&pat),
        )
        .await;
    assert_eq!(names(&seen["waves"][0]["hosts"]), ["host-a"], "{seen}");
    let (s, v) = api
        .call(
            "POST",
            &paths::rollout_control(&both.to_string(), "abort"),
            b"{}",
            Sign::By(&pat),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "rollout_conflict",
        "steer a shared rollout",
    );
    // A rollout of team-b alone does not exist for pat.
    let other = api
        .ok(
            "POST",
            paths::RELEASES,
            &release(json!({"host-b": path})),
            Sign::By(&api.publisher),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    for (method, path) in [
        ("GET", paths::rollout(&other.to_string())),
        ("POST", paths::rollout_control(&other.to_string(), "pause")),
    ] {
        let (s, v) = api.call(method, &path, b"{}", Sign::By(&pat)).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_rollout", &path);
    }
    let listed = api.ok("GET", paths::ROLLOUTS, b"", Sign::By(&pat)).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // Their own rollout they steer.
    let own = api
        .ok(
            "POST",
            paths::RELEASES,
            &release(json!({"host-a": path})),
            Sign::By(&pat),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let v = api
        .ok(
            "POST",
            &paths::rollout_control(&own.to_string(), "pause"),
            b"{}",
            Sign::By(&pat),
        )
        .await;
    assert_eq!(v["state"], "paused", "{v}");
}
