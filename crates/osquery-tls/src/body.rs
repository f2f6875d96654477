//! Request bodies: osqueryd gzip-compresses them with `--logger_tls_compress` (and says so in
//! `Content-Encoding: gzip`). [`decode`] inflates with a hard limit on the output, so that a
//! body of a few kilobytes cannot expand into gigabytes of memory (a gzip bomb), and it reads
//! concatenated gzip members as one stream, as HTTP allows.
//!
//! osqueryd puts its credential (`node_key`, `enroll_secret`, a carve's `session_id`) inside
//! the body, anywhere among the other members. [`credential`] finds it by streaming through
//! the body (inflating as it goes) and skipping every other value without storing it, so a
//! server can refuse a stranger before it inflates or parses anything into memory.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::io::{BufReader, Read};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported Content-Encoding {0:?}: send identity or gzip")]
    UnsupportedEncoding(String),
    #[error("the gzip body is corrupt: {0}")]
    CorruptGzip(String),
    #[error("invalid body: {0}")]
    Malformed(String),
}

/// How a body is encoded, from its `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The encoding `content_encoding` names; anything but identity and gzip is refused.
pub fn encoding(content_encoding: Option<&str>) -> Result<Encoding, BodyError> {
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(Encoding::Identity),
        Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// The body as its sender meant it: inflated if `content_encoding` says gzip, and never more
/// than `limit` bytes either way. A plain body is not copied.
pub fn decode<'b>(
    body: &'b [u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Cow<'b, [u8]>, BodyError> {
    match encoding(content_encoding)? {
        Encoding::Identity => {
            if body.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(Cow::Borrowed(body))
        }
        Encoding::Gzip => {
            // Room for the whole limit at once: the buffer never moves (a move holds the old
            // and the new copy at once) and never grows past the limit by doubling. Pages
            // that inflating does not write are never resident, so a small body costs little.
            let mut out = Vec::with_capacity(limit.saturating_add(1));
            flate2::read::MultiGzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::CorruptGzip(e.to_string()))?;
            if out.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(Cow::Owned(out))
        }
    }
}

/// Inflates gzip `body` into `out`, whose length is the limit plus one byte (to tell
/// "exactly at" from "over"); returns the inflated length. The caller picks the memory:
/// a server may map it, so that it goes back to the system the moment it is dropped.
pub fn inflate_into(body: &[u8], out: &mut [u8]) -> Result<usize, BodyError> {
    let limit = out.len().saturating_sub(1);
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut len = 0;
    loop {
        if len == out.len() {
            return Err(BodyError::TooLarge { limit });
        }
        match decoder.read(&mut out[len..]) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BodyError::CorruptGzip(e.to_string())),
        }
    }
}

/// The string member `field` of the body's top-level object, read without keeping anything
/// else: `Ok(None)` when the object has no such member. Its memory is a few buffers,
/// whatever the body holds, except that one key or value is held at a time (both at most
/// `limit` bytes, like the inflated body). The body is read only up to the member.
pub fn credential(
    body: &[u8],
    content_encoding: Option<&str>,
    limit: usize,
    field: &str,
) -> Result<Option<String>, BodyError> {
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            find_member(body, field)
        }
        Some("gzip") | Some("x-gzip") => {
            let mut inflated = Capped {
                inner: flate2::read::MultiGzDecoder::new(body),
                left: limit,
                over: false,
            };
            let found = find_member(BufReader::with_capacity(32 << 10, &mut inflated), field);
            if inflated.over {
                return Err(BodyError::TooLarge { limit });
            }
            found
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// A reader that fails once more than `left` bytes came through, and remembers that it did.
struct Capped<R> {
    inner: R,
    left: usize,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > self.left {
            self.over = true;
            return Err(std::io::Error::other("the body is over its limit"));
        }
        self.left -= n;
        Ok(n)
    }
}

/// Scans the top-level object for `field`; the search ends at the member, as an error that
/// carries nothing, with the value kept aside.
fn find_member(reader: impl Read, field: &str) -> Result<Option<String>, BodyError> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let scan = MemberScan {
        field,
        found: &mut found,
    };
    match (&mut de).deserialize_map(scan) {
        Ok(()) => Ok(found),
        Err(_) if found.is_some() => Ok(found),
        Err(e) if e.is_io() => Err(BodyError::CorruptGzip(e.to_string())),
        Err(e) => Err(BodyError::Malformed(e.to_string())),
    }
}

struct MemberScan<'a> {
    field: &'a str,
    found: &'a mut Option<String>,
}

/// The marker error that ends a scan at its member.
const FOUND: &str = "the member was found";

