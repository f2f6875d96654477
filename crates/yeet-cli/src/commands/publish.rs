//! `yeet publish`: build hosts' systems from a flake (or take built paths), push each distinct
//! system once, and create a release. The decisions (which hosts, which paths, where to
//! push, where the server checks signatures) are plain functions, tested without a server.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use yeet_proto::api::{CreateReleaseRequest, HostInfo, Release};

use super::{Connection, Json};
use crate::pack::Compression;
use crate::push::PushReport;
use crate::{config, flake, output, push};

#[derive(clap::Args)]
pub struct PublishArgs {
    /// Hosts to build and publish (names in the flake and in the fleet).
    #[arg(add = crate::completion::host_arg())]
    pub hosts: Vec<String>,
    /// Every host the flake defines.
    #[arg(long, conflicts_with = "hosts")]
    pub all: bool,
    /// The flake to build from.
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// HOST=/nix/store/...-system: skip building (CI that already built), repeatable.
    #[arg(long = "path", value_name = "HOST=STORE_PATH", conflicts_with_all = ["hosts", "all"])]
    pub paths: Vec<String>,
    /// What this release is about.
    #[arg(short, long, default_value = "")]
    pub message: String,
    /// Push the closures with `nix copy --to URL` (file://, s3://, ssh://, ...) instead of
    /// uploading them to the server's embedded cache.
    #[arg(long, value_name = "URL", conflicts_with = "push_cmd")]
    pub cache: Option<String>,
    /// Push with a tool of its own (e.g. 'cachix push NAME'); the store paths are appended.
    #[arg(long, value_name = "CMD")]
    pub push_cmd: Option<String>,
    /// With --push-cmd: where the server can read the pushed narinfos to check their
    /// signatures (e.g. https://NAME.cachix.org).
    #[arg(long, value_name = "URL", requires = "push_cmd")]
    pub cache_url: Option<String>,
    /// Sign what is uploaded to the embedded cache with this Nix secret key
    /// (otherwise the narinfos carry the signatures the local store has).
    /// Default: `signing_key` in the config file.
    #[arg(long, value_name = "FILE", env = "YEET_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// How NARs are compressed in the embedded cache. Default: `compression` in the config
    /// file, else zstd.
    #[arg(long, value_enum, env = "YEET_COMPRESSION")]
    pub compression: Option<Compression>,
    /// Apply the release in waves, by this rollout policy (`yeet rollout policy list`).
    /// Default: the server's `default_rollout_policy`, if it has one.
    #[arg(long, value_name = "POLICY", conflicts_with = "now")]
    pub rollout: Option<String>,
    /// Reach every host at once, whatever the server's default rollout policy (an
    /// emergency fix).
    #[arg(long)]
    pub now: bool,
    /// Create a release even when no host's system changes.
    #[arg(long)]
    pub allow_empty: bool,
    /// Then follow the release as `yeet wait` does: exit 0 once every host it changes has
    /// switched and confirmed, 3 when one failed or rolled back, 4 when one did not finish
    /// within --timeout.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub timeout: super::wait::Timeout,
    #[command(flatten)]
    pub json: Json,
}

/// What a release will name: host → system, and where it came from.
#[derive(Debug, Default, PartialEq)]
struct Systems {
    hosts: BTreeMap<String, String>,
    revision: Option<String>,
    dirty: bool,
}

/// What `yeet publish --json` prints.
#[derive(Debug, serde::Serialize)]
struct PublishReport {
    /// The release created; `null` when no host's system changed (and no `--allow-empty`).
    release: Option<Release>,
    /// Host → system, as published.
    systems: BTreeMap<String, String>,
    /// Distinct systems built from the flake (0 with `--path`).
    built: usize,
    /// Hosts whose desired system this publish changes.
    changed_hosts: Vec<String>,
    push: PushReport,
    /// With `--wait`: how the release landed, as `yeet wait --json` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    wait: Option<super::wait::WaitReport>,
}

