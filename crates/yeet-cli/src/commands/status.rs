//! `yeet status [HOST]`: the fleet at a glance, or one host in detail.

use anyhow::Result;
use yeet_proto::api::{HostInfo, PendingRegistration};

use super::{Connection, Json};
use crate::output;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Show one host only.
    pub host: Option<String>,
    #[command(flatten)]
    pub json: Json,
}

pub fn run(args: &StatusArgs, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    let hosts = match &args.host {
        Some(h) => vec![client.host(h)?],
        None => client.hosts()?,
    };
    if args.json.json {
        return output::json(&hosts);
    }
    if let (Some(_), [h]) = (&args.host, hosts.as_slice()) {
        output::print_clean(format_args!("{}", output::host_detail(h)));
        return Ok(());
    }
    // Hosts waiting for approval are part of the fleet's picture too.
    let pending = client.pending()?;
    if hosts.is_empty() && pending.is_empty() {
        output::print_clean(format_args!(
            "no hosts yet: start yeet-agent on a host, then `yeet pending` and `yeet approve`"
        ));
        return Ok(());
    }
    output::print_clean(format_args!("{}", fleet_table(&hosts, &pending)));
    Ok(())
}

fn fleet_table(hosts: &[HostInfo], pending: &[PendingRegistration]) -> comfy_table::Table {
    let mut t = output::table([
        "HOST",
        "STATE",
        "CURRENT",
        "DESIRED",
        "LAST RESULT",
        "LAST SEEN",
        "AGENT",
    ]);
    for h in hosts {
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
