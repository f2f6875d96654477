//! `yeet-bench fleet [N] [REPLICAS]`: N protocol-level agents (default 10,000; no Nix, one
//! held check-in each) spread evenly over REPLICAS server processes (default 3) on one
//! fresh PostgreSQL database. One release names a new system for every host, created on
//! the first replica; the agents' check-ins are answered on whichever replica holds them.
//! Printed: each replica's RSS, PostgreSQL's connections, the release request's time, and
//! release-to-wake latency (from just before the release request to each answer's first
//! byte) p50, p99 and max.
//!
//! `fleet N REPLICAS rollout` releases by a three-wave rollout (33%, 50% of the rest, the
//! rest) with a bake of an hour, so that only `promote` opens the next wave: it prints,
//! per wave, the delay from the request that opened it (the release, then each promote)
//! to each of its hosts' answers, wherever they are held.

use std::time::Duration;

use crate::hold::{BENCH_CONFIG, HoldClients, checkin_requests, enroll_all};
use crate::{percentile, proc_stat};

/// Backends connected to `database` (its URL's last path segment), per `pg_stat_activity`.
fn postgres_connections(database: &str) -> String {
    let name = database.rsplit('/').next().unwrap_or(database);
    let out = fleet_sim::run(
        std::process::Command::new("psql")
            .arg(fleet_sim::postgres_admin_url())
            .args([
                "-tAc",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"),
            ]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn fleet(n: usize, replicas: usize, rollout: bool) {
    let database = fleet_sim::fresh_postgres_database();
    let first = fleet_sim::Server::start(fleet_sim::ServerOptions {
        config: BENCH_CONFIG.into(),
        database: Some(database.clone()),
        ..Default::default()
    });
    let others: Vec<fleet_sim::Server> = (1..replicas.max(1)).map(|_| first.replica()).collect();
    let servers: Vec<&fleet_sim::Server> = std::iter::once(&first).chain(&others).collect();
    let enrolling = std::time::Instant::now();
    enroll_all(&servers, n);
    let enrolled = enrolling.elapsed().as_secs_f64();
    let mut clients = HoldClients::new();
    let per = n.div_ceil(servers.len());
    for (r, server) in servers.iter().enumerate() {
        let hosts = (r * per).min(n)..((r + 1) * per).min(n);
        let addr = server.url.trim_start_matches("http://").to_owned();
        clients.send(&addr, &checkin_requests(&server.url, hosts));
    }
    std::thread::sleep(Duration::from_secs(5));
    let early = clients.answered();
    let rss: Vec<u64> = servers
        .iter()
        .map(|s| proc_stat(s.proc.child.id()).1 / 1024)
        .collect();
    let pg = postgres_connections(&database);

    let system = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-bench-system";
    let hosts: std::collections::BTreeMap<String, String> = (0..n)
        .map(|i| (format!("hold-{i}"), system.to_owned()))
        .collect();
    if rollout {
        let policy = yeet_proto::rollout::RolloutPolicy {
            waves: ["33%", "50%", "100%"]
                .iter()
                .map(|w| w.parse().unwrap())
                .collect(),
            bake_secs: 3600,
            max_failures: yeet_proto::rollout::Threshold::Count(0),
            on_failure: Default::default(),
            health: vec![],
            min_online: None,
        };
        first.client().set_rollout_policy("bench", &policy).unwrap();
    }
    let released = yeet_proto::clock::unix_now_ms();
    let release = first
        .client()
        .create_release(&yeet_proto::api::CreateReleaseRequest {
            hosts,
            message: "fleet benchmark".into(),
            cache: None,
            revision: None,
            dirty: false,
            rollout: rollout.then(|| "bench".to_owned()),
            ..Default::default()
        })
        .unwrap();
    if rollout {
        let request_ms = yeet_proto::clock::unix_now_ms() - released;
        println!(
            "{n} protocol-level agents over {} replica(s) on one PostgreSQL database (enrolled in {enrolled:.0} s)",
            servers.len()
        );
        println!("answered before the release (should be 0): {early}");
        println!("replica RSS while holding (MiB): {rss:?}");
        println!("release request ({n} hosts, a three-wave rollout): {request_ms} ms");
        let mut opened_at = released;
        let mut seen = 0;
        for wave in 1..=3 {
            if wave > 1 {
                opened_at = yeet_proto::clock::unix_now_ms();
                first
                    .client()
                    .control_rollout(release.id, yeet_proto::rollout::RolloutControl::Promote)
                    .unwrap();
                println!(
                    "promote request (opens wave {wave}): {} ms",
                    yeet_proto::clock::unix_now_ms() - opened_at
                );
            }
            // Every host of the waves opened so far, as the server splits them.
            let expected: usize = first
                .client()
                .rollout(release.id)
                .unwrap()
                .waves
                .iter()
                .take(wave)
                .map(|w| w.hosts.len())
                .sum();
            let mut arrivals: Vec<i64> = Vec::new();
            // A second at a time (each client times arrivals to the millisecond meanwhile),
            // until the wave's hosts are all answered or 30 s passed.
            for _ in 0..30 {
                arrivals = clients
                    .ask("wait 1")
                    .iter()
                    .flat_map(|l| {
                        l.trim_start_matches("arrivals")
                            .split_whitespace()
                            .map(|t| t.parse::<i64>().unwrap())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if arrivals.len() >= expected {
                    break;
                }
            }
            arrivals.sort_unstable();
            let fresh: Vec<i64> = arrivals[seen..].iter().map(|t| t - opened_at).collect();
            seen = arrivals.len();
            if fresh.is_empty() {
                println!("wave {wave}: no agent woken within 30 s");
                continue;
            }
            println!(
                "wave {wave} ({}): opened-to-wake p50 {} ms, p99 {} ms, max {} ms",
                fresh.len(),
                percentile(&fresh, 0.5),
                percentile(&fresh, 0.99),
                fresh[fresh.len() - 1]
            );
        }
        drop(clients);
        return;
    }
    let request_ms = yeet_proto::clock::unix_now_ms() - released;
    let mut latencies: Vec<i64> = clients
        .ask("wait 300")
        .iter()
        .flat_map(|l| {
            l.trim_start_matches("arrivals")
                .split_whitespace()
                .map(|t| t.parse::<i64>().unwrap() - released)
                .collect::<Vec<_>>()
        })
        .collect();
    latencies.sort_unstable();
    drop(clients);
    println!(
        "{n} protocol-level agents over {} replica(s) on one PostgreSQL database (enrolled in {enrolled:.0} s)",
        servers.len()
    );
    println!("answered before the release (should be 0): {early}");
    println!("replica RSS while holding (MiB): {rss:?}");
    println!("PostgreSQL connections to the database: {pg}");
    println!("release request ({n} hosts): {request_ms} ms");
    if latencies.is_empty() {
        println!("no agent was woken within 300 s");
        return;
    }
    println!(
        "release-to-wake: {} of {n} woken; p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}
