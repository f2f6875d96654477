//! Server configuration: built-in defaults, then a TOML file (`--config`, or
//! `/etc/yeet/server.toml` when it exists), then `YEET_SERVER_*` environment variables,
//! then flags. Flags and environment share one definition (clap's `env`), so later sources
//! simply override earlier ones field by field.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

use crate::service::ServiceConfig;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/yeet/server.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/yeet-server";
/// Loopback by default: exposing the server is a decision (set `listen`, ideally with TLS).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// The longest clock skew a server accepts (see `clock_skew_secs`).
pub const MAX_CLOCK_SKEW_SECS: i64 = 3600;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0} is invalid: {1}")]
    Parse(PathBuf, String),
    #[error("{0}")]
    Invalid(String),
}

/// The settings a config file may contain, each with its default in `Default` below: the one
/// table of defaults (the service's own defaults are derived from it). Unknown keys are
/// errors, so typos surface. The settings flags can override stay optional here, since a
/// flag wins over the file and the file over the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The URLs clients reach this server by (signatures name one of them), e.g.
    /// ["https://yeet.example.org"]. Empty: a request's signed origin must match its Host.
    pub public_urls: Vec<String>,
    /// Overridden by `--listen` and friends (see `ServerArgs`).
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub database: Option<String>,
    /// Connections to the database for requests (default: 4 on SQLite, 16 on PostgreSQL).
    /// Each process also holds one for the nonce log and, on PostgreSQL, one for replica
    /// events: replicas × (this + 2) must fit PostgreSQL's `max_connections`.
    pub database_max_connections: Option<u32>,
    /// PEM certificate chain and key; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The age identity secrets are encrypted to (created 0400 on first start). Default:
    /// `secrets.key` in the state directory. The systemd credential `secrets-key` wins.
    pub secrets_key: Option<PathBuf>,
    /// Largest request body outside cache uploads.
    pub max_body_bytes: usize,
    /// See `ServiceConfig` for these.
    pub clock_skew_secs: i64,
    pub code_ttl_secs: i64,
    pub max_pending: i64,
    /// New keys one network may register at once, then one per `registration_refill_ms`.
    pub registration_burst: u32,
    pub registration_refill_ms: u64,
    /// Shortest interval between two registrations of one pending key.
    pub reregister_interval_ms: u64,
    /// Requests one key may sign within a clock-skew window.
    pub nonces_per_key: usize,
    /// Uploads to the embedded cache one key may run at once.
    pub max_uploads_per_key: usize,
    /// How often hosts check in, when a host counts as offline, and how long a check-in
    /// may be held open.
    pub checkin_interval_secs: u64,
    pub offline_after_secs: i64,
    pub max_long_poll_secs: u64,
    /// Binary caches hosts fetch from, e.g. ["https://cache.example.org"].
    pub caches: Vec<String>,
    /// Nix public keys (`name:base64`) a release's closures must be signed by.
    pub trusted_cache_keys: Vec<String>,
    /// How often batched last-seen times are written.
    pub last_seen_flush_ms: u64,
    /// Give a host the tags its agent suggests when it is approved (off: an admin accepts
    /// them with `yeet host tag HOST --accept-suggested`).
    pub accept_suggested_tags: bool,
    /// The rollout policy of releases that name none (`yeet rollout policy set`); unset,
    /// they reach every host at once.
    pub default_rollout_policy: Option<String>,
    /// Rollout policies declared here (`[rollout_policies.NAME]`), set at every start as
    /// `yeet rollout policy set` would: a fleet's flake can carry them.
    pub rollout_policies: std::collections::BTreeMap<String, yeet_proto::rollout::RolloutPolicy>,
    /// Maintenance windows declared here (`[maintenance_windows.NAME]`), likewise.
    pub maintenance_windows:
        std::collections::BTreeMap<String, yeet_proto::windows::MaintenanceWindow>,
    /// Serve an embedded binary cache under /cache.
    pub embedded_cache: bool,
    /// Largest NAR accepted by the embedded cache.
    pub max_upload_bytes: u64,
    /// Open connections the server accepts (lowered to fit the file limit).
    pub max_connections: usize,
    /// Open connections from one network: an IPv4 address or an IPv6 /64.
    pub max_connections_per_network: usize,
    /// Seconds allowed for a TLS handshake and for each request's headers.
    pub header_timeout_secs: u64,
    /// Seconds a request body may take to arrive, and an upload may stall.
    pub body_timeout_secs: u64,
    /// The osquery remote API (`[osquery]`): body and carve limits, per-node rate limit,
    /// log retention.
    pub osquery: crate::service::osquery::OsquerySettings,
    /// Also write every audit event to this file, one JSON object per line, for a SIEM.
    pub audit_log_file: Option<PathBuf>,
    /// Drop audit events older than this many days (a checkpoint event keeps the chain
    /// verifiable); 0 keeps them forever.
    pub audit_retention_days: u32,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            public_urls: Vec::new(),
            listen: None,
            state_dir: None,
            database: None,
            database_max_connections: None,
            tls_cert: None,
            tls_key: None,
            secrets_key: None,
            max_body_bytes: 1 << 20,
            clock_skew_secs: yeet_proto::signing::DEFAULT_SKEW_SECS,
            code_ttl_secs: 15 * 60,
            max_pending: 1000,
            registration_burst: 30,
            registration_refill_ms: 2000,
            reregister_interval_ms: 500,
            nonces_per_key: yeet_proto::signing::DEFAULT_NONCES_PER_KEY,
            max_uploads_per_key: 4,
            checkin_interval_secs: 30,
            offline_after_secs: 10 * 60,
            max_long_poll_secs: 55,
            caches: Vec::new(),
            trusted_cache_keys: Vec::new(),
            last_seen_flush_ms: 2000,
            accept_suggested_tags: false,
            default_rollout_policy: None,
            rollout_policies: Default::default(),
            maintenance_windows: Default::default(),
            embedded_cache: true,
            max_upload_bytes: 8 << 30,
            max_connections: 16_384,
            max_connections_per_network: 1024,
            header_timeout_secs: 15,
            body_timeout_secs: 60,
            osquery: Default::default(),
            audit_log_file: None,
            audit_retention_days: 0,
        }
    }
}

