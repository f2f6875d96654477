//! `yeet diff HOST`: package-level difference between a host's current and desired systems.

use anyhow::{Result, bail};
use yeet_proto::names::validate_host_name;

use super::{Connection, Json};
use crate::{output, push};

#[derive(clap::Args)]
pub struct DiffArgs {
    #[arg(add = crate::completion::host_arg())]
    pub host: String,
    #[command(flatten)]
    pub json: Json,
}

/// What `--json` prints.
#[derive(serde::Serialize)]
struct DiffReport<'a> {
    host: &'a str,
    current_system: &'a str,
    desired_system: &'a str,
    /// `nix store diff-closures`' lines: `name: old → new, +size`; none when they agree.
    changes: Vec<String>,
}

pub fn run(args: &DiffArgs, connection: &Connection) -> Result<()> {
    let host = &args.host;
    validate_host_name(host)?;
    let client = connection.connect()?;
    let h = client.host(host)?;
    let (Some(current), Some(desired)) = (&h.current_system, &h.desired_system) else {
        bail!("nothing to compare: {host} has no current system yet, or no release names it");
    };
    let changes = if current == desired {
        String::new()
    } else {
        let cache = format!("{}/cache", client.base_url());
        for path in [current, desired] {
            push::ensure_local(path, &cache)?;
        }
        push::diff_closures(current, desired)?
    };
    if args.json.json {
        return output::json(&DiffReport {
            host,
            current_system: current,
            desired_system: desired,
            changes: changes
                .lines()
                .map(|l| yeet_proto::text::clean_line(l, 4096))
                .filter(|l| !l.is_empty())
                .collect(),
        });
    }
    if current == desired {
        println!("{host} runs its desired system {desired}");
        return Ok(());
    }
    print!("{changes}");
    Ok(())
}
