//! Simulated NixOS hosts with real Nix, of two kinds (`HostKind`). A namespace host is a
//! mount and PID namespace in which per-host directories are bind-mounted over `/nix`,
//! `/run`, `/etc/yeet` and `/var/lib/yeet`, and a supervisor loop restarts the agent as
//! systemd would. A systemd host is a container (systemd-nspawn) on an overlay of the
//! machine's root that boots a real systemd, runs the agent as `yeet-agent.service` and
//! activates through `systemd-run`. Either way the agent runs with its real default paths,
//! its own Nix store and its own system profile. Systems are real derivations
//! (`nix/system.nix`) pushed to a real signed `file://` cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, Server, ServerOptions, bin, bin_dir, run};

/// A signed binary cache in a directory, with a key made by `nix-store --generate-binary-cache-key`.
pub struct Cache {
    pub dir: PathBuf,
    pub secret_key: PathBuf,
    pub public_key: String,
}

impl Cache {
    pub fn new(dir: &Path, key_name: &str) -> Cache {
        std::fs::create_dir_all(dir).unwrap();
        crate::nix_database_ready();
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
    /// Its agent config names a key file that does not exist: the agent exits at start-up.
    MissingKey,
    /// `switch-to-configuration` takes 8 seconds (an activation that is still running).
    Slow,
    /// Switches and confirms, but starts a service that fails (systemd hosts): the
    /// host's count of failed units goes up.
    FailedUnit,
}

impl Variant {
    fn as_str(self) -> &'static str {
        match self {
            Variant::Good => "good",
            Variant::Fail => "fail",
            Variant::DeadServer => "dead-server",
            Variant::Unhealthy => "unhealthy",
            Variant::MissingKey => "missing-key",
            Variant::Slow => "slow",
            Variant::FailedUnit => "failed-unit",
        }
    }
}

/// What a test system is shaped like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Platform {
    /// A NixOS system: `bin/switch-to-configuration`.
    #[default]
    NixOS,
    /// A nix-darwin system: `activate` and `activate-user`, no switch script.
    Darwin,
}

impl Platform {
    fn as_str(self) -> &'static str {
        match self {
            Platform::NixOS => "nixos",
            Platform::Darwin => "darwin",
        }
    }

    /// What the activation log says ran to switch to a system.
    pub fn switch_step(self) -> &'static str {
        match self {
            Platform::NixOS => "switch-to-configuration switch",
            Platform::Darwin => "activate",
        }
    }
}

/// A test system: what it is called, how it behaves, and the agent config it carries.
pub struct SystemSpec<'a> {
    pub name: &'a str,
    pub platform: Platform,
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
    /// The yeet package its agent unit runs (a path on the host).
    pub agent_package: &'a str,
    /// Its `yeet.secrets`, as a Nix attribute set (`{ db-password = { owner = "x"; }; }`).
    pub secrets: &'a str,
}

/// Builds a test system with real Nix in the outer store; returns its store path.
pub fn build_system(spec: &SystemSpec) -> String {
    let expr = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/system.nix");
    let mut cmd = Command::new("nix-build");
    cmd.arg(&expr).arg("--no-out-link");
    for (name, value) in [
        ("name", spec.name),
        ("platform", spec.platform.as_str()),
        ("server", spec.server),
        ("trustedKey", spec.trusted_key),
        ("variant", spec.variant.as_str()),
        ("kernel", spec.kernel),
        ("salt", spec.salt),
        ("extraConfig", spec.extra_agent_config),
        ("agentPackage", spec.agent_package),
    ] {
        cmd.args(["--argstr", name, value]);
    }
    cmd.args(["--arg", "confirmTimeout", &spec.confirm_timeout.to_string()]);
    cmd.args([
        "--arg",
        "secrets",
        if spec.secrets.is_empty() {
            "{ }"
        } else {
            spec.secrets
        },
    ]);
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "nix-build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// How a simulated host runs its agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Mount and PID namespaces with a supervisor loop that restarts the agent; activations
    /// go through `setsid`. Fast, and enough where a scenario needs no systemd.
    Namespace,
    /// A container (systemd-nspawn) that boots a real systemd as PID 1. The agent runs as
    /// `yeet-agent.service` from the unit the system carries (rendered from the NixOS
    /// module's service definition), under a service manager whose PATH holds only
    /// systemd's tools, as on NixOS; activations go through `systemd-run`.
    Systemd,
}

