//! A captured request is accepted once per fleet: not again after a restart, not on
//! another replica, and not by another yeet server that trusts the same operator key.

#![allow(clippy::unwrap_used)]

mod common;

use yeet_proto::api::{Role, paths};
use yeet_proto::{AuthError, Identity, SignatureHeaders};
use yeet_server::service::users::add_user;
use yeet_server::service::{Service, ServiceConfig, ServiceError, SignedRequest, now};

const ORIGIN: &str = "https://yeet.example.org";

/// A server whose public URL is `ORIGIN` unless `config` names others.
async fn server(db: &common::TestDb, mut config: ServiceConfig) -> Service {
    if config.public_origins.is_empty() {
        config.public_origins.push(ORIGIN.to_owned());
    }
    Service::new(db.open().await, config).await.unwrap()
}

async fn whoami(service: &Service, signed: &SignatureHeaders) -> Result<(), ServiceError> {
    let request = SignedRequest {
        method: "GET",
        path_and_query: paths::WHOAMI,
        headers: signed,
    };
    service.authenticate(&request, b"", false).await.map(drop)
}

fn is_replay(r: Result<(), ServiceError>) -> bool {
    matches!(r, Err(ServiceError::Unauthorized(AuthError::ReplayedNonce)))
}

/// One admin's signed `GET /v1/whoami`, as an eavesdropper would capture it.
async fn captured(db: &common::TestDb) -> SignatureHeaders {
    let admin = Identity::from_seed(&[7; 32]);
    let store = db.open().await;
    add_user(
        &store,
        "alice",
        &admin.public().to_openssh(),
        Role::Admin,
        &[],
        &yeet_server::service::audit::local_entry("user.add", serde_json::json!({})),
    )
    .await
    .unwrap();
    store.close().await;
    whoami_signed(now(), 42)
}

/// The admin's `GET /v1/whoami`, signed at `signed_at` with a nonce of 16 `nonce` bytes.
fn whoami_signed(signed_at: i64, nonce: u8) -> SignatureHeaders {
    let admin = Identity::from_seed(&[7; 32]);
    SignatureHeaders::sign(
        &admin,
        ORIGIN,
        "GET",
        paths::WHOAMI,
        b"",
        signed_at,
        [nonce; 16],
    )
}

async fn replay_after_restart(db: common::TestDb) {
    let request = captured(&db).await;
    let first = server(&db, ServiceConfig::default()).await;
    whoami(&first, &request).await.unwrap();
    assert!(is_replay(whoami(&first, &request).await));
    first.store().close().await;
    drop(first);
    // A new process on the same database has an empty memory, and still refuses it.
    let restarted = server(&db, ServiceConfig::default()).await;
    assert!(is_replay(whoami(&restarted, &request).await));
    // Expiry keeps the nonces of requests that could still pass the clock check.
    restarted.expire_nonces().await.unwrap();
    assert!(is_replay(whoami(&restarted, &request).await));
    // Fresh requests by the same key are fine.
    let fresh = whoami_signed(now(), 43);
    whoami(&restarted, &fresh).await.unwrap();
    restarted.store().close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_replay_after_a_restart_is_refused_sqlite() {
    replay_after_restart(common::TestDb::sqlite().await).await;
}

#[tokio::test]
async fn a_replay_after_a_restart_is_refused_postgres() {
    replay_after_restart(common::TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_replay_on_another_replica_is_refused() {
    let db = common::TestDb::postgres().await;
    let request = captured(&db).await;
    let (a, b) = (
        server(&db, ServiceConfig::default()).await,
        server(&db, ServiceConfig::default()).await,
    );
    // Both at once, as an attacker racing the original would.
    let (ra, rb) = tokio::join!(whoami(&a, &request), whoami(&b, &request));
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one replica may accept it: {ra:?} {rb:?}"
    );
    assert!(is_replay(if ra.is_ok() { rb } else { ra }));
    a.store().close().await;
    b.store().close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_request_for_another_server_is_refused() {
    // Production and staging trust the same admin key; a request signed for staging.
    let (prod_db, staging_db) = (
        common::TestDb::sqlite().await,
        common::TestDb::sqlite().await,
    );
    let request = captured(&staging_db).await;
    let _ = captured(&prod_db).await;
    let prod = server(
        &prod_db,
        ServiceConfig {
            public_origins: vec!["https://yeet-prod.example.org".into()],
            ..Default::default()
        },
    )
    .await;
    let wrong = |r: Result<(), ServiceError>| {
        matches!(
            r,
            Err(ServiceError::Unauthorized(AuthError::WrongServer(_)))
        )
    };
    // No header of the request counts: the origin is checked against the server's own.
    assert!(wrong(whoami(&prod, &request).await));
    let staging = server(&staging_db, ServiceConfig::default()).await;
    whoami(&staging, &request).await.unwrap();
}

/// A request accepted by a server from before the nonce log was keyed by signed time
/// (migration 0009) is still refused after the upgrade: its nonce row is carried over.
async fn replay_across_the_nonce_log_upgrade(db: common::TestDb, backend: &str) {
    // The database as the previous release left it: migrations up to 0008.
    let old = tempfile::tempdir().unwrap();
    let sets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(sets.join(backend)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().as_ref() < "0009" {
            std::fs::copy(entry.path(), old.path().join(entry.file_name())).unwrap();
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    // The old server accepted the captured request and logged its nonce with its expiry.
    let signed_at = now();
    let request = whoami_signed(signed_at, 44);
    sqlx::query("INSERT INTO nonces (key_id, nonce, expires_at) VALUES ($1, $2, $3)")
        .bind(&request.key_id)
        .bind(&request.nonce)
        .bind(signed_at + yeet_proto::signing::DEFAULT_SKEW_SECS + 1)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // The upgraded server (all migrations) refuses it.
    let _ = captured(&db).await;
    let upgraded = server(&db, ServiceConfig::default()).await;
    assert!(is_replay(whoami(&upgraded, &request).await));
    upgraded.store().close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_replay_across_the_nonce_log_upgrade_is_refused_sqlite() {
    replay_across_the_nonce_log_upgrade(common::TestDb::sqlite().await, "sqlite").await;
}

#[tokio::test]
async fn a_replay_across_the_nonce_log_upgrade_is_refused_postgres() {
    replay_across_the_nonce_log_upgrade(common::TestDb::postgres().await, "postgres").await;
}

/// Replicas configured with different clock skews: the one with the shorter skew must not
/// expire a nonce that a replica with a longer skew would still accept the request for.
async fn a_shorter_skew_on_one_replica_does_not_reopen_replays(db: &common::TestDb) {
    let _ = captured(db).await;
    let with_skew = |skew_secs| ServiceConfig {
        skew_secs,
        ..Default::default()
    };
    // The strict replica starts first, so it cannot have learnt the longer skew at its start.
    let strict = server(db, with_skew(60)).await;
    let patient = server(db, with_skew(300)).await;
    let request = whoami_signed(now() - 100, 45);
    whoami(&patient, &request).await.unwrap();
    strict.expire_nonces().await.unwrap();
    // A third replica with the longer skew, whose memory has never seen the nonce.
    let fresh = server(db, with_skew(300)).await;
    assert!(is_replay(whoami(&fresh, &request).await));
    for replica in [strict, patient, fresh] {
        replica.store().close().await;
    }
}

on_both_backends!(a_shorter_skew_on_one_replica_does_not_reopen_replays);
