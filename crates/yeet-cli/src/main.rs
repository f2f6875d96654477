//! `yeet`: the operator and CI command line. Every command is one signed API call (or a few),
//! printed as a table for people or as JSON with `--json`.

mod config;
mod flake;
mod output;
mod push;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use yeet_client::Client;
use yeet_proto::api::{
    Activation, ActivationLog, ApproveRequest, CreateReleaseRequest, HostInfo, PendingRegistration,
    RejectRequest, Release, RenameRequest, WhoAmI, paths,
};

#[derive(Parser)]
#[command(
    name = "yeet",
    version,
    about = "Operate a yeet fleet: approve hosts, publish systems, watch them converge.",
    after_help = "Configuration: ~/.config/yeet/config.toml (server, key, ca_cert), then YEET_SERVER / YEET_KEY / YEET_CA_CERT, then flags."
)]
struct Cli {
    /// Server URL, e.g. https://yeet.example.org:8470
    #[arg(long, env = "YEET_SERVER", global = true)]
    server: Option<String>,
    /// Your OpenSSH ed25519 private key. Default: ~/.config/yeet/key, then ~/.ssh/id_ed25519.
    #[arg(long, env = "YEET_KEY", global = true)]
    key: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the server's TLS certificate.
    #[arg(long, env = "YEET_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Config file. Default: ~/.config/yeet/config.toml
    #[arg(long, env = "YEET_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or show your signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show who the server thinks you are.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// List hosts waiting for approval (their codes are shown only on the hosts themselves).
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting host by the code it shows, and name it.
    Approve {
        /// Name for the host in the fleet.
        name: String,
        /// The code that yeet-agent prints on the host (stdout and its log).
        code: String,
    },
    /// Reject a waiting host for good, by its key fingerprint (see `yeet pending`).
    Reject { key_id: String },
    /// Fleet status: every host's state, current and desired system.
    Status {
        /// Show one host only.
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a host's latest activation and its log.
    Log {
        host: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a host's past activation attempts, newest first.
    History {
        host: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Rename or remove hosts.
    #[command(subcommand)]
    Host(HostCommand),
    /// Build hosts' systems from a flake (or take built paths), push them, create a release.
    Publish {
        /// Hosts to build and publish (names in the flake and in the fleet).
        hosts: Vec<String>,
        /// Every host the flake defines.
        #[arg(long, conflicts_with = "hosts")]
        all: bool,
        /// The flake to build from.
        #[arg(long, default_value = ".")]
        flake: String,
        /// HOST=/nix/store/...-system: skip building (CI that already built), repeatable.
        #[arg(long = "path", value_name = "HOST=STORE_PATH", conflicts_with_all = ["hosts", "all"])]
        paths: Vec<String>,
        /// What this release is about.
        #[arg(short, long, default_value = "")]
        message: String,
        /// Push the closures with `nix copy --to URL` (file://, s3://, ssh://, ...) instead of
        /// uploading them to the server's embedded cache.
        #[arg(long, value_name = "URL", conflicts_with = "push_cmd")]
        cache: Option<String>,
        /// Push with a tool of its own (e.g. 'cachix push NAME'); the store paths are appended.
        #[arg(long, value_name = "CMD")]
        push_cmd: Option<String>,
        /// With --push-cmd: where the server can read the pushed narinfos to check their
        /// signatures (e.g. https://NAME.cachix.org).
        #[arg(long, value_name = "URL", requires = "push_cmd")]
        cache_url: Option<String>,
        /// Sign what is uploaded to the embedded cache with this Nix secret key
        /// (otherwise the narinfos carry the signatures the local store has).
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List releases, newest first.
    Releases {
        /// Only releases that name this host.
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one release: hosts, systems, author, message.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Point hosts back at their previous systems, as a new release.
    Rollback {
        /// Hosts to roll back to the system before their newest release.
        #[arg(required_unless_present = "release", conflicts_with = "release")]
        hosts: Vec<String>,
        /// Roll back every host of this release to what it had before it.
        #[arg(long)]
        release: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Package-level difference between a host's current and desired systems
    /// (`nix store diff-closures`).
    Diff { host: String },
    /// Manage the server's embedded binary cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print shell completions, e.g. `yeet completions bash > /etc/bash_completion.d/yeet`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate an ed25519 key (OpenSSH format) for signing yeet requests.
    Generate {
        /// Where to write it. Default: ~/.config/yeet/key
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key and fingerprint of your key.
    Show,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Delete what no kept release references; reports the bytes freed.
    Gc {
        /// Keep the closures of each host's newest N releases.
        #[arg(long, default_value_t = 3)]
        keep: u32,
        /// Spare files younger than this many seconds (uploads of a publish in progress).
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Show a release by id.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Rename a host; its history follows it.
    Rename { old: String, new: String },
    /// Remove a host; its key stops working at once.
    Rm { name: String },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn connect(cli: &Cli) -> Result<Client> {
    let file = config::load(cli.config.as_deref())?;
    let server = cli
        .server
        .clone()
        .or(file.server.clone())
        .context("no server configured: pass --server URL, set YEET_SERVER, or put `server = \"URL\"` in ~/.config/yeet/config.toml")?;
    let key = config::resolve_key(cli.key.clone(), &file)?;
    let identity = yeet_client::load_identity(&key)?;
    let ca = cli.ca_cert.clone().or(file.ca_cert);
    Ok(Client::new(
        &server,
        identity,
        ca.as_deref(),
        Duration::from_secs(60),
    )?)
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Key(KeyCommand::Generate { out }) => {
            let path = out
                .clone()
                .or_else(config::default_key_path)
                .context("cannot find a home directory; pass --out FILE")?;
            let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
            let id = yeet_client::generate_identity_file(&path, &format!("{user}@yeet"))
                .with_context(|| {
                    format!(
                        "not overwriting {}; remove it first or pass --out",
                        path.display()
                    )
                })?;
            println!("wrote {} and {}.pub", path.display(), path.display());
            println!("fingerprint: {}", id.public().key_id());
            println!("\nOn the server host, make this key an admin with:");
            println!(
                "  yeet-server admin add {user} --key '{}'",
                id.public().to_openssh()
            );
        }
        Command::Key(KeyCommand::Show) => {
            let file = config::load(cli.config.as_deref())?;
            let key = config::resolve_key(cli.key.clone(), &file)?;
            let id = yeet_client::load_identity(&key)?;
            println!("{}\n{}", id.public().to_openssh(), id.public().key_id());
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "yeet", &mut std::io::stdout());
        }
        Command::Whoami { json } => {
            let me: WhoAmI = connect(&cli)?.get(paths::WHOAMI)?;
            if *json {
                output::json(&me)?;
            } else {
                println!("{} ({}) {}", me.name, me.role.as_str(), me.key_id);
            }
        }
        Command::Pending { json } => {
            let pending: Vec<PendingRegistration> = connect(&cli)?.get(paths::REGISTRATIONS)?;
            if *json {
                return output::json(&pending);
            }
            if pending.is_empty() {
                println!("no hosts are waiting for approval");
                return Ok(());
            }
            let mut t = output::table([
                "HOSTNAME HINT",
                "KEY",
                "OS/ARCH",
                "AGENT",
                "WAITING SINCE",
                "CODE",
            ]);
            for p in &pending {
                let code = if p.code_expired {
                    "expired (host will refresh)"
                } else {
                    "valid"
                };
                t.add_row([
                    &p.hostname_hint,
                    &p.key_id,
                    &format!("{}/{}", p.facts.os, p.facts.arch),
                    &p.facts.agent_version,
                    &output::ago(Some(p.first_seen)),
                    code,
                ]);
            }
            output::print_clean(format_args!(
                "{t}\nApprove with: yeet approve NAME CODE   (yeet-agent prints the code on the host)"
            ));
        }
        Command::Approve { name, code } => {
            let host: HostInfo = connect(&cli)?.post(
                paths::APPROVE,
                &ApproveRequest {
                    code: code.clone(),
                    name: name.clone(),
                },
            )?;
            println!("approved {} ({})", host.name, host.key_id);
        }
        Command::Reject { key_id } => {
            let _: serde_json::Value = connect(&cli)?.post(
                paths::REJECT,
                &RejectRequest {
                    key_id: key_id.clone(),
                },
            )?;
            println!("rejected {key_id}; this key cannot register again");
        }
        Command::Status { host, json } => {
            let client = connect(&cli)?;
            let hosts: Vec<HostInfo> = match host {
                Some(h) => vec![client.get(&paths::host(h))?],
                None => client.get(paths::HOSTS)?,
            };
            if *json {
                return output::json(&hosts);
            }
            // Hosts waiting for approval are part of the fleet's picture too.
            let pending: Vec<PendingRegistration> = if host.is_none() {
                client.get(paths::REGISTRATIONS)?
            } else {
                Vec::new()
            };
            if hosts.is_empty() && pending.is_empty() {
                output::print_clean(format_args!(
                    "no hosts yet: start yeet-agent on a host, then `yeet pending` and `yeet approve`"
                ));
                return Ok(());
            }
            if let (Some(_), [h]) = (host, hosts.as_slice()) {
                output::print_clean(format_args!("{}", output::host_detail(h)));
                return Ok(());
            }
            let mut t = output::table([
                "HOST",
                "STATE",
                "CURRENT",
                "DESIRED",
                "LAST RESULT",
                "LAST SEEN",
                "AGENT",
            ]);
            for h in &hosts {
                let desired = match (&h.desired_system, &h.current_system) {
                    (Some(d), Some(c)) if d == c => "= current".to_owned(),
                    (d, _) => output::short_path(d.as_deref()),
                };
                t.add_row([
                    &h.name,
                    h.state.as_str(),
                    &output::short_path(h.current_system.as_deref()),
                    &desired,
                    h.last_result.map(|r| r.as_str()).unwrap_or("-"),
                    &output::ago(h.last_seen),
                    &h.facts.agent_version,
                ]);
            }
            for p in &pending {
                let name = format!("({})", p.hostname_hint);
                t.add_row([
                    name.as_str(),
                    "pending",
                    "-",
                    "-",
                    "-",
                    &output::ago(Some(p.last_seen)),
                    &p.facts.agent_version,
                ]);
            }
            output::print_clean(format_args!("{t}"));
        }
        Command::Release(ReleaseCommand::Show { id, json }) => {
            let release: Release = connect(&cli)?.get(&paths::release(&id.to_string()))?;
            if *json {
                return output::json(&release);
            }
            output::print_clean(format_args!(
                "release {} by {} ({}): {}",
                release.id,
                release.author,
                output::ago(Some(release.created_at)),
                release.message
            ));
            let mut t = output::table(["HOST", "SYSTEM"]);
            for (h, p) in &release.hosts {
                t.add_row([h, p]);
            }
            output::print_clean(format_args!("{t}"));
        }
        Command::Rollback {
            hosts,
            release,
            json,
        } => {
            let req = yeet_proto::api::RollbackRequest {
                hosts: hosts.clone(),
                release: *release,
            };
            let created: Release = connect(&cli)?.post(paths::ROLLBACK, &req)?;
            if *json {
                return output::json(&created);
            }
            output::print_clean(format_args!(
                "release {} created: {}",
                created.id, created.message
            ));
            for (h, p) in &created.hosts {
                output::print_clean(format_args!("  {h} -> {p}"));
            }
        }
        Command::Diff { host } => {
            yeet_proto::names::validate_host_name(host)?;
            let client = connect(&cli)?;
            let h: HostInfo = client.get(&paths::host(host))?;
            let (Some(current), Some(desired)) = (&h.current_system, &h.desired_system) else {
                bail!(
                    "nothing to compare: {host} has no current system yet, or no release names it"
                );
            };
            if current == desired {
                println!("{host} runs its desired system {desired}");
                return Ok(());
            }
            let cache = format!("{}/cache", client.base_url());
            for path in [current, desired] {
                push::ensure_local(path, &cache)?;
            }
            print!("{}", push::diff_closures(current, desired)?);
        }
        Command::Cache(CacheCommand::Gc {
            keep,
            grace_secs,
            json,
        }) => {
            let req = yeet_proto::api::CacheGcRequest {
                keep: *keep,
                grace_secs: *grace_secs,
            };
            let report: yeet_proto::api::CacheGcReport =
                connect(&cli)?.post(paths::CACHE_GC, &req)?;
            if *json {
                return output::json(&report);
            }
            output::print_clean(format_args!(
                "kept {} store paths, deleted {} ({} files), freed {} bytes",
                report.kept_paths, report.deleted_paths, report.deleted_files, report.bytes_freed
            ));
        }
        Command::Log { host, json } => {
            yeet_proto::names::validate_host_name(host)?;
            let log: ActivationLog = connect(&cli)?.get(&paths::host_log(host))?;
            if *json {
                return output::json(&log);
            }
            let a = &log.activation;
            output::print_clean(format_args!(
                "{} {} {} ({}): {}",
                a.host,
                a.result.as_str(),
                a.store_path,
                output::ago(Some(a.finished_at)),
                a.reason
            ));
            output::print_clean(format_args!("{}", log.log.trim_end()));
        }
        Command::History { host, limit, json } => {
            yeet_proto::names::validate_host_name(host)?;
            let history: Vec<Activation> =
                connect(&cli)?.get(&format!("{}?limit={limit}", paths::host_activations(host)))?;
            if *json {
                return output::json(&history);
            }
            let mut t = output::table(["WHEN", "RESULT", "SYSTEM", "RELEASE", "REASON"]);
            for a in &history {
                let release = a
                    .release_id
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into());
                t.add_row([
                    &output::ago(Some(a.finished_at)),
                    a.result.as_str(),
                    &output::short_path(Some(&a.store_path)),
                    &release,
                    &a.reason,
                ]);
            }
            output::print_clean(format_args!("{t}"));
        }
        Command::Host(HostCommand::Rename { old, new }) => {
            let h: HostInfo = connect(&cli)?.post(
                &paths::host_rename(old),
                &RenameRequest {
                    new_name: new.clone(),
                },
            )?;
            println!("renamed {old} to {}", h.name);
        }
        Command::Host(HostCommand::Rm { name }) => {
            let _: serde_json::Value = connect(&cli)?.delete(&paths::host(name))?;
            println!("removed {name}");
        }
        Command::Publish {
            hosts: names,
            all,
            flake,
            paths: pairs,
            message,
            cache,
            push_cmd,
            cache_url,
            signing_key,
            json,
        } => {
            let client = connect(&cli)?;
            let mut hosts = BTreeMap::new();
            let (mut revision, mut dirty) = (None, false);
            if pairs.is_empty() {
                let wanted = if *all {
                    flake::hosts_in(flake)?
                } else {
                    names.clone()
                };
                if wanted.is_empty() {
                    bail!(
                        "nothing to publish: name hosts, pass --all, or give --path HOST=/nix/store/..."
                    );
                }
                let fleet: Vec<HostInfo> = client.get(paths::HOSTS)?;
                let known: Vec<&str> = fleet.iter().map(|h| h.name.as_str()).collect();
                let unknown: Vec<&str> = wanted
                    .iter()
                    .map(String::as_str)
                    .filter(|h| !known.contains(h))
                    .collect();
                if !unknown.is_empty() {
                    bail!(
                        "not approved in the fleet: {}; approved hosts: {} (enroll them with yeet-agent and `yeet approve`)",
                        unknown.join(", "),
                        known.join(", ")
                    );
                }
                let built = flake::build(flake, &wanted)?;
                eprintln!(
                    "built {} distinct system(s) for {} host(s)",
                    built.distinct,
                    built.systems.len()
                );
                hosts = built.systems;
                revision = built.revision;
                dirty = built.dirty;
            }
            for pair in pairs {
                let (host, path) = pair
                    .split_once('=')
                    .with_context(|| format!("--path {pair:?}: expected HOST=/nix/store/..."))?;
                path.parse::<nix_meta::StorePath>()
                    .with_context(|| format!("--path {pair:?}"))?;
                yeet_proto::names::validate_host_name(host)?;
                if hosts.insert(host.to_owned(), path.to_owned()).is_some() {
                    bail!("host {host} is given twice");
                }
            }
            let target = match (cache, push_cmd) {
                (Some(url), _) => push::Target::Cache(url.clone()),
                (None, Some(cmd)) => push::Target::Command(cmd.clone()),
                (None, None) => push::Target::Embedded {
                    signing_key: signing_key.clone(),
                },
            };
            let mut systems: Vec<String> = hosts.values().cloned().collect();
            // One system may serve hundreds of hosts: push each once.
            systems.sort();
            systems.dedup();
            let pushed = push::push(&client, &target, &systems)?;
            if !*json {
                eprintln!(
                    "pushed {pushed} store path(s) for {} system(s)",
                    systems.len()
                );
            }
            let release: Release = client.post(
                paths::RELEASES,
                &CreateReleaseRequest {
                    hosts,
                    message: message.clone(),
                    // Where the server checks the signatures: the cache pushed to, without
                    // query parameters such as ?secret-key=.
                    cache: cache
                        .as_ref()
                        .or(cache_url.as_ref())
                        .map(|u| u.split('?').next().unwrap_or(u).to_owned()),
                    revision,
                    dirty,
                },
            )?;
            if *json {
                return output::json(&release);
            }
            output::print_clean(format_args!(
                "release {} created for {} host(s)",
                release.id,
                release.hosts.len()
            ));
        }
        Command::Releases { host, limit, json } => {
            let mut q = format!("{}?limit={limit}", paths::RELEASES);
            if let Some(h) = host {
                yeet_proto::names::validate_host_name(h)?;
                q.push_str(&format!("&host={h}"));
            }
            let releases: Vec<Release> = connect(&cli)?.get(&q)?;
            if *json {
                return output::json(&releases);
            }
            let mut t = output::table(["ID", "WHEN", "AUTHOR", "HOSTS", "MESSAGE"]);
            for r in &releases {
                let hosts: Vec<String> = r
                    .hosts
                    .iter()
                    .map(|(h, p)| format!("{h}: {}", output::short_path(Some(p))))
                    .collect();
                t.add_row([
                    &r.id.to_string(),
                    &output::ago(Some(r.created_at)),
                    &r.author,
                    &hosts.join("\n"),
                    &r.message,
                ]);
            }
            output::print_clean(format_args!("{t}"));
        }
    }
    Ok(())
}
