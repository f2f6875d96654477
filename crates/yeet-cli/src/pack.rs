//! Packing store paths for the embedded cache without a staging store. Each path's NAR is
//! cut out of a `nix-store --export` stream and streamed through the compressor while its
//! NAR hash and the compressed file's hash are computed; the compressed bytes stay in
//! memory (or, past [`IN_MEMORY_BYTES`], in one temporary file) only until uploaded. The narinfo is
//! written from the local store's own registration (`nix-store --dump-db`, the signatures
//! `nix path-info` lists), and the NAR is checked against that registration, so a corrupt
//! store path is never published.

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use nix_meta::{NarHash, NarInfo, PathInfo, SecretKey};
use sha2::{Digest, Sha256};
use std::io::{Seek, Write};
use std::process::{Command, Stdio};

use crate::push::run;

/// How NARs are compressed in the embedded cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at level 3, as `nix copy --to 'file://…?compression=zstd'` writes (hosts' Nix
    /// reads it; tested with 2.8): somewhat larger files than xz, packed many times faster.
    #[default]
    Zstd,
    /// Plain NARs: for hosts whose Nix predates zstd, or content that does not compress.
    None,
}

impl Compression {
    /// The narinfo's `Compression:` value.
    fn narinfo_name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    fn file_suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".nar.zst",
            Compression::None => ".nar",
        }
    }
}

/// zstd's default level, the one Nix's `compression=zstd` uses.
const ZSTD_LEVEL: i32 = 3;

/// Compressed NARs up to this size are kept in memory until uploaded; larger ones spill to
/// a temporary file, so that a few large paths packed at once cannot exhaust memory.
pub const IN_MEMORY_BYTES: usize = 64 << 20;

/// Store paths per `nix-store --dump-db` or `nix path-info` call: about 100 KiB of
/// arguments, well under the kernel's limit.
const PATHS_PER_CALL: usize = 1000;

/// What the local store registered for `paths`, with the signatures it holds for them.
pub fn store_infos(paths: &[String]) -> Result<Vec<PathInfo>> {
    let mut infos = Vec::with_capacity(paths.len());
    for part in paths.chunks(PATHS_PER_CALL) {
        let dump = run(
            Command::new("nix-store").arg("--dump-db").args(part),
            "nix-store --dump-db",
        )?;
        let mut chunk =
            nix_meta::path_info::parse_registrations(nix_meta::DEFAULT_STORE_DIR, &dump)?;
        let json = run(
            Command::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .args(["path-info", "--json"])
                .args(part),
            "nix path-info --json",
        )?;
        let mut sigs = nix_meta::path_info::parse_signatures(nix_meta::DEFAULT_STORE_DIR, &json)?;
        for info in &mut chunk {
            info.sigs = sigs.remove(&info.store_path).unwrap_or_default();
        }
        infos.append(&mut chunk);
    }
    Ok(infos)
}

/// Adds a signature by `key` to each path, as `nix copy --to '…?secret-key='` would.
pub fn sign(infos: &mut [PathInfo], key: &SecretKey) {
    for info in infos {
        let sig = key.sign(info.fingerprint().as_bytes());
        info.sigs.retain(|s| s.key_name != key.name);
        info.sigs.push(sig);
    }
}

/// Where a compressed NAR waits for its upload.
pub enum Spooled {
    Memory(Vec<u8>),
    File(std::fs::File),
}

/// One packed path: its narinfo, and the NAR file the narinfo's URL names.
pub struct Packed {
    pub narinfo: NarInfo,
    /// SHA-256 of the compressed file, which its upload's signature covers.
    pub file_sha256: [u8; 32],
    pub file: Spooled,
}

