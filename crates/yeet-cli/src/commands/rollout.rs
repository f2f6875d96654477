//! `yeet rollout ...` and `yeet rollouts`: rollout policies, starting a rollout of an
//! existing release, and following and steering rollouts (status, pause, resume, abort,
//! promote).

use anyhow::Result;
use clap::Subcommand;
use std::time::Duration;
use yeet_proto::api::Limit;
use yeet_proto::rollout::{
    HealthCheck, NamedPolicy, OnFailure, Rollout, RolloutControl, RolloutPolicy,
    StartRolloutRequest, Threshold, WaveSelector,
};
use yeet_proto::text::{parse_duration, show_duration};

use super::{Connection, Json};
use crate::output;

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Rollout policies: how releases reach the fleet, wave by wave.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Roll an existing release's systems out again, in waves (a new release).
    Start {
        /// The release to roll out.
        release: i64,
        /// The policy to roll it out by.
        #[arg(long)]
        policy: String,
        #[command(flatten)]
        json: Json,
    },
    /// A rollout's waves and every host's state, with the reason it waits. Default: the
    /// newest rollout.
    Status {
        /// The rollout (its release's id).
        id: Option<i64>,
        /// Print it again whenever it changes, until it stops (halted, aborted, completed).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Stop opening waves until `yeet rollout resume`.
    Pause(ControlArgs),
    /// Go on with a paused rollout.
    Resume(ControlArgs),
    /// Stop a rollout for good; hosts keep what they were given.
    Abort(ControlArgs),
    /// Open the next wave now, skipping the rest of the current wave's gate and bake.
    Promote(ControlArgs),
}

#[derive(clap::Args)]
pub struct ControlArgs {
    /// The rollout (its release's id).
    pub id: i64,
    #[command(flatten)]
    pub json: Json,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set a policy (replacing one of that name). Running rollouts keep theirs.
    #[command(after_help = POLICY_EXAMPLE)]
    Set(PolicySetArgs),
    /// List the policies.
    List(Json),
    /// Remove a policy.
    Rm { name: String },
}

const POLICY_EXAMPLE: &str = "\
Example:
  yeet rollout policy set prod --wave tag:canary --wave 10% --wave 50% --wave 100% \\
      --bake 15m --max-failures 1 --on-failure rollback --health failed-units=0
  yeet publish --all --rollout prod

A wave takes, from the hosts no earlier wave took: those with a tag (tag:T), one host
(host:NAME), or a share picked by a stable hash (P%). Hosts no wave takes join the last.";

#[derive(clap::Args)]
pub struct PolicySetArgs {
    pub name: String,
    /// A wave, in order: tag:TAG, host:NAME or a percentage (10%) of the hosts left.
    #[arg(long = "wave", required = true, value_name = "SELECTOR", value_parser = |s: &str| s.parse::<WaveSelector>())]
    pub waves: Vec<WaveSelector>,
    /// How long a wave must stay healthy, once every online host in it confirmed, before
    /// the next opens (90s, 15m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    pub bake: Duration,
    /// Failures a wave tolerates (a number of hosts, or a percentage); the whole rollout
    /// tolerates the same share of its hosts.
    #[arg(long, value_name = "N|P%", value_parser = |s: &str| s.parse::<Threshold>(), default_value = "0")]
    pub max_failures: Threshold,
    /// What a failed wave does: halt (open no more waves) or rollback (halt, and point the
    /// wave's hosts back at their previous systems).
    #[arg(long, value_enum, default_value = "halt")]
    pub on_failure: OnFailureArg,
    /// Health a wave's hosts must keep during the bake: failed-units=0 (no failed systemd
    /// units in their check-ins).
    #[arg(long, value_name = "CHECK", value_parser = |s: &str| s.parse::<HealthCheck>())]
    pub health: Vec<HealthCheck>,
    /// The share of a wave's hosts that must confirm before it passes (80%); the others,
    /// offline, are deferred.
    #[arg(long, value_name = "P%", value_parser = parse_percent)]
    pub min_online: Option<u8>,
    #[command(flatten)]
    pub json: Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnFailureArg {
    Halt,
    Rollback,
}

fn parse_percent(s: &str) -> Result<u8, String> {
    match s.trim_end_matches('%').parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{s:?} is no percentage; write e.g. 80%")),
    }
}

#[derive(clap::Args)]
pub struct RolloutsArgs {
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    #[command(flatten)]
    pub json: Json,
}

