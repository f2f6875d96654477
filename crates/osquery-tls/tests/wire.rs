//! Bodies as osqueryd writes them, in the shapes of current (5.x, rapidjson: numbers are
//! numbers) and older (boost property_tree: numbers are strings) clients, read through the
//! crate's types. The field names and shapes follow osquery's sources cited in each module.

use osquery_tls::carve::{BlockRequest, InitRequest};
use osquery_tls::config::{Config, ScheduledQuery};
use osquery_tls::distributed::{ReadResponse, WriteRequest};
use osquery_tls::enroll::EnrollRequest;
use osquery_tls::log::{
    Action, LineSummary, LogRequest, LogType, ResultLog, ResultRows, StatusLog,
};
use serde_json::json;

#[test]
fn enroll_bodies_of_new_and_old_clients() {
    let new: EnrollRequest = serde_json::from_value(json!({
        "enroll_secret": "s3cret",
        "host_identifier": "web1",
        "platform_type": "9",
        "host_details": {
            "os_version": {"name": "NixOS", "version": "24.11 (Vicuna)", "major": "24"},
            "osquery_info": {"version": "5.12.1", "uuid": "A-B"},
            "system_info": {"hostname": "web1.example.org", "uuid": "4C4C4544-0042"},
            "platform_info": {"vendor": "SeaBIOS"}
        }
    }))
    .unwrap();
    assert_eq!(new.platform_type, Some(9));
    assert_eq!(
        new.host_details.hostname().as_deref(),
        Some("web1.example.org")
    );
    assert_eq!(
        new.host_details.hardware_uuid().as_deref(),
        Some("4C4C4544-0042")
    );
    assert_eq!(
        new.host_details.osquery_version().as_deref(),
        Some("5.12.1")
    );
    assert_eq!(
        new.host_details.os_name().as_deref(),
        Some("NixOS 24.11 (Vicuna)")
    );
    // A minimal client: no details, a numeric platform.
    let old: EnrollRequest = serde_json::from_value(
        json!({"enroll_secret": "s3cret", "host_identifier": "web1", "platform_type": 9}),
    )
    .unwrap();
    assert_eq!(old.platform_type, Some(9));
    assert_eq!(old.host_details.hostname(), None);
}

#[test]
fn result_lines_in_all_three_shapes() {
    let body = json!({
        "node_key": "k",
        "log_type": "result",
        "data": [
            // Event format, new client.
            {"name": "users", "hostIdentifier": "web1", "calendarTime": "Mon Nov 23 20:00:00 2026 UTC",
             "unixTime": 1795464000, "epoch": 0, "counter": 2, "numerics": false,
             "decorations": {"host_uuid": "X"}, "columns": {"uid": "1000", "username": "ada"}, "action": "added"},
            // Event format, old client: every number a string.
            {"name": "users", "hostIdentifier": "web1", "calendarTime": "Mon Nov 23 20:00:00 2026 UTC",
             "unixTime": "1795464000", "epoch": "0", "counter": "2", "numerics": "false",
             "columns": {"uid": "1001", "username": "bob"}, "action": "removed"},
            // Batch format.
            {"name": "users", "hostIdentifier": "web1", "unixTime": "1795464000",
             "diffResults": {"added": [{"uid": "1002"}], "removed": [{"uid": "1003"}, {"uid": "1004"}]}},
            // Snapshot.
            {"name": "mounts", "hostIdentifier": "web1", "unixTime": 1795464000, "action": "snapshot",
             "snapshot": [{"path": "/"}, {"path": "/boot"}]}
        ]
    })
    .to_string();
    let batch: LogRequest = serde_json::from_str(&body).unwrap();
    assert_eq!(batch.log_type, LogType::Result);
    let lines: Vec<ResultLog> = batch
        .data
        .iter()
        .map(|l| ResultLog::parse(l.get()).unwrap())
        .collect();
    // The summary a server files each line under agrees with the whole parse.
    for (raw, line) in batch.data.iter().zip(&lines) {
        let summary = LineSummary::of(LogType::Result, raw.get()).unwrap();
        assert_eq!(
            (summary.name.as_str(), summary.unix_time),
            (line.header.name.as_str(), line.header.unix_time)
        );
    }
    assert_eq!(
        lines[0].header,
        lines[1].header.clone().with_decorations(&lines[0])
    );
    assert_eq!(lines[1].header.unix_time, 1795464000);
    assert_eq!(lines[1].header.counter, 2);
    assert!(matches!(
        lines[1].rows,
        ResultRows::Event {
            action: Action::Removed,
            ..
        }
    ));
    let actions = |l: &ResultLog| l.rows().iter().map(|(a, _)| *a).collect::<Vec<_>>();
    assert_eq!(
        actions(&lines[2]),
        [Action::Added, Action::Removed, Action::Removed]
    );
    assert_eq!(actions(&lines[3]), [Action::Snapshot, Action::Snapshot]);
    assert_eq!(lines[3].rows()[1].1["path"], "/boot");
}

