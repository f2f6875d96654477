//! Staged rollouts through the API, on a real store: waves open one after another, a
//! failing wave halts and rolls back, the bake holds the next wave and survives a restart,
//! operators pause, resume, promote, abort and supersede, offline hosts are deferred, and
//! hosts cannot pass a gate by claiming success. The driver is stepped by hand
//! (`drive_rollouts`), as the server's task would every tick.

use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use yeet_proto::Identity;
use yeet_proto::api::paths;
use yeet_server::service::{Service, ServiceConfig};

use super::harness::*;

fn sys(n: u8) -> String {
    format!("/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-{n}")
}

/// A fleet of named hosts (with tags) on top of the harness's own.
struct Fleet {
    api: Api,
    hosts: Vec<(String, Identity)>,
}

impl Fleet {
    async fn new(config: ServiceConfig, hosts: &[(&str, &[&str])]) -> Fleet {
        let api = Api::new(config).await;
        let mut out = Vec::new();
        for (name, tags) in hosts {
            let id = identity();
            let code = api.register(&id).await;
            let body =
                serde_json::to_vec(&json!({"code": code, "name": name, "tags": tags})).unwrap();
            api.ok("POST", paths::APPROVE, &body, Sign::By(&api.admin))
                .await;
            out.push((name.to_string(), id));
        }
        Fleet { api, hosts: out }
    }

