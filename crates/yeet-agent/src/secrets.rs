//! Secrets on the host. A system names its secrets in a manifest (`etc/yeet/secrets.json`);
//! the agent fetches them in one signed request with a recipient made for that request,
//! writes them to a new generation on tmpfs (`/run/yeet/secrets.d/<generation>/`) with the
//! manifest's owner, group and mode, and flips `/run/yeet/secrets` to it atomically.
//!
//! Next to the tmpfs copy, each secret is kept encrypted to the host's own SSH key in
//! `/var/lib/yeet/secrets/<name>.age` (agenix's format: `age -d -i <host key>` opens it),
//! with `held.json` saying which versions and settings the live generation has. After a
//! reboot the agent restores `/run/yeet/secrets` from these files before it contacts the
//! server, so a host whose server is down keeps its secrets.
//!
//! Plaintext is held in wiped buffers, written only to tmpfs files, and never logged.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;
use yeet_client::{Client, ClientError};
use yeet_proto::secrets::{
    FetchSecretsRequest, MANIFEST_PATH, MAX_MANIFEST_BYTES, Manifest, SecretEntry,
};
use zeroize::Zeroizing;

use crate::config::{RUN_DIR, STATE_DIR};

#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the system's secrets manifest {0}: {1}")]
    Manifest(PathBuf, String),
    #[error(
        "the system needs secrets this host may not fetch: {}; grant them with `yeet secret grant NAME HOST` (or add them with `yeet secret add`)",
        .0.join(", ")
    )]
    Missing(Vec<String>),
    #[error(
        "a forced switch asks no server, and this host holds no copy of: {}; switch while the server is reachable, or grant them and let the host fetch them first",
        .0.join(", ")
    )]
    NotHeld(Vec<String>),
    #[error("fetching secrets: {0}")]
    Fetch(#[from] ClientError),
    #[error("the server's answer to the secrets fetch is invalid: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Crypto(String),
    #[error("held.json is corrupt ({0}); the next check-in fetches the secrets again")]
    CorruptHeld(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SecretsError + '_ {
    move |e| SecretsError::Io(path.to_owned(), e)
}

/// The manifest a system carries; none means no secrets.
pub fn manifest_of(system: &Path) -> Result<Manifest, SecretsError> {
    let path = system.join(MANIFEST_PATH);
    let mut bytes = Vec::new();
    match std::fs::File::open(&path) {
        Ok(f) => f
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
        Err(e) => return Err(SecretsError::Io(path, e)),
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(SecretsError::Manifest(path, "larger than 1 MiB".into()));
    }
    Manifest::parse(&bytes).map_err(|e| SecretsError::Manifest(path, e.to_string()))
}

/// Secrets fetched for one request, decrypted.
pub struct Fetched {
    /// name → (version, plaintext)
    pub secrets: BTreeMap<String, (i64, Zeroizing<Vec<u8>>)>,
    pub missing: Vec<String>,
    /// The server's digest of everything granted to this host.
    pub digest: String,
}

/// Fetches `names` in one signed request, re-encrypted by the server to an X25519
/// recipient made for this request only (its identity never leaves this process).
pub fn fetch(client: &Client, names: &[String]) -> Result<Fetched, SecretsError> {
    let one_time = age::x25519::Identity::generate();
    let req = FetchSecretsRequest {
        recipient: one_time.to_public().to_string(),
        names: names.to_vec(),
    };
    let resp = client.fetch_secrets(&req)?;
    let asked: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut secrets = BTreeMap::new();
    for s in resp.secrets {
        // A server answers what was asked; anything else is ignored, so that it cannot
        // plant files the system did not name.
        if !asked.contains(s.name.as_str()) || s.version < 1 {
            return Err(SecretsError::BadAnswer(format!(
                "it sent {:?} (version {}), which was not asked for",
                s.name.escape_debug().to_string(),
                s.version
            )));
        }
        let sealed =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &s.ciphertext)
                .map_err(|_| SecretsError::BadAnswer(format!("{}: not base64", s.name)))?;
        let plaintext = yeet_proto::secrets::open(&one_time, &sealed)
            .map_err(|e| SecretsError::BadAnswer(format!("{}: {e}", s.name)))?;
        secrets.insert(s.name, (s.version, plaintext));
    }
    let missing = names
        .iter()
        .filter(|n| !secrets.contains_key(*n))
        .cloned()
        .collect();
    Ok(Fetched {
        secrets,
        missing,
        digest: resp.digest,
    })
}

