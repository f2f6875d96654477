//! Agent configuration: `/etc/yeet/agent.toml`, then `YEET_AGENT_*` environment variables,
//! then flags. On NixOS the file is part of the system, so a new system can carry a new
//! configuration; that is also how a bad system can cut the agent off (and get rolled back).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use yeet_proto::api::RebootPolicy;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/yeet/agent.toml";
/// The host's SSH key doubles as its yeet identity (and, later, its age recipient).
pub const SSH_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
/// Used when the host has no SSH host key; generated on first start.
pub const GENERATED_KEY: &str = "/var/lib/yeet/agent_key";
/// What the agent keeps to finish an interrupted activation, and nothing else.
pub const STATE_DIR: &str = "/var/lib/yeet";
/// Runtime files: the local varlink socket, the agent's pid, the live secrets.
pub const RUN_DIR: &str = "/run/yeet";
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
pub const CURRENT_SYSTEM: &str = "/run/current-system";
pub const BOOTED_SYSTEM: &str = "/run/booted-system";
pub const NIX_CONF: &str = "/etc/nix/nix.conf";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read agent config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("agent config {0} is invalid: {1}")]
    Parse(PathBuf, String),
    #[error(
        "no server configured: pass --server URL, set YEET_AGENT_SERVER, or set `server` in /etc/yeet/agent.toml"
    )]
    NoServer,
    #[error(
        "invalid trusted key {0:?}: {1} (expected `name:base64`, as in nix.conf's trusted-public-keys{hint})",
        hint = if .0.contains("REPLACE") { "; replace the template's placeholder with the content of your cache-key.pub" } else { "" }
    )]
    TrustedKey(String, String),
    #[error(
        "`{0}` is {1}, in the Nix store, which every user can read: a private key must never be there. Give the path of a file outside the store (deployed as a secret), not a Nix path"
    )]
    SecretInStore(&'static str, PathBuf),
    #[error("suggest_tags: {0}")]
    Tags(#[from] yeet_proto::names::InvalidTags),
    #[error(
        "invalid entry {0:?} in allowed_cache_schemes: expected a URL scheme such as \"https\" or \"s3\""
    )]
    Scheme(String),
}

/// How a new system is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationMode {
    /// Activate now (`switch-to-configuration switch`), then confirm or roll back.
    Switch,
    /// Make it the boot default only (`switch-to-configuration boot`); active after a reboot.
    Boot,
}

impl ActivationMode {
    /// The config file's name for it, which is also `switch-to-configuration`'s argument.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationMode::Switch => "switch",
            ActivationMode::Boot => "boot",
        }
    }
}

/// The settings an agent config file may contain, each with its default in `Default` below
/// (the one table of defaults). Unknown keys are errors, so typos surface.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: Option<String>,
    pub key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub poll_interval_secs: u64,
    pub long_poll_secs: u64,
    pub hostname: Option<String>,
    /// Binary-cache public keys this host trusts, besides those in nix.conf.
    pub trusted_keys: Vec<String>,
    pub confirm_timeout_secs: u64,
    /// A shell command that must succeed on the new system before it is confirmed.
    pub health_check: Option<String>,
    pub activation_mode: ActivationMode,
    /// Substituter URL schemes accepted from the server.
    pub allowed_cache_schemes: Vec<String>,
    /// The longest the agent waits between check-ins, whatever the server asks.
    pub max_checkin_interval_secs: u64,
    /// The group that may use the local socket (status, log, check-now).
    pub socket_group: String,
    /// The group whose members may also change the system through the socket (detach,
    /// switch, force, attach); root always may.
    pub admin_group: String,
    /// Tags this host suggests for itself; an operator decides (see `Facts`).
    pub suggest_tags: Vec<String>,
    /// Whether the host reboots by itself when an activation needs a reboot: "in-window"
    /// (inside its maintenance window) or "never". Unset: as its policy on the server says
    /// (`yeet host policy HOST --reboot`); set, it overrides that policy.
    pub reboot: Option<RebootPolicy>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            server: None,
            key: None,
            ca_cert: None,
            poll_interval_secs: 30,
            long_poll_secs: 55,
            hostname: None,
            trusted_keys: Vec::new(),
            confirm_timeout_secs: 120,
            health_check: None,
            activation_mode: ActivationMode::Switch,
            allowed_cache_schemes: crate::fetch::DEFAULT_CACHE_SCHEMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_checkin_interval_secs: 300,
            socket_group: "yeet".into(),
            admin_group: "yeet-admin".into(),
            suggest_tags: Vec::new(),
            reboot: None,
        }
    }
}

