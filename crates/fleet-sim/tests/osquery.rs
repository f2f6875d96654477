//! osquery conformance: a real `yeet-server` process driven by the osqueryd emulator
//! (`fleet_sim::osquery`, which follows osquery's TLS plugins on the wire), for enrollment,
//! config, logs, distributed queries and carves, with the hostile inputs of each: wrong
//! secrets, unknown and foreign node keys, oversized bodies, gzip bombs, malformed JSON,
//! forged answers and out-of-range or foreign carve blocks.

#![allow(clippy::unwrap_used)]

use fleet_sim::osquery::{Osqueryd, gzip_bytes};
use fleet_sim::{Server, ServerOptions};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use yeet_proto::osquery::{LogFilter, ScheduledQuery, StartCarve, StartQuery};

const SECRET: &str = "correct horse battery staple";

fn server(config: &str) -> Server {
    Server::start(ServerOptions {
        config: config.to_owned(),
        ..Default::default()
    })
}

fn add_enroll_secret(server: &Server, content: &str) {
    let file = server.dir.path().join("enroll-secret");
    std::fs::write(&file, format!("{content}\n")).unwrap();
    server.yeet(&[
        "secret",
        "add",
        "osquery-enroll",
        "--from-file",
        file.to_str().unwrap(),
    ]);
}

fn enrolled(server: &Server, name: &str) -> Osqueryd {
    let mut node = Osqueryd::new(&server.url, name, SECRET);
    node.enroll()
        .unwrap_or_else(|e| panic!("{name} cannot enroll: {e}"));
    node
}

fn error_of(answer: &Value) -> &str {
    answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {answer}"))
}

#[test]
fn enrollment_config_and_reenrollment() {
    // Re-enrollment right after the key was lost (a live node is protected for a while
    // by default; see the API tests).
    let server = server("[osquery]\nreenroll_quiet_secs = 0\n");
    let mut node = Osqueryd::new(&server.url, "web1", SECRET);
    // Before the secret exists enrollment is off, and says how to turn it on.
    let off = node.enroll().unwrap_err();
    assert!(
        error_of(&off).contains("yeet secret add osquery-enroll"),
        "{off}"
    );
    assert_ne!(off["node_invalid"], true, "{off}");
    add_enroll_secret(&server, SECRET);

    // A wrong secret is refused and the answer leaks nothing.
    let mut wrong = Osqueryd::new(&server.url, "intruder", "guess");
    let (status, answer) = wrong.post_json(osquery_tls::paths::ENROLL, &wrong.enroll_body(), false);
    assert_eq!(status, 401);
    assert_eq!(
        answer,
        json!({"node_invalid": true, "error": "enrollment refused"})
    );
    assert!(wrong.enroll().is_err());
    node.enroll().unwrap();
    let key = node.node_key.clone().unwrap();
    assert!(
        key.len() >= 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );

    // The config holds the options and the queries meant for this node.
    let client = server.client();
    let query = |name: &str, hosts: &[&str], pack: Option<&str>| ScheduledQuery {
        name: name.into(),
        query: format!("SELECT * FROM {name}"),
        interval_secs: 300,
        snapshot: name == "mounts",
        pack: pack.map(Into::into),
        platform: None,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        created_at: 0,
        created_by: String::new(),
    };
    client
        .add_scheduled_query(&query("users", &[], None))
        .unwrap();
    client
        .add_scheduled_query(&query("mounts", &["web1"], Some("storage")))
        .unwrap();
    client
        .add_scheduled_query(&query("secrets", &["db1"], None))
        .unwrap();
    // The CLI sets and unsets options (this panicked once: its positional clashed with
    // the global --key).
    server.yeet(&["osquery", "options", "set", "distributed_interval", "10"]);
    server.yeet(&["osquery", "options", "set", "verbose", "true"]);
    server.yeet(&["osquery", "options", "rm", "verbose"]);
    let config = node.config().unwrap();
    assert_eq!(config.options["distributed_interval"], json!(10));
    assert!(config.options.get("verbose").is_none());
    assert_eq!(config.schedule.keys().collect::<Vec<_>>(), ["users"]);
    assert_eq!(config.schedule["users"].interval, 300);
    assert_eq!(
        config.packs["storage"].queries["mounts"].snapshot,
        Some(true)
    );

    // An unknown key gets node_invalid; the emulator drops its key and enrolls again under
    // the same identifier, and the old key stops working.
    node.node_key = Some("0".repeat(64));
    let invalid = node.config().unwrap_err();
    assert_eq!(invalid["node_invalid"], true, "{invalid}");
    assert_eq!(node.node_key, None);
    node.config().unwrap();
    assert_eq!(node.enrollments, 2);
    let mut stale = Osqueryd::new(&server.url, "web1", SECRET);
    stale.node_key = Some(key);
    assert_eq!(stale.config().unwrap_err()["node_invalid"], true);

    // Old clients (numbers as strings) enroll and are listed with what they reported.
    let mut old = Osqueryd::new(&server.url, "legacy", SECRET);
    old.old_format = true;
    old.config().unwrap();
    let nodes = client.osquery_nodes().unwrap();
    let web1 = nodes.iter().find(|n| n.host_identifier == "web1").unwrap();
    assert_eq!((web1.enrollments, web1.platform.as_str()), (2, "linux"));
    assert_eq!(web1.os_name, "NixOS 24.11 (Vicuna)");
    assert!(
        nodes
            .iter()
            .any(|n| n.host_identifier == "legacy" && n.osquery_version == "3.3.2")
    );
}

