//! `/osquery/*`: the osquery TLS remote API that osqueryd's tls plugins call. These requests
//! are not signed (osqueryd cannot sign); the node key in the body is their credential.
//!
//! Answers follow what osqueryd does with them (see the `osquery-tls` crate): it ignores the
//! status code and reads the body, so every refusal is JSON. `{"node_invalid": true}` goes
//! only with an unknown node key or a wrong enroll secret, since it makes osqueryd drop its
//! key; every other refusal is `{"error": ...}`, which makes it retry and keep its logs.
//!
//! Anyone can reach these routes, so a body costs nothing before its sender is known:
//! 1. while osquery is off (no enroll secret) every request is refused unread;
//! 2. the body is read within its size limit and time, compressed as sent;
//! 3. with one of a few parse turns held, the credential (node key, enroll secret or carve
//!    session) is found by streaming through the body without keeping it, and checked;
//! 4. only then is the body inflated (within its limit) and parsed, into types that borrow
//!    its text instead of building a tree of JSON values.
//!
//! Enroll, config, distributed read and carve start bodies are small, and are limited to
//! [`SMALL_BODY_BYTES`]; logs, distributed writes and carve blocks to `max_body_bytes`.

use axum::Json;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use tokio::sync::SemaphorePermit;

use super::AppState;
use super::auth::{ClientIp, read_body};
use super::error::ApiError;
use crate::service::ServiceError;
use crate::service::osquery::Node;
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
                self.0.retry_after(),
                Json(ErrorBody {
                    error: self.0.message,
                }),
            )
                .into_response()
        }
    }
}

type Reply<T> = Result<Json<T>, OsqueryError>;

/// The largest enroll, config, distributed read or carve start body: osqueryd's are a few
/// kilobytes.
pub const SMALL_BODY_BYTES: usize = 64 << 10;

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

/// A node's body, read but not yet inflated or parsed, with the parse turn it holds.
struct NodeBody<'a> {
    raw: Bytes,
    encoding: Option<String>,
    limit: usize,
    _turn: SemaphorePermit<'a>,
}

fn body_error(e: osquery_tls::body::BodyError) -> OsqueryError {
    let code = match e {
        osquery_tls::body::BodyError::TooLarge { .. } => ErrorCode::BodyTooLarge,
        _ => ErrorCode::InvalidOsqueryRequest,
    };
    ApiError::new(code, e.to_string()).into()
}

impl<'a> NodeBody<'a> {
    /// Steps 1 and 2, and the parse turn: nothing of the body is looked at yet.
    async fn read(
        app: &'a AppState,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<NodeBody<'a>, OsqueryError> {
        app.service.osquery_check_set_up().await?;
        let raw = read_body(body, limit, app.body_timeout).await?;
        let encoding = headers
            .get(axum::http::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("invalid").to_owned());
        let turn = app.service.osquery_parse_permit().await?;
        Ok(NodeBody {
            raw,
            encoding,
            limit,
            _turn: turn,
        })
    }

    /// The string member `field`, found without keeping the rest of the body ("" when the
    /// body has none, which no credential check accepts).
    async fn credential(&self, field: &'static str) -> Result<String, OsqueryError> {
        let (raw, encoding, limit) = (self.raw.clone(), self.encoding.clone(), self.limit);
        let found = tokio::task::spawn_blocking(move || {
            osquery_tls::body::credential(&raw, encoding.as_deref(), limit, field)
        })
        .await
        .map_err(|e| ServiceError::System(format!("a body scan failed: {e}")))?;
        Ok(found.map_err(body_error)?.unwrap_or_default())
    }

    /// The body as sent: inflated within its limit (a plain body is shared, not copied).
    ///
    /// A gzip body inflates into memory mapped for it alone, which goes back to the system
    /// the moment the request is done. From the heap, the C allocator keeps such buffers
    /// once freed, in one pool per thread that inflated one: the server's memory then grew
    /// with the number of blocking threads, not with the parse turns that bound it.
    async fn inflate(&self) -> Result<Bytes, OsqueryError> {
        let (raw, encoding, limit) = (self.raw.clone(), self.encoding.clone(), self.limit);
        tokio::task::spawn_blocking(move || {
            match osquery_tls::body::encoding(encoding.as_deref()).map_err(body_error)? {
                osquery_tls::body::Encoding::Identity if raw.len() > limit => {
                    Err(body_error(osquery_tls::body::BodyError::TooLarge { limit }))
                }
                osquery_tls::body::Encoding::Identity => Ok(raw),
                osquery_tls::body::Encoding::Gzip => {
                    let mut out =
                        memmap2::MmapMut::map_anon(limit.saturating_add(1)).map_err(|e| {
                            ServiceError::System(format!("cannot map memory for a body: {e}"))
                        })?;
                    let len =
                        osquery_tls::body::inflate_into(&raw, &mut out).map_err(body_error)?;
                    let out = out.make_read_only().map_err(|e| {
                        ServiceError::System(format!("cannot map memory for a body: {e}"))
                    })?;
                    Ok(Bytes::from_owner(out).slice(..len))
                }
            }
        })
        .await
        .map_err(|e| ServiceError::System(format!("a body inflate failed: {e}")))?
    }
}

/// A whole body as the request type, which may borrow from it.
fn parse<'b, T: Deserialize<'b>>(bytes: &'b [u8]) -> Result<T, OsqueryError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidOsqueryRequest,
            format!("invalid body: {e}"),
        )
        .into()
    })
}

