//! The in-process API and its requests: a real SQLite store, users of each role, two
//! enrolled hosts and a removed one, and requests built and signed byte by byte so that
//! broken signatures, stale clocks and replays can be forged.

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
use yeet_server::service::secrets::SecretKeeper;
use yeet_server::service::users::add_user;
use yeet_server::service::{Service, ServiceConfig, now};

use super::common;

/// Where test requests say they go (the in-process server has no configured URLs, so the
/// signed origin must match the Host header).
pub const TEST_HOST: &str = "yeet.test";

pub const TEST_ORIGIN: &str = "http://yeet.test";

pub const PATH_A: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-a";

pub fn identity() -> Identity {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    Identity::from_seed(&seed)
}

pub fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::getrandom(&mut n).unwrap();
    n
}

pub struct Api {
    pub router: Router,
    pub service: Arc<Service>,
    pub admin: Identity,
    pub publisher: Identity,
    pub viewer: Identity,
    pub host_a: Identity,
    pub host_b: Identity,
    pub removed_host: Identity,
    pub cache_dir: tempfile::TempDir,
    pub _db: common::TestDb,
}

/// How a test request is signed.
#[derive(Clone, Copy)]
pub enum Sign<'a> {
    None,
    By(&'a Identity),
    /// Signed by the first identity, claiming to be the second.
    Claiming(&'a Identity, &'a Identity),
    Stale(&'a Identity),
    Corrupted(&'a Identity),
    /// Correctly signed, but for another server.
    OtherServer(&'a Identity),
}

pub fn build(
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
    pub async fn new(config: ServiceConfig) -> Api {
        Api::with_body_limit(config, 64 * 1024).await
    }

    /// An API whose request bodies may be `max_body_bytes` long.
    pub async fn with_body_limit(mut config: ServiceConfig, max_body_bytes: usize) -> Api {
        // The origin every request here is signed for, as `public_urls` would name it.
        config.public_origins.push(TEST_ORIGIN.to_owned());
        let db = common::TestDb::sqlite().await;
        let store = db.open().await;
        let (admin, publisher, viewer) = (identity(), identity(), identity());
        for (name, id, role) in [
            ("alice", &admin, Role::Admin),
            ("ci", &publisher, Role::Publisher),
            ("val", &viewer, Role::Viewer),
        ] {
            add_user(
                &store,
                name,
                &id.public().to_openssh(),
                role,
                &[],
                &common::ev(),
            )
            .await
            .unwrap();
        }
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = EmbeddedCache::open(cache_dir.path()).unwrap();
        let keeper = SecretKeeper::load(&cache_dir.path().join("secrets.key"), true, &store)
            .await
            .unwrap();
        let service = Arc::new(
            Service::new(store, config)
                .await
                .unwrap()
                .with_embedded_cache(cache)
                .with_secrets(keeper),
        );
        let router = router(AppState {
            service: service.clone(),
            max_body_bytes,
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

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, _, v) = self.send_with_headers(req).await;
        (status, v)
    }

    /// As `send`, with the answer's headers.
    pub async fn send_with_headers(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
        (status, headers, v)
    }

    /// The URL of the database this API runs on.
    pub fn database_url(&self) -> &str {
        &self._db.url
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        sign: Sign<'_>,
    ) -> (StatusCode, Value) {
        self.send(build(method, path, body, sign, None)).await
    }

    /// A request that must succeed; its JSON answer.
    pub async fn ok(&self, method: &str, path: &str, body: &[u8], sign: Sign<'_>) -> Value {
        let (s, v) = self.call(method, path, body, sign).await;
        assert_eq!(s, StatusCode::OK, "{method} {path}: {v}");
        v
    }

    /// A request that must be refused with `status` and `code`; `case` names it on failure.
    pub async fn refused(&self, req: Request<Body>, status: StatusCode, code: &str, case: &str) {
        let (s, v) = self.send(req).await;
        assert_error(s, &v, status, code, case);
    }

    /// An upload to the embedded cache.
    pub async fn put(&self, path: &str, body: &[u8], sign: Sign<'_>) -> (StatusCode, Value) {
        self.send(build("PUT", path, body, sign, None)).await
    }

    pub fn register_body(id: &Identity, hint: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"public_key": id.public().to_openssh(), "hostname_hint": hint, "facts": {"os": "linux", "arch": "x86_64", "agent_version": "test"}})).unwrap()
    }

    /// Registers `id` and returns its code.
    pub async fn register(&self, id: &Identity) -> String {
        let v = self
            .ok(
                "POST",
                paths::REGISTER,
                &Self::register_body(id, "h"),
                Sign::By(id),
            )
            .await;
        v["code"].as_str().unwrap().to_owned()
    }

    /// Takes SQLite's write lock from outside the server (`BEGIN IMMEDIATE`), as a backup
    /// or a stuck writer would; held until `ROLLBACK` on the returned connection.
    pub async fn hold_write_lock(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut holder = sqlx::AnyConnection::connect(self.database_url())
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        holder
    }

    /// `host` reports that its attempt at `path` ended with `result` (wire name).
    pub async fn report(&self, host: &Identity, path: &str, result: &str) {
        let body = json!({"store_path": path, "release_id": null, "result": result, "reason": "r",
                          "started_at": 10, "finished_at": 20, "reboot_required": false,
                          "log_gzip_base64": gzip_base64("")});
        self.ok(
            "POST",
            paths::REPORT,
            &serde_json::to_vec(&body).unwrap(),
            Sign::By(host),
        )
        .await;
    }

    pub async fn enroll(&self, id: &Identity, name: &str) {
        let code = self.register(id).await;
        let body = serde_json::to_vec(&json!({"code": code, "name": name})).unwrap();
        self.ok("POST", paths::APPROVE, &body, Sign::By(&self.admin))
            .await;
    }

    /// Everything the API can change, as one comparable value.
    /// Every audit event, oldest first, as the store holds them.
    pub async fn audit_events(&self) -> Vec<yeet_proto::audit::AuditEvent> {
        self.service.store().audit_chain().await.unwrap()
    }

    pub async fn snapshot(&self) -> String {
        self.service.flush_last_seen().await.unwrap();
        let st = self.service.store();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            st.list_users().await.unwrap(),
            st.list_hosts().await.unwrap(),
            st.list_registrations().await.unwrap(),
            st.list_releases(None, 1000).await.unwrap(),
            st.list_secrets().await.unwrap(),
            st.list_grants().await.unwrap(),
            st.list_secret_changes(1000).await.unwrap(),
            st.list_detachments().await.unwrap(),
        )
    }
}