/// One secret of the live generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSecret {
    pub version: i64,
    pub entry: SecretEntry,
}

/// What the live generation holds, and the server's digest it was synced against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub digest: String,
    pub generation: String,
    pub secrets: BTreeMap<String, HeldSecret>,
    /// Names the system asked for that the server did not grant at the last sync (revoked
    /// or removed since the switch): not held, and not asked for again until the digest
    /// changes.
    #[serde(default)]
    pub missing: BTreeSet<String>,
}

impl Held {
    /// The secrets of `fetched` that `manifest` asks for, with its settings.
    pub fn from_fetch(fetched: &Fetched, manifest: &Manifest, generation: String) -> Held {
        Held {
            digest: fetched.digest.clone(),
            generation,
            secrets: manifest
                .secrets
                .iter()
                .filter_map(|(name, entry)| {
                    let (version, _) = fetched.secrets.get(name)?;
                    Some((
                        name.clone(),
                        HeldSecret {
                            version: *version,
                            entry: entry.clone(),
                        },
                    ))
                })
                .collect(),
            missing: manifest
                .secrets
                .keys()
                .filter(|n| !fetched.secrets.contains_key(*n))
                .cloned()
                .collect(),
        }
    }

    /// True when this was synced for exactly `manifest`: every secret it asks for is held
    /// with its settings, or was not granted; nothing else is held.
    pub fn serves(&self, manifest: &Manifest) -> bool {
        self.secrets.len() + self.missing.len() == manifest.secrets.len()
            && manifest.secrets.iter().all(|(name, entry)| {
                self.missing.contains(name)
                    || self.secrets.get(name).is_some_and(|h| &h.entry == entry)
            })
    }
}

/// The directories secrets live in: `/run/yeet` and `/var/lib/yeet/secrets` on a host,
/// elsewhere in tests.
#[derive(Debug, Clone)]
pub struct SecretStore {
    run_dir: PathBuf,
    cache_dir: PathBuf,
}

impl SecretStore {
    pub fn system() -> SecretStore {
        SecretStore::at(Path::new(RUN_DIR), &Path::new(STATE_DIR).join("secrets"))
    }

    pub fn at(run_dir: &Path, cache_dir: &Path) -> SecretStore {
        SecretStore {
            run_dir: run_dir.to_owned(),
            cache_dir: cache_dir.to_owned(),
        }
    }

    /// The stable link services read through (`/run/yeet/secrets`).
    pub fn link(&self) -> PathBuf {
        self.run_dir.join("secrets")
    }

    fn generations(&self) -> PathBuf {
        self.run_dir.join("secrets.d")
    }

    fn generation_dir(&self, generation: &str) -> PathBuf {
        self.generations().join(generation)
    }

    fn held_path(&self) -> PathBuf {
        self.cache_dir.join("held.json")
    }

    /// Records `held` without touching the cached secrets (their content did not change).
    pub fn save_held(&self, held: &Held) -> Result<(), SecretsError> {
        std::fs::create_dir_all(&self.cache_dir).map_err(io(&self.cache_dir))?;
        let bytes = serde_json::to_vec_pretty(held)
            .map_err(|e| SecretsError::CorruptHeld(e.to_string()))?;
        write_atomically(&self.held_path(), &bytes, 0o600)
    }

