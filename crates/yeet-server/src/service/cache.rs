//! The embedded binary cache: narinfo and NAR files in the state directory, served to Nix as
//! a substituter under `/cache`. Uploads are written to a temporary directory and renamed
//! into place only when complete and consistent, so an interrupted upload leaves nothing
//! visible. The server never signs: narinfos carry the publisher's signatures, because
//! closure trust stays with the hosts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use yeet_proto::ErrorCode;
use yeet_proto::api::{
    CacheGcReport, CacheGcRequest, CacheMissingRequest, CacheMissingResponse, CreateReleaseRequest,
    MAX_CACHE_QUERY_PATHS, Role,
};

use super::auth::{require_role, require_role_in_scope};
use super::{Principal, Result, Service, ServiceError};
use crate::shares::Share;

const NIX_CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n";
const NAR_SUFFIXES: [&str; 4] = [".nar", ".nar.xz", ".nar.zst", ".nar.bz2"];

/// Where an upload goes, from its path under `/cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFile {
    /// `nar/<nix32 sha256 of the file>.nar[.xz|.zst|.bz2]`
    Nar(String),
    /// `<store path hash>.narinfo`
    NarInfo(String),
}

impl CacheFile {
    /// Classifies a path relative to `/cache`; anything else is refused.
    pub fn parse(rel: &str) -> Option<CacheFile> {
        let is_nix32 = |s: &str, len: usize| s.len() == len && nix_meta::nix32::decode(s).is_ok();
        if let Some(name) = rel.strip_prefix("nar/") {
            let hash = NAR_SUFFIXES
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))?;
            return is_nix32(hash, 52).then(|| CacheFile::Nar(name.to_owned()));
        }
        let hash = rel.strip_suffix(".narinfo")?;
        is_nix32(hash, 32).then(|| CacheFile::NarInfo(hash.to_owned()))
    }
}

/// The cache's directories: `root` is served, `tmp` holds uploads in progress.
#[derive(Debug, Clone)]
pub struct EmbeddedCache {
    root: PathBuf,
    tmp: PathBuf,
}

impl EmbeddedCache {
    pub fn open(state_dir: &Path) -> std::io::Result<EmbeddedCache> {
        let cache = EmbeddedCache {
            root: state_dir.join("cache"),
            tmp: state_dir.join("cache-uploads"),
        };
        std::fs::create_dir_all(cache.root.join("nar"))?;
        // Uploads never finished before a restart are garbage.
        let _ = std::fs::remove_dir_all(&cache.tmp);
        std::fs::create_dir_all(&cache.tmp)?;
        let info = cache.root.join("nix-cache-info");
        if !info.exists() {
            std::fs::write(info, NIX_CACHE_INFO)?;
        }
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh temporary file name for an upload.
    pub fn temp_path(&self) -> PathBuf {
        let mut b = [0u8; 12];
        let _ = getrandom::getrandom(&mut b);
        self.tmp.join(hex::encode(b))
    }

    pub fn narinfo(&self, hash: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(format!("{hash}.narinfo"))).ok()
    }

