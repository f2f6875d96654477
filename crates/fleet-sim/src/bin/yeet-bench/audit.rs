//! `yeet-bench audit [HOSTS] [ROUNDS] [postgres]`: what the audit log costs a publish to
//! HOSTS hosts (default 1,000), in process, on a fresh SQLite file (or PostgreSQL). Printed,
//! as medians of ROUNDS: the whole release as the server creates it (its event names every
//! host and system); the same release written by the store with that event, and with an
//! empty one (the difference is what naming the hosts costs); and an empty event appended
//! in a transaction of its own (the fixed cost of an append, with its commit). Check-ins
//! are not audited, so they cost nothing: there is no figure for them.

use std::collections::BTreeMap;
use std::time::Instant;
use yeet_proto::api::{CreateReleaseRequest, Role};
use yeet_server::service::{Principal, Service, ServiceConfig, audit};
use yeet_server::store::{NewRelease, RegistrationRow, Store};

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

pub fn audit(hosts: usize, rounds: usize, postgres: bool) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(hosts.max(1), rounds.max(1), postgres));
}

async fn run(hosts: usize, rounds: usize, postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let url = if postgres {
        fleet_sim::fresh_postgres_database()
    } else {
        format!("sqlite://{}?mode=rwc", dir.path().join("yeet.db").display())
    };
    let store = Store::open(&url, None).await.unwrap();
    let mut ids = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let key = format!("SHA256:bench{i}");
        store
            .upsert_registration(&RegistrationRow {
                key_id: key.clone(),
                public_key: format!("ssh-ed25519 bench{i}"),
                hostname_hint: String::new(),
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "bench".into(),
                code: format!("C{i}"),
                code_expires_at: i64::MAX,
                first_seen_ms: 0,
                last_seen_ms: 0,
                source: "127.0.0.1".into(),
                suggested_tags: String::new(),
            })
            .await
            .unwrap();
        let approved = audit::local_entry("host.approve", serde_json::json!({}));
        let host = store
            .approve_registration(
                &key,
                &format!("host-{i}"),
                "bench",
                &Default::default(),
                false,
                &approved,
            )
            .await
            .unwrap()
            .unwrap();
        ids.push(host.id);
    }
    let service = Service::new(store.clone(), ServiceConfig::default())
        .await
        .unwrap();
    let admin = Principal::User {
        name: "bench".into(),
        role: Role::Admin,
        key_id: "SHA256:bench".into(),
        tags: Vec::new(),
    };
    let system = |round: usize| {
        format!("/nix/store/{:032}-nixos-system-bench", round % 10).replace('0', "a")
    };
    let mut whole = Vec::new();
    for round in 0..rounds {
        let req = CreateReleaseRequest {
            hosts: (0..hosts)
                .map(|i| (format!("host-{i}"), system(round)))
                .collect::<BTreeMap<_, _>>(),
            message: format!("bench {round}"),
            cache: None,
            revision: None,
            dirty: false,
            ..Default::default()
        };
        let started = Instant::now();
        service.create_release(&admin, req).await.unwrap();
        whole.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let entries: Vec<(i64, String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("host-{i}"), system(1)))
        .collect();
    let full_event = || {
        let mut e = audit::local_entry(
            "release.create",
            serde_json::json!({
                "message": "bench",
                "systems": entries.iter().map(|(_, h, p)| (h.clone(), p.clone())).collect::<BTreeMap<_, _>>(),
            }),
        );
        e.hosts = entries.iter().map(|(_, h, _)| h.clone()).collect();
        e
    };
    let empty_event = || audit::local_entry("release.create", serde_json::json!({}));
    let release = NewRelease {
        author: "bench".into(),
        message: "bench".into(),
        ..Default::default()
    };
    let (mut with_event, mut with_empty, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let event = full_event();
        let started = Instant::now();
        store
            .insert_release(&release, 0, &entries, &event)
            .await
            .unwrap();
        with_event.push(started.elapsed().as_secs_f64() * 1000.0);
        let event = empty_event();
        let started = Instant::now();
        store
            .insert_release(&release, 0, &entries, &event)
            .await
            .unwrap();
        with_empty.push(started.elapsed().as_secs_f64() * 1000.0);
        let event = empty_event();
        let started = Instant::now();
        store.record_audit(&event).await.unwrap();
        alone.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (whole, with_event, with_empty, alone) = (
        median_ms(whole),
        median_ms(with_event),
        median_ms(with_empty),
        median_ms(alone),
    );
    let backend = if postgres { "PostgreSQL" } else { "SQLite" };
    println!("audit cost of a release naming {hosts} hosts ({backend}, medians of {rounds}):");
    println!("  the server's create_release, with its event:  {whole:>8.2} ms");
    println!("  the store's release with the full event:       {with_event:>8.2} ms");
    println!("  the store's release with an empty event:       {with_empty:>8.2} ms");
    println!(
        "  naming the hosts and systems in the event:     {:>8.2} ms ({:.1} % of the server's release)",
        with_event - with_empty,
        100.0 * (with_event - with_empty) / whole
    );
    println!("  an empty event in a transaction of its own:    {alone:>8.2} ms");
    store.close().await;
}
