//! `yeet osquery`, `yeet query`, `yeet carve` and `yeet carves`: the fleet's osquery nodes,
//! what they run on a schedule, what they logged, SQL run on them now, and files carved
//! from them. Strings from nodes are printed cleaned: a hostile node must not drive the
//! operator's terminal.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use yeet_client::Client;
use yeet_proto::clock::{ago, unix_now};
use yeet_proto::osquery::{
    Campaign, CampaignTarget, LogFilter, OsqueryLogLine, ScheduledQuery, StartCarve, StartQuery,
};

use super::{Connection, Json};
use crate::output::{json, print_clean, said_empty, table};

/// How often a waiting command asks the server for news.
const POLL: Duration = Duration::from_millis(500);

#[derive(Subcommand)]
pub enum OsqueryCommand {
    /// Enrolled nodes, linked to their yeet hosts or not.
    Nodes(Json),
    /// Scheduled queries: every node runs them and logs the results here.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// osqueryd options served to every node (e.g. distributed_interval).
    #[command(subcommand)]
    Options(OptionsCommand),
    /// Stored result and status logs.
    Logs(LogsArgs),
}

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Schedule a query on every node, or on named hosts.
    Add(AddArgs),
    List(Json),
    /// Remove a scheduled query; nodes drop it at their next config refresh.
    Rm {
        name: String,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// The query's name; its results are logged under it.
    name: String,
    /// The SQL.
    sql: String,
    /// Seconds between runs.
    #[arg(long)]
    interval: u64,
    /// Only on this host or node (repeatable). Default: every node.
    #[arg(add = crate::completion::host_arg(), long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Put it in this pack (logged as pack_<PACK>_<NAME>).
    #[arg(long)]
    pack: Option<String>,
    /// Log the whole result each run, not the difference.
    #[arg(long)]
    snapshot: bool,
    /// Only on this platform (linux, darwin, windows).
    #[arg(long)]
    platform: Option<String>,
}

#[derive(Subcommand)]
pub enum OptionsCommand {
    /// Set an option; VALUE is read as JSON when it is a number or boolean.
    Set {
        /// The osqueryd flag's name, e.g. distributed_interval.
        name: String,
        value: String,
    },
    List(Json),
    Rm {
        name: String,
    },
}

