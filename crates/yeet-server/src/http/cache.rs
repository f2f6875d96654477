//! `/cache`: the embedded binary cache. Reads are unsigned (Nix's substituter protocol has no
//! place for our signatures); uploads (`PUT`) are signed by a publisher. An upload is
//! authenticated from its headers before any byte is accepted (the signature covers the
//! declared body digest), limited in size and in how many one key runs at once, streamed to
//! a temporary file while hashed, and moved into place only if the bytes match the digest.

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::HeaderMap;
use axum::routing::get_service;
use axum::{Json, Router};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tower_http::services::ServeDir;
use yeet_proto::SignatureHeaders;
use yeet_proto::signing::HEADER_CONTENT_SHA256;

use super::AppState;
use super::error::ApiError;
use crate::service::cache::{CacheFile, EmbeddedCache};
use crate::service::{Principal, ServiceError, SignedRequest};
use yeet_proto::ErrorCode;

/// The narinfo upload limit; NARs use the configured `max_upload_bytes`.
const MAX_NARINFO_BYTES: u64 = 1 << 20;

pub fn routes(state: AppState, cache: &EmbeddedCache) -> Router<AppState> {
    let files = get_service(ServeDir::new(cache.root()))
        .put(upload)
        .with_state(state);
    Router::new().nest_service("/cache", files)
}

async fn upload(
    State(app): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sig = SignatureHeaders::parse(header)?;
    let declared = header(HEADER_CONTENT_SHA256)
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingDigest,
                format!("uploads must declare their body's SHA-256 in {HEADER_CONTENT_SHA256} (lower-case hex); update yeet"),
            )
        })?
        .to_owned();
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // The full check, signature, nonce and role, before a single byte is read.
    let request = SignedRequest {
        method: "PUT",
        path_and_query,
        headers: &sig,
    };
    let principal = app.service.authenticate_upload(&request, &declared).await?;
    let cache = app.service.embedded_cache()?;
    let rel = uri.path().strip_prefix("/cache/").unwrap_or_default();
    let file = CacheFile::parse(rel).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotACacheFile,
            format!("{rel} is not a narinfo or NAR file name"),
        )
    })?;
    let limit = match file {
        CacheFile::Nar(_) => app.max_upload_bytes,
        CacheFile::NarInfo(_) => MAX_NARINFO_BYTES,
    };
    let announced = header("content-length").and_then(|l| l.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let _slot = app.service.upload_slot(&sig.key_id)?;
    let tmp = cache.temp_path();
    let result = receive(&app, &principal, &declared, &file, &tmp, body, limit).await;
    // Whatever happened, no partial file stays behind.
    let _ = tokio::fs::remove_file(&tmp).await;
    result.map(|()| Json(serde_json::json!({})))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!(
            "uploads of this kind are limited to {limit} bytes; raise max_upload_bytes in the server config for larger NARs"
        ),
    )
}

async fn receive(
    app: &AppState,
    principal: &Principal,
    declared: &str,
    file: &CacheFile,
    tmp: &Path,
    mut body: Body,
    limit: u64,
) -> Result<(), ApiError> {
    let disk = |e: std::io::Error| ApiError::from(ServiceError::io("cache upload", e));
    let mut out = tokio::fs::File::create(tmp).await.map_err(disk)?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let stalled = || {
        ApiError::new(
            ErrorCode::BodyTimeout,
            format!("the upload stalled for {:?}; retry it", app.body_timeout),
        )
    };
    while let Some(frame) = tokio::time::timeout(app.body_timeout, body.frame())
        .await
        .map_err(|_| stalled())?
    {
        let frame = frame.map_err(|_| {
            ApiError::new(
                ErrorCode::BodyUnreadable,
                "the upload was cut short; retry it",
            )
        })?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            if received > limit {
                return Err(too_large(limit));
            }
            hasher.update(&data);
            out.write_all(&data).await.map_err(disk)?;
        }
    }
    // tokio's File reports a failed background write only on the next flush; without
    // it a full disk would leave a short file that the digest (of the bytes received)
    // does not catch.
    out.flush().await.map_err(disk)?;
    out.sync_all().await.map_err(disk)?;
    drop(out);
    let digest: [u8; 32] = hasher.finalize().into();
    if hex::encode(digest) != declared {
        return Err(ApiError::new(
            ErrorCode::DigestMismatch,
            "the body does not match the SHA-256 its signature covers; was the upload cut short? retry it",
        ));
    }
    Ok(app.service.accept_upload(principal, file, tmp, &digest)?)
}
