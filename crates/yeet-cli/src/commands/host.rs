//! `yeet host list|show|tag|policy|rename|rm`, and `yeet attach`.

use anyhow::{Result, bail};
use clap::Subcommand;
use yeet_proto::api::{HostInfo, HostPolicyChange, RebootPolicy, TagHostRequest};

use super::{Connection, Json};
use crate::output;

#[derive(Subcommand)]
pub enum HostCommand {
    /// List hosts with their tags (`--tag` keeps those carrying any of the given tags).
    List {
        #[command(flatten)]
        tags: TagFilter,
        #[command(flatten)]
        json: Json,
    },
    /// Show one host in detail: state, systems, detachment and policy.
    Show {
        #[arg(add = crate::completion::host_arg())]
        name: String,
        #[command(flatten)]
        json: Json,
    },
    /// Add (+TAG, or TAG) and remove (-TAG) a host's tags. Admins only.
    #[command(after_help = "\
Tags decide who may act on a host (users scoped by tag see and act only on hosts carrying
one of their tags), so only operators set them; a host's own config may only suggest tags,
shown by `yeet host show` and taken with --accept-suggested.

Tags are 1-32 characters of a-z, 0-9, '-', '_' and ':', starting with a letter or digit;
a host carries at most 32.

Examples:
  yeet host tag web-1 +prod +eu -staging
  yeet host tag web-1 --accept-suggested")]
    Tag {
        #[arg(add = crate::completion::host_arg())]
        name: String,
        /// Give the host the tags its agent suggests.
        #[arg(long)]
        accept_suggested: bool,
        #[command(flatten)]
        json: Json,
        /// +TAG or TAG adds, -TAG removes.
        #[arg(allow_hyphen_values = true, value_name = "[+|-]TAG")]
        changes: Vec<String>,
    },
    /// Show or set what a host may do on its own. Without a flag, shows it.
    #[command(after_help = "\
A host allowed to detach may run a locally chosen (and still trusted) system, asked for
on the host with `yeet-agent detach` and `yeet-agent switch PATH`. Releases published
meanwhile are recorded and applied once it attaches again (`yeet-agent attach` there, or
`yeet attach HOST` here). Denying detachment does not end an open one: `yeet attach` does.

With `--reboot in-window`, a host whose activation ends `reboot-required` (boot mode, or a
new kernel) reboots by itself inside its maintenance window (at once where no window covers
it); what it boots is checked and reported like any activation. A host whose agent config
sets `reboot` follows that instead. Flags left out keep their setting.")]
    Policy {
        #[arg(add = crate::completion::host_arg())]
        name: String,
        /// Let people at the host detach it.
        #[arg(long, conflicts_with = "deny_detach")]
        allow_detach: bool,
        /// Refuse detach requests from the host from now on.
        #[arg(long)]
        deny_detach: bool,
        /// Whether the host reboots by itself when an activation needs a reboot.
        #[arg(long, value_name = "in-window|never")]
        reboot: Option<RebootPolicy>,
        #[command(flatten)]
        json: Json,
    },
    /// Rename a host; its history follows it.
    Rename {
        #[arg(add = crate::completion::host_arg())]
        old: String,
        new: String,
    },
    /// Remove a host; its key stops working at once.
    Rm {
        #[arg(add = crate::completion::host_arg())]
        name: String,
    },
}

