//! osquery nodes and yeet hosts: a node is linked to the approved host its identifier or
//! hostname names, a second node claiming the same host stays unlinked, and host names
//! then select nodes in the schedule and in log filters. (The wire conformance suite runs
//! against a real server process in fleet-sim's `tests/osquery.rs`.)

use axum::http::StatusCode;
use serde_json::{Value, json};
use yeet_proto::osquery::paths as oq;
use yeet_server::service::ServiceConfig;

use super::harness::*;

const SECRET: &[u8] = b"enroll-me";

async fn enroll(api: &Api, identifier: &str, hostname: &str) -> String {
    enroll_with_uuid(api, identifier, hostname, "").await
}

async fn try_enroll(
    api: &Api,
    identifier: &str,
    hostname: &str,
    uuid: &str,
) -> (StatusCode, Value) {
    let body = json!({
        "enroll_secret": "enroll-me", "host_identifier": identifier, "platform_type": "9",
        "host_details": {"system_info": {"hostname": hostname, "uuid": uuid}}
    });
    api.send(build(
        "POST",
        osquery_tls::paths::ENROLL,
        &serde_json::to_vec(&body).unwrap(),
        Sign::None,
        None,
    ))
    .await
}

async fn enroll_with_uuid(api: &Api, identifier: &str, hostname: &str, uuid: &str) -> String {
    let (status, answer) = try_enroll(api, identifier, hostname, uuid).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["node_key"].as_str().unwrap().to_owned()
}

async fn try_config(api: &Api, node_key: &str) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&json!({"node_key": node_key})).unwrap();
    api.send(build(
        "POST",
        osquery_tls::paths::CONFIG,
        &body,
        Sign::None,
        None,
    ))
    .await
}

async fn config(api: &Api, node_key: &str) -> Value {
    let (status, answer) = try_config(api, node_key).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// The host a node is linked to in a `GET /v1/osquery/nodes` answer (null: unlinked).
fn linked_host(nodes: &Value, identifier: &str) -> Value {
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["host_identifier"] == identifier);
    node.unwrap()["host"].clone()
}

#[tokio::test]
async fn nodes_link_to_their_hosts_once_and_host_names_select_them() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("osquery-enroll", SECRET, &[]).await;
    let linked = enroll(&api, "a1b2-uuid", "host-a.example.org").await;
    let impostor = enroll(&api, "impostor", "host-a").await;
    let by_identifier = enroll(&api, "host-b", "localhost").await;
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&api.viewer)).await;
    let host_of = |id: &str| linked_host(&nodes, id);
    assert_eq!(host_of("a1b2-uuid"), "host-a");
    assert_eq!(
        host_of("impostor"),
        Value::Null,
        "a second claim on a host must not link"
    );
    assert_eq!(host_of("host-b"), "host-b");

    // A query scheduled for host-a reaches its linked node only.
    let query =
        json!({"name": "only-a", "query": "SELECT 1", "interval_secs": 60, "hosts": ["host-a"]});
    api.ok(
        "POST",
        oq::SCHEDULE,
        &serde_json::to_vec(&query).unwrap(),
        Sign::By(&api.admin),
    )
    .await;
    assert!(config(&api, &linked).await["schedule"]["only-a"].is_object());
    assert!(
        config(&api, &impostor).await["schedule"]
            .get("only-a")
            .is_none()
    );
    assert!(
        config(&api, &by_identifier).await["schedule"]
            .get("only-a")
            .is_none()
    );

    // Log filters take host names too.
    let log = json!({"node_key": linked, "log_type": "status", "data": [{"severity": 0, "message": "hi"}]});
    let (status, _) = api
        .send(build(
            "POST",
            osquery_tls::paths::LOG,
            &serde_json::to_vec(&log).unwrap(),
            Sign::None,
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines = api
        .ok(
            "GET",
            "/v1/osquery/logs?host=host-a&kind=status",
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(lines["lines"].as_array().unwrap().len(), 1);
    assert_eq!(lines["lines"][0]["host"], "host-a");
    assert_eq!(lines["next_after"], Value::Null);
    let lines = api
        .ok(
            "GET",
            "/v1/osquery/logs?host=impostor&kind=status",
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert!(lines["lines"].as_array().unwrap().is_empty());
}

/// The hardware UUID the agent reports links a node whose names say nothing.
#[tokio::test]
async fn nodes_link_by_the_hardware_uuid_the_agent_reports() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("osquery-enroll", SECRET, &[]).await;
    let checkin = json!({"current_system": null, "booted_system": null,
        "facts": {"os": "linux", "arch": "x86_64", "agent_version": "1", "hardware_uuid": "4c4c4544-0042-3510-8050-b4c04f564732"}});
    let body = serde_json::to_vec(&checkin).unwrap();
    api.ok(
        "POST",
        yeet_proto::api::paths::CHECKIN,
        &body,
        Sign::By(&api.host_b),
    )
    .await;
    let shown = api
        .ok(
            "GET",
            &yeet_proto::api::paths::host("host-b"),
            b"",
            Sign::By(&api.viewer),
        )
        .await;
    assert_eq!(
        shown["facts"]["hardware_uuid"],
        "4C4C4544-0042-3510-8050-B4C04F564732"
    );
    enroll_with_uuid(
        &api,
        "laptop-7f3a",
        "localhost",
        "4C4C4544-0042-3510-8050-B4C04F564732",
    )
    .await;
    enroll_with_uuid(
        &api,
        "stranger",
        "localhost",
        "00000000-0000-0000-0000-000000000000",
    )
    .await;
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&api.viewer)).await;
    let host_of = |id: &str| linked_host(&nodes, id);
    assert_eq!(host_of("laptop-7f3a"), "host-b");
    assert_eq!(host_of("stranger"), Value::Null);
}

