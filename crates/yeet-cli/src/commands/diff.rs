//! `yeet diff HOST`: package-level difference between a host's current and desired systems.

use anyhow::{Result, bail};
use yeet_proto::names::validate_host_name;

use super::Connection;
use crate::push;

#[derive(clap::Args)]
pub struct DiffArgs {
    pub host: String,
}

pub fn run(args: &DiffArgs, connection: &Connection) -> Result<()> {
    let host = &args.host;
    validate_host_name(host)?;
    let client = connection.connect()?;
    let h = client.host(host)?;
    let (Some(current), Some(desired)) = (&h.current_system, &h.desired_system) else {
        bail!("nothing to compare: {host} has no current system yet, or no release names it");
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
    Ok(())
}