/// A writer that hashes and counts what passes, and spills to a temporary file once it
/// holds more than [`IN_MEMORY_BYTES`].
struct Spool {
    memory: Vec<u8>,
    file: Option<std::fs::File>,
    hasher: Sha256,
    len: u64,
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        if self.file.is_none() && self.memory.len() + buf.len() > IN_MEMORY_BYTES {
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None => self.memory.extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// Where a NAR streams while it is cut out of an export: the NAR hash, the progress bar,
/// and the compressor (or straight into the spool).
struct NarSink<'a> {
    hasher: Sha256,
    len: u64,
    progress: &'a ProgressBar,
    out: Compressing,
}

enum Compressing {
    Zstd(zstd::stream::write::Encoder<'static, Spool>),
    None(Spool),
}

impl Write for NarSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        self.progress.inc(buf.len() as u64);
        match &mut self.out {
            Compressing::Zstd(e) => e.write_all(buf)?,
            Compressing::None(s) => s.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn new_spool() -> Spool {
    Spool {
        memory: Vec::new(),
        file: None,
        hasher: Sha256::new(),
        len: 0,
    }
}

/// Packs `infos` out of `nix-store --export` streams (one process per [`PATHS_PER_CALL`]
/// paths, where `nix-store --dump` would cost a process each) and hands each packed path
/// to `packed` as soon as it is complete. Fails if a NAR differs from what the store
/// registered (a corrupted store path), or if the export leaves out or adds a path.
pub fn pack_all(
    infos: &[&PathInfo],
    compression: Compression,
    progress: &ProgressBar,
    packed: &mut dyn FnMut(Packed) -> Result<()>,
) -> Result<()> {
    for part in infos.chunks(PATHS_PER_CALL) {
        let mut wanted: std::collections::HashMap<&nix_meta::StorePath, &PathInfo> =
            part.iter().map(|i| (&i.store_path, *i)).collect();
        let mut child = Command::new("nix-store")
            .arg("--export")
            .args(part.iter().map(|i| i.store_path.in_store(&i.store_dir)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nix-store --export (is Nix installed?)")?;
        let stdout = child
            .stdout
            .take()
            .context("nix-store --export has no stdout")?;
        let mut reader = nix_meta::export::ExportReader::new(
            std::io::BufReader::with_capacity(1 << 16, stdout),
            nix_meta::DEFAULT_STORE_DIR,
        );
        let streamed = (|| -> Result<()> {
            loop {
                let mut sink = NarSink {
                    hasher: Sha256::new(),
                    len: 0,
                    progress,
                    out: match compression {
                        Compression::Zstd => Compressing::Zstd(zstd::stream::write::Encoder::new(
                            new_spool(),
                            ZSTD_LEVEL,
                        )?),
                        Compression::None => Compressing::None(new_spool()),
                    },
                };
                let Some(exported) = reader.next_into(&mut sink)? else {
                    return Ok(());
                };
                let info = wanted.remove(&exported.store_path).with_context(|| {
                    format!(
                        "nix-store --export sent {}, which was not asked for",
                        exported.store_path
                    )
                })?;
                packed(finish(info, sink, compression)?)?;
            }
        })();
        let out = child.wait_with_output().context("nix-store --export")?;
        if !out.status.success() {
            bail!(
                "nix-store --export failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        streamed
            .context("cannot pack the exported store paths (is the temporary directory full?)")?;
        if let Some(left) = wanted.keys().next() {
            bail!("nix-store --export left out {left}");
        }
    }
    Ok(())
}

/// The narinfo and NAR file of one path whose NAR has streamed into `sink`.
fn finish(info: &PathInfo, sink: NarSink<'_>, compression: Compression) -> Result<Packed> {
    let path = info.store_path.in_store(&info.store_dir);
    let nar_hash = NarHash(sink.hasher.finalize().into());
    if nar_hash != info.nar_hash || sink.len != info.nar_size {
        bail!(
            "{path} does not match the store's registration (NAR {nar_hash}, {} bytes; registered {}, {} bytes): the store is corrupt; run `nix-store --verify --check-contents --repair`",
            sink.len,
            info.nar_hash,
            info.nar_size
        );
    }
    let mut spool = match sink.out {
        Compressing::Zstd(e) => e.finish()?,
        Compressing::None(s) => s,
    };
    spool.flush()?;
    let file_sha256: [u8; 32] = spool.hasher.finalize().into();
    let file = match spool.file {
        Some(mut file) => {
            file.rewind()?;
            Spooled::File(file)
        }
        None => Spooled::Memory(spool.memory),
    };
    let narinfo = NarInfo {
        store_dir: info.store_dir.clone(),
        store_path: info.store_path.clone(),
        url: format!(
            "nar/{}{}",
            nix_meta::nix32::encode(&file_sha256),
            compression.file_suffix()
        ),
        compression: compression.narinfo_name().to_owned(),
        file_hash: Some(NarHash(file_sha256)),
        file_size: Some(spool.len),
        nar_hash,
        nar_size: sink.len,
        references: info.references.clone(),
        deriver: None,
        system: None,
        sigs: info.sigs.clone(),
        ca: None,
    };
    Ok(Packed {
        narinfo,
        file_sha256,
        file,
    })
}
