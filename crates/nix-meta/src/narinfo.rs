//! `.narinfo` files: parsing, serialising in the field order Nix writes, the signature
//! fingerprint, signing, and verification against a set of trusted keys.

use std::fmt::Write as _;
use thiserror::Error;

use crate::hash::{NarHash, NarHashError};
use crate::keys::{PublicKey, SecretKey, Signature};
use crate::store_path::{StorePath, StorePathError};

/// A narinfo larger than this is refused before parsing: real ones are a few hundred bytes
/// plus one line per reference.
pub const MAX_NARINFO_BYTES: usize = 1 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("narinfo is larger than {MAX_NARINFO_BYTES} bytes")]
    TooLarge,
    #[error("narinfo line {0} is not `Key: value`")]
    BadLine(usize),
    #[error("narinfo field {0} appears twice")]
    Duplicate(&'static str),
    #[error("narinfo lacks the required field {0}")]
    Missing(&'static str),
    #[error("narinfo field {field} is invalid: {message}")]
    BadField {
        field: &'static str,
        message: String,
    },
}

fn bad(field: &'static str, e: impl std::fmt::Display) -> NarInfoError {
    NarInfoError::BadField {
        field,
        message: e.to_string(),
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("{path} carries no signature")]
    Unsigned { path: String },
    #[error(
        "{path} is signed only by keys that are not trusted ({signers}); trusted keys: {trusted}"
    )]
    Untrusted {
        path: String,
        signers: String,
        trusted: String,
    },
    #[error(
        "{path} has a signature claiming trusted key {key} that does not verify (tampered narinfo?)"
    )]
    BadSignature { path: String, key: String },
}

/// One narinfo file. References are kept as store paths; `Sig` lines keep their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store the path belongs to, usually `/nix/store`.
    pub store_dir: String,
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache.
    pub url: String,
    pub compression: String,
    /// Hash and size of the compressed file, when the cache states them.
    pub file_hash: Option<NarHash>,
    pub file_size: Option<u64>,
    /// Hash and size of the uncompressed NAR: what signatures cover.
    pub nar_hash: NarHash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    /// `Sig:` lines, in order.
    pub sigs: Vec<Signature>,
    /// Content address, for paths that need no signature to be trusted.
    pub ca: Option<String>,
}

#[derive(Default)]
struct Fields<'a> {
    store_path: Option<&'a str>,
    url: Option<&'a str>,
    compression: Option<&'a str>,
    file_hash: Option<&'a str>,
    file_size: Option<&'a str>,
    nar_hash: Option<&'a str>,
    nar_size: Option<&'a str>,
    references: Option<&'a str>,
    deriver: Option<&'a str>,
    system: Option<&'a str>,
    ca: Option<&'a str>,
    sigs: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// The raw `Key: value` fields; a key given twice is an error, unknown keys are skipped.
    fn read(text: &'a str) -> Result<Fields<'a>, NarInfoError> {
        let mut f = Fields::default();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(": ").ok_or(NarInfoError::BadLine(i + 1))?;
            match key {
                "StorePath" => set(&mut f.store_path, "StorePath", value)?,
                "URL" => set(&mut f.url, "URL", value)?,
                "Compression" => set(&mut f.compression, "Compression", value)?,
                "FileHash" => set(&mut f.file_hash, "FileHash", value)?,
                "FileSize" => set(&mut f.file_size, "FileSize", value)?,
                "NarHash" => set(&mut f.nar_hash, "NarHash", value)?,
                "NarSize" => set(&mut f.nar_size, "NarSize", value)?,
                "References" => set(&mut f.references, "References", value)?,
                "Deriver" => set(&mut f.deriver, "Deriver", value)?,
                "System" => set(&mut f.system, "System", value)?,
                "CA" => set(&mut f.ca, "CA", value)?,
                "Sig" => f.sigs.push(value),
                _ => {}
            }
        }
        // `References:` may be written with nothing after the colon and the space trimmed.
        if f.references.is_none() && text.lines().any(|l| l == "References:") {
            f.references = Some("");
        }
        Ok(f)
    }
}

fn set<'a>(
    slot: &mut Option<&'a str>,
    name: &'static str,
    value: &'a str,
) -> Result<(), NarInfoError> {
    if slot.replace(value).is_some() {
        return Err(NarInfoError::Duplicate(name));
    }
    Ok(())
}