/// Test helper: the header of `other` with this line's decorations, to compare the rest.
trait WithDecorations {
    fn with_decorations(self, other: &ResultLog) -> Self;
}
impl WithDecorations for osquery_tls::log::ResultHeader {
    fn with_decorations(mut self, other: &ResultLog) -> Self {
        self.decorations = other.header.decorations.clone();
        self
    }
}

#[test]
fn a_malformed_line_is_rejected_alone() {
    let body = json!({
        "node_key": "k", "log_type": "result",
        "data": [{"name": "q", "columns": {}, "action": "added"}, {"name": "q"}, {"name": "q", "unixTime": "soon", "snapshot": []}, 42]
    })
    .to_string();
    let batch: LogRequest = serde_json::from_str(&body).unwrap();
    let parsed: Vec<_> = batch
        .data
        .iter()
        .map(|l| ResultLog::parse(l.get()))
        .collect();
    let summaries: Vec<_> = batch
        .data
        .iter()
        .map(|l| LineSummary::of(LogType::Result, l.get()))
        .collect();
    assert!(parsed[0].is_ok() && summaries[0].is_ok());
    let errors = parsed[1..]
        .iter()
        .map(|p| p.as_ref().map(|_| ()))
        .chain(summaries[1..].iter().map(|s| s.as_ref().map(|_| ())));
    for bad in errors {
        let err = bad.unwrap_err().to_string();
        assert!(err.starts_with("malformed result log line"), "{err}");
    }
    assert!(parsed[2].as_ref().unwrap_err().reason.contains("soon"));
}