    /// The mark-and-sweep behind `cache_gc`.
    fn collect(&self, roots: &[String], grace: std::time::Duration) -> Result<CacheGcReport> {
        let young = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < grace)
        };
        // Mark: the closures of the roots, following narinfo references.
        let mut keep: BTreeSet<String> = BTreeSet::new();
        let mut todo: Vec<String> = roots
            .iter()
            .filter_map(|p| p.parse::<nix_meta::StorePath>().ok())
            .map(|p| p.hash_part().to_owned())
            .collect();
        while let Some(hash) = todo.pop() {
            if !keep.insert(hash.clone()) {
                continue;
            }
            if let Some(info) = self
                .narinfo(&hash)
                .and_then(|t| nix_meta::NarInfo::parse(&t).ok())
            {
                todo.extend(info.references.iter().map(|r| r.hash_part().to_owned()));
            }
        }
        // Sweep narinfos, then NARs that no surviving narinfo names.
        let mut report = CacheGcReport {
            kept_paths: 0,
            deleted_paths: 0,
            deleted_files: 0,
            bytes_freed: 0,
        };
        let mut live_nars = BTreeSet::new();
        let remove = |path: &Path, report: &mut CacheGcReport| -> Result<()> {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(path).map_err(io_error)?;
            report.deleted_files += 1;
            report.bytes_freed += size;
            Ok(())
        };
        for entry in std::fs::read_dir(&self.root).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            let Some(hash) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".narinfo"))
                .map(str::to_owned)
            else {
                continue;
            };
            if keep.contains(&hash) || young(&path) {
                report.kept_paths += 1;
                if let Some(info) = self
                    .narinfo(&hash)
                    .and_then(|t| nix_meta::NarInfo::parse(&t).ok())
                {
                    live_nars.insert(info.url);
                }
            } else {
                remove(&path, &mut report)?;
                report.deleted_paths += 1;
            }
        }
        for entry in std::fs::read_dir(self.root.join("nar")).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            let name = format!(
                "nar/{}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            );
            if !live_nars.contains(&name) && !young(&path) {
                remove(&path, &mut report)?;
            }
        }
        Ok(report)
    }
}

fn io_error(e: std::io::Error) -> ServiceError {
    ServiceError::io("embedded cache", e)
}

impl Service {
    pub fn embedded_cache(&self) -> Result<&EmbeddedCache> {
        self.cache.as_ref().ok_or_else(|| {
            ServiceError::refused(
                ErrorCode::NoEmbeddedCache,
                "this server's embedded cache is disabled",
            )
        })
    }

    /// Moves a fully received upload into the cache, after checking that it is what its
    /// name says. `sha256` is the digest of the uploaded bytes.
    /// Reserves one of the key's concurrent upload slots; the slot is freed when dropped.
    pub fn upload_slot(&self, key_id: &str) -> Result<Share> {
        self.uploads.take(key_id).map_err(|running| {
            ServiceError::refused(
                ErrorCode::RateLimited,
                format!("this key already runs {running} uploads; wait for one to finish"),
            )
        })
    }

    pub fn accept_upload(
        &self,
        principal: &Principal,
        file: &CacheFile,
        tmp: &Path,
        sha256: &[u8; 32],
    ) -> Result<()> {
        // Store paths belong to no host: scoped publishers upload too.
        require_role_in_scope(principal, Role::Publisher)?;
        let cache = self.embedded_cache()?;
        let target = match file {
            CacheFile::Nar(name) => {
                let expected = nix_meta::nix32::encode(sha256);
                if !name.starts_with(&expected) {
                    return Err(ServiceError::refused(
                        ErrorCode::NarMismatch,
                        format!(
                            "nar/{name} does not match its content (sha256 {expected}); was the upload cut short?"
                        ),
                    ));
                }
                cache.root.join("nar").join(name)
            }
            CacheFile::NarInfo(hash) => {
                let text = std::fs::read_to_string(tmp).map_err(|_| {
                    ServiceError::refused(ErrorCode::InvalidNarinfo, "the narinfo is not UTF-8")
                })?;
                let info = nix_meta::NarInfo::parse(&text)
                    .map_err(|e| ServiceError::refused(ErrorCode::InvalidNarinfo, e.to_string()))?;
                if info.store_path.hash_part() != hash {
                    return Err(ServiceError::refused(
                        ErrorCode::InvalidNarinfo,
                        format!("{hash}.narinfo describes {}", info.store_path),
                    ));
                }
                self.check_trusted(&info)?;
                let nar = CacheFile::parse(&info.url).ok_or_else(|| {
                    ServiceError::refused(
                        ErrorCode::InvalidNarinfo,
                        format!("URL {} is not a NAR file of this cache", info.url),
                    )
                })?;
                if !matches!(nar, CacheFile::Nar(_)) || !cache.root.join(&info.url).exists() {
                    return Err(ServiceError::refused(
                        ErrorCode::MissingNar,
                        format!("upload {} before its narinfo", info.url),
                    ));
                }
                cache.root.join(format!("{hash}.narinfo"))
            }
        };
        // Same directory tree and file system: the rename is atomic.
        std::fs::rename(tmp, &target).map_err(io_error)
    }
}