pub fn run(args: &PublishArgs, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    let file = config::load(connection.config.as_deref())?;
    let fleet = client.hosts()?;
    crate::completion::remember_hosts(&fleet);
    let (systems, built) = if args.paths.is_empty() {
        let wanted = if args.all {
            flake::hosts_in(&args.flake)?
        } else {
            args.hosts.clone()
        };
        check_approved(&wanted, &fleet)?;
        let built = build(&args.flake, &wanted)?;
        let distinct = distinct_systems(&built.hosts).len();
        (built, distinct)
    } else {
        let mut given = Systems::default();
        add_given_paths(&mut given.hosts, &args.paths)?;
        // Before anything is pushed: a typo must not cost an upload.
        check_approved(&given.hosts.keys().cloned().collect::<Vec<_>>(), &fleet)?;
        (given, 0)
    };
    let changed_hosts = changed_hosts(&systems.hosts, &fleet);
    let mut report = PublishReport {
        release: None,
        systems: systems.hosts.clone(),
        built,
        changed_hosts,
        push: PushReport::default(),
        wait: None,
    };
    if report.changed_hosts.is_empty() && !args.allow_empty {
        if args.json.json {
            return output::json(&report);
        }
        eprintln!(
            "no host's system changes: each named host already has this system as its desired one; nothing was pushed and no release created (pass --allow-empty to create one anyway)"
        );
        return Ok(());
    }
    let distinct = distinct_systems(&systems.hosts);
    report.push = push::push(&client, &push_target(args, &file), &distinct)?;
    if !args.json.json {
        eprintln!("{}", describe_push(&report.push, distinct.len()));
    }
    let release = client.create_release(&CreateReleaseRequest {
        hosts: systems.hosts,
        message: args.message.clone(),
        cache: signature_cache(args.cache.as_deref().or(args.cache_url.as_deref())),
        revision: systems.revision,
        dirty: systems.dirty,
        rollout: args.rollout.clone(),
        now: args.now,
    })?;
    if args.wait {
        // Only the hosts this release changes have something to do; the others run it
        // already (or were told so by an earlier release).
        let mut followed = release.clone();
        followed
            .hosts
            .retain(|host, _| report.changed_hosts.contains(host));
        if !args.json.json {
            print_created(&release);
        }
        let landing =
            super::wait::follow(&client, &followed, args.timeout.timeout, args.json.json)?;
        if args.json.json {
            report.release = Some(release);
            let verdict = landing.verdict();
            report.wait = Some(landing);
            output::json(&report)?;
            return verdict;
        }
        landing.print();
        return landing.verdict();
    }
    if args.json.json {
        report.release = Some(release);
        return output::json(&report);
    }
    print_created(&release);
    Ok(())
}

fn print_created(release: &Release) {
    output::print_clean(format_args!(
        "release {} created for {} host(s)",
        release.id,
        release.hosts.len()
    ));
}

/// The summary line of a push, for people.
fn describe_push(push: &PushReport, systems: usize) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    match push.pushed_paths {
        Some(n) => format!(
            "pushed {n} store path(s) for {systems} system(s): {:.1} MiB ({:.1} MiB as NARs); {} already in the cache",
            mib(push.pushed_bytes),
            mib(push.pushed_nar_bytes),
            push.skipped_paths
        ),
        None => format!(
            "pushed the closures of {systems} system(s) ({} store paths)",
            push.closure_paths
        ),
    }
}

/// The hosts whose desired system would change (hosts the fleet does not know count as
/// changed: the server names them in its refusal).
fn changed_hosts(hosts: &BTreeMap<String, String>, fleet: &[HostInfo]) -> Vec<String> {
    hosts
        .iter()
        .filter(|(name, system)| {
            !fleet
                .iter()
                .any(|h| &h.name == *name && h.desired_system.as_deref() == Some(system.as_str()))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn build(flake: &str, wanted: &[String]) -> Result<Systems> {
    let built = flake::build(flake, wanted)?;
    eprintln!(
        "built {} distinct system(s) for {} host(s)",
        built.distinct,
        built.systems.len()
    );
    Ok(Systems {
        hosts: built.systems,
        revision: built.revision,
        dirty: built.dirty,
    })
}

/// Refuses to build for hosts the fleet does not have: a typo would cost a whole build.
fn check_approved(wanted: &[String], fleet: &[HostInfo]) -> Result<()> {
    if wanted.is_empty() {
        bail!("nothing to publish: name hosts, pass --all, or give --path HOST=/nix/store/...");
    }
    let known: Vec<&str> = fleet.iter().map(|h| h.name.as_str()).collect();
    let unknown: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|h| !known.contains(h))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "not approved in the fleet: {}; approved hosts: {} (enroll them with yeet-agent and `yeet approve`)",
            unknown.join(", "),
            known.join(", ")
        );
    }
    Ok(())
}

