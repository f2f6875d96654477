//! Unauthenticated abuse against the real server binary over loopback: idle and half-open
//! connections, bodies that never finish, and forged uploads. Each test is bounded in count
//! and time, and each ends by showing that legitimate requests still succeed. The attacker
//! connects from 127.0.0.2, the legitimate clients from 127.0.0.1 (two networks).

#![allow(clippy::unwrap_used)]

use fleet_sim::{Server, ServerOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A TCP connection to `server` from the given loopback source address.
fn connect_from(source: [u8; 4], server: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
    socket.connect(&server.into()).ok()?;
    Some(socket.into())
}

fn addr(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// `GET /healthz` from 127.0.0.1; true when it answers 200.
fn healthy(server: SocketAddr) -> bool {
    let Some(mut s) = connect_from([127, 0, 0, 1], server) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

/// Waits until the server has closed every one of `conns`, failing after `within`.
fn wait_all_closed(conns: &mut [TcpStream], within: Duration, what: &str) {
    let started = Instant::now();
    while !conns.iter_mut().all(closed_by_server) {
        assert!(started.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True when the server has closed `s` (a read returns end-of-file or an error).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => closed_by_server(s),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_and_half_open_connections_cannot_lock_the_fleet_out() {
    let server = Server::start(ServerOptions {
        config: "max_connections_per_network = 100\nheader_timeout_secs = 2\n".into(),
        ..Default::default()
    });
    let at = addr(&server);
    // 1,000 connections from one network, half of them with a request begun and never
    // finished; far more than its share.
    let mut idle: Vec<TcpStream> = (0..1000)
        .filter_map(|i| {
            let mut s = connect_from([127, 0, 0, 2], at)?;
            if i % 2 == 0 {
                let _ = s.write_all(b"POST /v1/agent/checkin HTTP/1.1\r\nHost: x\r\n");
            }
            Some(s)
        })
        .collect();
    assert!(idle.len() > 500, "could not open the attack connections");
    // Legitimate clients on another network are served meanwhile, signed requests too.
    assert!(healthy(at), "/healthz is unreachable during the flood");
    server.yeet(&["status"]);
    // Connections past the share were closed at once; the rest go at the header deadline.
    let over_share = idle.iter_mut().map(closed_by_server).filter(|c| *c).count();
    assert!(
        over_share >= 900 - 1,
        "only {over_share} connections past the share were closed"
    );
    wait_all_closed(
        &mut idle,
        Duration::from_secs(30),
        "idle connections outlived the header deadline",
    );
    assert!(healthy(at));
}

#[test]
fn a_body_that_never_arrives_times_out() {
    let server = Server::start(ServerOptions {
        config: "body_timeout_secs = 1\n".into(),
        ..Default::default()
    });
    let mut s = connect_from([127, 0, 0, 2], addr(&server)).unwrap();
    s.write_all(
        b"POST /v1/agent/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("body_timeout"), "{reply}");
    assert!(healthy(addr(&server)));
}

#[test]
fn forged_uploads_write_nothing() {
    let server = Server::start(ServerOptions::default());
    let me: serde_json::Value = server.yeet_json(&["whoami"]);
    let key_id = me["key_id"].as_str().unwrap();
    let uploads = server.dir.path().join("state/cache-uploads");
    let nar = "/cache/nar/09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d.nar";
    let now = yeet_proto::clock::unix_now();
    // An admin's key id (key ids are public) with a signature that does not verify, and
    // a 300 MiB body, three at once.
    let attacks: Vec<_> = (0..3)
        .map(|i| {
            let at = addr(&server);
            let head = format!(
                "PUT {nar} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nx-yeet-key: {key_id}\r\nx-yeet-timestamp: {now}\r\nx-yeet-nonce: {:032x}\r\nx-yeet-signature: {}\r\nx-yeet-content-sha256: {}\r\n\r\n",
                300u64 << 20,
                i + 1,
                "A".repeat(86) + "==",
                "0".repeat(64),
            );
            std::thread::spawn(move || {
                let mut s = connect_from([127, 0, 0, 2], at).unwrap();
                s.write_all(head.as_bytes()).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                // Keep sending until the server answers or hangs up.
                let chunk = vec![0u8; 1 << 20];
                let mut sent = 0usize;
                for _ in 0..300 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                    let _ = s.set_nonblocking(true);
                    let mut peek = [0u8; 1];
                    let answered = s.peek(&mut peek).is_ok_and(|n| n > 0);
                    let _ = s.set_nonblocking(false);
                    if answered {
                        break;
                    }
                }
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                (reply, sent)
            })
        })
        .collect();
    for a in attacks {
        let (reply, sent) = a.join().unwrap();
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
        assert!(sent < 300 << 20, "the server read the whole forged body");
    }
    let written: u64 = std::fs::read_dir(&uploads)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(written, 0, "forged uploads left bytes on disk");
    assert!(healthy(addr(&server)));
    server.yeet(&["status"]);
}

#[test]
fn a_tls_handshake_that_never_starts_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = fleet_sim::test_certificates(dir.path());
    let server = Server::start(ServerOptions {
        config: "header_timeout_secs = 1\n".into(),
        tls: Some((cert, key)),
        ca_cert: Some(ca),
        ..Default::default()
    });
    let at: SocketAddr = server.url.trim_start_matches("https://").parse().unwrap();
    // Connections that never send a ClientHello hold nothing past the deadline.
    let mut silent: Vec<TcpStream> = (0..20)
        .filter_map(|_| connect_from([127, 0, 0, 2], at))
        .collect();
    assert_eq!(silent.len(), 20);
    wait_all_closed(
        &mut silent,
        Duration::from_secs(20),
        "silent TLS connections outlived the handshake deadline",
    );
    // A real client over TLS is served.
    server.yeet(&["status"]);
}

/// `GET /v1/whoami` signed by `key` for `origin`, sent to `server` with `Host: host`;
/// returns the status line and body.
fn whoami_signed_for(
    key: &std::path::Path,
    origin: &str,
    server: SocketAddr,
    host: &str,
) -> String {
    let identity = yeet_client::load_identity(key).unwrap();
    let nonce: [u8; 16] =
        std::array::from_fn(|i| i as u8 ^ (yeet_proto::clock::unix_now_ms() as u8));
    let signed = yeet_proto::SignatureHeaders::sign(
        &identity,
        origin,
        "GET",
        yeet_proto::api::paths::WHOAMI,
        b"",
        yeet_proto::clock::unix_now(),
        nonce,
    );
    let headers: String = signed
        .to_pairs()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let mut s = connect_from([127, 0, 0, 2], server).unwrap();
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n",
        yeet_proto::api::paths::WHOAMI
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

/// Staging and production share an admin key and run on their defaults (no public_urls).
/// A request signed for staging, replayed to production with its `Host` header rewritten
/// to match what was signed, is refused: production answers only to its own address.
#[test]
fn a_request_signed_for_another_server_is_refused_under_the_default_config() {
    let staging = Server::start(ServerOptions::default());
    let production = Server::start(ServerOptions::default());
    // Production's operators add the same admin key, as a team with one key would.
    let mut add = std::process::Command::new(fleet_sim::bin("yeet-server"));
    add.arg("--config")
        .arg(production.dir.path().join("server.toml"))
        .arg("--state-dir")
        .arg(production.dir.path().join("state"))
        .args(["admin", "add", "alice", "--role", "admin", "--key"])
        .arg(staging.admin_key.with_extension("pub"));
    assert!(fleet_sim::run(&mut add).status.success());

    let staging_origin = staging.url.clone();
    let staging_host = staging_origin.trim_start_matches("http://");
    // Signed for staging: staging accepts it.
    let reply = whoami_signed_for(
        &staging.admin_key,
        &staging_origin,
        addr(&staging),
        staging_host,
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Replayed to production, Host rewritten: refused as signed for another server.
    let reply = whoami_signed_for(
        &staging.admin_key,
        &staging_origin,
        addr(&production),
        staging_host,
    );
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("wrong_server"), "{reply}");
    // The same key signing for production is served there, by address or by localhost.
    let production_host = production.url.trim_start_matches("http://");
    let reply = whoami_signed_for(
        &staging.admin_key,
        &production.url,
        addr(&production),
        production_host,
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let port = addr(&production).port();
    let reply = whoami_signed_for(
        &staging.admin_key,
        &format!("http://localhost:{port}"),
        addr(&production),
        &format!("localhost:{port}"),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A server other machines can reach refuses to start without its URLs, saying what to set.
#[test]
fn a_reachable_server_without_public_urls_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleet_sim::run(
        std::process::Command::new(fleet_sim::bin("yeet-server"))
            .arg("--state-dir")
            .arg(dir.path())
            .args(["--listen", "0.0.0.0:0"])
            .env_remove("YEET_SERVER_PUBLIC_URLS"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set public_urls") && err.contains("--public-url"),
        "{err}"
    );
}

/// The embedded SQLite server under a write lock held from outside for longer than its busy
/// timeout (a slow disk, a backup): an operator's read answers at once (reads have their
/// own connections, and the nonce log its own file); a write is answered `busy` with
/// `Retry-After` instead of `500`, and the CLI waits as told and asks again, so the
/// operator's command still succeeds.
#[test]
fn a_busy_database_slows_the_cli_down_instead_of_failing_it() {
    let server = Server::start(ServerOptions::default());
    server.yeet(&["status"]);
    let secret = server.dir.path().join("secret-value");
    std::fs::write(&secret, "s3cret").unwrap();
    // Pins the server's recipient first (a file of the CLI's), a read.
    server.yeet(&["secret", "recipient"]);
    let db = server.dir.path().join("state/yeet.db");
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(8)\n\
             c.execute('ROLLBACK')",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with its sqlite3 module");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let log = || server.proc.stderr.all().join("\n") + &server.proc.stdout.all().join("\n");
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = fleet_sim::run(server.yeet_cmd().args(args));
        assert!(
            out.status.success(),
            "yeet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    };
    let read = timed(&["status"]);
    assert!(
        !log().contains("database is busy"),
        "a read waited for the write lock:\n{}",
        log()
    );
    let secret = secret.display().to_string();
    let write = timed(&["secret", "add", "under-lock", "--from-file", &secret]);
    assert!(holder.wait().unwrap().success());
    assert!(
        log().contains("database is busy"),
        "the write was never answered busy:\n{}",
        log()
    );
    assert!(
        !log().contains("500 Internal"),
        "a busy database answered 500:\n{}",
        log()
    );
    let secrets: Vec<serde_json::Value> = server.yeet_json(&["secret", "list"]);
    assert!(
        secrets.iter().any(|s| s["name"] == "under-lock"),
        "{secrets:?}"
    );
    eprintln!("under an 8 s write lock: `yeet status` took {read:?}, `yeet secret add` {write:?}");
}

/// The requests a proxy passed on: each one's first line and body.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP proxy on the path to `upstream`, one request per connection: it passes requests
/// through, records their bodies, and while `swap` is set replaces the server's secrets
/// recipient in its answer with `attacker`'s.
struct SwappingProxy {
    url: String,
    swap: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: Seen,
}

impl SwappingProxy {
    /// Serves on `listener` (bound before the server started, so that the server could be
    /// told its URL).
    fn start(
        listener: std::net::TcpListener,
        upstream: SocketAddr,
        attacker: String,
    ) -> SwappingProxy {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let swap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen: Seen = Default::default();
        let (swapping, log) = (swap.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (head, body) = read_http(&mut client);
                let first = head.lines().next().unwrap_or_default().to_owned();
                log.lock().unwrap().push((first.clone(), body.clone()));
                // One request per upstream connection, closed after its answer.
                let head: String = head
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let mut server = TcpStream::connect(upstream).unwrap();
                write!(server, "{head}Connection: close\r\n\r\n").unwrap();
                server.write_all(&body).unwrap();
                let (answer_head, mut answer) = read_http(&mut server);
                if swapping.load(std::sync::atomic::Ordering::SeqCst)
                    && first.contains("/v1/secrets-recipient")
                {
                    answer = format!(r#"{{"recipient":"{attacker}"}}"#).into_bytes();
                }
                let answer_head: String = answer_head
                    .lines()
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        !l.starts_with("content-length") && !l.starts_with("connection")
                    })
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let _ = write!(
                    client,
                    "{answer_head}content-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = client.write_all(&answer);
            }
        });
        SwappingProxy { url, swap, seen }
    }
}

/// Reads one HTTP message: its head (the lines before the blank one) and its body (by
/// Content-Length).
fn read_http(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return (String::from_utf8_lossy(&data).into_owned(), Vec::new());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = data[end + 4..].to_vec();
    while body.len() < length {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    (head, body)
}

/// The server's secrets recipient comes unsigned. A proxy on the path swapped it for its
/// own and read the secret that `yeet secret add` then encrypted. Now the CLI pins the
/// recipient at its first use (or takes it from `--recipient`, as `yeet-server
/// secrets-recipient` prints it on the server host) and refuses another: the attacker gets
/// nothing it can decrypt.
#[test]
fn a_proxy_swapping_the_secrets_recipient_gets_nothing() {
    let attacker = age::x25519::Identity::generate();
    // The proxy's address comes first: clients reach the server through it, so the server
    // is told that URL (signed requests name it).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::start(ServerOptions {
        config: format!("public_urls = [\"{proxy_url}\"]\n"),
        ..Default::default()
    });
    let proxy = SwappingProxy::start(listener, addr(&server), attacker.to_public().to_string());
    let yeet = |args: &[&str]| {
        let mut cmd = server.yeet_cmd();
        cmd.env("YEET_SERVER", &proxy.url).args(args);
        fleet_sim::run(&mut cmd)
    };
    let secret = server.dir.path().join("secret.txt");
    std::fs::write(&secret, "not-for-the-attacker\n").unwrap();
    let file = secret.to_str().unwrap();

    // First use, proxy honest: the real recipient is pinned and the secret stored.
    let out = yeet(&["secret", "add", "one", "--from-file", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pinned its recipient"));

    // The proxy swaps: refused, naming both recipients; nothing is sent.
    proxy.swap.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = proxy.seen.lock().unwrap().len();
    for args in [
        vec!["secret", "add", "two", "--from-file", file],
        vec!["secret", "rotate", "one", "--from-file", file],
    ] {
        let out = yeet(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded through the swap");
        assert!(
            err.contains(&attacker.to_public().to_string()) && err.contains("nothing was sent"),
            "{err}"
        );
    }
    // Nor does `yeet secret recipient` hand the swapped one to `age -r` (then `--encrypted`).
    let out = yeet(&["secret", "recipient"]);
    assert!(!out.status.success(), "the swapped recipient was printed");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&attacker.to_public().to_string()),
        "the swapped recipient was printed"
    );
    // An explicit --recipient that is not the server's is refused the same way.
    let real = {
        let out = fleet_sim::run(
            std::process::Command::new(fleet_sim::bin("yeet-server"))
                .arg("--config")
                .arg(server.dir.path().join("server.toml"))
                .arg("--state-dir")
                .arg(server.dir.path().join("state"))
                .arg("secrets-recipient"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let out = yeet(&[
        "secret",
        "add",
        "three",
        "--from-file",
        file,
        "--recipient",
        &real,
    ]);
    assert!(!out.status.success());
    let seen = proxy.seen.lock().unwrap();
    for (request, body) in &seen[before..] {
        assert!(
            !request.starts_with("POST /v1/secrets"),
            "sent through the swap: {request} ({} bytes)",
            body.len()
        );
    }
    // What the server pinned at first use is what the server host shows.
    let pins =
        std::fs::read_to_string(server.dir.path().join(".config/yeet/known_recipients")).unwrap();
    assert!(pins.contains(&real), "{pins}");
}

/// Hosts that hang up mid-request (a power cut, a dropped link, a client's own timeout),
/// thousands of times, at every point of their check-ins and reports: the server keeps
/// every database writer connection. Afterwards writes go through at once, and past the
/// 30 s after which the server reports a writer held outside its pool, it never did.
#[test]
fn clients_that_hang_up_mid_request_never_keep_a_database_writer() {
    let server = Server::start(Default::default());
    let hosts: Vec<(String, [u8; 32])> = (0..6)
        .map(|i| {
            let name = format!("cut-{i}");
            let seed = server.approved_host_seed(&name);
            (name, seed)
        })
        .collect();
    let paths = [
        "/nix/store/00000000000000000000000000000000-one",
        "/nix/store/11111111111111111111111111111111-two",
    ];
    let storm_until = std::time::Instant::now() + Duration::from_secs(20);
    let cut = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for (i, (_, seed)) in hosts.iter().enumerate() {
            let (cut, server) = (&cut, &server);
            scope.spawn(move || {
                let mut round = 0u64;
                while std::time::Instant::now() < storm_until {
                    round += 1;
                    // A client that gives up after 1 to 8 ms: most requests are cut
                    // somewhere inside the server's handling.
                    let patience =
                        Duration::from_micros(1000 + (round * 7919 + i as u64 * 104_729) % 7000);
                    let impatient = server.host_client(seed, patience);
                    // Each check-in changes the host's report, so each writes.
                    let checkin = yeet_proto::api::CheckinRequest {
                        current_system: Some(paths[(round % 2) as usize].to_owned()),
                        ..Default::default()
                    };
                    let answered = if round.is_multiple_of(5) {
                        impatient
                            .report(&yeet_proto::api::ActivationReport {
                                store_path: paths[0].to_owned(),
                                release_id: None,
                                result: yeet_proto::api::ActivationResult::Failed,
                                reason: "cut".into(),
                                started_at: 1,
                                finished_at: 2,
                                reboot_required: false,
                                log_gzip_base64: String::new(),
                            })
                            .is_ok()
                    } else {
                        impatient.checkin(&checkin).is_ok()
                    };
                    if !answered {
                        cut.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let cut = cut.into_inner();
    assert!(cut > 500, "only {cut} requests were cut short");
    // Every host can write at once, one after another.
    let hosts: Vec<(&String, yeet_client::Client)> = hosts
        .iter()
        .map(|(name, seed)| (name, server.host_client(seed, Duration::from_secs(60))))
        .collect();
    for (name, host) in &hosts {
        for path in paths {
            let req = yeet_proto::api::CheckinRequest {
                current_system: Some(path.to_owned()),
                ..Default::default()
            };
            host.checkin(&req)
                .unwrap_or_else(|e| panic!("{name}: a write after the storm failed: {e}"));
        }
    }
    std::thread::sleep(Duration::from_secs(35));
    let log = server.proc.stderr.all().join("\n");
    assert!(
        !log.contains("has not been back in its pool"),
        "a writer stayed out of its pool after {cut} cut requests:\n{log}"
    );
    for (name, host) in &hosts {
        let req = yeet_proto::api::CheckinRequest {
            current_system: Some(paths[0].to_owned()),
            ..Default::default()
        };
        host.checkin(&req)
            .unwrap_or_else(|e| panic!("{name}: a write after the storm failed: {e}"));
    }
}