/// A SIEM's HTTP intake: collects the bodies posted to it.
fn siem() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/intake", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(String::from_utf8(body).unwrap());
        }
    });
    (url, rx)
}

#[test]
fn logs_plain_gzip_old_format_and_bad_bodies() {
    let forwarded = tempfile::tempdir().unwrap();
    let file = forwarded.path().join("results.jsonl");
    let (url, intake) = siem();
    let server = server(&format!(
        "[osquery]\nmax_body_bytes = 65536\nforward_file = \"{}\"\nforward_url = \"{url}\"\n",
        file.display()
    ));
    add_enroll_secret(&server, SECRET);
    let mut node = enrolled(&server, "web1");
    let line = node.result_line("users", "added", json!({"uid": "1000", "username": "ada"}));
    node.log_results(vec![line]).unwrap();
    node.compress = true;
    let lines = (0..100)
        .map(|i| node.result_line("users", "removed", json!({"uid": i.to_string()})))
        .collect();
    node.log_results(lines).unwrap();
    node.log_status(vec![node.status_line(1, "query took long")])
        .unwrap();
    let mut old = enrolled(&server, "legacy");
    old.old_format = true;
    old.log_results(vec![old.result_line("users", "added", json!({"uid": "7"}))])
        .unwrap();

    let client = server.client();
    let filter = |query: Option<&str>, host: Option<&str>| LogFilter {
        query: query.map(Into::into),
        host: host.map(Into::into),
        ..Default::default()
    };
    let users = client
        .osquery_logs(&filter(Some("users"), None))
        .unwrap()
        .lines;
    assert_eq!(users.len(), 102);
    assert_eq!(
        client
            .osquery_logs(&filter(Some("users"), Some("legacy")))
            .unwrap()
            .lines
            .len(),
        1
    );
    let status = client
        .osquery_logs(&LogFilter {
            kind: Some("status".into()),
            ..Default::default()
        })
        .unwrap()
        .lines;
    let message = |l: &yeet_proto::osquery::OsqueryLogLine| {
        serde_json::from_str::<Value>(l.line.get()).unwrap()["message"].clone()
    };
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].name.as_str(), message(&status[0])),
        ("warning", json!("query took long"))
    );
    let after = client
        .osquery_logs(&LogFilter {
            after: Some(users[100].id),
            ..Default::default()
        })
        .unwrap()
        .lines;
    assert!(after.iter().all(|l| l.id > users[100].id) && !after.is_empty());

    // Bad bodies: refused with an error (osqueryd keeps its logs and retries), never
    // node_invalid, and nothing is stored.
    let key = node.node_key.clone().unwrap();
    let batch = |data: Value| json!({"node_key": key, "log_type": "result", "data": data});
    let big = batch(json!(["x".repeat(70_000)]));
    let (status_code, answer) = node.post_json(osquery_tls::paths::LOG, &big, false);
    assert_eq!(status_code, 413, "{answer}");
    assert!(error_of(&answer).contains("65536"), "{answer}");
    // 64 MiB of JSON whitespace gzips to about 64 KiB: refused at the inflated limit.
    let mut bomb = serde_json::to_vec(&batch(json!([]))).unwrap();
    bomb.splice(1..1, std::iter::repeat_n(b' ', 64 << 20));
    let bomb = gzip_bytes(&bomb);
    assert!(bomb.len() < 65536, "{}", bomb.len());
    let (status_code, answer) = node.post_raw(osquery_tls::paths::LOG, &bomb, true);
    assert_eq!(status_code, 413, "{answer}");
    for (body, gzip, expected) in [
        (b"{\"node_key\": ".to_vec(), false, "invalid body"),
        (b"not gzip".to_vec(), true, "gzip"),
        (
            serde_json::to_vec(&json!({"node_key": key, "log_type": "nonsense", "data": []}))
                .unwrap(),
            false,
            "nonsense",
        ),
    ] {
        let (status_code, answer) = node.post_raw(osquery_tls::paths::LOG, &body, gzip);
        assert_eq!(status_code, 400, "{answer}");
        assert!(error_of(&answer).contains(expected), "{answer}");
        assert_ne!(answer["node_invalid"], true);
    }
    assert_eq!(
        client
            .osquery_logs(&LogFilter::default())
            .unwrap()
            .lines
            .len(),
        103
    );

    // Every result line was forwarded, to the file and to the SIEM, as JSON lines.
    let text = std::fs::read_to_string(&file).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 102);
    assert_eq!(records[0]["node"], "web1");
    assert_eq!(records[0]["line"]["columns"]["username"], "ada");
    let mut posted = 0;
    while posted < 102 {
        let body = intake
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        posted += body.lines().count();
    }
    assert_eq!(posted, 102);
}

