//! The `yeet-agent` binary: `run` is the daemon, `status` shows what it is doing,
//! `check-config` checks a config file, and `activate` is the detached activation process
//! the daemon starts.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::atomic::AtomicBool;
use yeet_agent::config::{AgentArgs, Config, STATE_DIR};
use yeet_agent::daemon::{Status, status_path};
use yeet_agent::state::StateDir;

#[derive(Parser)]
#[command(
    name = "yeet-agent",
    version,
    about = "The yeet agent: keeps this host on the system its fleet wants."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: register (printing the verification code), then check in and activate.
    Run(AgentArgs),
    /// Show the agent's enrollment (with the verification code), contact and activation.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check an agent config file without running anything: unknown keys, wrong types,
    /// invalid values and private keys in the Nix store are errors (the NixOS module runs
    /// this at build time).
    CheckConfig {
        /// The file to check.
        #[arg(required_unless_present = "list_keys")]
        file: Option<std::path::PathBuf>,
        /// Print the keys a config file may contain, one per line.
        #[arg(long)]
        list_keys: bool,
    },
    /// Put the secrets kept for this host (encrypted to its key under /var/lib/yeet/secrets)
    /// back in /run/yeet/secrets after a boot. The agent does this when it starts; the
    /// NixOS module runs it at activation, so that services started at boot find them.
    RestoreSecrets(AgentArgs),
    /// Internal: the detached activation process started by `run`.
    #[command(hide = true)]
    Activate,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YEET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs in files and journald stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let config = Config::resolve(&args)?;
            // Stopped by SIGTERM/SIGINT's default action; the flag is for embedding and tests.
            let stop = AtomicBool::new(false);
            yeet_agent::daemon::run(&config, &stop)
        }
        Command::RestoreSecrets(args) => {
            let config = Config::resolve(&args)?;
            let (_, key) = yeet_agent::daemon::load_identity(&config)?;
            if yeet_agent::secrets::SecretStore::system().restore(&key)? {
                println!("secrets restored");
            }
            Ok(())
        }
        Command::Activate => Ok(yeet_agent::activate::run(&StateDir::new(STATE_DIR))?),
        Command::CheckConfig { file, list_keys } => {
            if list_keys {
                for key in yeet_agent::config::file_keys() {
                    println!("{key}");
                }
            }
            if let Some(file) = file {
                let config = yeet_agent::config::check_file(&file)?;
                println!(
                    "{}: ok (server {}, {} trusted key(s), activation mode {})",
                    file.display(),
                    config.server,
                    config.trusted_keys.len(),
                    config.activation_mode.as_str()
                );
            }
            Ok(())
        }
        Command::Status { json } => {
            let path = status_path();
            let text = std::fs::read_to_string(&path).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    "it holds the verification code: run this as root, or as a member of the yeet group"
                } else {
                    "is yeet-agent running?"
                };
                anyhow::anyhow!("cannot read {}: {e}; {hint}", path.display())
            })?;
            let status: Status = serde_json::from_str(&text)
                .with_context(|| format!("{} is corrupt", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!("server:        {}", status.server);
            println!("key:           {}", status.key_id);
            match (&status.host, &status.verification_code) {
                (Some(host), _) => println!("host:          {host} (approved)"),
                (None, Some(code)) => println!(
                    "waiting for approval; verification code: {code}\n  on an admin machine: yeet approve NAME {code}"
                ),
                (None, None) => println!("registering"),
            }
            println!(
                "system:        {}",
                status.current_system.as_deref().unwrap_or("-")
            );
            println!(
                "activation:    {}",
                status.activation.as_deref().unwrap_or("none")
            );
            if let Some(e) = &status.last_error {
                println!("last error:    {e}");
            }
            Ok(())
        }
    }
}
