//! HTTP: axum routes. Handlers parse input, call one service function and map its result.

mod auth;
mod cache;
pub mod error;
mod osquery;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::Method;
use axum::routing::{self, MethodFilter, MethodRouter};
use axum::{Json, Router, middleware};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use yeet_proto::api::{
    Activation, ActivationLog, ActivationReport, ApproveRequest, CheckinRequest, CheckinResponse,
    CreateReleaseRequest, DetachRequest, Detachment, HostInfo, HostPolicyChange, HostsWatch, Limit,
    PendingRegistration, RegisterRequest, RegisterResponse, RejectRequest, Release, ReleaseFilter,
    RenameRequest, Role, TagHostRequest, WhoAmI, paths,
};
use yeet_proto::api::{
    AddKeyRequest, AddUserRequest, RemoveKeyRequest, SetRoleRequest, SetTagsRequest, UserInfo,
};

use yeet_proto::secrets::{
    AddSecretRequest, FetchSecretsRequest, FetchSecretsResponse, RotateSecretRequest,
    SecretHostsRequest, SecretInfo, SecretRecipient,
};

use crate::service::{Principal, Service};
use error::ApiError;
use yeet_proto::ErrorCode;
use yeet_proto::osquery as oq;
use yeet_proto::rollout::{
    NamedPolicy, Rollout, RolloutControl, RolloutPolicy, StartRolloutRequest,
};
use yeet_proto::windows::{MaintenanceWindow, NamedWindow};

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
                ErrorCode::NotJson,
                "send the body as Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::new(ErrorCode::InvalidJson, e.body_text())),
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
            .map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))
    }
}

/// `Path<T>` whose rejections are yeet's JSON errors.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.body_text()))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Who may call an endpoint. The service enforces it; this table declares it, so that the
/// authorization tests and the README's API section read it from one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any key that signs the request: a host that is not enrolled yet registers itself.
    AnyKey,
    /// An approved host, acting for itself only.
    Host,
    /// An operator with at least this role.
    Role(Role),
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Access::AnyKey => "any key",
            Access::Host => "host",
            Access::Role(role) => role.as_str(),
        }
    }
}

/// What a route does for a user scoped by tags (see `yeet user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoped {
    /// Refused, before the handler runs: the route acts on the whole fleet, or has no
    /// scope rule yet. A route is this unless its row says otherwise, so that a new
    /// route never serves scoped users by accident.
    Refused,
    /// Served, with the answer limited to (and actions allowed on) the user's hosts: a
    /// host outside the scope is answered as if it did not exist.
    TheirHosts,
    /// Served as to anyone: it tells nothing about hosts (`whoami`).
    NoHostData,
}

impl Scoped {
    pub fn describe(self) -> &'static str {
        match self {
            Scoped::Refused => "refused",
            Scoped::TheirHosts => "their hosts only",
            Scoped::NoHostData => "served",
        }
    }
}

