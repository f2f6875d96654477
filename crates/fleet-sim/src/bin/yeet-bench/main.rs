//! Benchmarks that print figures, never assert them:
//! - `realnix [N] [rollout]`: N real-Nix simulated hosts converging on one release, with the
//!   time of each phase (wake, fetch, switch, confirm, report; see `realnix.rs`) and the
//!   transient errors it met on the way (counted, not fatal); with `rollout`, by a
//!   four-wave rollout, and the delay from each wave's gate to its hosts waking;
//! - `idle [SECONDS]`: one approved agent left idle (default 600 s): its RSS and CPU use;
//! - `publish [MIB] [PATHS] [SMALL]`: `yeet publish` of a generated closure against
//!   `nix copy` with the same compression, and re-publishes of a closure of SMALL paths
//!   (see `publish.rs`);
//! - `publish-random [PATHS] [MIB_PER_PATH...] [split]`: the fixed cost of a publish: PATHS
//!   paths of incompressible random bytes, each size (default 1 and 5 MiB; fractions such
//!   as 0.01 measure the per-path cost alone), `yeet publish` against `nix copy`, the
//!   median of 3 rounds each; with `split`, the server on one CPU and the publisher on the
//!   other, as on two machines;
//! - `fleet [N] [REPLICAS] [rollout]`: release-to-wake latency of N protocol-level agents
//!   over replicas on PostgreSQL; with `rollout`, per wave of a three-wave rollout, each
//!   opened by `yeet rollout promote` (see `fleet.rs`);
//! - `hold [N]`: the server's RSS with N held long-polls, per held poll (see `hold.rs`);
//! - `checkins [SECONDS] [CLIENTS] [postgres]`: signed check-ins per second (each
//!   verified, its nonce written to the fleet's nonce log) from CLIENTS keep-alive
//!   connections, against a bare axum endpoint doing the same JSON work (`bare.rs`), with
//!   the same client sending the same signed requests: the ratio is what authentication
//!   and the fleet state cost.
//! - `secrets [SECRETS] [ROUNDS]`: one activation's fetch of SECRETS secrets (default 100),
//!   each decrypted with the server's key and re-encrypted to the request's one-time
//!   recipient: the request's time (loopback, so nearly all of it is the server's), against
//!   a fetch of one secret.
//! - `secret-latency [ROUNDS] [INTERVAL]`: how long rotations in a row and a revocation take
//!   to reach a real agent, with the server's check-in interval at INTERVAL seconds (see
//!   `secret_latency.rs`).
//! - `osquery-logs [BATCHES] [NODES]`: osquery result-log ingest: NODES emulated osqueryd
//!   nodes (default 4) each post BATCHES batches (default 20) of 1,000 result lines, plain
//!   and gzip-compressed: result lines stored per second, and the gzip/plain ratio.
//!
//! Run release builds: `cargo run --release -p fleet-sim --bin yeet-bench -- latency`.

#![allow(clippy::unwrap_used)]

mod audit;
mod bare;
mod fleet;
mod hold;
mod publish;
mod realnix;
mod secret_latency;

use fleet_sim::sim::Fleet;
use std::time::{Duration, Instant};

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Clock ticks per second in /proc's CPU times (USER_HZ, 100 on every Linux).
const USER_HZ: f64 = 100.0;

/// A process's CPU time (user + system, in clock ticks) and its resident memory in KiB.
fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .unwrap();
    (ticks, rss_kib)
}

fn idle(secs: u64) {
    let fleet = Fleet::new(&["idle-1"], 60);
    std::thread::sleep(Duration::from_secs(3));
    let pid = *fleet.hosts[0]
        .pids_matching("yeet-agent run")
        .first()
        .expect("agent running");
    let (t0, rss0) = proc_stat(pid);
    let start = Instant::now();
    let mut peak = rss0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        peak = peak.max(proc_stat(pid).1);
    }
    let (t1, rss1) = proc_stat(pid);
    let cpu_s = (t1 - t0) as f64 / USER_HZ;
    let wall = start.elapsed().as_secs_f64();
    println!(
        "idle agent over {wall:.0} s (long-poll held by the server, 20 s in the test config):"
    );
    println!("RSS: start {rss0} KiB, end {rss1} KiB, peak {peak} KiB");
    println!(
        "CPU: {cpu_s:.2} s total = {:.4} % of one core",
        100.0 * cpu_s / wall
    );
}

