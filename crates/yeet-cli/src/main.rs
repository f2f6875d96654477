//! `yeet`: the operator and CI command line. Every command is one signed API call (or a few),
//! printed as a table for people or as JSON with `--json`. Each command lives in its own
//! module under `commands/`; this file declares the command line and dispatches.

mod commands;
mod completion;
mod config;
mod flake;
mod output;
mod pack;
mod push;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use commands::{
    Connection, Json, approve, audit, cache, diff, host, key, log, osquery, pending, publish,
    releases, rollout, secret, status, user, vm, wait, whoami, window,
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
    /// Manage users: roles, scopes by tag, keys (admins who act on the whole fleet).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Build hosts' systems from a flake (or take built paths), push them, create a release.
    Publish(publish::PublishArgs),
    /// List releases, newest first.
    Releases(releases::ReleasesArgs),
    /// Follow a release until every host it names has switched and confirmed, failed, or
    /// run out of time; exits 0 when it landed everywhere, 3 when a host failed, 4 on timeout.
    Wait(wait::WaitArgs),
    /// Show one release: hosts, systems, author, message.
    #[command(subcommand)]
    Release(releases::ReleaseCommand),
    /// Point hosts back at their previous systems, as a new release (at once, whatever
    /// the rollout policy).
    Rollback(releases::RollbackArgs),
    /// Staged rollouts: policies (waves, bake, failure threshold), status, pause, resume,
    /// abort, promote.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// List rollouts, newest first.
    Rollouts(rollout::RolloutsArgs),
    /// Maintenance windows: when hosts carrying their tags may start an activation.
    #[command(subcommand)]
    Window(window::WindowCommand),
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
    /// The audit log: who did what, when, from where; newest last. `yeet audit verify`
    /// checks its hash chain.
    Audit(audit::AuditArgs),
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
    // A shell asking for completions (through the script `yeet completions` printed) is
    // answered here, and the process ends.
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(completion::COMPLETE_VAR)
        .complete();
    let cli = Cli::parse();
    if let Err(e) = dispatch(&cli) {
        eprintln!("error: {}", yeet_proto::text::error_chain(e.as_ref()));
        if let Some(hint) = next_step(&e, &cli.connection) {
            eprintln!("{hint}");
        }
        // A release that did not land has exit codes of its own, for CI to tell apart.
        let code = e
            .downcast_ref::<wait::NotLanded>()
            .map_or(1, |not_landed| not_landed.exit_code);
        std::process::exit(code);
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
        Command::User(command) => user::run(command, c),
        Command::Publish(args) => publish::run(args, c),
        Command::Wait(args) => wait::run(args, c),
        Command::Releases(args) => releases::list(args, c),
        Command::Release(command) => releases::show(command, c),
        Command::Rollback(args) => releases::rollback(args, c),
        Command::Retry(args) => releases::retry(args, c),
        Command::Rollout(command) => rollout::run(command, c),
        Command::Rollouts(args) => rollout::list(args, c),
        Command::Window(command) => window::run(command, c),
        Command::Diff(args) => diff::run(args, c),
        Command::Cache(command) => cache::run(command, c),
        Command::Secret(command) => secret::run(command, c),
        Command::Osquery(command) => osquery::run(command, c),
        Command::Query(args) => osquery::query(args, c),
        Command::Carve(args) => osquery::carve(args, c),
        Command::Carves(command) => osquery::carves(command, c),
        Command::Vm(args) => vm::run(args),
        Command::Audit(args) => audit::run(args, c),
        Command::Completions { shell } => completion::print_registration(*shell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_well_formed_and_prints_its_help() {
        yeet_proto::cli_check::check_command_tree(Cli::command());
    }

    /// Words as a POSIX shell splits them, for the README's simple lines: blanks separate,
    /// single and double quotes group.
    fn shell_words(line: &str) -> Vec<String> {
        let (mut words, mut word, mut quote, mut started) =
            (Vec::new(), String::new(), None, false);
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    started = true;
                }
                (None, c) if c.is_whitespace() => {
                    if started {
                        words.push(std::mem::take(&mut word));
                        started = false;
                    }
                }
                (None, c) => {
                    word.push(c);
                    started = true;
                }
            }
        }
        if started {
            words.push(word);
        }
        words
    }

    /// The `yeet …` commands in the README's code blocks, with their line numbers and
    /// whether they are examples (a `sh` block: real values) or synopses (placeholders).
    /// A line may hold several, separated by wide gaps; a `#` comment and a `< file`
    /// redirection end one.
    fn readme_commands() -> Vec<(usize, bool, String)> {
        let readme = include_str!("../../../README.md");
        let (mut found, mut block) = (Vec::new(), None::<bool>);
        for (i, line) in readme.lines().enumerate() {
            let text = line.trim();
            if let Some(lang) = text.strip_prefix("```") {
                block = match block {
                    None => Some(lang == "sh"),
                    Some(_) => None,
                };
                continue;
            }
            let Some(example) = block else { continue };
            let text = text.strip_prefix("$ ").unwrap_or(text);
            let text = text.split(" # ").next().unwrap_or(text);
            for part in text.split("     ") {
                let part = part.trim();
                let part = part.split(" < ").next().unwrap_or(part);
                if part.starts_with("yeet ") {
                    found.push((i + 1, example, part.to_owned()));
                }
            }
        }
        found
    }

    /// Every `yeet` command the README shows is one this CLI accepts: examples parse as
    /// they are written (optional `[--json]` left out), and in synopses every subcommand
    /// and `--flag` exists where it is written. The README and the CLI cannot drift apart.
    #[test]
    fn the_readmes_commands_are_the_clis() {
        let commands = readme_commands();
        assert!(commands.len() > 40, "too few found: {commands:?}");
        let mut wrong = Vec::new();
        for (line, example, text) in &commands {
            if *example {
                let words: Vec<String> = shell_words(text)
                    .into_iter()
                    .filter(|w| !(w.starts_with('[') && w.ends_with(']')))
                    .collect();
                if let Err(e) = Cli::try_parse_from(&words) {
                    wrong.push(format!("README line {line}: `{text}`: {:?}", e.kind()));
                }
                continue;
            }
            let mut command = Cli::command();
            command.build();
            let mut at = &command;
            let words = shell_words(text);
            // Alternatives (`[HOST…|--all]`) are checked each.
            for word in words.iter().skip(1).flat_map(|w| w.split('|')) {
                let word = word.trim_start_matches(['[', '(']);
                if let Some(flag) = word.strip_prefix("--") {
                    let flag: String = flag
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if !flag.is_empty()
                        && !at
                            .get_arguments()
                            .any(|a| a.get_long() == Some(flag.as_str()))
                    {
                        wrong.push(format!(
                            "README line {line}: `{}` has no --{flag}",
                            at.get_name()
                        ));
                    }
                } else if let Some(sub) = at.find_subcommand(word) {
                    at = sub;
                }
            }
            if at.is_subcommand_required_set() {
                wrong.push(format!(
                    "README line {line}: `{text}` stops at `{}`, which needs a subcommand",
                    at.get_name()
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn shell_words_group_quotes() {
        assert_eq!(
            shell_words(r#"yeet query 'SELECT * FROM x' -m "a b"  --all"#),
            ["yeet", "query", "SELECT * FROM x", "-m", "a b", "--all"]
        );
    }
}