pub fn run(command: &HostCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        HostCommand::List { tags, json } => {
            let hosts = client.hosts()?;
            crate::completion::remember_hosts(&hosts);
            let hosts = tags.keep(hosts);
            if json.json {
                return output::json(&hosts);
            }
            if hosts.is_empty() {
                output::print_clean(format_args!("{}", tags.nothing_found()));
                return Ok(());
            }
            let mut t = output::table(["HOST", "TAGS", "SUGGESTS", "STATE", "LAST SEEN"]);
            for h in &hosts {
                t.add_row([
                    &h.name,
                    &output::tag_list(&h.tags),
                    &output::tag_list(&h.facts.suggested_tags),
                    h.state.as_str(),
                    &output::ago(h.last_seen),
                ]);
            }
            output::print_clean(format_args!("{t}"));
        }
        HostCommand::Tag {
            name,
            accept_suggested,
            json,
            changes,
        } => {
            let (mut req, trailing) = tag_changes(changes)?;
            req.accept_suggested |= *accept_suggested;
            let json = json.json || trailing.json;
            if req.add.is_empty() && req.remove.is_empty() && !req.accept_suggested {
                bail!(
                    "say what to change: +TAG to add, -TAG to remove, or --accept-suggested (e.g. `yeet host tag {name} +prod -staging`)"
                );
            }
            let h = client.tag_host(name, &req)?;
            if json {
                return output::json(&h);
            }
            output::print_clean(format_args!(
                "{} has tags: {}",
                h.name,
                output::tag_list(&h.tags)
            ));
        }
        HostCommand::Show { name, json } => {
            let h = client.host(name)?;
            if json.json {
                return output::json(&h);
            }
            output::print_clean(format_args!("{}", output::host_detail(&h)));
        }
        HostCommand::Policy {
            name,
            allow_detach,
            deny_detach,
            reboot,
            json,
        } => {
            let change = HostPolicyChange {
                allow_detach: (*allow_detach || *deny_detach).then_some(*allow_detach),
                reboot: *reboot,
            };
            let h = if change == HostPolicyChange::default() {
                client.host(name)?
            } else {
                client.set_host_policy(name, &change)?
            };
            if json.json {
                return output::json(&h.policy);
            }
            output::print_clean(format_args!(
                "{}: {}",
                h.name,
                output::host_policy(&h.policy)
            ));
        }
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

/// `+a b -c` as a request: `+a` and `b` add, `-c` removes. The command's own flags may
/// follow the tags (clap hands every word after the first tag over as a tag, since `-c`
/// must not be read as an option); they are picked out here.
fn tag_changes(changes: &[String]) -> Result<(TagHostRequest, Json)> {
    let mut req = TagHostRequest::default();
    let mut json = Json::default();
    for change in changes {
        if change == "--json" {
            json.json = true;
        } else if change == "--accept-suggested" {
            req.accept_suggested = true;
        } else if let Some(tag) = change.strip_prefix('-') {
            if tag.starts_with('-') {
                bail!("unexpected option {change}: put options before the tags");
            }
            req.remove.push(tag.to_owned());
        } else {
            req.add
                .push(change.strip_prefix('+').unwrap_or(change).to_owned());
        }
    }
    Ok((req, json))
}

/// `--tag TAG` (repeatable): keeps the hosts carrying any of the tags.
#[derive(clap::Args, Default)]
pub struct TagFilter {
    /// Only hosts carrying this tag (repeatable: any of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl TagFilter {
    pub fn keep(&self, hosts: Vec<HostInfo>) -> Vec<HostInfo> {
        if self.tags.is_empty() {
            return hosts;
        }
        hosts
            .into_iter()
            .filter(|h| h.tags.iter().any(|t| self.tags.contains(t)))
            .collect()
    }

    pub fn is_set(&self) -> bool {
        !self.tags.is_empty()
    }

    /// What an empty listing says.
    pub fn nothing_found(&self) -> String {
        if self.tags.is_empty() {
            "no hosts yet: start yeet-agent on a host, then `yeet pending` and `yeet approve`"
                .to_owned()
        } else {
            format!(
                "no host carries {}; `yeet host list` shows every host's tags, `yeet host tag HOST +TAG` adds one",
                self.tags.join(" or ")
            )
        }
    }
}

#[derive(clap::Args)]
pub struct AttachArgs {
    /// The detached host.
    #[arg(add = crate::completion::host_arg())]
    pub host: String,
    #[command(flatten)]
    pub json: Json,
}

/// `yeet attach HOST`: ends the host's detachment; it obeys at its next check-in.
pub fn attach(args: &AttachArgs, connection: &Connection) -> Result<()> {
    let h = connection.connect()?.attach_host(&args.host)?;
    if args.json.json {
        return output::json(&h);
    }
    let target = output::short_path(h.desired_system.as_deref());
    output::print_clean(format_args!(
        "{} is attached again; it returns to its desired system ({target}) at its next check-in",
        h.name
    ));
    Ok(())
}
