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
use crate::output::{ago, json, print_clean, said_empty, table};

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Print the server's age recipient (to encrypt files with the age CLI yourself:
    /// `age -r RECIPIENT -o F.age F`, then `yeet secret add NAME --encrypted F.age`),
    /// checked against the one pinned for this server (pinned at the first use).
    Recipient,
    /// Pin the recipient this machine encrypts to for this server, as `yeet-server
    /// secrets-recipient` prints it on the server host (replacing a pin made before).
    PinRecipient {
        /// The age recipient (age1...).
        recipient: String,
    },
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
        /// Remove it even when hosts' running systems use it (asked on a terminal, refused
        /// otherwise).
        #[arg(long)]
        yes: bool,
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
    /// Encrypt to this recipient only (as `yeet-server secrets-recipient` prints it on the
    /// server host), whatever the server sends. Default: the one pinned for this server,
    /// pinned at the first use.
    #[arg(long, env = "YEET_SECRETS_RECIPIENT", value_name = "AGE_RECIPIENT")]
    recipient: Option<String>,
    #[command(flatten)]
    json: Json,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    content: ContentArgs,
    /// Grant it to this host (repeatable).
    #[arg(add = crate::completion::host_arg(), long = "host", value_name = "HOST")]
    hosts: Vec<String>,
}

#[derive(Args)]
pub struct HostsArgs {
    /// The secret's name.
    name: String,
    /// Hosts, by their fleet names.
    #[arg(add = crate::completion::host_arg(), required_unless_present = "tags", value_name = "HOST")]
    hosts: Vec<String>,
    /// A tag (repeatable): every host carrying it holds the secret while it does; revoking
    /// the tag takes it from hosts that hold it only by that tag.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Revoke even from hosts whose running systems use it (asked on a terminal, refused
    /// otherwise).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    json: Json,
}

pub fn run(command: &SecretCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        // What `age -r` encrypts to must be the server's too: checked like our own use.
        SecretCommand::Recipient => println!("{}", trusted_recipient(&client, None)?),
        SecretCommand::PinRecipient { recipient } => {
            yeet_proto::secrets::x25519_recipient(recipient.trim())
                .context("not an age X25519 recipient (age1...)")?;
            let origin = yeet_proto::signing::origin_of(client.base_url())?;
            crate::config::pin_recipient(&origin, recipient.trim())?;
            println!("pinned {} for {origin}", recipient.trim());
        }
        SecretCommand::Add(args) => {
            let ciphertext = ciphertext(
                &client,
                &args.content.source,
                args.content.recipient.as_deref(),
            )?;
            let req = AddSecretRequest {
                name: args.content.name.clone(),
                ciphertext,
                hosts: args.hosts.clone(),
            };
            let s = client.add_secret(&req)?;
            if args.content.json.json {
                return json(&s);
            }
            println!("added {} (version {}){}", s.name, s.version, granted_to(&s));
        }
        SecretCommand::Rotate(args) => {
            let req = RotateSecretRequest {
                ciphertext: ciphertext(&client, &args.source, args.recipient.as_deref())?,
            };
            let s = client.rotate_secret(&args.name, &req)?;
            if args.json.json {
                return json(&s);
            }
            println!(
                "rotated {} to version {}{}",
                s.name,
                s.version,
                granted_to(&s)
            );
        }
        SecretCommand::Grant(args) | SecretCommand::Revoke(args) => {
            let grant = matches!(command, SecretCommand::Grant(_));
            if !grant {
                let users = in_use(&client, &args.name, Some(&args.hosts))?;
                confirm_loss(&args.name, &users, "Revoke", args.yes)?;
            }
            let s = client.set_secret_hosts(&args.name, &args.hosts, &args.tags, grant)?;
            if args.json.json {
                return json(&s);
            }
            let verb = if grant { "granted" } else { "revoked" };
            let mut named = args.hosts.clone();
            named.extend(args.tags.iter().map(|t| format!("tag {t}")));
            println!("{verb} {}: {}", s.name, named.join(", "));
        }
        SecretCommand::List(args) => list(&client.secrets()?, args.json)?,
        SecretCommand::Rm { name, yes } => {
            let users = in_use(&client, name, None)?;
            confirm_loss(name, &users, "Remove", *yes)?;
            client.remove_secret(name)?;
            println!("removed {name}; hosts delete it at their next check-in");
        }
    }
    Ok(())
}