#[derive(Debug, Default, Clone, clap::Args)]
pub struct AgentArgs {
    /// Agent config file. Default: /etc/yeet/agent.toml when it exists.
    #[arg(long, env = "YEET_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// yeet server URL.
    #[arg(long, env = "YEET_AGENT_SERVER")]
    pub server: Option<String>,
    /// Private key (OpenSSH ed25519). Default: /etc/ssh/ssh_host_ed25519_key, else a key
    /// generated under /var/lib/yeet.
    #[arg(long, env = "YEET_AGENT_KEY")]
    pub key: Option<PathBuf>,
    /// Extra CA certificate (PEM) for the server's TLS certificate.
    #[arg(long, env = "YEET_AGENT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Seconds between polls while waiting for approval, and the base of the retry backoff.
    #[arg(long, env = "YEET_AGENT_POLL_INTERVAL")]
    pub poll_interval: Option<u64>,
    /// Host name suggested to the admin at registration. Default: the kernel's host name.
    #[arg(long, env = "YEET_AGENT_HOSTNAME")]
    pub hostname: Option<String>,
    /// Seconds the new system has to prove itself (agent reaches the server, health check
    /// passes) before it is rolled back.
    #[arg(long, env = "YEET_AGENT_CONFIRM_TIMEOUT")]
    pub confirm_timeout: Option<u64>,
    /// switch (activate now) or boot (next boot).
    #[arg(long, env = "YEET_AGENT_ACTIVATION_MODE")]
    pub activation_mode: Option<ActivationMode>,
    /// in-window (reboot by itself inside its maintenance window when an activation needs
    /// a reboot) or never; overrides the host's policy on the server. Default: as that
    /// policy says.
    #[arg(long, env = "YEET_AGENT_REBOOT", value_name = "in-window|never")]
    pub reboot: Option<RebootPolicy>,
    /// A Nix signing key (`name:base64`, or a file holding one) whose signature makes a
    /// closure trusted, as `trusted_keys` of the config file, which it replaces
    /// (repeatable, or comma-separated in the variable). nix.conf's keys count too.
    #[arg(
        long,
        env = "YEET_AGENT_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "KEY|FILE"
    )]
    pub trusted_key: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    /// An explicit key; `None` means the default search (SSH host key, then generated).
    pub key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    /// Between polls while waiting for approval, and the base of the retry backoff.
    pub poll_interval: Duration,
    /// How long a check-in asks the server to hold it.
    pub long_poll: Duration,
    pub hostname: Option<String>,
    /// Keys from the config; nix.conf's are added when fetching.
    pub trusted_keys: Vec<nix_meta::PublicKey>,
    pub confirm_timeout: Duration,
    pub health_check: Option<String>,
    pub activation_mode: ActivationMode,
    pub allowed_cache_schemes: Vec<String>,
    pub max_checkin_interval: Duration,
    pub socket_group: String,
    pub admin_group: String,
    /// Sorted, checked against the tag alphabet.
    pub suggested_tags: Vec<String>,
    /// The reboot policy this host declares, if any (it overrides the server's).
    pub reboot: Option<RebootPolicy>,
}

