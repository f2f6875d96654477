//! Reading `nix-store --export` streams, so that one process can hand over the NARs of
//! thousands of store paths (a process per path costs about 12 ms of start-up each).
//!
//! The stream, as Nix's `exportPaths` writes it: per path, the integer 1, the path's NAR,
//! the magic `NIXE`, the path, its references, its deriver (or "") and the integer 0 (no
//! legacy signature); then the integer 0. Integers are u64 little-endian; strings are a
//! length and bytes padded with zeros to a multiple of 8. The NAR is not length-prefixed:
//! its end is found by walking its structure (`nix-archive-1`, then nested `(` `type` ...
//! `)` nodes), which is all this module interprets of it. Nix may reorder the paths (it
//! exports dependencies first), so each NAR is identified by the trailer that follows it.

use std::io::{Read, Write};
use thiserror::Error;

use crate::store_path::{StorePath, StorePathError};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("reading the export stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("the export stream is malformed: {0}")]
    Malformed(String),
    #[error("the export stream names a bad store path: {0}")]
    StorePath(#[from] StorePathError),
}

/// The longest token (file name, symlink target, store path) accepted: far above any real
/// one, and small enough that a corrupt length cannot make us allocate gigabytes.
const MAX_TOKEN: u64 = 64 * 1024;
/// The deepest directory nesting accepted.
const MAX_DEPTH: usize = 256;
const EXPORT_MAGIC: u64 = 0x4558_494e;

/// What the trailer after a NAR says about its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedPath {
    pub store_path: StorePath,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
}

/// Reads paths one after the other out of an export stream.
pub struct ExportReader<R> {
    inner: R,
    store_dir: String,
    ended: bool,
}

impl<R: Read> ExportReader<R> {
    pub fn new(inner: R, store_dir: &str) -> Self {
        ExportReader {
            inner,
            store_dir: store_dir.to_owned(),
            ended: false,
        }
    }

    /// Copies the next path's NAR, byte for byte, into `nar` and returns what its trailer
    /// says; `None` at the end of the stream.
    pub fn next_into(&mut self, nar: &mut impl Write) -> Result<Option<ExportedPath>, ExportError> {
        if self.ended {
            return Ok(None);
        }
        match read_u64(&mut self.inner)? {
            0 => {
                self.ended = true;
                return Ok(None);
            }
            1 => {}
            n => return Err(malformed(format!("expected 0 or 1 before a path, got {n}"))),
        }
        let mut copy = Copy {
            from: &mut self.inner,
            to: nar,
        };
        copy.expect("nix-archive-1")?;
        copy.node(0)?;
        if read_u64(&mut self.inner)? != EXPORT_MAGIC {
            return Err(malformed("no NIXE magic after a NAR".into()));
        }
        let path = read_string(&mut self.inner)?;
        let path = self.store_path(&path)?;
        let count = read_u64(&mut self.inner)?;
        if count > 1_000_000 {
            return Err(malformed(format!("{count} references")));
        }
        let mut references = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let reference = read_string(&mut self.inner)?;
            references.push(self.store_path(&reference)?);
        }
        let deriver = read_string(&mut self.inner)?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            Some(self.store_path(&deriver)?)
        };
        if read_u64(&mut self.inner)? != 0 {
            return Err(malformed(
                "a legacy export signature (not supported)".into(),
            ));
        }
        Ok(Some(ExportedPath {
            store_path: path,
            references,
            deriver,
        }))
    }

    fn store_path(&self, s: &str) -> Result<StorePath, ExportError> {
        Ok(StorePath::parse_in(&self.store_dir, s)?)
    }
}

fn malformed(message: String) -> ExportError {
    ExportError::Malformed(message)
}

fn read_u64(r: &mut impl Read) -> Result<u64, ExportError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A padded string of the trailer (not part of a NAR).
fn read_string(r: &mut impl Read) -> Result<String, ExportError> {
    let len = read_u64(r)?;
    if len > MAX_TOKEN {
        return Err(malformed(format!("a {len}-byte string")));
    }
    let mut b = vec![0u8; len as usize + padding(len)];
    r.read_exact(&mut b)?;
    b.truncate(len as usize);
    String::from_utf8(b).map_err(|_| malformed("a string that is not UTF-8".into()))
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Walks a NAR, copying every byte read.
struct Copy<'a, R, W> {
    from: &'a mut R,
    to: &'a mut W,
}

impl<R: Read, W: Write> Copy<'_, R, W> {
    fn u64(&mut self) -> Result<u64, ExportError> {
        let mut b = [0u8; 8];
        self.from.read_exact(&mut b)?;
        self.to.write_all(&b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A token (short string), copied and returned.
    fn token(&mut self) -> Result<Vec<u8>, ExportError> {
        let len = self.u64()?;
        if len > MAX_TOKEN {
            return Err(malformed(format!("a {len}-byte token in a NAR")));
        }
        let mut b = vec![0u8; len as usize + padding(len)];
        self.from.read_exact(&mut b)?;
        self.to.write_all(&b)?;
        b.truncate(len as usize);
        Ok(b)
    }

    fn expect(&mut self, want: &str) -> Result<(), ExportError> {
        let got = self.token()?;
        if got != want.as_bytes() {
            return Err(malformed(format!(
                "expected {want:?} in a NAR, got {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        Ok(())
    }

    /// A file's contents: any length, streamed through.
    fn contents(&mut self) -> Result<(), ExportError> {
        let len = self.u64()?;
        let padded = len + padding(len) as u64;
        let copied = std::io::copy(&mut (&mut *self.from).take(padded), self.to)?;
        if copied != padded {
            return Err(ExportError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// `( type ... )`.
    fn node(&mut self, depth: usize) -> Result<(), ExportError> {
        if depth > MAX_DEPTH {
            return Err(malformed("directories nested too deep".into()));
        }
        self.expect("(")?;
        self.expect("type")?;
        match self.token()?.as_slice() {
            b"regular" => {
                let mut tag = self.token()?;
                if tag == b"executable" {
                    self.expect("")?;
                    tag = self.token()?;
                }
                if tag != b"contents" {
                    return Err(malformed("a regular file without contents".into()));
                }
                self.contents()?;
                self.expect(")")
            }
            b"symlink" => {
                self.expect("target")?;
                self.token()?;
                self.expect(")")
            }
            b"directory" => loop {
                match self.token()?.as_slice() {
                    b")" => return Ok(()),
                    b"entry" => {
                        self.expect("(")?;
                        self.expect("name")?;
                        self.token()?;
                        self.expect("node")?;
                        self.node(depth + 1)?;
                        self.expect(")")?;
                    }
                    other => {
                        return Err(malformed(format!(
                            "unexpected {:?} in a directory",
                            String::from_utf8_lossy(other)
                        )));
                    }
                }
            },
            other => Err(malformed(format!(
                "unknown node type {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the bytes, reading ends with a path, the end, or an error: no panic,
        /// no unbounded allocation.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut reader = ExportReader::new(bytes.as_slice(), "/nix/store");
            let mut sink = Vec::new();
            for _ in 0..4 {
                if !matches!(reader.next_into(&mut sink), Ok(Some(_))) {
                    break;
                }
            }
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        let mut stream = 1u64.to_le_bytes().to_vec();
        stream.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = ExportReader::new(stream.as_slice(), "/nix/store")
            .next_into(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }
}
