//! `yeet cache gc`: the server's embedded binary cache.

use anyhow::Result;
use clap::Subcommand;
use yeet_proto::api::CacheGcRequest;

use super::{Connection, Json};
use crate::output;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Delete what no kept release references; reports the bytes freed.
    Gc {
        /// Keep the closures of each host's newest N releases.
        #[arg(long, default_value_t = 3)]
        keep: u32,
        /// Spare files younger than this many seconds (uploads of a publish in progress).
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        #[command(flatten)]
        json: Json,
    },
}

pub fn run(command: &CacheCommand, connection: &Connection) -> Result<()> {
    let CacheCommand::Gc {
        keep,
        grace_secs,
        json,
    } = command;
    let report = connection.connect()?.cache_gc(&CacheGcRequest {
        keep: *keep,
        grace_secs: *grace_secs,
    })?;
    if json.json {
        return output::json(&report);
    }
    output::print_clean(format_args!(
        "kept {} store paths, deleted {} ({} files), freed {} bytes",
        report.kept_paths, report.deleted_paths, report.deleted_files, report.bytes_freed
    ));
    Ok(())
}
