//! `yeet releases`, `yeet release show ID` and `yeet rollback`.

use anyhow::Result;
use clap::Subcommand;
use yeet_proto::api::{ReleaseFilter, RetryRequest, RollbackRequest};
use yeet_proto::names::validate_host_name;

use super::{Connection, Json};
use crate::output;

#[derive(clap::Args)]
pub struct ReleasesArgs {
    /// Only releases that name this host.
    #[arg(add = crate::completion::host_arg(), long)]
    pub host: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    #[command(flatten)]
    pub json: Json,
}

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Show a release by id.
    Show {
        id: i64,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// Hosts to roll back to the system before their newest release.
    #[arg(add = crate::completion::host_arg(), required_unless_present = "release", conflicts_with = "release")]
    pub hosts: Vec<String>,
    /// Roll back every host of this release to what it had before it.
    #[arg(long)]
    pub release: Option<i64>,
    #[command(flatten)]
    pub json: Json,
}

#[derive(clap::Args)]
pub struct RetryArgs {
    /// Hosts to offer their desired system once more.
    #[arg(add = crate::completion::host_arg(), required = true)]
    pub hosts: Vec<String>,
    #[command(flatten)]
    pub json: Json,
}

pub fn list(args: &ReleasesArgs, connection: &Connection) -> Result<()> {
    if let Some(h) = &args.host {
        validate_host_name(h)?;
    }
    let filter = ReleaseFilter {
        host: args.host.clone(),
        limit: Some(args.limit),
    };
    let releases = connection.connect()?.releases(&filter)?;
    if args.json.json {
        return output::json(&releases);
    }
    if output::said_empty(
        &releases,
        "no releases yet; publish one with `yeet publish HOST…` (or --all, or --path HOST=PATH)",
    ) {
        return Ok(());
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
    Ok(())
}

pub fn show(command: &ReleaseCommand, connection: &Connection) -> Result<()> {
    let ReleaseCommand::Show { id, json } = command;
    let release = connection.connect()?.release(*id)?;
    if json.json {
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
    Ok(())
}

pub fn rollback(args: &RollbackArgs, connection: &Connection) -> Result<()> {
    let created = connection.connect()?.rollback(&RollbackRequest {
        hosts: args.hosts.clone(),
        release: args.release,
    })?;
    if args.json.json {
        return output::json(&created);
    }
    output::print_clean(format_args!(
        "release {} created: {}",
        created.id, created.message
    ));
    for (h, p) in &created.hosts {
        output::print_clean(format_args!("  {h} -> {p}"));
    }
    Ok(())
}

/// `yeet retry`: a host does not try a system again once it failed, rolled back or refused
/// it; after fixing the cause by hand, this offers it once more.
pub fn retry(args: &RetryArgs, connection: &Connection) -> Result<()> {
    for h in &args.hosts {
        validate_host_name(h)?;
    }
    let answer = connection.connect()?.retry(&RetryRequest {
        hosts: args.hosts.clone(),
    })?;
    if args.json.json {
        return output::json(&answer);
    }
    output::print_clean(format_args!(
        "offered again at the next check-in: {}",
        answer.retried.join(", ")
    ));
    Ok(())
}