impl FileConfig {
    /// The domain's settings; the two lists that need parsing come parsed.
    fn service(
        &self,
        public_origins: Vec<String>,
        trusted_cache_keys: Vec<nix_meta::PublicKey>,
    ) -> ServiceConfig {
        ServiceConfig {
            public_origins,
            skew_secs: self.clock_skew_secs,
            code_ttl_secs: self.code_ttl_secs,
            max_pending: self.max_pending,
            registration_burst: self.registration_burst,
            registration_refill: Duration::from_millis(self.registration_refill_ms),
            reregister_interval: Duration::from_millis(self.reregister_interval_ms),
            nonces_per_key: self.nonces_per_key.max(1),
            max_uploads_per_key: self.max_uploads_per_key.max(1),
            checkin_interval_secs: self.checkin_interval_secs,
            offline_after_secs: self.offline_after_secs,
            max_long_poll_secs: self.max_long_poll_secs,
            caches: self.caches.clone(),
            trusted_cache_keys,
            accept_suggested_tags: self.accept_suggested_tags,
            osquery: self.osquery.clone(),
            default_rollout_policy: self.default_rollout_policy.clone(),
        }
    }
}

/// True when `listen` (`HOST:PORT`) can only be reached from this machine: a loopback
/// address or `localhost`. Wildcards and every other address or name are not.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// The origins a server listening only on loopback at `addr` answers to: its address and
/// `localhost`, with the port it bound, under the scheme it serves.
pub fn loopback_origins(addr: std::net::SocketAddr, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let port = addr.port();
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    [ip, "localhost".to_owned()]
        .iter()
        .filter_map(|host| {
            yeet_proto::signing::origin_of(&format!("{scheme}://{host}:{port}")).ok()
        })
        .collect()
}

/// The defaults of a server with no config file.
impl Default for ServiceConfig {
    fn default() -> Self {
        FileConfig::default().service(Vec::new(), Vec::new())
    }
}

