//! `yeet host show|policy|rename|rm`, and `yeet attach`.

use anyhow::Result;
use clap::Subcommand;
use yeet_proto::api::HostPolicy;

use super::{Connection, Json};
use crate::output;

#[derive(Subcommand)]
pub enum HostCommand {
    /// Show one host in detail: state, systems, detachment and policy.
    Show {
        #[arg(add = crate::completion::host_arg())]
        name: String,
        #[command(flatten)]
        json: Json,
    },
    /// Show or set what people at the host may do on their own. Without a flag, shows it.
    #[command(after_help = "\
A host allowed to detach may run a locally chosen (and still trusted) system, asked for
on the host with `yeet-agent detach` and `yeet-agent switch PATH`. Releases published
meanwhile are recorded and applied once it attaches again (`yeet-agent attach` there, or
`yeet attach HOST` here). Denying detachment does not end an open one: `yeet attach` does.")]
    Policy {
        #[arg(add = crate::completion::host_arg())]
        name: String,
        /// Let people at the host detach it.
        #[arg(long, conflicts_with = "deny_detach")]
        allow_detach: bool,
        /// Refuse detach requests from the host from now on.
        #[arg(long)]
        deny_detach: bool,
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
            json,
        } => {
            let h = if *allow_detach || *deny_detach {
                let policy = HostPolicy {
                    allow_detach: *allow_detach,
                };
                client.set_host_policy(name, &policy)?
            } else {
                client.host(name)?
            };
            if json.json {
                return output::json(&h.policy);
            }
            let may = if h.policy.allow_detach {
                "may"
            } else {
                "may not"
            };
            output::print_clean(format_args!(
                "{}: people at the host {may} detach it",
                h.name
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
