//! Registration and approval: proof of key possession, expiring codes, rejected keys, and
//! floods that must neither evict nor starve a waiting host.

use axum::http::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use yeet_proto::Identity;
use yeet_proto::api::paths;
use yeet_server::service::{ServiceConfig, now};

use super::harness::*;

#[tokio::test]
async fn registration_endpoint_refusals() {
    let api = Api::new(ServiceConfig::default()).await;
    let fresh = identity();
    let body = Api::register_body(&fresh, "new");
    api.refused(
        build("POST", paths::REGISTER, &body, Sign::None, None),
        StatusCode::UNAUTHORIZED,
        "unsigned",
        "register unsigned",
    )
    .await;
    api.refused(
        build(
            "POST",
            paths::REGISTER,
            &body,
            Sign::Corrupted(&fresh),
            None,
        ),
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        "register corrupted",
    )
    .await;
    api.refused(
        build("POST", paths::REGISTER, &body, Sign::Stale(&fresh), None),
        StatusCode::UNAUTHORIZED,
        "stale_timestamp",
        "register stale",
    )
    .await;
    // Signed by one key, registering another: no proof of possession.
    api.refused(
        build("POST", paths::REGISTER, &body, Sign::By(&identity()), None),
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        "register someone else's key",
    )
    .await;
    api.refused(
        build(
            "POST",
            paths::REGISTER,
            &Api::register_body(&api.admin, "x"),
            Sign::By(&api.admin),
            None,
        ),
        StatusCode::CONFLICT,
        "operator_key",
        "register an operator key",
    )
    .await;
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
    let pending = api
        .ok("GET", paths::REGISTRATIONS, b"", Sign::By(&api.viewer))
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
    api.refused(
        build(
            "POST",
            paths::APPROVE,
            &approve(&code),
            Sign::By(&api.admin),
            None,
        ),
        StatusCode::GONE,
        "code_expired",
        "expired code",
    )
    .await;
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
    api.refused(
        build(
            "POST",
            paths::REGISTER,
            &Api::register_body(&bad, "again"),
            Sign::By(&bad),
            None,
        ),
        StatusCode::FORBIDDEN,
        "forbidden",
        "rejected key re-registers",
    )
    .await;
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
    api.ok("POST", paths::APPROVE, &body, Sign::By(&api.admin))
        .await;
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
    api.ok("GET", paths::WHOAMI, b"", Sign::By(&api.admin))
        .await;
    api.ok(
        "POST",
        paths::CHECKIN,
        br#"{"state":"standby","facts":{"os":"linux","arch":"x86_64","agent_version":"t"}}"#,
        Sign::By(&api.host_a),
    )
    .await;
}

/// A host that has shown its code holds its registration as a long-poll, and the approval
/// answers it at once instead of at the host's next poll (30 s later by default). A new
/// code is never held: the host must show it first. A key holds one registration at a
/// time: a newer one releases the older, so retries cannot pile up held connections.
#[tokio::test]
async fn an_approval_answers_the_held_registration() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let api = Api::new(ServiceConfig {
        reregister_interval: std::time::Duration::ZERO,
        ..Default::default()
    })
    .await;
    let host = identity();
    let mut body: Value = serde_json::from_slice(&Api::register_body(&host, "new")).unwrap();
    body["wait_secs"] = json!(30);
    let body = serde_json::to_vec(&body).unwrap();
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        api.ok("POST", paths::REGISTER, &body, Sign::By(&host)),
    )
    .await
    .expect("a registration with a new code was held instead of answered");
    assert_eq!(first["status"], "pending", "{first}");
    let code = first["code"].as_str().unwrap().to_owned();

    static FIRST_ANSWERED: AtomicBool = AtomicBool::new(false);
    static SECOND_ANSWERED: AtomicBool = AtomicBool::new(false);
    let (first_answered, second_answered) = (&FIRST_ANSWERED, &SECOND_ANSWERED);
    let hold = |flag: &'static AtomicBool| {
        let (api, body, host) = (&api, &body, &host);
        async move {
            let answer = api
                .call("POST", paths::REGISTER, body, Sign::By(host))
                .await;
            flag.store(true, Ordering::SeqCst);
            answer
        }
    };
    let first = hold(first_answered);
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !first_answered.load(Ordering::SeqCst),
            "the registration of a shown code was answered at once, not held"
        );
        hold(second_answered).await
    };
    let approve = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        assert!(
            first_answered.load(Ordering::SeqCst) && !second_answered.load(Ordering::SeqCst),
            "a newer registration of the same key did not release the older, or was not held"
        );
        let approval = serde_json::to_vec(&json!({"code": code, "name": "new-host"})).unwrap();
        api.ok("POST", paths::APPROVE, &approval, Sign::By(&api.admin))
            .await;
    };
    let ((_, released), (status, answer), ()) = tokio::join!(first, second, approve);
    assert_eq!(released["status"], "pending", "{released}");
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["status"].as_str(), answer["host"].as_str()),
        (Some("approved"), Some("new-host")),
        "{answer}"
    );
}
