//! `yeet whoami`: who the server thinks you are.

use anyhow::Result;

use super::{Connection, Json};
use crate::output;

pub fn run(args: &Json, connection: &Connection) -> Result<()> {
    let me = connection.connect()?.whoami()?;
    if args.json {
        return output::json(&me);
    }
    let scope = if me.tags.is_empty() {
        "all hosts".to_owned()
    } else {
        format!("hosts tagged {}", me.tags.join(" or "))
    };
    output::print_clean(format_args!(
        "{} ({}, {scope}) {}",
        me.name,
        me.role.as_str(),
        me.key_id
    ));
    Ok(())
}
