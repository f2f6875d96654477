//! The authorization matrix: every route of the server's own route table against every way a
//! request can be unauthorized, then once as the principal it needs. Who may call a route
//! comes from the table (`yeet_server::http::routes`); this file only knows how to call it,
//! so a route added without an entry here fails `every_route_has_a_matrix_entry`.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use yeet_proto::Identity;
use yeet_proto::api::{Role, paths};
use yeet_proto::osquery::paths as oq;
use yeet_server::http::{Access, Audited, Route, Scoped, routes};
use yeet_server::service::ServiceConfig;
use yeet_server::service::users::add_user;

use super::harness::*;

/// How the matrix calls one route: a concrete path, a body for the signer, and the status
/// the route answers its rightful caller with.
struct Sample {
    path: String,
    body: fn(&Identity) -> Vec<u8>,
    succeeds_with: StatusCode,
}

fn json_bytes(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// The matrix entry of a route, by its method and path template.
fn sample(method: &Method, template: &str) -> Option<Sample> {
    let s = |path: &str, body: fn(&Identity) -> Vec<u8>, succeeds_with| Sample {
        path: path.to_owned(),
        body,
        succeeds_with,
    };
    let empty: fn(&Identity) -> Vec<u8> = |_| Vec::new();
    let ok = StatusCode::OK;
    Some(match (method.as_str(), template) {
        ("POST", paths::REGISTER) => s(template, |id| Api::register_body(id, "matrix"), ok),
        ("POST", paths::CHECKIN) => s(
            template,
            |_| {
                json_bytes(
                    json!({"current_system": null, "booted_system": null, "facts": {"os": "", "arch": "", "agent_version": ""}}),
                )
            },
            ok,
        ),
        ("POST", paths::REPORT) => s(
            template,
            |_| {
                json_bytes(
                    json!({"store_path": PATH_A, "release_id": null, "result": "rolled-back", "reason": "switch failed",
                 "started_at": 1, "finished_at": 2, "log_gzip_base64": gzip_base64("switching...\nfailed\n")}),
                )
            },
            ok,
        ),
        ("GET", "/v1/hosts/{name}/activations") => s(&paths::host_activations("host-a"), empty, ok),
        ("GET", "/v1/hosts/{name}/log") => s(&paths::host_log("host-a"), empty, ok),
        (
            "GET",
            paths::WHOAMI | paths::REGISTRATIONS | paths::HOSTS | paths::RELEASES | paths::AUDIT,
        ) => s(template, empty, ok),
        // Approve, reject and rollback reach their handlers and find nothing to act on.
        ("POST", paths::APPROVE) => s(
            template,
            |_| json_bytes(json!({"code": "AAAA-AAAA", "name": "x"})),
            StatusCode::NOT_FOUND,
        ),
        ("POST", paths::REJECT) => s(
            template,
            |_| json_bytes(json!({"key_id": "SHA256:nope"})),
            StatusCode::NOT_FOUND,
        ),
        ("POST", paths::ROLLBACK) => s(
            template,
            |_| json_bytes(json!({"hosts": ["host-a"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("POST", paths::RETRY) => s(template, |_| json_bytes(json!({"hosts": ["host-a"]})), ok),
        ("GET", "/v1/hosts/{name}") => s(&paths::host("host-a"), empty, ok),
        ("GET", "/v1/releases/{id}") => s(&paths::release("1"), empty, ok),
        ("POST", paths::RELEASES) => s(
            template,
            |_| json_bytes(json!({"hosts": {"host-a": PATH_A}, "message": "m"})),
            ok,
        ),
        ("POST", paths::CACHE_GC) => s(template, |_| json_bytes(json!({"keep": 2})), ok),
        ("POST", paths::CACHE_MISSING) => s(template, |_| json_bytes(json!({"hashes": []})), ok),
        // Hosts of their own, so that the order of the table does not matter.
        ("POST", "/v1/hosts/{name}/rename") => s(
            &paths::host_rename("spare-1"),
            |_| json_bytes(json!({"new_name": "spare-z"})),
            ok,
        ),
        ("DELETE", "/v1/hosts/{name}") => s(&paths::host("spare-2"), empty, ok),
        ("GET", paths::USERS) => s(template, empty, ok),
        ("POST", paths::USERS) => s(
            template,
            |_| {
                json_bytes(
                    json!({"name": "matrix-user", "public_key": identity().public().to_openssh(), "role": "viewer"}),
                )
            },
            ok,
        ),
        ("GET", "/v1/users/{name}") => s(&paths::user("val"), empty, ok),
        // Users of their own, like the spare hosts.
        ("DELETE", "/v1/users/{name}") => s(&paths::user("spare-user-1"), empty, ok),
        ("PUT", "/v1/users/{name}/role") => s(
            &paths::user_role("spare-user-2"),
            |_| json_bytes(json!({"role": "publisher"})),
            ok,
        ),
        ("PUT", "/v1/users/{name}/tags") => s(
            &paths::user_tags("spare-user-2"),
            |_| json_bytes(json!({"tags": ["matrix"]})),
            ok,
        ),
        ("POST", "/v1/users/{name}/keys") => s(
            &paths::user_keys("spare-user-2"),
            |_| json_bytes(json!({"public_key": identity().public().to_openssh()})),
            ok,
        ),
        // Reaches the handler, which finds no such key.
        ("POST", "/v1/users/{name}/keys/remove") => s(
            &paths::user_keys_remove("spare-user-2"),
            |_| json_bytes(json!({"key_id": "SHA256:nope"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("POST", "/v1/hosts/{name}/tags") => s(
            &paths::host_tags("host-b"),
            |_| json_bytes(json!({"add": ["matrix"]})),
            ok,
        ),
        ("PUT", "/v1/hosts/{name}/policy") => s(
            &paths::host_policy("host-b"),
            |_| json_bytes(json!({"allow_detach": true})),
            ok,
        ),
        // host-a is detached before the matrix runs (and detaches again below).
        ("POST", "/v1/hosts/{name}/attach") => s(&paths::host_attach("host-a"), empty, ok),
        ("POST", paths::AGENT_DETACH) => s(
            template,
            |_| json_bytes(json!({"reason": "matrix", "user": "root"})),
            ok,
        ),
        ("POST", paths::AGENT_ATTACH) => s(template, |_| json_bytes(json!({})), ok),
        ("GET", paths::SECRETS | paths::SECRETS_RECIPIENT) => s(template, empty, ok),
        // Reaches the handler, which finds the ciphertext is not for this server.
        ("POST", paths::SECRETS) => s(
            template,
            |_| json_bytes(json!({"name": "matrix-new", "ciphertext": "bm90IGFnZQ=="})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("POST", "/v1/secrets/{name}/rotate") => s(
            &paths::secret_rotate("matrix-a"),
            |_| json_bytes(json!({"ciphertext": "bm90IGFnZQ=="})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("POST", "/v1/secrets/{name}/grant") => s(
            &paths::secret_grant("matrix-a"),
            |_| json_bytes(json!({"hosts": ["host-b"]})),
            ok,
        ),
        ("POST", "/v1/secrets/{name}/revoke") => s(
            &paths::secret_revoke("matrix-b"),
            |_| json_bytes(json!({"hosts": ["host-a"]})),
            ok,
        ),
        ("DELETE", "/v1/secrets/{name}") => s(&paths::secret("matrix-gone"), empty, ok),
        ("POST", paths::AGENT_SECRETS) => s(
            template,
            |_| {
                let recipient = age::x25519::Identity::generate().to_public().to_string();
                json_bytes(json!({"recipient": recipient, "names": ["matrix-a", "matrix-b"]}))
            },
            ok,
        ),
        ("GET", paths::ROLLOUT_POLICIES | paths::ROLLOUTS | paths::WINDOWS) => {
            s(template, empty, ok)
        }
        ("PUT", "/v1/windows/{name}") => s(
            &paths::window("matrix"),
            |_| {
                json_bytes(
                    json!({"tags": ["prod"], "days": "mon-fri", "from": "02:00", "to": "04:00", "tz": "Europe/Zurich"}),
                )
            },
            ok,
        ),
        ("DELETE", "/v1/windows/{name}") => s(&paths::window("nope"), empty, StatusCode::NOT_FOUND),
        ("PUT", "/v1/rollout-policies/{name}") => s(
            &paths::rollout_policy("matrix"),
            |_| json_bytes(json!({"waves": ["tag:canary", "100%"], "bake_secs": 60})),
            ok,
        ),
        // Removals, starts and controls reach their handlers and find nothing to act on.
        ("DELETE", "/v1/rollout-policies/{name}") => {
            s(&paths::rollout_policy("nope"), empty, StatusCode::NOT_FOUND)
        }
        ("POST", paths::ROLLOUTS) => s(
            template,
            |_| json_bytes(json!({"release": 999, "policy": "matrix"})),
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/v1/rollouts/{id}") => s(&paths::rollout("999"), empty, StatusCode::NOT_FOUND),
        ("POST", "/v1/rollouts/{id}/pause") => s(
            &paths::rollout_control("999", "pause"),
            empty,
            StatusCode::NOT_FOUND,
        ),
        ("POST", "/v1/rollouts/{id}/resume") => s(
            &paths::rollout_control("999", "resume"),
            empty,
            StatusCode::NOT_FOUND,
        ),
        ("POST", "/v1/rollouts/{id}/abort") => s(
            &paths::rollout_control("999", "abort"),
            empty,
            StatusCode::NOT_FOUND,
        ),
        ("POST", "/v1/rollouts/{id}/promote") => s(
            &paths::rollout_control("999", "promote"),
            empty,
            StatusCode::NOT_FOUND,
        ),
        ("GET", oq::NODES | oq::SCHEDULE | oq::OPTIONS | oq::LOGS | oq::CARVES) => {
            s(template, empty, ok)
        }
        ("POST", oq::SCHEDULE) => s(
            template,
            |_| json_bytes(json!({"name": "matrix", "query": "SELECT 1", "interval_secs": 60})),
            ok,
        ),
        // Removals, campaigns and downloads reach their handlers and find nothing.
        ("DELETE", "/v1/osquery/schedule/{name}") => {
            s(&oq::scheduled_query("nope"), empty, StatusCode::NOT_FOUND)
        }
        ("PUT", "/v1/osquery/options/{name}") => s(
            &oq::option("matrix"),
            |_| json_bytes(json!({"value": 10})),
            ok,
        ),
        ("DELETE", "/v1/osquery/options/{name}") => {
            s(&oq::option("nope"), empty, StatusCode::UNPROCESSABLE_ENTITY)
        }
        ("POST", oq::QUERIES) => s(
            template,
            |_| json_bytes(json!({"query": "SELECT 1", "all": true, "timeout_secs": 60})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("GET", "/v1/osquery/queries/{id}") => s(&oq::query("999"), empty, StatusCode::NOT_FOUND),
        ("POST", oq::CARVES) => s(
            template,
            |_| json_bytes(json!({"host": "nope", "path": "/etc/hosts", "timeout_secs": 60})),
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/v1/osquery/carves/{id}/archive") => {
            s(&oq::carve_archive("999"), empty, StatusCode::NOT_FOUND)
        }
        _ => return None,
    })
}

#[test]
fn every_route_has_a_matrix_entry() {
    let missing: Vec<String> = routes()
        .iter()
        .filter(|r| sample(&r.method, &r.path).is_none())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without an authorization-matrix entry (add them to `sample` in tests/api/authz.rs): {missing:?}"
    );
}

/// A request by the wrong principal, and how it is refused: an operator registering as a
/// host, an operator on a host endpoint, a host or a lesser role on an operator endpoint.
fn wrong_principal(api: &Api, access: Access) -> (&Identity, StatusCode, &'static str) {
    match access {
        Access::AnyKey => (&api.admin, StatusCode::CONFLICT, "operator_key"),
        Access::Host => (&api.admin, StatusCode::FORBIDDEN, "forbidden"),
        Access::Role(Role::Admin) => (&api.publisher, StatusCode::FORBIDDEN, "forbidden"),
        Access::Role(Role::Publisher) => (&api.viewer, StatusCode::FORBIDDEN, "forbidden"),
        Access::Role(Role::Viewer) => (&api.host_a, StatusCode::FORBIDDEN, "forbidden"),
    }
}

/// Keys the server must not accept as anyone: a host key an admin rejected, and an
/// operator removed offline (`yeet-server admin rm` from another process).
async fn dead_keys(api: &Api) -> (Identity, Identity) {
    let rejected = identity();
    api.register(&rejected).await;
    let body = json_bytes(json!({"key_id": rejected.public().key_id()}));
    api.ok("POST", paths::REJECT, &body, Sign::By(&api.admin))
        .await;
    let gone_operator = identity();
    let store = api.service.store();
    add_user(
        store,
        "gone",
        &gone_operator.public().to_openssh(),
        Role::Admin,
        &[],
        &crate::common::ev(),
    )
    .await
    .unwrap();
    yeet_server::service::users::change_user(
        store,
        "gone",
        &yeet_server::store::UserChange::Remove,
        &crate::common::ev(),
    )
    .await
    .unwrap();
    (rejected, gone_operator)
}

/// Every refusal one route must give, as (how it is signed, status, code, case).
async fn assert_refusals(api: &Api, route: &Route, dead: &(Identity, Identity)) {
    let Some(sample) = sample(&route.method, &route.path) else {
        return;
    };
    let method = route.method.as_str();
    let ctx = |case: &str| format!("{method} {} [{case}]", sample.path);
    let stranger = identity();
    let (rejected, gone_operator) = dead;
    let unauthorized = StatusCode::UNAUTHORIZED;
    #[rustfmt::skip]
    let mut cases = vec![
        (&api.admin, Sign::None, unauthorized, "unsigned", "no signature"),
        (&api.admin, Sign::Corrupted(&api.admin), unauthorized, "bad_signature", "bad signature"),
        (&api.admin, Sign::Stale(&api.admin), unauthorized, "stale_timestamp", "stale timestamp"),
        (&api.admin, Sign::OtherServer(&api.admin), unauthorized, "wrong_server", "signed for another server"),
        // Host B's identity claimed with host A's signature.
        (&api.host_b, Sign::Claiming(&api.host_a, &api.host_b), unauthorized, "bad_signature", "another host's key"),
    ];
    if route.access == Access::AnyKey {
        cases.push((
            rejected,
            Sign::By(rejected),
            StatusCode::FORBIDDEN,
            "forbidden",
            "rejected key",
        ));
    } else {
        #[rustfmt::skip]
        cases.extend([
            (&stranger, Sign::By(&stranger), unauthorized, "unknown_key", "unknown key"),
            (&api.removed_host, Sign::By(&api.removed_host), unauthorized, "unknown_key", "removed host"),
            (rejected, Sign::By(rejected), unauthorized, "unknown_key", "rejected key"),
            (gone_operator, Sign::By(gone_operator), unauthorized, "unknown_key", "operator removed offline"),
        ]);
    }
    if let Access::Role(_) = route.access {
        cases.push((
            &api.host_b,
            Sign::By(&api.host_b),
            StatusCode::FORBIDDEN,
            "forbidden",
            "host key on operator endpoint",
        ));
    }
    for (signer, sign, status, code, case) in cases {
        let recorded = api.audit_events().await.len();
        let body = (sample.body)(signer);
        api.refused(
            build(method, &sample.path, &body, sign, None),
            status,
            code,
            &ctx(case),
        )
        .await;
        if status == unauthorized {
            // No key, a bad signature, an unknown key: nothing is recorded (such
            // requests must not fill the audit log).
            assert_eq!(
                api.audit_events().await.len(),
                recorded,
                "{}: an unauthenticated request was recorded",
                ctx(case)
            );
        } else {
            assert_recorded(api, route, recorded, None, code, &ctx(case)).await;
        }
    }
    let recorded = api.audit_events().await.len();
    // The wrong principal, then the same bytes again: refused, then a replay.
    let (wrong, status, code) = wrong_principal(api, route.access);
    let body = (sample.body)(wrong);
    let first = build(method, &sample.path, &body, Sign::By(wrong), None);
    let mut replay = Request::builder()
        .method(first.method())
        .uri(first.uri())
        .body(Body::from(body.clone()))
        .unwrap();
    *replay.headers_mut() = first.headers().clone();
    let (s, v) = api.send(first).await;
    assert_error(s, &v, status, code, &ctx("wrong principal"));
    let (s, v) = api.send(replay).await;
    assert_error(
        s,
        &v,
        unauthorized,
        "replayed_nonce",
        &ctx("replayed nonce"),
    );
    // An authenticated refusal of a recorded route is one event, with the refusal's code;
    // the replay, unauthenticated, is none.
    assert_recorded(
        api,
        route,
        recorded,
        Some(wrong.public().key_id()),
        code,
        &ctx("wrong principal"),
    )
    .await;
}

/// Checks that since `recorded` events, `route` recorded exactly one event (its action,
/// with `outcome`, signed by `key_id` when given) if it is a recorded route, and none
/// otherwise.
async fn assert_recorded(
    api: &Api,
    route: &Route,
    recorded: usize,
    key_id: Option<&str>,
    outcome: &str,
    ctx: &str,
) {
    let events = api.audit_events().await;
    let new = &events[recorded.min(events.len())..];
    match route.audited {
        Some(Audited::Action(action)) => {
            assert_eq!(new.len(), 1, "{ctx}: want exactly one audit event: {new:?}");
            let event = &new[0];
            assert_eq!(event.action, action, "{ctx}: {event:?}");
            assert_eq!(event.outcome, outcome, "{ctx}: {event:?}");
            if let Some(key_id) = key_id {
                assert_eq!(event.key_id, key_id, "{ctx}: {event:?}");
            }
            assert!(!event.nonce.is_empty(), "{ctx}: no nonce: {event:?}");
        }
        // A read is recorded only when refused.
        Some(Audited::Reads) if outcome != "done" => {
            assert_eq!(
                new.len(),
                1,
                "{ctx}: want one event for a refused read: {new:?}"
            );
            assert_eq!(new[0].action, yeet_proto::audit::READ_REFUSED, "{ctx}");
            assert_eq!(new[0].outcome, outcome, "{ctx}");
        }
        Some(Audited::Reads | Audited::Unrecorded(_)) => {
            assert!(
                new.is_empty(),
                "{ctx}: an unrecorded route recorded {new:?}"
            );
        }
        None => panic!("{ctx}: the route does not say what the audit log records of it"),
    }
}

#[tokio::test]
async fn authorization_matrix() {
    let api = Api::new(ServiceConfig::default()).await;
    for (name, id) in [("spare-1", identity()), ("spare-2", identity())] {
        api.enroll(&id, name).await;
    }
    for name in ["spare-user-1", "spare-user-2"] {
        add_user(
            api.service.store(),
            name,
            &identity().public().to_openssh(),
            Role::Viewer,
            &[],
            &crate::common::ev(),
        )
        .await
        .unwrap();
    }
    for name in ["matrix-a", "matrix-b", "matrix-gone"] {
        api.add_secret(name, b"matrix", &["host-a"]).await;
    }
    let dead = dead_keys(&api).await;
    api.allow_detach("host-a").await;
    let detach = json_bytes(json!({"reason": "matrix"}));
    api.ok("POST", paths::AGENT_DETACH, &detach, Sign::By(&api.host_a))
        .await;
    // A user scoped by tags, with the highest role, whose scope covers host-a (every
    // sample's host): the scope dimension of the matrix.
    let scoped = identity();
    add_user(
        api.service.store(),
        "scoped-admin",
        &scoped.public().to_openssh(),
        Role::Admin,
        &["matrix-scope".to_owned()],
        &crate::common::ev(),
    )
    .await
    .unwrap();
    for host in ["host-a", "host-b"] {
        let tag = json_bytes(json!({"add": ["matrix-scope"]}));
        api.ok("POST", &paths::host_tags(host), &tag, Sign::By(&api.admin))
            .await;
    }
    let before = api.snapshot().await;
    let table = routes();
    for route in &table {
        assert_refusals(&api, route, &dead).await;
        // A route that does not serve scoped users refuses them before anything happens,
        // even for hosts in their scope.
        if route.scoped == Scoped::Refused
            && let (Access::Role(_), Some(sample)) =
                (route.access, sample(&route.method, &route.path))
        {
            let recorded = api.audit_events().await.len();
            let body = (sample.body)(&scoped);
            api.refused(
                build(
                    route.method.as_str(),
                    &sample.path,
                    &body,
                    Sign::By(&scoped),
                    None,
                ),
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("{} {} [scoped user]", route.method, sample.path),
            )
            .await;
            assert_recorded(
                &api,
                route,
                recorded,
                Some(scoped.public().key_id()),
                "forbidden",
                &format!("{} {} [scoped user]", route.method, sample.path),
            )
            .await;
        }
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed state"
    );

    // The matrix is not vacuous: every route answers the principal it needs.
    for route in &table {
        let Some(sample) = sample(&route.method, &route.path) else {
            continue;
        };
        let fresh = identity();
        let who = match route.access {
            Access::AnyKey => &fresh,
            Access::Host => &api.host_a,
            Access::Role(Role::Viewer) => &api.viewer,
            Access::Role(Role::Publisher) => &api.publisher,
            Access::Role(Role::Admin) => &api.admin,
        };
        let body = (sample.body)(who);
        let recorded = api.audit_events().await.len();
        let (s, v) = api
            .call(route.method.as_str(), &sample.path, &body, Sign::By(who))
            .await;
        assert_eq!(
            s, sample.succeeds_with,
            "{} {}: {v}",
            route.method, sample.path
        );
        // Every call of a recorded route is one event: done, or refused with its code.
        let outcome = v["error"]["code"].as_str().unwrap_or("done");
        // A registering key is not known yet: its event, if any, names no user key.
        let key_id = (route.access != Access::AnyKey).then(|| who.public().key_id());
        assert_recorded(
            &api,
            route,
            recorded,
            key_id,
            outcome,
            &format!("{} {}", route.method, sample.path),
        )
        .await;
    }
    // The chain the matrix wrote verifies.
    let events = api.audit_events().await;
    assert!(events.len() > 40, "{}", events.len());
    yeet_proto::audit::verify_chain(&events).unwrap();
}