/// What the audit log records of a route's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited {
    /// It reads only: recorded only when refused, as `read`.
    Reads,
    /// Every call records exactly one event with this action: the change's, in its
    /// transaction, or the refusal's (with its error code).
    Action(&'static str),
    /// It changes state that is deliberately not recorded, for this reason.
    Unrecorded(&'static str),
}

/// One signed `/v1` endpoint: method, path template, who may call it, what it does.
pub struct Route {
    pub method: Method,
    pub path: String,
    pub access: Access,
    /// What it does for a user scoped by tags.
    pub scoped: Scoped,
    /// What the audit log records of it; `None` for a route that may change state but has
    /// not said (a test refuses that).
    pub audited: Option<Audited>,
    pub summary: &'static str,
    handler: MethodRouter<AppState>,
}

impl Route {
    /// Marks a row as serving scoped users (see `Scoped`).
    fn scoped(mut self, scoped: Scoped) -> Route {
        self.scoped = scoped;
        self
    }

    /// Marks a row's calls as recorded in the audit log under `action`.
    fn audited(mut self, action: &'static str) -> Route {
        self.audited = Some(Audited::Action(action));
        self
    }

    /// Marks a row that changes state as deliberately not recorded, and says why.
    fn unrecorded(mut self, why: &'static str) -> Route {
        self.audited = Some(Audited::Unrecorded(why));
        self
    }
}

/// Every signed endpoint. The router is built from this table and the authorization matrix
/// test walks it, so a route cannot be added without an access level and a test entry.
/// One row per line: a table reads better than rustfmt's layout of it.
#[rustfmt::skip]
pub fn routes() -> Vec<Route> {
    use Access::{AnyKey, Host, Role as R};
    use yeet_proto::osquery::paths as oq;
    vec![
        route(Method::POST, paths::REGISTER, AnyKey, "Register this key; answers with an approval code, then (held as a long-poll once the code was shown) with the host's name once approved.", register).unrecorded("a host registering itself: pending until an admin approves (the approval is recorded); unauthenticated keys must not fill the log"),
        route(Method::POST, paths::CHECKIN, Host, "Report state; answers with what to run (long-polls).", checkin).unrecorded("check-ins: every host, every poll; what they report is the hosts' state, not an action"),
        route(Method::POST, paths::REPORT, Host, "Report how an activation ended, with its log.", report).unrecorded("activation outcomes: the host's history (`yeet log`) records them"),
        route(Method::GET, paths::WHOAMI, R(Role::Viewer), "Who the signing key belongs to.", whoami).scoped(Scoped::NoHostData),
        route(Method::GET, paths::USERS, R(Role::Admin), "Users, their roles, scopes and keys (unscoped admins only, as every user route).", list_users),
        route(Method::POST, paths::USERS, R(Role::Admin), "Add a user with a key, a role and optionally a scope (`tags`).", add_user).audited("user.add"),
        route(Method::GET, &paths::user("{name}"), R(Role::Admin), "One user.", show_user),
        route(Method::DELETE, &paths::user("{name}"), R(Role::Admin), "Remove a user (not oneself, not the last unscoped admin); its keys stop working at once.", remove_user).audited("user.remove"),
        route(Method::PUT, &paths::user_role("{name}"), R(Role::Admin), "Set a user's role (not one's own).", set_user_role).audited("user.role"),
        route(Method::PUT, &paths::user_tags("{name}"), R(Role::Admin), "Set a user's scope (`tags`; empty: the whole fleet; not one's own).", set_user_tags).audited("user.tags"),
        route(Method::POST, &paths::user_keys("{name}"), R(Role::Admin), "Add a key to a user.", add_user_key).audited("user.key.add"),
        route(Method::POST, &paths::user_keys_remove("{name}"), R(Role::Admin), "Remove one of a user's keys (`key_id`); a user keeps at least one.", remove_user_key).audited("user.key.remove"),
        route(Method::GET, paths::AUDIT, R(Role::Viewer), "The audit log, oldest first (`?host=&user=&action=&since_ms=&after=&limit=&newest=`), in pages (`next_after`): unscoped admins see every event, anyone else the events about hosts they can see.", list_audit).scoped(Scoped::TheirHosts),
        route(Method::GET, paths::REGISTRATIONS, R(Role::Viewer), "Registrations waiting for approval.", list_pending).scoped(Scoped::NoHostData),
        route(Method::POST, paths::APPROVE, R(Role::Admin), "Approve a registration by its code, and name the host (a scoped admin's host gets their tags).", approve).scoped(Scoped::TheirHosts).audited("host.approve"),
        route(Method::POST, paths::REJECT, R(Role::Admin), "Reject a registration's key for good.", reject).audited("host.reject"),
        route(Method::GET, paths::HOSTS, R(Role::Viewer), "Every host's state, with its `ETag`; `?wait=SECS` with `If-None-Match` holds the request until it changes (at most 25 s), else `304`.", list_hosts).scoped(Scoped::TheirHosts),
        route(Method::GET, &paths::host("{name}"), R(Role::Viewer), "One host's state.", show_host).scoped(Scoped::TheirHosts),
        route(Method::DELETE, &paths::host("{name}"), R(Role::Admin), "Remove a host; its key stops working at once.", remove_host).scoped(Scoped::TheirHosts).audited("host.remove"),
        route(Method::POST, &paths::host_rename("{name}"), R(Role::Admin), "Rename a host.", rename_host).scoped(Scoped::TheirHosts).audited("host.rename"),
        route(Method::POST, &paths::host_tags("{name}"), R(Role::Admin), "Add and remove a host's tags (`add`, `remove`, `accept_suggested`); answers the host.", tag_host).audited("host.tag"),
        route(Method::PUT, &paths::host_policy("{name}"), R(Role::Admin), "Set what a host may do on its own (`allow_detach`, `reboot`); fields left out are kept.", set_host_policy).scoped(Scoped::TheirHosts).audited("host.policy"),
        route(Method::POST, &paths::host_attach("{name}"), R(Role::Admin), "End a host's detachment; it returns to its desired system.", attach_host).scoped(Scoped::TheirHosts).audited("host.attach"),
        route(Method::GET, &paths::host_activations("{name}"), R(Role::Viewer), "A host's past activations, newest first (`?limit=`).", list_activations).scoped(Scoped::TheirHosts),
        route(Method::GET, &paths::host_log("{name}"), R(Role::Viewer), "A host's latest activation with its log.", latest_log).scoped(Scoped::TheirHosts),
        route(Method::GET, paths::RELEASES, R(Role::Viewer), "Releases, newest first (`?host=`, `?limit=`).", list_releases).scoped(Scoped::TheirHosts),
        route(Method::POST, paths::RELEASES, R(Role::Publisher), "Create a release: host → store path, checked in its cache.", create_release).scoped(Scoped::TheirHosts).audited("release.create"),
        route(Method::GET, &paths::release("{id}"), R(Role::Viewer), "One release.", show_release).scoped(Scoped::TheirHosts),
        route(Method::POST, paths::ROLLBACK, R(Role::Publisher), "Point hosts back at their previous systems, as a new release.", rollback).scoped(Scoped::TheirHosts).audited("release.rollback"),
        route(Method::POST, paths::RETRY, R(Role::Publisher), "Offer hosts their desired system once more, although they tried it.", retry).scoped(Scoped::TheirHosts).audited("release.retry"),
        route(Method::GET, paths::ROLLOUT_POLICIES, R(Role::Viewer), "Rollout policies: waves, bake, failure threshold, action on failure, health.", list_policies).scoped(Scoped::NoHostData),
        route(Method::PUT, &paths::rollout_policy("{name}"), R(Role::Admin), "Set a rollout policy (replacing one of that name); running rollouts keep theirs.", set_policy).audited("rollout.policy.set"),
        route(Method::DELETE, &paths::rollout_policy("{name}"), R(Role::Admin), "Remove a rollout policy.", remove_policy).audited("rollout.policy.remove"),
        route(Method::GET, paths::ROLLOUTS, R(Role::Viewer), "Rollouts, newest first (`?limit=`), each with its waves and every host's state and reason.", list_rollouts).scoped(Scoped::TheirHosts),
        route(Method::POST, paths::ROLLOUTS, R(Role::Publisher), "Roll a release's systems out again in waves, by a policy: a new release whose hosts wait for their waves.", start_rollout).scoped(Scoped::TheirHosts).audited("release.create"),
        route(Method::GET, &paths::rollout("{id}"), R(Role::Viewer), "One rollout (its id is its release's).", show_rollout).scoped(Scoped::TheirHosts),
        route(Method::POST, &paths::rollout_control("{id}", "pause"), R(Role::Publisher), "Pause a running rollout: no wave opens until it resumes.", pause_rollout).scoped(Scoped::TheirHosts).audited("rollout.pause"),
        route(Method::POST, &paths::rollout_control("{id}", "resume"), R(Role::Publisher), "Resume a paused rollout.", resume_rollout).scoped(Scoped::TheirHosts).audited("rollout.resume"),
        route(Method::POST, &paths::rollout_control("{id}", "abort"), R(Role::Publisher), "Stop a rollout for good; hosts keep what they were given.", abort_rollout).scoped(Scoped::TheirHosts).audited("rollout.abort"),
        route(Method::POST, &paths::rollout_control("{id}", "promote"), R(Role::Publisher), "Open a rollout's next wave now, skipping the rest of the current wave's gate and bake.", promote_rollout).scoped(Scoped::TheirHosts).audited("rollout.promote"),
        route(Method::GET, paths::WINDOWS, R(Role::Viewer), "Maintenance windows: the hours in which hosts carrying their tags may start an activation.", list_windows).scoped(Scoped::NoHostData),
        route(Method::PUT, &paths::window("{name}"), R(Role::Admin), "Set a maintenance window (`tags`, `days`, `from`, `to`, `tz`), replacing one of that name.", set_window).audited("window.set"),
        route(Method::DELETE, &paths::window("{name}"), R(Role::Admin), "Remove a maintenance window; switches it held go ahead.", remove_window).audited("window.remove"),
        route(Method::POST, paths::CACHE_GC, R(Role::Admin), "Garbage-collect the embedded cache.", cache_gc).audited("cache.gc"),
        route(Method::POST, paths::CACHE_MISSING, R(Role::Publisher), "Which of these store paths the embedded cache lacks, and the keys uploads must be signed by.", cache_missing).scoped(Scoped::NoHostData).unrecorded("a question (which paths the cache lacks); changes nothing"),
        route(Method::GET, paths::SECRETS_RECIPIENT, R(Role::Viewer), "The age recipient secrets are encrypted to.", secret_recipient).scoped(Scoped::NoHostData),
        route(Method::GET, paths::SECRETS, R(Role::Viewer), "Secrets' metadata: versions, grants, fetched versions, history; never content.", list_secrets).scoped(Scoped::TheirHosts),
        route(Method::POST, paths::SECRETS, R(Role::Admin), "Add a secret (age ciphertext for the server's recipient), granted to hosts.", add_secret).scoped(Scoped::TheirHosts).audited("secret.add"),
        route(Method::DELETE, &paths::secret("{name}"), R(Role::Admin), "Remove a secret; hosts delete it at their next check-in.", remove_secret).scoped(Scoped::TheirHosts).audited("secret.remove"),
        route(Method::POST, &paths::secret_rotate("{name}"), R(Role::Admin), "Store a new version of a secret; hosts fetch it without a release.", rotate_secret).scoped(Scoped::TheirHosts).audited("secret.rotate"),
        route(Method::POST, &paths::secret_grant("{name}"), R(Role::Admin), "Grant a secret to hosts, and to tags (`tags`: every host carrying one holds it while it does).", grant_secret).scoped(Scoped::TheirHosts).audited("secret.grant"),
        route(Method::POST, &paths::secret_revoke("{name}"), R(Role::Admin), "Revoke a secret from hosts, or from tags; a host still carrying a granted tag keeps it.", revoke_secret).scoped(Scoped::TheirHosts).audited("secret.revoke"),
        route(Method::POST, paths::AGENT_DETACH, Host, "Ask to run a locally chosen system; permitted by the host's policy, or refused.", detach).audited("host.detach"),
        route(Method::POST, paths::AGENT_ATTACH, Host, "End this host's detachment.", attach_self).audited("host.attach"),
        route(Method::GET, oq::NODES, R(Role::Viewer), "osquery nodes, linked to hosts or not.", osquery_nodes).scoped(Scoped::TheirHosts),
        route(Method::GET, oq::SCHEDULE, R(Role::Viewer), "Scheduled osquery queries.", osquery_schedule),
        route(Method::POST, oq::SCHEDULE, R(Role::Admin), "Schedule a query on every node, or on named hosts.", osquery_schedule_add).audited("osquery.schedule.add"),
        route(Method::DELETE, &oq::scheduled_query("{name}"), R(Role::Admin), "Remove a scheduled query.", osquery_schedule_remove).audited("osquery.schedule.remove"),
        route(Method::GET, oq::OPTIONS, R(Role::Viewer), "osqueryd options served to every node.", osquery_options),
        route(Method::PUT, &oq::option("{name}"), R(Role::Admin), "Set an osqueryd option.", osquery_option_set).audited("osquery.option.set"),
        route(Method::DELETE, &oq::option("{name}"), R(Role::Admin), "Unset an osqueryd option.", osquery_option_remove).audited("osquery.option.remove"),
        route(Method::GET, oq::LOGS, R(Role::Viewer), "Stored osquery result and status logs (`?host=&query=&kind=&since=&after=&limit=`), oldest first, in pages of at most `limit` lines and about 4 MiB; `next_after` continues.", osquery_logs).scoped(Scoped::TheirHosts),
        route(Method::POST, oq::QUERIES, R(Role::Admin), "Run SQL on nodes: a distributed query they pick up at their next read.", osquery_query_start).scoped(Scoped::TheirHosts).audited("osquery.query"),
        route(Method::GET, &oq::query("{id}"), R(Role::Admin), "A distributed query with every node's answer so far.", osquery_query_show).scoped(Scoped::TheirHosts),
        route(Method::GET, oq::CARVES, R(Role::Viewer), "File carves and their progress.", osquery_carves).scoped(Scoped::TheirHosts),
        route(Method::POST, oq::CARVES, R(Role::Admin), "Carve a file from a host.", osquery_carve_start).scoped(Scoped::TheirHosts).audited("osquery.carve"),
        route(Method::GET, &oq::carve_archive("{id}"), R(Role::Admin), "Download a complete carve's archive (`X-Yeet-Sha256` has its checksum).", osquery_carve_archive).scoped(Scoped::TheirHosts),
        route(Method::POST, paths::AGENT_SECRETS, Host, "Fetch the named secrets, re-encrypted to the request's one-time recipient.", fetch_secrets).unrecorded("hosts fetching what they were granted; the grant is recorded, and `yeet secret list` shows fetched versions"),
    ]
}

/// One row of the table; the handler answers the row's method only.
fn route<H, T>(
    method: Method,
    path: &str,
    access: Access,
    summary: &'static str,
    handler: H,
) -> Route
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let handler = match MethodFilter::try_from(method.clone()) {
        Ok(filter) => routing::on(filter, handler),
        // Only non-standard methods have no filter: such a row answers 405 to everything,
        // which the authorization matrix's success pass reports.
        Err(_) => MethodRouter::new(),
    };
    let audited = (method == Method::GET).then_some(Audited::Reads);
    Route {
        method,
        path: path.to_owned(),
        access,
        scoped: Scoped::Refused,
        audited,
        summary,
        handler,
    }
}

