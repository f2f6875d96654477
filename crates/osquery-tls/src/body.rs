//! Request bodies: osqueryd gzip-compresses them with `--logger_tls_compress` (and says so in
//! `Content-Encoding: gzip`). [`decode`] inflates with a hard limit on the output, so that a
//! body of a few kilobytes cannot expand into gigabytes of memory (a gzip bomb), and it reads
//! concatenated gzip members as one stream, as HTTP allows.

use std::io::Read;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported Content-Encoding {0:?}: send identity or gzip")]
    UnsupportedEncoding(String),
    #[error("the gzip body is corrupt: {0}")]
    CorruptGzip(String),
}

/// The body as its sender meant it: inflated if `content_encoding` says gzip, and never more
/// than `limit` bytes either way.
pub fn decode(
    body: &[u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(body.to_vec())
        }
        Some("gzip") | Some("x-gzip") => inflate(body, limit),
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Inflates gzip, reading at most one byte past the limit to tell "exactly at" from "over".
fn inflate(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let decoder = flate2::read::MultiGzDecoder::new(body);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::CorruptGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
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
        assert_eq!(decode(body, None, 1024).unwrap(), body);
        assert_eq!(decode(&gzip(body), Some("gzip"), 1024).unwrap(), body);
        assert_eq!(decode(&gzip(body), Some(" GZIP "), 1024).unwrap(), body);
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
}