impl<'de> Visitor<'de> for MemberScan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(is_field) = map.next_key_seed(KeyIs(self.field))? {
            if is_field {
                *self.found = Some(map.next_value::<String>()?);
                return Err(de::Error::custom(FOUND));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// A key, compared with the member's name without being kept.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn plain_and_gzip_bodies_read_the_same() {
        let body = br#"{"node_key":"k","log_type":"result","data":[]}"#;
        assert_eq!(*decode(body, None, 1024).unwrap(), *body);
        assert_eq!(*decode(&gzip(body), Some("gzip"), 1024).unwrap(), *body);
        assert_eq!(*decode(&gzip(body), Some(" GZIP "), 1024).unwrap(), *body);
    }

    /// Inflating into a caller's buffer gives what `decode` gives: exactly at the limit is
    /// fine, one byte over is refused, concatenated members are one stream, and a corrupt
    /// body is named.
    #[test]
    fn inflating_into_a_buffer_keeps_the_limit_and_the_stream() {
        let mut at = vec![0u8; 4097];
        assert_eq!(inflate_into(&gzip(&[7u8; 4096]), &mut at), Ok(4096));
        assert!(at[..4096].iter().all(|b| *b == 7));
        assert_eq!(
            inflate_into(&gzip(&[7u8; 4097]), &mut at),
            Err(BodyError::TooLarge { limit: 4096 })
        );
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert_eq!(
            inflate_into(&bomb, &mut vec![0u8; (1 << 20) + 1]),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
        let mut two = gzip(b"{\"a\":");
        two.extend(gzip(b"1}"));
        let mut out = vec![0u8; 64];
        let len = inflate_into(&two, &mut out).unwrap();
        assert_eq!(&out[..len], b"{\"a\":1}");
        assert_eq!(*decode(&two, Some("gzip"), 63).unwrap(), out[..len]);
        assert!(matches!(
            inflate_into(b"\x1f\x8bnot gzip", &mut out),
            Err(BodyError::CorruptGzip(_))
        ));
        assert_eq!(encoding(Some(" X-GZIP ")), Ok(Encoding::Gzip));
        assert_eq!(
            encoding(Some("br")),
            Err(BodyError::UnsupportedEncoding("br".into()))
        );
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        assert_eq!(
            decode(&bomb, Some("gzip"), 1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
        // Exactly at the limit is fine.
        assert_eq!(
            decode(&gzip(&[7u8; 4096]), Some("gzip"), 4096)
                .unwrap()
                .len(),
            4096
        );
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert_eq!(
            decode(&[0u8; 10], None, 9),
            Err(BodyError::TooLarge { limit: 9 })
        );
        assert!(matches!(
            decode(b"not gzip at all", Some("gzip"), 1024),
            Err(BodyError::CorruptGzip(_))
        ));
        let truncated = gzip(b"some body that is long enough to be cut");
        assert!(matches!(
            decode(&truncated[..truncated.len() - 6], Some("gzip"), 1024),
            Err(BodyError::CorruptGzip(_))
        ));
        assert_eq!(
            decode(b"x", Some("br"), 1024),
            Err(BodyError::UnsupportedEncoding("br".into()))
        );
    }

    #[test]
    fn a_credential_is_found_anywhere_in_the_object() {
        let body = br#"{"data": [[0], {"a": "b\"}"}], "node_key": "k1", "log_type": "result"}"#;
        assert_eq!(
            credential(body, None, 1024, "node_key").unwrap(),
            Some("k1".into())
        );
        assert_eq!(
            credential(&gzip(body), Some("gzip"), 1024, "node_key").unwrap(),
            Some("k1".into())
        );
        assert_eq!(credential(body, None, 1024, "enroll_secret").unwrap(), None);
        // The body after the member is not read: garbage there does not matter.
        assert_eq!(
            credential(br#"{"node_key": "k2", ]]]"#, None, 1024, "node_key").unwrap(),
            Some("k2".into())
        );
    }

    #[test]
    fn a_credential_search_keeps_its_limits() {
        let mut body = b"{\"data\": [".to_vec();
        for _ in 0..(1 << 20) {
            body.extend_from_slice(b"[0],");
        }
        body.extend_from_slice(b"[0]], \"node_key\": \"late\"}");
        let bomb = gzip(&body);
        assert_eq!(
            credential(&bomb, Some("gzip"), 1 << 20, "node_key"),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(
            credential(&bomb, Some("gzip"), 8 << 20, "node_key").unwrap(),
            Some("late".into())
        );
        assert_eq!(
            credential(&body, None, 1 << 20, "node_key"),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
        assert!(matches!(
            credential(b"[1, 2]", None, 1024, "node_key"),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            credential(br#"{"node_key": 7}"#, None, 1024, "node_key"),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            credential(b"not gzip", Some("gzip"), 1024, "node_key"),
            Err(BodyError::CorruptGzip(_))
        ));
    }
}
