//! A hostile yeet server, for attack tests against the real agent and the real CLI. It
//! approves every registration, answers check-ins with whatever `Action` a test queued
//! (valid or not), answers secret fetches with a secret nobody asked for (named to land
//! outside the secrets directory), and records the activation reports it receives. To operators it shows a
//! fleet whose every free-text field carries terminal escapes and bidi overrides
//! (`HOSTILE_TEXT`). It checks no signature: an attacker who controls the server, or a
//! plain-HTTP path to it, does not need to.
//!
//! A deliberately tiny HTTP/1.1 server on `std`: one request per connection, answered with
//! `Connection: close`, which is all the agent's client needs.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use yeet_proto::api::paths;

/// What a test can queue and read back.
#[derive(Default)]
struct Script {
    /// Answers for idle check-ins (the agent is not tending an activation), in order.
    offers: VecDeque<(Value, u64)>,
    reports: Vec<Value>,
    /// Every check-in body received.
    checkins: Vec<Value>,
    /// Every check-in answer also orders a reboot.
    order_reboots: bool,
}

pub struct HostileServer {
    pub url: String,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
}

/// Answers idle check-ins when nothing is queued: nothing to do, come back in a second.
const IDLE_NEXT_SECS: u64 = 1;

/// Text that would rewrite an operator's terminal (OSC 52 sets the clipboard, CSI clears
/// the screen) and read backwards (a bidi override), were it printed as it is.
pub const HOSTILE_TEXT: &str = "evil\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\u{202e}gnp.exe";

/// What the server shows operators: one host, one pending registration, one activation
/// with its log, one release; every free-text field is `HOSTILE_TEXT`.
fn operator_view(path: &str) -> Option<Value> {
    let path = path.split('?').next().unwrap_or(path);
    let t = HOSTILE_TEXT;
    let facts = json!({"os": t, "arch": t, "agent_version": t});
    let activation = json!({
        "id": 1, "host": t, "store_path": t, "release_id": 1, "result": "failed",
        "reason": t, "started_at": 1, "finished_at": 2, "reboot_required": false,
    });
    Some(match path {
        paths::HOSTS => json!([{
            "name": t, "key_id": t, "state": "standby", "current_system": t,
            "desired_system": t, "desired_release": 1, "last_seen": 1, "approved_at": 1,
            "facts": facts, "last_result": "failed",
        }]),
        paths::REGISTRATIONS => json!([{
            "key_id": t, "hostname_hint": t, "facts": facts, "first_seen": 1,
            "last_seen": 1, "code_expired": false,
        }]),
        paths::RELEASES => json!([{
            "id": 1, "author": t, "created_at": 1, "message": t, "revision": t,
            "dirty": false, "hosts": {t: t},
        }]),
        p if p == paths::host_log("victim") => json!({"activation": activation, "log": t}),
        p if p == paths::host_activations("victim") => json!([activation]),
        _ => return None,
    })
}

impl HostileServer {
    pub fn start() -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (script.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = answer(conn, &s);
                    });
                }
            }
        });
        HostileServer { url, script, stop }
    }

    /// Queues a raw check-in answer body (`action` as JSON, so it may be anything).
    pub fn offer(&self, action: Value, next_checkin_secs: u64) {
        self.script
            .lock()
            .unwrap()
            .offers
            .push_back((action, next_checkin_secs));
    }

    /// From now on, every check-in answer orders the host to reboot.
    pub fn order_reboots(&self) {
        self.script.lock().unwrap().order_reboots = true;
    }

    /// Queues a `switch` to `store_path` from `caches`.
    pub fn offer_switch(&self, store_path: &str, caches: &[&str]) {
        self.offer(
            json!({"type": "switch", "store_path": store_path, "release_id": 666, "caches": caches}),
            0,
        );
    }

    pub fn reports(&self) -> Vec<Value> {
        self.script.lock().unwrap().reports.clone()
    }

    /// The `i`th check-in body received.
    pub fn checkin(&self, i: usize) -> Value {
        self.script.lock().unwrap().checkins[i].clone()
    }

    pub fn checkins(&self) -> usize {
        self.script.lock().unwrap().checkins.len()
    }

    /// True when every queued offer has been handed out.
    pub fn offers_taken(&self) -> bool {
        self.script.lock().unwrap().offers.is_empty()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn answer(conn: TcpStream, script: &Mutex<Script>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, reply) = match path.as_str() {
        paths::REGISTER => ("200 OK", json!({"status": "approved", "host": "victim"})),
        paths::CHECKIN => {
            let mut s = script.lock().unwrap();
            let idle = body["state"] != "updating";
            s.checkins.push(body);
            // Check-ins while an activation is tended get no offer, and take none from the queue.
            let offer = if idle { s.offers.pop_front() } else { None };
            let (action, next) = match offer {
                Some(offer) => offer,
                None => (json!({"type": "none"}), IDLE_NEXT_SECS),
            };
            let mut reply = json!({"host": "victim", "action": action, "next_checkin_secs": next});
            if s.order_reboots {
                reply["reboot"] = json!({"reason": "because I say so", "release_id": 666});
            }
            ("200 OK", reply)
        }
        // Secrets for every name asked, and one more that would land outside the
        // secrets directory, all validly encrypted to the request's recipient.
        paths::AGENT_SECRETS => ("200 OK", planted_secrets(&body)),
        paths::REPORT => {
            let reply = json!({
                "id": 1, "host": "victim", "store_path": body["store_path"],
                "release_id": body["release_id"], "result": body["result"],
                "reason": body["reason"], "started_at": body["started_at"],
                "finished_at": body["finished_at"], "reboot_required": false,
            });
            script.lock().unwrap().reports.push(body);
            ("200 OK", reply)
        }
        other => match operator_view(other) {
            Some(view) => ("200 OK", view),
            // Refusals carry hostile text too: the CLI prints them as errors.
            None => (
                "404 Not Found",
                json!({"error": {"code": HOSTILE_TEXT, "message": HOSTILE_TEXT}}),
            ),
        },
    };
    let text = reply.to_string();
    let mut conn = reader.into_inner();
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}

/// The name of the secret the hostile server plants.
pub const PLANTED_SECRET: &str = "../../../etc/cron.d/yeet-pwned";

fn planted_secrets(request: &Value) -> Value {
    use base64::Engine;
    let Some(recipient) = request["recipient"]
        .as_str()
        .and_then(|r| yeet_proto::secrets::x25519_recipient(r).ok())
    else {
        return json!({"secrets": [], "missing": [], "digest": "x"});
    };
    let mut names: Vec<String> = request["names"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.push(PLANTED_SECRET.into());
    let payload = b"* * * * * root touch /run/pwned\n";
    let secrets: Vec<Value> = names
        .iter()
        .map(|name| {
            let sealed = yeet_proto::secrets::seal(&recipient, payload).unwrap_or_default();
            let ciphertext = base64::engine::general_purpose::STANDARD.encode(sealed);
            json!({"name": name, "version": 1, "ciphertext": ciphertext})
        })
        .collect();
    json!({"secrets": secrets, "missing": [], "digest": "x"})
}