#[test]
fn distributed_queries_reach_their_nodes_only() {
    let server = server("");
    add_enroll_secret(&server, SECRET);
    let mut nodes: Vec<Osqueryd> = ["web1", "web2", "db1"]
        .iter()
        .map(|n| enrolled(&server, n))
        .collect();
    let client = server.client();
    let campaign = client
        .start_osquery_query(&StartQuery {
            query: "SELECT name FROM processes".into(),
            hosts: vec!["web1".into(), "web2".into()],
            all: false,
            timeout_secs: 60,
        })
        .unwrap();
    let id = format!("yeet-{}", campaign.id);
    // web1 answers with rows (as an old client), web2 with an error; db1 is not asked.
    nodes[0].old_format = true;
    let read = nodes[0].distributed_read().unwrap();
    assert_eq!(read.queries[&id], "SELECT name FROM processes");
    assert_eq!(read.accelerate, Some(60));
    let write =
        json!({"queries": {&id: [{"name": "sshd"}, {"name": "nginx"}]}, "statuses": {&id: "0"}});
    nodes[0]
        .call(osquery_tls::paths::DISTRIBUTED_WRITE, write.clone(), false)
        .unwrap();
    let ran = nodes[1]
        .run_distributed(|_| Err("no such table: processes".into()))
        .unwrap();
    assert_eq!(ran, std::slice::from_ref(&id));
    assert!(nodes[2].distributed_read().unwrap().queries.is_empty());
    // Sent once: the next read has nothing.
    assert!(nodes[0].distributed_read().unwrap().queries.is_empty());

    // Forged answers change nothing: from a node not asked, or a second answer.
    let forged = json!({"queries": {&id: [{"name": "forged"}]}, "statuses": {&id: 0}});
    nodes[2]
        .call(osquery_tls::paths::DISTRIBUTED_WRITE, forged.clone(), false)
        .unwrap();
    nodes[0]
        .call(osquery_tls::paths::DISTRIBUTED_WRITE, forged, false)
        .unwrap();
    let mut impostor = Osqueryd::new(&server.url, "web1", SECRET);
    impostor.node_key = Some("f".repeat(64));
    assert_eq!(
        impostor
            .call(osquery_tls::paths::DISTRIBUTED_WRITE, write, false)
            .unwrap_err()["node_invalid"],
        true
    );

    let result = client.osquery_campaign(campaign.id).unwrap();
    let target = |name: &str| result.targets.iter().find(|t| t.node == name).unwrap();
    assert_eq!(result.targets.len(), 2);
    assert_eq!(target("web1").status, Some(0));
    let names: Vec<Value> = target("web1")
        .parsed_rows()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, ["sshd", "nginx"]);
    assert_eq!(target("web2").status, Some(1));
    assert_eq!(
        target("web2").message.as_deref(),
        Some("no such table: processes")
    );
    assert_eq!(target("web2").rows.get(), "[]");
    // Unknown hosts are named in the refusal.
    let err = client
        .start_osquery_query(&StartQuery {
            query: "SELECT 1".into(),
            hosts: vec!["nope".into()],
            all: false,
            timeout_secs: 5,
        })
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn carves_are_checked_against_their_session_and_reassembled() {
    let server = server("[osquery]\nmax_block_bytes = 8192\n");
    add_enroll_secret(&server, SECRET);
    let mut web1 = enrolled(&server, "web1");
    let mut db1 = enrolled(&server, "db1");
    let client = server.client();
    let campaign = client
        .start_osquery_carve(&StartCarve {
            host: "web1".into(),
            path: "/etc/o'clock".into(),
            timeout_secs: 60,
        })
        .unwrap();
    let id = format!("yeet-{}", campaign.id);
    let read = web1.distributed_read().unwrap();
    assert_eq!(
        read.queries[&id],
        "SELECT * FROM carves WHERE carve = 1 AND path = '/etc/o''clock'"
    );

    // Carves that answer no carve request (or another node's) are refused.
    let archive: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert!(
        error_of(&web1.carve("yeet-999", &archive, 4096, &[]).unwrap_err())
            .contains("no carve request")
    );
    assert!(db1.carve(&id, &archive, 4096, &[]).is_err());
    let too_big = web1.carve_init_body(&id, 100_000, 16_384);
    let (_, answer) = web1.post_json(osquery_tls::paths::CARVE_INIT, &too_big, false);
    assert!(error_of(&answer).contains("8192"), "{answer}");
    let mut mismatch = web1.carve_init_body(&id, 10_000, 4096);
    mismatch["block_count"] = json!(7);
    let (_, answer) = web1.post_json(osquery_tls::paths::CARVE_INIT, &mismatch, false);
    assert!(error_of(&answer).contains("cannot hold"), "{answer}");

    // Blocks in any order, one twice; an old client's string numbers.
    web1.old_format = true;
    let (session, answers) = web1.carve(&id, &archive, 4096, &[2, 0, 0]).unwrap();
    assert!(
        answers
            .iter()
            .all(|(s, a)| *s == 200 && a["success"] == true),
        "{answers:?}"
    );
    let carve = &client.osquery_carves().unwrap()[0];
    assert_eq!((carve.blocks_received, carve.completed_at), (2, None));

    // Hostile blocks: out of range, wrong size, bad base64, unknown session, another
    // node's key, a wrong request id.
    let block = |id_: u64, data: &[u8]| web1.carve_block_body(&session, &id, id_, data);
    let mut foreign = block(1, &archive[4096..8192]);
    foreign["node_key"] = json!(db1.node_key.clone().unwrap());
    let mut unknown = block(1, &archive[4096..8192]);
    unknown["session_id"] = json!("f".repeat(64));
    let mut garbled = block(1, &archive[4096..8192]);
    garbled["data"] = json!("%%% not base64");
    let mut wrong_request = block(1, &archive[4096..8192]);
    wrong_request["request_id"] = json!("yeet-1000");
    for (body, status, expected) in [
        (block(3, b"x"), 422, "out of range"),
        (block(1, &archive[4096..5000]), 422, "holds 904 bytes"),
        (garbled, 422, "base64"),
        (unknown, 404, "No carve session"),
        (foreign, 404, "No carve session"),
        (wrong_request, 422, "request_id"),
    ] {
        let (s, answer) = web1.post_json(osquery_tls::paths::CARVE_BLOCK, &body, false);
        assert_eq!(s, status, "{answer}");
        assert!(error_of(&answer).contains(expected), "{expected}: {answer}");
    }
    // The last block completes it; the checksum is the archive's.
    let (s, answer) = web1.post_json(
        osquery_tls::paths::CARVE_BLOCK,
        &block(1, &archive[4096..8192]),
        false,
    );
    assert_eq!((s, &answer["success"]), (200, &json!(true)));
    let carve = &client.osquery_carves().unwrap()[0];
    assert_eq!(carve.blocks_received, 3);
    assert!(carve.completed_at.is_some());
    assert_eq!(
        carve.sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&archive)).as_str())
    );
}