pub fn gzip_base64(text: &str) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap())
}

pub fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str, ctx: &str) {
    assert_eq!(status, want, "{ctx}: {v}");
    assert_eq!(v["error"]["code"], code, "{ctx}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{ctx}: {v}"
    );
}

pub fn nar_name(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "{}.nar",
        nix_meta::nix32::encode(&sha2::Sha256::digest(bytes))
    )
}

impl Api {
    /// The server's recipient, as operators get it.
    pub async fn recipient(&self) -> age::x25519::Recipient {
        let v = self
            .ok("GET", paths::SECRETS_RECIPIENT, b"", Sign::By(&self.viewer))
            .await;
        yeet_proto::secrets::x25519_recipient(v["recipient"].as_str().unwrap()).unwrap()
    }

    /// The body of `POST /v1/secrets`: `plaintext` sealed to the server's recipient.
    pub async fn add_secret_body(&self, name: &str, plaintext: &[u8], hosts: &[&str]) -> Vec<u8> {
        use base64::Engine;
        let sealed = yeet_proto::secrets::seal(&self.recipient().await, plaintext).unwrap();
        let ciphertext = base64::engine::general_purpose::STANDARD.encode(sealed);
        serde_json::to_vec(&json!({"name": name, "ciphertext": ciphertext, "hosts": hosts}))
            .unwrap()
    }

    /// Lets the host detach, as the admin.
    pub async fn allow_detach(&self, host: &str) -> Value {
        let body = serde_json::to_vec(&json!({"allow_detach": true})).unwrap();
        self.ok(
            "PUT",
            &paths::host_policy(host),
            &body,
            Sign::By(&self.admin),
        )
        .await
    }

    /// Adds a secret as the admin.
    pub async fn add_secret(&self, name: &str, plaintext: &[u8], hosts: &[&str]) -> Value {
        let body = self.add_secret_body(name, plaintext, hosts).await;
        self.ok("POST", paths::SECRETS, &body, Sign::By(&self.admin))
            .await
    }
}