/// Settings that flags and environment variables can override.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServerArgs {
    /// Config file (TOML). Default: /etc/yeet/server.toml when it exists.
    #[arg(long, env = "YEET_SERVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8470. Default: 127.0.0.1:8470.
    #[arg(long, env = "YEET_SERVER_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Directory for the SQLite database and other state. Default: /var/lib/yeet-server.
    #[arg(long, env = "YEET_SERVER_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB. Default: SQLite in the state dir.
    #[arg(long, env = "YEET_SERVER_DATABASE", global = true)]
    pub database: Option<String>,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long, env = "YEET_SERVER_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "YEET_SERVER_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// A URL clients reach this server at (repeatable, or comma-separated in the variable);
    /// requests signed for any other are refused. Needed unless listening on loopback only.
    #[arg(
        long,
        env = "YEET_SERVER_PUBLIC_URLS",
        global = true,
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub public_url: Vec<String>,
    /// A Nix signing key (`name:base64`, or a file holding one, such as the `.pub` that
    /// `nix-store --generate-binary-cache-key` writes) whose signature every release's
    /// closures must carry (repeatable, or comma-separated in the variable). Replaces
    /// `trusted_cache_keys` of the config file.
    #[arg(
        long,
        env = "YEET_SERVER_TRUSTED_CACHE_KEYS",
        global = true,
        value_delimiter = ',',
        value_name = "KEY|FILE"
    )]
    pub trusted_cache_key: Vec<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub state_dir: PathBuf,
    pub database: String,
    /// `None`: the backend's default.
    pub database_max_connections: Option<u32>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub secrets_key: PathBuf,
    pub max_body_bytes: usize,
    pub last_seen_flush: Duration,
    pub embedded_cache: bool,
    pub max_upload_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_network: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub service: ServiceConfig,
    pub audit_log_file: Option<PathBuf>,
    /// 0: forever.
    pub audit_retention_days: u32,
    /// Declared in the config file, checked; set in the database at start.
    pub rollout_policies: std::collections::BTreeMap<String, yeet_proto::rollout::RolloutPolicy>,
    pub maintenance_windows:
        std::collections::BTreeMap<String, yeet_proto::windows::MaintenanceWindow>,
}

impl Config {
    pub fn resolve(args: &ServerArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                load_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        Self::merge(file, args)
    }

    pub fn merge(file: FileConfig, args: &ServerArgs) -> Result<Config, ConfigError> {
        let public_urls = if args.public_url.is_empty() {
            &file.public_urls
        } else {
            &args.public_url
        };
        let public_origins = public_urls
            .iter()
            .map(|u| {
                yeet_proto::signing::origin_of(u).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "public_urls: {u:?} is not an http:// or https:// URL"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_cache_keys = if args.trusted_cache_key.is_empty() {
            file.trusted_cache_keys
                .iter()
                .map(|k| {
                    k.parse().map_err(|e| {
                        ConfigError::Invalid(format!("trusted_cache_keys: {k:?}: {e}"))
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            args.trusted_cache_key
                .iter()
                .map(|k| {
                    nix_meta::PublicKey::from_key_or_file(k)
                        .map_err(|why| ConfigError::Invalid(format!("--trusted-cache-key: {why}")))
                })
                .collect::<Result<_, _>>()?
        };
        let service = file.service(public_origins, trusted_cache_keys);
        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let database = args.database.clone().or(file.database).unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", state_dir.join("yeet.db").display())
        });
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "TLS needs both a certificate and a key: set tls_cert and tls_key".into(),
                ));
            }
        };
        if service.skew_secs <= 0
            || service.code_ttl_secs <= 0
            || service.max_pending <= 0
            || service.checkin_interval_secs == 0
        {
            return Err(ConfigError::Invalid("clock_skew_secs, code_ttl_secs, max_pending and checkin_interval_secs must be positive".into()));
        }
        // The skew is also how long the fleet keeps nonces (the horizon only grows), and a
        // request an hour old is no longer "fresh" in any useful sense.
        if service.skew_secs > MAX_CLOCK_SKEW_SECS {
            return Err(ConfigError::Invalid(format!(
                "clock_skew_secs must be at most {MAX_CLOCK_SKEW_SECS}: fix the machines' clocks (NTP) instead of widening it"
            )));
        }
        let listen = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        if service.public_origins.is_empty() && !is_loopback(&listen) {
            return Err(ConfigError::Invalid(format!(
                "listen = {listen:?} can be reached from other machines, so the server must know the URLs clients use (a request signed for another server that shares an operator key is refused only then): set public_urls = [\"https://yeet.example.org:8470\"] in the config file, --public-url, or YEET_SERVER_PUBLIC_URLS (NixOS: services.yeet-server.publicUrls)"
            )));
        }
        for (name, policy) in &file.rollout_policies {
            yeet_proto::rollout::validate_policy_name(name)
                .and_then(|()| policy.check())
                .map_err(|e| ConfigError::Invalid(format!("rollout_policies.{name}: {e}")))?;
        }
        for (name, window) in &file.maintenance_windows {
            yeet_proto::rollout::validate_policy_name(name)
                .and_then(|()| window.schedule().map(drop))
                .map_err(|e| ConfigError::Invalid(format!("maintenance_windows.{name}: {e}")))?;
        }
        if file.database_max_connections == Some(0) {
            return Err(ConfigError::Invalid(
                "database_max_connections must be at least 1; leave it out for the default".into(),
            ));
        }
        Ok(Config {
            listen,
            secrets_key: file
                .secrets_key
                .unwrap_or_else(|| state_dir.join("secrets.key")),
            state_dir,
            database,
            database_max_connections: file.database_max_connections,
            tls,
            max_body_bytes: file.max_body_bytes,
            last_seen_flush: Duration::from_millis(file.last_seen_flush_ms),
            embedded_cache: file.embedded_cache,
            max_upload_bytes: file.max_upload_bytes,
            max_connections: file.max_connections.max(1),
            max_connections_per_network: file.max_connections_per_network.max(1),
            header_timeout: Duration::from_secs(file.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(file.body_timeout_secs.max(1)),
            audit_log_file: file.audit_log_file,
            audit_retention_days: file.audit_retention_days,
            rollout_policies: file.rollout_policies,
            maintenance_windows: file.maintenance_windows,
            service,
        })
    }
}

/// The keys a server config file may contain.
pub fn file_keys() -> &'static [&'static str] {
    yeet_proto::fields::of::<FileConfig>()
}

