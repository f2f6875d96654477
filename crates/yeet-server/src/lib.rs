//! yeet-server as a library: configuration, storage, the domain service and the HTTP API,
//! plus `serve`, which the binary and the tests both run.

mod audit_file;
pub mod config;
pub mod http;
pub mod listener;
pub mod service;
pub mod shares;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

use config::Config;
use service::Service;
use store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot create state directory {0}: {1}")]
    StateDir(std::path::PathBuf, std::io::Error),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("cannot load TLS certificate/key: {0}")]
    Tls(String),
    #[error("{0}")]
    SecretsKey(#[from] service::secrets::SecretKeyError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Creates the state directory (0700: it holds the database) and opens the store.
pub async fn open_store(config: &Config) -> Result<Store, ServeError> {
    if config.database.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| ServeError::StateDir(config.state_dir.clone(), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| ServeError::StateDir(config.state_dir.clone(), e))?;
        }
    }
    Ok(Store::open(&config.database, config.database_max_connections).await?)
}

/// On PostgreSQL, follows other replicas' events (releases, key changes) so that this
/// process's caches and long-polls stay current. `None` on SQLite.
pub async fn spawn_event_listener(
    service: Arc<Service>,
) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
    let Some(mut stream) = service.store().subscribe_events().await? else {
        return Ok(None);
    };
    Ok(Some(tokio::spawn(async move {
        loop {
            let applied = match stream.next().await {
                Ok(event) => service.handle_event(event.as_deref()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
                tracing::warn!(error = %e, "replica event handling failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    })))
}

/// Writes batched last-seen times every `every`, and drops stale nonces once a minute.
/// Also says so in the log when a database writer connection has been out of the pool at
/// every tick for `WRITER_HELD_WARNING`: something holds it.
fn spawn_flusher(
    service: Arc<Service>,
    every: Duration,
    audit_retention_days: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut last_expiry = std::time::Instant::now();
        let mut writer_held_since: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            if service.store().writer_is_idle() {
                writer_held_since = None;
            } else {
                let since = *writer_held_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= WRITER_HELD_WARNING {
                    tracing::warn!(
                        held_secs = since.elapsed().as_secs(),
                        pools = service.store().pool_state(),
                        "a database writer connection has not been back in its pool for a while; writes may wait, then be answered busy"
                    );
                    writer_held_since = Some(std::time::Instant::now());
                }
            }
            if let Err(e) = service.flush_last_seen().await {
                tracing::warn!(error = %e, pools = service.store().pool_state(), "could not write last-seen times; will retry");
            }
            if let Err(e) = service.flush_node_last_seen().await {
                tracing::warn!(error = %e, "could not write osquery nodes' last-seen times");
            }
            if last_expiry.elapsed() >= Duration::from_secs(60) {
                if let Err(e) = service.expire_osquery_logs().await {
                    tracing::warn!(error = %e, pools = service.store().pool_state(), "could not drop expired osquery logs; will retry");
                }
                last_expiry = std::time::Instant::now();
                if let Err(e) = service.expire_nonces().await {
                    tracing::warn!(error = %e, "could not expire old nonces; will retry");
                }
                if audit_retention_days > 0 {
                    match service.expire_audit_events(audit_retention_days).await {
                        Ok(0) => {}
                        Ok(dropped) => {
                            tracing::info!(
                                dropped,
                                days = audit_retention_days,
                                "old audit events dropped, with a checkpoint"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not drop old audit events; will retry");
                        }
                    }
                }
            }
        }
    })
}

/// Drives the rollouts: judges their gates every tick, when woken (a rollout started, a
/// host reported), and at the end of a bake, but never twice within `DRIVER_MIN_SPACING`.
/// Every replica runs one; the database makes each step once (see `service::rollouts`).
pub fn spawn_rollout_driver(service: Arc<Service>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = tokio::time::Instant::now();
            let next_bake_end = match service.drive_rollouts().await {
                Ok(end) => end,
                Err(e) => {
                    tracing::warn!(error = %e, "could not drive rollouts; will retry");
                    None
                }
            };
            service.rollout_wakeup(next_bake_end).await;
            tokio::time::sleep_until(started + service::DRIVER_MIN_SPACING).await;
        }
    })
}

/// How long a database writer connection may stay out of its pool before the log says so.
const WRITER_HELD_WARNING: Duration = Duration::from_secs(30);

/// Runs the server until `shutdown` resolves, then drains requests and flushes state.
/// `on_listening` receives the bound address (useful with port 0).
pub async fn serve(
    mut config: Config,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Bound first: a server on loopback without public_urls answers to the port it got.
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| ServeError::Bind(config.listen.clone(), e))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    if config.service.public_origins.is_empty() {
        config.service.public_origins = config::loopback_origins(addr, config.tls.is_some());
    }
    tracing::info!(origins = ?config.service.public_origins, "requests signed for these origins are accepted");
    let store = open_store(&config).await?;
    let (key_path, may_create) = service::secrets::SecretKeeper::source(&config.secrets_key);
    let keeper = service::secrets::SecretKeeper::load(&key_path, may_create, &store).await?;
    tracing::info!(recipient = keeper.recipient(), key = %key_path.display(), "secrets key loaded");
    let mut service = Service::new(store, config.service.clone())
        .await?
        .with_secrets(keeper);
    if config.embedded_cache {
        let cache = service::cache::EmbeddedCache::open(&config.state_dir)
            .map_err(|e| ServeError::StateDir(config.state_dir.join("cache"), e))?;
        service = service.with_embedded_cache(cache);
    }
    let service = Arc::new(service);
    service
        .apply_declared(&config.rollout_policies, &config.maintenance_windows)
        .await?;
    let app = http::router(http::AppState {
        service: service.clone(),
        max_body_bytes: config.max_body_bytes,
        max_upload_bytes: config.max_upload_bytes,
        body_timeout: config.body_timeout,
    })
    .layer(tower_http::trace::TraceLayer::new_for_http());

    let flusher = spawn_flusher(
        service.clone(),
        config.last_seen_flush,
        config.audit_retention_days,
    );
    let audit_file = config
        .audit_log_file
        .clone()
        .map(|path| audit_file::spawn(service.clone(), path, Duration::from_secs(1)));
    let events = spawn_event_listener(service.clone()).await?;
    let rollout_driver = spawn_rollout_driver(service.clone());
    // Held check-ins must answer before a graceful shutdown can finish.
    let shutdown = {
        let service = service.clone();
        async move {
            shutdown.await;
            service.begin_shutdown();
        }
    };

    let tls = match &config.tls {
        Some((cert, key)) => Some(listener::tls_acceptor(cert, key).map_err(ServeError::Tls)?),
        None => None,
    };
    let limits = listener::Limits {
        max_connections: listener::affordable_connections(config.max_connections),
        max_connections_per_network: config.max_connections_per_network,
        header_timeout: config.header_timeout,
    };
    tracing::info!(
        max_connections = limits.max_connections,
        per_network = limits.max_connections_per_network,
        "accepting connections"
    );
    on_listening(addr);
    listener::serve(
        tokio::net::TcpListener::from_std(listener)?,
        tls,
        app,
        limits,
        shutdown,
    )
    .await?;
    flusher.abort();
    rollout_driver.abort();
    if let Some(audit_file) = audit_file {
        audit_file.abort();
    }
    if let Some(events) = events {
        events.abort();
    }
    if let Err(e) = service.flush_last_seen().await {
        tracing::warn!(error = %e, "could not write last-seen times at shutdown");
    }
    service.store().close().await;
    Ok(())
}
