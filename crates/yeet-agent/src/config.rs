//! Agent configuration: `/etc/yeet/agent.toml`, then `YEET_AGENT_*` environment variables,
//! then flags.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/yeet/agent.toml";
/// The host's SSH key doubles as its yeet identity (and, later, its age recipient).
pub const SSH_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
/// Used when the host has no SSH host key; generated on first start.
pub const GENERATED_KEY: &str = "/var/lib/yeet/agent_key";

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub poll_interval_secs: Option<u64>,
    pub hostname: Option<String>,
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
    /// Seconds between polls while waiting for approval or when the server is unreachable.
    #[arg(long, env = "YEET_AGENT_POLL_INTERVAL")]
    pub poll_interval: Option<u64>,
    /// Host name suggested to the admin at registration. Default: the kernel's host name.
    #[arg(long, env = "YEET_AGENT_HOSTNAME")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    /// An explicit key; `None` means the default search (SSH host key, then generated).
    pub key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub poll_interval: Duration,
    pub hostname: Option<String>,
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
        Ok(Config {
            server: args
                .server
                .clone()
                .or(file.server)
                .ok_or(ConfigError::NoServer)?,
            key: args.key.clone().or(file.key),
            ca_cert: args.ca_cert.clone().or(file.ca_cert),
            poll_interval: Duration::from_secs(
                args.poll_interval
                    .or(file.poll_interval_secs)
                    .unwrap_or(30)
                    .max(1),
            ),
            hostname: args.hostname.clone().or(file.hostname),
        })
    }
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
        std::fs::write(&p, "server = \"http://file\"\npoll_interval_secs = 5").unwrap();
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
        std::fs::write(&p, "server = 3").unwrap();
        let err = Config::resolve(&AgentArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("agent.toml"), "{err}");
        assert!(matches!(
            Config::resolve(&AgentArgs::default()),
            Err(ConfigError::NoServer) | Err(ConfigError::Read(..)) | Err(ConfigError::Parse(..))
        ));
    }
}
