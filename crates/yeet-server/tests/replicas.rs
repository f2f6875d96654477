//! Two server replicas on one real PostgreSQL database: a release written through one wakes
//! the long-polls held by the other (LISTEN/NOTIFY), so does an approval a held
//! registration, and a host removed through one stops
//! working on the other at once, not after the key cache expires; so does a detachment
//! ended through the other.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use yeet_proto::api::{
    Action, ApproveRequest, CheckinRequest, CreateReleaseRequest, DetachRequest, HostPolicyChange,
    RegisterRequest, RegisterResponse, Role,
};
use yeet_proto::{AuthError, Identity, SignatureHeaders};
use yeet_server::service::users::add_user;
use yeet_server::service::{Principal, Service, ServiceConfig, ServiceError, SignedRequest, now};

const ORIGIN: &str = "https://yeet.example.org";

/// A signed check-in as the HTTP layer would hand it over.
fn checkin(headers: &SignatureHeaders) -> SignedRequest<'_> {
    SignedRequest {
        method: "POST",
        path_and_query: "/v1/agent/checkin",
        headers,
    }
}

const PATH: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-replicated";

async fn replica(db: &common::TestDb) -> Arc<Service> {
    let service = Arc::new(
        Service::new(
            db.open().await,
            ServiceConfig {
                public_origins: vec![ORIGIN.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    yeet_server::spawn_event_listener(service.clone())
        .await
        .unwrap()
        .expect("PostgreSQL has a listener");
    service
}

/// The unscoped admin the replicas are driven as.
fn alice() -> Principal {
    Principal::User {
        name: "alice".into(),
        role: Role::Admin,
        key_id: "SHA256:alice".into(),
        tags: Vec::new(),
    }
}

#[tokio::test]
async fn replicas_share_releases_and_key_removals() {
    let db = common::TestDb::postgres().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let admin = alice();
    let admin_key = Identity::from_seed(&[1; 32]);
    add_user(
        a.store(),
        "alice",
        &admin_key.public().to_openssh(),
        Role::Admin,
        &[],
        &yeet_server::service::audit::local_entry("user.add", serde_json::json!({})),
    )
    .await
    .unwrap();

    // Enroll a host through replica A.
    let host_key = Identity::from_seed(&[2; 32]);
    // A registration as the HTTP layer hands it over, signed with `nonce`.
    let registrant = |nonce: u8| Principal::Registrant {
        public: host_key.public().clone(),
        signed: Box::new(SignatureHeaders::sign(
            &host_key,
            ORIGIN,
            "POST",
            yeet_proto::api::paths::REGISTER,
            b"",
            now(),
            [nonce; 16],
        )),
    };
    let req = RegisterRequest {
        public_key: host_key.public().to_openssh(),
        hostname_hint: "h".into(),
        facts: Default::default(),
        wait_secs: 0,
    };
    let RegisterResponse::Pending { code, .. } =
        a.register(&registrant(9), req.clone(), None).await.unwrap()
    else {
        panic!("not pending")
    };
    // Having shown its code, the host holds its registration on replica B; the approval
    // through replica A answers it.
    tokio::time::sleep(ServiceConfig::default().reregister_interval).await;
    let held = {
        let b = b.clone();
        let registrant = registrant(10);
        let req = RegisterRequest {
            wait_secs: 30,
            ..req
        };
        tokio::spawn(async move { b.register(&registrant, req, None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "replica B answered a shown code's registration at once"
    );
    a.approve(
        &admin,
        ApproveRequest {
            code,
            name: "web".into(),
            tags: Vec::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        held.await.unwrap().unwrap(),
        RegisterResponse::Approved { host: "web".into() }
    );

    // The host authenticates against replica B, and long-polls there.
    let sign = |nonce: u8| {
        SignatureHeaders::sign(
            &host_key,
            ORIGIN,
            "POST",
            "/v1/agent/checkin",
            b"{}",
            now(),
            [nonce; 16],
        )
    };
    let host = b
        .authenticate(&checkin(&sign(1)), b"{}", false)
        .await
        .unwrap();
    let waiter = {
        let (b, host) = (b.clone(), host.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = b
                .checkin(
                    &host,
                    CheckinRequest {
                        wait_secs: 30,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            (resp, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let release = CreateReleaseRequest {
        hosts: [("web".to_string(), PATH.to_string())].into(),
        message: "via A".into(),
        cache: None,
        revision: None,
        dirty: false,
        ..Default::default()
    };
    a.create_release(&admin, release).await.unwrap();
    let (resp, waited) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&resp.action, Action::Switch { store_path, .. } if store_path == PATH),
        "{resp:?}"
    );
    eprintln!(
        "replica B answered its held check-in {waited:?} after it started (release at ~300 ms, through replica A)"
    );

    // An admin ends, through A, the detachment the host opened through B: B's held
    // check-in of a host that believes it is detached answers at once.
    a.set_host_policy(
        &admin,
        "web",
        HostPolicyChange {
            allow_detach: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    b.detach(&host, DetachRequest::default()).await.unwrap();
    let waiter = {
        let (b, host) = (b.clone(), host.clone());
        tokio::spawn(async move {
            let req = CheckinRequest {
                current_system: Some(PATH.into()),
                wait_secs: 30,
                detached: true,
                ..Default::default()
            };
            b.checkin(&host, req).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.show_host(&admin, "web").await.unwrap().detached.is_some());
    a.attach_host(&admin, "web").await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("replica B hears of the attach through NOTIFY")
        .unwrap();
    assert_eq!(resp.detached, None);

    // Removing the host through A makes B refuse its key at once.
    a.remove_host(&admin, "web").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut nonce = 2u8;
    loop {
        match b.authenticate(&checkin(&sign(nonce)), b"{}", false).await {
            Err(ServiceError::Unauthorized(AuthError::UnknownKey)) => break,
            other => assert!(
                Instant::now() < deadline,
                "replica B still accepts a removed host: {other:?}"
            ),
        }
        nonce += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.store().close().await;
    b.store().close().await;
    db.cleanup().await;
}

/// Two replicas each record 500 audited actions at once, eight at a time, into one
/// PostgreSQL database: the audit log is one chain that verifies, with every event, and
/// no two events follow the same one (a fork).
#[tokio::test]
async fn replicas_append_to_one_audit_chain() {
    let db = common::TestDb::postgres().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let admin = alice();
    let act = |replica: Arc<Service>, prefix: &'static str| {
        let admin = admin.clone();
        async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(0..500)
                .map(|i| {
                    let (replica, admin) = (replica.clone(), admin.clone());
                    async move {
                        replica
                            .set_osquery_option(&admin, &format!("{prefix}_{i}"), i.into())
                            .await
                            .unwrap();
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<()>>()
                .await;
        }
    };
    tokio::join!(act(a.clone(), "a"), act(b.clone(), "b"));
    let events = a.store().audit_chain().await.unwrap();
    assert_eq!(events.len(), 1000);
    let links: std::collections::HashSet<&str> =
        events.iter().map(|e| e.prev_hash.as_str()).collect();
    assert_eq!(links.len(), 1000, "two events follow the same one: a fork");
    yeet_proto::audit::verify_chain(&events).unwrap();
    a.store().close().await;
    b.store().close().await;
    db.cleanup().await;
}

/// Two replicas drive one rollout at the same time while its bake ends: the next wave
/// opens exactly once (one event), whichever replica sees the gate first. A third replica,
/// started mid-bake after the first is gone (a server restarted), drives on from the
/// database with the bake's remaining time.
#[tokio::test]
async fn replicas_open_each_wave_once_and_a_restart_resumes_the_bake() {
    use yeet_proto::audit::{ROLLOUT_BAKE_STARTED, ROLLOUT_WAVE_OPENED};
    let db = common::TestDb::postgres().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let admin = alice();
    let store = a.store();
    let canary = common::host(store, "kc", "canary").await;
    let web = common::host(store, "kw", "web").await;
    store
        .touch_hosts(&[(canary, now()), (web, now())])
        .await
        .unwrap();
    a.set_policy(
        &admin,
        "baked",
        serde_json::from_value(
            serde_json::json!({"waves": ["host:canary", "100%"], "bake_secs": 2}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let release = a
        .create_release(
            &admin,
            CreateReleaseRequest {
                hosts: [
                    ("canary".to_string(), PATH.to_string()),
                    ("web".to_string(), PATH.to_string()),
                ]
                .into(),
                rollout: Some("baked".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    b.drive_rollouts().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .record_activation(
            &yeet_server::store::ActivationRow {
                id: 0,
                host_id: canary,
                host_name: "canary".into(),
                store_path: PATH.into(),
                release_id: Some(release.id),
                result: yeet_server::store::Wire(yeet_proto::api::ActivationResult::Confirmed),
                reason: String::new(),
                started_at: now(),
                finished_at: now(),
                reboot_required: 0,
            },
            b"",
        )
        .await
        .unwrap();
    a.drive_rollouts().await.unwrap();
    let row = store.rollout(release.id).await.unwrap().unwrap();
    assert!(row.bake_started_at.is_some(), "{row:?}");
    // Replica A goes away mid-bake; C starts 1.5 s later, and races B to the end of the
    // bake. A bake restarted by either of them would end 3.5 s or more after it began.
    drop(a);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = replica(&db).await;
    let started = Instant::now();
    while c.store().rollout(release.id).await.unwrap().unwrap().wave < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "wave 2 never opened"
        );
        let (x, y) = tokio::join!(b.drive_rollouts(), c.drive_rollouts());
        x.unwrap();
        y.unwrap();
    }
    // A few more rounds: nobody opens it again.
    for _ in 0..5 {
        let (x, y) = tokio::join!(b.drive_rollouts(), c.drive_rollouts());
        x.unwrap();
        y.unwrap();
    }
    let events = c.store().audit_chain().await.unwrap();
    let of = |action: &str| {
        events
            .iter()
            .filter(|e| e.action == action)
            .collect::<Vec<_>>()
    };
    let opened = of(ROLLOUT_WAVE_OPENED);
    assert_eq!(opened.len(), 2, "{opened:?}");
    let waited = opened[1].at_ms - of(ROLLOUT_BAKE_STARTED)[0].at_ms;
    assert!(
        (2000..3500).contains(&waited),
        "wave 2 opened {waited} ms into a 2 s bake"
    );
    // Both surviving replicas give web its system: the one that did not open the wave
    // learns of it through the database's notification, which may take a moment.
    for r in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let web = r.show_host(&admin, "web").await.unwrap();
            if web.desired_system.as_deref() == Some(PATH) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica never learnt that wave 2 opened: {web:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    db.cleanup().await;
}