pub fn router(state: AppState) -> Router {
    let api = routes()
        .into_iter()
        .fold(Router::new(), |api, r| {
            let handler = match r.scoped {
                Scoped::Refused => r
                    .handler
                    .route_layer(middleware::from_fn(auth::refuse_scoped)),
                Scoped::TheirHosts | Scoped::NoHostData => r.handler,
            };
            // Outside the scope refusal, so that its refusals are recorded too.
            let recorded = match r.audited {
                Some(Audited::Action(action)) => Some((action, true)),
                Some(Audited::Reads) => Some((yeet_proto::audit::READ_REFUSED, false)),
                Some(Audited::Unrecorded(_)) | None => None,
            };
            let handler = match recorded {
                Some((action, changes_state)) => {
                    handler.route_layer(middleware::from_fn_with_state(
                        (state.clone(), action, changes_state),
                        auth::audit_refusals,
                    ))
                }
                None => handler,
            };
            api.route(&r.path, handler)
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // The signature layer has read the body within `max_body_bytes`; axum's own 2 MB
        // default would refuse large requests (a release naming 25,000 hosts) after it.
        .layer(DefaultBodyLimit::max(state.max_body_bytes));
    let cache = match state.service.embedded_cache() {
        Ok(c) => cache::routes(state.clone(), c),
        Err(_) => Router::new(),
    };
    Router::new()
        .route("/healthz", routing::get(|| async { "ok" }))
        .merge(api)
        .merge(osquery::routes())
        .merge(cache)
        .fallback(|| async { ApiError::new(ErrorCode::NoSuchEndpoint, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not accept that method",
            )
        })
        .with_state(state)
}

async fn register(
    State(app): State<AppState>,
    p: Principal,
    auth::ClientIp(client): auth::ClientIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    Ok(Json(app.service.register(&p, req, client).await?))
}

async fn checkin(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CheckinRequest>,
) -> ApiResult<CheckinResponse> {
    Ok(Json(app.service.checkin(&p, req).await?))
}

async fn list_audit(
    State(app): State<AppState>,
    p: Principal,
    ApiQuery(filter): ApiQuery<yeet_proto::audit::AuditFilter>,
) -> ApiResult<yeet_proto::audit::AuditPage> {
    Ok(Json(app.service.list_audit(&p, filter).await?))
}

async fn whoami(State(app): State<AppState>, p: Principal) -> ApiResult<WhoAmI> {
    Ok(Json(app.service.whoami(&p)?))
}

async fn list_pending(
    State(app): State<AppState>,
    p: Principal,
) -> ApiResult<Vec<PendingRegistration>> {
    Ok(Json(app.service.list_pending(&p).await?))
}

async fn approve(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<ApproveRequest>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.approve(&p, req).await?))
}

