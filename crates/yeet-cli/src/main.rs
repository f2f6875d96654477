//! `yeet`: the operator and CI command line. Every command is one signed API call (or a few),
//! printed as a table for people or as JSON with `--json`. Each command lives in its own
//! module under `commands/`; this file declares the command line and dispatches.

mod commands;
mod config;
mod flake;
mod output;
mod pack;
mod push;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use commands::{
    Connection, Json, approve, cache, diff, host, key, log, osquery, pending, publish, releases,
    secret, status, vm, whoami,
};

#[derive(Parser)]
#[command(
    name = "yeet",
    version,
    about = "Operate a yeet fleet: approve hosts, publish systems, watch them converge.",
    after_help = "Configuration: ~/.config/yeet/config.toml (server, key, ca_cert), then YEET_SERVER / YEET_KEY / YEET_CA_CERT, then flags."
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or show your signing key.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Show who the server thinks you are.
    Whoami(Json),
    /// List hosts waiting for approval (their codes are shown only on the hosts themselves).
    Pending(Json),
    /// Approve a waiting host by the code it shows, and name it.
    Approve(approve::ApproveArgs),
    /// Reject a waiting host for good, by its key fingerprint (see `yeet pending`).
    Reject(approve::RejectArgs),
    /// Fleet status: every host's state, current and desired system.
    Status(status::StatusArgs),
    /// Show a host's latest activation and its log.
    Log(log::LogArgs),
    /// Show a host's past activation attempts, newest first.
    History(log::HistoryArgs),
    /// Show hosts, set their policy, rename or remove them.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// End a detached host's detachment: it returns to its desired system.
    Attach(host::AttachArgs),
    /// Build hosts' systems from a flake (or take built paths), push them, create a release.
    Publish(publish::PublishArgs),
    /// List releases, newest first.
    Releases(releases::ReleasesArgs),
    /// Show one release: hosts, systems, author, message.
    #[command(subcommand)]
    Release(releases::ReleaseCommand),
    /// Point hosts back at their previous systems, as a new release.
    Rollback(releases::RollbackArgs),
    /// Offer hosts their desired system once more, after fixing why they failed or refused it.
    Retry(releases::RetryArgs),
    /// Package-level difference between a host's current and desired systems
    /// (`nix store diff-closures`).
    Diff(diff::DiffArgs),
    /// Manage the server's embedded binary cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Secrets: encrypted here to the server, granted to hosts, delivered at activation and
    /// rotated without a release. Systems name theirs with `yeet.secrets.<name>`.
    #[command(subcommand, after_help = SECRET_WORKFLOW)]
    Secret(secret::SecretCommand),
    /// osquery: enrolled nodes, the schedule and options they are served, stored logs.
    #[command(subcommand)]
    Osquery(osquery::OsqueryCommand),
    /// Run SQL on osquery nodes now and print each host's rows as they arrive.
    Query(osquery::QueryArgs),
    /// Carve a file from a host with osquery, and wait for its upload.
    Carve(osquery::CarveArgs),
    /// Carved files: list them, download one.
    #[command(subcommand)]
    Carves(osquery::CarvesCommand),
    /// Try a host's configuration in a VM (NixOS only): builds
    /// nixosConfigurations.HOST.config.system.build.vm from the flake and runs it.
    Vm(vm::VmArgs),
    /// Print shell completions, e.g. `yeet completions bash > /etc/bash_completion.d/yeet`.
    Completions { shell: clap_complete::Shell },
}

const SECRET_WORKFLOW: &str = "\
Workflow:
  yeet secret add db-password --from-file ./db-password --host db-1
  # in db-1's NixOS configuration:
  #   yeet.secrets.db-password = { owner = \"postgres\"; restartUnits = [ \"postgresql.service\" ]; };
  #   ... passwordFile = config.yeet.secrets.db-password.path;
  yeet publish ...                # db-1 gets /run/yeet/secrets/db-password before its switch
  yeet secret rotate db-password --stdin < ./new-password   # no release needed

Only admins change secrets; viewers see names, versions and grants, never content.";

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(&cli) {
        eprintln!("error: {}", yeet_proto::text::error_chain(e.as_ref()));
        if let Some(hint) = next_step(&e, &cli.connection) {
            eprintln!("{hint}");
        }
        std::process::exit(1);
    }
}

/// What to do next, for a server's refusal whose fix can be said from here.
fn next_step(e: &anyhow::Error, connection: &commands::Connection) -> Option<String> {
    let code = e
        .chain()
        .find_map(|cause| cause.downcast_ref::<yeet_client::ClientError>())
        .and_then(yeet_client::ClientError::api_code)?;
    match code {
        yeet_proto::ErrorCode::UnknownKey => {
            let path = connection.key_path().ok()?;
            let public = yeet_client::load_identity(&path).ok()?.public().clone();
            Some(format!(
                "The server knows no user with the key you signed with, {} ({}). On the server host, an admin adds it:\n  yeet-server admin add NAME --role viewer|publisher|admin --key '{}'",
                public.key_id(),
                path.display(),
                public.to_openssh()
            ))
        }
        _ => None,
    }
}

fn dispatch(cli: &Cli) -> Result<()> {
    let c = &cli.connection;
    match &cli.command {
        Command::Key(command) => key::run(command, c),
        Command::Whoami(args) => whoami::run(args, c),
        Command::Pending(args) => pending::run(args, c),
        Command::Approve(args) => approve::approve(args, c),
        Command::Reject(args) => approve::reject(args, c),
        Command::Status(args) => status::run(args, c),
        Command::Log(args) => log::log(args, c),
        Command::History(args) => log::history(args, c),
        Command::Host(command) => host::run(command, c),
        Command::Attach(args) => host::attach(args, c),
        Command::Publish(args) => publish::run(args, c),
        Command::Releases(args) => releases::list(args, c),
        Command::Release(command) => releases::show(command, c),
        Command::Rollback(args) => releases::rollback(args, c),
        Command::Retry(args) => releases::retry(args, c),
        Command::Diff(args) => diff::run(args, c),
        Command::Cache(command) => cache::run(command, c),
        Command::Secret(command) => secret::run(command, c),
        Command::Osquery(command) => osquery::run(command, c),
        Command::Query(args) => osquery::query(args, c),
        Command::Carve(args) => osquery::carve(args, c),
        Command::Carves(command) => osquery::carves(command, c),
        Command::Vm(args) => vm::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "yeet", &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_well_formed_and_prints_its_help() {
        yeet_proto::cli_check::check_command_tree(Cli::command());
    }
}
