//! The `yeet-agent` binary: `yeet-agent run` is the daemon.

use clap::{Parser, Subcommand};
use std::sync::atomic::AtomicBool;
use yeet_agent::config::{AgentArgs, Config};

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
    /// Run the agent: register (printing the verification code), then check in.
    Run(AgentArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YEET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let config = Config::resolve(&args)?;
            // Stopped by SIGTERM/SIGINT's default action; the flag is for embedding and tests.
            let stop = AtomicBool::new(false);
            yeet_agent::daemon::run(&config, &stop)
        }
    }
}