/// Adds `HOST=PATH` pairs, each host at most once. PATH is a store path or a link to one
/// (`./result`).
fn add_given_paths(hosts: &mut BTreeMap<String, String>, pairs: &[String]) -> Result<()> {
    for pair in pairs {
        let (host, path) = pair
            .split_once('=')
            .with_context(|| format!("--path {pair:?}: expected HOST=/nix/store/..."))?;
        let path = resolve_store_path(path).with_context(|| format!("--path {pair:?}"))?;
        yeet_proto::names::validate_host_name(host)?;
        if hosts.insert(host.to_owned(), path).is_some() {
            bail!("host {host} is given twice");
        }
    }
    Ok(())
}

/// The store path `given` names: itself, or where the links it is (`./result`, a GC root)
/// lead, followed until they reach the store, as Nix's own tools do.
fn resolve_store_path(given: &str) -> Result<String> {
    let is_store_path = |p: &str| p.parse::<nix_meta::StorePath>().is_ok();
    if is_store_path(given) {
        return Ok(given.to_owned());
    }
    let mut at = PathBuf::from(given);
    // As many links as the kernel follows in one path lookup.
    for _ in 0..40 {
        let target = std::fs::read_link(&at).with_context(|| {
            format!(
                "{} is neither a store path (/nix/store/HASH-NAME) nor a link to one (such as ./result)",
                at.display()
            )
        })?;
        at = match at.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
        if let Some(path) = at.to_str().filter(|p| is_store_path(p)) {
            return Ok(path.to_owned());
        }
    }
    bail!("{given}: too many levels of links")
}

/// Each system once, however many hosts run it (one system may serve hundreds).
fn distinct_systems(hosts: &BTreeMap<String, String>) -> Vec<String> {
    let mut systems: Vec<String> = hosts.values().cloned().collect();
    systems.sort();
    systems.dedup();
    systems
}

fn push_target(args: &PublishArgs, file: &config::FileConfig) -> push::Target {
    match (&args.cache, &args.push_cmd) {
        (Some(url), _) => push::Target::Cache(url.clone()),
        (None, Some(cmd)) => push::Target::Command(cmd.clone()),
        (None, None) => push::Target::Embedded {
            signing_key: args.signing_key.clone().or(file.signing_key.clone()),
            compression: args.compression.or(file.compression).unwrap_or_default(),
        },
    }
}

