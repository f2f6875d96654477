//! `yeet user add|list|show|set-role|set-tags|rm|add-key|rm-key`: operators, managed over
//! the API by admins who act on the whole fleet.

use anyhow::{Context, Result};
use clap::Subcommand;
use yeet_proto::api::{AddUserRequest, Role, UserInfo};

use super::{Connection, Json};
use crate::output;

#[derive(Subcommand)]
#[command(after_help = "\
Only admins without tags (who act on the whole fleet) manage users. Nobody changes their
own role, scope or account, and the last admin without tags cannot be removed, demoted or
scoped: another admin does it, so no one raises their own rights or locks the fleet out.
The first admin is added on the server host: `yeet-server admin add NAME --key FILE`.")]
pub enum UserCommand {
    /// Add a user with a public key and a role; --tag scopes them to hosts carrying any of
    /// the tags (none: the whole fleet).
    Add {
        name: String,
        /// Their public key: an OpenSSH ed25519 line (`ssh-ed25519 AAAA...`) or a file
        /// holding one (not `--key`, which is the key you sign with).
        #[arg(long, value_name = "KEY|FILE")]
        public_key: String,
        /// admin, publisher (may publish and roll back) or viewer (read only).
        #[arg(long)]
        role: Role,
        /// Scope the user to hosts carrying this tag (repeatable: any of them).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        #[command(flatten)]
        json: Json,
    },
    /// List users with their roles, scopes and keys.
    List {
        #[command(flatten)]
        json: Json,
    },
    /// Show one user.
    Show {
        name: String,
        #[command(flatten)]
        json: Json,
    },
    /// Set a user's role.
    SetRole {
        name: String,
        role: Role,
        #[command(flatten)]
        json: Json,
    },
    /// Set a user's scope: the tags given replace the old ones; none makes the user act
    /// on the whole fleet.
    SetTags {
        name: String,
        /// A tag of the new scope (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        #[command(flatten)]
        json: Json,
    },
    /// Remove a user; their keys stop working at once.
    Rm { name: String },
    /// Add a key to a user (a second laptop, a CI runner).
    AddKey {
        name: String,
        /// The public key: an OpenSSH ed25519 line or a file holding one.
        #[arg(long, value_name = "KEY|FILE")]
        public_key: String,
        #[command(flatten)]
        json: Json,
    },
    /// Remove one of a user's keys by its fingerprint (`SHA256:...`, as `yeet user show`
    /// lists it); a user keeps at least one.
    RmKey {
        name: String,
        fingerprint: String,
        #[command(flatten)]
        json: Json,
    },
}

/// A key given as a line or as a file holding one.
fn key_line(key: &str) -> Result<String> {
    if key.trim_start().starts_with("ssh-") {
        return Ok(key.trim().to_owned());
    }
    std::fs::read_to_string(key)
        .map(|s| s.trim().to_owned())
        .with_context(|| {
            format!("cannot read the key file {key}; give a public key file or an `ssh-ed25519 ...` line")
        })
}

fn scope(tags: &[String]) -> String {
    if tags.is_empty() {
        "all hosts".to_owned()
    } else {
        format!("hosts tagged {}", tags.join(" or "))
    }
}

fn print_user(u: &UserInfo, json: &Json) -> Result<()> {
    if json.json {
        return output::json(u);
    }
    let keys: Vec<&str> = u.keys.iter().map(|k| k.key_id.as_str()).collect();
    output::print_clean(format_args!(
        "{} ({}, {}): {}",
        u.name,
        u.role.as_str(),
        scope(&u.tags),
        keys.join(", ")
    ));
    Ok(())
}

pub fn run(command: &UserCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        UserCommand::Add {
            name,
            public_key,
            role,
            tags,
            json,
        } => {
            let req = AddUserRequest {
                name: name.clone(),
                public_key: key_line(public_key)?,
                role: *role,
                tags: tags.clone(),
            };
            print_user(&client.add_user(&req)?, json)
        }
        UserCommand::List { json } => {
            let users = client.users()?;
            if json.json {
                return output::json(&users);
            }
            let mut t = output::table(["USER", "ROLE", "SCOPE", "KEYS"]);
            for u in &users {
                let keys: Vec<&str> = u.keys.iter().map(|k| k.key_id.as_str()).collect();
                t.add_row([
                    u.name.as_str(),
                    u.role.as_str(),
                    &scope(&u.tags),
                    &keys.join("\n"),
                ]);
            }
            output::print_clean(format_args!("{t}"));
            Ok(())
        }
        UserCommand::Show { name, json } => print_user(&client.user(name)?, json),
        UserCommand::SetRole { name, role, json } => {
            print_user(&client.set_user_role(name, *role)?, json)
        }
        UserCommand::SetTags { name, tags, json } => {
            print_user(&client.set_user_tags(name, tags)?, json)
        }
        UserCommand::Rm { name } => {
            client.remove_user(name)?;
            println!("removed {name}; their keys no longer work");
            Ok(())
        }
        UserCommand::AddKey {
            name,
            public_key,
            json,
        } => print_user(&client.add_user_key(name, &key_line(public_key)?)?, json),
        UserCommand::RmKey {
            name,
            fingerprint,
            json,
        } => print_user(&client.remove_user_key(name, fingerprint)?, json),
    }
}