#[test]
fn a_flooding_node_is_limited_alone() {
    let server = server("[osquery]\nnode_burst = 5\nnode_refill_ms = 600000\n");
    add_enroll_secret(&server, SECRET);
    let mut noisy = enrolled(&server, "noisy");
    let mut quiet = enrolled(&server, "quiet");
    for _ in 0..5 {
        noisy.config().unwrap();
    }
    let limited = noisy.config().unwrap_err();
    assert!(
        error_of(&limited).contains("too many requests"),
        "{limited}"
    );
    assert_ne!(
        limited["node_invalid"], true,
        "a rate limit must not make osqueryd re-enroll"
    );
    assert!(noisy.node_key.is_some());
    quiet.config().unwrap();
}

/// Answers distributed queries every 200 ms until `stop`, as osqueryd with an accelerated
/// `distributed_interval`; carve queries upload `archive`.
fn serve_queries(
    mut node: Osqueryd,
    archive: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let read = node.distributed_read().unwrap();
            for (id, sql) in &read.queries {
                if sql.contains("FROM carves") {
                    let order: Vec<u64> = (0..archive.len().div_ceil(1000) as u64).rev().collect();
                    node.carve(id, &archive, 1000, &order).unwrap();
                }
                // A hostile node's row tries to drive the operator's terminal.
                let rows = json!([{"host": node.host_identifier, "sql": sql, "note": "\u{1b}]0;owned\u{7}\u{1b}[2J"}]);
                let write = json!({"queries": {id: rows}, "statuses": {id: 0}});
                node.call(osquery_tls::paths::DISTRIBUTED_WRITE, write, false)
                    .unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
}

#[test]
fn yeet_query_fans_out_and_names_the_silent_and_carves_come_back_identical() {
    let server = server("");
    add_enroll_secret(&server, SECRET);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let archive: Vec<u8> = (0..25_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let answering: Vec<_> = ["web1", "web2", "db1"]
        .iter()
        .map(|n| serve_queries(enrolled(&server, n), archive.clone(), stop.clone()))
        .collect();
    let _offline = enrolled(&server, "laptop");

    let out = server.yeet(&[
        "query",
        "SELECT hostname FROM system_info",
        "--all",
        "--timeout",
        "4",
    ]);
    assert!(
        out.contains("web1: 1 rows") && out.contains("web2: 1 rows") && out.contains("db1: 1 rows"),
        "{out}"
    );
    assert!(out.contains("no answer from: laptop"), "{out}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "a node's row reached the terminal raw: {out:?}"
    );
    let campaign: yeet_proto::osquery::Campaign =
        server.yeet_json(&["query", "SELECT 1", "--host", "web1", "--timeout", "4"]);
    assert_eq!(campaign.targets[0].parsed_rows()[0]["sql"], "SELECT 1");

    let out = server.yeet(&["carve", "web2", "/etc/hosts", "--timeout", "20"]);
    assert!(out.contains("carve 1 complete: 25000 bytes"), "{out}");
    let file = server.dir.path().join("carved.tar");
    server.yeet(&["carves", "get", "1", "-o", file.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        archive,
        "the carve came back changed"
    );
    let listed: Vec<yeet_proto::osquery::CarveInfo> = server.yeet_json(&["carves", "list"]);
    assert_eq!(
        listed[0].sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&archive)).as_str())
    );
    let again: yeet_proto::osquery::CarveInfo =
        server.yeet_json(&["carve", "web2", "/etc/hosts", "--timeout", "20"]);
    assert_eq!(
        (again.id, again.carve_size, again.sha256.as_deref()),
        (
            2,
            25000,
            Some(hex::encode(Sha256::digest(&archive)).as_str())
        )
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in answering {
        t.join().unwrap();
    }
}

/// The server's resident memory now, and the most it held since the last reset, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the server's peak-memory mark (`VmHWM`) to what it holds now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// A gzip body of nearly `inflated` bytes: `{"data":[[0],[0],…], FIELD: VALUE}` (for a
/// distributed write, the rows of a query), with the credential last, so that a server must
/// read everything to find it.
fn gzip_bomb(inflated: usize, path: &str, field: &str, value: &str) -> Vec<u8> {
    let (head, tail) = if path == osquery_tls::paths::DISTRIBUTED_WRITE {
        (
            r#"{"queries": {"yeet-1": ["#,
            format!(r#"[0]]}}, "{field}": "{value}"}}"#),
        )
    } else {
        (
            r#"{"data": ["#,
            format!(r#"[0]], "log_type": "result", "{field}": "{value}"}}"#),
        )
    };
    let mut body = head.as_bytes().to_vec();
    while body.len() + tail.len() + 4 < inflated {
        body.extend_from_slice(b"[0],");
    }
    body.extend_from_slice(tail.as_bytes());
    gzip_bytes(&body)
}

/// Posts `bomb` to `path` from `n` clients at once; every answer must be a refusal.
fn bombard(server: &Server, path: &'static str, bomb: &[u8], n: usize) {
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                let client = Osqueryd::new(&server.url, "attacker", "guess");
                let (status, answer) = client.post_raw(path, bomb, true);
                assert_ne!(status, 200, "{path} accepted a bomb: {answer}");
            });
        }
    });
}

