//! The HTTP API in process, on a real SQLite store: the authorization matrix (every endpoint
//! against every way a request can be unauthorized) and bad input. Requests are built and
//! signed here byte by byte, so that broken signatures, stale clocks and replays can be forged.

#![allow(clippy::unwrap_used)]

mod common;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;
use yeet_proto::api::{Role, paths};
use yeet_proto::{Identity, SignatureHeaders};
use yeet_server::http::{AppState, router};
use yeet_server::service::cache::EmbeddedCache;
use yeet_server::service::users::add_user;
use yeet_server::service::{Service, ServiceConfig, now};

/// Where test requests say they go (the in-process server has no configured URLs, so the
/// signed origin must match the Host header).
const TEST_HOST: &str = "yeet.test";
const TEST_ORIGIN: &str = "http://yeet.test";
const PATH_A: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-a";

fn identity() -> Identity {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    Identity::from_seed(&seed)
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::getrandom(&mut n).unwrap();
    n
}

struct Api {
    router: Router,
    service: Arc<Service>,
    admin: Identity,
    publisher: Identity,
    viewer: Identity,
    host_a: Identity,
    host_b: Identity,
    removed_host: Identity,
    cache_dir: tempfile::TempDir,
    _db: common::TestDb,
}

/// How a test request is signed.
#[derive(Clone, Copy)]
enum Sign<'a> {
    None,
    By(&'a Identity),
    /// Signed by the first identity, claiming to be the second.
    Claiming(&'a Identity, &'a Identity),
    Stale(&'a Identity),
    Corrupted(&'a Identity),
    /// Correctly signed, but for another server.
    OtherServer(&'a Identity),
}

fn build(
    method: &str,
    path: &str,
    body: &[u8],
    sign: Sign,
    from: Option<SocketAddr>,
) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", TEST_HOST)
        .header("content-type", "application/json");
    let signed = |id: &Identity, ts: i64| {
        SignatureHeaders::sign(id, TEST_ORIGIN, method, path, body, ts, nonce())
    };
    let headers = match sign {
        Sign::None => None,
        Sign::By(id) => Some(signed(id, now())),
        Sign::Stale(id) => Some(signed(id, now() - 3600)),
        Sign::Corrupted(id) => {
            let mut h = signed(id, now());
            h.signature[10] ^= 0x40;
            Some(h)
        }
        Sign::OtherServer(id) => Some(SignatureHeaders::sign(
            id,
            "https://other.test",
            method,
            path,
            body,
            now(),
            nonce(),
        )),
        Sign::Claiming(signer, claimed) => {
            let mut h = signed(signer, now());
            h.key_id = claimed.public().key_id().to_owned();
            Some(h)
        }
    };
    for (k, v) in headers.iter().flat_map(|h| h.to_pairs()) {
        req = req.header(k, v);
    }
    if headers.is_some() {
        // As the real client does; only streamed uploads need it.
        req = req.header(
            yeet_proto::signing::HEADER_CONTENT_SHA256,
            yeet_proto::signing::body_digest(body),
        );
    }
    let mut req = req.body(Body::from(body.to_vec())).unwrap();
    if let Some(addr) = from {
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    req
}

impl Api {
    async fn new(config: ServiceConfig) -> Api {
        let db = common::TestDb::sqlite().await;
        let store = db.open().await;
        let (admin, publisher, viewer) = (identity(), identity(), identity());
        for (name, id, role) in [
            ("alice", &admin, Role::Admin),
            ("ci", &publisher, Role::Publisher),
            ("val", &viewer, Role::Viewer),
        ] {
            add_user(&store, name, &id.public().to_openssh(), role)
                .await
                .unwrap();
        }
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = EmbeddedCache::open(cache_dir.path()).unwrap();
        let service = Arc::new(
            Service::new(store, config)
                .await
                .unwrap()
                .with_embedded_cache(cache),
        );
        let router = router(AppState {
            service: service.clone(),
            max_body_bytes: 64 * 1024,
            max_upload_bytes: 1 << 20,
            body_timeout: std::time::Duration::from_secs(5),
        });
        let api = Api {
            router,
            service,
            admin,
            publisher,
            viewer,
            host_a: identity(),
            host_b: identity(),
            removed_host: identity(),
            cache_dir,
            _db: db,
        };
        for (id, name) in [
            (&api.host_a, "host-a"),
            (&api.host_b, "host-b"),
            (&api.removed_host, "gone"),
        ] {
            api.enroll(id, name).await;
        }
        let (s, _) = api
            .call("DELETE", &paths::host("gone"), b"", Sign::By(&api.admin))
            .await;
        assert_eq!(s, StatusCode::OK);
        api
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
        (status, v)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        sign: Sign<'_>,
    ) -> (StatusCode, Value) {
        self.send(build(method, path, body, sign, None)).await
    }

    /// An upload to the embedded cache.
    async fn put(&self, path: &str, body: &[u8], sign: Sign<'_>) -> (StatusCode, Value) {
        self.send(build("PUT", path, body, sign, None)).await
    }

    fn register_body(id: &Identity, hint: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"public_key": id.public().to_openssh(), "hostname_hint": hint, "facts": {"os": "linux", "arch": "x86_64", "agent_version": "test"}})).unwrap()
    }

    /// Registers `id` and returns its code.
    async fn register(&self, id: &Identity) -> String {
        let (s, v) = self
            .call(
                "POST",
                paths::REGISTER,
                &Self::register_body(id, "h"),
                Sign::By(id),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["code"].as_str().unwrap().to_owned()
    }

    async fn enroll(&self, id: &Identity, name: &str) {
        let code = self.register(id).await;
        let body = serde_json::to_vec(&json!({"code": code, "name": name})).unwrap();
        let (s, v) = self
            .call("POST", paths::APPROVE, &body, Sign::By(&self.admin))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// Everything the API can change, as one comparable value.
    async fn snapshot(&self) -> String {
        self.service.flush_last_seen().await.unwrap();
        let st = self.service.store();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            st.list_users().await.unwrap(),
            st.list_hosts().await.unwrap(),
            st.list_registrations().await.unwrap(),
            st.list_releases(None, 1000).await.unwrap()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    Viewer,
    Publisher,
    Admin,
    Host,
}

struct Endpoint {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    need: Need,
}

fn gzip_base64(text: &str) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap())
}

fn endpoints() -> Vec<Endpoint> {
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    let e = |method, path: &str, body: Vec<u8>, need| Endpoint {
        method,
        path: path.to_owned(),
        body,
        need,
    };
    vec![
        e(
            "POST",
            paths::CHECKIN,
            j(
                json!({"current_system": null, "booted_system": null, "facts": {"os": "", "arch": "", "agent_version": ""}}),
            ),
            Need::Host,
        ),
        e(
            "POST",
            paths::REPORT,
            j(
                json!({"store_path": PATH_A, "release_id": null, "result": "rolled-back", "reason": "switch failed",
                     "started_at": 1, "finished_at": 2, "log_gzip_base64": gzip_base64("switching...\nfailed\n")}),
            ),
            Need::Host,
        ),
        e(
            "GET",
            &paths::host_activations("host-a"),
            vec![],
            Need::Viewer,
        ),
        e("GET", &paths::host_log("host-a"), vec![], Need::Viewer),
        e("GET", paths::WHOAMI, vec![], Need::Viewer),
        e("GET", paths::REGISTRATIONS, vec![], Need::Viewer),
        e(
            "POST",
            paths::APPROVE,
            j(json!({"code": "AAAA-AAAA", "name": "x"})),
            Need::Admin,
        ),
        e(
            "POST",
            paths::REJECT,
            j(json!({"key_id": "SHA256:nope"})),
            Need::Admin,
        ),
        e("GET", paths::HOSTS, vec![], Need::Viewer),
        e("GET", &paths::host("host-a"), vec![], Need::Viewer),
        e("GET", paths::RELEASES, vec![], Need::Viewer),
        e(
            "POST",
            paths::RELEASES,
            j(json!({"hosts": {"host-a": PATH_A}, "message": "m"})),
            Need::Publisher,
        ),
        e("GET", &paths::release("1"), vec![], Need::Viewer),
        e(
            "POST",
            paths::ROLLBACK,
            j(json!({"hosts": ["host-a"]})),
            Need::Publisher,
        ),
        e("POST", paths::CACHE_GC, j(json!({"keep": 2})), Need::Admin),
        // Last, so that the success pass below still finds host-a and host-b before these.
        e(
            "POST",
            &paths::host_rename("host-a"),
            j(json!({"new_name": "host-z"})),
            Need::Admin,
        ),
        e("DELETE", &paths::host("host-b"), vec![], Need::Admin),
    ]
}

fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str, ctx: &str) {
    assert_eq!(status, want, "{ctx}: {v}");
    assert_eq!(v["error"]["code"], code, "{ctx}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{ctx}: {v}"
    );
}

