//! `yeet whoami`: who the server thinks you are.

use anyhow::Result;

use super::{Connection, Json};
use crate::output;

pub fn run(args: &Json, connection: &Connection) -> Result<()> {
    let me = connection.connect()?.whoami()?;
    if args.json {
        return output::json(&me);
    }
    println!("{} ({}) {}", me.name, me.role.as_str(), me.key_id);
    Ok(())
}