impl NarInfo {
    /// Parses a narinfo whose paths live in `store_dir` (normally `/nix/store`).
    /// Unknown fields are ignored, as Nix ignores them.
    pub fn parse_in(store_dir: &str, text: &str) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_BYTES {
            return Err(NarInfoError::TooLarge);
        }
        let f = Fields::read(text)?;
        let path = |field: &'static str, v: &str| {
            StorePath::parse_in(store_dir, v).map_err(|e| bad(field, e))
        };
        let base = |field: &'static str, v: &str| {
            StorePath::from_base_name(v).map_err(|e: StorePathError| bad(field, e))
        };
        let hash = |field: &'static str, v: &str| {
            v.parse::<NarHash>()
                .map_err(|e: NarHashError| bad(field, e))
        };
        let size = |field: &'static str, v: &str| v.parse::<u64>().map_err(|e| bad(field, e));

        let url = f.url.ok_or(NarInfoError::Missing("URL"))?;
        if url.is_empty() {
            return Err(bad("URL", "empty"));
        }
        Ok(NarInfo {
            store_dir: store_dir.to_owned(),
            store_path: path(
                "StorePath",
                f.store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            )?,
            url: url.to_owned(),
            // Nix's own default when the field is absent.
            compression: f.compression.unwrap_or("bzip2").to_owned(),
            file_hash: f.file_hash.map(|v| hash("FileHash", v)).transpose()?,
            file_size: f.file_size.map(|v| size("FileSize", v)).transpose()?,
            nar_hash: hash(
                "NarHash",
                f.nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            )?,
            nar_size: size(
                "NarSize",
                f.nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            )?,
            references: f
                .references
                .unwrap_or("")
                .split(' ')
                .filter(|r| !r.is_empty())
                .map(|r| base("References", r))
                .collect::<Result<_, _>>()?,
            deriver: f
                .deriver
                .filter(|d| !d.is_empty() && *d != "unknown-deriver")
                .map(|d| base("Deriver", d))
                .transpose()?,
            system: f.system.map(str::to_owned),
            sigs: f
                .sigs
                .iter()
                .map(|s| s.parse().map_err(|e| bad("Sig", e)))
                .collect::<Result<_, _>>()?,
            ca: f.ca.map(str::to_owned),
        })
    }

    /// Parses a narinfo for the default store directory.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        Self::parse_in(crate::DEFAULT_STORE_DIR, text)
    }

    /// The text form, with fields in the order Nix writes them.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "StorePath: {}",
            self.store_path.in_store(&self.store_dir)
        );
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<&str> = self.references.iter().map(StorePath::base_name).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.base_name());
        }
        if let Some(sys) = &self.system {
            let _ = writeln!(s, "System: {sys}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    /// The string that signatures cover (see [`crate::path_info::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        crate::path_info::fingerprint(
            &self.store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds a signature by `key`, replacing an earlier one by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.fingerprint().as_bytes());
        self.sigs.retain(|s| s.key_name != key.name);
        self.sigs.push(sig);
    }

    /// Succeeds with the first trusted key whose signature verifies (see
    /// [`crate::path_info::PathInfo::verify`], which applies the same rule to a store's own
    /// metadata).
    pub fn verify<'k>(&self, trusted: &'k [PublicKey]) -> Result<&'k PublicKey, VerifyError> {
        crate::path_info::verify_signatures(
            self.store_path.in_store(&self.store_dir),
            &self.fingerprint(),
            &self.sigs,
            trusted,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Written by `nix copy --to file://...?secret-key=sk` (Nix 2.8); key from keys.rs tests.
    const REAL: &str = "StorePath: /nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-test-system
URL: nar/09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d.nar.xz
Compression: xz
FileHash: sha256:09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d
FileSize: 124
NarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
NarSize: 120
References: 
Deriver: m16gbjw5q14hm28zldyii9cg4s3xls40-test-system.drv
Sig: test-1:IAfkaI6kVAFDp78JGYjL0V7vJz4lXepS7IR+pvQGZfxON28/axC2/z/ZuaPmxhcAry1Wb9KhRicBP+8W2WpaAQ==
";
    const PK: &str = "test-1:wJ5uslHSOR8lFc8aZCAeC1CWl+xYeAzzfmwKSaa7LCg=";

    #[test]
    fn real_narinfo_roundtrips_and_verifies() {
        let ni = NarInfo::parse(REAL).unwrap();
        assert_eq!(ni.to_text(), REAL);
        assert_eq!(ni.nar_size, 120);
        let trusted = [PK.parse::<PublicKey>().unwrap()];
        assert_eq!(ni.verify(&trusted).unwrap().name, "test-1");
    }

    #[test]
    fn tampering_and_untrusted_keys_are_reported() {
        let trusted = [PK.parse::<PublicKey>().unwrap()];
        let mut ni = NarInfo::parse(REAL).unwrap();
        ni.nar_size += 1;
        assert!(matches!(
            ni.verify(&trusted),
            Err(VerifyError::BadSignature { .. })
        ));
        let other = SecretKey::from_seed("other-1", &[7; 32]);
        let mut ni = NarInfo::parse(REAL).unwrap();
        ni.sigs.clear();
        assert!(matches!(
            ni.verify(&trusted),
            Err(VerifyError::Unsigned { .. })
        ));
        ni.sign(&other);
        let err = ni.verify(&trusted).unwrap_err();
        assert!(
            err.to_string().contains("other-1") && err.to_string().contains("test-1"),
            "{err}"
        );
        assert!(ni.verify(&[other.public()]).is_ok());
    }

    #[test]
    fn rejects_malformed_narinfos() {
        assert_eq!(NarInfo::parse("garbage"), Err(NarInfoError::BadLine(1)));
        assert_eq!(
            NarInfo::parse(&REAL.replace("NarSize: 120\n", "")),
            Err(NarInfoError::Missing("NarSize"))
        );
        assert_eq!(
            NarInfo::parse(&format!("{REAL}URL: x\n")),
            Err(NarInfoError::Duplicate("URL"))
        );
        assert!(matches!(
            NarInfo::parse(&REAL.replace("NarSize: 120", "NarSize: -1")),
            Err(NarInfoError::BadField {
                field: "NarSize",
                ..
            })
        ));
        assert!(matches!(
            NarInfo::parse(&REAL.replace("References: ", "References: ../etc")),
            Err(NarInfoError::BadField {
                field: "References",
                ..
            })
        ));
        assert!(matches!(
            NarInfo::parse(&REAL.replace("/nix/store/", "/tmp/")),
            Err(NarInfoError::BadField {
                field: "StorePath",
                ..
            })
        ));
        assert!(matches!(
            NarInfo::parse(&REAL.replace("Sig: test-1:", "Sig: test-1:!")),
            Err(NarInfoError::BadField { field: "Sig", .. })
        ));
        assert_eq!(
            NarInfo::parse(&"x".repeat(MAX_NARINFO_BYTES + 1)),
            Err(NarInfoError::TooLarge)
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,400}") {
            let _ = NarInfo::parse(&s);
        }

        #[test]
        fn parser_never_panics_on_mutated_real_input(pos in 0usize..REAL.len(), byte in any::<u8>()) {
            let mut bytes = REAL.as_bytes().to_vec();
            bytes[pos] = byte;
            // Whatever parses must serialise to something that parses the same way.
            if let Some(ni) = String::from_utf8(bytes).ok().and_then(|s| NarInfo::parse(&s).ok()) {
                prop_assert_eq!(NarInfo::parse(&ni.to_text()).unwrap(), ni);
            }
        }

        #[test]
        fn signed_narinfos_roundtrip(seed in any::<[u8; 32]>(), size in any::<u64>(), nrefs in 0usize..5) {
            let key = SecretKey::from_seed("fleet-1", &seed);
            let mut ni = NarInfo::parse(REAL).unwrap();
            ni.nar_size = size;
            ni.references = (0..nrefs).map(|i| StorePath::from_base_name(&format!("q322pzff5rm7kwfwfbhcza6wr2b84wlm-ref{i}")).unwrap()).collect();
            ni.sign(&key);
            let back = NarInfo::parse(&ni.to_text()).unwrap();
            prop_assert!(back.verify(&[key.public()]).is_ok());
        }
    }
}
