//! `yeet status [HOST]`: the fleet at a glance, or one host in detail.

use anyhow::Result;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use yeet_proto::api::{HostInfo, HostState, MAX_WATCH_SECS, PendingRegistration};

use super::{Connection, Json};
use crate::output;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Show one host only.
    #[arg(add = crate::completion::host_arg())]
    pub host: Option<String>,
    /// Redraw whenever a host changes, until interrupted (the server holds each request
    /// until something changes). With --json: one JSON line per change.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Only the hosts that need attention (failed, rolled back, refused, offline, waiting
    /// for a reboot, never seen), each with why. With --json: a list of {host, state, why}.
    #[arg(long, conflicts_with_all = ["watch", "host"])]
    pub problems: bool,
    #[command(flatten)]
    pub tags: super::host::TagFilter,
    #[command(flatten)]
    pub json: Json,
}

pub fn run(args: &StatusArgs, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    if args.watch {
        return watch(args, &client);
    }
    let hosts = match &args.host {
        Some(h) => vec![client.host(h)?],
        None => {
            let hosts = client.hosts()?;
            crate::completion::remember_hosts(&hosts);
            args.tags.keep(hosts)
        }
    };
    if args.problems {
        let problems: Vec<Problem> = hosts.iter().filter_map(problem).collect();
        if args.json.json {
            return output::json(&problems);
        }
        if problems.is_empty() {
            output::print_clean(format_args!("no host needs attention"));
            return Ok(());
        }
        let mut t = output::table(["HOST", "STATE", "WHY"]);
        for p in &problems {
            t.add_row([p.host.as_str(), p.state.as_str(), p.why.as_str()]);
        }
        output::print_clean(format_args!("{t}"));
        return Ok(());
    }
    if args.json.json {
        return output::json(&hosts);
    }
    if let (Some(_), [h]) = (&args.host, hosts.as_slice()) {
        output::print_clean(format_args!("{}", output::host_detail(h)));
        return Ok(());
    }
    // Hosts waiting for approval are part of the fleet's picture too, when the whole
    // fleet is asked for (they have no tags yet).
    let pending = if args.tags.is_set() {
        Vec::new()
    } else {
        client.pending()?
    };
    if hosts.is_empty() && pending.is_empty() {
        output::print_clean(format_args!("{}", args.tags.nothing_found()));
        return Ok(());
    }
    output::print_clean(format_args!(
        "{}\n{}",
        summary(&hosts, &pending),
        fleet_table(&hosts, &pending)
    ));
    Ok(())
}

/// A host that needs attention, and why (`yeet status --problems`).
#[derive(Serialize)]
struct Problem {
    host: String,
    state: HostState,
    why: String,
}

/// Why `h` needs attention, if it does: its state says something went wrong or waits for
/// people. Hosts that are converging (updating, or held for a window) do not.
fn problem(h: &HostInfo) -> Option<Problem> {
    let system = || output::short_path(h.last_result_system.as_deref());
    let why = match h.state {
        HostState::Failed => format!(
            "its activation of {} failed: `yeet log {}`",
            system(),
            h.name
        ),
        HostState::RolledBack => format!("{} was rolled back: `yeet log {}`", system(), h.name),
        HostState::Untrusted => format!(
            "refused {}: not signed by a key it trusts (its trusted_keys)",
            system()
        ),
        HostState::Offline => format!("not seen since {}", output::ago(h.last_seen)),
        HostState::RebootRequired => match h.policy.effective_reboot() {
            yeet_proto::api::RebootPolicy::Never => {
                "needs a reboot; it does not reboot by itself (`yeet host policy --reboot`)".into()
            }
            yeet_proto::api::RebootPolicy::InWindow => match &h.window_wait {
                Some(w) => format!("reboots in window {} ({})", w.window, w.opens),
                None => "needs a reboot; it reboots by itself now".into(),
            },
        },
        HostState::New => "approved, never checked in: is its agent running?".into(),
        HostState::Standby | HostState::Updating | HostState::Detached => return None,
    };
    Some(Problem {
        host: h.name.clone(),
        state: h.state,
        why,
    })
}

