//! Packing store paths for the embedded cache without a staging store. Each path's NAR is
//! cut out of a `nix-store --export` stream and streamed through the compressor while the
//! compressed file's hash is computed; the compressed bytes stay in memory (or, past
//! [`IN_MEMORY_BYTES`], in one temporary file) only until uploaded. The narinfo is written
//! from the local store's own registration (`nix-store --dump-db`, the signatures
//! `nix path-info` lists). The NAR is checked against that registration by the export
//! itself, which hashes what it dumps and fails before a path's trailer if the hash
//! differs, so a corrupt store path never completes here and is never published.
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use nix_meta::{NarHash, NarInfo, PathInfo, SecretKey};
use sha2::{Digest, Sha256};
use std::io::{Seek, Write};
use std::process::{Command, Stdio};

use crate::push::{collect_output, run, spawn_captured};

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
        // Both at once: each is mostly its process's start-up (about 30 ms).
        let signatures = spawn_captured(
            Command::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .args(["path-info", "--json"])
                .args(part),
            "nix path-info --json",
        )?;
        let dump = run(
            Command::new("nix-store").arg("--dump-db").args(part),
            "nix-store --dump-db",
        )?;
        let json = collect_output(signatures, "nix path-info --json")?;
        let mut chunk =
            nix_meta::path_info::parse_registrations(nix_meta::DEFAULT_STORE_DIR, &dump)?;
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

/// Where a NAR streams while it is cut out of an export: its length, the progress bar,
/// and the compressor (or straight into the spool). The NAR is not hashed here again:
/// `nix-store --export` hashes it as it dumps it and, if that differs from the store's
/// registration, fails before the path's trailer, so such a NAR never completes.
struct NarSink<'a> {
    len: u64,
    progress: &'a ProgressBar,
    out: Compressing,
    /// Whether the compressor or spool refused a write (a full temporary directory): then
    /// the stream stopped because of us, not because of the export.
    refused: bool,
}

enum Compressing {
    Zstd(zstd::stream::write::Encoder<'static, Spool>),
    None(Spool),
}

impl Write for NarSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len() as u64;
        self.progress.inc(buf.len() as u64);
        let written = match &mut self.out {
            Compressing::Zstd(e) => e.write_all(buf),
            Compressing::None(s) => s.write_all(buf),
        };
        self.refused |= written.is_err();
        written.map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A spool with room for `expected` bytes (up to [`IN_MEMORY_BYTES`]): growing one by
/// doubling would copy every NAR about twice more.
fn new_spool(expected: u64) -> Spool {
    Spool {
        memory: Vec::with_capacity(
            usize::try_from(expected).map_or(IN_MEMORY_BYTES, |n| n.min(IN_MEMORY_BYTES)),
        ),
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
        let streamed = unpack_export(&mut reader, &mut wanted, compression, progress, packed);
        // Closed before waiting: an export we stopped reading ends on a broken pipe instead
        // of waiting forever for room in a full one.
        drop(reader);
        let out = child.wait_with_output().context("nix-store --export")?;
        let export_failed = || {
            anyhow::anyhow!(
                "nix-store --export failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        };
        match streamed {
            // Ours is the cause; the export only failed to write to the pipe we closed.
            Err(ExportStop::Packing(e)) => return Err(e),
            Err(ExportStop::Stream(_)) if !out.status.success() => return Err(export_failed()),
            Err(ExportStop::Stream(e)) => {
                return Err(e.context("cannot read the exported store paths"));
            }
            Ok(()) if !out.status.success() => return Err(export_failed()),
            Ok(()) => {}
        }
        if let Some(left) = wanted.keys().next() {
            bail!("nix-store --export left out {left}");
        }
    }
    Ok(())
}

/// Why unpacking an export stopped early: its stream (which the export's own error may
/// explain), or a path packed or handed over (whose error is the cause).
enum ExportStop {
    Stream(anyhow::Error),
    Packing(anyhow::Error),
}

/// Packs each path of an export stream, in the stream's order, until it ends.
fn unpack_export<R: std::io::Read>(
    reader: &mut nix_meta::export::ExportReader<R>,
    wanted: &mut std::collections::HashMap<&nix_meta::StorePath, &PathInfo>,
    compression: Compression,
    progress: &ProgressBar,
    packed: &mut dyn FnMut(Packed) -> Result<()>,
) -> Result<(), ExportStop> {
    let stream = |e: anyhow::Error| ExportStop::Stream(e);
    // The next NAR's path is known only after it (Nix orders an export itself): room for
    // the largest, plus zstd's framing of incompressible data, is reserved for each. Pages
    // never written are never allocated.
    let largest = wanted.values().map(|i| i.nar_size).max().unwrap_or(0);
    let largest = largest.saturating_add(largest / 1024).saturating_add(1024);
    loop {
        let mut sink = NarSink {
            len: 0,
            progress,
            out: match compression {
                Compression::Zstd => Compressing::Zstd(
                    zstd::stream::write::Encoder::new(new_spool(largest), ZSTD_LEVEL)
                        .map_err(|e| ExportStop::Packing(e.into()))?,
                ),
                Compression::None => Compressing::None(new_spool(largest)),
            },
            refused: false,
        };
        let next = reader.next_into(&mut sink);
        let Some(exported) = next.map_err(|e| match sink.refused {
            true => ExportStop::Packing(anyhow::Error::new(e).context(
                "cannot pack the exported store paths (is the temporary directory full?)",
            )),
            false => stream(e.into()),
        })?
        else {
            return Ok(());
        };
        let info = wanted.remove(&exported.store_path).ok_or_else(|| {
            stream(anyhow::anyhow!(
                "nix-store --export sent {}, which was not asked for",
                exported.store_path
            ))
        })?;
        finish(info, sink, compression)
            .and_then(&mut *packed)
            .map_err(ExportStop::Packing)?;
    }
}

/// The narinfo and NAR file of one path whose NAR has streamed into `sink`.
fn finish(info: &PathInfo, sink: NarSink<'_>, compression: Compression) -> Result<Packed> {
    let path = info.store_path.in_store(&info.store_dir);
    if sink.len != info.nar_size {
        bail!(
            "{path} does not match the store's registration (NAR of {} bytes; registered {} bytes): the store is corrupt; run `nix-store --verify --check-contents --repair`",
            sink.len,
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
        nar_hash: info.nar_hash,
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
