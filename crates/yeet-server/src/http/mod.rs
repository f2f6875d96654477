//! HTTP: axum routes. Handlers parse input, call one service function and map its result.

mod auth;
mod cache;
pub mod error;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router, middleware};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use yeet_proto::api::{
    Activation, ActivationLog, ActivationReport, ApproveRequest, CheckinRequest, CheckinResponse,
    CreateReleaseRequest, HostInfo, PendingRegistration, RegisterRequest, RegisterResponse,
    RejectRequest, Release, RenameRequest, WhoAmI, paths,
};

use crate::service::{Principal, Service};
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub max_body_bytes: usize,
    /// Largest NAR upload to the embedded cache.
    pub max_upload_bytes: u64,
    /// How long a body may take to arrive (for uploads: how long it may stall).
    pub body_timeout: std::time::Duration,
}

/// `Json<T>` whose rejections are yeet's JSON errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not_json",
                "send the body as Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                e.body_text(),
            )),
        }
    }
}

/// `Query<T>` whose rejections are yeet's JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(paths::REGISTER, post(register))
        .route(paths::CHECKIN, post(checkin))
        .route(paths::REPORT, post(report))
        .route(&paths::host_activations("{name}"), get(list_activations))
        .route(&paths::host_log("{name}"), get(latest_log))
        .route(paths::WHOAMI, get(whoami))
        .route(paths::REGISTRATIONS, get(list_pending))
        .route(paths::APPROVE, post(approve))
        .route(paths::REJECT, post(reject))
        .route(paths::HOSTS, get(list_hosts))
        .route(&paths::host("{name}"), get(show_host))
        .route(&paths::host("{name}"), delete(remove_host))
        .route(&paths::host_rename("{name}"), post(rename_host))
        .route(paths::RELEASES, get(list_releases).post(create_release))
        .route(paths::ROLLBACK, post(rollback))
        .route(paths::CACHE_GC, post(cache_gc))
        .route(&paths::release("{id}"), get(show_release))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let cache = match state.service.embedded_cache() {
        Ok(c) => cache::routes(state.clone(), c),
        Err(_) => Router::new(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .merge(cache)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_endpoint",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method",
            )
        })
        .with_state(state)
}

async fn register(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    auth::ClientIp(client): auth::ClientIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    Ok(Json(app.service.register(&p, req, client).await?))
}

async fn checkin(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<CheckinRequest>,
) -> ApiResult<CheckinResponse> {
    Ok(Json(app.service.checkin(&p, req).await?))
}

async fn whoami(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<WhoAmI> {
    Ok(Json(app.service.whoami(&p)?))
}

async fn list_pending(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Vec<PendingRegistration>> {
    Ok(Json(app.service.list_pending(&p).await?))
}

async fn approve(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<ApproveRequest>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.approve(&p, req).await?))
}

async fn reject(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<RejectRequest>,
) -> ApiResult<serde_json::Value> {
    app.service.reject(&p, &req.key_id).await?;
    Ok(Json(serde_json::json!({})))
}

async fn list_hosts(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Vec<HostInfo>> {
    Ok(Json(app.service.list_hosts(&p).await?))
}

async fn show_host(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.show_host(&p, &name).await?))
}

async fn rename_host(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RenameRequest>,
) -> ApiResult<HostInfo> {
    Ok(Json(
        app.service.rename_host(&p, &name, &req.new_name).await?,
    ))
}

async fn remove_host(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_host(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn report(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<ActivationReport>,
) -> ApiResult<Activation> {
    Ok(Json(app.service.report_activation(&p, req).await?))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn list_activations(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> ApiResult<Vec<Activation>> {
    Ok(Json(
        app.service.list_activations(&p, &name, q.limit).await?,
    ))
}

async fn latest_log(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<ActivationLog> {
    Ok(Json(app.service.latest_log(&p, &name).await?))
}

#[derive(Deserialize)]
struct ReleaseQuery {
    host: Option<String>,
    limit: Option<i64>,
}

async fn list_releases(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ReleaseQuery>,
) -> ApiResult<Vec<Release>> {
    Ok(Json(
        app.service
            .list_releases(&p, q.host.as_deref(), q.limit)
            .await?,
    ))
}

async fn create_release(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<CreateReleaseRequest>,
) -> ApiResult<Release> {
    Ok(Json(app.service.create_release(&p, req).await?))
}

async fn show_release(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult<Release> {
    Ok(Json(app.service.show_release(&p, id).await?))
}

async fn rollback(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<yeet_proto::api::RollbackRequest>,
) -> ApiResult<Release> {
    Ok(Json(app.service.rollback(&p, req).await?))
}

async fn cache_gc(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(req): ApiJson<yeet_proto::api::CacheGcRequest>,
) -> ApiResult<yeet_proto::api::CacheGcReport> {
    Ok(Json(app.service.cache_gc(&p, req).await?))
}