    fn id(&self, name: &str) -> &Identity {
        &self.hosts.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|(n, _)| n.clone()).collect()
    }

    /// A check-in that reports `current` and asks for nothing to be held.
    async fn checkin(&self, name: &str, current: Option<&str>) -> Value {
        self.checkin_with_units(name, current, None).await
    }

    /// A check-in that also reports how many systemd units have failed.
    async fn checkin_with_units(
        &self,
        name: &str,
        current: Option<&str>,
        failed_units: Option<u32>,
    ) -> Value {
        let body = serde_json::to_vec(&json!({"current_system": current, "wait_secs": 0,
            "failed_units": failed_units,
            "facts": {"os": "", "arch": "", "agent_version": ""}}))
        .unwrap();
        self.api
            .ok("POST", paths::CHECKIN, &body, Sign::By(self.id(name)))
            .await
    }

    async fn desired(&self, name: &str) -> Option<String> {
        let v = self
            .api
            .ok("GET", &paths::host(name), b"", Sign::By(&self.api.admin))
            .await;
        v["desired_system"].as_str().map(str::to_owned)
    }

    /// Every host on `path`, confirmed, as after an ordinary release.
    async fn everyone_on(&self, path: &str) {
        let hosts: serde_json::Map<String, Value> =
            self.names().into_iter().map(|n| (n, json!(path))).collect();
        self.publish(json!({ "hosts": hosts })).await;
        for name in self.names() {
            self.api.report(self.id(&name), path, "confirmed").await;
            self.checkin(&name, Some(path)).await;
        }
    }

    async fn publish(&self, body: Value) -> Value {
        let body = serde_json::to_vec(&body).unwrap();
        self.api
            .ok(
                "POST",
                paths::RELEASES,
                &body,
                Sign::By(&self.api.publisher),
            )
            .await
    }

    async fn set_policy(&self, name: &str, policy: Value) {
        let body = serde_json::to_vec(&policy).unwrap();
        let (s, v) = self
            .api
            .call(
                "PUT",
                &paths::rollout_policy(name),
                &body,
                Sign::By(&self.api.admin),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    async fn rollout(&self, id: i64) -> Value {
        self.api
            .ok(
                "GET",
                &paths::rollout(&id.to_string()),
                b"",
                Sign::By(&self.api.viewer),
            )
            .await
    }

    async fn control(&self, id: i64, action: &str) -> (StatusCode, Value) {
        self.api
            .call(
                "POST",
                &paths::rollout_control(&id.to_string(), action),
                b"{}",
                Sign::By(&self.api.publisher),
            )
            .await
    }

    async fn drive(&self) {
        self.api.service.drive_rollouts().await.unwrap();
    }

    /// The hosts of wave `wave` (0-based) in a rollout's status.
    fn wave_hosts(rollout: &Value, wave: usize) -> Vec<String> {
        rollout["waves"][wave]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn host_state(rollout: &Value, name: &str) -> (String, String) {
        for w in rollout["waves"].as_array().unwrap() {
            for h in w["hosts"].as_array().unwrap() {
                if h["name"] == name {
                    return (
                        h["state"].as_str().unwrap().to_owned(),
                        h["reason"].as_str().unwrap().to_owned(),
                    );
                }
            }
        }
        panic!("{name} is not in {rollout}");
    }

    async fn events(&self, action: &str) -> Vec<yeet_proto::audit::AuditEvent> {
        self.api
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.action == action)
            .collect()
    }
}

const EIGHT: &[(&str, &[&str])] = &[
    ("can-1", &["canary"]),
    ("can-2", &["canary"]),
    ("web-1", &[]),
    ("web-2", &[]),
    ("web-3", &[]),
    ("web-4", &[]),
    ("web-5", &[]),
    ("web-6", &[]),
];

/// Four waves' worth of hosts (canaries, 50%, the rest): the canaries pass, a host of wave
/// 2 rolls back, and the rollout halts with wave 2 pointed back at v1. No host of wave 3
/// is ever given v2, not even one that claimed to have confirmed it before its wave.
#[tokio::test]
async fn a_failing_wave_halts_the_rollout_and_rolls_its_hosts_back() {
    let f = Fleet::new(ServiceConfig::default(), EIGHT).await;
    f.everyone_on(&sys(1)).await;
    f.set_policy(
        "prod",
        json!({"waves": ["tag:canary", "50%", "100%"], "max_failures": "0", "on_failure": "rollback"}),
    )
    .await;
    let release = f
        .publish(json!({"hosts": f.names().iter().map(|n| (n.clone(), json!(sys(2)))).collect::<serde_json::Map<_, _>>(), "rollout": "prod"}))
        .await;
    let id = release["id"].as_i64().unwrap();
    // Nothing is given before the driver opens the first wave.
    for name in f.names() {
        assert_eq!(f.desired(&name).await.as_deref(), Some(sys(1).as_str()));
    }
    let status = f.rollout(id).await;
    assert_eq!(Fleet::wave_hosts(&status, 0), ["can-1", "can-2"]);
    let (wave2, wave3) = (Fleet::wave_hosts(&status, 1), Fleet::wave_hosts(&status, 2));
    assert_eq!((wave2.len(), wave3.len()), (3, 3), "{status}");
    // Hostile hosts of waves 2 and 3 claim v2 confirmed before anyone was given it.
    let (liar, early) = (wave3[0].clone(), wave2[2].clone());
    f.api.report(f.id(&liar), &sys(2), "confirmed").await;
    f.api.report(f.id(&early), &sys(2), "confirmed").await;

    f.drive().await;
    assert_eq!(f.desired("can-1").await.as_deref(), Some(sys(2).as_str()));
    assert_eq!(f.desired(&wave2[0]).await.as_deref(), Some(sys(1).as_str()));
    // The canaries are offered v2, switch and confirm; wave 2 opens (no bake).
    for c in ["can-1", "can-2"] {
        let v = f.checkin(c, Some(&sys(1))).await;
        assert_eq!(v["action"]["store_path"], sys(2).as_str(), "{v}");
        f.api.report(f.id(c), &sys(2), "confirmed").await;
    }
    f.drive().await;
    for h in &wave2 {
        assert_eq!(f.desired(h).await.as_deref(), Some(sys(2).as_str()), "{h}");
    }
    for h in &wave3 {
        assert_eq!(f.desired(h).await.as_deref(), Some(sys(1).as_str()), "{h}");
    }
    let (state, _) = Fleet::host_state(&f.rollout(id).await, &liar);
    assert_eq!(state, "waiting");
    // Two of wave 2 confirm; the third's claim from before its wave opened does not
    // count, so the gate holds.
    f.api.report(f.id(&wave2[0]), &sys(2), "confirmed").await;
    f.api.report(f.id(&wave2[1]), &sys(2), "confirmed").await;
    f.drive().await;
    let (state, _) = Fleet::host_state(&f.rollout(id).await, &early);
    assert_eq!(
        state, "updating",
        "a claim made before the wave opened counted"
    );
    assert_eq!(f.desired(&wave3[1]).await.as_deref(), Some(sys(1).as_str()));
    // It rolls back: more failures than the 0 allowed.
    f.api.report(f.id(&early), &sys(2), "rolled-back").await;
    f.drive().await;
    let halted = f.rollout(id).await;
    assert_eq!(halted["state"], "halted", "{halted}");
    let reason = halted["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 failure(s) in wave 2 (max 0)"),
        "{reason}"
    );
    // Wave 2 is pointed back at v1; wave 3 never had v2, and the canaries keep it.
    for h in wave2.iter().chain(&wave3) {
        assert_eq!(f.desired(h).await.as_deref(), Some(sys(1).as_str()), "{h}");
    }
    assert_eq!(f.desired("can-2").await.as_deref(), Some(sys(2).as_str()));
    // Driving again changes nothing: one halt, one rollback release, two waves opened.
    for _ in 0..3 {
        f.drive().await;
    }
    assert_eq!(f.events(yeet_proto::audit::ROLLOUT_HALTED).await.len(), 1);
    let opened = f.events(yeet_proto::audit::ROLLOUT_WAVE_OPENED).await;
    assert_eq!(opened.len(), 2);
    assert_eq!(
        opened[1].hosts, wave2,
        "the event names the hosts it opened"
    );
    let passed = f.events(yeet_proto::audit::ROLLOUT_WAVE_PASSED).await;
    assert_eq!(passed[0].details["cause"], "confirmed", "{:?}", passed[0]);
    let rollbacks = f.events("release.rollback").await;
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0].actor, yeet_proto::audit::SERVER_ACTOR);
    assert_eq!(f.rollout(id).await, halted);
    // A halted rollout stays halted.
    let (s, v) = f.control(id, "resume").await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "rollout_conflict",
        "resume halted",
    );
}