    /// Deletes every generation but `keep` (leftovers of interrupted activations).
    pub fn prune_generations(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(self.generations()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                self.remove_generation(&name);
            }
        }
    }

    /// What the live generation holds, as last recorded; `None` before any secret.
    pub fn held(&self) -> Result<Option<Held>, SecretsError> {
        let path = self.held_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SecretsError::CorruptHeld(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SecretsError::Io(path, e)),
        }
    }

    /// The generation `/run/yeet/secrets` points at.
    pub fn live_generation(&self) -> Option<String> {
        let target = std::fs::read_link(self.link()).ok()?;
        Some(target.file_name()?.to_str()?.to_owned())
    }

    /// Writes a new generation holding the secrets `manifest` asks for from `fetched`; the
    /// live one is untouched until `activate`. Returns its name.
    pub fn write_generation(
        &self,
        fetched: &Fetched,
        manifest: &Manifest,
    ) -> Result<String, SecretsError> {
        let salt: String = yeet_client::random::<4>()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .map_err(|e| SecretsError::Crypto(e.to_string()))?;
        let generation = format!("{}-{salt}", yeet_proto::clock::unix_now_ms());
        let dir = self.generation_dir(&generation);
        // Others may traverse (to reach a file their mode allows) but not list.
        for d in [&self.run_dir, &self.generations()] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        std::fs::set_permissions(self.generations(), std::fs::Permissions::from_mode(0o711))
            .map_err(io(&self.generations()))?;
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(io(&dir))?;
        for (name, entry) in &manifest.secrets {
            let Some((_, plaintext)) = fetched.secrets.get(name) else {
                continue;
            };
            write_secret(&dir.join(name), plaintext, entry)?;
        }
        Ok(generation)
    }

    /// Makes `generation` the live one (an atomic rename of the link), and points the
    /// secrets with paths of their own at it.
    pub fn activate(
        &self,
        generation: &str,
        manifest_entries: &BTreeMap<String, SecretEntry>,
    ) -> Result<(), SecretsError> {
        let tmp = self.run_dir.join("secrets.new");
        let _ = std::fs::remove_file(&tmp);
        let target = Path::new("secrets.d").join(generation);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.link()).map_err(io(&self.link()))?;
        for (name, entry) in manifest_entries {
            if let Some(path) = &entry.path
                && *path != yeet_proto::secrets::default_path(name)
            {
                self.link_custom_path(Path::new(path), name)?;
            }
        }
        Ok(())
    }

    /// `path` → `/run/yeet/secrets/<name>`, replacing only a link (never a file someone
    /// else put there). The path is walked from `/` without following links (see
    /// [`open_parent`]), so that a user who owns a directory on the way cannot send root's
    /// link elsewhere by swapping a component for a link.
    fn link_custom_path(&self, path: &Path, name: &str) -> Result<(), SecretsError> {
        let (parent, file) = open_parent(path, true)?;
        let refuse =
            |why: &str| SecretsError::Io(path.to_owned(), std::io::Error::other(why.to_owned()));
        match rustix::fs::statat(&parent, file, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Symlink => {
                return Err(refuse(
                    "exists and is not a link; move it away so that the secret can be linked there",
                ));
            }
            Ok(_) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(SecretsError::Io(path.to_owned(), e.into())),
        }
        let tmp = format!(".{}.yeet-new", file.to_string_lossy());
        let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
        rustix::fs::symlinkat(self.link().join(name), &parent, tmp.as_str())
            .map_err(|e| SecretsError::Io(path.to_owned(), e.into()))?;
        rustix::fs::renameat(&parent, tmp.as_str(), &parent, file)
            .map_err(|e| SecretsError::Io(path.to_owned(), e.into()))
    }

    /// Removes the links at custom paths of secrets `before` had and `after` has not (only
    /// links that point at the secret, reached without following links).
    pub fn unlink_dropped(
        &self,
        before: &BTreeMap<String, HeldSecret>,
        after: &BTreeMap<String, SecretEntry>,
    ) {
        for (name, held) in before {
            let Some(path) = &held.entry.path else {
                continue;
            };
            let still = after
                .get(name)
                .is_some_and(|e| e.path.as_ref() == Some(path));
            if still {
                continue;
            }
            let Ok((parent, file)) = open_parent(Path::new(path), false) else {
                continue;
            };
            let ours = rustix::fs::readlinkat(&parent, file, Vec::new())
                .is_ok_and(|t| Path::new(t.to_string_lossy().as_ref()) == self.link().join(name));
            if ours {
                let _ = rustix::fs::unlinkat(&parent, file, AtFlags::empty());
            }
        }
    }

    /// Points the link back at `generation`, or removes it when there was none.
    pub fn revert_to(
        &self,
        generation: Option<&str>,
        entries: &BTreeMap<String, SecretEntry>,
    ) -> Result<(), SecretsError> {
        match generation {
            Some(g) if self.generation_dir(g).exists() => self.activate(g, entries),
            _ => match std::fs::remove_file(self.link()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(SecretsError::Io(self.link(), e))
                }
                _ => Ok(()),
            },
        }
    }

    /// Deletes a generation's files (tmpfs).
    pub fn remove_generation(&self, generation: &str) {
        if generation.is_empty() || generation.contains('/') {
            return;
        }
        let _ = std::fs::remove_dir_all(self.generation_dir(generation));
    }

    /// Keeps the live generation across reboots: each secret encrypted to the host's SSH
    /// key in `<name>.age`, then `held.json`; files of secrets no longer held are deleted.
    pub fn persist(
        &self,
        held: &Held,
        host_key: &yeet_proto::PublicIdentity,
    ) -> Result<(), SecretsError> {
        let recipient: age::ssh::Recipient = host_key.to_openssh().parse().map_err(|e| {
            SecretsError::Crypto(format!("the host key as an age recipient: {e:?}"))
        })?;
        std::fs::create_dir_all(&self.cache_dir).map_err(io(&self.cache_dir))?;
        std::fs::set_permissions(&self.cache_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.cache_dir))?;
        let dir = self.generation_dir(&held.generation);
        for name in held.secrets.keys() {
            let plaintext = read_secret(&dir.join(name))?;
            let sealed = yeet_proto::secrets::seal(&recipient, &plaintext)
                .map_err(|e| SecretsError::Crypto(e.to_string()))?;
            write_atomically(&self.cache_dir.join(format!("{name}.age")), &sealed, 0o400)?;
        }
        self.save_held(held)?;
        if let Ok(entries) = std::fs::read_dir(&self.cache_dir) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Some(name) = file.strip_suffix(".age")
                    && !held.secrets.contains_key(name)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// The held secrets among `names`, decrypted from the copies kept encrypted to the host
    /// key: what this host was granted when it last fetched, and only that. Names it holds
    /// no copy of are `missing`.
    pub fn open_held(
        &self,
        host_key_file: &Path,
        names: &[String],
    ) -> Result<Fetched, SecretsError> {
        let held = self.held()?.unwrap_or_default();
        let mut fetched = Fetched {
            secrets: BTreeMap::new(),
            missing: Vec::new(),
            digest: held.digest.clone(),
        };
        let wanted: Vec<(&String, &HeldSecret)> = names
            .iter()
            .filter_map(|n| match held.secrets.get_key_value(n) {
                Some(found) => Some(found),
                None => {
                    fetched.missing.push(n.clone());
                    None
                }
            })
            .collect();
        if wanted.is_empty() {
            return Ok(fetched);
        }
        let key_text = Zeroizing::new(std::fs::read(host_key_file).map_err(io(host_key_file))?);
        let identity = age::ssh::Identity::from_buffer(key_text.as_slice(), None).map_err(|e| {
            SecretsError::Crypto(format!("the host key {}: {e}", host_key_file.display()))
        })?;
        for (name, h) in wanted {
            let path = self.cache_dir.join(format!("{name}.age"));
            let sealed = std::fs::read(&path).map_err(io(&path))?;
            let plaintext = yeet_proto::secrets::open(&identity, &sealed)
                .map_err(|e| SecretsError::Crypto(format!("{}: {e}", path.display())))?;
            fetched.secrets.insert(name.clone(), (h.version, plaintext));
        }
        Ok(fetched)
    }

    /// After a reboot (`/run/yeet/secrets` is gone), rebuilds the live generation from the
    /// files kept encrypted to the host key. False when there was nothing to restore.
    pub fn restore(&self, host_key_file: &Path) -> Result<bool, SecretsError> {
        if std::fs::symlink_metadata(self.link()).is_ok() {
            return Ok(false);
        }
        let Some(mut held) = self.held()? else {
            return Ok(false);
        };
        if held.secrets.is_empty() {
            return Ok(false);
        }
        let names: Vec<String> = held.secrets.keys().cloned().collect();
        let fetched = self.open_held(host_key_file, &names)?;
        let manifest = Manifest {
            secrets: held
                .secrets
                .iter()
                .map(|(n, h)| (n.clone(), h.entry.clone()))
                .collect(),
        };
        let generation = self.write_generation(&fetched, &manifest)?;
        self.activate(&generation, &manifest.secrets)?;
        held.generation = generation;
        self.save_held(&held)?;
        Ok(true)
    }

    /// Applies owners and groups again: a system may create the user a secret belongs to
    /// in the very switch that needs it, after the secret was written.
    pub fn fix_owners(&self, generation: &str, manifest: &Manifest) {
        let dir = self.generation_dir(generation);
        for (name, entry) in &manifest.secrets {
            let path = dir.join(name);
            if path.exists()
                && let Err(e) = set_owner(&path, entry)
            {
                tracing::warn!(secret = %name, error = %e, "cannot set the secret's owner");
            }
        }
    }
}