#[tokio::test]
async fn authorization_matrix() {
    let api = Api::new(ServiceConfig::default()).await;
    // A host key an admin rejected, and an operator removed offline (`yeet-server admin rm`
    // from another process, straight in the database).
    let rejected = identity();
    api.register(&rejected).await;
    let body = serde_json::to_vec(&json!({"key_id": rejected.public().key_id()})).unwrap();
    let (s, v) = api
        .call("POST", paths::REJECT, &body, Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let gone_operator = identity();
    add_user(
        api.service.store(),
        "gone",
        &gone_operator.public().to_openssh(),
        Role::Admin,
    )
    .await
    .unwrap();
    api.service.store().delete_user("gone").await.unwrap();
    let before = api.snapshot().await;
    let stranger = identity();
    for ep in endpoints() {
        let ctx = |case: &str| format!("{} {} [{case}]", ep.method, ep.path);
        let call = |sign| api.call(ep.method, &ep.path, &ep.body, sign);
        let (s, v) = call(Sign::None).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "unsigned",
            &ctx("no signature"),
        );
        let (s, v) = call(Sign::Corrupted(&api.admin)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            &ctx("bad signature"),
        );
        let (s, v) = call(Sign::Stale(&api.admin)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
            &ctx("stale timestamp"),
        );
        let (s, v) = call(Sign::By(&stranger)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "unknown_key",
            &ctx("unknown key"),
        );
        let (s, v) = call(Sign::By(&api.removed_host)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "unknown_key",
            &ctx("removed host"),
        );
        if ep.path != paths::REGISTER {
            let (s, v) = call(Sign::By(&rejected)).await;
            assert_error(
                s,
                &v,
                StatusCode::UNAUTHORIZED,
                "unknown_key",
                &ctx("rejected key"),
            );
        }
        let (s, v) = call(Sign::By(&gone_operator)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "unknown_key",
            &ctx("operator removed offline"),
        );
        let (s, v) = call(Sign::OtherServer(&api.admin)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "wrong_server",
            &ctx("signed for another server"),
        );
        // Host B's identity claimed with host A's signature.
        let (s, v) = call(Sign::Claiming(&api.host_a, &api.host_b)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            &ctx("another host's key"),
        );
        let wrong_role = match ep.need {
            Need::Admin => &api.publisher,
            Need::Publisher => &api.viewer,
            Need::Viewer => &api.host_a,
            Need::Host => &api.admin,
        };
        let req = || build(ep.method, &ep.path, &ep.body, Sign::By(wrong_role), None);
        let first = req();
        let replay = Request::builder()
            .method(first.method())
            .uri(first.uri())
            .body(Body::from(ep.body.clone()))
            .map(|mut r| {
                *r.headers_mut() = first.headers().clone();
                r
            });
        let (s, v) = api.send(first).await;
        assert_error(
            s,
            &v,
            StatusCode::FORBIDDEN,
            "forbidden",
            &ctx("wrong role"),
        );
        let (s, v) = api.send(replay.unwrap()).await;
        assert_error(
            s,
            &v,
            StatusCode::UNAUTHORIZED,
            "replayed_nonce",
            &ctx("replayed nonce"),
        );
        if ep.need != Need::Host {
            let (s, v) = call(Sign::By(&api.host_b)).await;
            assert_error(
                s,
                &v,
                StatusCode::FORBIDDEN,
                "forbidden",
                &ctx("host key on operator endpoint"),
            );
        }
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed state"
    );

    // The matrix is not vacuous: every endpoint succeeds for the role it needs.
    for ep in endpoints() {
        let who = match ep.need {
            Need::Admin => &api.admin,
            Need::Publisher => &api.publisher,
            Need::Viewer => &api.viewer,
            Need::Host => &api.host_a,
        };
        let (s, v) = api.call(ep.method, &ep.path, &ep.body, Sign::By(who)).await;
        // Approve, reject and rollback reach their handlers and find nothing to act on.
        let expected = if ep.path == paths::APPROVE || ep.path == paths::REJECT {
            StatusCode::NOT_FOUND
        } else if ep.path == paths::ROLLBACK {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        assert_eq!(s, expected, "{} {}: {v}", ep.method, ep.path);
    }
}

#[tokio::test]
async fn registration_endpoint_refusals() {
    let api = Api::new(ServiceConfig::default()).await;
    let fresh = identity();
    let body = Api::register_body(&fresh, "new");
    let (s, v) = api.call("POST", paths::REGISTER, &body, Sign::None).await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "unsigned",
        "register unsigned",
    );
    let (s, v) = api
        .call("POST", paths::REGISTER, &body, Sign::Corrupted(&fresh))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        "register corrupted",
    );
    let (s, v) = api
        .call("POST", paths::REGISTER, &body, Sign::Stale(&fresh))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "stale_timestamp",
        "register stale",
    );
    // Signed by one key, registering another: no proof of possession.
    let (s, v) = api
        .call("POST", paths::REGISTER, &body, Sign::By(&identity()))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        "register someone else's key",
    );
    let (s, v) = api
        .call(
            "POST",
            paths::REGISTER,
            &Api::register_body(&api.admin, "x"),
            Sign::By(&api.admin),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "operator_key",
        "register an operator key",
    );
    assert!(
        api.service
            .store()
            .list_registrations()
            .await
            .unwrap()
            .is_empty()
    );
    // An approved host learns its name.
    let (s, v) = api
        .call(
            "POST",
            paths::REGISTER,
            &Api::register_body(&api.host_a, "x"),
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str(), v["host"].as_str()),
        (StatusCode::OK, Some("approved"), Some("host-a"))
    );
}