/// With a bake, the next wave opens only once the bake has run its time from the moment
/// every host of the wave confirmed, measured by the server's own events; a server
/// restarted mid-bake (a new service on the same database) resumes with the time left.
#[tokio::test]
async fn the_bake_holds_the_next_wave_and_survives_a_restart() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[("can-1", &["canary"]), ("web-1", &[])],
    )
    .await;
    f.everyone_on(&sys(1)).await;
    f.set_policy(
        "baked",
        json!({"waves": ["tag:canary", "100%"], "bake_secs": 2}),
    )
    .await;
    let id = f
        .publish(json!({"hosts": {"can-1": sys(2), "web-1": sys(2)}, "rollout": "baked"}))
        .await["id"]
        .as_i64()
        .unwrap();
    f.drive().await;
    f.api.report(f.id("can-1"), &sys(2), "confirmed").await;
    f.drive().await;
    let baking = f.rollout(id).await;
    assert_eq!(baking["waves"][0]["state"], "baking", "{baking}");
    let (_, why) = Fleet::host_state(&baking, "web-1");
    assert!(why.contains("opens after the bake of wave 1"), "{why}");
    f.drive().await;
    assert_eq!(f.desired("web-1").await.as_deref(), Some(sys(1).as_str()));
    // Restart: a new service takes over from the database, while the old one drives on
    // beside it, as a second replica would: each step is still made once.
    f.api.service.flush_last_seen().await.unwrap();
    let restarted = Arc::new(
        Service::new(f.api.service.store().clone(), ServiceConfig::default())
            .await
            .unwrap(),
    );
    let started = std::time::Instant::now();
    while restarted.store().rollout(id).await.unwrap().unwrap().wave < 1 {
        assert!(started.elapsed().as_secs() < 10, "wave 2 never opened");
        let (a, b) = tokio::join!(restarted.drive_rollouts(), f.api.service.drive_rollouts());
        a.unwrap();
        b.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let bake = &f.events(yeet_proto::audit::ROLLOUT_BAKE_STARTED).await[0];
    let opened = f.events(yeet_proto::audit::ROLLOUT_WAVE_OPENED).await;
    assert_eq!(opened.len(), 2);
    let waited = opened[1].at_ms - bake.at_ms;
    assert!(
        (2000..3000).contains(&waited),
        "wave 2 opened {waited} ms after the bake began (bake: 2000 ms)"
    );
    let passed = f.events(yeet_proto::audit::ROLLOUT_WAVE_PASSED).await;
    assert_eq!(passed[0].details["cause"], "baked", "{:?}", passed[0]);
    restarted.reload_desired().await.unwrap();
    f.api.service.reload_desired().await.unwrap();
    assert_eq!(f.desired("web-1").await.as_deref(), Some(sys(2).as_str()));
}

/// Pause holds the gate, resume lets it pass, promote skips the bake, a newer rollout of
/// the same hosts supersedes the older, and abort stops one for good.
#[tokio::test]
async fn operators_pause_resume_promote_abort_and_supersede() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[("a", &[]), ("b", &[]), ("c", &[])],
    )
    .await;
    f.everyone_on(&sys(1)).await;
    f.set_policy(
        "slow",
        json!({"waves": ["host:a", "host:b", "100%"], "bake_secs": 3600}),
    )
    .await;
    let all = |n: u8| json!({"hosts": {"a": sys(n), "b": sys(n), "c": sys(n)}, "rollout": "slow"});
    let first = f.publish(all(2)).await["id"].as_i64().unwrap();
    f.drive().await;
    let (s, v) = f.control(first, "pause").await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("paused")));
    f.api.report(f.id("a"), &sys(2), "confirmed").await;
    f.drive().await;
    let paused = f.rollout(first).await;
    assert_eq!(
        paused["waves"][0]["state"], "open",
        "a paused gate passed: {paused}"
    );
    let (s, v) = f.control(first, "pause").await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "rollout_conflict",
        "pause twice",
    );
    f.control(first, "resume").await;
    f.drive().await;
    assert_eq!(f.rollout(first).await["waves"][0]["state"], "baking");
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(1).as_str()));
    let (s, v) = f.control(first, "promote").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(2).as_str()));
    let passed = f.events(yeet_proto::audit::ROLLOUT_WAVE_PASSED).await;
    assert_eq!(passed[0].details["cause"], "promoted by ci");
    assert_eq!(f.events("rollout.promote").await.len(), 1);

    // A newer rollout of the same hosts: the older opens nothing more (c never gets v2),
    // and b, which v2 reached, follows the newer when its wave opens.
    let second = f.publish(all(3)).await["id"].as_i64().unwrap();
    f.drive().await;
    assert_eq!(f.rollout(first).await["state"], "superseded");
    assert_eq!(f.desired("a").await.as_deref(), Some(sys(3).as_str()));
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(2).as_str()));
    assert_eq!(f.desired("c").await.as_deref(), Some(sys(1).as_str()));
    let (state, why) = Fleet::host_state(&f.rollout(first).await, "a");
    assert_eq!(state, "superseded", "{why}");
    let (s, v) = f.control(second, "abort").await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("aborted")));
    f.api.report(f.id("a"), &sys(3), "confirmed").await;
    for _ in 0..3 {
        f.drive().await;
    }
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(2).as_str()));
    assert_eq!(f.desired("c").await.as_deref(), Some(sys(1).as_str()));
    let (s, v) = f.control(second, "resume").await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "rollout_conflict",
        "resume aborted",
    );
    let (s, v) = f.control(first, "promote").await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "rollout_conflict",
        "promote superseded",
    );
}