/// The directory that holds `path` (absolute, plain: checked with the manifest), opened by
/// walking from `/` one component at a time without following links, and its last
/// component. Missing directories are created (root's, mode 0755) when `create`. A link on
/// the way is refused, naming it: root must not write where a swapped component points.
fn open_parent(path: &Path, create: bool) -> Result<(OwnedFd, &std::ffi::OsStr), SecretsError> {
    let err = |e: rustix::io::Errno| SecretsError::Io(path.to_owned(), e.into());
    let file = path
        .file_name()
        .ok_or_else(|| SecretsError::Io(path.to_owned(), std::io::Error::other("names no file")))?;
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let mut dir = rustix::fs::open("/", flags, Mode::empty()).map_err(err)?;
    let mut walked = PathBuf::from("/");
    let parents = path
        .parent()
        .map(|p| p.components().skip(1))
        .into_iter()
        .flatten();
    for component in parents {
        let part = component.as_os_str();
        walked.push(part);
        let opened = match rustix::fs::openat(&dir, part, flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(err(e)),
                }
                rustix::fs::openat(&dir, part, flags, Mode::empty())
            }
            other => other,
        };
        dir = opened.map_err(|e| match e {
            // O_NOFOLLOW on a link: ELOOP; a file in the way: ENOTDIR.
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => SecretsError::Io(
                path.to_owned(),
                std::io::Error::other(format!(
                    "{} is a link or not a directory; a secret's path must lead through real directories (links there could point root's write elsewhere)",
                    walked.display()
                )),
            ),
            e => err(e),
        })?;
    }
    Ok((dir, file))
}

