//! The signature middleware: reads the body (bounded), authenticates the signer, and hands
//! the handler the same bytes with the `Principal` attached. Every `/v1` route goes through it.

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use yeet_proto::SignatureHeaders;
use yeet_proto::api::paths;
use yeet_proto::signing::HEADER_NONCE;

use super::AppState;
use super::error::ApiError;
use crate::service::audit::{REQUEST, RequestOrigin};
use crate::service::{Principal, ServiceError, SignedRequest};
use yeet_proto::ErrorCode;

/// Handlers name the signer by taking a `Principal`; the signature layer put it there. A
/// handler reached without it is a route outside that layer: refused, never served.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // Taken, not cloned: the signature layer put it there for this handler alone.
        parts.extensions.remove::<Principal>().ok_or_else(|| {
            ServiceError::System(format!(
                "{} is served outside the signature layer",
                parts.uri.path()
            ))
            .into()
        })
    }
}

/// Refuses users scoped by tags on a route that serves the whole fleet (`Scoped::Refused`),
/// before its handler reads anything.
pub async fn refuse_scoped(req: Request, next: Next) -> Response {
    match req.extensions().get::<Principal>() {
        Some(Principal::User { tags, .. }) if !tags.is_empty() => {
            ApiError::from(crate::service::fleet_wide_refusal(tags)).into_response()
        }
        _ => next.run(req).await,
    }
}

/// The client address, when the server knows it (absent in in-process tests).
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

/// The client address, when the server knows it.
fn client_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Reads a body of at most `limit` bytes within `deadline`; distinguishes "too large",
/// "too slow" and "broken off".
pub async fn read_body(
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    let read = tokio::time::timeout(deadline, to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BodyTimeout,
                format!("the request body did not arrive within {deadline:?}"),
            )
        })?;
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("request body exceeds {limit} bytes; for larger requests (a release naming tens of thousands of hosts) raise max_body_bytes in the server config"),
            )
        } else {
            ApiError::new(
                ErrorCode::BodyUnreadable,
                "the request body could not be read (connection broken off?)",
            )
        }
    })
}

pub async fn authenticate(State(app): State<AppState>, req: Request, next: Next) -> Response {
    // Boxed, so that a held long-poll's middleware future keeps no room for the body read
    // and signature check it finished long ago.
    match Box::pin(authenticated(&app, req)).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Records a refused call of a route whose calls the audit log records (`Audited::Action`)
/// or that reads (`Audited::Reads`, recorded as `read` when refused: an attempt at another
/// team's host is worth knowing of), and reports a state-changing route that answered
/// success without recording its event. Runs inside the signature layer, outside the scope
/// refusal, so that refusals of both are recorded.
///
/// Only these routes carry the request's origin (address, nonce) for its events: the
/// check-ins, which record nothing, pay nothing for it while they are held.
pub async fn audit_refusals(
    State((app, action, changes_state)): State<(AppState, &'static str, bool)>,
    req: Request,
    next: Next,
) -> Response {
    let principal = req.extensions().get::<Principal>().cloned();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let origin = RequestOrigin {
        address: client_ip(req.extensions())
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        // Verified and spent by the signature layer, which this runs inside.
        nonce: req
            .headers()
            .get(HEADER_NONCE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        events: Default::default(),
    };
    REQUEST
        .scope(origin, async move {
            let response = next.run(req).await;
            let refused = response
                .extensions()
                .get::<ErrorCode>()
                .copied()
                .filter(|_| response.status().is_client_error());
            match (refused, principal) {
                (Some(code), Some(principal)) => {
                    if let Err(e) = app
                        .service
                        .record_refusal(&principal, action, code, &method, &path)
                        .await
                    {
                        tracing::warn!(error = %e, action, "could not record a refusal in the audit log");
                    }
                }
                _ if changes_state && response.status().is_success() => {
                    let recorded = crate::service::Service::events_recorded();
                    if recorded != Some(1) {
                        tracing::error!(action, ?recorded, %path, "a state-changing request did not record exactly one audit event");
                    }
                }
                _ => {}
            }
            response
        })
        .await
}

async fn authenticated(app: &AppState, req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, app.max_body_bytes, app.body_timeout).await?;
    let headers =
        SignatureHeaders::parse(|name| parts.headers.get(name).and_then(|v| v.to_str().ok()))?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let registering = parts.method == Method::POST && parts.uri.path() == paths::REGISTER;
    let request = SignedRequest {
        method: parts.method.as_str(),
        path_and_query,
        headers: &headers,
    };
    let principal = app
        .service
        .authenticate(&request, &bytes, registering)
        .await?;
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(principal);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequestParts;

    /// A handler reached outside the signature layer has no principal: it answers with
    /// yeet's JSON `internal` error, never with the handler's work or axum's plain text.
    #[tokio::test]
    async fn a_handler_outside_the_signature_layer_is_refused() {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri("/v1/hosts")
            .body(())
            .map(|r| r.into_parts())
            .unwrap_or_else(|e| panic!("{e}"));
        let refused = Principal::from_request_parts(&mut parts, &()).await;
        let Err(e) = refused else {
            panic!("a principal appeared from nowhere");
        };
        assert_eq!(e.code, yeet_proto::ErrorCode::Internal);
        assert_eq!(e.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}
