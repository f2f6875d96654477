//! Simulated NixOS hosts with real Nix. Each host is a mount and PID namespace in which a
//! per-host directory is bind-mounted over `/nix`, `/run`, `/etc/yeet` and `/var/lib/yeet`,
//! so that the agent runs with its real default paths, its own Nix store and its own system
//! profile. A supervisor loop restarts the agent whenever it exits, as systemd would.
//! Systems are real derivations (`nix/system.nix`) pushed to a real signed `file://` cache.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, Server, ServerOptions, bin, run};

/// A signed binary cache in a directory, with a key made by `nix-store --generate-binary-cache-key`.
pub struct Cache {
    pub dir: PathBuf,
    pub secret_key: PathBuf,
    pub public_key: String,
}

impl Cache {
    pub fn new(dir: &Path, key_name: &str) -> Cache {
        std::fs::create_dir_all(dir).unwrap();
        let (sk, pk) = (
            dir.join(format!("{key_name}.sk")),
            dir.join(format!("{key_name}.pk")),
        );
        let out = run(Command::new("nix-store")
            .arg("--generate-binary-cache-key")
            .arg(key_name)
            .arg(&sk)
            .arg(&pk));
        assert!(
            out.status.success(),
            "nix-store --generate-binary-cache-key failed (is nix-bin installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public_key = std::fs::read_to_string(&pk).unwrap().trim().to_owned();
        Cache {
            dir: dir.join("cache"),
            secret_key: sk,
            public_key,
        }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// The same cache directory, written with another key (for untrusted signatures).
    pub fn signing_with(&self, keys_dir: &Path, key_name: &str) -> Cache {
        Cache {
            dir: self.dir.clone(),
            ..Cache::new(keys_dir, key_name)
        }
    }

    /// `nix copy` without a key: the narinfos carry no signature at all.
    pub fn push_unsigned(&self, path: &str) {
        let out = run(Command::new("nix").args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            &self.url(),
            path,
        ]));
        assert!(
            out.status.success(),
            "nix copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `nix copy --to file://...?secret-key=...`: the closure, signed.
    pub fn push(&self, path: &str) {
        let to = format!("{}?secret-key={}", self.url(), self.secret_key.display());
        let out = run(Command::new("nix").args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            &to,
            path,
        ]));
        assert!(
            out.status.success(),
            "nix copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What a test system does when switched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Good,
    /// `switch-to-configuration` exits non-zero.
    Fail,
    /// Its agent config points at a dead server address.
    DeadServer,
    /// Its agent config has a health check that fails.
    Unhealthy,
}

impl Variant {
    fn as_str(self) -> &'static str {
        match self {
            Variant::Good => "good",
            Variant::Fail => "fail",
            Variant::DeadServer => "dead-server",
            Variant::Unhealthy => "unhealthy",
        }
    }
}

/// A test system: what it is called, how it behaves, and the agent config it carries.
pub struct SystemSpec<'a> {
    pub name: &'a str,
    pub variant: Variant,
    pub kernel: &'a str,
    /// The server URL its agent config names.
    pub server: &'a str,
    /// The binary-cache key its agent pins.
    pub trusted_key: &'a str,
    pub confirm_timeout: u64,
    /// Makes the store path unique to one test run.
    pub salt: &'a str,
    /// Lines appended to its agent.toml.
    pub extra_agent_config: &'a str,
}

/// Builds a test system with real Nix in the outer store; returns its store path.
pub fn build_system(spec: &SystemSpec) -> String {
    let expr = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/system.nix");
    let mut cmd = Command::new("nix-build");
    cmd.arg(&expr).arg("--no-out-link");
    for (name, value) in [
        ("name", spec.name),
        ("server", spec.server),
        ("trustedKey", spec.trusted_key),
        ("variant", spec.variant.as_str()),
        ("kernel", spec.kernel),
        ("salt", spec.salt),
        ("extraConfig", spec.extra_agent_config),
    ] {
        cmd.args(["--argstr", name, value]);
    }
    cmd.args(["--arg", "confirmTimeout", &spec.confirm_timeout.to_string()]);
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "nix-build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One simulated host.
pub struct SimHost {
    pub name: String,
    pub root: PathBuf,
    proc: Option<Proc>,
}

/// Processes in mount namespace `ns` whose command line contains `needle`.
fn pids_in_namespace(ns: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l.to_str() == Some(ns))
        })
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        })
        .collect()
}