#[tokio::test]
async fn enrollment_codes_expire_and_rejected_keys_stay_out() {
    let api = Api::new(ServiceConfig {
        reregister_interval: std::time::Duration::ZERO,
        ..Default::default()
    })
    .await;
    let h = identity();
    let code = api.register(&h).await;
    assert_eq!(api.register(&h).await, code, "an unexpired code is stable");
    // `yeet pending` never shows the code.
    let (_, pending) = api
        .call("GET", paths::REGISTRATIONS, b"", Sign::By(&api.viewer))
        .await;
    assert!(
        !pending.to_string().contains(&code.replace('-', ""))
            && !pending.to_string().contains(&code),
        "{pending}"
    );
    assert_eq!(pending[0]["key_id"], h.public().key_id());
    // Expire it in the store.
    let st = api.service.store();
    let mut row = st
        .registration_by_key(h.public().key_id())
        .await
        .unwrap()
        .unwrap();
    row.code_expires_at = now() - 1;
    st.upsert_registration(&row).await.unwrap();
    let approve = |code: &str| serde_json::to_vec(&json!({"code": code, "name": "late"})).unwrap();
    let before = api.snapshot().await;
    let (s, v) = api
        .call(
            "POST",
            paths::APPROVE,
            &approve(&code),
            Sign::By(&api.admin),
        )
        .await;
    assert_error(s, &v, StatusCode::GONE, "code_expired", "expired code");
    assert_eq!(api.snapshot().await, before);
    let fresh = api.register(&h).await;
    assert_ne!(fresh, code);
    let (s, v) = api
        .call(
            "POST",
            paths::APPROVE,
            &approve(&fresh.to_lowercase()),
            Sign::By(&api.admin),
        )
        .await;
    assert_eq!(
        (s, v["name"].as_str()),
        (StatusCode::OK, Some("late")),
        "{v}"
    );

    let bad = identity();
    api.register(&bad).await;
    let reject = serde_json::to_vec(&json!({"key_id": bad.public().key_id()})).unwrap();
    let (s, _) = api
        .call("POST", paths::REJECT, &reject, Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api
        .call(
            "POST",
            paths::REGISTER,
            &Api::register_body(&bad, "again"),
            Sign::By(&bad),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "rejected key re-registers",
    );
}

#[tokio::test]
async fn registration_floods_cannot_evict_or_starve_a_waiting_host() {
    let interval = std::time::Duration::from_millis(50);
    let config = ServiceConfig {
        max_pending: 4,
        registration_burst: 3,
        registration_refill: std::time::Duration::from_secs(3600),
        reregister_interval: interval,
        ..Default::default()
    };
    let api = Api::new(config).await;
    let v4 = |net: u8, last: u8| Some(SocketAddr::from(([10, 0, net, last], 5000)));
    let v6 = |last: u16| {
        Some(SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last),
            5000,
        )))
    };
    let register_from = |id: &Identity, from: Option<SocketAddr>| {
        api.send(build(
            "POST",
            paths::REGISTER,
            &Api::register_body(id, "f"),
            Sign::By(id),
            from,
        ))
    };
    let real = identity();
    let (s, v) = register_from(&real, v4(0, 1)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let code = v["code"].as_str().unwrap().to_owned();
    // Re-registering at once is throttled.
    let (s, v) = register_from(&real, v4(0, 1)).await;
    assert_error(
        s,
        &v,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "re-registration",
    );
    // One network: the burst, then 429 with a JSON error.
    for _ in 0..3 {
        assert_eq!(register_from(&identity(), v4(0, 2)).await.0, StatusCode::OK);
    }
    let (s, v) = register_from(&identity(), v4(0, 2)).await;
    assert_error(
        s,
        &v,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "flood from one address",
    );
    // Every address of an IPv6 /64 is one network.
    for last in 0..3 {
        assert_eq!(register_from(&identity(), v6(last)).await.0, StatusCode::OK);
    }
    let (s, v) = register_from(&identity(), v6(999)).await;
    assert_error(
        s,
        &v,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "flood from one /64",
    );
    // Waves of new keys from many networks at once: the cap holds exactly, and the host
    // that keeps polling keeps its row and its code.
    for wave in 1..=5u8 {
        let keys: Vec<Identity> = (0..20).map(|_| identity()).collect();
        let flood = keys
            .iter()
            .enumerate()
            .map(|(i, id)| register_from(id, v4(wave, i as u8)));
        for (status, v) in futures_util::future::join_all(flood).await {
            assert!(
                status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
                "{v}"
            );
        }
        assert!(api.service.store().count_registrations().await.unwrap() <= 4);
        tokio::time::sleep(interval * 2).await;
        let (s, v) = register_from(&real, v4(0, 1)).await;
        assert_eq!(s, StatusCode::OK, "a waiting host is never starved: {v}");
        assert_eq!(v["code"], code, "the waiting host's code changed");
    }
    // The admin approves the code the host showed before the flood.
    let body = serde_json::to_vec(&json!({"code": code, "name": "real"})).unwrap();
    let (s, v) = api
        .call("POST", paths::APPROVE, &body, Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn throwaway_keys_cannot_fill_the_replay_cache() {
    let config = ServiceConfig {
        registration_burst: 5,
        registration_refill: std::time::Duration::from_secs(3600),
        nonces_per_key: 50,
        ..Default::default()
    };
    let api = Api::new(config).await;
    let before = api.service.remembered_nonces();
    // 2,000 registrations, each by a new key, from one address: only the admitted ones
    // (the burst) leave a nonce behind.
    let flood = (0..2000).map(|_| {
        let id = identity();
        let req = build(
            "POST",
            paths::REGISTER,
            &Api::register_body(&id, "flood"),
            Sign::By(&id),
            Some(SocketAddr::from(([10, 9, 9, 9], 1))),
        );
        api.send(req)
    });
    let statuses = futures_util::future::join_all(flood).await;
    let admitted = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .count();
    assert_eq!(admitted, 5);
    assert_eq!(api.service.remembered_nonces(), before + 5);
    // One key over its share is refused; everybody else carries on.
    let mut refused = 0;
    for _ in 0..60 {
        let (s, _) = api
            .call("GET", paths::WHOAMI, b"", Sign::By(&api.viewer))
            .await;
        refused += usize::from(s == StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(refused, 10);
    let (s, v) = api
        .call("GET", paths::WHOAMI, b"", Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "POST",
            paths::CHECKIN,
            br#"{"state":"standby","facts":{"os":"linux","arch":"x86_64","agent_version":"t"}}"#,
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_the_server_keeps_serving() {
    let api = Api::new(ServiceConfig::default()).await;
    let before = api.snapshot().await;
    let pubr = |body: &[u8]| {
        api.send(build(
            "POST",
            paths::RELEASES,
            body,
            Sign::By(&api.publisher),
            None,
        ))
    };
    let (s, v) = pubr(b"{not json").await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "garbage JSON",
    );
    let (s, v) = pubr(br#"{"hosts": 5}"#).await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "wrong JSON shape",
    );
    let (s, v) = pubr(&vec![b' '; 65 * 1024]).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "oversized body",
    );
    let release =
        |host: &str, path: &str| serde_json::to_vec(&json!({"hosts": {host: path}})).unwrap();
    for bad_path in [
        "/etc/passwd",
        "/nix/store/short-x",
        "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-a/../../etc",
    ] {
        let (s, v) = pubr(&release("host-a", bad_path)).await;
        assert_error(
            s,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_store_path",
            bad_path,
        );
    }
    let (s, v) = pubr(&release("nosuch", PATH_A)).await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_host",
        "unknown host",
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("nosuch") && msg.contains("host-a") && msg.contains("host-b"),
        "{msg}"
    );
    let (s, v) = pubr(br#"{"hosts": {}}"#).await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty_release",
        "empty release",
    );
    let (s, v) = api
        .call(
            "POST",
            &paths::host_rename("host-a"),
            br#"{"new_name": "Bad Name"}"#,
            Sign::By(&api.admin),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
        "bad name",
    );
    let (s, v) = api
        .call(
            "POST",
            &paths::host_rename("host-a"),
            br#"{"new_name": "host-b"}"#,
            Sign::By(&api.admin),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "name_taken",
        "rename onto existing",
    );
    let (s, v) = api
        .call("GET", &paths::host("nosuch"), b"", Sign::By(&api.viewer))
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_host", "unknown host");
    let (s, v) = api
        .call(
            "POST",
            paths::CHECKIN,
            br#"{"current_system": "/bin/sh", "facts": {"os":"","arch":"","agent_version":""}}"#,
            Sign::By(&api.host_a),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_store_path",
        "checkin with bad path",
    );
    let (s, v) = api
        .call(
            "GET",
            &format!("{}?limit=abc", paths::RELEASES),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "bad query string",
    );
    let (s, v) = api
        .send(
            Request::builder()
                .uri("/v1/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "unknown endpoint",
    );
    let (s, v) = api
        .send(
            Request::builder()
                .method("PUT")
                .uri(paths::HOSTS)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "wrong method",
    );
    let mut no_ct = build(
        "POST",
        paths::RELEASES,
        &release("host-a", PATH_A),
        Sign::By(&api.publisher),
        None,
    );
    no_ct.headers_mut().remove("content-type");
    let (s, v) = api.send(no_ct).await;
    assert_error(
        s,
        &v,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not_json",
        "no content type",
    );
    let mut bad_header = build("GET", paths::HOSTS, b"", Sign::By(&api.viewer), None);
    bad_header
        .headers_mut()
        .insert("x-yeet-nonce", "zz".parse().unwrap());
    let (s, v) = api.send(bad_header).await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "malformed_signature",
        "malformed nonce",
    );
    assert_eq!(api.snapshot().await, before, "bad input changed state");

    // Still serving, and a good release now goes through and sets the desired system.
    let (s, v) = pubr(&release("host-a", PATH_A)).await;
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
    let (_, v) = api
        .call("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(
        (v["desired_system"].as_str(), v["state"].as_str()),
        (Some(PATH_A), Some("standby")),
        "{v}"
    );
}

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
    let (_, v) = api
        .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(v["host"].as_str(), Some("web"), "{v}");
    let (s, _) = api
        .call("DELETE", &paths::host("web"), b"", Sign::By(&api.admin))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api
        .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "unknown_key",
        "removed host checks in",
    );
}

#[tokio::test]
async fn activation_reports_build_a_history_and_the_latest_log() {
    let api = Api::new(ServiceConfig::default()).await;
    let report = |result: &str, log: &str| {
        serde_json::to_vec(&json!({"store_path": PATH_A, "release_id": 1, "result": result, "reason": format!("r-{result}"),
                                   "started_at": 10, "finished_at": 20, "reboot_required": result == "confirmed",
                                   "log_gzip_base64": gzip_base64(log)})).unwrap()
    };
    let (s, v) = api
        .call(
            "GET",
            &paths::host_log("host-a"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "no_activation",
        "log before any activation",
    );
    for (result, log) in [("rolled-back", "first log"), ("confirmed", "second log")] {
        let (s, v) = api
            .call(
                "POST",
                paths::REPORT,
                &report(result, log),
                Sign::By(&api.host_a),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, history) = api
        .call(
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
    let (_, log) = api
        .call(
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
    let (_, other) = api
        .call(
            "GET",
            &paths::host_activations("host-b"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(other, json!([]));

    let mut bad = serde_json::from_slice::<Value>(&report("failed", "x")).unwrap();
    bad["log_gzip_base64"] = json!("%%%");
    let (s, v) = api
        .call(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&bad).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_log",
        "bad base64",
    );
    bad["log_gzip_base64"] = json!(gzip_base64(&"a".repeat(2 << 20)));
    let (s, v) = api
        .call(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&bad).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "log_too_large",
        "gzip bomb",
    );
    bad["log_gzip_base64"] = json!("");
    bad["result"] = json!("exploded");
    let (s, v) = api
        .call(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&bad).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "unknown result",
    );
    let (_, history) = api
        .call(
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
    let (_, v) = api.call("POST", paths::CHECKIN, &serde_json::to_vec(&json!({"current_system": PATH_A, "facts": {"os":"","arch":"","agent_version":""}, "wait_secs": 1})).unwrap(), Sign::By(&api.host_a)).await;
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
    let (_, v) = api
        .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
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
    let (_, v) = api
        .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(
        v["action"]["type"], "none",
        "a failed system was offered again: {v}"
    );
    let (_, host) = api
        .call("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
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
    let (_, v) = api
        .call("POST", paths::CHECKIN, checkin, Sign::By(&api.host_a))
        .await;
    assert_eq!(v["action"]["store_path"], fixed);
    let (_, host) = api
        .call("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(host["state"], "standby", "{host}");
}

fn nar_name(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "{}.nar",
        nix_meta::nix32::encode(&sha2::Sha256::digest(bytes))
    )
}

#[tokio::test]
async fn embedded_cache_uploads_are_signed_atomic_and_checked() {
    let api = Api::new(ServiceConfig::default()).await;
    let nar = b"pretend this is a NAR of the system".to_vec();
    let nar_path = format!("/cache/nar/{}", nar_name(&nar));
    let cache_files = || -> Vec<String> {
        let mut all = Vec::new();
        for dir in ["cache", "cache/nar", "cache-uploads"] {
            for e in std::fs::read_dir(api.cache_dir.path().join(dir)).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    all.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        all.sort();
        all
    };
    let empty = cache_files();
    assert_eq!(empty, ["cache/nix-cache-info"]);

    // Reads need no signature; nix-cache-info is there from the start.
    let resp = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/cache/nix-cache-info")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        )
        .unwrap()
        .contains("StoreDir: /nix/store")
    );

    // Refused uploads leave nothing behind.
    for (sign, want) in [
        (Sign::None, StatusCode::UNAUTHORIZED),
        (Sign::Corrupted(&api.publisher), StatusCode::UNAUTHORIZED),
        (Sign::By(&api.viewer), StatusCode::FORBIDDEN),
        (Sign::By(&api.host_a), StatusCode::FORBIDDEN),
        (Sign::Stale(&api.admin), StatusCode::UNAUTHORIZED),
    ] {
        let (s, v) = api.send(build("PUT", &nar_path, &nar, sign, None)).await;
        assert_eq!(s, want, "{v}");
    }
    let (s, v) = api
        .send(build(
            "PUT",
            &nar_path,
            b"other bytes",
            Sign::By(&api.publisher),
            None,
        ))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nar_mismatch",
        "content does not match the name",
    );
    assert_eq!(cache_files(), empty);

    // An upload whose connection breaks mid-NAR: nothing visible, no temporary file left.
    let mut broken = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
    let half = nar[..nar.len() / 2].to_vec();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(half), Err(std::io::Error::other("connection reset"))];
    *broken.body_mut() = Body::from_stream(futures_util::stream::iter(chunks));
    let (s, v) = api.send(broken).await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "body_unreadable",
        "interrupted upload",
    );
    assert_eq!(cache_files(), empty);

    // A narinfo before its NAR is refused; the retry in the right order succeeds.
    let narinfo = format!(
        "StorePath: {PATH_A}\nURL: nar/{}\nCompression: none\nNarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h\nNarSize: {}\nReferences: \n",
        nar_name(&nar),
        nar.len()
    );
    let narinfo_path = "/cache/q322pzff5rm7kwfwfbhcza6wr2b84wlm.narinfo";
    let (s, v) = api
        .send(build(
            "PUT",
            narinfo_path,
            narinfo.as_bytes(),
            Sign::By(&api.publisher),
            None,
        ))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_nar",
        "narinfo first",
    );
    let (s, v) = api
        .send(build(
            "PUT",
            &nar_path,
            &nar,
            Sign::By(&api.publisher),
            None,
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .send(build(
            "PUT",
            "/cache/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo",
            narinfo.as_bytes(),
            Sign::By(&api.publisher),
            None,
        ))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_narinfo",
        "narinfo under another hash",
    );
    let (s, v) = api
        .send(build(
            "PUT",
            narinfo_path,
            narinfo.as_bytes(),
            Sign::By(&api.publisher),
            None,
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let resp = api
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri(narinfo_path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(served.as_ref(), narinfo.as_bytes());
    let (s, _) = api
        .send(build(
            "PUT",
            "/cache/../state.db",
            b"x",
            Sign::By(&api.publisher),
            None,
        ))
        .await;
    assert!(s.is_client_error());
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

/// A request body that counts the bytes the server pulls from it.
fn counting_body(pulled: Arc<std::sync::atomic::AtomicUsize>, chunks: usize) -> Body {
    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
        pulled.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(vec![0u8; 64 * 1024])
    }));
    Body::from_stream(stream)
}

#[tokio::test]
async fn forged_uploads_are_refused_before_any_byte_is_read() {
    let api = Api::new(ServiceConfig {
        max_uploads_per_key: 2,
        ..Default::default()
    })
    .await;
    let nar = b"the real NAR".to_vec();
    let nar_path = format!("/cache/nar/{}", nar_name(&nar));
    let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let uploads_dir = api.cache_dir.path().join("cache-uploads");
    // 64 MiB offered under a publisher's key id, with signatures that do not verify.
    for (sign, want) in [
        (Sign::Corrupted(&api.publisher), StatusCode::UNAUTHORIZED),
        (
            Sign::Claiming(&api.viewer, &api.publisher),
            StatusCode::UNAUTHORIZED,
        ),
        (Sign::Stale(&api.publisher), StatusCode::UNAUTHORIZED),
        (Sign::None, StatusCode::UNAUTHORIZED),
        (Sign::By(&api.viewer), StatusCode::FORBIDDEN),
    ] {
        let mut req = build("PUT", &nar_path, &nar, sign, None);
        *req.body_mut() = counting_body(pulled.clone(), 1024);
        let (s, v) = api.send(req).await;
        assert_eq!(s, want, "{v}");
    }
    // A declared size over the limit is refused before reading, with what to change.
    let mut req = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
    req.headers_mut()
        .insert("content-length", ((1u64 << 20) + 1).into());
    *req.body_mut() = counting_body(pulled.clone(), 17);
    let (s, v) = api.send(req).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "declared size",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_upload_bytes")
    );
    assert_eq!(
        pulled.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a refused upload's body was read"
    );
    assert_eq!(std::fs::read_dir(&uploads_dir).unwrap().count(), 0);
    // A body that differs from the digest its signature covers is not kept.
    let mut req = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
    *req.body_mut() = Body::from(b"the evil NAR".to_vec());
    let (s, v) = api.send(req).await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "digest_mismatch",
        "swapped body",
    );
    assert_eq!(std::fs::read_dir(&uploads_dir).unwrap().count(), 0);
    // One key runs at most two uploads at once; a third waits its turn with a 429.
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let mut req = build("PUT", &nar_path, &nar, Sign::By(&api.publisher), None);
            *req.body_mut() = Body::from_stream(futures_util::stream::pending::<
                Result<Vec<u8>, std::io::Error>,
            >());
            tokio::spawn(api.router.clone().oneshot(req))
        })
        .collect();
    // Let both reach their stalled bodies before anything else takes a slot.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let third = api.put(&nar_path, &nar, Sign::By(&api.publisher)).await;
    assert_error(
        third.0,
        &third.1,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "third upload",
    );
    // Another publisher key is not affected.
    let (s, v) = api.put(&nar_path, &nar, Sign::By(&api.admin)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Connections that go away free their slots.
    for task in stalled {
        task.abort();
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (s, v) = api.put(&nar_path, &nar, Sign::By(&api.publisher)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn free_text_is_capped_and_cleaned_and_extreme_timestamps_are_refused() {
    let api = Api::new(ServiceConfig::default()).await;
    let evil = "ok\u{1b}]52;c;ZXZpbA==\u{7}\u{202e}txt.exe";
    let clean = "ok]52;c;ZXZpbA==txt.exe";
    // Check-in facts: cleaned and cut to 64 characters, however long.
    let checkin = json!({"state": "standby", "facts": {"os": evil, "arch": "x".repeat(60_000), "agent_version": "1"}});
    let (s, v) = api
        .call(
            "POST",
            paths::CHECKIN,
            &serde_json::to_vec(&checkin).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, host) = api
        .call("GET", &paths::host("host-a"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(host["facts"]["os"], clean);
    assert_eq!(host["facts"]["arch"].as_str().unwrap().len(), 64);
    // Report reasons.
    let report = json!({"store_path": PATH_A, "release_id": null, "result": "failed", "reason": format!("{evil}\nline two"),
                        "started_at": 1, "finished_at": 2});
    let (s, v) = api
        .call(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&report).unwrap(),
            Sign::By(&api.host_a),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["reason"], format!("{clean}\nline two"));
    // Release messages and revisions: cleaned, and refused when absurdly long.
    let release = |message: &str, revision: &str| {
        serde_json::to_vec(
            &json!({"hosts": {"host-a": PATH_A}, "message": message, "revision": revision}),
        )
        .unwrap()
    };
    let (s, v) = api
        .call(
            "POST",
            paths::RELEASES,
            &release(evil, evil),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
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
        let (s, v) = api
            .call(
                "POST",
                paths::RELEASES,
                &release(&message, &revision),
                Sign::By(&api.publisher),
            )
            .await;
        assert_error(s, &v, status, code, code);
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

#[tokio::test]
async fn publishers_cannot_make_the_server_fetch_other_urls() {
    let key = nix_meta::SecretKey::from_seed("fleet-1", &[4; 32]).public();
    let api = Api::new(ServiceConfig {
        caches: vec!["https://cache.example.org".into()],
        trusted_cache_keys: vec![key],
        ..Default::default()
    })
    .await;
    // An internal service the server can reach; it must never be contacted.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    internal.set_nonblocking(true).unwrap();
    let port = internal.local_addr().unwrap().port();
    for cache in [
        format!("http://127.0.0.1:{port}/admin"),
        "file:///etc".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let body =
            serde_json::to_vec(&json!({"hosts": {"host-a": PATH_A}, "cache": cache})).unwrap();
        let (s, v) = api
            .call("POST", paths::RELEASES, &body, Sign::By(&api.publisher))
            .await;
        assert_error(
            s,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            "cache_not_allowed",
            &cache,
        );
    }
    assert!(
        internal.accept().is_err(),
        "the server connected to the internal URL"
    );
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
    let publish = |hosts: Value| serde_json::to_vec(&json!({"hosts": hosts})).unwrap();
    let rollback = |body: Value| serde_json::to_vec(&body).unwrap();
    for hosts in [
        json!({"host-a": p(1), "host-b": p(1)}),
        json!({"host-a": p(2), "host-b": p(2)}),
        json!({"host-a": p(3)}),
    ] {
        let (s, v) = api
            .call(
                "POST",
                paths::RELEASES,
                &publish(hosts),
                Sign::By(&api.publisher),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
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
    // By release: every host of release 2 back to what it had before release 2.
    let (s, v) = api
        .call(
            "POST",
            paths::ROLLBACK,
            &rollback(json!({"release": 2})),
            Sign::By(&api.publisher),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hosts"], json!({"host-a": p(1), "host-b": p(1)}));
    let (_, shown) = api
        .call(
            "GET",
            &paths::release(&v["id"].to_string()),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(shown["hosts"], v["hosts"]);
    // The desired state follows.
    let (_, host) = api
        .call("GET", &paths::host("host-b"), b"", Sign::By(&api.viewer))
        .await;
    assert_eq!(host["desired_system"], p(1).as_str());
    // Nothing earlier to go back to, unknown releases, and both forms at once are refused.
    let (s, v) = api
        .call(
            "POST",
            paths::ROLLBACK,
            &rollback(json!({"release": 1})),
            Sign::By(&api.publisher),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nothing_to_roll_back",
        "first release",
    );
    let (s, v) = api
        .call(
            "POST",
            paths::ROLLBACK,
            &rollback(json!({"release": 99})),
            Sign::By(&api.publisher),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "unknown_release",
        "unknown release",
    );
    let (s, v) = api
        .call(
            "POST",
            paths::ROLLBACK,
            &rollback(json!({"release": 2, "hosts": ["host-a"]})),
            Sign::By(&api.publisher),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_rollback",
        "both forms",
    );
    let (s, v) = api
        .call("GET", &paths::release("99"), b"", Sign::By(&api.viewer))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "unknown_release",
        "show unknown",
    );
}
