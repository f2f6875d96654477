//! Getting closures into a binary cache before a release names them: the server's embedded
//! cache (default; only missing paths are packed and uploaded, dependencies first), any
//! store Nix can write (`--cache URL`, i.e. `nix copy --to`), or a tool with its own client
//! (`--push-cmd`, e.g. `cachix push NAME`).

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use yeet_client::Client;

use crate::pack::{Compression, Packed, Spooled, pack_all, sign, store_infos};

pub enum Target {
    Embedded {
        signing_key: Option<PathBuf>,
        compression: Compression,
    },
    Cache(String),
    Command(String),
}

/// Runs a Nix command (or a push tool) and returns its stdout; its stderr on failure.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    collect_output(spawn_captured(cmd, what)?, what)
}

/// Starts a command whose output [`collect_output`] collects, so that several run at once.
pub fn spawn_captured(cmd: &mut Command, what: &str) -> Result<std::process::Child> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what} (is Nix installed?)"))
}

/// Waits for a command [`spawn_captured`] started; its stdout, or its stderr on failure.
pub fn collect_output(child: std::process::Child, what: &str) -> Result<String> {
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every path in the closures of `paths`.
pub fn closure(paths: &[String]) -> Result<Vec<String>> {
    let out = run(
        Command::new("nix-store")
            .arg("--query")
            .arg("--requisites")
            .args(paths),
        "nix-store --query --requisites",
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// `nix copy --to TO PATHS`: Nix copies the closures, skipping what `TO` already has.
fn nix_copy(to: &str, paths: &[String]) -> Result<()> {
    run(
        nix_command().args(["copy", "--to", to]).args(paths),
        "nix copy",
    )
    .map(drop)
}

/// `nix` with the `nix-command` feature this needs on Nix versions that gate it.
fn nix_command() -> Command {
    let mut c = Command::new("nix");
    c.args(["--extra-experimental-features", "nix-command"]);
    c
}

/// Pushes the closures of `paths`; reports what was transferred.
pub fn push(client: &Client, target: &Target, paths: &[String]) -> Result<PushReport> {
    // Another tool decides what to transfer; the report can only give the closure's size.
    let by_another_tool = || -> Result<PushReport> {
        Ok(PushReport {
            closure_paths: closure(paths)?.len(),
            ..PushReport::default()
        })
    };
    match target {
        Target::Cache(url) => {
            let spinner = spinner(&format!("nix copy --to {url}"));
            nix_copy(url, paths)?;
            spinner.finish_and_clear();
            by_another_tool()
        }
        Target::Command(cmd) => {
            let spinner = spinner(cmd);
            // The paths are appended as arguments, as `cachix push NAME PATH...` expects.
            run(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("{cmd} \"$@\""))
                    .arg("yeet-push")
                    .args(paths),
                cmd,
            )?;
            spinner.finish_and_clear();
            by_another_tool()
        }
        Target::Embedded {
            signing_key,
            compression,
        } => push_embedded(client, signing_key.as_deref(), *compression, paths),
    }
}

/// Makes `path` valid in the local store, fetching it from `cache` (trusted as nix.conf says).
/// `path` comes from the server (a host's report): only a plain output path is accepted, as
/// realising a derivation would build it here.
pub fn ensure_local(path: &str, cache: &str) -> Result<()> {
    let parsed: nix_meta::StorePath = path.parse().with_context(|| {
        format!(
            "the server sent {:?}, which is not a store path",
            path.escape_debug().to_string()
        )
    })?;
    if parsed.is_derivation() {
        bail!("the server sent a derivation ({parsed}) as a system; refusing to build it");
    }
    let valid = Command::new("nix-store")
        .args(["--check-validity", path])
        .output()
        .is_ok_and(|o| o.status.success());
    if valid {
        return Ok(());
    }
    run(Command::new("nix-store").args(["--realise", path, "--option", "extra-substituters", cache]), &format!("fetching {path}"))
        .with_context(|| format!("{path} is not in the local store; build it, or trust the fleet's key in nix.conf so it can be fetched from {cache}"))
        .map(drop)
}

/// `nix store diff-closures OLD NEW`: version changes and size deltas per package.
pub fn diff_closures(old: &str, new: &str) -> Result<String> {
    let out = run(
        nix_command().args(["store", "diff-closures", old, new]),
        "nix store diff-closures",
    )?;
    Ok(if out.trim().is_empty() {
        "no package-level differences\n".into()
    } else {
        out
    })
}

fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn hash_part(path: &str) -> Result<String> {
    Ok(path
        .parse::<nix_meta::StorePath>()
        .with_context(|| format!("{path} is not a store path"))?
        .hash_part()
        .to_owned())
}

/// What a push did, for `yeet publish`'s summary and `--json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    /// Store paths in the published closures.
    pub closure_paths: usize,
    /// Paths uploaded; `None` when another tool (`nix copy`, a push command) decided.
    pub pushed_paths: Option<usize>,
    /// Bytes uploaded (compressed NARs), and the same NARs uncompressed.
    pub pushed_bytes: u64,
    pub pushed_nar_bytes: u64,
    /// Paths the cache already had.
    pub skipped_paths: usize,
}

/// The embedded cache's answer for a closure: the paths it lacks, and the keys it wants.
fn missing_in_cache(
    client: &Client,
    closure: &[String],
) -> Result<(Vec<String>, Vec<nix_meta::PublicKey>)> {
    let mut missing = Vec::new();
    let mut trusted = Vec::new();
    for part in closure.chunks(yeet_proto::api::MAX_CACHE_QUERY_PATHS) {
        let hashes = part
            .iter()
            .map(|p| hash_part(p))
            .collect::<Result<Vec<_>>>()?;
        let answer = client.cache_missing(&yeet_proto::api::CacheMissingRequest {
            hashes: hashes.clone(),
        })?;
        let wanted: BTreeSet<String> = answer.missing.into_iter().collect();
        missing.extend(
            part.iter()
                .zip(&hashes)
                .filter(|(_, h)| wanted.contains(*h))
                .map(|(p, _)| p.clone()),
        );
        trusted = answer
            .trusted_keys
            .iter()
            .map(|k| {
                k.parse().with_context(|| {
                    format!("the server sent a trusted key that is not one: {k:?}")
                })
            })
            .collect::<Result<_>>()?;
    }
    Ok((missing, trusted))
}

/// Reads `--signing-key`, refusing at once a key the server would not trust (`trusted`
/// empty: the server checks no signatures), with the names it does trust.
fn read_signing_key(file: &Path, trusted: &[nix_meta::PublicKey]) -> Result<nix_meta::SecretKey> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the signing key {}", file.display()))?;
    let key: nix_meta::SecretKey = text.trim().parse().with_context(|| {
        format!(
            "{} is not a Nix secret key (nix-store --generate-binary-cache-key writes one)",
            file.display()
        )
    })?;
    let public = key.public();
    if !trusted.is_empty() && !trusted.contains(&public) {
        let names: Vec<&str> = trusted.iter().map(|k| k.name.as_str()).collect();
        let why = if names.contains(&key.name.as_str()) {
            format!("the server trusts another key named {}", key.name)
        } else {
            format!("the server trusts only keys named {}", names.join(", "))
        };
        bail!(
            "the signing key {} ({}) is not one the server trusts: {why}; nothing was uploaded. Add `{public}` to the server's trusted_cache_keys (and to the hosts' trusted_keys), or sign with a key it trusts",
            file.display(),
            key.name,
        );
    }
    Ok(key)
}

