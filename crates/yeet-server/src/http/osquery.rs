//! `/osquery/*`: the osquery TLS remote API that osqueryd's tls plugins call. These requests
//! are not signed (osqueryd cannot sign); the node key in the body is their credential.
//!
//! Answers follow what osqueryd does with them (see the `osquery-tls` crate): it ignores the
//! status code and reads the body, so every refusal is JSON. `{"node_invalid": true}` goes
//! only with an unknown node key or a wrong enroll secret, since it makes osqueryd drop its
//! key; every other refusal is `{"error": ...}`, which makes it retry and keep its logs.
//! Bodies are limited before and after gzip, and must arrive within the body timeout.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;

use super::AppState;
use super::auth::{ClientIp, read_body};
use super::error::ApiError;
use crate::service::ServiceError;
use osquery_tls::{ErrorBody, NodeInvalid, paths};
use yeet_proto::ErrorCode;

/// A refusal in the shape osqueryd understands.
pub struct OsqueryError(ApiError);

impl From<ApiError> for OsqueryError {
    fn from(e: ApiError) -> Self {
        OsqueryError(e)
    }
}

impl From<ServiceError> for OsqueryError {
    fn from(e: ServiceError) -> Self {
        OsqueryError(e.into())
    }
}

impl IntoResponse for OsqueryError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if self.0.code == ErrorCode::OsqueryUnauthorized {
            (status, Json(NodeInvalid::new(self.0.message))).into_response()
        } else {
            (
                status,
                Json(ErrorBody {
                    error: self.0.message,
                }),
            )
                .into_response()
        }
    }
}

type Reply<T> = Result<Json<T>, OsqueryError>;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(paths::ENROLL, post(enroll))
        .route(paths::CONFIG, post(config))
        .route(paths::LOG, post(log))
        .route(paths::DISTRIBUTED_READ, post(read))
        .route(paths::DISTRIBUTED_WRITE, post(write))
        .route(paths::CARVE_INIT, post(carve_init))
        .route(paths::CARVE_BLOCK, post(carve_block))
}

/// Reads, inflates and parses a request body within the osquery limits.
async fn parse<T: DeserializeOwned>(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, OsqueryError> {
    let limit = app.service.osquery_settings().max_body_bytes;
    let raw = read_body(body, limit, app.body_timeout).await?;
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let bytes = osquery_tls::body::decode(&raw, encoding, limit).map_err(|e| {
        let code = match e {
            osquery_tls::body::BodyError::TooLarge { .. } => ErrorCode::BodyTooLarge,
            _ => ErrorCode::InvalidOsqueryRequest,
        };
        ApiError::new(code, e.to_string())
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidOsqueryRequest,
            format!("invalid body: {e}"),
        )
        .into()
    })
}

async fn enroll(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::enroll::EnrollResponse> {
    let req = parse(&app, &headers, body).await?;
    let source = crate::service::source_of(ip);
    Ok(Json(app.service.osquery_enroll(req, &source).await?))
}

async fn config(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::config::Config> {
    let req = parse(&app, &headers, body).await?;
    Ok(Json(app.service.osquery_config(req).await?))
}

async fn log(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::Empty> {
    let req = parse(&app, &headers, body).await?;
    Ok(Json(app.service.osquery_log(req).await?))
}

async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::distributed::ReadResponse> {
    let req = parse(&app, &headers, body).await?;
    Ok(Json(app.service.osquery_read(req).await?))
}

async fn write(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::Empty> {
    let req = parse(&app, &headers, body).await?;
    Ok(Json(app.service.osquery_write(req).await?))
}

async fn carve_init(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::carve::InitResponse> {
    let req = parse(&app, &headers, body).await?;
    Ok(Json(app.service.osquery_carve_init(req).await?))
}

async fn carve_block(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::carve::BlockResponse> {
    let req = parse(&app, &headers, body).await?;
    Ok(Json(app.service.osquery_carve_block(req).await?))
}