/// One simulated host.
pub struct SimHost {
    pub name: String,
    pub root: PathBuf,
    pub kind: HostKind,
    proc: Option<Proc>,
    /// The container's PID 1 (global pid), while a systemd host runs.
    leader: Option<u32>,
    /// A namespace host's agent: arguments after `run --hostname NAME`, and the directory
    /// it runs in (as a person would start it from a shell there).
    pub agent_args: Vec<String>,
    pub agent_dir: Option<PathBuf>,
}

/// Processes in PID namespace `ns` whose command line contains `needle`.
fn pids_in_namespace(ns: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l.to_str() == Some(ns))
        })
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        })
        .collect()
}

/// The simulated boot loader and installer, run with the host's store mounted at /nix:
/// installs the base system on first boot, and installs the default generation's agent
/// config (and, for systemd hosts, its unit) the way NixOS's activation rebuilds /etc.
/// Prints the system it boots.
const STAGE_1: &str = r#"
set -e
R="$1"; CACHE="$2"; KEY="$3"; BASE="$4"; UNIT_DIR="$5"
mount --bind "$R/nix" /nix
# Nix keeps a narinfo cache under $HOME/.cache; each real host has its own.
export XDG_CACHE_HOME="$R/home-cache"
if [ ! -e /nix/var/nix/profiles/system ]; then
  nix-store --realise "$BASE" --option substituters "$CACHE" --option trusted-public-keys "$KEY" >/dev/null
  nix-env -p /nix/var/nix/profiles/system --set "$BASE" >/dev/null 2>&1
fi
sys=$(readlink -f /nix/var/nix/profiles/system)
cp "$sys/etc/yeet/agent.toml" "$R/etc-yeet/agent.toml"
if [ -n "$UNIT_DIR" ]; then
  cp "$sys/etc/systemd/yeet-agent.service" "$UNIT_DIR/yeet-agent.service"
fi
echo "$sys"
"#;

/// A namespace host, run inside its namespaces: the mounts, and the supervisor that
/// restarts the agent as systemd would.
const NAMESPACE_HOST: &str = r#"
set -e
R="$1"; AGENT="$2"; NAME="$3"; shift 3
mount --bind "$R/nix" /nix
mount --bind "$R/run" /run
mount --bind "$R/etc-yeet" /etc/yeet
mount --bind "$R/var-lib-yeet" /var/lib/yeet
export XDG_CACHE_HOME="$R/home-cache"
while [ ! -e "$R/stop" ]; do
  "$AGENT" run --hostname "$NAME" "$@" >>"$R/agent.log" 2>&1 || true
  sleep 0.2
done
"#;

/// Where a systemd host finds the agent's package (the unit's ExecStart is its
/// bin/yeet-agent): the workspace's binaries, bound read-only.
pub const SYSTEMD_HOST_AGENT_PACKAGE: &str = "/opt/yeet-agent";
/// The same binaries under another path, standing in for a new yeet package in a new
/// system (on NixOS, a new store path in the unit's ExecStart).
pub const SYSTEMD_HOST_NEXT_AGENT_PACKAGE: &str = "/opt/yeet-agent-next";

/// The service manager's PATH on a systemd host: only systemd's own tools, as on NixOS,
/// so that a unit (an activation started with `systemd-run`) that relies on inheriting a
/// PATH with Nix fails here as it would there.
const MANAGER_PATH: &str = "/opt/yeet-sim/systemd/bin";

/// Simulated NixOS stage 2 on a systemd host: the booted system is what the profile says.
/// A drop-in that runs before the agent rather than a unit of its own: nspawn's nested
/// cgroups now and then refuse a unit's first start (status 219/CGROUP), and a separate
/// oneshot that fails that way left the agent running with no current system. Here the
/// failure fails the agent's start, which its Restart=always retries. It links once per
/// boot (/run is fresh each boot), so a restart after a `boot` switch does not change the
/// running system.
const STAGE_2_DROP_IN: &str = "[Service]
ExecStartPre=/bin/sh -c '[ -e /run/booted-system ] || { sys=$(/bin/readlink -f /nix/var/nix/profiles/system) && /bin/ln -sfn $sys /run/current-system && /bin/ln -sfn $sys /run/booted-system; }'
";

/// The default target of a systemd host: basic.target and the agent, none of the
/// machine's own services (databases, brokers) that the overlay would otherwise start.
const HOST_TARGET: &str = "[Unit]
Description=yeet test host
Requires=basic.target
After=basic.target
AllowIsolate=yes
";