async fn reject(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<RejectRequest>,
) -> ApiResult<serde_json::Value> {
    app.service.reject(&p, &req.key_id).await?;
    Ok(Json(serde_json::json!({})))
}

/// The hosts' listing with its `ETag`; with `?wait=` and `If-None-Match`, a watch: held
/// until the listing differs from the one the client has, then the new one, or `304`.
async fn list_hosts(
    State(app): State<AppState>,
    p: Principal,
    ApiQuery(watch): ApiQuery<HostsWatch>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let seen = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"'));
    let wait = watch.wait.unwrap_or(0);
    let etag = |tag: &str| axum::http::HeaderValue::from_str(&format!("\"{tag}\"")).ok();
    match app.service.watch_hosts(&p, seen, wait).await? {
        Some((hosts, tag)) => {
            let mut response = Json(hosts).into_response();
            if let Some(v) = etag(&tag) {
                response.headers_mut().insert(axum::http::header::ETAG, v);
            }
            Ok(response)
        }
        None => {
            let mut response = axum::http::StatusCode::NOT_MODIFIED.into_response();
            if let Some(v) = seen.and_then(etag) {
                response.headers_mut().insert(axum::http::header::ETAG, v);
            }
            Ok(response)
        }
    }
}

async fn show_host(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.show_host(&p, &name).await?))
}