/// A 16 KiB gzip body that inflates to 16 MiB of `[0],` made each request cost up to
/// 1.4 GiB before any credential was checked. Now 20 at once, on every endpoint, with
/// osquery off, then on (strangers, and a node with a valid key), stay within 32 MiB of
/// what the server held before, and real nodes are served afterwards. A node's own bombs
/// are inflated, two at a time, to the 8 MiB limit: about 17 MiB. While they inflated on
/// the heap, the allocator kept the freed buffers per thread: 34 to 42 MiB alone, and
/// 67 MiB while other tests ran.
#[test]
fn gzip_bombs_on_every_endpoint_cost_the_server_little_memory() {
    const BOUND_KIB: u64 = 32 << 10;
    const AT_ONCE: usize = 20;
    let server = server("");
    let pid = server.proc.child.id();
    let endpoints = [
        (osquery_tls::paths::ENROLL, "enroll_secret"),
        (osquery_tls::paths::CONFIG, "node_key"),
        (osquery_tls::paths::LOG, "node_key"),
        (osquery_tls::paths::DISTRIBUTED_READ, "node_key"),
        (osquery_tls::paths::DISTRIBUTED_WRITE, "node_key"),
        (osquery_tls::paths::CARVE_INIT, "node_key"),
        (osquery_tls::paths::CARVE_BLOCK, "session_id"),
    ];
    let inflated = (8 << 20) - 64;
    let attack = |what: &str, value: &str, paths: &[(&'static str, &str)]| {
        let (before, _) = rss_kib(pid);
        reset_peak(pid);
        for (path, field) in paths {
            let bomb = gzip_bomb(inflated, path, field, value);
            assert!(bomb.len() < 64 << 10, "{}", bomb.len());
            bombard(&server, path, &bomb, AT_ONCE);
        }
        let (_, peak) = rss_kib(pid);
        eprintln!(
            "{what}: peak {} KiB above the {before} KiB held before",
            peak.saturating_sub(before)
        );
        assert!(
            peak < before + BOUND_KIB,
            "{what}: the server's peak was {peak} KiB, {before} KiB before"
        );
    };
    attack("osquery off", "guess", &endpoints);

    add_enroll_secret(&server, SECRET);
    let mut node = enrolled(&server, "web1");
    attack("osquery on, strangers", "guess", &endpoints);
    let key = node.node_key.clone().unwrap();
    attack(
        "osquery on, a node's own key",
        &key,
        &[
            (osquery_tls::paths::LOG, "node_key"),
            (osquery_tls::paths::DISTRIBUTED_WRITE, "node_key"),
        ],
    );

    // Nothing was stored, and real nodes are served as before.
    node.log_results(vec![node.result_line(
        "users",
        "added",
        json!({"uid": "1"}),
    )])
    .unwrap();
    enrolled(&server, "web2").config().unwrap();
    let stored = server.client().osquery_logs(&LogFilter::default()).unwrap();
    assert_eq!(stored.lines.len(), 1);
}

/// A result line of nearly 1 MiB (the largest stored): tens of thousands of tiny columns,
/// the shape that costs most as a tree of JSON values.
fn huge_line(node: &Osqueryd, i: usize) -> Value {
    let columns: serde_json::Map<String, Value> = (0..60_000)
        .map(|c| (format!("c{c}"), json!(i.to_string())))
        .collect();
    node.result_line("huge", "added", Value::Object(columns))
}

/// Listing stored lines and polling a query's answers pass the nodes' JSON through
/// unparsed, and a listing stops at about 4 MiB with a cursor to continue: a viewer's
/// listing of huge lines, and an admin's polls of huge answers, stay within 64 MiB of what
/// the server held before, while the CLI still prints every line by following the cursor.
#[test]
fn listing_huge_lines_and_answers_costs_the_server_little_memory() {
    const BOUND_KIB: u64 = 64 << 10;
    // 40 MiB of lines at once: more than a node's default hourly log budget allows.
    let server = server("[osquery]\nnode_log_bytes_per_hour = 1073741824\n");
    let pid = server.proc.child.id();
    add_enroll_secret(&server, SECRET);
    let mut node = enrolled(&server, "web1");
    node.compress = true;
    for batch in 0..8 {
        let lines = (0..5).map(|i| huge_line(&node, batch * 5 + i)).collect();
        node.log_results(lines).unwrap();
    }
    let client = server.client();

    let (before, _) = rss_kib(pid);
    reset_peak(pid);
    let first = client
        .osquery_logs(&LogFilter {
            limit: Some(100),
            ..Default::default()
        })
        .unwrap();
    assert!(
        (1..=5).contains(&first.lines.len()),
        "{} lines in one page",
        first.lines.len()
    );
    assert_eq!(first.next_after, first.lines.last().map(|l| l.id));
    // The CLI follows the cursor to the end, one page at a time.
    let out = server.yeet(&[
        "osquery", "logs", "--query", "huge", "--limit", "100", "--json",
    ]);
    let printed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 40);
    assert_eq!(printed[39]["line"]["columns"]["c7"], "39");
    let (_, peak) = rss_kib(pid);
    eprintln!(
        "listing: peak {} KiB above {before} KiB",
        peak.saturating_sub(before)
    );
    assert!(
        peak < before + BOUND_KIB,
        "listing: peak {peak} KiB, {before} KiB before"
    );

    // A distributed query answered with 6 MiB of tiny rows, polled as `yeet query` does.
    let campaign = client
        .start_osquery_query(&StartQuery {
            query: "SELECT * FROM huge".into(),
            hosts: vec!["web1".into()],
            all: false,
            timeout_secs: 60,
        })
        .unwrap();
    let read = node.distributed_read().unwrap();
    let id = read.queries.keys().next().unwrap().clone();
    let rows: Vec<Value> = (0..400_000).map(|i| json!({"r": i.to_string()})).collect();
    node.call(
        osquery_tls::paths::DISTRIBUTED_WRITE,
        json!({"queries": {id.clone(): rows}, "statuses": {id: 0}}),
        true,
    )
    .unwrap();
    let (before, _) = rss_kib(pid);
    reset_peak(pid);
    for _ in 0..5 {
        let answered = client.osquery_campaign(campaign.id).unwrap();
        assert_eq!(answered.targets[0].parsed_rows().len(), 400_000);
    }
    let (_, peak) = rss_kib(pid);
    eprintln!(
        "polls: peak {} KiB above {before} KiB",
        peak.saturating_sub(before)
    );
    assert!(
        peak < before + BOUND_KIB,
        "polls: peak {peak} KiB, {before} KiB before"
    );
}

