//! Test harness for whole-system tests: starts the real `yeet-server`, `yeet-agent` and
//! `yeet` binaries as separate processes, on loopback, in throwaway directories.
//!
//! The binaries are (re)built once per process, so nothing runs against stale binaries:
//! for a test with `cargo build --all-targets` (the feature set `cargo test` uses, so
//! nothing is rebuilt back and forth), for the demo and the benchmarks with `--bins` only
//! (they need no test target, and building those was most of the demo's first run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod hostile;
pub mod osquery;
pub mod sim;

use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Directory holding the workspace's binaries, built on first use.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let exe = std::env::current_exe().unwrap();
        // Tests run from target/<profile>/deps/, binaries (the demo) from target/<profile>/.
        let test = exe.parent().is_some_and(|d| d.ends_with("deps"));
        // The binaries are built with the profile this process was: the benchmark runs
        // release binaries, the demo its own profile's.
        let profile_dir = exe
            .ancestors()
            .nth(if test { 2 } else { 1 })
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let profile = match profile_dir {
            "debug" => "dev",
            other => other,
        };
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--profile", profile])
            .arg(if test { "--all-targets" } else { "--bins" })
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build the yeet binaries");
        assert!(status.success(), "building the yeet binaries failed");
        nix_database_ready();
        let dir = exe.parent().unwrap();
        if test {
            dir.parent().unwrap().to_owned()
        } else {
            dir.to_owned()
        }
    })
}