/// A host offline when its wave opens is deferred and does not hold the wave; it gets the
/// release when it returns. A host that returns after its rollout halted does not.
#[tokio::test]
async fn offline_hosts_are_deferred_and_get_the_release_unless_it_halted() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[
            ("on-1", &["first"]),
            ("off-1", &["first"]),
            ("on-2", &["second"]),
            ("off-2", &["second"]),
        ],
    )
    .await;
    f.set_policy(
        "waves",
        json!({"waves": ["tag:first", "tag:second"], "max_failures": "0"}),
    )
    .await;
    // Only the on-* hosts have ever checked in: the off-* ones count as offline.
    for h in ["on-1", "on-2"] {
        f.checkin(h, None).await;
    }
    let hosts = |n: u8| json!({"hosts": {"on-1": sys(n), "off-1": sys(n), "on-2": sys(n), "off-2": sys(n)}, "rollout": "waves"});
    let id = f.publish(hosts(1)).await["id"].as_i64().unwrap();
    f.drive().await;
    let (state, why) = Fleet::host_state(&f.rollout(id).await, "off-1");
    assert_eq!(state, "deferred", "{why}");
    assert!(why.contains("never checked in"), "{why}");
    assert_eq!(f.desired("off-1").await, None);
    f.api.report(f.id("on-1"), &sys(1), "confirmed").await;
    f.drive().await;
    assert_eq!(f.desired("on-2").await.as_deref(), Some(sys(1).as_str()));
    // off-1 returns: it is given the release though its wave passed long ago.
    f.checkin("off-1", None).await;
    f.drive().await;
    assert_eq!(f.desired("off-1").await.as_deref(), Some(sys(1).as_str()));
    assert_eq!(
        f.events(yeet_proto::audit::ROLLOUT_DEFERRED_OPENED).await[0].hosts,
        ["off-1"]
    );

    // The second release halts in its first wave; off-2 returning gets nothing.
    let second = f.publish(hosts(2)).await["id"].as_i64().unwrap();
    f.drive().await;
    assert_eq!(f.rollout(id).await["state"], "superseded");
    f.api.report(f.id("on-1"), &sys(2), "failed").await;
    f.drive().await;
    assert_eq!(f.rollout(second).await["state"], "halted");
    f.checkin("off-2", None).await;
    for _ in 0..3 {
        f.drive().await;
    }
    assert_eq!(f.desired("off-2").await, None);
    assert_eq!(f.desired("on-2").await.as_deref(), Some(sys(1).as_str()));
    let (state, why) = Fleet::host_state(&f.rollout(second).await, "off-2");
    assert_eq!(state, "waiting", "{why}");
    assert!(why.contains("halted"), "{why}");
}

/// Policies are checked; publishers cannot set them; a release naming a missing policy is
/// refused with the way out; `--now` skips the server's default policy.
#[tokio::test]
async fn policies_are_checked_and_the_default_applies_unless_now() {
    let f = Fleet::new(
        ServiceConfig {
            default_rollout_policy: Some("careful".into()),
            ..Default::default()
        },
        &[("a", &[]), ("b", &[])],
    )
    .await;
    for (policy, case) in [
        (json!({"waves": []}), "no wave"),
        (
            json!({"waves": ["100%"], "bake_secs": 999_999_999}),
            "bake over a week",
        ),
        (
            json!({"waves": ["100%"], "min_online": 101}),
            "min online over 100%",
        ),
    ] {
        let (s, v) = f
            .api
            .call(
                "PUT",
                &paths::rollout_policy("bad"),
                &serde_json::to_vec(&policy).unwrap(),
                Sign::By(&f.api.admin),
            )
            .await;
        assert_error(
            s,
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            case,
        );
    }
    let (s, v) = f
        .api
        .call(
            "PUT",
            &paths::rollout_policy("bad"),
            br#"{"waves": ["tag:Not A Tag"]}"#,
            Sign::By(&f.api.admin),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_json", "bad wave");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid tag"),
        "{v}"
    );
    let (s, v) = f
        .api
        .call(
            "PUT",
            &paths::rollout_policy(&paths::segment("Bad Name")),
            br#"{"waves": ["100%"]}"#,
            Sign::By(&f.api.admin),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        "name",
    );
    // The default policy does not exist yet: a release that would use it is refused.
    let body = serde_json::to_vec(&json!({"hosts": {"a": sys(1)}})).unwrap();
    let (s, v) = f
        .api
        .call("POST", paths::RELEASES, &body, Sign::By(&f.api.publisher))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        "missing default",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("yeet rollout policy set"),
        "{v}"
    );
    f.set_policy(
        "careful",
        json!({"waves": ["host:a", "100%"], "bake_secs": 600}),
    )
    .await;
    let rolled = f
        .publish(json!({"hosts": {"a": sys(1), "b": sys(1)}}))
        .await;
    f.drive().await;
    assert_eq!(
        f.rollout(rolled["id"].as_i64().unwrap()).await["policy_name"],
        "careful"
    );
    assert_eq!(
        f.desired("b").await,
        None,
        "the default policy was not applied"
    );
    let now = f
        .publish(json!({"hosts": {"a": sys(2), "b": sys(2)}, "now": true}))
        .await;
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(2).as_str()));
    let (s, v) = f
        .api
        .call(
            "GET",
            &paths::rollout(&now["id"].as_i64().unwrap().to_string()),
            b"",
            Sign::By(&f.api.viewer),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "unknown_rollout",
        "no rollout for --now",
    );
    let listed = f
        .api
        .ok("GET", paths::ROLLOUT_POLICIES, b"", Sign::By(&f.api.viewer))
        .await;
    assert_eq!(listed[0]["name"], "careful", "{listed}");
}