impl Service {
    /// Refuses a narinfo that no trusted key signed (when the fleet has trusted keys): hosts
    /// would refuse the path anyway, and the embedded cache holds only what they can use.
    fn check_trusted(&self, info: &nix_meta::NarInfo) -> Result<()> {
        let keys = &self.config.trusted_cache_keys;
        if keys.is_empty() {
            return Ok(());
        }
        info.verify(keys).map(drop).map_err(|e| {
            let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
            ServiceError::refused(
                ErrorCode::UntrustedClosure,
                format!(
                    "{e}; expected a signature by one of: {}; sign with `yeet publish --signing-key FILE`",
                    names.join(", ")
                ),
            )
        })
    }

    /// Which of `req.hashes` have no narinfo in the embedded cache, and which keys a narinfo
    /// must be signed by to be accepted.
    pub async fn cache_missing(
        &self,
        principal: &Principal,
        req: CacheMissingRequest,
    ) -> Result<CacheMissingResponse> {
        require_role_in_scope(principal, Role::Publisher)?;
        if req.hashes.len() > MAX_CACHE_QUERY_PATHS {
            return Err(ServiceError::refused(
                ErrorCode::TooManyPaths,
                format!("ask about at most {MAX_CACHE_QUERY_PATHS} store paths per request"),
            ));
        }
        if let Some(bad) = req
            .hashes
            .iter()
            .find(|h| h.len() != 32 || nix_meta::nix32::decode(h).is_err())
        {
            return Err(ServiceError::refused(
                ErrorCode::InvalidStorePath,
                format!(
                    "{:?} is not a store path hash (32 nix32 characters)",
                    bad.escape_debug().to_string()
                ),
            ));
        }
        let root = self.embedded_cache()?.root.clone();
        let missing = tokio::task::spawn_blocking(move || {
            req.hashes
                .into_iter()
                .filter(|h| !root.join(format!("{h}.narinfo")).exists())
                .collect()
        })
        .await
        .map_err(|e| ServiceError::System(e.to_string()))?;
        Ok(CacheMissingResponse {
            missing,
            trusted_keys: self
                .config
                .trusted_cache_keys
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
    }
}

/// A cache URL without its Nix store options (`?...`) or trailing slash: where it is read.
fn cache_location(url: &str) -> &str {
    url.split('?').next().unwrap_or(url).trim_end_matches('/')
}

/// Reads `<cache>/<hash>.narinfo` from a cache the server can reach itself.
async fn fetch_narinfo(cache: &str, hash: &str) -> Result<Option<String>> {
    let name = format!("{hash}.narinfo");
    let cache = cache_location(cache);
    if let Some(dir) = cache.strip_prefix("file://") {
        return Ok(tokio::fs::read_to_string(Path::new(dir).join(name))
            .await
            .ok());
    }
    if cache.starts_with("http://") || cache.starts_with("https://") {
        let url = format!("{cache}/{name}");
        let fetched = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(30)))
                .build()
                .into();
            let mut resp = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
            match resp.status().as_u16() {
                200 => resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_string()
                    .map(Some)
                    .map_err(|e| format!("{url}: {e}")),
                404 => Ok(None),
                other => Err(format!("{url}: HTTP {other}")),
            }
        })
        .await
        .map_err(|e| ServiceError::System(e.to_string()))?;
        return fetched.map_err(|e| {
            tracing::warn!(error = %e, "release check: cache read failed");
            ServiceError::refused(
                ErrorCode::CacheUnreachable,
                "the cache did not answer the signature check; the server log has details",
            )
        });
    }
    Err(ServiceError::refused(
        ErrorCode::UncheckableCache,
        format!(
            "the server cannot read {cache} to check signatures; publish through the embedded cache, or name an http(s):// or file:// view of the cache"
        ),
    ))
}

