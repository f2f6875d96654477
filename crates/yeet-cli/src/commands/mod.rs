//! The `yeet` commands, one module each. Every command is a function that takes its parsed
//! arguments and the connection settings; `main` only dispatches.

pub mod approve;
pub mod audit;
pub mod cache;
pub mod diff;
pub mod host;
pub mod key;
pub mod log;
pub mod osquery;
pub mod pending;
pub mod publish;
pub mod releases;
pub mod rollout;
pub mod secret;
pub mod status;
pub mod user;
pub mod vm;
pub mod wait;
pub mod whoami;
pub mod window;

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use yeet_client::Client;

use crate::config;

/// Where the server is and who you are; every command that talks to the server uses it.
#[derive(clap::Args)]
pub struct Connection {
    /// Server URL, e.g. https://yeet.example.org:8470
    #[arg(long, env = "YEET_SERVER", global = true)]
    pub server: Option<String>,
    /// Your OpenSSH ed25519 private key. Default: ~/.config/yeet/key, then ~/.ssh/id_ed25519.
    #[arg(long, env = "YEET_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the server's TLS certificate.
    #[arg(long, env = "YEET_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Config file. Default: ~/.config/yeet/config.toml
    #[arg(long, env = "YEET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl Connection {
    /// The signing key's path: flag or environment, then the config file, then the defaults.
    pub fn key_path(&self) -> Result<PathBuf> {
        let file = config::load(self.config.as_deref())?;
        config::resolve_key(self.key.clone(), &file)
    }

    /// A client for the configured server, signing with the configured key.
    pub fn connect(&self) -> Result<Client> {
        let file = config::load(self.config.as_deref())?;
        let server = self
            .server
            .clone()
            .or(file.server.clone())
            .context("no server configured: pass --server URL, set YEET_SERVER, or put `server = \"URL\"` in ~/.config/yeet/config.toml")?;
        let key = config::resolve_key(self.key.clone(), &file)?;
        let identity = yeet_client::load_identity(&key)?;
        let ca = self.ca_cert.clone().or(file.ca_cert);
        Ok(Client::new(
            &server,
            identity,
            ca.as_deref(),
            Duration::from_secs(60),
        )?)
    }
}

/// `--json` for every listing.
#[derive(clap::Args, Default)]
pub struct Json {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
