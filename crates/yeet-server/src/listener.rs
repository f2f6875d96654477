//! Accepting only the connections the server can afford. `axum::serve` accepts without
//! limit and waits forever for request headers, so a few thousand idle sockets exhaust the
//! file table and lock every host out. Here:
//! - a global connection cap, kept under the process's file limit (raised to its hard
//!   limit at startup), and a per-network share of it (an IPv4 address or an IPv6 /64), so
//!   one source cannot take every slot;
//! - a deadline for the TLS handshake and for each request's headers;
//! - connections over a cap are closed at once rather than left to queue;
//! - graceful shutdown: no new connections, running requests finish.
//!
//! Request bodies have their own deadlines where they are read (`http::auth`, uploads).

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::shares::Shares;

/// What the listener allows.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_network: usize,
    /// Time allowed for a TLS handshake, and for each request's headers to arrive.
    pub header_timeout: Duration,
}

/// File descriptors kept back for the database, the cache files and logs.
const RESERVED_FILES: u64 = 256;

/// Raises the soft file limit to the hard one and returns the connection cap it allows:
/// `wanted`, or less when the limit cannot fit that many sockets.
pub fn affordable_connections(wanted: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = limit.saturating_sub(RESERVED_FILES).max(16);
    if (wanted as u64) > room {
        tracing::warn!(
            wanted,
            file_limit = limit,
            "the file limit allows fewer connections than max_connections; raise LimitNOFILE"
        );
    }
    wanted.min(room as usize)
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves,
/// then waits for running requests to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Connections, overall and per network (an IPv4 address or an IPv6 /64).
    let slots = Shares::new(limits.max_connections, limits.max_connections_per_network);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of files or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let network = crate::service::source_of(Some(peer.ip()));
        let Ok(slot) = slots.take(&network) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "connection cap reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let (http, watcher) = (http.clone(), graceful.watcher());
        // Plain and TLS connections are separate tasks: one task holding either would be
        // laid out for the larger TLS stream, and plain held long-polls would carry it.
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    log_end(watcher.watch(conn).await, peer);
                });
            }
            Some(acceptor) => {
                let handshake = limits.header_timeout;
                tokio::spawn(async move {
                    let _slot = slot;
                    // Failed or too slow: nothing to serve.
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake, acceptor.accept(stream)).await
                    {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        log_end(watcher.watch(conn).await, peer);
                    }
                });
            }
        }
    }
    drop(listener);
    // Running requests get a while to finish; held long-polls answer at shutdown.
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10 s of shutdown");
    }
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>, peer: std::net::SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Loads a PEM certificate chain and key into a TLS acceptor (ring provider only).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
