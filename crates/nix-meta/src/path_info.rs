//! What a Nix store says about its own valid paths, and checking their signatures.
//!
//! A host decides whether to activate a closure from its *own* store's metadata, never from
//! a cache's narinfo: the registrations `nix-store --dump-db` prints (NAR hash, NAR size and
//! references, the inputs of a signature's fingerprint) and the signatures
//! `nix path-info --json` lists. The dump format has been stable for a decade (it is what
//! `closureInfo` writes for `nix-store --load-db`); the JSON has changed shape across Nix
//! releases, so only its `signatures` are read, and a path whose signatures cannot be found
//! simply has none (fail closed).

use std::collections::HashMap;
use thiserror::Error;

use crate::hash::NarHash;
use crate::keys::{PublicKey, Signature};
use crate::narinfo::VerifyError;
use crate::store_path::StorePath;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathInfoError {
    #[error("store registration (nix-store --dump-db) line {line}: {message}")]
    Registration { line: usize, message: String },
    #[error("nix path-info --json output is not understood: {0}")]
    Json(String),
}

/// One valid path as its store registers it, with the signatures it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub store_dir: String,
    pub store_path: StorePath,
    /// Hash and size of the path's NAR serialisation, as the store records them.
    pub nar_hash: NarHash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    /// Signatures the store holds for the path (`nix path-info --sigs`).
    pub sigs: Vec<Signature>,
}

/// The string binary-cache signatures cover:
/// `1;<store path>;sha256:<nix32 nar hash>;<nar size>;<comma-separated reference paths>`.
pub fn fingerprint(
    store_dir: &str,
    path: &StorePath,
    nar_hash: &NarHash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let refs: Vec<String> = references.iter().map(|r| r.in_store(store_dir)).collect();
    format!(
        "1;{};{nar_hash};{nar_size};{}",
        path.in_store(store_dir),
        refs.join(",")
    )
}

/// Succeeds with the first trusted key whose signature over `fingerprint` verifies.
/// As in Nix, signatures by untrusted key names are ignored; a signature that names a
/// trusted key but does not verify is reported as such, since it means tampering.
pub(crate) fn verify_signatures<'k>(
    path: String,
    fingerprint: &str,
    sigs: &[Signature],
    trusted: &'k [PublicKey],
) -> Result<&'k PublicKey, VerifyError> {
    if sigs.is_empty() {
        return Err(VerifyError::Unsigned { path });
    }
    let mut bad_key = None;
    for sig in sigs {
        for key in trusted.iter().filter(|k| k.name == sig.key_name) {
            if key.verifies(fingerprint.as_bytes(), sig) {
                return Ok(key);
            }
            bad_key = Some(key.name.clone());
        }
    }
    if let Some(key) = bad_key {
        return Err(VerifyError::BadSignature { path, key });
    }
    let names = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(", ");
    Err(VerifyError::Untrusted {
        path,
        signers: names(&mut sigs.iter().map(|s| s.key_name.as_str())),
        trusted: names(&mut trusted.iter().map(|k| k.name.as_str())),
    })
}

impl PathInfo {
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Succeeds with the trusted key whose signature verifies.
    pub fn verify<'k>(&self, trusted: &'k [PublicKey]) -> Result<&'k PublicKey, VerifyError> {
        verify_signatures(
            self.store_path.in_store(&self.store_dir),
            &self.fingerprint(),
            &self.sigs,
            trusted,
        )
    }
}

/// Parses `nix-store --dump-db PATH...`: per path, its path, NAR hash (hex, bare or with
/// `sha256:`), NAR size, deriver (possibly empty), reference count, then the references.
/// Signatures are not part of this format; `sigs` is left empty.
pub fn parse_registrations(store_dir: &str, text: &str) -> Result<Vec<PathInfo>, PathInfoError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut out = Vec::new();
    let fail = |line: usize, message: String| PathInfoError::Registration { line, message };
    let mut next = |what: &str| {
        lines
            .next()
            .ok_or_else(|| fail(0, format!("the dump ends before the {what}")))
    };
    loop {
        let (n, path) = match next("path") {
            Ok((_, "")) | Err(_) => break,
            Ok(v) => v,
        };
        let store_path =
            StorePath::parse_in(store_dir, path).map_err(|e| fail(n, e.to_string()))?;
        let (n, hash) = next("NAR hash")?;
        let hash = if hash.contains(':') || hash.contains('-') {
            hash.to_owned()
        } else {
            format!("sha256:{hash}")
        };
        let nar_hash: NarHash = hash.parse().map_err(|e| fail(n, format!("{e}")))?;
        let (n, size) = next("NAR size")?;
        let nar_size = size
            .parse()
            .map_err(|e| fail(n, format!("NAR size: {e}")))?;
        next("deriver")?;
        let (n, count) = next("reference count")?;
        let count: usize = count
            .parse()
            .map_err(|e| fail(n, format!("reference count: {e}")))?;
        let mut references = Vec::new();
        for _ in 0..count {
            let (n, r) = next("reference")?;
            references.push(StorePath::parse_in(store_dir, r).map_err(|e| fail(n, e.to_string()))?);
        }
        out.push(PathInfo {
            store_dir: store_dir.to_owned(),
            store_path,
            nar_hash,
            nar_size,
            references,
            sigs: Vec::new(),
        });
    }
    Ok(out)
}

