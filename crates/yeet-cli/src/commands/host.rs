//! `yeet host rename|rm`.

use anyhow::Result;
use clap::Subcommand;

use super::Connection;

#[derive(Subcommand)]
pub enum HostCommand {
    /// Rename a host; its history follows it.
    Rename { old: String, new: String },
    /// Remove a host; its key stops working at once.
    Rm { name: String },
}

pub fn run(command: &HostCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        HostCommand::Rename { old, new } => {
            let h = client.rename_host(old, new)?;
            println!("renamed {old} to {}", h.name);
        }
        HostCommand::Rm { name } => {
            client.remove_host(name)?;
            println!("removed {name}");
        }
    }
    Ok(())
}