/// `failed-units=0`: a host that confirmed but then reports a failed systemd unit during
/// the bake fails its wave, and the rollout halts before the next wave opens. Without the
/// health check, the same report is not a failure.
#[tokio::test]
async fn a_failed_unit_during_the_bake_halts_a_rollout_with_the_health_gate() {
    let f = Fleet::new(ServiceConfig::default(), &[("a", &[]), ("b", &[])]).await;
    f.everyone_on(&sys(1)).await;
    for (name, health) in [("healthy", json!(["failed-units=0"])), ("lax", json!([]))] {
        f.set_policy(
            name,
            json!({"waves": ["host:a", "100%"], "bake_secs": 600, "health": health}),
        )
        .await;
    }
    let id = f
        .publish(json!({"hosts": {"a": sys(2), "b": sys(2)}, "rollout": "lax"}))
        .await["id"]
        .as_i64()
        .unwrap();
    f.drive().await;
    f.api.report(f.id("a"), &sys(2), "confirmed").await;
    f.checkin_with_units("a", Some(&sys(2)), Some(2)).await;
    f.drive().await;
    f.drive().await;
    let lax = f.rollout(id).await;
    assert_eq!(lax["waves"][0]["state"], "baking", "{lax}");

    let id = f
        .publish(json!({"hosts": {"a": sys(3), "b": sys(3)}, "rollout": "healthy"}))
        .await["id"]
        .as_i64()
        .unwrap();
    f.drive().await;
    f.checkin_with_units("a", Some(&sys(2)), Some(0)).await;
    f.api.report(f.id("a"), &sys(3), "confirmed").await;
    f.checkin_with_units("a", Some(&sys(3)), Some(0)).await;
    f.drive().await;
    assert_eq!(f.rollout(id).await["waves"][0]["state"], "baking");
    // A unit fails during the bake.
    f.checkin_with_units("a", Some(&sys(3)), Some(1)).await;
    f.drive().await;
    let halted = f.rollout(id).await;
    assert_eq!(halted["state"], "halted", "{halted}");
    let (state, why) = Fleet::host_state(&halted, "a");
    assert_eq!(
        (state.as_str(), why.as_str()),
        ("failed", "unhealthy: 1 failed systemd unit(s)")
    );
    // b never got v3; nor v2, whose rollout the newer one superseded while it baked.
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(1).as_str()));
}

/// A newer release that names only some of a rollout's hosts takes just those: the
/// rollout goes on for the others and completes, never handing the taken host its older
/// system.
#[tokio::test]
async fn a_newer_release_of_some_hosts_supersedes_only_those() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[("a", &[]), ("b", &[]), ("c", &[])],
    )
    .await;
    f.everyone_on(&sys(1)).await;
    f.set_policy("two", json!({"waves": ["host:a", "100%"]}))
        .await;
    let id = f
        .publish(json!({"hosts": {"a": sys(2), "b": sys(2), "c": sys(2)}, "rollout": "two"}))
        .await["id"]
        .as_i64()
        .unwrap();
    f.drive().await;
    // A hotfix for c alone, all at once.
    f.publish(json!({"hosts": {"c": sys(9)}})).await;
    f.api.report(f.id("a"), &sys(2), "confirmed").await;
    f.drive().await;
    assert_eq!(f.desired("b").await.as_deref(), Some(sys(2).as_str()));
    assert_eq!(f.desired("c").await.as_deref(), Some(sys(9).as_str()));
    let (state, why) = Fleet::host_state(&f.rollout(id).await, "c");
    assert_eq!(state, "superseded", "{why}");
    f.api.report(f.id("b"), &sys(2), "confirmed").await;
    f.drive().await;
    let done = f.rollout(id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(f.desired("c").await.as_deref(), Some(sys(9).as_str()));
    assert_eq!(
        f.events(yeet_proto::audit::ROLLOUT_COMPLETED).await.len(),
        1
    );
}

/// A window that opens `in_secs` from now (UTC, daily, for an hour), covering `tag`.
fn window_opening_in(tag: &str, in_secs: i64) -> (Value, i64) {
    let opens = yeet_proto::clock::unix_now() + in_secs;
    let hms = |t: i64| {
        let s = t.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    };
    (
        json!({"tags": [tag], "days": "daily", "from": hms(opens), "to": hms(opens + 3600), "tz": "UTC"}),
        opens,
    )
}