/// A keep-alive HTTP/1.1 connection that sends requests and reads whole responses.
struct Conn {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one request; returns the status and body.
    fn send(&mut self, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let header_end = loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..header_end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while self.buf.len() < header_end + length {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        (status, self.buf[header_end..header_end + length].to_vec())
    }
}

/// A signed POST of `body` to `path`, as the agent sends it.
fn signed_post(
    id: &yeet_proto::Identity,
    origin: &str,
    host: &str,
    path: &str,
    body: &[u8],
    nonce: [u8; 16],
) -> String {
    let now = yeet_proto::clock::unix_now();
    let sig = yeet_proto::SignatureHeaders::sign(id, origin, "POST", path, body, now, nonce);
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in sig.to_pairs() {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn checkins(secs: u64, clients: usize, postgres: bool) {
    // Every benchmark host registers from loopback at once: lift the per-network limit.
    let server = fleet_sim::Server::start(fleet_sim::ServerOptions {
        config: "registration_burst = 100000\n".into(),
        database: postgres.then(fleet_sim::fresh_postgres_database),
        ..Default::default()
    });
    let host = server.url.trim_start_matches("http://").to_owned();
    let origin = yeet_proto::signing::origin_of(&server.url).unwrap();
    // Enroll one host per client: register with its key, approve its code.
    let hosts: Vec<yeet_proto::Identity> = (0..clients).map(hold::host_identity).collect();
    hold::enroll_all(&[&server], clients);
    // The baseline: the same requests, from the same client code, to a bare endpoint.
    let mut bare_server = std::process::Command::new(fleet_sim::bin("yeet-bench"))
        .arg("bare-server")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut bare_addr = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bare_server.stdout.take().unwrap()),
        &mut bare_addr,
    )
    .unwrap();
    // Throughput and the server's CPU time per request: the clients share the two cores,
    // so the CPU figure is the steadier comparison.
    let run = |addr: &str, round: u8, server_pid: u32| -> (f64, f64) {
        let (ticks_before, _) = proc_stat(server_pid);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let total: u64 = std::thread::scope(|scope| {
            let threads: Vec<_> = hosts
                .iter()
                .enumerate()
                .map(|(t, id)| {
                    let (host, origin) = (&host, &origin);
                    scope.spawn(move || {
                        let mut conn = Conn::open(addr);
                        let body = br#"{"current_system":null,"booted_system":null,"state":"standby","facts":{"os":"linux","arch":"x86_64","agent_version":"bench"},"wait_secs":0}"#;
                        let mut done: u64 = 0;
                        while Instant::now() < deadline {
                            let mut nonce = [0u8; 16];
                            nonce[..8].copy_from_slice(&done.to_le_bytes());
                            nonce[8] = t as u8;
                            nonce[9] = round;
                            let head = signed_post(id, origin, host, yeet_proto::api::paths::CHECKIN, body, nonce);
                            let (status, reply) = conn.send(&head, body);
                            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        let rate = total as f64 / started.elapsed().as_secs_f64();
        let ticks = proc_stat(server_pid).0 - ticks_before;
        let cpu_us = ticks as f64 * 1e6 / USER_HZ / total.max(1) as f64;
        (rate, cpu_us)
    };
    let (bare, bare_cpu) = run(bare_addr.trim(), 0, bare_server.id());
    let (signed, signed_cpu) = run(&host, 1, server.proc.child.id());
    let _ = bare_server.kill();
    let _ = bare_server.wait();
    println!(
        "{clients} keep-alive clients, {secs} s each, server on {}",
        if postgres {
            "PostgreSQL"
        } else {
            "SQLite (embedded defaults)"
        }
    );
    println!(
        "bare axum endpoint, same JSON work, no auth or state: {bare:.0} requests/s, {bare_cpu:.0} µs server CPU each"
    );
    println!(
        "signed check-ins (verified, nonce logged, state read): {signed:.0} requests/s, {signed_cpu:.0} µs server CPU each"
    );
    println!(
        "ratio signed/bare: {:.2} by rate, {:.2} by server CPU per request",
        signed / bare,
        bare_cpu / signed_cpu
    );
}

/// An approved host's client: registered with its own key, approved by the admin.
fn secrets(count: usize, rounds: usize) {
    use base64::Engine;
    let server = fleet_sim::Server::start(Default::default());
    let host = server.approved_host("bench-host");
    let admin = server.client();
    let recipient = admin.secret_recipient().unwrap().recipient;
    let recipient = yeet_proto::secrets::x25519_recipient(&recipient).unwrap();
    let names: Vec<String> = (0..count).map(|i| format!("bench-{i:04}")).collect();
    for name in &names {
        // About the size of a TLS key.
        let sealed = yeet_proto::secrets::seal(&recipient, &[b'k'; 3000]).unwrap();
        let req = yeet_proto::secrets::AddSecretRequest {
            name: name.clone(),
            ciphertext: base64::engine::general_purpose::STANDARD.encode(sealed),
            hosts: vec!["bench-host".into()],
        };
        admin.add_secret(&req).unwrap();
    }
    let time = |names: &[String]| -> Vec<f64> {
        let mut ms: Vec<f64> = (0..rounds)
            .map(|_| {
                let one_time = age::x25519::Identity::generate();
                let req = yeet_proto::secrets::FetchSecretsRequest {
                    recipient: one_time.to_public().to_string(),
                    names: names.to_vec(),
                };
                let started = Instant::now();
                let resp = host.fetch_secrets(&req).unwrap();
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(resp.secrets.len(), names.len());
                elapsed
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let one = time(&names[..1]);
    let all = time(&names);
    let median = |v: &[f64]| v[v.len() / 2];
    println!("secrets per fetch: {count} (3000 bytes each), rounds: {rounds}");
    println!(
        "fetch of {count}: median {:.1} ms, min {:.1} ms, max {:.1} ms ({:.3} ms per secret)",
        median(&all),
        all[0],
        all[all.len() - 1],
        median(&all) / count as f64
    );
    println!("fetch of 1: median {:.1} ms", median(&one));
    println!("ratio {count}/1: {:.1}", median(&all) / median(&one));
}

/// One ingest run: result lines per second over `nodes` concurrent nodes.
fn ingest_rate(server: &fleet_sim::Server, batches: usize, nodes: usize, gzip: bool) -> f64 {
    use fleet_sim::osquery::Osqueryd;
    let clients: Vec<Osqueryd> = (0..nodes)
        .map(|i| {
            let mut n = Osqueryd::new(&server.url, &format!("bench-{gzip}-{i}"), "bench-secret");
            n.compress = gzip;
            n.enroll().unwrap();
            n
        })
        .collect();
    let started = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut n| {
            std::thread::spawn(move || {
                for b in 0..batches {
                    let lines = (0..1000)
                        .map(|i| {
                            n.result_line(
                                "processes",
                                "added",
                                serde_json::json!({"pid": (b * 1000 + i).to_string(), "name": "nginx", "path": "/nix/store/abc-nginx/bin/nginx", "cmdline": "nginx -g daemon off;"}),
                            )
                        })
                        .collect();
                    n.log_results(lines).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (batches * nodes * 1000) as f64 / started.elapsed().as_secs_f64()
}

fn osquery_logs(batches: usize, nodes: usize) {
    let server = fleet_sim::Server::start(fleet_sim::ServerOptions {
        // Ingest is measured, not the per-node limits.
        config: "[osquery]\nnode_burst = 100000\nnode_log_bytes_per_hour = 1099511627776\nnode_log_bytes_stored = 1099511627776\n".into(),
        ..Default::default()
    });
    let secret = server.dir.path().join("enroll-secret");
    std::fs::write(&secret, "bench-secret").unwrap();
    server.yeet(&[
        "secret",
        "add",
        "osquery-enroll",
        "--from-file",
        secret.to_str().unwrap(),
    ]);
    let plain = ingest_rate(&server, batches, nodes, false);
    let gzip = ingest_rate(&server, batches, nodes, true);
    println!("osquery log ingest: {nodes} nodes x {batches} batches of 1000 result lines (SQLite)");
    println!("  plain: {plain:>10.0} lines/s");
    println!(
        "  gzip:  {gzip:>10.0} lines/s   (gzip/plain {:.2})",
        gzip / plain
    );
}

fn main() {
    fleet_sim::set_quiet(true);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("realnix") => realnix::realnix(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50),
            args.iter().any(|a| a == "rollout"),
        ),
        Some("idle") => idle(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(600)),
        Some("fleet") => fleet::fleet(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000),
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3),
            args.iter().any(|a| a == "rollout"),
        ),
        Some("bare-server") => bare::bare_server(),
        Some("hold") => hold::hold(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000)),
        Some("hold-client") => hold::hold_client(&args[1]),
        Some("publish") => publish::publish(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024),
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300),
            args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10_000),
        ),
        Some("publish-random") => publish::publish_random(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100),
            args.get(2..)
                .map(|sizes| sizes.iter().filter_map(|s| s.parse().ok()).collect())
                .filter(|sizes: &Vec<f64>| !sizes.is_empty())
                .unwrap_or_else(|| vec![1.0, 5.0]),
            args.iter().any(|a| a == "split"),
        ),
        Some("secrets") => secrets(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100),
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20),
        ),
        Some("checkins") => checkins(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10),
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4),
            args.get(3).is_some_and(|a| a == "postgres"),
        ),
        Some("secret-latency") => secret_latency::secret_latency(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5).max(1),
            args.get(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(30)
                .max(1),
        ),
        Some("audit") => audit::audit(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000),
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20),
            args.get(3).is_some_and(|a| a == "postgres"),
        ),
        Some("osquery-logs") => osquery_logs(
            args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20),
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4),
        ),
        _ => eprintln!(
            "usage: yeet-bench realnix [N] [rollout] | hold [N] | fleet [N] [REPLICAS] [rollout] | idle [SECONDS] | publish [MIB] [PATHS] [SMALL] | publish-random [PATHS] [MIB_PER_PATH...] [split] | checkins [SECONDS] [CLIENTS] [postgres] | secrets [SECRETS] [ROUNDS] | secret-latency [ROUNDS] [INTERVAL] | osquery-logs [BATCHES] [NODES] | audit [HOSTS] [ROUNDS] [postgres]"
        ),
    }
}