pub fn run(command: &RolloutCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        RolloutCommand::Policy(PolicyCommand::Set(args)) => {
            let policy = RolloutPolicy {
                waves: args.waves.clone(),
                bake_secs: args.bake.as_secs(),
                max_failures: args.max_failures,
                on_failure: match args.on_failure {
                    OnFailureArg::Halt => OnFailure::Halt,
                    OnFailureArg::Rollback => OnFailure::Rollback,
                },
                health: args.health.clone(),
                min_online: args.min_online,
            };
            let set = client.set_rollout_policy(&args.name, &policy)?;
            if args.json.json {
                return output::json(&set);
            }
            println!("policy {}: {}", set.name, describe_policy(&set.policy));
            Ok(())
        }
        RolloutCommand::Policy(PolicyCommand::List(json)) => {
            let policies = client.rollout_policies()?;
            if json.json {
                return output::json(&policies);
            }
            if output::said_empty(
                &policies,
                "no rollout policies; add one with `yeet rollout policy set NAME --wave ...`",
            ) {
                return Ok(());
            }
            let mut t = output::table(["NAME", "POLICY", "SET BY", "WHEN"]);
            for NamedPolicy {
                name,
                policy,
                updated_by,
                updated_at,
            } in &policies
            {
                t.add_row([
                    name.as_str(),
                    &describe_policy(policy),
                    updated_by,
                    &output::ago(Some(*updated_at)),
                ]);
            }
            output::print_clean(t);
            Ok(())
        }
        RolloutCommand::Policy(PolicyCommand::Rm { name }) => {
            client.remove_rollout_policy(name)?;
            println!("policy {name} removed");
            Ok(())
        }
        RolloutCommand::Start {
            release,
            policy,
            json,
        } => {
            let created = client.start_rollout(&StartRolloutRequest {
                release: *release,
                policy: policy.clone(),
            })?;
            if json.json {
                return output::json(&created);
            }
            println!(
                "rollout {} started: release {release}'s systems for {} host(s), by policy {policy}; follow it with `yeet rollout status {}`",
                created.id,
                created.hosts.len(),
                created.id
            );
            Ok(())
        }
        RolloutCommand::Status { id, watch, json } => {
            let id = match id {
                Some(id) => *id,
                None => match client.rollouts(Limit { limit: Some(1) })?.first() {
                    Some(r) => r.release,
                    None => {
                        println!(
                            "no rollouts yet; start one with `yeet publish --rollout POLICY ...`"
                        );
                        return Ok(());
                    }
                },
            };
            let mut last = None;
            loop {
                let rollout = client.rollout(id)?;
                if last.as_ref() != Some(&rollout) {
                    if json.json {
                        output::json(&rollout)?;
                    } else {
                        print_rollout(&rollout);
                    }
                }
                let stopped = !rollout.state.is_active();
                last = Some(rollout);
                if !*watch || stopped {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        RolloutCommand::Pause(args) => control(&client, args, RolloutControl::Pause),
        RolloutCommand::Resume(args) => control(&client, args, RolloutControl::Resume),
        RolloutCommand::Abort(args) => control(&client, args, RolloutControl::Abort),
        RolloutCommand::Promote(args) => control(&client, args, RolloutControl::Promote),
    }
}

fn control(client: &yeet_client::Client, args: &ControlArgs, what: RolloutControl) -> Result<()> {
    let rollout = client.control_rollout(args.id, what)?;
    if args.json.json {
        return output::json(&rollout);
    }
    print_rollout(&rollout);
    Ok(())
}

pub fn list(args: &RolloutsArgs, connection: &Connection) -> Result<()> {
    let rollouts = connection.connect()?.rollouts(Limit {
        limit: Some(args.limit),
    })?;
    if args.json.json {
        return output::json(&rollouts);
    }
    if output::said_empty(
        &rollouts,
        "no rollouts yet; start one with `yeet publish --rollout POLICY ...`",
    ) {
        return Ok(());
    }
    let mut t = output::table(["ID", "WHEN", "POLICY", "STATE", "WAVE", "HOSTS", "REASON"]);
    for r in &rollouts {
        let hosts: usize = r.waves.iter().map(|w| w.hosts.len()).sum();
        t.add_row([
            &r.release.to_string(),
            &output::ago(Some(r.created_at)),
            &r.policy_name,
            r.state.as_str(),
            &wave_position(r),
            &hosts.to_string(),
            &r.reason,
        ]);
    }
    output::print_clean(t);
    Ok(())
}

/// `2/4`, `-` before the first wave, `4/4` once every wave passed.
fn wave_position(r: &Rollout) -> String {
    match r.wave {
        None => format!("-/{}", r.waves.len()),
        Some(w) => format!("{}/{}", (w + 1).min(r.waves.len()), r.waves.len()),
    }
}

/// A policy in one line, as `policy set` would be written.
fn describe_policy(p: &RolloutPolicy) -> String {
    let waves: Vec<String> = p.waves.iter().map(|w| w.to_string()).collect();
    let mut out = format!(
        "waves {}; bake {}; max failures {}; on failure {}",
        waves.join(" → "),
        show_duration(Duration::from_secs(p.bake_secs)),
        p.max_failures,
        match p.on_failure {
            OnFailure::Halt => "halt",
            OnFailure::Rollback => "rollback",
        }
    );
    for h in &p.health {
        out.push_str(&format!("; health {h}"));
    }
    if let Some(m) = p.min_online {
        out.push_str(&format!("; min online {m}%"));
    }
    out
}

fn print_rollout(r: &Rollout) {
    let mut head = format!(
        "rollout {} ({}), policy {}: {}, wave {}",
        r.release,
        output::ago(Some(r.created_at)),
        r.policy_name,
        r.state.as_str(),
        wave_position(r)
    );
    if !r.reason.is_empty() {
        head.push_str(&format!(" — {}", r.reason));
    }
    output::print_clean(head);
    let mut t = output::table(["WAVE", "HOST", "STATE", "WHY"]);
    for (i, w) in r.waves.iter().enumerate() {
        let label = format!(
            "{} {} ({}, {}/{} failures)",
            i + 1,
            w.selector,
            w.state.as_str(),
            w.failures,
            w.max_failures
        );
        if w.hosts.is_empty() {
            t.add_row([label.as_str(), "-", "-", "no hosts"]);
        }
        for h in &w.hosts {
            t.add_row([label.as_str(), &h.name, h.state.as_str(), &h.reason]);
        }
    }
    output::print_clean(t);
}