/// One node wrote 105 MiB of log rows in 3 s from 97 KiB of gzip on the wire, kept for 30
/// days. Now a node's logs have a budget, per hour and stored: past it, batches are refused
/// with an error (osqueryd keeps them and retries; never `node_invalid`), the refusals are
/// shown to operators, and other nodes are not affected.
#[test]
fn a_flooding_node_stays_within_its_log_budget() {
    // Batches of 400 lines of 1 KiB each: about 400 KiB stored, a few KiB on the wire.
    let flood = |node: &mut Osqueryd, batches: usize| -> Vec<Value> {
        let mut refusals = Vec::new();
        for _ in 0..batches {
            let lines: Vec<Value> = (0..400)
                .map(|i| {
                    node.result_line("flood", "added", json!({"i": i, "pad": "z".repeat(1000)}))
                })
                .collect();
            let batch = json!({"log_type": "result", "data": lines});
            if let Err(answer) = node.call(osquery_tls::paths::LOG, batch, true) {
                refusals.push(answer);
            }
        }
        refusals
    };
    let listed = |server: &Server, name: &str| -> Value {
        let nodes: Value = server.yeet_json(&["osquery", "nodes"]);
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["host_identifier"] == name)
            .cloned()
            .unwrap()
    };
    const MIB: i64 = 1 << 20;

    // The stored budget: 2 MiB, with a rate that would allow far more.
    let server = server(
        "[osquery]\nmax_body_bytes = 1048576\nnode_log_bytes_per_hour = 629145600\nnode_log_bytes_stored = 2097152\n",
    );
    add_enroll_secret(&server, SECRET);
    let mut noisy = enrolled(&server, "noisy");
    let refusals = flood(&mut noisy, 12);
    assert!(refusals.len() >= 6, "{} refusals", refusals.len());
    for r in &refusals {
        assert!(error_of(r).contains("node_log_bytes_stored"), "{r}");
        assert_ne!(r["node_invalid"], true);
    }
    let shown = listed(&server, "noisy");
    assert!(shown["log_bytes"].as_i64().unwrap() <= 2 * MIB, "{shown}");
    assert_eq!(shown["log_refusals"].as_i64(), Some(refusals.len() as i64));
    assert!(shown["last_log_refused_at"].is_i64(), "{shown}");
    let mut quiet = enrolled(&server, "quiet");
    assert!(flood(&mut quiet, 1).is_empty(), "another node was refused");
    assert!(
        noisy.node_key.is_some(),
        "a refusal made the node enroll again"
    );

    // The rate: 3 MiB an hour (bursts of one 1 MiB body), with room to store far more.
    let server = self::server(
        "[osquery]\nmax_body_bytes = 1048576\nnode_log_bytes_per_hour = 3145728\nnode_log_bytes_stored = 536870912\n",
    );
    add_enroll_secret(&server, SECRET);
    let mut noisy = enrolled(&server, "noisy");
    let refusals = flood(&mut noisy, 6);
    assert!(refusals.len() >= 3, "{} refusals", refusals.len());
    assert!(
        error_of(&refusals[0]).contains("an hour"),
        "{}",
        refusals[0]
    );
    let shown = listed(&server, "noisy");
    assert!(
        shown["log_bytes"].as_i64().unwrap() <= MIB + MIB / 2,
        "{shown}"
    );
}