/// A host covered by a maintenance window is not offered its switch until the window
/// opens: its held check-in answers then, with the switch, and not before; `yeet status`
/// says why it waits. A host no window covers switches at once. A rollout defers a host
/// outside its window and gives it the release when the window opens.
#[tokio::test]
async fn a_window_holds_switches_until_it_opens() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[("db-1", &["prod"]), ("dev-1", &[]), ("db-2", &["prod"])],
    )
    .await;
    for h in ["db-1", "dev-1", "db-2"] {
        f.checkin(h, None).await;
    }
    let (window, opens) = window_opening_in("prod", 4);
    let body = serde_json::to_vec(&window).unwrap();
    f.api
        .ok(
            "PUT",
            &paths::window("nights"),
            &body,
            Sign::By(&f.api.admin),
        )
        .await;
    f.publish(json!({"hosts": {"db-1": sys(1), "dev-1": sys(1)}}))
        .await;
    let dev = f.checkin("dev-1", None).await;
    assert_eq!(dev["action"]["store_path"], sys(1).as_str(), "{dev}");
    let held = f.checkin("db-1", None).await;
    assert_eq!(held["action"]["type"], "none", "{held}");
    let shown = f
        .api
        .ok("GET", &paths::host("db-1"), b"", Sign::By(&f.api.viewer))
        .await;
    assert_eq!(shown["window_wait"]["window"], "nights", "{shown}");
    assert_eq!(shown["window_wait"]["opens_at"], opens, "{shown}");
    // A rollout over db-2 defers it: online, but outside its window.
    f.set_policy("all", json!({"waves": ["100%"]})).await;
    let rollout = f
        .publish(json!({"hosts": {"db-2": sys(1)}, "rollout": "all"}))
        .await["id"]
        .as_i64()
        .unwrap();
    f.drive().await;
    let (state, why) = Fleet::host_state(&f.rollout(rollout).await, "db-2");
    assert_eq!(state, "deferred", "{why}");
    assert!(
        why.contains("outside maintenance window `nights` until"),
        "{why}"
    );
    // db-1 long-polls: answered with its switch once the window opens, not before.
    let body = serde_json::to_vec(&json!({"current_system": null, "wait_secs": 30,
        "facts": {"os": "", "arch": "", "agent_version": ""}}))
    .unwrap();
    let answer = f
        .api
        .ok("POST", paths::CHECKIN, &body, Sign::By(f.id("db-1")))
        .await;
    let answered = yeet_proto::clock::unix_now_ms();
    assert_eq!(answer["action"]["store_path"], sys(1).as_str(), "{answer}");
    assert!(
        answered >= opens * 1000,
        "answered {} ms before the window opened",
        opens * 1000 - answered
    );
    assert!(
        answered < opens * 1000 + 3000,
        "answered {} ms late",
        answered - opens * 1000
    );
    f.checkin("db-2", None).await;
    f.drive().await;
    assert_eq!(f.desired("db-2").await.as_deref(), Some(sys(1).as_str()));
    let (state, _) = Fleet::host_state(&f.rollout(rollout).await, "db-2");
    assert_eq!(state, "updating");
    // Bad windows are explained.
    let (s, v) = f
        .api
        .call(
            "PUT",
            &paths::window("mars"),
            br#"{"tags": ["prod"], "days": "mon", "from": "02:00", "to": "03:00", "tz": "Mars/Olympus"}"#,
            Sign::By(&f.api.admin),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_window",
        "bad zone",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tz database"),
        "{v}"
    );
}

/// Hostile input to the policy and window endpoints: the most waves or tags a body may
/// carry, names that try to escape their path segment, and operators below admin. Each is
/// refused whole, and nothing is stored.
#[tokio::test]
async fn oversized_or_escaped_policies_and_windows_are_refused_whole() {
    let f = Fleet::new(ServiceConfig::default(), &[]).await;
    let put = |path: String, body: Vec<u8>, who: &'static str| {
        let api = &f.api;
        async move {
            let id = match who {
                "publisher" => &api.publisher,
                _ => &api.admin,
            };
            api.call("PUT", &path, &body, Sign::By(id)).await
        }
    };
    // As many waves as the 64 KiB body holds.
    let waves: Vec<String> = (0..9000).map(|_| "10%".to_owned()).collect();
    let (s, v) = put(
        paths::rollout_policy("huge"),
        serde_json::to_vec(&json!({ "waves": waves })).unwrap(),
        "admin",
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        "9000 waves",
    );
    let tags: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
    let (s, v) = put(
        paths::window("huge"),
        serde_json::to_vec(
            &json!({"tags": tags, "days": "daily", "from": "01:00", "to": "02:00", "tz": "UTC"}),
        )
        .unwrap(),
        "admin",
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_window",
        "2000 tags",
    );
    for name in ["..", "a/b", "\u{202e}evil", "x".repeat(64).as_str()] {
        let (s, v) = put(
            paths::rollout_policy(&paths::segment(name)),
            br#"{"waves": ["100%"]}"#.to_vec(),
            "admin",
        )
        .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::NOT_FOUND,
            "{name:?}: {s} {v}"
        );
    }
    let (s, v) = put(
        paths::window("nights"),
        br#"{"tags": ["prod"], "days": "daily", "from": "01:00", "to": "02:00", "tz": "UTC"}"#
            .to_vec(),
        "publisher",
    )
    .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "publisher sets a window",
    );
    let listed = f
        .api
        .ok("GET", paths::ROLLOUT_POLICIES, b"", Sign::By(&f.api.viewer))
        .await;
    assert_eq!(listed, json!([]));
    let listed = f
        .api
        .ok("GET", paths::WINDOWS, b"", Sign::By(&f.api.viewer))
        .await;
    assert_eq!(listed, json!([]));
}