#[test]
fn a_batch_past_its_line_limit_is_refused() {
    let lines = vec!["{}"; osquery_tls::log::MAX_BATCH_LINES + 1].join(",");
    let body = format!(r#"{{"node_key": "k", "log_type": "status", "data": [{lines}]}}"#);
    let err = serde_json::from_str::<LogRequest>(&body).unwrap_err();
    assert!(err.to_string().contains("logger_tls_max_lines"), "{err}");
    let fits = body.replacen("{},", "", 1);
    assert_eq!(
        serde_json::from_str::<LogRequest>(&fits)
            .unwrap()
            .data
            .len(),
        osquery_tls::log::MAX_BATCH_LINES
    );
}

#[test]
fn status_lines_of_new_and_old_clients() {
    let new = json!({
        "hostIdentifier": "web1", "calendarTime": "Mon Nov 23 20:00:00 2026 UTC", "unixTime": 1795464000,
        "severity": 1, "filename": "scheduler.cpp", "line": 83, "message": "query took long", "version": "5.12.1"
    })
    .to_string();
    let old = json!({
        "hostIdentifier": "web1", "calendarTime": "Mon Nov 23 20:00:00 2026 UTC", "unixTime": "1795464000",
        "severity": "1", "filename": "scheduler.cpp", "line": "83", "message": "query took long", "version": "5.12.1"
    })
    .to_string();
    assert_eq!(
        StatusLog::parse(&new).unwrap(),
        StatusLog::parse(&old).unwrap()
    );
    assert_eq!(StatusLog::parse(&new).unwrap().severity_name(), "warning");
    assert_eq!(
        LineSummary::of(LogType::Status, &old).unwrap(),
        LineSummary {
            name: "warning".into(),
            unix_time: 1795464000
        }
    );
}

#[test]
fn log_types_other_than_result_and_status_are_refused() {
    let err = serde_json::from_str::<LogRequest>(
        r#"{"node_key": "k", "log_type": "snapshotz", "data": []}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("snapshotz"), "{err}");
}

#[test]
fn distributed_write_with_rows_errors_and_statuses() {
    let body = json!({
        "node_key": "k",
        "queries": {"q1": [{"name": "osqueryd"}], "q2": "", "q3": [], "q4": null},
        "statuses": {"q1": 0, "q2": "1", "q3": 0},
        "messages": {"q2": "no such table: nosuch"},
        "stats": {"q1": {"wall_time_ms": 3, "memory": 4096}}
    })
    .to_string();
    let write: WriteRequest = serde_json::from_str(&body).unwrap();
    let outcomes = write.outcomes();
    let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["q1", "q2", "q3", "q4"]);
    assert_eq!(outcomes[0].rows, Some(r#"[{"name":"osqueryd"}]"#));
    assert!(outcomes[0].stats.is_some());
    assert_eq!(outcomes[1].status, 1);
    assert_eq!(
        outcomes[1].message.as_deref(),
        Some("no such table: nosuch")
    );
    assert!(outcomes[2].rows.is_none() && outcomes[2].status == 0);
    assert!(outcomes[3].rows.is_none());
    // Rows that are neither an array of objects nor empty are refused with the query named.
    for bad in [
        r#"{"queries": {"q9": "rows"}}"#,
        r#"{"queries": {"q9": [1, 2]}}"#,
        r#"{"queries": {"q9": {"a": "b"}}}"#,
    ] {
        let err = serde_json::from_str::<WriteRequest>(bad).unwrap_err();
        assert!(err.to_string().contains("q9"), "{bad}: {err}");
    }
    // A node answers the queries it was sent, not a million made-up ones.
    let ids = (0..=osquery_tls::distributed::MAX_QUERIES_PER_WRITE)
        .map(|i| format!(r#""q{i}": 0"#))
        .collect::<Vec<_>>()
        .join(",");
    let err =
        serde_json::from_str::<WriteRequest>(&format!(r#"{{"statuses": {{{ids}}}}}"#)).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

#[test]
fn read_answers_and_configs_round_trip() {
    let read: ReadResponse =
        serde_json::from_value(json!({"queries": {"a": "SELECT 1"}, "accelerate": "60"})).unwrap();
    assert_eq!(read.accelerate, Some(60));
    let back = serde_json::to_value(&read).unwrap();
    assert_eq!(
        back,
        json!({"queries": {"a": "SELECT 1"}, "accelerate": 60})
    );

    let mut config = Config::default();
    config
        .options
        .insert("distributed_interval".into(), json!(10));
    config.schedule.insert(
        "users".into(),
        ScheduledQuery {
            query: "SELECT * FROM users".into(),
            interval: 3600,
            snapshot: None,
            removed: None,
            platform: None,
            description: None,
        },
    );
    let wire = serde_json::to_value(&config).unwrap();
    assert_eq!(
        wire,
        json!({"options": {"distributed_interval": 10}, "schedule": {"users": {"query": "SELECT * FROM users", "interval": 3600}}})
    );
    let old: Config = serde_json::from_value(
        json!({"schedule": {"users": {"query": "SELECT * FROM users", "interval": "3600", "snapshot": "true"}}}),
    )
    .unwrap();
    assert_eq!(old.schedule["users"].interval, 3600);
    assert_eq!(old.schedule["users"].snapshot, Some(true));
}

#[test]
fn carve_bodies_of_new_and_old_clients() {
    let new: InitRequest = serde_json::from_value(json!({
        "block_count": 3, "block_size": 8192, "carve_size": 20000,
        "carve_id": "8d3b0c1e", "request_id": "yeet-7", "node_key": "k"
    }))
    .unwrap();
    let old: InitRequest = serde_json::from_value(json!({
        "block_count": "3", "block_size": "8192", "carve_size": "20000",
        "carve_id": "8d3b0c1e", "request_id": "yeet-7", "node_key": "k"
    }))
    .unwrap();
    assert_eq!(new, old);
    assert_eq!(new.validate(1 << 20, 1 << 30), Ok(()));
    let block: BlockRequest = serde_json::from_value(
        json!({"block_id": "2", "session_id": "s", "request_id": "yeet-7", "data": "aGVsbG8="}),
    )
    .unwrap();
    assert_eq!(block.block_id, 2);
    assert_eq!(block.bytes().unwrap(), b"hello");
    let bad = BlockRequest {
        data: "not base64!".into(),
        ..block
    };
    assert!(bad.bytes().is_err());
}
