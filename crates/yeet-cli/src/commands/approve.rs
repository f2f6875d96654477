//! `yeet approve` and `yeet reject`: decide on a waiting host.

use anyhow::Result;

use super::{Connection, Json};
use crate::output;

#[derive(clap::Args)]
pub struct ApproveArgs {
    /// Name for the host in the fleet.
    pub name: String,
    /// The code that yeet-agent prints on the host (stdout and its log).
    pub code: String,
    /// Tag the host at once (repeatable); see `yeet host tag --help`.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub json: Json,
}

#[derive(clap::Args)]
pub struct RejectArgs {
    pub key_id: String,
}

pub fn approve(args: &ApproveArgs, connection: &Connection) -> Result<()> {
    let host = connection
        .connect()?
        .approve(&args.code, &args.name, &args.tags)?;
    if args.json.json {
        return output::json(&host);
    }
    if host.tags.is_empty() {
        println!("approved {} ({})", host.name, host.key_id);
    } else {
        println!(
            "approved {} ({}), tagged {}",
            host.name,
            host.key_id,
            output::tag_list(&host.tags)
        );
    }
    Ok(())
}

pub fn reject(args: &RejectArgs, connection: &Connection) -> Result<()> {
    connection.connect()?.reject(&args.key_id)?;
    println!("rejected {}; this key cannot register again", args.key_id);
    Ok(())
}