/// `--max-failures` holds for each wave and for the rollout so far: one failure in each of
/// two waves passes each wave's threshold of 1, but not the rollout's.
#[tokio::test]
async fn failures_add_up_across_waves() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[
            ("a1", &["one"]),
            ("a2", &["one"]),
            ("b1", &["two"]),
            ("b2", &["two"]),
            ("c1", &[]),
        ],
    )
    .await;
    f.everyone_on(&sys(1)).await;
    f.set_policy(
        "tolerant",
        json!({"waves": ["tag:one", "tag:two", "100%"], "max_failures": "1"}),
    )
    .await;
    let hosts: serde_json::Map<String, Value> =
        f.names().into_iter().map(|n| (n, json!(sys(2)))).collect();
    let id = f
        .publish(json!({"hosts": hosts, "rollout": "tolerant"}))
        .await["id"]
        .as_i64()
        .unwrap();
    f.drive().await;
    f.api.report(f.id("a1"), &sys(2), "failed").await;
    f.api.report(f.id("a2"), &sys(2), "confirmed").await;
    f.drive().await;
    assert_eq!(
        f.desired("b1").await.as_deref(),
        Some(sys(2).as_str()),
        "wave 2 opened"
    );
    f.api.report(f.id("b1"), &sys(2), "rolled-back").await;
    f.drive().await;
    let halted = f.rollout(id).await;
    assert_eq!(halted["state"], "halted", "{halted}");
    assert_eq!(
        halted["reason"], "halted: 2 failure(s) so far (max 1)",
        "{halted}"
    );
    assert_eq!(f.desired("c1").await.as_deref(), Some(sys(1).as_str()));
}

/// `yeet rollout start RELEASE --policy P`: an ordinary release's systems again, as a new
/// release whose hosts wait for their waves; a missing policy or release is refused.
#[tokio::test]
async fn an_existing_release_is_rolled_out_again_in_waves() {
    let f = Fleet::new(ServiceConfig::default(), &[("a", &["canary"]), ("b", &[])]).await;
    f.everyone_on(&sys(1)).await;
    let plain = f
        .publish(json!({"hosts": {"a": sys(2), "b": sys(2)}, "now": true}))
        .await["id"]
        .as_i64()
        .unwrap();
    // Pointed back at v1 by hand, then v2 again, in waves this time.
    f.publish(json!({"hosts": {"a": sys(1), "b": sys(1)}}))
        .await;
    f.set_policy(
        "canary-first",
        json!({"waves": ["tag:canary", "100%"], "bake_secs": 600}),
    )
    .await;
    let start = |body: Value| {
        let api = &f.api;
        async move {
            api.call(
                "POST",
                paths::ROLLOUTS,
                &serde_json::to_vec(&body).unwrap(),
                Sign::By(&api.publisher),
            )
            .await
        }
    };
    let (s, v) = start(json!({"release": plain, "policy": "nope"})).await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        "no policy",
    );
    let (s, v) = start(json!({"release": 999, "policy": "canary-first"})).await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "unknown_release",
        "no release",
    );
    let (s, again) = start(json!({"release": plain, "policy": "canary-first"})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let id = again["id"].as_i64().unwrap();
    assert!(id > plain);
    assert_eq!(again["hosts"]["b"], sys(2).as_str(), "{again}");
    f.drive().await;
    assert_eq!(f.desired("a").await.as_deref(), Some(sys(2).as_str()));
    assert_eq!(
        f.desired("b").await.as_deref(),
        Some(sys(1).as_str()),
        "b before its wave"
    );
    let status = f.rollout(id).await;
    assert_eq!(status["policy_name"], "canary-first", "{status}");
    assert_eq!(Fleet::wave_hosts(&status, 1), ["b"]);
}