impl Service {
    /// Deletes what no kept release needs: narinfos outside the closures of each host's
    /// newest `keep` releases, then NAR files no remaining narinfo names. Files younger than
    /// the grace period stay (a publish may be uploading for a release not yet created).
    pub async fn cache_gc(
        &self,
        principal: &Principal,
        req: CacheGcRequest,
    ) -> Result<CacheGcReport> {
        require_role(principal, Role::Admin)?;
        if req.keep == 0 {
            return Err(ServiceError::refused(
                ErrorCode::InvalidKeep,
                "keep at least one release per host",
            ));
        }
        let cache = self.embedded_cache()?.clone();
        let roots = self.store.paths_of_newest_releases(req.keep).await?;
        let grace = std::time::Duration::from_secs(req.grace_secs);
        let report = tokio::task::spawn_blocking(move || cache.collect(&roots, grace))
            .await
            .map_err(|e| ServiceError::System(e.to_string()))??;
        // The files are gone whatever the database says: the event follows, with what went.
        let audit = self.audit_entry(
            principal,
            "cache.gc",
            Vec::new(),
            serde_json::json!({ "keep": req.keep, "grace_secs": req.grace_secs, "report": report }),
        );
        self.store.record_audit(&audit).await?;
        Ok(report)
    }

    /// Refuses a release unless every top-level path has its narinfo in the cache it was
    /// published through, signed by one of the fleet's trusted keys. Hosts check again
    /// with their own keys; this catches mistakes before any host sees the release.
    pub(crate) async fn check_release_signed(&self, req: &CreateReleaseRequest) -> Result<()> {
        let keys = &self.config.trusted_cache_keys;
        if keys.is_empty() {
            return Ok(());
        }
        let expected: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        let expected = expected.join(", ");
        let where_ = req
            .cache
            .clone()
            .unwrap_or_else(|| "the embedded cache".into());
        // The server reads only caches its operator configured: a publisher must not make it
        // fetch arbitrary (internal) URLs or read local files.
        if let Some(url) = &req.cache {
            let wanted = cache_location(url);
            if !self
                .config
                .caches
                .iter()
                .any(|c| cache_location(c) == wanted)
            {
                return Err(ServiceError::refused(
                    ErrorCode::CacheNotAllowed,
                    format!(
                        "the server checks releases only in the caches its config lists (`caches` in server.toml: {}); add this cache there, or publish to the embedded cache",
                        if self.config.caches.is_empty() {
                            "none".into()
                        } else {
                            self.config.caches.join(", ")
                        }
                    ),
                ));
            }
        }
        for path in req.hosts.values().collect::<BTreeSet<_>>() {
            let sp: nix_meta::StorePath = path.parse().map_err(|e: nix_meta::StorePathError| {
                ServiceError::refused(ErrorCode::InvalidStorePath, e.to_string())
            })?;
            let text = match &req.cache {
                None => self.embedded_cache()?.narinfo(sp.hash_part()),
                Some(url) => fetch_narinfo(url, sp.hash_part()).await?,
            };
            let text = text.ok_or_else(|| {
                ServiceError::refused(ErrorCode::MissingNarinfo, format!("{path} has no narinfo in {where_}; push it first (yeet publish pushes unless told otherwise)"))
            })?;
            let info = nix_meta::NarInfo::parse(&text).map_err(|e| {
                ServiceError::refused(ErrorCode::InvalidNarinfo, format!("{path}: {e}"))
            })?;
            info.verify(keys).map_err(|e| {
                ServiceError::refused(
                    ErrorCode::UntrustedClosure,
                    format!("{e}; expected a signature by one of: {expected}"),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cache_files_are_accepted_as_upload_targets() {
        let nar = "nar/09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d.nar.xz";
        assert!(matches!(CacheFile::parse(nar), Some(CacheFile::Nar(_))));
        assert_eq!(
            CacheFile::parse("q322pzff5rm7kwfwfbhcza6wr2b84wlm.narinfo"),
            Some(CacheFile::NarInfo(
                "q322pzff5rm7kwfwfbhcza6wr2b84wlm".into()
            ))
        );
        for bad in [
            "nix-cache-info",
            "../etc/passwd",
            "nar/../../x.nar",
            "nar/short.nar",
            "q322.narinfo",
            "nar/09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d.tar",
        ] {
            assert_eq!(CacheFile::parse(bad), None, "{bad}");
        }
    }
}