impl SimHost {
    /// Creates the host's directories and SSH host key (and, for a systemd host, its root
    /// file system); `start` boots it.
    pub fn new(parent: &Path, name: &str, kind: HostKind) -> SimHost {
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
        let host = SimHost {
            name: name.to_owned(),
            root,
            kind,
            proc: None,
            leader: None,
            agent_args: Vec::new(),
            agent_dir: None,
        };
        if kind == HostKind::Systemd {
            host.make_root_fs();
        }
        host
    }

    /// The container's root: an overlay whose lower layer is the machine's root and whose
    /// upper layer is a tmpfs of its own (it stays across reboots, as a disk would), with
    /// what makes it a NixOS-like host: the manager's PATH, the stage-2 drop-in, the default
    /// target, a machine id, a persistent journal, and the machine's sockets and timers
    /// masked.
    fn make_root_fs(&self) {
        let upper = self.root.join("upper");
        let fs = self.root.join("fs");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&fs).unwrap();
        let mount = |args: &[&str], at: &Path| {
            let out = run(Command::new("mount").args(args).arg(at));
            assert!(
                out.status.success(),
                "mount {args:?} {}: {}",
                at.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs"], &upper);
        std::fs::create_dir_all(upper.join("u")).unwrap();
        std::fs::create_dir_all(upper.join("w")).unwrap();
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            upper.join("u").display(),
            upper.join("w").display()
        );
        mount(&["-t", "overlay", "overlay", "-o", &options], &fs);
        let write = |rel: &str, text: &str| {
            let p = fs.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let link = |target: &str, rel: &str| {
            let p = fs.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(target, p).unwrap();
        };
        for tool in ["systemctl", "systemd-run", "journalctl"] {
            link(
                &format!("/usr/bin/{tool}"),
                &format!("{}/{tool}", &MANAGER_PATH[1..]),
            );
        }
        write(
            "etc/systemd/system.conf.d/yeet-sim.conf",
            &format!("[Manager]\nDefaultEnvironment=PATH={MANAGER_PATH}\n"),
        );
        write(
            "etc/systemd/system/yeet-agent.service.d/yeet-sim-stage2.conf",
            STAGE_2_DROP_IN,
        );
        write("etc/systemd/system/yeet-sim.target", HOST_TARGET);
        link(
            "../yeet-agent.service",
            "etc/systemd/system/yeet-sim.target.wants/yeet-agent.service",
        );
        // Its own machine id, so that its journal is its own.
        let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
        write(
            "etc/machine-id",
            &format!("{}\n", id.trim().replace('-', "")),
        );
        std::fs::create_dir_all(fs.join("var/log/journal")).unwrap();
        for wants in ["sockets.target.wants", "timers.target.wants"] {
            let Ok(entries) = std::fs::read_dir(Path::new("/etc/systemd/system").join(wants))
            else {
                continue;
            };
            for e in entries.flatten() {
                let unit = e.file_name().to_string_lossy().into_owned();
                link("/dev/null", &format!("etc/systemd/system/{unit}"));
            }
        }
    }

    /// Boots the host (or boots it again after `power_off`).
    pub fn start(&mut self, cache: &Cache, base: &str) {
        let _ = std::fs::remove_file(self.root.join("stop"));
        let unit_dir = match self.kind {
            HostKind::Namespace => String::new(),
            HostKind::Systemd => self
                .root
                .join("fs/etc/systemd/system")
                .display()
                .to_string(),
        };
        let out = run(Command::new("unshare")
            .args(["--mount", "sh", "-c", STAGE_1, "stage-1"])
            .arg(&self.root)
            .arg(cache.url())
            .arg(&cache.public_key)
            .arg(base)
            .arg(unit_dir));
        assert!(
            out.status.success(),
            "{}: installing the boot system failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let system = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match self.kind {
            HostKind::Namespace => {
                // Stage 2: the booted system's links in the fresh /run.
                for link in ["current-system", "booted-system"] {
                    let at = self.root.join("run").join(link);
                    let _ = std::fs::remove_file(&at);
                    std::os::unix::fs::symlink(&system, at).unwrap();
                }
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child",
                    "sh",
                    "-c",
                    NAMESPACE_HOST,
                    "host",
                ])
                .arg(&self.root)
                .arg(bin("yeet-agent"))
                .arg(&self.name)
                .args(&self.agent_args);
                if let Some(dir) = &self.agent_dir {
                    c.current_dir(dir);
                }
                self.proc = Some(Proc::spawn(c, "host"));
            }
            HostKind::Systemd => self.boot_container(),
        }
    }

    fn boot_container(&mut self) {
        let bind = |from: &Path, to: &str| format!("--bind={}:{to}", from.display());
        let mut c = Command::new("systemd-nspawn");
        c.arg("--directory").arg(self.root.join("fs")).args([
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--console=passive",
            &format!("--hostname={}", self.name),
            // The booting systemd empties /tmp: it must only ever see its own.
            "--tmpfs=/tmp",
            "--tmpfs=/var/tmp",
            &bind(&self.root.join("nix"), "/nix"),
            &bind(&self.root.join("etc-yeet"), "/etc/yeet"),
            &bind(&self.root.join("var-lib-yeet"), "/var/lib/yeet"),
            &format!(
                "--bind-ro={}:{SYSTEMD_HOST_AGENT_PACKAGE}/bin",
                bin_dir().display()
            ),
            &format!(
                "--bind-ro={}:{SYSTEMD_HOST_NEXT_AGENT_PACKAGE}/bin",
                bin_dir().display()
            ),
            "--boot",
            "systemd.unit=yeet-sim.target",
        ]);
        let proc = Proc::spawn(c, "nspawn");
        let nspawn = proc.child.id();
        self.proc = Some(proc);
        let mut leader = None;
        wait_until(
            Duration::from_secs(30),
            &format!("{}'s systemd to start", self.name),
            || {
                leader = child_pids(nspawn).into_iter().find(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                        s.lines()
                            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1"))
                    })
                });
                leader.is_some()
            },
        );
        self.leader = leader;
        // Until the boot is done: running, or degraded (some unit failed). Before systemd
        // has replaced nspawn's own init process, systemctl cannot reach it: try again.
        wait_until(
            Duration::from_secs(60),
            &format!("{} to finish booting", self.name),
            || {
                let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
                let state = String::from_utf8_lossy(&out.stdout);
                matches!(state.trim(), "running" | "degraded")
            },
        );
    }

    /// Pulls the plug: every process of the host dies at once, and /run is lost, as in a
    /// power cut; `start` then boots the profile's default generation.
    pub fn power_off(&mut self) {
        let ns = self.pid_namespace();
        if let Some(leader) = self.leader.take() {
            // Killing a PID namespace's init kills the whole namespace. After a clean
            // shutdown it is gone already.
            let _ = Command::new("kill")
                .args(["-KILL", &leader.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Some(mut p) = self.proc.take() {
            if self.kind == HostKind::Systemd {
                // systemd-nspawn exits once its container is gone.
                let deadline = Instant::now() + Duration::from_secs(10);
                while p.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
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

    /// A clean reboot of a systemd host: `systemctl reboot` inside, then a new boot (the
    /// container does not restart by itself). A namespace host has no clean shutdown: it
    /// is powered off and on.
    pub fn reboot(&mut self, cache: &Cache, base: &str) {
        if let (HostKind::Systemd, Some(_)) = (self.kind, self.leader) {
            let _ = self.exec(&["systemctl", "poweroff"]);
            if let Some(p) = self.proc.as_mut() {
                let deadline = Instant::now() + Duration::from_secs(30);
                while p.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.power_off();
        self.start(cache, base);
    }

    /// Whether the host still runs: false once a systemd host's container went down (a
    /// reboot inside it ends systemd-nspawn, as the machine's reset would end its boot).
    pub fn is_up(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_none())
    }

    /// Runs a command on a running systemd host (in all its namespaces, as `machinectl
    /// shell` would); returns its output.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let leader = self
            .leader
            .unwrap_or_else(|| panic!("{} is not a running systemd host", self.name));
        run(Command::new("nsenter")
            .args(["-t", &leader.to_string(), "-a", "--"])
            .args(args))
    }

    /// The host's PID namespace (`pid:[...]`): the container's, or that of the child of
    /// `unshare` for a namespace host.
    fn pid_namespace(&self) -> Option<String> {
        let inside = match (self.kind, self.leader) {
            (HostKind::Systemd, Some(leader)) => leader,
            (HostKind::Systemd, None) => return None,
            (HostKind::Namespace, _) => *child_pids(self.proc.as_ref()?.child.id()).first()?,
        };
        std::fs::read_link(format!("/proc/{inside}/ns/pid"))
            .ok()?
            .to_str()
            .map(str::to_owned)
    }

    /// Global pids of this host's processes whose command line contains `needle`.
    pub fn pids_matching(&self, needle: &str) -> Vec<u32> {
        self.pid_namespace()
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

    /// A file under the host's `/run` (`yeet/secrets/NAME`, say), as root there reads it;
    /// `None` when it is absent.
    pub fn run_file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.run_path(rel)?).ok()
    }

    /// A path under the host's `/run`, as seen from outside (None while a systemd host is off).
    fn run_path(&self, rel: &str) -> Option<PathBuf> {
        match self.kind {
            HostKind::Namespace => Some(self.root.join("run").join(rel)),
            HostKind::Systemd => self
                .leader
                .map(|l| PathBuf::from(format!("/proc/{l}/root/run")).join(rel)),
        }
    }

    /// Copies `path`'s closure from `cache` into the host's own store, as `nix copy` to the
    /// machine (or a build on it) would: it is then there for a local switch. Without
    /// `require_sigs`, unsigned paths are taken too (a local build carries no signature).
    pub fn realise(&self, cache: &Cache, path: &str, require_sigs: bool) {
        let out = run(Command::new("unshare")
            .args(["--mount", "sh", "-c"])
            .arg(
                "mount --bind \"$1/nix\" /nix && XDG_CACHE_HOME=\"$1/home-cache\" \
                 nix-store --realise \"$2\" --option substituters \"$3\" --option trusted-public-keys \"$4\" --option require-sigs \"$5\"",
            )
            .arg("realise")
            .arg(&self.root)
            .arg(path)
            .arg(cache.url())
            .arg(&cache.public_key)
            .arg(require_sigs.to_string()));
        assert!(
            out.status.success(),
            "{}: realising {path} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The container's PID 1 (global pid), while a systemd host runs.
    pub fn leader(&self) -> Option<u32> {
        self.leader
    }

    /// The verification code the agent shows while it waits for approval (`yeet-agent
    /// status`), waiting up to `timeout` for one.
    pub fn shown_code(&self, timeout: Duration) -> String {
        let mut code = String::new();
        wait_until(
            timeout,
            &format!("{} to show a verification code", self.name),
            || {
                code = self
                    .status()
                    .and_then(|s| s.verification_code)
                    .unwrap_or_default();
                !code.is_empty()
            },
        );
        code
    }

    /// The agent's local socket, as seen from outside.
    pub fn agent_socket(&self) -> Option<PathBuf> {
        self.run_path("yeet/agent.varlink")
    }

    /// What `yeet-agent status` shows, asked of the agent's local socket as root; `None`
    /// while the agent does not answer.
    pub fn status(&self) -> Option<yeet_agent::varlink::Status> {
        use yeet_agent::local_client::{AgentProxy, answer, with_agent};
        let socket = self.agent_socket()?;
        with_agent(&socket, async |c| answer(c.get_status().await))
            .ok()
            .map(|r| r.status)
    }

    /// Where `/run/current-system` points, as the host sees it.
    pub fn current_system(&self) -> Option<String> {
        self.system_link("current-system")
    }

    /// Where `/run/booted-system` points, as the host sees it.
    pub fn booted_system(&self) -> Option<String> {
        self.system_link("booted-system")
    }

    fn system_link(&self, name: &str) -> Option<String> {
        std::fs::read_link(self.run_path(name)?)
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
    }

    /// Everything the agent logged, across restarts and reboots: its log file on a
    /// namespace host, the journal of yeet-agent.service on a systemd host.
    pub fn agent_log(&self) -> String {
        match self.kind {
            HostKind::Namespace => {
                std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
            }
            HostKind::Systemd => self.journal("yeet-agent.service"),
        }
    }

    /// The `at_ms` field of the agent's first log line that says `message` and mentions
    /// `containing` (benchmarks and delays are measured from these).
    pub fn logged_at_ms(&self, message: &str, containing: &str) -> Option<i64> {
        let log = self.agent_log();
        let line = log
            .lines()
            .find(|l| l.contains(message) && l.contains(containing))?;
        line.split("at_ms=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    }

    /// What units matching `unit` (a `journalctl --unit` pattern) logged on a systemd host,
    /// across reboots (its journal is persistent, and read from outside).
    pub fn journal(&self, unit: &str) -> String {
        let out = run(Command::new("journalctl")
            .arg("--directory")
            .arg(self.root.join("fs/var/log/journal"))
            .args(["--output=cat", "--no-pager", "--unit", unit]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The children of process `pid`.
fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for SimHost {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("stop"), "");
        self.power_off();
        if self.kind == HostKind::Systemd {
            for at in ["fs", "upper"] {
                let _ = Command::new("umount")
                    .arg("--lazy")
                    .arg(self.root.join(at))
                    .status();
            }
        }
    }
}

/// Powers hosts off from 16 threads: each waits for its namespace to empty, and one by one
/// fifty hosts take over a minute.
fn power_off_all(hosts: Vec<SimHost>) {
    let mut shares: Vec<Vec<SimHost>> = (0..16).map(|_| Vec::new()).collect();
    for (i, host) in hosts.into_iter().enumerate() {
        shares[i % 16].push(host);
    }
    std::thread::scope(|scope| {
        for share in shares.into_iter().filter(|s| !s.is_empty()) {
            scope.spawn(move || drop(share));
        }
    });
}

impl Drop for Fleet {
    fn drop(&mut self) {
        power_off_all(std::mem::take(&mut self.hosts));
    }
}

/// A server, a signed cache, a base system and `n` enrolled, approved hosts running it.
pub struct Fleet {
    pub server: Server,
    pub cache: Cache,
    pub base: String,
    pub hosts: Vec<SimHost>,
    pub options: FleetOptions,
    dir: tempfile::TempDir,
    /// Makes this fleet's store paths its own.
    salt: String,
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

/// How a test fleet is set up.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub kind: HostKind,
    /// What the fleet's systems are shaped like.
    pub platform: Platform,
    /// The confirm timeout its systems' agent configs carry.
    pub confirm_timeout: u64,
    /// The server's database URL (SQLite in its state directory when `None`).
    pub database: Option<String>,
    /// With this, the server refuses releases whose closures are not signed by the fleet
    /// key; without it, only the hosts' own checks stand (as with a compromised or
    /// misconfigured server).
    pub server_checks_signatures: bool,
    /// Lines appended to the agent config of every system the fleet builds.
    pub agent_config: String,
    /// Lines appended to the server's config.
    pub server_config: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            kind: HostKind::Namespace,
            platform: Platform::NixOS,
            confirm_timeout: 30,
            database: None,
            server_checks_signatures: true,
            agent_config: String::new(),
            server_config: String::new(),
        }
    }
}

impl Fleet {
    /// A fleet of namespace hosts.
    pub fn new(names: &[&str], confirm_timeout: u64) -> Fleet {
        Self::with(
            names,
            FleetOptions {
                confirm_timeout,
                ..Default::default()
            },
        )
    }

    /// A fleet of `kind` hosts.
    pub fn of(kind: HostKind, names: &[&str], confirm_timeout: u64) -> Fleet {
        Self::with(
            names,
            FleetOptions {
                kind,
                confirm_timeout,
                ..Default::default()
            },
        )
    }

    /// A fleet whose server uses `database` (SQLite in its state directory when `None`).
    pub fn with_database(names: &[&str], confirm_timeout: u64, database: Option<String>) -> Fleet {
        Self::with(
            names,
            FleetOptions {
                confirm_timeout,
                database,
                ..Default::default()
            },
        )
    }

    pub fn with(names: &[&str], options: FleetOptions) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(&dir.path().join("cache-keys"), "fleet-1");
        let mut config = format!("caches = [\"{}\"]\n{}", cache.url(), options.server_config);
        if options.server_checks_signatures {
            config.push_str(&format!(
                "trusted_cache_keys = [\"{}\"]\n",
                cache.public_key
            ));
        }
        let server = Server::start(ServerOptions {
            config,
            database: options.database.clone(),
            ..Default::default()
        });
        let mut fleet = Fleet {
            salt: dir.path().display().to_string(),
            base: String::new(),
            server,
            cache,
            hosts: Vec::new(),
            options,
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
        self.build_with_agent_config(name, variant, kernel, "")
    }

    /// Builds a system whose agent config has `agent_config` appended (after the fleet's
    /// own additions), and pushes it, signed, to the cache.
    pub fn system_with_agent_config(
        &self,
        name: &str,
        variant: Variant,
        agent_config: &str,
    ) -> String {
        let path = self.build_with_agent_config(name, variant, "6.1", agent_config);
        self.cache.push(&path);
        path
    }

    fn build_with_agent_config(
        &self,
        name: &str,
        variant: Variant,
        kernel: &str,
        agent_config: &str,
    ) -> String {
        let extra = format!("{}\n{agent_config}", self.options.agent_config);
        self.build_spec(name, |spec| {
            spec.variant = variant;
            spec.kernel = kernel;
            spec.extra_agent_config = &extra;
        })
    }

    /// Builds a system of this fleet: a good one with the fleet's settings, changed by
    /// `tweak`.
    fn build_spec<'a>(&'a self, name: &'a str, tweak: impl FnOnce(&mut SystemSpec<'a>)) -> String {
        let mut spec = SystemSpec {
            name,
            platform: self.options.platform,
            variant: Variant::Good,
            kernel: "6.1",
            server: &self.server.url,
            trusted_key: &self.cache.public_key,
            confirm_timeout: self.options.confirm_timeout,
            salt: &self.salt,
            extra_agent_config: &self.options.agent_config,
            agent_package: SYSTEMD_HOST_AGENT_PACKAGE,
            secrets: "",
        };
        tweak(&mut spec);
        build_system(&spec)
    }

    /// Builds a system of this fleet as `tweak` changes it, and pushes it, signed, to the
    /// cache.
    pub fn system_from<'a>(
        &'a self,
        name: &'a str,
        tweak: impl FnOnce(&mut SystemSpec<'a>),
    ) -> String {
        let path = self.build_spec(name, tweak);
        self.cache.push(&path);
        path
    }

    /// Builds a system whose agent unit runs the yeet package at `agent_package`, and
    /// pushes it, signed, to the cache.
    pub fn system_with_agent_package(&self, name: &str, agent_package: &str) -> String {
        self.system_from(name, |spec| spec.agent_package = agent_package)
    }

    /// Builds a system that asks for `secrets` (its `yeet.secrets`, as Nix), and pushes it,
    /// signed, to the cache.
    pub fn system_with_secrets(&self, name: &str, secrets: &str) -> String {
        self.system_from(name, |spec| spec.secrets = secrets)
    }

    /// Adds the secret `name` with `content`, granted to `host`, through the CLI.
    pub fn add_secret(&self, name: &str, content: &str, host: &str) {
        let file = self.dir().join(format!("{name}.plain"));
        std::fs::write(&file, format!("{content}\n")).unwrap();
        let file = file.display().to_string();
        self.server
            .yeet(&["secret", "add", name, "--from-file", &file, "--host", host]);
        let _ = std::fs::remove_file(&file);
    }

    /// How long secret changes take to reach `host`, which runs a system that asks for the
    /// secret `name` it is granted: `rounds` rotations, each timed from the `yeet secret
    /// rotate` until the new content is in the host's `/run/yeet/secrets`, then a
    /// revocation, until the file is gone. Each change waits at most `within`.
    pub fn secret_change_latencies(
        &self,
        host: &str,
        name: &str,
        rounds: usize,
        within: Duration,
    ) -> (Vec<Duration>, Duration) {
        let host = self.find_host(host);
        let file = format!("yeet/secrets/{name}");
        let mut rotations = Vec::new();
        for round in 0..rounds {
            let content = format!("{name}-version-{round}-{}", std::process::id());
            let mut rotate = self.server.yeet_cmd();
            rotate
                .args(["secret", "rotate", name, "--stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let started = Instant::now();
            let mut child = rotate.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{content}\n").as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            wait_until(
                within,
                &format!("rotation {round} to reach {}", host.name),
                || host.run_file(&file).is_some_and(|c| c.trim() == content),
            );
            rotations.push(started.elapsed());
        }
        let started = Instant::now();
        // The host's system uses it: revoking it anyway is the point.
        self.server
            .yeet(&["secret", "revoke", name, &host.name, "--yes"]);
        wait_until(
            within,
            &format!("the revocation to reach {}", host.name),
            || host.run_file(&file).is_none(),
        );
        (rotations, started.elapsed())
    }

    /// Lays out the fixture flake in a fresh git repository, configured for `fleet`.
    pub fn flake(&self) -> PathBuf {
        let dir = self.dir().join("fleet-flake");
        std::fs::create_dir_all(&dir).unwrap();
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (from, to) in [
            ("fixtures/fleet-flake/flake.nix", "flake.nix"),
            ("nix/system.nix", "system.nix"),
            ("nix/build-system.sh", "build-system.sh"),
            ("nix/tools.nix", "tools.nix"),
            ("nix/unit.nix", "unit.nix"),
            ("../../nix/modules/agent-service.nix", "agent-service.nix"),
            (
                "../../nix/modules/secrets-manifest.nix",
                "secrets-manifest.nix",
            ),
        ] {
            std::fs::copy(here.join(from), dir.join(to)).unwrap();
        }
        let settings = serde_json::json!({
            "server": self.server.url,
            "trustedKey": self.cache.public_key,
            "salt": self.dir().display().to_string(),
            "system": format!("{}-linux", std::env::consts::ARCH),
        });
        std::fs::write(dir.join("fleet.json"), settings.to_string()).unwrap();
        let git = |args: &[&str]| {
            let out = run(std::process::Command::new("git")
                .args(["-c", "user.name=yeet", "-c", "user.email=yeet@test", "-C"])
                .arg(&dir)
                .args(args));
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-qm", "fleet"]);
        dir
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Boots new hosts (a few at a time: booting is mostly waiting for Nix and the agent),
    /// waits for their codes in `yeet-agent status`, and approves them in `names`' order.
    pub fn add_hosts(&mut self, names: &[&str]) {
        self.add_hosts_in_parallel(names, 4);
    }

    /// Boots new hosts from `threads` threads at once, then approves them in `names`' order
    /// (a large fleet would take long to boot one by one).
    pub fn add_hosts_in_parallel(&mut self, names: &[&str], threads: usize) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut booted: Vec<(usize, SimHost)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.clamp(1, names.len().max(1)))
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let Some(name) = names.get(i) else { break };
                            mine.push((i, self.boot_new_host(name)));
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        booted.sort_by_key(|(i, _)| *i);
        self.approve_all(booted.into_iter().map(|(_, h)| h).collect());
    }

    /// Boots a host without approving it.
    pub fn boot_new_host(&self, name: &str) -> SimHost {
        let mut host = SimHost::new(self.dir.path(), name, self.options.kind);
        host.start(&self.cache, &self.base);
        host
    }

    fn approve_all(&mut self, booted: Vec<SimHost>) {
        for host in booted {
            let code = host.shown_code(Duration::from_secs(120));
            self.server.yeet(&["approve", &host.name, &code]);
            self.hosts.push(host);
        }
    }

    /// Boots a host again after `power_off`.
    pub fn boot(&mut self, name: &str) {
        let i = self.hosts.iter().position(|h| h.name == name).unwrap();
        self.hosts[i].start(&self.cache, &self.base);
    }

    /// Reboots a host cleanly (a systemd host shuts down, then boots the profile's default).
    pub fn reboot(&mut self, name: &str) {
        let i = self.hosts.iter().position(|h| h.name == name).unwrap();
        self.hosts[i].reboot(&self.cache, &self.base);
    }

    /// Waits up to `timeout` for a systemd host to reboot by itself (its container goes
    /// down), then boots it again, as the machine's firmware would; returns when it went
    /// down, in Unix milliseconds (a reboot that never comes fails the test).
    pub fn follow_reboot(&mut self, name: &str, timeout: Duration) -> i64 {
        let i = self.hosts.iter().position(|h| h.name == name).unwrap();
        wait_until(timeout, &format!("{name} to reboot by itself"), || {
            !self.hosts[i].is_up()
        });
        let went_down = yeet_proto::clock::unix_now_ms();
        self.hosts[i].power_off();
        self.hosts[i].start(&self.cache, &self.base);
        went_down
    }

    /// A host, to look at or run commands on (`host` when it is to be powered off or on).
    pub fn find_host(&self, name: &str) -> &SimHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the fleet"))
    }

    pub fn host(&mut self, name: &str) -> &mut SimHost {
        self.hosts.iter_mut().find(|h| h.name == name).unwrap()
    }

    /// `yeet status --json`, as a map from host name to its JSON.
    pub fn status(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let hosts = self
            .server
            .client()
            .hosts()
            .unwrap_or_else(|e| panic!("{e}"));
        hosts
            .into_iter()
            .map(|h| (h.name.clone(), serde_json::json!(h)))
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
        let limit = yeet_proto::api::Limit { limit: Some(20) };
        let history = self.server.client().activations(host, limit);
        history
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|a| serde_json::json!(a))
            .collect()
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