impl Config {
    pub fn resolve(args: &AgentArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => load(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                load(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        let trusted_keys = if args.trusted_key.is_empty() {
            file.trusted_keys
                .iter()
                .map(|k| {
                    k.parse().map_err(|e: nix_meta::KeyError| {
                        ConfigError::TrustedKey(k.clone(), e.to_string())
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            args.trusted_key
                .iter()
                .map(|k| {
                    nix_meta::PublicKey::from_key_or_file(k)
                        .map_err(|why| ConfigError::TrustedKey(k.clone(), why))
                })
                .collect::<Result<_, _>>()?
        };
        let allowed_cache_schemes = file.allowed_cache_schemes;
        if let Some(bad) = allowed_cache_schemes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        }) {
            return Err(ConfigError::Scheme(bad.clone()));
        }
        Ok(Config {
            server: args
                .server
                .clone()
                .or(file.server)
                .ok_or(ConfigError::NoServer)?,
            key: args.key.clone().or(file.key),
            ca_cert: args.ca_cert.clone().or(file.ca_cert),
            poll_interval: Duration::from_secs(
                args.poll_interval.unwrap_or(file.poll_interval_secs).max(1),
            ),
            long_poll: Duration::from_secs(file.long_poll_secs),
            hostname: args.hostname.clone().or(file.hostname),
            trusted_keys,
            confirm_timeout: Duration::from_secs(
                args.confirm_timeout
                    .unwrap_or(file.confirm_timeout_secs)
                    .max(1),
            ),
            health_check: file.health_check.filter(|c| !c.trim().is_empty()),
            activation_mode: args.activation_mode.unwrap_or(file.activation_mode),
            allowed_cache_schemes,
            max_checkin_interval: Duration::from_secs(file.max_checkin_interval_secs.max(1)),
            socket_group: file.socket_group,
            admin_group: file.admin_group,
            suggested_tags: yeet_proto::names::tag_set(&file.suggest_tags)?
                .into_iter()
                .collect(),
            reboot: args.reboot.or(file.reboot),
        })
    }
}

/// The keys an agent config file may contain.
pub fn file_keys() -> &'static [&'static str] {
    yeet_proto::fields::of::<FileConfig>()
}

/// What `yeet-agent check-config` checks, at build time on NixOS: the file parses (no
/// unknown key, no wrong type), its values are valid, and its private key is not in the
/// world-readable Nix store. Environment variables and flags play no part.
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::resolve(&AgentArgs {
        config: Some(path.to_owned()),
        ..Default::default()
    })?;
    if let Some(key) = config.key.as_ref().filter(|k| k.starts_with("/nix/store")) {
        return Err(ConfigError::SecretInStore("key", key.clone()));
    }
    Ok(config)
}

fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "server = \"http://file\"\npoll_interval_secs = 5\ntrusted_keys = [\"test-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=\"]\nactivation_mode = \"boot\"",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(p.clone()),
            server: Some("http://flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(
            (c.server.as_str(), c.poll_interval.as_secs()),
            ("http://flag", 5)
        );
        assert_eq!(
            (c.trusted_keys[0].name.as_str(), c.activation_mode),
            ("test-1", ActivationMode::Boot)
        );
        std::fs::write(&p, "server = 3").unwrap();
        let err = Config::resolve(&AgentArgs {
            config: Some(p.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("agent.toml"), "{err}");
        std::fs::write(&p, "server = \"x\"\ntrusted_keys = [\"nocolon\"]").unwrap();
        let err = Config::resolve(&AgentArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::TrustedKey(..)), "{err}");
    }

    #[test]
    fn check_config_refuses_typos_placeholders_and_keys_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let check = |text: &str| {
            std::fs::write(&p, text).unwrap();
            check_file(&p).map(|_| ()).map_err(|e| e.to_string())
        };
        check("server = \"https://yeet\"\nkey = \"/run/secrets/agent_key\"").unwrap();
        let err = check("server = \"https://yeet\"\npoll_intervall_secs = 5").unwrap_err();
        assert!(err.contains("poll_intervall_secs"), "{err}");
        let err =
            check("server = \"https://yeet\"\nkey = \"/nix/store/aaaa-agent_key\"").unwrap_err();
        assert!(err.contains("Nix store") && err.contains("`key`"), "{err}");
        let err = check(
            "server = \"https://yeet\"\ntrusted_keys = [\"fleet-1:REPLACE-WITH-THE-CONTENT-OF-cache-key.pub\"]",
        )
        .unwrap_err();
        assert!(err.contains("placeholder"), "{err}");
        assert!(file_keys().contains(&"health_check") && file_keys().len() >= 12);
    }
}