/// Anyone holding the enroll secret (every granted host has it) could enroll under another
/// node's identifier and inherit its key, its link to a yeet host and its queries. Now a
/// live node cannot be taken over; once its key has gone quiet, a new enrollment gets a key
/// but keeps the link only by the hardware UUID the host's own agent reports; refused
/// attempts are counted for operators.
#[tokio::test]
async fn a_node_is_not_taken_over_while_it_checks_in_and_keeps_its_host_only_by_hardware() {
    const REAL: &str = "4C4C4544-0042-3510-8050-B4C04F564732";
    const FAKE: &str = "00000000-1111-2222-3333-444444444444";
    let mut settings = ServiceConfig::default();
    settings.osquery.reenroll_quiet_secs = 2;
    let api = Api::new(settings).await;
    api.add_secret("osquery-enroll", SECRET, &[]).await;
    let checkin = json!({"current_system": null, "booted_system": null,
        "facts": {"os": "linux", "arch": "x86_64", "agent_version": "1", "hardware_uuid": REAL}});
    api.ok(
        "POST",
        yeet_proto::api::paths::CHECKIN,
        &serde_json::to_vec(&checkin).unwrap(),
        Sign::By(&api.host_a),
    )
    .await;
    let real = enroll_with_uuid(&api, "host-a", "host-a", REAL).await;
    let node_of = |nodes: &Value| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["host_identifier"] == "host-a")
            .cloned()
            .unwrap()
    };
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&api.viewer)).await;
    assert_eq!(node_of(&nodes)["host"], "host-a");

    // The attacker claims the identifier while the real node checks in: refused (not
    // node_invalid), and the real key keeps working.
    let (status, answer) = try_enroll(&api, "host-a", "host-a", FAKE).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("keeps its key"),
        "{answer}"
    );
    assert_ne!(answer["node_invalid"], true);
    config(&api, &real).await;
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&api.viewer)).await;
    let node = node_of(&nodes);
    assert_eq!(
        (node["takeovers_refused"].as_i64(), &node["host"]),
        (Some(1), &json!("host-a"))
    );
    assert!(node["last_refused_at"].is_i64(), "{node}");

    // Once the real key has been silent past the window, a claim with another hardware
    // UUID gets a key, but not the link; the old key is dead.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let taken = enroll_with_uuid(&api, "host-a", "host-a", FAKE).await;
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&api.viewer)).await;
    assert_eq!(
        node_of(&nodes)["host"],
        Value::Null,
        "the taken-over node kept its host"
    );
    let (status, answer) = try_config(&api, &real).await;
    assert_eq!(
        (status, &answer["node_invalid"]),
        (StatusCode::UNAUTHORIZED, &json!(true))
    );
    assert_ne!(taken, real);

    // The real machine enrolls again when that key is quiet: host-a's own agent reports its
    // hardware UUID, so it is linked again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    enroll_with_uuid(&api, "host-a", "host-a", REAL).await;
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&api.viewer)).await;
    assert_eq!(node_of(&nodes)["host"], "host-a");
}

