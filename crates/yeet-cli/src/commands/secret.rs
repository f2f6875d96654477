//! `yeet secret`: secrets encrypted on this machine to the server's age recipient, granted
//! to hosts, rotated without a release. Plaintext is read into a wiped buffer, encrypted
//! here, and never sent or printed; listings show metadata only.

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use yeet_proto::secrets::{AddSecretRequest, MAX_SECRET_BYTES, RotateSecretRequest, SecretInfo};
use zeroize::Zeroizing;

use super::{Connection, Json};
use crate::output::{ago, json, print_clean, table};

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Print the server's age recipient (to encrypt files with the age CLI yourself:
    /// `age -r RECIPIENT -o F.age F`, then `yeet secret add NAME --encrypted F.age`).
    Recipient,
    /// Add a secret, encrypted here to the server's recipient, optionally granted to hosts.
    Add(AddArgs),
    /// Store a new version of a secret; hosts that hold it fetch it without a release.
    Rotate(ContentArgs),
    /// Let hosts fetch a secret.
    Grant(HostsArgs),
    /// Stop hosts fetching a secret; they delete it at their next check-in.
    Revoke(HostsArgs),
    /// Show secrets: versions, grants, the version each host fetched, who changed what and
    /// when. Never content.
    List(Json),
    /// Remove a secret; hosts delete it at their next check-in.
    Rm {
        /// The secret's name.
        name: String,
    },
}

/// Where a secret's content comes from: exactly one of the three.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// Read the plaintext from this file.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Read the plaintext from standard input.
    #[arg(long)]
    stdin: bool,
    /// Send this age file as it is: already encrypted (binary or armored) to the server's
    /// recipient, e.g. with `age -r $(yeet secret recipient)`.
    #[arg(long, value_name = "FILE")]
    encrypted: Option<PathBuf>,
}

#[derive(Args)]
pub struct ContentArgs {
    /// The secret's name: letters, digits, '-', '_', '.'; a host finds it at
    /// /run/yeet/secrets/NAME.
    name: String,
    #[command(flatten)]
    source: Source,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    content: ContentArgs,
    /// Grant it to this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
}

#[derive(Args)]
pub struct HostsArgs {
    /// The secret's name.
    name: String,
    /// Hosts, by their fleet names.
    #[arg(required = true, value_name = "HOST")]
    hosts: Vec<String>,
}

pub fn run(command: &SecretCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        SecretCommand::Recipient => println!("{}", client.secret_recipient()?.recipient),
        SecretCommand::Add(args) => {
            let ciphertext = ciphertext(&client, &args.content.source)?;
            let req = AddSecretRequest {
                name: args.content.name.clone(),
                ciphertext,
                hosts: args.hosts.clone(),
            };
            let s = client.add_secret(&req)?;
            println!("added {} (version {}){}", s.name, s.version, granted_to(&s));
        }
        SecretCommand::Rotate(args) => {
            let req = RotateSecretRequest {
                ciphertext: ciphertext(&client, &args.source)?,
            };
            let s = client.rotate_secret(&args.name, &req)?;
            println!(
                "rotated {} to version {}{}",
                s.name,
                s.version,
                granted_to(&s)
            );
        }
        SecretCommand::Grant(args) | SecretCommand::Revoke(args) => {
            let grant = matches!(command, SecretCommand::Grant(_));
            let s = client.set_secret_hosts(&args.name, &args.hosts, grant)?;
            let verb = if grant { "granted" } else { "revoked" };
            println!("{verb} {}: {}", s.name, args.hosts.join(", "));
        }
        SecretCommand::List(args) => list(&client.secrets()?, args.json)?,
        SecretCommand::Rm { name } => {
            client.remove_secret(name)?;
            println!("removed {name}; hosts delete it at their next check-in");
        }
    }
    Ok(())
}

fn granted_to(s: &SecretInfo) -> String {
    if s.hosts.is_empty() {
        "; granted to no host yet: `yeet secret grant NAME HOST`".into()
    } else {
        let hosts: Vec<&str> = s.hosts.iter().map(|g| g.host.as_str()).collect();
        format!(", granted to {}", hosts.join(", "))
    }
}

/// The ciphertext to send, base64: the given age file, or the plaintext encrypted here to
/// the server's recipient.
fn ciphertext(client: &yeet_client::Client, source: &Source) -> Result<String> {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Some(file) = &source.encrypted {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(encode(&bytes));
    }
    let plaintext = read_plaintext(source)?;
    let recipient = client.secret_recipient()?.recipient;
    let recipient = yeet_proto::secrets::x25519_recipient(&recipient)
        .context("the server's recipient is not an age X25519 recipient")?;
    Ok(encode(&yeet_proto::secrets::seal(&recipient, &plaintext)?))
}

fn read_plaintext(source: &Source) -> Result<Zeroizing<Vec<u8>>> {
    // Sized up front, so that growing the buffer leaves no unwiped copies behind.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES + 1));
    let limit = MAX_SECRET_BYTES as u64 + 1;
    match &source.from_file {
        Some(file) => std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut plaintext))
            .with_context(|| format!("cannot read {}", file.display()))?,
        None => std::io::stdin()
            .take(limit)
            .read_to_end(&mut plaintext)
            .context("cannot read the secret from standard input")?,
    };
    if plaintext.len() > MAX_SECRET_BYTES {
        bail!(
            "the secret is larger than {} KiB: secrets are keys, passwords and certificates",
            MAX_SECRET_BYTES / 1024
        );
    }
    if plaintext.is_empty() {
        bail!("the secret is empty");
    }
    Ok(plaintext)
}

fn list(secrets: &[SecretInfo], as_json: bool) -> Result<()> {
    if as_json {
        return json(&secrets);
    }
    if secrets.is_empty() {
        println!("no secrets; add one with `yeet secret add NAME --from-file F --host HOST`");
        return Ok(());
    }
    let mut t = table(["SECRET", "VERSION", "HOSTS (FETCHED VERSION)", "CHANGED"]);
    for s in secrets {
        let hosts: Vec<String> = s
            .hosts
            .iter()
            .map(|g| match g.fetched_version {
                Some(v) => format!("{} (v{v})", g.host),
                None => format!("{} (not yet)", g.host),
            })
            .collect();
        let changed = s
            .history
            .first()
            .map(|c| format!("{} {} by {}", c.action, ago(Some(c.at)), c.by))
            .unwrap_or_default();
        t.add_row([
            s.name.clone(),
            s.version.to_string(),
            if hosts.is_empty() {
                "-".into()
            } else {
                hosts.join(", ")
            },
            changed,
        ]);
    }
    print_clean(t);
    Ok(())
}
