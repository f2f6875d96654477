//! Request signing. Every API request carries five headers:
//!
//! | header             | value                                            |
//! |--------------------|--------------------------------------------------|
//! | `x-yeet-origin`    | the server it is meant for, `scheme://host[:port]` |
//! | `x-yeet-key`       | key id of the signer (`SHA256:...`)              |
//! | `x-yeet-timestamp` | Unix seconds when the request was signed         |
//! | `x-yeet-nonce`     | 32 lower-case hex digits, fresh per request      |
//! | `x-yeet-signature` | base64 ed25519 signature of the canonical form   |
//!
//! The canonical form is these eight lines joined by `\n` (no trailing newline):
//!
//! ```text
//! yeet-request-v2
//! <origin: scheme and authority of the server URL the client uses, see `origin_of`>
//! <METHOD, upper case>
//! <path and query exactly as sent, e.g. /v1/hosts?x=1>
//! <timestamp>
//! <nonce>
//! <key id>
//! <lower-case hex SHA-256 of the body bytes (of the empty string when there is no body)>
//! ```
//!
//! The version line keeps these signatures from ever being valid in another context, and
//! the origin line keeps a request signed for one server from being accepted by another
//! that trusts the same key (each server checks the origin against its own URLs).
//!
//! Streamed uploads also send `x-yeet-content-sha256`, the body digest their signature
//! covers, so that the server verifies the signature from the headers alone, before it
//! accepts a byte, and then checks the body against that digest as it arrives.
//! The verifier checks, in this order: headers well-formed, timestamp inside the skew
//! window, key known, signature valid, nonce unused. The nonce is recorded only after the
//! signature verified, so forged requests cannot burn nonces.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use thiserror::Error;

use crate::error_code::ErrorCode;
use crate::identity::{Identity, PublicIdentity};

pub const HEADER_ORIGIN: &str = "x-yeet-origin";
pub const HEADER_KEY: &str = "x-yeet-key";
pub const HEADER_TIMESTAMP: &str = "x-yeet-timestamp";
pub const HEADER_NONCE: &str = "x-yeet-nonce";
pub const HEADER_SIGNATURE: &str = "x-yeet-signature";
/// The declared body digest of a streamed upload (lower-case hex SHA-256).
pub const HEADER_CONTENT_SHA256: &str = "x-yeet-content-sha256";
/// Default allowed clock difference between signer and verifier.
pub const DEFAULT_SKEW_SECS: i64 = 300;

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum AuthError {
    #[error("request is not signed: header {0} is missing")]
    Missing(&'static str),
    #[error("signature header {0} is malformed")]
    Malformed(&'static str),
    #[error(
        "request timestamp is outside the allowed clock skew; check the clock of the signing machine"
    )]
    StaleTimestamp,
    #[error("unknown key")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("nonce was already used (replayed request)")]
    ReplayedNonce,
    #[error("this key sent too many requests in the last few minutes; slow down and retry")]
    TooManyRequests,
    #[error(
        "this request was signed for {0}, which is not this server; check the server URL the client uses (or the server's public_urls)"
    )]
    WrongServer(String),
}

impl AuthError {
    /// The stable error code sent to clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing(_) => ErrorCode::Unsigned,
            AuthError::Malformed(_) => ErrorCode::MalformedSignature,
            AuthError::StaleTimestamp => ErrorCode::StaleTimestamp,
            AuthError::UnknownKey => ErrorCode::UnknownKey,
            AuthError::BadSignature => ErrorCode::BadSignature,
            AuthError::ReplayedNonce => ErrorCode::ReplayedNonce,
            AuthError::TooManyRequests => ErrorCode::RateLimited,
            AuthError::WrongServer(_) => ErrorCode::WrongServer,
        }
    }
}

/// The origin of a server URL as requests sign it: lower-case `scheme://host[:port]`, the
/// port left out when it is the scheme's default. Only http and https; no user info.
pub fn origin_of(url: &str) -> Result<String, AuthError> {
    let bad = || AuthError::Malformed(HEADER_ORIGIN);
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return Err(bad()),
    };
    let authority = rest
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let ok = !authority.is_empty()
        && authority.len() <= 255
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if !ok {
        return Err(bad());
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Ok(format!("{scheme}://{authority}"))
}

/// The parsed signature headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// The server the request is for (already in `origin_of` form when signed).
    pub origin: String,
    pub key_id: String,
    pub timestamp: i64,
    pub nonce: String,
    pub signature: [u8; 64],
}

/// Lower-case hex SHA-256 of a body, as the canonical form carries it.
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Builds the canonical form described in the module documentation.
pub fn canonical_form(
    origin: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    key_id: &str,
    digest: &str,
) -> String {
    format!(
        "yeet-request-v2\n{origin}\n{}\n{path_and_query}\n{timestamp}\n{nonce}\n{key_id}\n{digest}",
        method.to_ascii_uppercase()
    )
}