/// Reads the signatures out of `nix path-info --json` output. Nix has printed a list of
/// objects with a `path` field (up to 2.18) and an object keyed by path (later, keys being
/// full paths or base names); both are accepted. Signatures that do not parse are dropped:
/// they could never verify.
pub fn parse_signatures(
    store_dir: &str,
    json: &str,
) -> Result<HashMap<StorePath, Vec<Signature>>, PathInfoError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| PathInfoError::Json(e.to_string()))?;
    let entries: Vec<(String, &serde_json::Value)> = match &value {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| Some((i.get("path")?.as_str()?.to_owned(), i)))
            .collect(),
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        _ => return Err(PathInfoError::Json("neither a list nor an object".into())),
    };
    let mut out = HashMap::new();
    for (path, info) in entries {
        let store_path = StorePath::parse_in(store_dir, &path)
            .or_else(|_| StorePath::from_base_name(&path))
            .map_err(|e| PathInfoError::Json(e.to_string()))?;
        let sigs = info
            .get("signatures")
            .and_then(|s| s.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|s| s.as_str()?.parse::<Signature>().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.insert(store_path, sigs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use proptest::prelude::*;

    // Printed by `nix-store --dump-db` (Nix 2.8) for a two-path closure.
    const DUMP: &str = "/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep
36cc5eecbd07031abc22ffd2dd6b3ea2cb7f53eece4c5114d3b0f82391c57bf6
520
/nix/store/k6pybg80092ylsvfr07xpc2vblzlqkir-dep.drv
1
/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep
/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top
94c77b26f3422ea83f6e4af420201f39d8924041bd98c77f37103b6c14f034b7
328

1
/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep
";

    #[test]
    fn registrations_parse_with_self_references() {
        let infos = parse_registrations("/nix/store", DUMP).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].references, vec![infos[0].store_path.clone()]);
        assert_eq!(infos[1].nar_size, 328);
        assert_eq!(
            infos[1].fingerprint(),
            "1;/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top;sha256:1drly0a6qfqh6xzwg65x85095n1r3wh21x2adqzshbj2yck7piwl;328;/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep"
        );
    }

    #[test]
    fn truncated_or_garbled_dumps_are_errors() {
        for cut in [60, 130, 140, 200] {
            assert!(
                parse_registrations("/nix/store", &DUMP[..cut]).is_err(),
                "{cut}"
            );
        }
        let garbled = DUMP.replace("520", "lots");
        assert!(parse_registrations("/nix/store", &garbled).is_err());
        let escaped = DUMP.replace("/nix/store/z6inba", "/tmp/evil/z6inba");
        assert!(parse_registrations("/nix/store", &escaped).is_err());
    }

    #[test]
    fn signatures_from_both_json_shapes() {
        let key = SecretKey::from_seed("fleet-1", &[1; 32]);
        let sig = key.sign(b"x").to_string();
        let list = format!(
            r#"[{{"path":"/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top","signatures":["{sig}","garbage"]}},{{"path":"/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep"}}]"#
        );
        let map = format!(
            r#"{{"xp7p4yp8l0387n3g7sk009xhppcycrml-top":{{"signatures":["{sig}"]}},"/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep":null}}"#
        );
        for json in [list, map] {
            let sigs = parse_signatures("/nix/store", &json).unwrap();
            let top: StorePath = "/nix/store/xp7p4yp8l0387n3g7sk009xhppcycrml-top"
                .parse()
                .unwrap();
            let dep: StorePath = "/nix/store/z6inba6f50j0hpli5c3viqdvqi9kbydw-dep"
                .parse()
                .unwrap();
            assert_eq!(sigs[&top].len(), 1, "{json}");
            assert!(sigs[&dep].is_empty(), "{json}");
        }
        assert!(parse_signatures("/nix/store", "\"no\"").is_err());
        assert!(parse_signatures("/nix/store", r#"{"../../etc":{}}"#).is_err());
    }

    #[test]
    fn verification_needs_a_trusted_signature_over_the_store_facts() {
        let mut info = parse_registrations("/nix/store", DUMP).unwrap().remove(1);
        let key = SecretKey::from_seed("fleet-1", &[1; 32]);
        let trusted = [key.public()];
        assert!(matches!(
            info.verify(&trusted),
            Err(VerifyError::Unsigned { .. })
        ));
        info.sigs.push(key.sign(info.fingerprint().as_bytes()));
        assert_eq!(info.verify(&trusted).unwrap().name, "fleet-1");
        // The same signature no longer covers a path whose registered size differs.
        info.nar_size += 1;
        assert!(matches!(
            info.verify(&trusted),
            Err(VerifyError::BadSignature { .. })
        ));
        let stranger = [SecretKey::from_seed("other-1", &[2; 32]).public()];
        assert!(matches!(
            info.verify(&stranger),
            Err(VerifyError::Untrusted { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,300}") {
            let _ = parse_registrations("/nix/store", &s);
            let _ = parse_signatures("/nix/store", &s);
        }
    }
}