/// Refuses, before anything is uploaded, paths no key the server trusts has signed.
fn check_signed(infos: &[nix_meta::PathInfo], trusted: &[nix_meta::PublicKey]) -> Result<()> {
    if trusted.is_empty() {
        return Ok(());
    }
    let unsigned: Vec<String> = infos
        .iter()
        .filter(|i| i.verify(trusted).is_err())
        .map(|i| i.store_path.to_string())
        .collect();
    if let Some(first) = unsigned.first() {
        let names: Vec<&str> = trusted.iter().map(|k| k.name.as_str()).collect();
        bail!(
            "{} of {} store path(s) to upload are not signed by a key the server trusts ({}), e.g. {first}; nothing was uploaded. Sign them with --signing-key FILE (whose public key is in the server's trusted_cache_keys)",
            unsigned.len(),
            infos.len(),
            names.join(", ")
        );
    }
    Ok(())
}

/// Splits `infos` (largest first) into `shares` lists of about equal NAR bytes: each is
/// packed by one export stream.
fn balanced(infos: &[nix_meta::PathInfo], shares: usize) -> Vec<Vec<&nix_meta::PathInfo>> {
    let mut lists: Vec<(u64, Vec<&nix_meta::PathInfo>)> = vec![(0, Vec::new()); shares.max(1)];
    for info in infos {
        if let Some(lightest) = lists.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            lightest.0 += info.nar_size;
            lightest.1.push(info);
        }
    }
    lists
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Export streams packing at once: one per core of a small machine. Each is a
/// `nix-store --export` process (about 30 ms to start, so more cost more than they gain on
/// 2 cores) and a thread that compresses and hashes what it sends.
const PACKING_STREAMS: usize = 2;