/// The script run inside the host's namespaces: mounts, a simulated boot, the supervisor.
const HOST_SCRIPT: &str = r#"
set -e
R="$1"; AGENT="$2"; NAME="$3"; CACHE="$4"; KEY="$5"; BASE="$6"
mount --bind "$R/nix" /nix
mount --bind "$R/run" /run
mount --bind "$R/etc-yeet" /etc/yeet
mount --bind "$R/var-lib-yeet" /var/lib/yeet
# Nix keeps a narinfo cache under $HOME/.cache; each real host has its own.
export XDG_CACHE_HOME="$R/home-cache"
# Boot: /run is empty after a (simulated) reboot; activate the profile's default generation,
# or install the base system on first boot.
if [ ! -e /run/current-system ]; then
  if [ -e /nix/var/nix/profiles/system ]; then
    sys=$(readlink -f /nix/var/nix/profiles/system)
  else
    nix-store --realise "$BASE" --option substituters "$CACHE" --option trusted-public-keys "$KEY" >/dev/null
    nix-env -p /nix/var/nix/profiles/system --set "$BASE"
    sys="$BASE"
  fi
  ln -sfn "$sys" /run/current-system
  ln -sfn "$sys" /run/booted-system
  cp "$sys/etc/yeet/agent.toml" /etc/yeet/agent.toml
fi
while [ ! -e "$R/stop" ]; do
  "$AGENT" run --hostname "$NAME" >>"$R/agent.log" 2>&1 || true
  sleep 0.2
done
"#;

impl SimHost {
    /// Creates the host's directories and SSH host key; `start` boots it.
    pub fn new(parent: &Path, name: &str) -> SimHost {
        let root = parent.join(name);
        for d in ["nix/store", "nix/var", "run", "etc-yeet", "var-lib-yeet"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(root.join("etc-yeet/host_key")));
        assert!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Mount points on the real machine (empty directories).
        for d in ["/etc/yeet", "/var/lib/yeet"] {
            std::fs::create_dir_all(d).unwrap();
        }
        SimHost {
            name: name.to_owned(),
            root,
            proc: None,
        }
    }

    /// Boots the host (or boots it again after `power_off`).
    pub fn start(&mut self, cache: &Cache, base: &str) {
        let _ = std::fs::remove_file(self.root.join("stop"));
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            HOST_SCRIPT,
            "host",
        ])
        .arg(&self.root)
        .arg(bin("yeet-agent"))
        .arg(&self.name)
        .arg(cache.url())
        .arg(&cache.public_key)
        .arg(base);
        self.proc = Some(Proc::spawn(c, "host"));
    }

    /// Pulls the plug: every process of the host dies at once, and /run is lost, as in a
    /// power cut; `start` then boots the profile's default generation.
    pub fn power_off(&mut self) {
        let ns = self.mount_namespace();
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // The kernel tears the PID namespace down asynchronously; wait for its processes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns
            .as_deref()
            .is_some_and(|ns| !pids_in_namespace(ns, "").is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let run_dir = self.root.join("run");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).unwrap();
    }

    /// The host's mount namespace (`mnt:[...]`), read from the child of `unshare`.
    fn mount_namespace(&self) -> Option<String> {
        let parent = self.proc.as_ref()?.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
        let child: u32 = children.split_whitespace().next()?.parse().ok()?;
        std::fs::read_link(format!("/proc/{child}/ns/mnt"))
            .ok()?
            .to_str()
            .map(str::to_owned)
    }

    /// Global pids of this host's processes whose command line contains `needle`.
    pub fn pids_matching(&self, needle: &str) -> Vec<u32> {
        self.mount_namespace()
            .map(|ns| pids_in_namespace(&ns, needle))
            .unwrap_or_default()
    }

    /// Kills this host's processes whose command line contains `needle` (SIGKILL).
    pub fn kill(&self, needle: &str) -> usize {
        let pids = self.pids_matching(needle);
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        pids.len()
    }

    /// The agent's status file (what `yeet-agent status` shows).
    pub fn status<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&std::fs::read_to_string(self.root.join("run/yeet/status.json")).ok()?)
            .ok()
    }

    /// Where `/run/current-system` points, as the host sees it.
    pub fn current_system(&self) -> Option<String> {
        std::fs::read_link(self.root.join("run/current-system"))
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("stop"), "");
        self.power_off();
    }
}

/// A server, a signed cache, a base system and `n` enrolled, approved hosts running it.
pub struct Fleet {
    pub server: Server,
    pub cache: Cache,
    pub base: String,
    pub hosts: Vec<SimHost>,
    pub confirm_timeout: u64,
    dir: tempfile::TempDir,
}

pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Fleet {
    pub fn new(names: &[&str], confirm_timeout: u64) -> Fleet {
        Self::with_database(names, confirm_timeout, None)
    }

    /// A fleet whose server uses `database` (SQLite in its state directory when `None`).
    pub fn with_database(names: &[&str], confirm_timeout: u64, database: Option<String>) -> Fleet {
        Self::with_server_check(names, confirm_timeout, database, true)
    }

    /// With `server_checks_signatures`, the server refuses releases whose closures are not
    /// signed by the fleet key; without it, only the hosts' own checks stand (as with a
    /// compromised or misconfigured server).
    pub fn with_server_check(
        names: &[&str],
        confirm_timeout: u64,
        database: Option<String>,
        server_checks_signatures: bool,
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(&dir.path().join("cache-keys"), "fleet-1");
        let mut config = format!("caches = [\"{}\"]\n", cache.url());
        if server_checks_signatures {
            config.push_str(&format!(
                "trusted_cache_keys = [\"{}\"]\n",
                cache.public_key
            ));
        }
        let server = Server::start(ServerOptions {
            config,
            database,
            ..Default::default()
        });
        let mut fleet = Fleet {
            base: String::new(),
            server,
            cache,
            hosts: Vec::new(),
            confirm_timeout,
            dir,
        };
        fleet.base = fleet.system("base", Variant::Good, "6.1");
        fleet.add_hosts(names);
        fleet
    }

    /// Builds a system for this fleet and pushes it, signed, to the cache.
    pub fn system(&self, name: &str, variant: Variant, kernel: &str) -> String {
        self.system_signed_by(name, variant, kernel, &self.cache)
    }

    /// Builds a system and pushes it to `cache` (which may be signed by an untrusted key).
    pub fn system_signed_by(
        &self,
        name: &str,
        variant: Variant,
        kernel: &str,
        cache: &Cache,
    ) -> String {
        let path = self.build(name, variant, kernel);
        cache.push(&path);
        path
    }

    /// Builds a system for this fleet without pushing it anywhere.
    pub fn build(&self, name: &str, variant: Variant, kernel: &str) -> String {
        let salt = self.dir.path().display().to_string();
        build_system(&SystemSpec {
            name,
            variant,
            kernel,
            server: &self.server.url,
            trusted_key: &self.cache.public_key,
            confirm_timeout: self.confirm_timeout,
            salt: &salt,
            extra_agent_config: "",
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Boots new hosts, waits for their codes in `yeet-agent status`, and approves them.
    pub fn add_hosts(&mut self, names: &[&str]) {
        let booted = names.iter().map(|name| self.boot_new_host(name)).collect();
        self.approve_all(booted);
    }

    /// Boots a host without approving it.
    pub fn boot_new_host(&self, name: &str) -> SimHost {
        let mut host = SimHost::new(self.dir.path(), name);
        host.start(&self.cache, &self.base);
        host
    }

    fn approve_all(&mut self, booted: Vec<SimHost>) {
        for host in booted {
            let mut code = String::new();
            wait_until(
                Duration::from_secs(120),
                &format!("{} to show a verification code", host.name),
                || {
                    code = host
                        .status::<serde_json::Value>()
                        .and_then(|s| s["verification_code"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    !code.is_empty()
                },
            );
            self.server.yeet(&["approve", &host.name, &code]);
            self.hosts.push(host);
        }
    }

    /// Boots a host again after `power_off`.
    pub fn boot(&mut self, name: &str) {
        let i = self.hosts.iter().position(|h| h.name == name).unwrap();
        self.hosts[i].start(&self.cache, &self.base);
    }

    pub fn host(&mut self, name: &str) -> &mut SimHost {
        self.hosts.iter_mut().find(|h| h.name == name).unwrap()
    }

    /// `yeet status --json`, as a map from host name to its JSON.
    pub fn status(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let hosts: Vec<serde_json::Value> = self.server.yeet_json(&["status"]);
        hosts
            .into_iter()
            .map(|h| (h["name"].as_str().unwrap_or_default().to_owned(), h))
            .collect()
    }

    /// Publishes `HOST=PATH` pairs as one release, uploading the closures to the server's
    /// embedded cache signed with the fleet key.
    pub fn publish(&self, pairs: &[(&str, &str)], message: &str) {
        let key = self.cache.secret_key.display().to_string();
        self.publish_with(pairs, message, &["--signing-key", &key]);
    }

    /// Publishes with extra `yeet publish` arguments (e.g. another push method).
    pub fn publish_with(&self, pairs: &[(&str, &str)], message: &str, extra: &[&str]) {
        let mut args: Vec<String> = vec!["publish".into(), "-m".into(), message.into()];
        for (h, p) in pairs {
            args.push("--path".into());
            args.push(format!("{h}={p}"));
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.server.yeet(&args);
    }

    /// The host's activation history (newest first).
    pub fn history(&self, host: &str) -> Vec<serde_json::Value> {
        self.server.yeet_json(&["history", host])
    }

    /// Waits until the host has reported `n` activations; returns the newest.
    pub fn wait_for_activation(
        &self,
        host: &str,
        n: usize,
        timeout: Duration,
    ) -> serde_json::Value {
        let mut newest = serde_json::Value::Null;
        wait_until(
            timeout,
            &format!("{host} to report activation #{n}"),
            || {
                let h = self.history(host);
                if h.len() >= n {
                    newest = h[0].clone();
                    true
                } else {
                    false
                }
            },
        );
        newest
    }
}