/// Where the server checks the signatures: the cache pushed to, without query parameters
/// such as `?secret-key=` (which must never reach the server); `None` is the embedded cache.
fn signature_cache(pushed_to: Option<&str>) -> Option<String> {
    pushed_to.map(|u| u.split('?').next().unwrap_or(u).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const SYSTEM: &str = "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-system-a";

    fn host(name: &str) -> HostInfo {
        serde_json::from_value(serde_json::json!({
            "name": name, "key_id": "k", "state": "standby", "current_system": null,
            "desired_system": null, "desired_release": null, "last_seen": null,
            "approved_at": 0, "facts": {"os": "", "arch": "", "agent_version": ""}
        }))
        .unwrap()
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        publish: PublishArgs,
    }

    fn parse(args: &[&str]) -> PublishArgs {
        Cli::try_parse_from(std::iter::once("publish").chain(args.iter().copied()))
            .unwrap()
            .publish
    }

    #[test]
    fn unknown_hosts_are_named_with_the_approved_ones() {
        let fleet = [host("web-1"), host("db")];
        check_approved(&["web-1".into()], &fleet).unwrap();
        let err = check_approved(&["web-1".into(), "web-2".into()], &fleet)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not approved in the fleet: web-2") && err.contains("web-1, db"),
            "{err}"
        );
        let err = check_approved(&[], &fleet).unwrap_err().to_string();
        assert!(err.contains("nothing to publish"), "{err}");
    }

    #[test]
    fn given_paths_are_checked_and_each_host_named_once() {
        let mut hosts = BTreeMap::new();
        add_given_paths(&mut hosts, &[format!("web-1={SYSTEM}")]).unwrap();
        assert_eq!(hosts["web-1"], SYSTEM);
        for bad in [
            "web-1".to_owned(),
            "web-2=/etc/passwd".to_owned(),
            format!("Bad Name={SYSTEM}"),
            format!("web-1={SYSTEM}"),
        ] {
            assert!(
                add_given_paths(&mut hosts, std::slice::from_ref(&bad)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(hosts.len(), 1, "a refused pair added nothing");
    }

    /// `--path web-1=./result`: the link (and a link to the link) is followed to the
    /// store path; a link that ends outside the store is refused, naming where it ended.
    #[test]
    fn a_result_link_names_its_store_path() {
        let dir = tempfile::tempdir().unwrap();
        let result = dir.path().join("result");
        std::os::unix::fs::symlink(SYSTEM, &result).unwrap();
        std::os::unix::fs::symlink("result", dir.path().join("again")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("elsewhere")).unwrap();
        let mut hosts = BTreeMap::new();
        let pair = |host: &str, link: &str| format!("{host}={}", dir.path().join(link).display());
        add_given_paths(
            &mut hosts,
            &[pair("web-1", "result"), pair("web-2", "again")],
        )
        .unwrap();
        assert_eq!(
            (hosts["web-1"].as_str(), hosts["web-2"].as_str()),
            (SYSTEM, SYSTEM)
        );
        let err = add_given_paths(&mut hosts, &[pair("web-3", "elsewhere")]).unwrap_err();
        assert!(
            format!("{err:#}").contains("/etc/passwd is neither a store path"),
            "{err:#}"
        );
    }

    #[test]
    fn a_system_shared_by_many_hosts_is_pushed_once() {
        let hosts: BTreeMap<String, String> = (0..300)
            .map(|i| (format!("web-{i}"), SYSTEM.to_owned()))
            .chain([("db".to_owned(), format!("{SYSTEM}-db"))])
            .collect();
        assert_eq!(
            distinct_systems(&hosts),
            [SYSTEM.to_owned(), format!("{SYSTEM}-db")]
        );
    }

    #[test]
    fn the_push_target_follows_the_flags() {
        let none = config::FileConfig::default();
        assert!(matches!(
            push_target(&parse(&["web-1"]), &none),
            push::Target::Embedded {
                signing_key: None,
                compression: Compression::Zstd
            }
        ));
        assert!(matches!(
            push_target(&parse(&["web-1", "--cache", "file:///srv/cache"]), &none),
            push::Target::Cache(url) if url == "file:///srv/cache"
        ));
        assert!(matches!(
            push_target(&parse(&["web-1", "--push-cmd", "cachix push fleet", "--cache-url", "https://fleet.cachix.org"]), &none),
            push::Target::Command(cmd) if cmd == "cachix push fleet"
        ));
        assert!(
            Cli::try_parse_from([
                "publish",
                "web-1",
                "--cache",
                "file:///c",
                "--push-cmd",
                "x"
            ])
            .is_err()
        );
    }

    #[test]
    fn flags_override_the_config_file() {
        let file = config::FileConfig {
            compression: Some(Compression::None),
            signing_key: Some("/etc/yeet/cache-key".into()),
            ..Default::default()
        };
        assert!(matches!(
            push_target(&parse(&["web-1"]), &file),
            push::Target::Embedded { signing_key: Some(k), compression: Compression::None }
                if k == std::path::Path::new("/etc/yeet/cache-key")
        ));
        assert!(matches!(
            push_target(&parse(&["web-1", "--compression", "zstd", "--signing-key", "/k"]), &file),
            push::Target::Embedded { signing_key: Some(k), compression: Compression::Zstd }
                if k == std::path::Path::new("/k")
        ));
    }

    #[test]
    fn only_hosts_whose_desired_system_differs_are_changed() {
        let mut web = host("web-1");
        web.desired_system = Some(SYSTEM.into());
        let fleet = [web, host("db")];
        let same: BTreeMap<String, String> = [("web-1".to_owned(), SYSTEM.to_owned())].into();
        assert!(changed_hosts(&same, &fleet).is_empty());
        let other = format!("{SYSTEM}-2");
        let changes: BTreeMap<String, String> = [
            ("web-1".to_owned(), other.clone()),
            ("db".to_owned(), SYSTEM.to_owned()),
            ("new".to_owned(), SYSTEM.to_owned()),
        ]
        .into();
        assert_eq!(changed_hosts(&changes, &fleet), ["db", "new", "web-1"]);
    }

    #[test]
    fn the_server_never_sees_a_cache_secret() {
        assert_eq!(
            signature_cache(Some(
                "file:///srv/cache?secret-key=/etc/nix/key&compression=zstd"
            )),
            Some("file:///srv/cache".to_owned())
        );
        assert_eq!(
            signature_cache(Some("https://fleet.cachix.org")),
            Some("https://fleet.cachix.org".to_owned())
        );
        assert_eq!(signature_cache(None), None);
    }
}
