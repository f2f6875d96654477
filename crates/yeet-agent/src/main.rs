//! The `yeet-agent` binary: `run` is the daemon; `status`, `log`, `check-now`, `detach`,
//! `switch` and `attach` talk to it through its local socket; `check-config` checks a config
//! file; `activate` is the detached activation process the daemon starts.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use yeet_agent::config::{AgentArgs, Config, STATE_DIR};
use yeet_agent::local_client::{AgentProxy, answer, switch_following, with_agent};
use yeet_agent::state::StateDir;
use yeet_agent::varlink::{SOCKET, Status};
use yeet_proto::clock::ago;

#[derive(Parser)]
#[command(
    name = "yeet-agent",
    version,
    about = "The yeet agent: keeps this host on the system its fleet wants."
)]
struct Cli {
    /// The agent's local socket.
    #[arg(long, global = true, env = "YEET_AGENT_SOCKET", default_value = SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: register (printing the verification code), then check in and activate.
    Run(AgentArgs),
    #[command(flatten)]
    Local(LocalCommand),
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
    /// Print shell completions, e.g. `yeet-agent completions bash > /etc/bash_completion.d/yeet-agent`.
    Completions { shell: clap_complete::Shell },
    /// Internal: the detached activation process started by `run`.
    #[command(hide = true)]
    Activate,
}

/// The commands that talk to the running agent through its local socket.
#[derive(Subcommand)]
enum LocalCommand {
    /// Show what the agent does: enrollment (with the verification code while pending),
    /// systems, attachment, activation, last result. Root and members of the `yeet` group
    /// may read it.
    Status {
        /// Print JSON (the varlink reply's fields, in snake_case as `yeet` prints JSON)
        /// instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the log of the activation in progress, else of the latest one.
    Log,
    /// Make the agent check in with the server now, whatever its poll interval.
    CheckNow,
    /// Ask the server to let this host run a locally chosen system for a while. Needs root
    /// or the `yeet-admin` group; the server's policy decides (`yeet host policy`).
    Detach {
        /// Why; recorded by the server with your user name.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Switch to a system in this host's store: while detached, or with --force without
    /// the server. Verified with the host's trusted keys; rolled back unless it proves
    /// healthy. Shows the activation's progress and log.
    Switch {
        /// The system's store path (build it, or `nix copy` it here, first).
        path: String,
        /// Switch without asking the server (for a host cut off from it). Undone once the
        /// server is reached again, unless the host is detached by then.
        #[arg(long)]
        force: bool,
    },
    /// End the detachment: back to the server's newest desired system.
    Attach,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once (Rust's default prints causes that repeat).
            eprintln!("error: {}", yeet_proto::text::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YEET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs in files and journald stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cli_socket = cli.socket;
    match cli.command {
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
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "yeet-agent",
                &mut std::io::stdout(),
            );
            Ok(())
        }
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
        Command::Local(command) => local_command(&cli_socket, command),
    }
}

/// The varlink reply's fields as the CLIs print JSON: snake_case (varlink's own casing,
/// camelCase, stays on the socket).
fn snake_case_keys(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let mut snake = String::with_capacity(key.len() + 4);
                    for c in key.chars() {
                        if c.is_ascii_uppercase() {
                            snake.push('_');
                            snake.push(c.to_ascii_lowercase());
                        } else {
                            snake.push(c);
                        }
                    }
                    (snake, snake_case_keys(value))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(snake_case_keys).collect()),
        other => other,
    }
}