/// One line over the table: how many hosts are in each state, and what waits for people.
fn summary(hosts: &[HostInfo], pending: &[PendingRegistration]) -> String {
    let mut counts: Vec<(HostState, usize)> = Vec::new();
    for h in hosts {
        match counts.iter_mut().find(|(s, _)| *s == h.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((h.state, 1)),
        }
    }
    counts.sort_by_key(|(s, _)| s.as_str());
    let mut parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    if !pending.is_empty() {
        parts.push(format!("{} pending approval", pending.len()));
    }
    let problems = hosts.iter().filter(|h| problem(h).is_some()).count();
    let attention = match problems {
        0 => String::new(),
        n => format!("; {n} need attention: `yeet status --problems`"),
    };
    format!(
        "{} host{}: {}{attention}",
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// Draws the fleet (or one host) each time it changes; on a terminal in place, otherwise one
/// drawing after another. A quiet fleet is still redrawn every `MAX_WATCH_SECS`, so that
/// last-seen times and waiting registrations stay current.
fn watch(args: &StatusArgs, client: &yeet_client::Client) -> Result<()> {
    let in_place = !args.json.json && std::io::stdout().is_terminal();
    let mut tag: Option<String> = None;
    let mut hosts: Vec<HostInfo> = Vec::new();
    loop {
        let changed = client.watch_hosts(tag.as_deref(), MAX_WATCH_SECS)?;
        if let Some((fresh, fresh_tag)) = changed {
            crate::completion::remember_hosts(&fresh);
            hosts = fresh;
            tag = Some(fresh_tag);
        } else if args.json.json {
            continue;
        }
        let shown: Vec<HostInfo> = match &args.host {
            Some(name) => hosts.iter().filter(|h| &h.name == name).cloned().collect(),
            None => args.tags.keep(hosts.clone()),
        };
        if args.json.json {
            if !emit(&format!("{}\n", serde_json::to_string(&shown)?))? {
                return Ok(());
            }
            continue;
        }
        let drawing = match (&args.host, shown.as_slice()) {
            (Some(name), []) => format!("no host named {name}; see `yeet status` for the fleet"),
            (Some(_), [h]) => output::host_detail(h).to_string(),
            _ if args.tags.is_set() => {
                format!("{}\n{}", summary(&shown, &[]), fleet_table(&shown, &[]))
            }
            _ => {
                let pending = client.pending()?;
                format!(
                    "{}\n{}",
                    summary(&shown, &pending),
                    fleet_table(&shown, &pending)
                )
            }
        };
        // Home and clear first on a terminal: no scrolling history of old tables.
        let clear = if in_place { "\x1b[H\x1b[2J" } else { "" };
        let gap = if in_place { "" } else { "\n" };
        let clean = yeet_proto::text::clean(&drawing, usize::MAX, true);
        if !emit(&format!("{clear}{clean}\n{gap}"))? {
            return Ok(());
        }
    }
}

/// Writes a drawing out at once; `false` when the reader went away (`| head -1`), which
/// ends a watch rather than failing it.
fn emit(text: &str) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        result => result.map(|()| true).map_err(Into::into),
    }
}

/// The fleet's table; a TAGS column once any host carries a tag.
fn fleet_table(hosts: &[HostInfo], pending: &[PendingRegistration]) -> comfy_table::Table {
    let tagged = hosts.iter().any(|h| !h.tags.is_empty());
    let mut header = vec![
        "HOST",
        "STATE",
        "CURRENT",
        "DESIRED",
        "LAST RESULT",
        "LAST SEEN",
        "AGENT",
    ];
    if tagged {
        header.push("TAGS");
    }
    let mut t = output::table(header);
    for h in hosts {
        let desired = match (&h.desired_system, &h.current_system) {
            (Some(d), Some(c)) if d == c => "= current".to_owned(),
            (d, _) => output::short_path(d.as_deref()),
        };
        // A switch held for a maintenance window says so where the state is.
        let state = match &h.window_wait {
            Some(w) => format!("{} (window {}: {})", h.state.as_str(), w.window, w.opens),
            None => h.state.as_str().to_owned(),
        };
        let mut row = vec![
            h.name.clone(),
            state,
            output::short_path(h.current_system.as_deref()),
            desired,
            h.last_result.map(|r| r.as_str()).unwrap_or("-").to_owned(),
            output::ago(h.last_seen),
            h.facts.agent_version.clone(),
        ];
        if tagged {
            row.push(output::tag_list(&h.tags));
        }
        t.add_row(row);
    }
    for p in pending {
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
    t
}
