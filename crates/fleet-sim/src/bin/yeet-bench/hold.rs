//! `yeet-bench hold [N]`: the server's memory with N held long-polls (default 10,000) from
//! N enrolled hosts. The hosts are enrolled over the API (register, then approve); each then
//! sends one signed check-in that the server holds. The sockets live in child processes
//! (`hold-client`), 9,000 each, so that the benchmark is not bound by one process's file
//! limit. Printed: the server's RSS before and while holding, bytes per held poll, and how
//! many polls were answered early (should be none).

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Conn, proc_stat, signed_post};

/// Sockets per client process, under the 20,000 file limit with room to spare.
const PER_CLIENT: usize = 9000;

/// The host identity of the `i`-th benchmark host.
pub fn host_identity(i: usize) -> yeet_proto::Identity {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    yeet_proto::Identity::from_seed(&seed)
}

/// Registers and approves hosts `range` from one keep-alive connection.
fn enroll(server: &fleet_sim::Server, range: std::ops::Range<usize>) {
    let host = server.url.trim_start_matches("http://").to_owned();
    let origin = yeet_proto::signing::origin_of(&server.url).unwrap();
    let mut conn = Conn::open(&host);
    for i in range {
        let id = host_identity(i);
        let body = serde_json::to_vec(&serde_json::json!({
            "public_key": id.public().to_openssh(), "hostname_hint": "bench",
            "facts": {"os": "linux", "arch": "x86_64", "agent_version": "bench"}}))
        .unwrap();
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        nonce[15] = 0xaa;
        let head = signed_post(
            &id,
            &origin,
            &host,
            yeet_proto::api::paths::REGISTER,
            &body,
            nonce,
        );
        let (status, reply) = conn.send(&head, &body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        server
            .client()
            .approve(reply["code"].as_str().unwrap(), &format!("hold-{i}"), &[])
            .unwrap();
    }
}

/// One signed check-in per host of `hosts`, to `url`, asking to be held for 10 minutes.
pub fn checkin_requests(url: &str, hosts: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let host = url.trim_start_matches("http://").to_owned();
    let origin = yeet_proto::signing::origin_of(url).unwrap();
    let body = br#"{"current_system":null,"booted_system":null,"state":"standby","facts":{"os":"linux","arch":"x86_64","agent_version":"bench"},"wait_secs":600}"#;
    hosts
        .map(|i| {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            nonce[15] = 0xbb;
            let head = signed_post(
                &host_identity(i),
                &origin,
                &host,
                yeet_proto::api::paths::CHECKIN,
                body,
                nonce,
            );
            [head.as_bytes(), body].concat()
        })
        .collect()
}

/// `hold-client` processes holding connections, [`PER_CLIENT`] each.
pub struct HoldClients {
    children: Vec<(
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    )>,
}

impl HoldClients {
    pub fn new() -> HoldClients {
        HoldClients {
            children: Vec::new(),
        }
    }

    /// Sends `requests` to `addr` from new client processes; returns once all are sent.
    pub fn send(&mut self, addr: &str, requests: &[Vec<u8>]) {
        for chunk in requests.chunks(PER_CLIENT) {
            let mut child = Command::new(fleet_sim::bin("yeet-bench"))
                .args(["hold-client", addr])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.as_mut().unwrap();
            for r in chunk {
                stdin.write_all(&(r.len() as u32).to_le_bytes()).unwrap();
                stdin.write_all(r).unwrap();
            }
            stdin.write_all(&0u32.to_le_bytes()).unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(line.starts_with("sent"), "{line}");
            self.children.push((child, out));
        }
    }

    /// Sends a command to every client; returns each one's answer line.
    pub fn ask(&mut self, command: &str) -> Vec<String> {
        for (child, _) in &mut self.children {
            let stdin = child.stdin.as_mut().unwrap();
            stdin.write_all(format!("{command}\n").as_bytes()).unwrap();
        }
        self.children
            .iter_mut()
            .map(|(_, out)| {
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                line.trim().to_owned()
            })
            .collect()
    }

    /// Connections answered so far.
    pub fn answered(&mut self) -> usize {
        self.ask("check")
            .iter()
            .map(|l| l.trim_start_matches("answered ").parse::<usize>().unwrap())
            .sum()
    }
}

impl Drop for HoldClients {
    fn drop(&mut self) {
        for (mut child, _) in self.children.drain(..) {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

pub fn hold(n: usize) {
    let server = fleet_sim::Server::start(fleet_sim::ServerOptions {
        config: BENCH_CONFIG.into(),
        ..Default::default()
    });
    let pid = server.proc.child.id();
    enroll_all(&[&server], n);
    std::thread::sleep(Duration::from_secs(2));
    let (_, rss_before) = proc_stat(pid);
    let mut clients = HoldClients::new();
    let addr = server.url.trim_start_matches("http://").to_owned();
    clients.send(&addr, &checkin_requests(&server.url, 0..n));
    // Let the server read and park every request.
    std::thread::sleep(Duration::from_secs(5));
    let (_, rss_held) = proc_stat(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let answered = clients.answered();
    drop(clients);
    println!("{n} enrolled hosts, each with one held check-in (SQLite, plain HTTP)");
    println!("server open files while holding: {fds}");
    println!(
        "server RSS: {} MiB enrolled and idle, {} MiB holding {n} polls",
        rss_before / 1024,
        rss_held / 1024
    );
    println!(
        "per held poll: {:.1} KiB",
        (rss_held.saturating_sub(rss_before)) as f64 / n as f64
    );
    println!("answered before their time (should be 0): {answered}");
}

/// Server settings for benchmarks with many hosts from one address, held for long.
pub const BENCH_CONFIG: &str = "registration_burst = 1000000\nmax_connections = 60000\nmax_connections_per_network = 60000\nmax_long_poll_secs = 600\ncheckin_interval_secs = 600\nmax_body_bytes = 67108864\n";

/// Enrolls hosts 0..n, spread over `servers` (replicas), from two threads per server.
pub fn enroll_all(servers: &[&fleet_sim::Server], n: usize) {
    let parts = servers.len() * 2;
    std::thread::scope(|scope| {
        for t in 0..parts {
            let server = servers[t % servers.len()];
            scope.spawn(move || enroll(server, (t * n / parts)..((t + 1) * n / parts)));
        }
    });
}

/// The child side: connects once per request read from stdin (length-prefixed), sends it,
/// and says `sent N`. Then, per command line: `check` answers `answered K` (connections
/// that got a response so far); `wait SECS` waits until every connection got one (or SECS
/// pass) and answers `arrivals MS...`, the Unix time in ms at which each response's first
/// byte was seen (polled every millisecond). It exits, closing them, when stdin closes.
pub fn hold_client(addr: &str) {
    let mut stdin = std::io::stdin().lock();
    let mut conns = Vec::new();
    loop {
        let mut len = [0u8; 4];
        stdin.read_exact(&mut len).unwrap();
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            break;
        }
        let mut request = vec![0u8; len];
        stdin.read_exact(&mut request).unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(&request).unwrap();
        stream.set_nonblocking(true).unwrap();
        conns.push(stream);
    }
    println!("sent {}", conns.len());
    let mut arrived: Vec<Option<i64>> = vec![None; conns.len()];
    let sweep = |arrived: &mut Vec<Option<i64>>| {
        let now = yeet_proto::clock::unix_now_ms();
        for (c, at) in conns.iter().zip(arrived.iter_mut()) {
            let mut b = [0u8; 1];
            if at.is_none()
                && !matches!(c.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                *at = Some(now);
            }
        }
    };
    let mut line = String::new();
    while stdin.read_line(&mut line).is_ok_and(|n| n > 0) {
        let command: Vec<&str> = line.split_whitespace().collect();
        match command.as_slice() {
            ["check"] => {
                sweep(&mut arrived);
                println!("answered {}", arrived.iter().flatten().count());
            }
            ["wait", secs] => {
                let deadline =
                    std::time::Instant::now() + Duration::from_secs(secs.parse().unwrap());
                while arrived.iter().any(Option::is_none) && std::time::Instant::now() < deadline {
                    sweep(&mut arrived);
                    std::thread::sleep(Duration::from_millis(1));
                }
                let times: Vec<String> = arrived.iter().flatten().map(i64::to_string).collect();
                println!("arrivals {}", times.join(" "));
            }
            _ => panic!("unknown command {line:?}"),
        }
        line.clear();
    }
}
