//! `yeet pending`: hosts waiting for approval. Their codes are shown only on the hosts.

use anyhow::Result;

use super::{Connection, Json};
use crate::output;

pub fn run(args: &Json, connection: &Connection) -> Result<()> {
    let pending = connection.connect()?.pending()?;
    if args.json {
        return output::json(&pending);
    }
    if output::said_empty(
        &pending,
        "no hosts are waiting for approval; a host registers when yeet-agent starts on it with the server's URL",
    ) {
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
    Ok(())
}