/// The hosts (of `among`, or all) that fetched secret `name`: their running systems asked
/// for it, so they lose a file their services read at their next check-in.
fn in_use(
    client: &yeet_client::Client,
    name: &str,
    among: Option<&[String]>,
) -> Result<Vec<String>> {
    let secrets = client.secrets()?;
    let Some(secret) = secrets.iter().find(|s| s.name == name) else {
        // The server names an unknown secret in its refusal.
        return Ok(Vec::new());
    };
    Ok(secret
        .hosts
        .iter()
        .filter(|g| g.fetched_version.is_some())
        .filter(|g| among.is_none_or(|hosts| hosts.contains(&g.host)))
        .map(|g| g.host.clone())
        .collect())
}

/// Before a secret is taken from hosts that use it: says which, then goes on only with
/// `--yes` or a "y" typed at a terminal.
fn confirm_loss(name: &str, users: &[String], verb: &str, yes: bool) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let warning = format!(
        "warning: {} fetched {name} for the system it runs; it deletes /run/yeet/secrets/{name} at its next check-in, and what reads it there will fail",
        users.join(", ")
    );
    eprintln!("{}", yeet_proto::text::clean_line(&warning, 4096));
    if yes {
        return Ok(());
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "not done: pass --yes to {} {name} anyway, or publish systems that no longer ask for it first",
            verb.to_lowercase()
        );
    }
    eprint!("{verb} it anyway? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not done");
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
/// the server's recipient, once it is known to be the server's (see `trusted_recipient`).
fn ciphertext(
    client: &yeet_client::Client,
    source: &Source,
    pinned: Option<&str>,
) -> Result<String> {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Some(file) = &source.encrypted {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(encode(&bytes));
    }
    let recipient = trusted_recipient(client, pinned)?;
    let plaintext = read_plaintext(source)?;
    let recipient = yeet_proto::secrets::x25519_recipient(&recipient)
        .context("the server's recipient is not an age X25519 recipient")?;
    Ok(encode(&yeet_proto::secrets::seal(&recipient, &plaintext)?))
}

/// The recipient to encrypt to. The server's answer is not signed, so an on-path attacker
/// (plain HTTP, a proxy) could send its own and read the secret: it must equal the one the
/// operator gave (`--recipient`), or the one pinned for this server at the first use, which
/// `yeet-server secrets-recipient` shows on the server host for comparison.
fn trusted_recipient(client: &yeet_client::Client, given: Option<&str>) -> Result<String> {
    let sent = client.secret_recipient()?.recipient;
    let origin = yeet_proto::signing::origin_of(client.base_url())?;
    let expected = match given {
        Some(r) => Some(r.trim().to_owned()),
        None => crate::config::pinned_recipient(&origin)?,
    };
    match expected {
        Some(expected) if expected == sent => Ok(sent),
        Some(expected) => bail!(
            "the server at {origin} sent the secrets recipient {sent}, not {expected}, the one {}: someone between you and the server may be swapping it to read the secret, so nothing was sent. If the server's secrets key was replaced on purpose, compare with `yeet-server secrets-recipient` on the server host, then `yeet secret pin-recipient RECIPIENT`",
            if given.is_some() {
                "given"
            } else {
                "pinned for it"
            }
        ),
        None => {
            crate::config::pin_recipient(&origin, &sent)?;
            eprintln!(
                "first secret for {origin}: pinned its recipient {sent}; compare it with `yeet-server secrets-recipient` on the server host (later changes are refused)"
            );
            Ok(sent)
        }
    }
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
    if said_empty(
        secrets,
        "no secrets; add one with `yeet secret add NAME --from-file F --host HOST`",
    ) {
        return Ok(());
    }
    let mut t = table(["SECRET", "VERSION", "HOSTS (FETCHED VERSION)", "CHANGED"]);
    for s in secrets {
        let hosts: Vec<String> = s
            .hosts
            .iter()
            .map(|g| {
                let by = g
                    .via_tag
                    .as_ref()
                    .map(|t| format!(", by tag {t}"))
                    .unwrap_or_default();
                match g.fetched_version {
                    Some(v) => format!("{} (v{v}{by})", g.host),
                    None => format!("{} (not yet{by})", g.host),
                }
            })
            .chain(s.tags.iter().map(|t| format!("tag {t}")))
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