/// Creates the machine's Nix database once per process. Nix creates it on first use, and on
/// a fresh machine the parallel tests' first `nix-store` calls race to create it: the
/// losers fail with "SQLite database ... is busy" instead of waiting.
pub fn nix_database_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        // Without Nix this fails; the first real Nix call then says what is missing.
        let _ = Command::new("nix-store")
            .arg("--init")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops echoing child processes' output to stderr (the demo shows only its own steps).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Output lines of a child process, collected by a background thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, stream: impl std::io::Read + Send + 'static, echo: &'static str) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("[{echo}] {line}");
                }
                lines.lock().unwrap().push(line);
            }
        });
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until some line yields `Some`, failing the test after `timeout`.
    pub fn wait_for<T>(&self, timeout: Duration, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.0.lock().unwrap().iter().find_map(|l| f(l)) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &'static str) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (stdout, stderr) = (Lines::default(), Lines::default());
        stdout.follow(child.stdout.take().unwrap(), name);
        stderr.follow(child.stderr.take().unwrap(), name);
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for a test server.
#[derive(Default)]
pub struct ServerOptions {
    /// Extra lines for the server's TOML config file.
    pub config: String,
    /// Database URL; SQLite in the state directory when `None`.
    pub database: Option<String>,
    /// (certificate, key) PEM files for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The CA that clients must trust for `tls`.
    pub ca_cert: Option<PathBuf>,
}

fn admin_client(url: &str, key: &Path, ca_cert: Option<&Path>) -> yeet_client::Client {
    let identity = yeet_client::load_identity(key).unwrap_or_else(|e| panic!("the admin key: {e}"));
    yeet_client::Client::new(url, identity, ca_cert, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("a client for {url}: {e}"))
}

/// A running `yeet-server` with one admin, whose key the `yeet` helper uses.
pub struct Server {
    pub proc: Proc,
    pub database: Option<String>,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub admin_key: PathBuf,
    pub ca_cert: Option<PathBuf>,
    /// The typed API client with the admin key, made once.
    client: yeet_client::Client,
    /// Whether dropping this server drops its PostgreSQL database (not for replicas, which
    /// share the first server's).
    owns_database: bool,
    /// What a restart starts it with again.
    tls: Option<(PathBuf, PathBuf)>,
    config: PathBuf,
}

impl Server {
    /// A new host key, registered and approved as `name`: a client that signs as that host
    /// (for tests and benchmarks that speak the agent's protocol themselves).
    pub fn approved_host(&self, name: &str) -> yeet_client::Client {
        self.host_client(&self.approved_host_seed(name), Duration::from_secs(60))
    }

    /// A client signing as the host whose key `seed` makes, giving up after `timeout`.
    pub fn host_client(&self, seed: &[u8; 32], timeout: Duration) -> yeet_client::Client {
        let identity = yeet_proto::Identity::from_seed(seed);
        yeet_client::Client::new(&self.url, identity, None, timeout).unwrap()
    }

    /// As `approved_host`; the key's seed, for clients of its own (`host_client`).
    pub fn approved_host_seed(&self, name: &str) -> [u8; 32] {
        let mut seed = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut seed)
            .unwrap();
        let identity = yeet_proto::Identity::from_seed(&seed);
        let req = yeet_proto::api::RegisterRequest {
            public_key: identity.public().to_openssh(),
            hostname_hint: name.into(),
            facts: Default::default(),
            wait_secs: 0,
        };
        let client =
            yeet_client::Client::new(&self.url, identity, None, Duration::from_secs(60)).unwrap();
        let yeet_proto::api::RegisterResponse::Pending { code, .. } =
            client.register(&req).unwrap()
        else {
            panic!("a new key was approved at once");
        };
        self.yeet(&["approve", name, &code]);
        seed
    }

    pub fn start(opts: ServerOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("server.toml");
        // Tests check in every second, unless their config says otherwise.
        let interval = if opts.config.contains("checkin_interval_secs") {
            ""
        } else {
            "checkin_interval_secs = 1\n"
        };
        std::fs::write(
            &config,
            format!("{interval}last_seen_flush_ms = 200\n{}", opts.config),
        )
        .unwrap();
        let admin_key = operator_key(&dir.path().join("admin_key"));
        let base = |c: &mut Command| {
            c.arg("--config")
                .arg(&config)
                .arg("--state-dir")
                .arg(&state);
            if let Some(db) = &opts.database {
                c.arg("--database").arg(db);
            }
        };
        let mut add = Command::new(bin("yeet-server"));
        base(&mut add);
        add.args(["admin", "add", "admin", "--role", "admin", "--key"])
            .arg(admin_key.with_extension("pub"));
        let out = run(&mut add);
        assert!(
            out.status.success(),
            "admin add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // It says which database it wrote to (a forgotten --state-dir writes elsewhere).
        let said = String::from_utf8_lossy(&out.stdout);
        // The tests' PostgreSQL URLs carry no password, so they are shown whole.
        let database = opts
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", state.join("yeet.db").display()));
        assert!(
            said.contains(&format!("to the database at {database}")),
            "{said}"
        );
        Server::serve(dir, &config, opts, admin_key, true)
    }

    /// Starts `yeet-server` on `config` with a state directory in `dir`.
    fn serve(
        dir: tempfile::TempDir,
        config: &Path,
        opts: ServerOptions,
        admin_key: PathBuf,
        owns_database: bool,
    ) -> Server {
        let (proc, url) = Server::spawn(dir.path(), config, &opts);
        let client = admin_client(&url, &admin_key, opts.ca_cert.as_deref());
        Server {
            proc,
            url,
            dir,
            admin_key,
            client,
            owns_database,
            database: opts.database.clone(),
            ca_cert: opts.ca_cert.clone(),
            tls: opts.tls,
            config: config.to_owned(),
        }
    }

    /// The server process on `dir`'s state directory, and the URL it listens on.
    fn spawn(dir: &Path, config: &Path, opts: &ServerOptions) -> (Proc, String) {
        let mut serve = Command::new(bin("yeet-server"));
        serve
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(dir.join("state"));
        if let Some(db) = &opts.database {
            serve.arg("--database").arg(db);
        }
        serve.args(["--listen", "127.0.0.1:0"]);
        if let Some((cert, key)) = &opts.tls {
            serve.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let proc = Proc::spawn(serve, "server");
        let url = proc
            .stdout
            .wait_for(Duration::from_secs(30), "the server to listen", |l| {
                l.strip_prefix("yeet-server listening on ")
                    .map(str::to_owned)
            });
        (proc, url)
    }

    /// Kills the server with SIGKILL (nothing of it runs on: no flush, no clean close),
    /// then starts it again on the same state directory, database and config. It listens
    /// on a new port: clients made before (`host_client`) must be made again.
    pub fn kill_and_restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let opts = ServerOptions {
            database: self.database.clone(),
            tls: self.tls.clone(),
            ca_cert: self.ca_cert.clone(),
            ..Default::default()
        };
        let (proc, url) = Server::spawn(self.dir.path(), &self.config, &opts);
        self.client = admin_client(&url, &self.admin_key, self.ca_cert.as_deref());
        self.proc = proc;
        self.url = url;
    }

    /// Another server process on this one's database and config, with its own state
    /// directory: a replica (PostgreSQL only; SQLite is one process's).
    pub fn replica(&self) -> Server {
        let database = self.database.clone();
        assert!(
            database
                .as_deref()
                .is_some_and(|d| d.starts_with("postgres")),
            "replicas share a PostgreSQL database"
        );
        let dir = tempfile::tempdir().unwrap();
        // Every replica decrypts the same secrets: the key is copied, as an operator would.
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::copy(
            self.dir.path().join("state/secrets.key"),
            dir.path().join("state/secrets.key"),
        )
        .unwrap();
        let opts = ServerOptions {
            database,
            ca_cert: self.ca_cert.clone(),
            ..Default::default()
        };
        Server::serve(
            dir,
            &self.dir.path().join("server.toml"),
            opts,
            self.admin_key.clone(),
            false,
        )
    }

    /// A `yeet` command pointed at this server with the admin key.
    pub fn yeet_cmd(&self) -> Command {
        let mut c = Command::new(bin("yeet"));
        c.env("YEET_SERVER", &self.url)
            .env("YEET_KEY", &self.admin_key)
            .env("HOME", self.dir.path())
            .env_remove("YEET_CONFIG");
        if let Some(ca) = &self.ca_cert {
            c.env("YEET_CA_CERT", ca);
        }
        c
    }

    /// The typed API client with the admin key: what the harness polls with (the `yeet` CLI
    /// is what tests that check the CLI run).
    pub fn client(&self) -> &yeet_client::Client {
        &self.client
    }

    /// Runs `yeet ARGS`, asserting success; returns stdout.
    pub fn yeet(&self, args: &[&str]) -> String {
        let out = run(self.yeet_cmd().args(args));
        assert!(
            out.status.success(),
            "yeet {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `yeet ARGS --json` and parses the output.
    pub fn yeet_json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.yeet(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("yeet {args:?} printed invalid JSON ({e}): {text}"))
    }

    /// Starts `yeet-agent run` with `key` against this server, on this machine itself: only
    /// for registration tests. An approved agent activates systems, so tests that approve
    /// use `sim::SimHost`, which runs the agent in its own namespaces.
    pub fn agent(&self, key: &Path, extra: &[&str]) -> Proc {
        let mut c = Command::new(bin("yeet-agent"));
        c.args([
            "run",
            "--server",
            &self.url,
            "--poll-interval",
            "1",
            "--key",
        ])
        .arg(key)
        .args(extra)
        .env_remove("YEET_AGENT_CONFIG");
        if let Some(ca) = &self.ca_cert {
            c.arg("--ca-cert").arg(ca);
        }
        Proc::spawn(c, "agent")
    }
}

impl Drop for Server {
    /// Stops the server and drops its PostgreSQL database, if it had one.
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if let Some((_, name)) = self
            .database
            .as_deref()
            .filter(|d| self.owns_database && d.starts_with("postgres"))
            .and_then(|d| d.rsplit_once('/'))
        {
            let _ = Command::new("psql")
                .arg(postgres_admin_url())
                .args([
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Writes an operator key with `yeet key generate` (and `PATH.pub`); returns `path`.
pub fn operator_key(path: &Path) -> PathBuf {
    let out = run(Command::new(bin("yeet"))
        .args(["key", "generate", "--out"])
        .arg(path));
    assert!(
        out.status.success(),
        "yeet key generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_owned()
}

/// Writes an ed25519 key with `ssh-keygen`, as a host's SSH host key would be.
pub fn ssh_host_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path));
    assert!(
        out.status.success(),
        "ssh-keygen failed (is openssh-client installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Makes a throwaway CA and a certificate for 127.0.0.1 signed by it, with `openssl`.
/// Returns (CA certificate, server certificate, server key).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<std::ffi::OsString>; 3] = [
        ["req", "-x509", "-days", "1", "-subj", "/CN=yeet test CA"]
            .iter()
            .chain(&ec)
            .map(Into::into)
            .chain([
                "-keyout".into(),
                p("ca.key").into(),
                "-out".into(),
                p("ca.pem").into(),
            ])
            .collect(),
        ["req", "-subj", "/CN=127.0.0.1"]
            .iter()
            .chain(&ec)
            .map(Into::into)
            .chain([
                "-keyout".into(),
                p("key.pem").into(),
                "-out".into(),
                p("cert.csr").into(),
            ])
            .collect(),
        ["x509", "-req", "-days", "1", "-CAcreateserial"]
            .iter()
            .map(Into::into)
            .chain([
                "-in".into(),
                p("cert.csr").into(),
                "-CA".into(),
                p("ca.pem").into(),
                "-CAkey".into(),
                p("ca.key").into(),
                "-out".into(),
                p("cert.pem").into(),
                "-extfile".into(),
                p("ext.cnf").into(),
            ])
            .collect(),
    ];
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in steps {
        let out = run(Command::new("openssl").args(&args));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// The test PostgreSQL's admin database URL: `YEET_TEST_POSTGRES`, default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_admin_url() -> String {
    std::env::var("YEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Creates a fresh database on the test PostgreSQL ([`postgres_admin_url`]) with `psql`,
/// and returns its URL.
pub fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    let name = format!(
        "yeet_e2e_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    let out = run(Command::new("psql")
        .arg(&admin)
        .args(["-qc", &format!("CREATE DATABASE {name}")]));
    assert!(
        out.status.success(),
        "PostgreSQL at {admin} is required (./test.sh starts one): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    format!("{base}/{name}")
}

/// Extracts an `ABCD-EFGH` verification code from an agent output line.
pub fn code_in(line: &str) -> Option<String> {
    line.strip_prefix("verification code: ").map(str::to_owned)
}

/// Builds, with real Nix, a closure of `paths` paths of `bytes` random bytes each (which no
/// compressor shrinks) under one top path, unique to `salt`; returns the top.
pub fn random_closure(paths: usize, bytes: u64, salt: &str, dir: &Path) -> String {
    let expr = dir.join(format!("random-{paths}x{bytes}.nix"));
    std::fs::write(
        &expr,
        format!(
            r#"let
  part = i: derivation {{
    name = "random-part-${{toString i}}"; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/bin:/usr/bin"; salt = "{salt}";
    args = [ "-c" "mkdir $out && head -c {bytes} /dev/urandom > $out/data" ];
  }};
in derivation {{
  name = "random-top"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin";
  parts = builtins.genList part {paths};
  args = [ "-c" "echo $parts > $out" ];
}}
"#,
        ),
    )
    .unwrap();
    let out = run(Command::new("nix-build")
        .arg(&expr)
        .args(["--no-out-link", "--max-jobs", "4"]));
    assert!(
        out.status.success(),
        "building {}: {}",
        expr.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