impl SignatureHeaders {
    /// Signs a request for the server at `origin`. `nonce_bytes` must be fresh randomness
    /// for every request.
    pub fn sign(
        identity: &Identity,
        origin: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp: i64,
        nonce_bytes: [u8; 16],
    ) -> Self {
        Self::sign_digest(
            identity,
            origin,
            method,
            path_and_query,
            &body_digest(body),
            timestamp,
            nonce_bytes,
        )
    }

    /// Signs a request whose body digest was computed separately (a file streamed as the body).
    pub fn sign_digest(
        identity: &Identity,
        origin: &str,
        method: &str,
        path_and_query: &str,
        digest: &str,
        timestamp: i64,
        nonce_bytes: [u8; 16],
    ) -> Self {
        let nonce = hex::encode(nonce_bytes);
        let key_id = identity.public().key_id().to_owned();
        let signature = identity.sign(
            canonical_form(
                origin,
                method,
                path_and_query,
                timestamp,
                &nonce,
                &key_id,
                digest,
            )
            .as_bytes(),
        );
        SignatureHeaders {
            origin: origin.to_owned(),
            key_id,
            timestamp,
            nonce,
            signature,
        }
    }

    /// The headers as (name, value) pairs.
    pub fn to_pairs(&self) -> [(&'static str, String); 5] {
        [
            (HEADER_ORIGIN, self.origin.clone()),
            (HEADER_KEY, self.key_id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_NONCE, self.nonce.clone()),
            (HEADER_SIGNATURE, B64.encode(self.signature)),
        ]
    }

    /// Parses the headers from a lookup function (case-insensitive names are the caller's job).
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, AuthError> {
        let field = |name: &'static str| get(name).ok_or(AuthError::Missing(name));
        let origin = field(HEADER_ORIGIN)?;
        // Signed as sent; it must already be in canonical form.
        if origin_of(origin).ok().as_deref() != Some(origin) {
            return Err(AuthError::Malformed(HEADER_ORIGIN));
        }
        let key_id = field(HEADER_KEY)?;
        if !key_id.starts_with("SHA256:") || key_id.len() > 64 {
            return Err(AuthError::Malformed(HEADER_KEY));
        }
        let timestamp = field(HEADER_TIMESTAMP)?
            .parse::<i64>()
            .map_err(|_| AuthError::Malformed(HEADER_TIMESTAMP))?;
        let nonce = field(HEADER_NONCE)?;
        if nonce.len() != 32
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AuthError::Malformed(HEADER_NONCE));
        }
        let signature = B64
            .decode(field(HEADER_SIGNATURE)?)
            .ok()
            .and_then(|v| <[u8; 64]>::try_from(v).ok())
            .ok_or(AuthError::Malformed(HEADER_SIGNATURE))?;
        Ok(SignatureHeaders {
            origin: origin.to_owned(),
            key_id: key_id.to_owned(),
            timestamp,
            nonce: nonce.to_owned(),
            signature,
        })
    }

    /// Fails when the timestamp is further than `skew_secs` from `now`, in either direction.
    /// Any i64 is handled: the distance is computed without overflow.
    pub fn check_timestamp(&self, now: i64, skew_secs: i64) -> Result<(), AuthError> {
        if self.timestamp.abs_diff(now) > skew_secs.unsigned_abs() {
            Err(AuthError::StaleTimestamp)
        } else {
            Ok(())
        }
    }

    /// Checks the signature against the claimed signer's public key.
    pub fn verify(
        &self,
        signer: &PublicIdentity,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verify_digest(signer, method, path_and_query, &body_digest(body))
    }

    /// Checks the signature given the body's digest (computed while streaming it).
    pub fn verify_digest(
        &self,
        signer: &PublicIdentity,
        method: &str,
        path_and_query: &str,
        digest: &str,
    ) -> Result<(), AuthError> {
        if signer.key_id() != self.key_id {
            return Err(AuthError::BadSignature);
        }
        let form = canonical_form(
            &self.origin,
            method,
            path_and_query,
            self.timestamp,
            &self.nonce,
            &self.key_id,
            digest,
        );
        if signer.verifies(form.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// Most nonces one key may have live at once (one skew window, about ten minutes). A
/// publisher uploading a large closure makes a few requests per store path; nothing
/// legitimate comes near this, and it bounds what any one key can make the cache hold.
pub const DEFAULT_NONCES_PER_KEY: usize = 65_536;

/// The live nonces of one key, in arrival order for expiry.
#[derive(Debug, Default)]
struct KeyNonces {
    seen: HashSet<u128>,
    order: VecDeque<(i64, u128)>,
}

impl KeyNonces {
    /// Forgets nonces whose timestamps can no longer pass the skew check. Arrival order is
    /// only roughly expiry order; an entry behind a later-expiring one is kept a little
    /// longer, which is the safe direction.
    fn expire(&mut self, now: i64) {
        while let Some(&(expiry, nonce)) = self.order.front() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
    }
}

/// Remembers nonces for as long as their timestamps could pass the skew check, so that a
/// request can never be accepted twice by this process. Lookups are O(1); each key has its
/// own bounded share, so one key (or a flood of throwaway keys) cannot crowd out another.
/// Callers record a nonce only for a verified signature by a known key or an admitted
/// registration.
#[derive(Debug)]
pub struct NonceCache {
    skew_secs: i64,
    per_key: usize,
    keys: HashMap<String, KeyNonces>,
    entries: usize,
    next_sweep: i64,
}

impl NonceCache {
    pub fn new(skew_secs: i64, per_key: usize) -> Self {
        NonceCache {
            skew_secs,
            per_key,
            keys: HashMap::new(),
            entries: 0,
            next_sweep: 0,
        }
    }

    /// Records the nonce of a verified request; fails if it was seen before, or when the key
    /// already has `per_key` live nonces (it is refused until some expire; other keys are
    /// unaffected).
    pub fn check_and_record(
        &mut self,
        headers: &SignatureHeaders,
        now: i64,
    ) -> Result<(), AuthError> {
        if now >= self.next_sweep {
            // Drop keys with nothing live; amortised over a skew window.
            let mut entries = 0;
            self.keys.retain(|_, k| {
                k.expire(now);
                entries += k.seen.len();
                !k.seen.is_empty()
            });
            self.entries = entries;
            self.next_sweep = now + self.skew_secs.max(1);
        }
        let nonce = u128::from_str_radix(&headers.nonce, 16)
            .map_err(|_| AuthError::Malformed(HEADER_NONCE))?;
        let key = self.keys.entry(headers.key_id.clone()).or_default();
        let before = key.seen.len();
        key.expire(now);
        self.entries -= before - key.seen.len();
        if key.seen.contains(&nonce) {
            return Err(AuthError::ReplayedNonce);
        }
        if key.seen.len() >= self.per_key {
            return Err(AuthError::TooManyRequests);
        }
        // The nonce can be replayed until its timestamp leaves the window on the far side.
        key.seen.insert(nonce);
        key.order
            .push_back((headers.timestamp.saturating_add(self.skew_secs + 1), nonce));
        self.entries += 1;
        Ok(())
    }

    /// Live nonces across all keys.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signed(id: &Identity, body: &[u8], ts: i64, nonce: u8) -> SignatureHeaders {
        SignatureHeaders::sign(
            id,
            "https://yeet.example.org",
            "post",
            "/v1/checkin?x=1",
            body,
            ts,
            [nonce; 16],
        )
    }

    fn reparse(h: &SignatureHeaders) -> SignatureHeaders {
        let pairs = h.to_pairs();
        SignatureHeaders::parse(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str()))
            .unwrap()
    }

    #[test]
    fn sign_parse_verify() {
        let id = Identity::from_seed(&[5; 32]);
        let h = reparse(&signed(&id, b"{}", 1000, 1));
        assert!(
            h.verify(id.public(), "POST", "/v1/checkin?x=1", b"{}")
                .is_ok()
        );
        assert!(h.check_timestamp(1200, 300).is_ok());
        assert_eq!(h.check_timestamp(1301, 300), Err(AuthError::StaleTimestamp));
        assert_eq!(h.check_timestamp(699, 300), Err(AuthError::StaleTimestamp));
    }

    #[test]
    fn every_covered_field_matters() {
        let id = Identity::from_seed(&[5; 32]);
        let h = signed(&id, b"{}", 1000, 1);
        let other = Identity::from_seed(&[6; 32]);
        assert_eq!(
            h.verify(id.public(), "GET", "/v1/checkin?x=1", b"{}"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            h.verify(id.public(), "POST", "/v1/checkin?x=2", b"{}"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            h.verify(id.public(), "POST", "/v1/checkin?x=1", b"{ }"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            h.verify(other.public(), "POST", "/v1/checkin?x=1", b"{}"),
            Err(AuthError::BadSignature)
        );
        for tweak in [
            SignatureHeaders {
                origin: "https://other.example.org".into(),
                ..h.clone()
            },
            SignatureHeaders {
                timestamp: 1001,
                ..h.clone()
            },
            SignatureHeaders {
                nonce: "0".repeat(32),
                ..h.clone()
            },
        ] {
            assert_eq!(
                tweak.verify(id.public(), "POST", "/v1/checkin?x=1", b"{}"),
                Err(AuthError::BadSignature)
            );
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let id = Identity::from_seed(&[5; 32]);
        let pairs = signed(&id, b"", 1, 1).to_pairs();
        for (drop, _) in &pairs {
            let r = SignatureHeaders::parse(|n| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n && k != drop)
                    .map(|(_, v)| v.as_str())
            });
            assert_eq!(r, Err(AuthError::Missing(drop)));
        }
        for (bad, value) in [
            (HEADER_ORIGIN, "HTTPS://Yeet.example.org"),
            (HEADER_ORIGIN, "ftp://x"),
            (HEADER_ORIGIN, "https://x/path"),
            (HEADER_TIMESTAMP, "soon"),
            (HEADER_NONCE, "xyz"),
            (HEADER_SIGNATURE, "AAAA"),
            (HEADER_KEY, "md5:x"),
        ] {
            let r = SignatureHeaders::parse(|n| {
                if n == bad {
                    Some(value)
                } else {
                    pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
                }
            });
            assert_eq!(r, Err(AuthError::Malformed(bad)));
        }
    }

    #[test]
    fn origins_are_normalised_and_compared_like_host_headers() {
        assert_eq!(
            origin_of("HTTPS://Yeet.Example.org:443/api/").unwrap(),
            "https://yeet.example.org"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8470").unwrap(),
            "http://127.0.0.1:8470"
        );
        assert_eq!(origin_of("http://[::1]:80").unwrap(), "http://[::1]");
        for bad in [
            "ftp://x",
            "yeet.example.org",
            "https://",
            "https://u@x",
            "https://a b",
        ] {
            assert!(origin_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nonces_are_single_use_and_expire() {
        let id = Identity::from_seed(&[5; 32]);
        let mut cache = NonceCache::new(300, 10);
        let h = signed(&id, b"", 1000, 1);
        assert!(cache.check_and_record(&h, 1000).is_ok());
        assert_eq!(
            cache.check_and_record(&h, 1100),
            Err(AuthError::ReplayedNonce)
        );
        // Another key may use the same nonce bytes.
        let h2 = signed(&Identity::from_seed(&[6; 32]), b"", 1000, 1);
        assert!(cache.check_and_record(&h2, 1000).is_ok());
        // After the window has passed the entries are pruned (the timestamp check rejects replays then).
        let later = signed(&id, b"", 2000, 2);
        assert!(cache.check_and_record(&later, 2000).is_ok());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn each_key_has_its_own_bounded_share() {
        let (a, b) = (Identity::from_seed(&[5; 32]), Identity::from_seed(&[6; 32]));
        let mut cache = NonceCache::new(300, 2);
        assert!(
            cache
                .check_and_record(&signed(&a, b"", 1000, 1), 1000)
                .is_ok()
        );
        assert!(
            cache
                .check_and_record(&signed(&a, b"", 1000, 2), 1000)
                .is_ok()
        );
        // A third live nonce of the same key is refused without being remembered...
        assert_eq!(
            cache.check_and_record(&signed(&a, b"", 1000, 3), 1000),
            Err(AuthError::TooManyRequests)
        );
        // ...while other keys are unaffected.
        assert!(
            cache
                .check_and_record(&signed(&b, b"", 1000, 1), 1000)
                .is_ok()
        );
        assert_eq!(cache.len(), 3);
        // Once the first two expire, the key may send again, and they are forgotten.
        assert!(
            cache
                .check_and_record(&signed(&a, b"", 1400, 3), 1400)
                .is_ok()
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn extreme_timestamps_are_stale_not_panics() {
        let id = Identity::from_seed(&[5; 32]);
        for ts in [i64::MIN, i64::MIN + 1, i64::MAX, -1] {
            let h = signed(&id, b"", ts, 1);
            assert_eq!(
                h.check_timestamp(1_800_000_000, 300),
                Err(AuthError::StaleTimestamp),
                "{ts}"
            );
            // Recording never overflows either.
            let mut cache = NonceCache::new(300, 10);
            let _ = cache.check_and_record(&h, 1_800_000_000);
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(k in "\\PC{0,80}", t in "\\PC{0,20}", n in "\\PC{0,40}", s in "\\PC{0,100}") {
            let _ = SignatureHeaders::parse(|name| Some(match name { HEADER_KEY => k.as_str(), HEADER_TIMESTAMP => t.as_str(), HEADER_NONCE => n.as_str(), _ => s.as_str() }));
        }

        #[test]
        fn any_body_verifies_only_itself(body in proptest::collection::vec(any::<u8>(), 0..256), flip in any::<usize>()) {
            let id = Identity::from_seed(&[9; 32]);
            let h = SignatureHeaders::sign(&id, "http://s", "PUT", "/v1/x", &body, 7, [3; 16]);
            prop_assert!(h.verify(id.public(), "PUT", "/v1/x", &body).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                let i = flip % body.len();
                tampered[i] ^= 0x01;
                prop_assert!(h.verify(id.public(), "PUT", "/v1/x", &tampered).is_err());
            }
        }
    }
}