/// Uploads in flight: as many as the server lets one key run at once (4 by default),
/// whatever the number of cores, because each upload mostly waits for the server's checks
/// and `fsync`.
const UPLOAD_WORKERS: usize = 4;

fn push_embedded(
    client: &Client,
    signing_key: Option<&Path>,
    compression: Compression,
    paths: &[String],
) -> Result<PushReport> {
    let closure = closure(paths)?;
    let (missing, trusted) = missing_in_cache(client, &closure)?;
    let mut report = PushReport {
        closure_paths: closure.len(),
        pushed_paths: Some(missing.len()),
        skipped_paths: closure.len() - missing.len(),
        ..PushReport::default()
    };
    if missing.is_empty() {
        return Ok(report);
    }
    let key = signing_key
        .map(|file| read_signing_key(file, &trusted))
        .transpose()?;
    let mut infos = store_infos(&missing)?;
    if let Some(key) = &key {
        sign(&mut infos, key);
    }
    check_signed(&infos, &trusted)?;
    // Largest first, so that one big path does not start last and run alone.
    infos.sort_by_key(|i| std::cmp::Reverse(i.nar_size));
    report.pushed_nar_bytes = infos.iter().map(|i| i.nar_size).sum();
    let bar = ProgressBar::new(report.pushed_nar_bytes).with_style(
        ProgressStyle::with_template("packing and uploading {binary_bytes}/{binary_total_bytes} [{bar:30}] {binary_bytes_per_sec}, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let publisher = NarinfoPublisher::new(client, &infos, &bar);
    pack_and_upload(
        &balanced(&infos, PACKING_STREAMS),
        compression,
        &bar,
        |packed| {
            let url = format!("/cache/{}", packed.narinfo.url);
            match packed.file {
                Spooled::Memory(bytes) => {
                    client.put_hashed(&url, &packed.file_sha256, bytes.as_slice())?
                }
                Spooled::File(file) => client.put_hashed(&url, &packed.file_sha256, file)?,
            }
            publisher.nar_uploaded(packed.narinfo)
        },
    )?;
    bar.finish_and_clear();
    report.pushed_bytes = publisher.finish()?;
    Ok(report)
}

/// Packs each share on a thread of its own and uploads what they pack from
/// [`UPLOAD_WORKERS`] threads, so that packing (CPU) and uploads (waiting for the server)
/// overlap. A packed path is handed over only when an uploader takes it, so at most one per
/// stream waits in memory. Stops at the first error, which is the one returned.
fn pack_and_upload(
    shares: &[Vec<&nix_meta::PathInfo>],
    compression: Compression,
    progress: &ProgressBar,
    upload: impl Fn(Packed) -> Result<()> + Sync,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    let failed = AtomicBool::new(false);
    let (handover, packed) = mpsc::sync_channel::<Packed>(0);
    // Owned by the uploaders alone: once the last one stops, the receiver is gone and a
    // packer waiting to hand over learns it at once instead of waiting forever.
    let packed = Arc::new(Mutex::new(packed));
    std::thread::scope(|scope| {
        let (failed, upload) = (&failed, &upload);
        let packers: Vec<_> = shares
            .iter()
            .map(|share| {
                let handover = handover.clone();
                scope.spawn(move || -> Result<()> {
                    let packing = pack_all(share, compression, progress, &mut |item| {
                        if failed.load(Ordering::SeqCst) || handover.send(item).is_err() {
                            bail!(Stopped);
                        }
                        Ok(())
                    });
                    stop_on_error(packing, failed)
                })
            })
            .collect();
        drop(handover);
        let uploaders: Vec<_> = (0..UPLOAD_WORKERS)
            .map(|_| {
                let packed = Arc::clone(&packed);
                scope.spawn(move || -> Result<()> {
                    loop {
                        let next = match packed.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => bail!("an upload thread panicked"),
                        };
                        // Every packer is done (or stopped): nothing more will come.
                        let Ok(item) = next else { return Ok(()) };
                        if failed.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        stop_on_error(upload(item), failed)?;
                    }
                })
            })
            .collect();
        drop(packed);
        let mut first_error = None;
        for thread in packers.into_iter().chain(uploaders) {
            let outcome = thread
                .join()
                .unwrap_or_else(|_| bail!("a packing or upload thread panicked"));
            if let Err(e) = outcome
                && !e.is::<Stopped>()
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// A thread that stopped because another failed; the other's error is the one reported.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped because another upload failed")
    }
}

impl std::error::Error for Stopped {}

/// Passes `outcome` on, telling the other threads to stop if it failed.
fn stop_on_error(outcome: Result<()>, failed: &std::sync::atomic::AtomicBool) -> Result<()> {
    if outcome.is_err() {
        failed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    outcome
}

/// Publishes narinfos as soon as they may be seen: a path's narinfo goes up once its NAR is
/// uploaded and the narinfos of the paths it references (among those pushed) are up, so a
/// visible narinfo always has its NAR and its closure. A publish that is interrupted leaves
/// every path published so far in the cache, whole, and the next one skips them.
struct NarinfoPublisher<'a> {
    client: &'a Client,
    /// Shows the paths done on a terminal; without one, a plain line every quarter.
    progress: &'a ProgressBar,
    state: std::sync::Mutex<Publishing>,
}

#[derive(Default)]
struct Publishing {
    /// hash → the hashes it references among those pushed (itself left out).
    needs: BTreeMap<String, BTreeSet<String>>,
    /// NAR uploaded, narinfo not yet.
    uploaded: BTreeMap<String, nix_meta::NarInfo>,
    published: BTreeSet<String>,
    /// Compressed bytes of the NARs whose narinfos are up.
    published_bytes: u64,
}

impl Publishing {
    /// Takes the narinfos that may go up now: NAR uploaded, references published.
    fn take_ready(&mut self) -> Vec<nix_meta::NarInfo> {
        let ready: Vec<String> = self
            .uploaded
            .keys()
            .filter(|h| {
                self.needs
                    .get(*h)
                    .is_none_or(|refs| refs.iter().all(|r| self.published.contains(r)))
            })
            .cloned()
            .collect();
        ready
            .iter()
            .filter_map(|h| self.uploaded.remove(h))
            .collect()
    }
}

impl<'a> NarinfoPublisher<'a> {
    fn new(client: &'a Client, infos: &[nix_meta::PathInfo], progress: &'a ProgressBar) -> Self {
        let pushed: BTreeSet<&str> = infos.iter().map(|i| i.store_path.hash_part()).collect();
        let needs = infos
            .iter()
            .map(|i| {
                let own = i.store_path.hash_part();
                let refs = i
                    .references
                    .iter()
                    .map(|r| r.hash_part())
                    .filter(|r| *r != own && pushed.contains(r))
                    .map(str::to_owned)
                    .collect();
                (own.to_owned(), refs)
            })
            .collect();
        progress.set_message(format!("0/{} paths", infos.len()));
        NarinfoPublisher {
            client,
            progress,
            state: std::sync::Mutex::new(Publishing {
                needs,
                ..Publishing::default()
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Publishing>> {
        self.state
            .lock()
            .map_err(|_| anyhow::anyhow!("an upload thread panicked"))
    }

    /// Notes an uploaded NAR and publishes every narinfo that may go up now, this one's
    /// dependents included; the uploads run outside the lock, on the calling thread.
    fn nar_uploaded(&self, narinfo: nix_meta::NarInfo) -> Result<()> {
        let hash = narinfo.store_path.hash_part().to_owned();
        let mut ready = {
            let mut state = self.lock()?;
            state.uploaded.insert(hash, narinfo);
            state.take_ready()
        };
        while !ready.is_empty() {
            for info in &ready {
                let text = info.to_text();
                let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
                let hash = info.store_path.hash_part();
                self.client.put_hashed(
                    &format!("/cache/{hash}.narinfo"),
                    &digest,
                    text.as_bytes(),
                )?;
            }
            let mut state = self.lock()?;
            let total = state.needs.len();
            let quarter_before = 4 * state.published.len() / total.max(1);
            for info in &ready {
                state
                    .published
                    .insert(info.store_path.hash_part().to_owned());
                state.published_bytes += info.file_size.unwrap_or(0);
            }
            let done = state.published.len();
            self.progress.set_message(format!("{done}/{total} paths"));
            if self.progress.is_hidden() && 4 * done / total.max(1) > quarter_before {
                eprintln!(
                    "uploaded {done} of {total} store paths ({:.1} MiB)",
                    state.published_bytes as f64 / (1 << 20) as f64
                );
            }
            ready = state.take_ready();
        }
        Ok(())
    }

    /// The compressed bytes published; an error if a narinfo could not go up (a reference
    /// never uploaded, which a Nix store's closure cannot cause) or a path never came.
    fn finish(&self) -> Result<u64> {
        let state = self.lock()?;
        if let Some(stuck) = state.uploaded.keys().next() {
            bail!(
                "the narinfo of {stuck} was not published: a path it references was not uploaded"
            );
        }
        // Every path, or an error: a release must never name a closure half uploaded.
        if let Some(never) = state.needs.keys().find(|h| !state.published.contains(*h)) {
            bail!(
                "{never} was never uploaded ({} of {} paths were); run the publish again",
                state.published.len(),
                state.needs.len()
            );
        }
        Ok(state.published_bytes)
    }
}