/// Runs a command against the agent on `socket`.
fn local_command(socket: &std::path::Path, command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Status { json } => {
            let status = with_agent(socket, async |c| answer(c.get_status().await))?.status;
            if json {
                let fields = snake_case_keys(serde_json::to_value(&status)?);
                println!("{}", serde_json::to_string_pretty(&fields)?);
            } else {
                print_clean(status_table(&status));
            }
            Ok(())
        }
        LocalCommand::Log => {
            let reply = with_agent(socket, async |c| answer(c.get_log().await))?;
            print!("{}", reply.log);
            Ok(())
        }
        LocalCommand::CheckNow => {
            with_agent(socket, async |c| answer(c.check_now().await))?;
            println!("the agent checks in now");
            Ok(())
        }
        LocalCommand::Detach { reason } => {
            let reply = with_agent(socket, async |c| answer(c.detach(&reason).await))?;
            print_clean(format_args!(
                "detached: switch with `yeet-agent switch PATH`; `yeet-agent attach` returns to the fleet's system (reason: {})",
                reply.detachment.reason
            ));
            Ok(())
        }
        LocalCommand::Switch { path, force } => {
            let outcome = with_agent(socket, async |c| {
                switch_following(c, socket, &path, force, |p| {
                    if !p.phase.is_empty() && p.result.is_none() {
                        eprintln!("== {}", p.phase);
                    }
                    eprint!("{}", p.log);
                })
                .await
            })?;
            println!(
                "{} {}",
                outcome.result.as_deref().unwrap_or("done"),
                outcome.store_path
            );
            Ok(())
        }
        LocalCommand::Attach => {
            with_agent(socket, async |c| answer(c.attach().await))?;
            println!("attached: the host returns to the fleet's desired system");
            Ok(())
        }
    }
}

/// Prints text that carries strings from the server (its answers, detachment reasons)
/// without control or bidi characters: a hostile server must not drive the terminal of the
/// person at the machine.
fn print_clean(text: impl std::fmt::Display) {
    println!(
        "{}",
        yeet_proto::text::clean(&text.to_string(), usize::MAX, true)
    );
}

/// The status for people: one row per field, empty ones shown as `-`.
fn status_table(s: &Status) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let enrollment = match (&s.host, &s.verification_code) {
        (Some(host), _) => format!("{host} (approved)"),
        (None, Some(code)) => format!(
            "waiting for approval; verification code {code}\n(on an admin machine: yeet approve NAME {code})"
        ),
        (None, None) => "registering".into(),
    };
    let detached = s
        .detached
        .as_ref()
        .map(|d| format!("since {} by {}: {}", ago(Some(d.since)), d.user, d.reason));
    let activation = s
        .activation
        .as_ref()
        .map(|a| format!("{} of {} ({})", a.origin, a.store_path, a.phase));
    let last = s.last_result.as_ref().map(|l| {
        let when = ago(Some(l.finished_at));
        format!(
            "{} {} ({}, {when}): {}",
            l.result, l.store_path, l.origin, l.reason
        )
    });
    for (field, value) in [
        ("host", enrollment),
        ("server", s.server.clone()),
        ("key", s.key_id.clone()),
        ("state", s.state.clone()),
        ("attachment", s.attachment.clone()),
        ("detached", or_dash(detached.as_deref())),
        ("current system", or_dash(s.current_system.as_deref())),
        ("booted system", or_dash(s.booted_system.as_deref())),
        ("desired system", or_dash(s.desired_system.as_deref())),
        ("activation", or_dash(activation.as_deref())),
        ("last result", or_dash(last.as_deref())),
        ("last check-in", ago(s.last_checkin)),
        ("last error", or_dash(s.last_error.as_deref())),
    ] {
        t.add_row([field.to_owned(), value]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_is_well_formed_and_prints_its_help() {
        yeet_proto::cli_check::check_command_tree(Cli::command());
    }

    #[test]
    fn json_keys_are_snake_case_at_every_depth() {
        let varlink = serde_json::json!({"verificationCode": "ABCD", "lastResult":
            {"storePath": "/nix/store/x", "finishedAt": 1}, "hosts": [{"bootedSystem": null}]});
        assert_eq!(
            snake_case_keys(varlink),
            serde_json::json!({"verification_code": "ABCD", "last_result":
                {"store_path": "/nix/store/x", "finished_at": 1}, "hosts": [{"booted_system": null}]})
        );
    }
}