/// A user scoped by tags sees and acts on the nodes of their hosts only: nodes, logs,
/// queries (`--all` is all of theirs), campaigns and carves; the rest answer as missing.
#[tokio::test]
async fn a_scoped_user_reaches_only_their_hosts_nodes() {
    let api = Api::new(ServiceConfig::default()).await;
    api.add_secret("osquery-enroll", SECRET, &[]).await;
    let kiosk = enroll(&api, "host-a", "host-a").await;
    let db = enroll(&api, "host-b", "host-b").await;
    enroll(&api, "stray", "nowhere").await;
    for (host, tag) in [("host-a", "kiosk"), ("host-b", "db")] {
        let body = serde_json::to_vec(&json!({"add": [tag]})).unwrap();
        api.ok(
            "POST",
            &yeet_proto::api::paths::host_tags(host),
            &body,
            Sign::By(&api.admin),
        )
        .await;
    }
    let sam = identity();
    yeet_server::service::users::add_user(
        api.service.store(),
        "sam",
        &sam.public().to_openssh(),
        yeet_proto::api::Role::Admin,
        &["kiosk".to_owned()],
        &crate::common::ev(),
    )
    .await
    .unwrap();
    let nodes = api.ok("GET", oq::NODES, b"", Sign::By(&sam)).await;
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["host_identifier"].as_str())
        .collect();
    assert_eq!(ids, ["host-a"]);
    for key in [&kiosk, &db] {
        let log = json!({"node_key": key, "log_type": "status", "data": [{"severity": 0, "message": "hi"}]});
        let (status, _) = api
            .send(build(
                "POST",
                osquery_tls::paths::LOG,
                &serde_json::to_vec(&log).unwrap(),
                Sign::None,
                None,
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let lines = api.ok("GET", oq::LOGS, b"", Sign::By(&sam)).await;
    let hosts: Vec<&str> = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["host"].as_str())
        .collect();
    assert_eq!(hosts, ["host-a"]);
    let (s1, v1) = api
        .call("GET", "/v1/osquery/logs?host=host-b", b"", Sign::By(&sam))
        .await;
    let (s2, v2) = api
        .call("GET", "/v1/osquery/logs?host=ghost", b"", Sign::By(&sam))
        .await;
    assert_eq!(
        (s1, v1.to_string().replace("host-b", "N")),
        (s2, v2.to_string().replace("ghost", "N"))
    );
    assert_error(
        s1,
        &v1,
        StatusCode::NOT_FOUND,
        "unknown_node",
        "logs of an out-of-scope host",
    );

    // --all is all of sam's nodes; naming another team's host is naming nothing.
    let all = json!({"query": "SELECT 1", "all": true, "timeout_secs": 60});
    let mine = api
        .ok(
            "POST",
            oq::QUERIES,
            &serde_json::to_vec(&all).unwrap(),
            Sign::By(&sam),
        )
        .await;
    let targets: Vec<&str> = mine["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["node"].as_str())
        .collect();
    assert_eq!(targets, ["host-a"]);
    let theirs = json!({"query": "SELECT 1", "hosts": ["host-b"], "timeout_secs": 60});
    let carve = json!({"host": "host-b", "path": "/etc/shadow", "timeout_secs": 60});
    for (path, body, case) in [
        (oq::QUERIES, &theirs, "a query on an out-of-scope host"),
        (oq::CARVES, &carve, "a carve on an out-of-scope host"),
    ] {
        let bytes = serde_json::to_vec(body).unwrap();
        let req = build("POST", path, &bytes, Sign::By(&sam), None);
        api.refused(req, StatusCode::NOT_FOUND, "unknown_node", case)
            .await;
    }
    // The fleet admin's campaign on host-b only is, to sam, no campaign.
    let admins = api
        .ok(
            "POST",
            oq::QUERIES,
            &serde_json::to_vec(&theirs).unwrap(),
            Sign::By(&api.admin),
        )
        .await;
    let id = admins["id"].as_i64().unwrap().to_string();
    let (s, v) = api.call("GET", &oq::query(&id), b"", Sign::By(&sam)).await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "unknown_campaign",
        "another team's campaign",
    );
    // Fleet-wide configuration stays with users without tags.
    let (s, v) = api.call("GET", oq::SCHEDULE, b"", Sign::By(&sam)).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden", "the schedule");
}