/// What `yeet-server check-config` checks, at build time on NixOS: the file parses (no
/// unknown key, no wrong type), its values are valid, and its TLS key is not in the
/// world-readable Nix store. Environment variables and flags play no part.
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::merge(load_file(path)?, &ServerArgs::default())?;
    let private_keys = [
        ("tls_key", config.tls.as_ref().map(|(_, k)| k)),
        ("secrets_key", Some(&config.secrets_key)),
    ];
    for (setting, key) in private_keys {
        if let Some(key) = key.filter(|k| k.starts_with("/nix/store")) {
            return Err(ConfigError::Invalid(format!(
                "{setting} is {}, in the Nix store, which every user can read: a private key must never be there. Give the path of a file outside the store (deployed as a secret), not a Nix path",
                key.display()
            )));
        }
    }
    Ok(config)
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let file: FileConfig =
            toml::from_str("listen = \"0.0.0.0:1\"\nstate_dir = \"/srv/yeet\"\ncode_ttl_secs = 60")
                .unwrap();
        let args = ServerArgs {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = Config::merge(file, &args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.database, "sqlite:///srv/yeet/yeet.db?mode=rwc");
        assert_eq!(c.service.code_ttl_secs, 60);
        assert_eq!(c.service.skew_secs, 300);
    }

    #[test]
    fn corrupt_or_misspelled_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "listen = [").unwrap();
        let err = Config::resolve(&ServerArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("server.toml"), "{err}");
        std::fs::write(&path, "lisen = \"x\"").unwrap();
        let err = Config::resolve(&ServerArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let half_tls = ServerArgs {
            tls_cert: Some("/c".into()),
            ..Default::default()
        };
        assert!(Config::merge(FileConfig::default(), &half_tls).is_err());
    }

    #[test]
    fn the_database_pool_size_is_the_backends_default_unless_set() {
        let merged =
            |text: &str| Config::merge(toml::from_str(text).unwrap(), &ServerArgs::default());
        assert_eq!(merged("").unwrap().database_max_connections, None);
        assert_eq!(
            merged("database_max_connections = 8")
                .unwrap()
                .database_max_connections,
            Some(8)
        );
        let err = merged("database_max_connections = 0").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn declared_policies_and_windows_are_read_and_checked() {
        let merged =
            |text: &str| Config::merge(toml::from_str(text).unwrap(), &ServerArgs::default());
        let config = merged(
            r#"
            default_rollout_policy = "prod"
            [rollout_policies.prod]
            waves = ["tag:canary", "10%", "100%"]
            bake_secs = 900
            max_failures = "1"
            on_failure = "rollback"
            health = ["failed-units=0"]
            [maintenance_windows.nights]
            tags = ["prod"]
            days = "mon-fri"
            from = "02:00"
            to = "04:00"
            tz = "Europe/Zurich"
            "#,
        )
        .unwrap();
        assert_eq!(config.rollout_policies["prod"].waves.len(), 3);
        assert_eq!(config.maintenance_windows["nights"].tz, "Europe/Zurich");
        let err = merged(
            "[rollout_policies.empty]
waves = []",
        )
        .unwrap_err();
        assert!(err.to_string().contains("rollout_policies.empty"), "{err}");
        let err = merged(
            "[maintenance_windows.w]
tags = [\"prod\"]
days = \"mon\"
from = \"02:00\"
to = \"03:00\"
tz = \"Mars/Olympus\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("maintenance_windows.w"), "{err}");
        let bad: Result<FileConfig, _> = toml::from_str(
            "[rollout_policies.p]
waves = [\"nope\"]",
        );
        assert!(bad.unwrap_err().to_string().contains("tag:TAG"));
    }

    /// Every replica's skew is recorded as the fleet's nonce horizon, which never shrinks by
    /// itself: a mistyped skew would keep every nonce for that long.
    #[test]
    fn a_clock_skew_over_an_hour_is_refused() {
        let merged =
            |text: &str| Config::merge(toml::from_str(text).unwrap(), &ServerArgs::default());
        assert_eq!(
            merged("clock_skew_secs = 3600").unwrap().service.skew_secs,
            3600
        );
        let err = merged("clock_skew_secs = 3000000").unwrap_err();
        assert!(err.to_string().contains("at most 3600"), "{err}");
    }

    /// `--trusted-cache-key` (and its variable) takes the key or the `.pub` file Nix wrote,
    /// replaces the file's list, and names what it could not read.
    #[test]
    fn trusted_cache_keys_come_from_flags_as_keys_or_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = "fleet-1:mrlkVBNy1v0CfvqN8ajZqqIqJW9vjJhPfnR3b5BqKqQ=";
        let file = dir.path().join("cache-key.pub");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let merged = |text: &str, keys: Vec<String>| {
            Config::merge(
                toml::from_str(text).unwrap(),
                &ServerArgs {
                    trusted_cache_key: keys,
                    ..Default::default()
                },
            )
        };
        let in_file =
            "trusted_cache_keys = [\"other:mrlkVBNy1v0CfvqN8ajZqqIqJW9vjJhPfnR3b5BqKqQ=\"]";
        for given in [key.to_owned(), file.display().to_string()] {
            let config = merged(in_file, vec![given.clone()]).unwrap();
            let names: Vec<String> = config
                .service
                .trusted_cache_keys
                .iter()
                .map(|k| k.to_string())
                .collect();
            assert_eq!(names, [key], "{given}");
        }
        let config = merged(in_file, vec![]).unwrap();
        assert!(
            config.service.trusted_cache_keys[0]
                .to_string()
                .starts_with("other:")
        );
        let err = merged("", vec!["/no/such/cache-key.pub".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--trusted-cache-key") && err.contains("/no/such/cache-key.pub"),
            "{err}"
        );
    }

    /// Without public_urls, the only origin a server can check a signature against is its
    /// own loopback address; a server other machines can reach must name its URLs, or a
    /// request signed for another server sharing an operator key would be accepted.
    #[test]
    fn a_reachable_server_must_name_its_public_urls() {
        let merged =
            |text: &str, args: &ServerArgs| Config::merge(toml::from_str(text).unwrap(), args);
        let none = ServerArgs::default();
        for listen in [
            "0.0.0.0:8470",
            "[::]:8470",
            "10.0.0.5:8470",
            "yeet.example.org:8470",
        ] {
            let err = merged(&format!("listen = {listen:?}"), &none).unwrap_err();
            assert!(
                err.to_string().contains("set public_urls"),
                "{listen}: {err}"
            );
        }
        for listen in ["127.0.0.1:8470", "[::1]:0", "localhost:8470"] {
            let config = merged(&format!("listen = {listen:?}"), &none).unwrap();
            assert!(config.service.public_origins.is_empty(), "{listen}");
        }
        let config = merged(
            "listen = \"0.0.0.0:8470\"\npublic_urls = [\"https://Yeet.example.org:443/\"]",
            &none,
        )
        .unwrap();
        assert_eq!(config.service.public_origins, ["https://yeet.example.org"]);
        let flags = ServerArgs {
            listen: Some("0.0.0.0:8470".into()),
            public_url: vec!["https://a.example.org:8470".into()],
            ..Default::default()
        };
        let config = merged("public_urls = [\"https://b.example.org\"]", &flags).unwrap();
        assert_eq!(
            config.service.public_origins,
            ["https://a.example.org:8470"]
        );
        let origins = loopback_origins("127.0.0.1:8470".parse().unwrap(), false);
        assert_eq!(origins, ["http://127.0.0.1:8470", "http://localhost:8470"]);
        let origins = loopback_origins("[::1]:443".parse().unwrap(), true);
        assert_eq!(origins, ["https://[::1]", "https://localhost"]);
    }
}
