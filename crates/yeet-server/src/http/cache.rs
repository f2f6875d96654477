//! `/cache`: the embedded binary cache. Reads are unsigned (Nix's substituter protocol has no
//! place for our signatures); uploads (`PUT`) are signed by a publisher. An upload is
//! pre-authorized from its headers before any byte is accepted, streamed to a temporary file
//! while hashed, and authenticated against that digest before it is moved into place.

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get_service;
use axum::{Json, Router};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tower_http::services::ServeDir;
use yeet_proto::SignatureHeaders;
use yeet_proto::api::Role;

use super::AppState;
use super::error::ApiError;
use crate::service::cache::{CacheFile, EmbeddedCache};

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
    let sig = SignatureHeaders::parse(|name| headers.get(name).and_then(|v| v.to_str().ok()))?;
    app.service.preauthorize(&sig, Role::Publisher).await?;
    let cache = app.service.embedded_cache()?;
    let rel = uri.path().strip_prefix("/cache/").unwrap_or_default();
    let file = CacheFile::parse(rel).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_cache_file",
            format!("{rel} is not a narinfo or NAR file name"),
        )
    })?;
    let limit = match file {
        CacheFile::Nar(_) => app.max_upload_bytes,
        CacheFile::NarInfo(_) => MAX_NARINFO_BYTES,
    };
    let tmp = cache.temp_path();
    let result = receive(&app, &uri, &sig, &file, &tmp, body, limit).await;
    // Whatever happened, no partial file stays behind.
    let _ = tokio::fs::remove_file(&tmp).await;
    result.map(|()| Json(serde_json::json!({})))
}

async fn receive(
    app: &AppState,
    uri: &axum::http::Uri,
    sig: &SignatureHeaders,
    file: &CacheFile,
    tmp: &Path,
    mut body: Body,
    limit: u64,
) -> Result<(), ApiError> {
    let disk = |e: std::io::Error| {
        if e.raw_os_error() == Some(28) {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the server's disk is full; free space or run `yeet cache gc`",
            )
        } else {
            tracing::error!(error = %e, "cache upload write failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error; the server log has details",
            )
        }
    };
    let mut out = tokio::fs::File::create(tmp).await.map_err(disk)?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the upload was cut short; retry it",
            )
        })?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            if received > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("uploads of this kind are limited to {limit} bytes"),
                ));
            }
            hasher.update(&data);
            out.write_all(&data).await.map_err(disk)?;
        }
    }
    out.sync_all().await.map_err(disk)?;
    drop(out);
    let digest: [u8; 32] = hasher.finalize().into();
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let principal = app
        .service
        .authenticate_digest("PUT", path_and_query, sig, &hex::encode(digest))
        .await?;
    Ok(app.service.accept_upload(&principal, file, tmp, &digest)?)
}