/// Resolves a user or group (a name in `/etc/passwd` or `/etc/group`, or a number).
fn account_id(name: &str, db: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    std::fs::read_to_string(db).ok()?.lines().find_map(|l| {
        let mut fields = l.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Sets owner, group and mode. An owner or group this host does not have (yet) leaves the
/// file root's, which is stricter, and says so.
fn set_owner(path: &Path, entry: &SecretEntry) -> Result<(), String> {
    let mode = entry.mode_bits()?;
    let uid = account_id(&entry.owner, "/etc/passwd");
    let gid = account_id(&entry.group, "/etc/group");
    std::os::unix::fs::chown(path, Some(uid.unwrap_or(0)), Some(gid.unwrap_or(0)))
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    match (uid, gid) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err(format!(
            "owner {} or group {} does not exist (yet): the file stays root's",
            entry.owner, entry.group
        )),
    }
}

/// Creates one secret's file: root-only while it is written, then its owner and mode.
fn write_secret(path: &Path, plaintext: &[u8], entry: &SecretEntry) -> Result<(), SecretsError> {
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(plaintext).map_err(io(path))?;
    drop(file);
    if let Err(why) = set_owner(path, entry) {
        tracing::warn!(secret = %path.display(), "{why}");
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
    let size = std::fs::metadata(path).map_err(io(path))?.len() as usize;
    let mut plaintext = Zeroizing::new(Vec::with_capacity(size + 1));
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut plaintext))
        .map_err(io(path))?;
    Ok(plaintext)
}

/// Temporary file, fsync, rename: a crash or a full disk leaves the old file or the new.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecretsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `systemctl try-restart` of units whose secrets changed; nothing without systemd.
pub fn restart_units(units: &BTreeSet<String>) {
    if units.is_empty() || !Path::new("/run/systemd/system").exists() {
        return;
    }
    let out = std::process::Command::new("systemctl")
        .arg("try-restart")
        .arg("--")
        .args(units)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            tracing::info!(?units, "restarted units whose secrets changed")
        }
        Ok(o) => {
            tracing::warn!(?units, error = %String::from_utf8_lossy(&o.stderr).trim(), "restarting units failed")
        }
        Err(e) => tracing::warn!(?units, error = %e, "cannot run systemctl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        Manifest::parse(json.as_bytes()).unwrap()
    }

    fn fetched(pairs: &[(&str, i64, &[u8])]) -> Fetched {
        Fetched {
            secrets: pairs
                .iter()
                .map(|(n, v, p)| (n.to_string(), (*v, Zeroizing::new(p.to_vec()))))
                .collect(),
            missing: vec![],
            digest: "d1".into(),
        }
    }

    #[test]
    fn generations_flip_revert_persist_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::at(&dir.path().join("run"), &dir.path().join("cache"));
        let custom = dir.path().join("etc/app/token");
        let m = manifest(&format!(
            r#"{{"secrets": {{"a": {{"mode": "0440"}}, "token": {{"path": "{}"}}}}}}"#,
            custom.display()
        ));
        let g1 = store
            .write_generation(&fetched(&[("a", 1, b"one"), ("token", 1, b"t")]), &m)
            .unwrap();
        // Written, not live yet.
        assert_eq!(store.live_generation(), None);
        store.activate(&g1, &m.secrets).unwrap();
        assert_eq!(std::fs::read(store.link().join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(&custom).unwrap(), b"t");
        let mode = std::fs::metadata(store.link().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o440);
        let gen_mode = std::fs::metadata(store.generations())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(gen_mode & 0o777, 0o711, "others may traverse, not list");

        let g2 = store
            .write_generation(&fetched(&[("a", 2, b"two")]), &m)
            .unwrap();
        store.activate(&g2, &m.secrets).unwrap();
        assert_eq!(std::fs::read(store.link().join("a")).unwrap(), b"two");
        store.revert_to(Some(&g1), &m.secrets).unwrap();
        assert_eq!(std::fs::read(store.link().join("a")).unwrap(), b"one");
        store.remove_generation(&g2);
        assert!(!store.generation_dir(&g2).exists());

        // Persist to the host key, lose /run (a reboot), restore.
        let key_file = dir.path().join("host_key");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key_file)
            .output()
            .unwrap();
        assert!(out.status.success());
        let identity = yeet_client::load_identity(&key_file).unwrap();
        let held = Held::from_fetch(
            &fetched(&[("a", 1, b"one"), ("token", 1, b"t")]),
            &m,
            g1.clone(),
        );
        store.persist(&held, identity.public()).unwrap();
        assert_eq!(store.held().unwrap(), Some(held.clone()));
        std::fs::remove_dir_all(dir.path().join("run")).unwrap();
        assert!(store.restore(&key_file).unwrap());
        assert_eq!(std::fs::read(store.link().join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(&custom).unwrap(), b"t");
        // Restoring again does nothing: the link is there.
        assert!(!store.restore(&key_file).unwrap());
        // The cached copy is agenix's format: the age CLI opens it with the host key.
        let out = std::process::Command::new("age")
            .args(["-d", "-i"])
            .arg(&key_file)
            .arg(dir.path().join("cache/a.age"))
            .output();
        let out = out.expect("the age CLI (apt-get install age)");
        assert_eq!(
            out.stdout,
            b"one",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A secret no longer held loses its cached file and its link.
        let only_a = manifest(r#"{"secrets": {"a": {"mode": "0440"}}}"#);
        let g3 = store
            .write_generation(&fetched(&[("a", 1, b"one")]), &only_a)
            .unwrap();
        store.activate(&g3, &only_a.secrets).unwrap();
        store.unlink_dropped(&held.secrets, &only_a.secrets);
        store
            .persist(
                &Held::from_fetch(&fetched(&[("a", 1, b"one")]), &only_a, g3),
                identity.public(),
            )
            .unwrap();
        assert!(!dir.path().join("cache/token.age").exists());
        assert!(std::fs::symlink_metadata(&custom).is_err());
    }

    #[test]
    fn a_file_at_a_custom_path_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::at(&dir.path().join("run"), &dir.path().join("cache"));
        let taken = dir.path().join("passwd");
        std::fs::write(&taken, "precious").unwrap();
        let m = manifest(&format!(
            r#"{{"secrets": {{"p": {{"path": "{}"}}}}}}"#,
            taken.display()
        ));
        let g = store
            .write_generation(&fetched(&[("p", 1, b"x")]), &m)
            .unwrap();
        let err = store.activate(&g, &m.secrets).unwrap_err().to_string();
        assert!(err.contains("not a link"), "{err}");
        assert_eq!(std::fs::read_to_string(&taken).unwrap(), "precious");
    }

    /// A local user who owns a directory on a secret's custom path swaps the next component
    /// for a link to a directory of root's: root must not create its link there (nor
    /// remove one there when the secret goes), and says which component is a link.
    #[test]
    fn a_link_on_a_custom_paths_way_is_refused() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::at(&dir.path().join("run"), &dir.path().join("cache"));
        let home = dir.path().join("home/alice");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
        let victim = dir.path().join("etc-of-root");
        std::fs::create_dir_all(&victim).unwrap();
        symlink(&victim, home.join("app")).unwrap();
        let wanted = home.join("app/token");
        let m = manifest(&format!(
            r#"{{"secrets": {{"t": {{"path": "{}"}}}}}}"#,
            wanted.display()
        ));
        let g = store
            .write_generation(&fetched(&[("t", 1, b"x")]), &m)
            .unwrap();
        let err = store.activate(&g, &m.secrets).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} is a link", home.join("app").display())),
            "{err}"
        );
        assert!(
            !victim.join("token").exists(),
            "root's link went through the user's link"
        );
        // A link of ours in root's directory is not removed through the user's link either.
        symlink(store.link().join("t"), victim.join("token")).unwrap();
        let before = Held::from_fetch(&fetched(&[("t", 1, b"x")]), &m, g.clone()).secrets;
        store.unlink_dropped(&before, &BTreeMap::new());
        assert!(std::fs::symlink_metadata(victim.join("token")).is_ok());
        // Through real directories (created as needed), the link is made.
        let real = dir.path().join("srv/app/token");
        let m = manifest(&format!(
            r#"{{"secrets": {{"t": {{"path": "{}"}}}}}}"#,
            real.display()
        ));
        store.activate(&g, &m.secrets).unwrap();
        assert_eq!(std::fs::read_link(&real).unwrap(), store.link().join("t"));
    }

    #[test]
    fn held_knows_whether_it_serves_a_manifest() {
        let m = manifest(r#"{"secrets": {"a": {}, "b": {"owner": "nobody"}}}"#);
        let held = Held::from_fetch(&fetched(&[("a", 1, b"x"), ("b", 3, b"y")]), &m, "g".into());
        assert!(held.serves(&m));
        assert!(!held.serves(&manifest(r#"{"secrets": {"a": {}}}"#)));
        assert!(!held.serves(&manifest(
            r#"{"secrets": {"a": {}, "b": {"owner": "root"}}}"#
        )));
        // A secret the server no longer grants is not held, and not asked for again.
        let partial = Held::from_fetch(&fetched(&[("a", 1, b"x")]), &m, "g".into());
        assert_eq!(partial.missing, BTreeSet::from(["b".to_owned()]));
        assert!(partial.serves(&m));
        assert!(!partial.serves(&manifest(r#"{"secrets": {"a": {}, "c": {}}}"#)));
    }
}