#[derive(Args)]
pub struct LogsArgs {
    /// Only this host or node.
    #[arg(add = crate::completion::host_arg(), long)]
    host: Option<String>,
    /// Only this scheduled query's results.
    #[arg(long)]
    query: Option<String>,
    /// Status (osqueryd's own) lines instead of results.
    #[arg(long)]
    status: bool,
    /// Received within this many seconds, or since this Unix time.
    #[arg(long)]
    since: Option<i64>,
    /// Keep printing new lines.
    #[arg(long)]
    follow: bool,
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct QueryArgs {
    /// The SQL, e.g. 'SELECT * FROM os_version'.
    sql: String,
    /// Run on this host or node (repeatable).
    #[arg(add = crate::completion::host_arg(), long = "host", value_name = "HOST", conflicts_with = "all")]
    hosts: Vec<String>,
    /// Run on every node.
    #[arg(long)]
    all: bool,
    /// Seconds to wait for answers.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CarveArgs {
    /// The host (or node) to carve from.
    #[arg(add = crate::completion::host_arg())]
    host: String,
    /// The file; `%` makes it a LIKE pattern (e.g. /var/log/%).
    path: String,
    /// Seconds to wait for the upload.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    json: Json,
}

#[derive(Subcommand)]
pub enum CarvesCommand {
    /// Carves and their progress.
    List(Json),
    /// Download a complete carve's archive (a tar, zstd-compressed under
    /// --carver_compression), checking its SHA-256.
    Get {
        id: i64,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

pub fn run(command: &OsqueryCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        OsqueryCommand::Nodes(args) => nodes(&client, args.json),
        OsqueryCommand::Schedule(c) => schedule(&client, c),
        OsqueryCommand::Options(c) => options(&client, c),
        OsqueryCommand::Logs(args) => logs(&client, args),
    }
}

fn nodes(client: &Client, as_json: bool) -> Result<()> {
    let nodes = client.osquery_nodes()?;
    if as_json {
        return json(&nodes);
    }
    if said_empty(
        &nodes,
        "no osquery nodes yet; osqueryd enrolls with the secret osquery-enroll (see the README's osquery section)",
    ) {
        return Ok(());
    }
    let mut t = table([
        "NODE",
        "HOST",
        "PLATFORM",
        "OS",
        "OSQUERY",
        "ENROLLED",
        "LAST SEEN",
        "LOGS STORED",
        "TAKEOVERS REFUSED",
    ]);
    for n in &nodes {
        let refused = match n.takeovers_refused {
            0 => String::new(),
            count => format!("{count}, last {}", ago(n.last_refused_at)),
        };
        t.add_row([
            n.host_identifier.clone(),
            n.host.clone().unwrap_or_else(|| "(unlinked)".into()),
            n.platform.clone(),
            n.os_name.clone(),
            n.osquery_version.clone(),
            format!("{} ({}x)", ago(Some(n.enrolled_at)), n.enrollments),
            ago(Some(n.last_seen)),
            match n.log_refusals {
                0 => format!("{}", indicatif::HumanBytes(n.log_bytes.max(0) as u64)),
                count => format!(
                    "{} ({count} batches refused, last {})",
                    indicatif::HumanBytes(n.log_bytes.max(0) as u64),
                    ago(n.last_log_refused_at)
                ),
            },
            refused,
        ]);
    }
    print_clean(t);
    Ok(())
}

fn schedule(client: &Client, command: &ScheduleCommand) -> Result<()> {
    match command {
        ScheduleCommand::Add(a) => {
            let q = client.add_scheduled_query(&ScheduledQuery {
                name: a.name.clone(),
                query: a.sql.clone(),
                interval_secs: a.interval,
                snapshot: a.snapshot,
                pack: a.pack.clone(),
                platform: a.platform.clone(),
                hosts: a.hosts.clone(),
                created_at: 0,
                created_by: String::new(),
            })?;
            println!(
                "scheduled {} every {}s; nodes pick it up at their next config refresh",
                q.name, q.interval_secs
            );
        }
        ScheduleCommand::List(args) => {
            let queries = client.osquery_schedule()?;
            if args.json {
                return json(&queries);
            }
            if said_empty(
                &queries,
                "no scheduled queries; add one with `yeet osquery schedule add NAME SQL --interval SECS`",
            ) {
                return Ok(());
            }
            let mut t = table(["NAME", "PACK", "INTERVAL", "HOSTS", "SQL"]);
            for q in &queries {
                let hosts = if q.hosts.is_empty() {
                    "all".into()
                } else {
                    q.hosts.join(", ")
                };
                let pack = q.pack.clone().unwrap_or_default();
                t.add_row([
                    q.name.clone(),
                    pack,
                    format!("{}s", q.interval_secs),
                    hosts,
                    q.query.clone(),
                ]);
            }
            print_clean(t);
        }
        ScheduleCommand::Rm { name } => {
            client.remove_scheduled_query(name)?;
            println!("removed {name}");
        }
    }
    Ok(())
}

fn options(client: &Client, command: &OptionsCommand) -> Result<()> {
    match command {
        OptionsCommand::Set { name, value } => {
            let parsed = serde_json::from_str::<serde_json::Value>(value)
                .ok()
                .filter(|v| v.is_number() || v.is_boolean())
                .unwrap_or_else(|| serde_json::Value::String(value.clone()));
            let o = client.set_osquery_option(name, parsed)?;
            println!("set {} = {}", o.name, o.value);
        }
        OptionsCommand::List(args) => {
            let all = client.osquery_options()?;
            if args.json {
                return json(&all);
            }
            if said_empty(
                &all,
                "no options set; set one with `yeet osquery options set NAME VALUE`",
            ) {
                return Ok(());
            }
            let mut t = table(["OPTION", "VALUE", "SET BY"]);
            for o in &all {
                t.add_row([
                    o.name.clone(),
                    o.value.to_string(),
                    format!("{} {}", o.updated_by, ago(Some(o.updated_at))),
                ]);
            }
            print_clean(t);
        }
        OptionsCommand::Rm { name } => {
            client.remove_osquery_option(name)?;
            println!("unset {name}");
        }
    }
    Ok(())
}

fn logs(client: &Client, args: &LogsArgs) -> Result<()> {
    // A small --since is a duration; a large one a Unix time.
    let since = args
        .since
        .map(|s| if s < 1_000_000_000 { unix_now() - s } else { s });
    let mut filter = LogFilter {
        host: args.host.clone(),
        query: args.query.clone(),
        kind: Some(if args.status { "status" } else { "result" }.into()),
        since,
        after: None,
        limit: Some(args.limit),
    };
    // Pages end at `limit` lines or at the server's byte budget; `next_after` continues.
    let mut printed = 0;
    loop {
        let page = client.osquery_logs(&filter)?;
        for line in &page.lines {
            filter.after = Some(line.id);
            print_log_line(line, args.json)?;
        }
        printed += page.lines.len() as i64;
        if page.next_after.is_some() && (args.follow || printed < args.limit) {
            if !args.follow {
                filter.limit = Some(args.limit - printed);
            }
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn print_log_line(line: &OsqueryLogLine, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string(line)?);
        return Ok(());
    }
    let host = line.host.clone().unwrap_or(line.node.clone());
    // One line is parsed at a time, for its columns (results) or message (status).
    let parsed: serde_json::Value = serde_json::from_str(line.line.get())?;
    let body = parsed
        .get("columns")
        .or(parsed.get("message"))
        .unwrap_or(&parsed);
    print_clean(format!(
        "{} {host} {} {body}",
        ago(Some(line.received_at)),
        line.name
    ));
    Ok(())
}

/// `yeet query`: starts the query, prints each node's answer as it arrives, and at the
/// deadline names the nodes that did not answer.
pub fn query(args: &QueryArgs, connection: &Connection) -> Result<()> {
    if !args.all && args.hosts.is_empty() {
        bail!("name the hosts to query (--host HOST, repeatable) or ask all of them (--all)");
    }
    let client = connection.connect()?;
    let campaign = client.start_osquery_query(&StartQuery {
        query: args.sql.clone(),
        hosts: args.hosts.clone(),
        all: args.all,
        timeout_secs: args.timeout,
    })?;
    if !args.json {
        eprintln!(
            "query {} sent to {} nodes; waiting up to {}s",
            campaign.id,
            campaign.targets.len(),
            args.timeout
        );
    }
    let mut shown = BTreeSet::new();
    let finished = loop {
        let now = client.osquery_campaign(campaign.id)?;
        for t in now.targets.iter().filter(|t| t.answered_at.is_some()) {
            if shown.insert(t.node.clone()) && !args.json {
                print_answer(t);
            }
        }
        if shown.len() == now.targets.len() || unix_now() > now.deadline {
            break now;
        }
        std::thread::sleep(POLL);
    };
    report_silent(&finished, args.json)
}

fn print_answer(t: &CampaignTarget) {
    let who = t.host.clone().unwrap_or(t.node.clone());
    if t.status != Some(0) {
        print_clean(format!(
            "{who}: failed: {}",
            t.message.clone().unwrap_or_default()
        ));
        return;
    }
    let rows = t.parsed_rows();
    let columns: Vec<String> = rows
        .first()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(columns.clone());
    for row in &rows {
        table.add_row(columns.iter().map(|c| match row.get(c) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }));
    }
    print_clean(format!("{who}: {} rows\n{table}", rows.len()));
}

fn report_silent(campaign: &Campaign, as_json: bool) -> Result<()> {
    if as_json {
        return json(campaign);
    }
    let silent: Vec<String> = campaign
        .targets
        .iter()
        .filter(|t| t.answered_at.is_none())
        .map(|t| t.host.clone().unwrap_or(t.node.clone()))
        .collect();
    if !silent.is_empty() {
        print_clean(format!("no answer from: {}", silent.join(", ")));
    }
    Ok(())
}

/// `yeet carve`: starts a carve and waits for its upload to complete.
pub fn carve(args: &CarveArgs, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    let campaign = client.start_osquery_carve(&StartCarve {
        host: args.host.clone(),
        path: args.path.clone(),
        timeout_secs: args.timeout,
    })?;
    eprintln!(
        "carve requested from {} (query {}); waiting for the upload",
        args.host, campaign.id
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let carve = client
            .osquery_carves()?
            .into_iter()
            .find(|c| c.campaign_id == Some(campaign.id));
        if let Some(c) = carve.as_ref().filter(|c| c.completed_at.is_some()) {
            if args.json.json {
                return crate::output::json(c);
            }
            println!(
                "carve {} complete: {} bytes, sha256 {}",
                c.id,
                c.carve_size,
                c.sha256.clone().unwrap_or_default()
            );
            println!("download it with: yeet carves get {} -o FILE", c.id);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            match carve {
                Some(c) => bail!(
                    "carve {} is incomplete after {}s: {} of {} blocks; `yeet carves` shows its progress",
                    c.id,
                    args.timeout,
                    c.blocks_received,
                    c.block_count
                ),
                None => bail!(
                    "{} did not start the carve within {}s (is osqueryd running with --disable_carver=false and the carver endpoints set?)",
                    args.host,
                    args.timeout
                ),
            }
        }
        std::thread::sleep(POLL);
    }
}

pub fn carves(command: &CarvesCommand, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    match command {
        CarvesCommand::List(args) => {
            let all = client.osquery_carves()?;
            if args.json {
                return json(&all);
            }
            if said_empty(&all, "no carves; start one with `yeet carve HOST PATH`") {
                return Ok(());
            }
            let mut t = table(["ID", "HOST", "BYTES", "BLOCKS", "STARTED", "SHA-256"]);
            for c in &all {
                t.add_row([
                    c.id.to_string(),
                    c.host.clone().unwrap_or(c.node.clone()),
                    c.carve_size.to_string(),
                    format!("{}/{}", c.blocks_received, c.block_count),
                    ago(Some(c.started_at)),
                    c.sha256.clone().unwrap_or_else(|| "(incomplete)".into()),
                ]);
            }
            print_clean(t);
            Ok(())
        }
        CarvesCommand::Get { id, output } => download(&client, *id, output),
    }
}

/// Downloads to a temporary file beside `output`, and keeps it only if its SHA-256 is the
/// server's.
fn download(client: &Client, id: i64, output: &PathBuf) -> Result<()> {
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut hashing = HashingWriter {
        inner: tmp.as_file_mut(),
        hash: Sha256::new(),
        bytes: 0,
    };
    let expected = client.download_carve(id, &mut hashing)?;
    let (actual, bytes) = (hex::encode(hashing.hash.finalize()), hashing.bytes);
    match expected {
        Some(e) if e == actual => {}
        Some(e) => {
            bail!("the download's SHA-256 is {actual}, the server's {e}: not saved; try again")
        }
        None => bail!("the server sent no checksum for carve {id}: not saved"),
    }
    tmp.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "wrote {} ({bytes} bytes, sha256 {actual})",
        output.display()
    );
    Ok(())
}

struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    hash: Sha256,
    bytes: u64,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