/// A node request: the node its key names, and the body to parse once it is known.
async fn node_request<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(Node, NodeBody<'a>), OsqueryError> {
    let body = NodeBody::read(app, headers, body, limit).await?;
    let node = app
        .service
        .osquery_node(&body.credential("node_key").await?)
        .await?;
    Ok((node, body))
}

async fn enroll(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::enroll::EnrollResponse> {
    let body = NodeBody::read(&app, &headers, body, SMALL_BODY_BYTES).await?;
    let source = crate::service::source_of(ip);
    let admitted = app
        .service
        .osquery_admit_enrollment(&body.credential("enroll_secret").await?, &source)
        .await?;
    let bytes = body.inflate().await?;
    Ok(Json(
        app.service.osquery_enroll(admitted, parse(&bytes)?).await?,
    ))
}

async fn config(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::config::Config> {
    let (node, _) = node_request(&app, &headers, body, SMALL_BODY_BYTES).await?;
    Ok(Json(app.service.osquery_config(&node).await?))
}

async fn log(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::Empty> {
    let limit = app.service.osquery_settings().max_body_bytes;
    let (node, body) = node_request(&app, &headers, body, limit).await?;
    let bytes = body.inflate().await?;
    Ok(Json(app.service.osquery_log(&node, parse(&bytes)?).await?))
}

async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::distributed::ReadResponse> {
    let (node, _) = node_request(&app, &headers, body, SMALL_BODY_BYTES).await?;
    Ok(Json(app.service.osquery_read(&node).await?))
}

async fn write(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::Empty> {
    let limit = app.service.osquery_settings().max_body_bytes;
    let (node, body) = node_request(&app, &headers, body, limit).await?;
    let bytes = body.inflate().await?;
    Ok(Json(
        app.service.osquery_write(&node, parse(&bytes)?).await?,
    ))
}

async fn carve_init(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::carve::InitResponse> {
    let (node, body) = node_request(&app, &headers, body, SMALL_BODY_BYTES).await?;
    let bytes = body.inflate().await?;
    Ok(Json(
        app.service
            .osquery_carve_init(&node, parse(&bytes)?)
            .await?,
    ))
}

async fn carve_block(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Reply<osquery_tls::carve::BlockResponse> {
    let limit = app.service.osquery_settings().max_body_bytes;
    let body = NodeBody::read(&app, &headers, body, limit).await?;
    let carve = app
        .service
        .osquery_carve_session(&body.credential("session_id").await?)
        .await?;
    let bytes = body.inflate().await?;
    Ok(Json(
        app.service
            .osquery_carve_block(carve, parse(&bytes)?)
            .await?,
    ))
}
