//! Users over the API: unscoped admins add, change and remove them; a change to a user's
//! keys, role or scope takes effect at once; nobody raises their own rights, and the fleet
//! keeps an admin who acts on all of it.

use axum::http::StatusCode;
use serde_json::{Value, json};
use yeet_proto::Identity;
use yeet_proto::api::paths;
use yeet_server::service::ServiceConfig;

use super::harness::*;

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

async fn as_user(
    api: &Api,
    who: &Identity,
    method: &str,
    path: &str,
    v: Value,
) -> (StatusCode, Value) {
    let bytes = if v.is_null() { Vec::new() } else { body(v) };
    api.call(method, path, &bytes, Sign::By(who)).await
}

#[tokio::test]
async fn admins_manage_users_and_changes_take_effect_at_once() {
    let api = Api::new(ServiceConfig::default()).await;
    let (laptop, ci) = (identity(), identity());
    let add = json!({"name": "bob", "public_key": laptop.public().to_openssh(), "role": "publisher", "tags": ["staging"]});
    let (s, bob) = as_user(&api, &api.admin, "POST", paths::USERS, add.clone()).await;
    assert_eq!(s, StatusCode::OK, "{bob}");
    assert_eq!(
        (bob["role"].as_str(), &bob["tags"]),
        (Some("publisher"), &json!(["staging"]))
    );
    let me = api.ok("GET", paths::WHOAMI, b"", Sign::By(&laptop)).await;
    assert_eq!(
        (me["name"].as_str(), &me["tags"]),
        (Some("bob"), &json!(["staging"]))
    );

    // Refusals, each changing nothing.
    let before = api.snapshot().await;
    let host_key = api.host_a.public().to_openssh();
    for (case, v, status, code) in [
        (
            "same name",
            add.clone(),
            StatusCode::CONFLICT,
            "user_exists",
        ),
        (
            "bad name",
            json!({"name": "Bob!", "public_key": identity().public().to_openssh(), "role": "viewer"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        ),
        (
            "bad key",
            json!({"name": "carl", "public_key": "ssh-rsa AAAA", "role": "viewer"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_key",
        ),
        (
            "a host's key",
            json!({"name": "carl", "public_key": host_key, "role": "viewer"}),
            StatusCode::CONFLICT,
            "key_in_use",
        ),
        (
            "bad tag",
            json!({"name": "carl", "public_key": identity().public().to_openssh(), "role": "viewer", "tags": ["Prod"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_tag",
        ),
    ] {
        let (s, v) = as_user(&api, &api.admin, "POST", paths::USERS, v).await;
        assert_error(s, &v, status, code, case);
    }
    let (s, v) = as_user(
        &api,
        &api.admin,
        "POST",
        &paths::user_keys("bob"),
        json!({"public_key": api.viewer.public().to_openssh()}),
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "key_in_use",
        "another user's key",
    );
    let (s, v) = as_user(
        &api,
        &api.admin,
        "PUT",
        &paths::user_role("nobody"),
        json!({"role": "viewer"}),
    )
    .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_user", "unknown user");
    assert_eq!(api.snapshot().await, before);

    // A second key works; removing the first ends it at once (no cache delay).
    let (s, v) = as_user(
        &api,
        &api.admin,
        "POST",
        &paths::user_keys("bob"),
        json!({"public_key": ci.public().to_openssh()}),
    )
    .await;
    assert_eq!(
        (s, v["keys"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    api.ok("GET", paths::WHOAMI, b"", Sign::By(&ci)).await;
    let laptop_id = laptop.public().key_id().to_owned();
    let (s, _) = as_user(
        &api,
        &api.admin,
        "POST",
        &paths::user_keys_remove("bob"),
        json!({"key_id": laptop_id}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    api.refused(
        build("GET", paths::WHOAMI, b"", Sign::By(&laptop), None),
        StatusCode::UNAUTHORIZED,
        "unknown_key",
        "removed key",
    )
    .await;
    let ci_id = ci.public().key_id().to_owned();
    let (s, v) = as_user(
        &api,
        &api.admin,
        "POST",
        &paths::user_keys_remove("bob"),
        json!({"key_id": ci_id}),
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_key",
        "the last key",
    );

    // A scope lifted, and a lower role, are in force at the next request.
    let (s, v) = as_user(
        &api,
        &api.admin,
        "PUT",
        &paths::user_tags("bob"),
        json!({"tags": []}),
    )
    .await;
    assert_eq!((s, &v["tags"]), (StatusCode::OK, &json!([])));
    let release = json!({"hosts": {"host-a": PATH_A}, "message": "m"});
    let (s, _) = as_user(&api, &ci, "POST", paths::RELEASES, release.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = as_user(
        &api,
        &api.admin,
        "PUT",
        &paths::user_role("bob"),
        json!({"role": "viewer"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = as_user(&api, &ci, "POST", paths::RELEASES, release).await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "demoted publisher",
    );

    let users = api.ok("GET", paths::USERS, b"", Sign::By(&api.admin)).await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob", "ci", "val"]);
    let (s, _) = as_user(&api, &api.admin, "DELETE", &paths::user("bob"), Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    api.refused(
        build("GET", paths::WHOAMI, b"", Sign::By(&ci), None),
        StatusCode::UNAUTHORIZED,
        "unknown_key",
        "removed user",
    )
    .await;
}

#[tokio::test]
async fn nobody_raises_their_own_rights_or_removes_the_last_admin() {
    let api = Api::new(ServiceConfig::default()).await;
    let scoped_admin = identity();
    let add = json!({"name": "dave", "public_key": scoped_admin.public().to_openssh(), "role": "admin", "tags": ["kiosk"]});
    let (s, _) = as_user(&api, &api.admin, "POST", paths::USERS, add).await;
    assert_eq!(s, StatusCode::OK);
    let before = api.snapshot().await;
    // The last unscoped admin on themself: another admin must do it.
    for (method, path, v) in [
        ("PUT", paths::user_role("alice"), json!({"role": "viewer"})),
        ("PUT", paths::user_tags("alice"), json!({"tags": ["x"]})),
        ("DELETE", paths::user("alice"), Value::Null),
    ] {
        let (s, v) = as_user(&api, &api.admin, method, &path, v).await;
        assert_error(
            s,
            &v,
            StatusCode::FORBIDDEN,
            "own_rights",
            &format!("alice: {method} {path}"),
        );
    }
    // A scoped admin manages no user, themself least of all: lifting their own scope,
    // or making an unscoped admin, would step out of it.
    let newcomer =
        json!({"name": "eve", "public_key": identity().public().to_openssh(), "role": "admin"});
    for (method, path, v) in [
        ("PUT", paths::user_tags("dave"), json!({"tags": []})),
        ("PUT", paths::user_role("val"), json!({"role": "admin"})),
        ("POST", paths::USERS.to_owned(), newcomer),
        (
            "POST",
            paths::user_keys("alice"),
            json!({"public_key": identity().public().to_openssh()}),
        ),
        ("GET", paths::USERS.to_owned(), Value::Null),
    ] {
        let (s, v) = as_user(&api, &scoped_admin, method, &path, v).await;
        assert_error(
            s,
            &v,
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("dave: {method} {path}"),
        );
    }
    // Publishers and viewers cannot lift themselves either.
    let (s, v) = as_user(
        &api,
        &api.publisher,
        "PUT",
        &paths::user_role("ci"),
        json!({"role": "admin"}),
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "publisher promoting itself",
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused change changed something"
    );

    // Two unscoped admins: one may demote the other, after which the survivor is the last
    // and stays (its own change is refused, and nobody else may make it).
    let erin = identity();
    let add = json!({"name": "erin", "public_key": erin.public().to_openssh(), "role": "admin"});
    as_user(&api, &api.admin, "POST", paths::USERS, add).await;
    let (s, _) = as_user(
        &api,
        &erin,
        "PUT",
        &paths::user_tags("alice"),
        json!({"tags": ["ops"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = as_user(
        &api,
        &api.admin,
        "DELETE",
        &paths::user("erin"),
        Value::Null,
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "alice, now scoped, removes erin",
    );
    let (s, v) = as_user(
        &api,
        &erin,
        "PUT",
        &paths::user_role("erin"),
        json!({"role": "viewer"}),
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "own_rights",
        "erin demotes herself",
    );
}
