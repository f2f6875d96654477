//! `yeet key generate|show`: the operator's signing key.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

use super::{Connection, Json};
use crate::config;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 key (OpenSSH format) for signing yeet requests.
    Generate {
        /// Where to write it. Default: ~/.config/yeet/key
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key and fingerprint of your key.
    Show {
        #[command(flatten)]
        json: Json,
    },
}

pub fn run(command: &KeyCommand, connection: &Connection) -> Result<()> {
    match command {
        KeyCommand::Generate { out } => generate(out.clone()),
        KeyCommand::Show { json } => {
            let path = connection.key_path()?;
            let id = yeet_client::load_identity(&path)?;
            if json.json {
                return crate::output::json(&serde_json::json!({
                    "public_key": id.public().to_openssh(),
                    "fingerprint": id.public().key_id(),
                    "path": path,
                }));
            }
            println!("{}\n{}", id.public().to_openssh(), id.public().key_id());
            Ok(())
        }
    }
}

fn generate(out: Option<PathBuf>) -> Result<()> {
    let path = out
        .or_else(config::default_key_path)
        .context("cannot find a home directory; pass --out FILE")?;
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let id =
        yeet_client::generate_identity_file(&path, &format!("{user}@yeet")).with_context(|| {
            format!(
                "not overwriting {}; remove it first or pass --out",
                path.display()
            )
        })?;
    println!("wrote {} and {}.pub", path.display(), path.display());
    println!("fingerprint: {}", id.public().key_id());
    println!("\nOn the server host, make this key an admin with:");
    println!(
        "  yeet-server admin add {user} --key '{}'",
        id.public().to_openssh()
    );
    Ok(())
}
