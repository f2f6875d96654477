//! `yeet audit`: who did what, when, from where (the server's hash-chained audit log), and
//! `yeet audit verify`, which checks the chain here, on this machine, and remembers the
//! newest event it verified so that a later rewrite of the history shows.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use yeet_proto::audit::{AuditEvent, AuditFilter, check_pinned_head, verify_chain};
use yeet_proto::text::clean_line;

use super::{Connection, Json};
use crate::output;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain (unscoped admins): every event's hash, every link, and that
    /// the newest event verified here before is still there. Exits 1 naming the first
    /// event that was altered, removed, inserted or moved.
    Verify {
        #[command(flatten)]
        json: Json,
    },
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only events about this host (by the name it had then).
    #[arg(add = crate::completion::host_arg(), long)]
    pub host: Option<String>,
    /// Only events by this user (`host:NAME` for a host, `local:USER` for `yeet-server admin`).
    #[arg(long)]
    pub user: Option<String>,
    /// Only this action (`host.rename`), or a family of them (`host`, `secret`, `user`).
    #[arg(long)]
    pub action: Option<String>,
    /// Only events of the last DURATION: 90s, 30m, 2h, 168h.
    #[arg(long, value_name = "DURATION", value_parser = yeet_proto::text::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// The newest N events (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub json: Json,
}

pub fn run(args: &AuditArgs, connection: &Connection) -> Result<()> {
    match &args.command {
        Some(AuditCommand::Verify { json }) => verify(json.json, connection),
        None => list(&args.list, connection),
    }
}

fn list(args: &ListArgs, connection: &Connection) -> Result<()> {
    let since_ms = args.since.map(|d| {
        yeet_proto::clock::unix_now_ms().saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)
    });
    let filter = AuditFilter {
        host: args.host.clone(),
        user: args.user.clone(),
        action: args.action.clone(),
        since_ms,
        limit: Some(args.limit),
        newest: true,
        ..Default::default()
    };
    let page = connection.connect()?.audit(&filter)?;
    if args.json.json {
        return output::json(&page.events);
    }
    if output::said_empty(&page.events, "no audit events match") {
        return Ok(());
    }
    let mut t = output::table([
        "SEQ", "WHEN", "WHO", "ACTION", "OUTCOME", "HOSTS", "DETAILS",
    ]);
    for e in &page.events {
        t.add_row([
            &e.seq.to_string(),
            &output::ago(Some(e.at_ms / 1000)),
            &clean_line(&who(e), 60),
            &clean_line(&e.action, 40),
            &clean_line(&e.outcome, 40),
            // Printed to a terminal: cleaned of control characters, and cut short.
            &clean_line(&e.hosts.join(" "), 40),
            &clean_line(&e.details.to_string(), 60),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// The actor, with the address the request came from when known.
fn who(e: &AuditEvent) -> String {
    if e.address.is_empty() {
        e.actor.clone()
    } else {
        format!("{} ({})", e.actor, e.address)
    }
}

fn verify(json: bool, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    // Anyone else is shown part of the log, which cannot verify as a whole.
    let me = client.whoami()?;
    if me.role != yeet_proto::api::Role::Admin || !me.tags.is_empty() {
        bail!(
            "verifying the audit log needs the whole of it, which only admins who act on the whole fleet see; you are {} ({})",
            me.name,
            me.role.as_str()
        );
    }
    let origin = yeet_proto::signing::origin_of(client.base_url())?;
    let mut events: Vec<AuditEvent> = Vec::new();
    loop {
        let page = client
            .audit(&AuditFilter {
                after: events.last().map(|e| e.seq),
                limit: Some(1000),
                ..Default::default()
            })
            .context("cannot read the audit log (verifying it needs an admin who acts on the whole fleet)")?;
        let more = page.next_after.is_some();
        events.extend(page.events);
        if !more {
            break;
        }
    }
    let pinned = crate::config::pinned_audit_head(&origin)?;
    let outcome = verify_chain(&events).and_then(|()| match &pinned {
        Some((seq, hash)) => check_pinned_head(&events, *seq, hash),
        None => Ok(()),
    });
    let head = events.last();
    if outcome.is_ok()
        && let Some(head) = head
    {
        crate::config::pin_audit_head(&origin, head.seq, &head.hash)?;
    }
    if json {
        output::json(&yeet_proto::audit::verification_json(&events, &outcome))?;
    }
    match outcome {
        Ok(()) => {
            if !json {
                match head {
                    Some(head) => println!(
                        "the audit log is intact: {} events, {} to {}; its head {} is pinned for {origin}",
                        events.len(),
                        events.first().map_or(0, |e| e.seq),
                        head.seq,
                        &head.hash[..16.min(head.hash.len())]
                    ),
                    None => println!("the audit log is empty"),
                }
            }
            Ok(())
        }
        Err(problem) => bail!(
            "the audit log was tampered with: {problem}; the server's database was changed outside yeet (compare with the copy in audit_log_file or your SIEM)"
        ),
    }
}