async fn rename_host(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RenameRequest>,
) -> ApiResult<HostInfo> {
    Ok(Json(
        app.service.rename_host(&p, &name, &req.new_name).await?,
    ))
}

async fn list_users(State(app): State<AppState>, p: Principal) -> ApiResult<Vec<UserInfo>> {
    Ok(Json(app.service.list_users(&p).await?))
}

async fn add_user(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<AddUserRequest>,
) -> ApiResult<UserInfo> {
    Ok(Json(app.service.add_user(&p, &req).await?))
}

async fn show_user(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<UserInfo> {
    Ok(Json(app.service.show_user(&p, &name).await?))
}

async fn remove_user(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_user(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn set_user_role(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetRoleRequest>,
) -> ApiResult<UserInfo> {
    Ok(Json(app.service.set_user_role(&p, &name, req.role).await?))
}

async fn set_user_tags(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetTagsRequest>,
) -> ApiResult<UserInfo> {
    Ok(Json(app.service.set_user_tags(&p, &name, &req.tags).await?))
}

async fn add_user_key(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AddKeyRequest>,
) -> ApiResult<UserInfo> {
    Ok(Json(
        app.service.add_user_key(&p, &name, &req.public_key).await?,
    ))
}

async fn remove_user_key(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RemoveKeyRequest>,
) -> ApiResult<UserInfo> {
    Ok(Json(
        app.service.remove_user_key(&p, &name, &req.key_id).await?,
    ))
}

async fn tag_host(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<TagHostRequest>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.tag_host(&p, &name, &req).await?))
}

async fn remove_host(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_host(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn report(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<ActivationReport>,
) -> ApiResult<Activation> {
    Ok(Json(app.service.report_activation(&p, req).await?))
}

async fn list_activations(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<Limit>,
) -> ApiResult<Vec<Activation>> {
    Ok(Json(
        app.service.list_activations(&p, &name, q.limit).await?,
    ))
}

async fn latest_log(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<ActivationLog> {
    Ok(Json(app.service.latest_log(&p, &name).await?))
}

async fn list_releases(
    State(app): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<ReleaseFilter>,
) -> ApiResult<Vec<Release>> {
    Ok(Json(
        app.service
            .list_releases(&p, q.host.as_deref(), q.limit)
            .await?,
    ))
}

async fn create_release(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateReleaseRequest>,
) -> ApiResult<Release> {
    Ok(Json(app.service.create_release(&p, req).await?))
}

async fn list_windows(State(app): State<AppState>, p: Principal) -> ApiResult<Vec<NamedWindow>> {
    Ok(Json(app.service.list_windows(&p).await?))
}

async fn set_window(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MaintenanceWindow>,
) -> ApiResult<NamedWindow> {
    Ok(Json(app.service.set_window(&p, &name, req).await?))
}

async fn remove_window(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_window(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn list_policies(State(app): State<AppState>, p: Principal) -> ApiResult<Vec<NamedPolicy>> {
    Ok(Json(app.service.list_policies(&p).await?))
}

async fn set_policy(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RolloutPolicy>,
) -> ApiResult<NamedPolicy> {
    Ok(Json(app.service.set_policy(&p, &name, req).await?))
}

async fn remove_policy(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_policy(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn list_rollouts(
    State(app): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Limit>,
) -> ApiResult<Vec<Rollout>> {
    Ok(Json(app.service.list_rollouts(&p, q.limit).await?))
}

async fn start_rollout(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<StartRolloutRequest>,
) -> ApiResult<Release> {
    Ok(Json(app.service.start_rollout(&p, req).await?))
}

async fn show_rollout(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Rollout> {
    Ok(Json(app.service.show_rollout(&p, id).await?))
}

async fn pause_rollout(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Rollout> {
    Ok(Json(
        app.service
            .control_rollout(&p, id, RolloutControl::Pause)
            .await?,
    ))
}

async fn resume_rollout(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Rollout> {
    Ok(Json(
        app.service
            .control_rollout(&p, id, RolloutControl::Resume)
            .await?,
    ))
}

async fn abort_rollout(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Rollout> {
    Ok(Json(
        app.service
            .control_rollout(&p, id, RolloutControl::Abort)
            .await?,
    ))
}

async fn promote_rollout(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Rollout> {
    Ok(Json(
        app.service
            .control_rollout(&p, id, RolloutControl::Promote)
            .await?,
    ))
}

async fn show_release(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Release> {
    Ok(Json(app.service.show_release(&p, id).await?))
}

async fn rollback(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<yeet_proto::api::RollbackRequest>,
) -> ApiResult<Release> {
    Ok(Json(app.service.rollback(&p, req).await?))
}

async fn retry(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<yeet_proto::api::RetryRequest>,
) -> ApiResult<yeet_proto::api::RetryResponse> {
    Ok(Json(app.service.retry(&p, req).await?))
}

async fn cache_missing(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<yeet_proto::api::CacheMissingRequest>,
) -> ApiResult<yeet_proto::api::CacheMissingResponse> {
    Ok(Json(app.service.cache_missing(&p, req).await?))
}

async fn cache_gc(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<yeet_proto::api::CacheGcRequest>,
) -> ApiResult<yeet_proto::api::CacheGcReport> {
    Ok(Json(app.service.cache_gc(&p, req).await?))
}

async fn secret_recipient(State(app): State<AppState>, p: Principal) -> ApiResult<SecretRecipient> {
    Ok(Json(app.service.secret_recipient(&p)?))
}

async fn list_secrets(State(app): State<AppState>, p: Principal) -> ApiResult<Vec<SecretInfo>> {
    Ok(Json(app.service.list_secrets(&p).await?))
}

async fn add_secret(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<AddSecretRequest>,
) -> ApiResult<SecretInfo> {
    Ok(Json(app.service.add_secret(&p, req).await?))
}

async fn remove_secret(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_secret(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn rotate_secret(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RotateSecretRequest>,
) -> ApiResult<SecretInfo> {
    Ok(Json(
        app.service
            .rotate_secret(&p, &name, &req.ciphertext)
            .await?,
    ))
}

async fn grant_secret(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SecretHostsRequest>,
) -> ApiResult<SecretInfo> {
    Ok(Json(
        app.service.set_secret_hosts(&p, &name, &req, true).await?,
    ))
}

async fn revoke_secret(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SecretHostsRequest>,
) -> ApiResult<SecretInfo> {
    Ok(Json(
        app.service.set_secret_hosts(&p, &name, &req, false).await?,
    ))
}

async fn fetch_secrets(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<FetchSecretsRequest>,
) -> ApiResult<FetchSecretsResponse> {
    Ok(Json(app.service.fetch_secrets(&p, req).await?))
}

async fn set_host_policy(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<HostPolicyChange>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.set_host_policy(&p, &name, req).await?))
}

async fn attach_host(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<HostInfo> {
    Ok(Json(app.service.attach_host(&p, &name).await?))
}

async fn detach(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<DetachRequest>,
) -> ApiResult<Detachment> {
    Ok(Json(app.service.detach(&p, req).await?))
}

async fn attach_self(State(app): State<AppState>, p: Principal) -> ApiResult<serde_json::Value> {
    app.service.attach_self(&p).await?;
    Ok(Json(serde_json::json!({})))
}

async fn osquery_nodes(
    State(app): State<AppState>,
    p: Principal,
) -> ApiResult<Vec<oq::OsqueryNode>> {
    Ok(Json(app.service.list_osquery_nodes(&p).await?))
}

async fn osquery_schedule(
    State(app): State<AppState>,
    p: Principal,
) -> ApiResult<Vec<oq::ScheduledQuery>> {
    Ok(Json(app.service.list_schedule(&p).await?))
}

async fn osquery_schedule_add(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<oq::ScheduledQuery>,
) -> ApiResult<oq::ScheduledQuery> {
    Ok(Json(app.service.add_scheduled_query(&p, req).await?))
}

async fn osquery_schedule_remove(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_scheduled_query(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn osquery_options(
    State(app): State<AppState>,
    p: Principal,
) -> ApiResult<Vec<oq::OsqueryOption>> {
    Ok(Json(app.service.list_osquery_options(&p).await?))
}

async fn osquery_option_set(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<oq::SetOption>,
) -> ApiResult<oq::OsqueryOption> {
    Ok(Json(
        app.service.set_osquery_option(&p, &name, req.value).await?,
    ))
}

async fn osquery_option_remove(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    app.service.remove_osquery_option(&p, &name).await?;
    Ok(Json(serde_json::json!({})))
}

async fn osquery_logs(
    State(app): State<AppState>,
    p: Principal,
    ApiQuery(filter): ApiQuery<oq::LogFilter>,
) -> ApiResult<oq::OsqueryLogPage> {
    Ok(Json(app.service.list_osquery_logs(&p, filter).await?))
}

async fn osquery_query_start(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<oq::StartQuery>,
) -> ApiResult<oq::Campaign> {
    Ok(Json(app.service.start_osquery_query(&p, req).await?))
}

async fn osquery_query_show(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<oq::Campaign> {
    Ok(Json(app.service.show_osquery_campaign(&p, id).await?))
}

async fn osquery_carves(
    State(app): State<AppState>,
    p: Principal,
) -> ApiResult<Vec<oq::CarveInfo>> {
    Ok(Json(app.service.list_osquery_carves(&p).await?))
}

async fn osquery_carve_start(
    State(app): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<oq::StartCarve>,
) -> ApiResult<oq::Campaign> {
    Ok(Json(app.service.start_osquery_carve(&p, req).await?))
}

/// Streams a carve's blocks in order, one database read at a time.
async fn osquery_carve_archive(
    State(app): State<AppState>,
    p: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::response::Response, ApiError> {
    let carve = app.service.carve_for_download(&p, id).await?;
    let store = app.service.store().clone();
    let blocks = futures_util::stream::unfold(0i64, move |block_id| {
        let store = store.clone();
        async move {
            if block_id >= carve.block_count {
                return None;
            }
            let block = match store.carve_block(carve.id, block_id).await {
                Ok(Some(data)) => Ok(axum::body::Bytes::from(data)),
                Ok(None) => Err(std::io::Error::other(format!(
                    "carve {} lost block {block_id}",
                    carve.id
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            Some((block, block_id + 1))
        }
    });
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(blocks));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-tar"),
    );
    if let Some(sum) = carve
        .sha256
        .as_deref()
        .and_then(|s| axum::http::HeaderValue::from_str(s).ok())
    {
        headers.insert("x-yeet-sha256", sum);
    }
    Ok(response)
}