/// A host that reports `reboot-required` is told to reboot only when its reboot policy is
/// `in-window` and its window is open (at once where no window covers it): never under
/// the default policy, nor when its own agent declares `never` (the declaration holds over
/// the admin's), nor when it needs no reboot. A held check-in outside the window is
/// answered with the order when the window opens, not before; one held when an admin
/// allows reboots is answered at once.
#[tokio::test]
async fn reboots_are_ordered_inside_the_window_as_the_host_policy_says() {
    let f = Fleet::new(
        ServiceConfig::default(),
        &[("db-1", &["prod"]), ("dev-1", &[])],
    )
    .await;
    let release = f
        .publish(json!({"hosts": {"db-1": sys(1), "dev-1": sys(1)}}))
        .await["id"]
        .as_i64()
        .unwrap();
    let checkin =
        |name: &'static str, state: &'static str, declared: Option<&'static str>, wait: u64| {
            let body = serde_json::to_vec(&json!({"current_system": sys(1), "wait_secs": wait,
            "state": state, "reboot_policy": declared,
            "facts": {"os": "", "arch": "", "agent_version": ""}}))
            .unwrap();
            let f = &f;
            async move {
                f.api
                    .ok("POST", paths::CHECKIN, &body, Sign::By(f.id(name)))
                    .await
            }
        };
    let set_reboot = |name: &'static str, policy: &'static str| {
        let body = serde_json::to_vec(&json!({ "reboot": policy })).unwrap();
        let f = &f;
        async move {
            f.api
                .ok(
                    "PUT",
                    &paths::host_policy(name),
                    &body,
                    Sign::By(&f.api.admin),
                )
                .await
        }
    };
    // The default policy: never.
    let a = checkin("dev-1", "reboot-required", None, 0).await;
    assert_eq!(a.get("reboot"), None, "{a}");
    // Allowed while the host's check-in is held: answered at once, with the order.
    let started = std::time::Instant::now();
    let (held, policy) = tokio::join!(checkin("dev-1", "reboot-required", None, 30), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        set_reboot("dev-1", "in-window").await
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(policy["policy"]["reboot"], "in-window", "{policy}");
    assert_eq!(policy["policy"]["allow_detach"], false, "{policy}");
    assert_eq!(
        held["reboot"]["reason"], "no maintenance window covers the host",
        "{held}"
    );
    assert_eq!(held["reboot"]["release_id"], release, "{held}");
    // Not to a host that needs no reboot, nor to one whose agent declares `never`.
    let a = checkin("dev-1", "standby", None, 0).await;
    assert_eq!(a.get("reboot"), None, "{a}");
    let a = checkin("dev-1", "reboot-required", Some("never"), 0).await;
    assert_eq!(a.get("reboot"), None, "{a}");
    let shown = f
        .api
        .ok("GET", &paths::host("dev-1"), b"", Sign::By(&f.api.viewer))
        .await;
    assert_eq!(shown["policy"]["declared_reboot"], "never", "{shown}");
    // A host whose agent declares `in-window` is ordered whatever the admin set.
    let a = checkin("db-1", "reboot-required", Some("in-window"), 0).await;
    assert!(a["reboot"].is_object(), "{a}");
    // db-1's window opens in 4 s: its held check-in is answered with the order then.
    let (window, opens) = window_opening_in("prod", 4);
    f.api
        .ok(
            "PUT",
            &paths::window("nights"),
            &serde_json::to_vec(&window).unwrap(),
            Sign::By(&f.api.admin),
        )
        .await;
    set_reboot("db-1", "in-window").await;
    let a = checkin("db-1", "reboot-required", None, 0).await;
    assert_eq!(a.get("reboot"), None, "{a}");
    let shown = f
        .api
        .ok("GET", &paths::host("db-1"), b"", Sign::By(&f.api.viewer))
        .await;
    assert_eq!(shown["window_wait"]["window"], "nights", "{shown}");
    let answer = checkin("db-1", "reboot-required", None, 30).await;
    let answered = yeet_proto::clock::unix_now_ms();
    assert_eq!(
        answer["reboot"]["reason"], "inside maintenance window `nights`",
        "{answer}"
    );
    assert!(
        answered >= opens * 1000,
        "ordered {} ms before the window opened",
        opens * 1000 - answered
    );
    // Policies are checked: an unknown one is refused whole, and a change of one field
    // keeps the other.
    let (s, v) = f
        .api
        .call(
            "PUT",
            &paths::host_policy("db-1"),
            br#"{"reboot": "whenever"}"#,
            Sign::By(&f.api.admin),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = f
        .api
        .call(
            "PUT",
            &paths::host_policy("db-1"),
            br#"{"allow_detach": true, "reboots": "never"}"#,
            Sign::By(&f.api.admin),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let v = f
        .api
        .ok(
            "PUT",
            &paths::host_policy("db-1"),
            br#"{"allow_detach": true}"#,
            Sign::By(&f.api.admin),
        )
        .await;
    assert_eq!(
        (&v["policy"]["allow_detach"], &v["policy"]["reboot"]),
        (&json!(true), &json!("in-window")),
        "{v}"
    );
}

/// A host whose report changes at every check-in (its failed-unit count going up and down)
/// wakes the rollout driver each time; the driver still judges the rollouts at most about
/// ten times a second, not once per report.
#[tokio::test]
async fn a_flood_of_changing_reports_drives_the_rollouts_at_most_ten_times_a_second() {
    use std::time::{Duration, Instant};
    let f = Fleet::new(ServiceConfig::default(), &[("a", &[]), ("b", &[])]).await;
    for h in ["a", "b"] {
        f.checkin(h, None).await;
    }
    f.set_policy(
        "slow",
        json!({"waves": ["host:a", "100%"], "bake_secs": 3600}),
    )
    .await;
    f.publish(json!({"hosts": {"a": sys(1), "b": sys(1)}, "rollout": "slow"}))
        .await;
    let driver = yeet_server::spawn_rollout_driver(f.api.service.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = f.api.service.rollout_drives();
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        f.checkin_with_units("b", None, Some(sent % 2)).await;
        sent += 1;
    }
    let elapsed = started.elapsed();
    let drives = f.api.service.rollout_drives() - before;
    driver.abort();
    eprintln!("{sent} changing reports in {elapsed:?} drove the rollouts {drives} times");
    assert!(sent >= 100, "too few reports to tell: {sent}");
    let bound = (elapsed.as_millis() / 100) as u64 + 2;
    assert!(
        drives <= bound,
        "{drives} runs of the driver for {sent} reports in {elapsed:?}"
    );
}
