//! `yeet log HOST` and `yeet history HOST`: what a host's activations did.

use anyhow::Result;
use yeet_proto::api::Limit;
use yeet_proto::names::validate_host_name;

use super::{Connection, Json};
use crate::output;

#[derive(clap::Args)]
pub struct LogArgs {
    #[arg(add = crate::completion::host_arg())]
    pub host: String,
    #[command(flatten)]
    pub json: Json,
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    #[arg(add = crate::completion::host_arg())]
    pub host: String,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    #[command(flatten)]
    pub json: Json,
}

pub fn log(args: &LogArgs, connection: &Connection) -> Result<()> {
    validate_host_name(&args.host)?;
    let log = connection.connect()?.latest_log(&args.host)?;
    if args.json.json {
        return output::json(&log);
    }
    let a = &log.activation;
    output::print_clean(format_args!(
        "{} {} {} ({}): {}",
        a.host,
        a.result.as_str(),
        a.store_path,
        output::ago(Some(a.finished_at)),
        a.reason
    ));
    output::print_clean(format_args!("{}", log.log.trim_end()));
    Ok(())
}

pub fn history(args: &HistoryArgs, connection: &Connection) -> Result<()> {
    validate_host_name(&args.host)?;
    let limit = Limit {
        limit: Some(args.limit),
    };
    let history = connection.connect()?.activations(&args.host, limit)?;
    if args.json.json {
        return output::json(&history);
    }
    if output::said_empty(
        &history,
        &format!(
            "{} has reported no activation yet; it tries one when a release names it",
            args.host
        ),
    ) {
        return Ok(());
    }
    let mut t = output::table(["WHEN", "RESULT", "SYSTEM", "RELEASE", "REASON"]);
    for a in &history {
        let release = a
            .release_id
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into());
        t.add_row([
            &output::ago(Some(a.finished_at)),
            a.result.as_str(),
            &output::short_path(Some(&a.store_path)),
            &release,
            &a.reason,
        ]);
    }
    output::print_clean(format_args!("{t}"));
    Ok(())
}
