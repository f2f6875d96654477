//! The `yeet-server` binary: runs the control plane, and manages operators offline on the
//! server host (there is deliberately no way to create the first admin over the network).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use comfy_table::Table;
use std::path::Path;
use yeet_proto::api::Role;
use yeet_server::config::{Config, ServerArgs};

#[derive(Parser)]
#[command(
    name = "yeet-server",
    version,
    about = "The yeet control plane: enrollment, releases and desired state for NixOS fleets."
)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Check a config file without starting anything: unknown keys, wrong types, invalid
    /// values and a TLS key in the Nix store are errors (the NixOS module runs this at
    /// build time).
    CheckConfig {
        /// The file to check.
        #[arg(required_unless_present = "list_keys")]
        file: Option<std::path::PathBuf>,
        /// Print the keys a config file may contain, one per line.
        #[arg(long)]
        list_keys: bool,
    },
    /// Manage operators directly in the database, on the server host.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The audit log, read from the database directly.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the age recipient secrets are encrypted to, read from the server's own key, for
    /// operators to compare with what `yeet secret add` pinned (or to pass as --recipient).
    SecretsRecipient,
    /// Print shell completions, e.g. `yeet-server completions bash >
    /// /etc/bash_completion.d/yeet-server`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the whole hash chain in the database (no server needed): exits 1 naming the
    /// first event that was altered, removed, inserted or moved.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add an operator with an OpenSSH ed25519 public key.
    Add {
        /// User name (lower case).
        name: String,
        /// Public key line (`ssh-ed25519 AAAA...`) or a file containing one.
        #[arg(long)]
        key: String,
        /// admin, publisher (CI: may publish) or viewer (read only).
        #[arg(long, default_value = "admin")]
        role: Role,
    },
    /// List operators.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator; running servers stop accepting the key within 30 seconds.
    Rm { name: String },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once (Rust's default prints causes that repeat).
            eprintln!("error: {}", yeet_proto::text::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YEET_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs in files and journald stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // check-config reads only the named file: the default config, environment and flags
    // play no part, and a broken default config must not stop it.
    let config = || Config::resolve(&cli.server);
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { file, list_keys } => {
            if list_keys {
                for key in yeet_server::config::file_keys() {
                    println!("{key}");
                }
            }
            if let Some(file) = file {
                let checked = yeet_server::config::check_file(&file)?;
                println!(
                    "{}: ok (listen {}, {})",
                    file.display(),
                    checked.listen,
                    if checked.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    }
                );
            }
        }
        Command::Audit(AuditCommand::Verify { json }) => {
            let store = yeet_server::open_store(&config()?).await?;
            let events = store.audit_chain().await?;
            let outcome = yeet_proto::audit::verify_chain(&events);
            if json {
                println!(
                    "{}",
                    yeet_proto::audit::verification_json(&events, &outcome)
                );
            }
            match outcome {
                Ok(()) if !json => println!(
                    "the audit log is intact: {} events, head {}",
                    events.len(),
                    events.last().map_or("(none)", |e| e.hash.as_str())
                ),
                Ok(()) => {}
                Err(problem) => anyhow::bail!("the audit log was tampered with: {problem}"),
            }
        }
        Command::Serve => {
            let config = config()?;
            let tls = config.tls.is_some();
            yeet_server::serve(
                config,
                |addr| {
                    let scheme = if tls { "https" } else { "http" };
                    println!("yeet-server listening on {scheme}://{addr}");
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Admin(cmd) => admin(config()?, cmd).await?,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "yeet-server", &mut std::io::stdout());
        }
        Command::SecretsRecipient => {
            let config = config()?;
            let store = yeet_server::open_store(&config).await?;
            let (key, _) = yeet_server::service::secrets::SecretKeeper::source(&config.secrets_key);
            let keeper = yeet_server::service::secrets::SecretKeeper::load(&key, false, &store)
                .await
                .with_context(|| format!("cannot read the secrets key {}", key.display()))?;
            println!("{}", keeper.recipient());
            store.close().await;
        }
    }
    Ok(())
}

async fn admin(config: Config, cmd: AdminCommand) -> Result<()> {
    let store = yeet_server::open_store(&config).await?;
    match cmd {
        AdminCommand::Add { name, key, role } => {
            let line = if Path::new(&key).is_file() {
                std::fs::read_to_string(&key)
                    .with_context(|| format!("cannot read key file {key}"))?
            } else {
                key
            };
            use yeet_server::service::{audit, users};
            let event = audit::local_entry("user.add", users::add_event(&name, &line, role, &[]));
            let user = users::add_user(&store, &name, &line, role, &[], &event).await?;
            let key_id = yeet_proto::PublicIdentity::from_openssh(&line)
                .map(|p| p.key_id().to_owned())
                .unwrap_or_default();
            // Which database, since a forgotten --state-dir or --config writes to the default.
            println!(
                "added {} {} ({key_id}) to the database at {}",
                user.role.0.as_str(),
                user.name,
                yeet_server::store::without_password(&config.database)
            );
        }
        AdminCommand::List { json } => {
            let users = store.list_users().await?;
            let keys = store.list_user_keys().await?;
            let keys_of = |id: i64| -> Vec<&str> {
                keys.iter()
                    .filter(|k| k.user_id == id)
                    .map(|k| k.key_id.as_str())
                    .collect()
            };
            if json {
                let v: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "role": u.role.0, "tags": yeet_server::store::split_tags(&u.tags), "key_ids": keys_of(u.id), "created_at": u.created_at}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut t = Table::new();
                t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
                    .set_header(["NAME", "ROLE", "SCOPE", "KEYS"]);
                for u in &users {
                    let scope = if u.tags.is_empty() {
                        "all hosts"
                    } else {
                        u.tags.as_str()
                    };
                    t.add_row([
                        u.name.as_str(),
                        u.role.0.as_str(),
                        scope,
                        &keys_of(u.id).join("\n"),
                    ]);
                }
                println!("{t}");
            }
        }
        AdminCommand::Rm { name } => {
            use yeet_server::service::{audit, users};
            use yeet_server::store::UserChange;
            let (action, details) = users::change_event(&name, &UserChange::Remove);
            let event = audit::local_entry(action, details);
            users::change_user(&store, &name, &UserChange::Remove, &event).await?;
            println!(
                "removed {name} from the database at {}",
                yeet_server::store::without_password(&config.database)
            );
        }
    }
    store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_is_well_formed_and_prints_its_help() {
        yeet_proto::cli_check::check_command_tree(Cli::command());
    }

    /// The completions know the subcommands and their options.
    #[test]
    fn completions_cover_the_commands() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "yeet-server",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for word in [
            "admin",
            "check-config",
            "secrets-recipient",
            "--state-dir",
            "--role",
        ] {
            assert!(script.contains(word), "{word} is missing");
        }
    }
}
