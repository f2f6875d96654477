//! A blocking, signing client for the yeet API, and the key-file handling that goes with it.
//! Shared by the `yeet` CLI and `yeet-agent` so that both sign requests the same way.

mod api;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use yeet_proto::api::ErrorBody;
use yeet_proto::{ErrorCode, Identity, IdentityError, SignatureHeaders};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "cannot reach the yeet server at {url}: {reason}; is it running, and is the server URL right?"
    )]
    Unreachable { url: String, reason: String },
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "the server at {url} answered HTTP {status} with an unexpected body; is this a yeet server?"
    )]
    BadResponse { url: String, status: u16 },
    #[error("cannot read key file {path}: {source}")]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    KeyParse {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("cannot write key file {path}: {source}")]
    KeyWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("cannot read CA certificate {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error(
        "invalid server URL {0:?}: expected http://HOST[:PORT] or https://HOST[:PORT], optionally with a path"
    )]
    ServerUrl(String),
}

impl ClientError {
    /// The server's error code, for callers that react to specific refusals (`None` for
    /// other failures and for codes this client does not know).
    pub fn api_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => code.parse().ok(),
            _ => None,
        }
    }
}

/// Reads an OpenSSH ed25519 private key file.
pub fn load_identity(path: &Path) -> Result<Identity, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::KeyRead {
        path: path.to_owned(),
        source,
    })?;
    Identity::from_openssh(&text).map_err(|source| ClientError::KeyParse {
        path: path.to_owned(),
        source,
    })
}

/// Fresh random bytes.
pub fn random<const N: usize>() -> Result<[u8; N], ClientError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| ClientError::Random(e.to_string()))?;
    Ok(b)
}

/// Generates a key and writes it as `path` (0600) and `path.pub`. Refuses to overwrite.
pub fn generate_identity_file(path: &Path, comment: &str) -> Result<Identity, ClientError> {
    let identity = Identity::from_seed(&random::<32>()?);
    let private = identity
        .to_openssh(comment)
        .map_err(|source| ClientError::KeyParse {
            path: path.to_owned(),
            source,
        })?;
    let write_err = |source| ClientError::KeyWrite {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(write_err)?;
    f.write_all(private.as_bytes()).map_err(write_err)?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(
        &pub_path,
        format!("{} {comment}\n", identity.public().to_openssh()),
    )
    .map_err(|source| ClientError::KeyWrite {
        path: pub_path,
        source,
    })?;
    Ok(identity)
}

/// The longest error code and message a client keeps from a server's refusal.
const MAX_CODE_CHARS: usize = 64;
const MAX_MESSAGE_CHARS: usize = 2000;
/// How often a `busy` answer is retried, and the longest wait before each (whatever the
/// server's `Retry-After` says: a hostile server cannot park a client).
const BUSY_RETRIES: u32 = 3;
const MAX_BUSY_WAIT: Duration = Duration::from_secs(10);

/// A response, read whole.
struct Answer {
    status: u16,
    /// `Retry-After`, in whole seconds.
    retry_after: Option<Duration>,
    /// `ETag`, unquoted.
    etag: Option<String>,
    bytes: Vec<u8>,
}

/// A client bound to one server and one identity.
pub struct Client {
    base: String,
    /// The server's origin, which every request's signature names.
    origin: String,
    identity: Identity,
    agent: ureq::Agent,
}

impl Client {
    /// `ca_cert` adds a PEM CA to trust (for self-signed servers); the system roots are used otherwise.
    pub fn new(
        base_url: &str,
        identity: Identity,
        ca_cert: Option<&Path>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let origin = yeet_proto::signing::origin_of(base_url)
            .map_err(|_| ClientError::ServerUrl(base_url.to_owned()))?;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| ClientError::CaCert {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(ClientError::CaCert {
                    path: path.to_owned(),
                    reason: "no certificate in the file".into(),
                });
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Client {
            base: base_url.trim_end_matches('/').to_owned(),
            origin,
            identity,
            agent: config.build().into(),
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        self.send("GET", path_and_query, None)
    }

    fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send("DELETE", path, None)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        // Serialising our own wire types cannot fail; an empty body would be refused by the server.
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.send("POST", path, Some(bytes))
    }

    fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.send("PUT", path, Some(bytes))
    }

    /// Signs and sends raw bytes; the building block of the typed calls in `api.rs`. A
    /// `busy` server is asked again after the seconds its `Retry-After` names (at most
    /// `MAX_BUSY_WAIT` each, `BUSY_RETRIES` times), signed afresh each time.
    fn send_raw(
        &self,
        method: &str,
        path_and_query: &str,
        extra_headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let payload = body.clone().unwrap_or_default();
        let digest = yeet_proto::signing::body_digest(&payload);
        let content_type = body.is_some().then_some("application/json");
        let mut attempt = 0;
        loop {
            let answer = self.send_signed(
                method,
                path_and_query,
                &digest,
                content_type,
                extra_headers,
                payload.clone(),
            )?;
            let busy = answer.status == 503
                && serde_json::from_slice::<ErrorBody>(&answer.bytes)
                    .is_ok_and(|e| e.error.code == ErrorCode::Busy.as_str());
            if !busy || attempt == BUSY_RETRIES {
                return Ok(answer);
            }
            attempt += 1;
            std::thread::sleep(
                answer
                    .retry_after
                    .unwrap_or(MAX_BUSY_WAIT)
                    .min(MAX_BUSY_WAIT),
            );
        }
    }

    /// Signs with a precomputed body digest and sends `body` (bytes or a streamed file).
    fn send_signed(
        &self,
        method: &str,
        path_and_query: &str,
        digest: &str,
        content_type: Option<&str>,
        extra_headers: &[(&str, &str)],
        body: impl ureq::AsSendBody,
    ) -> Result<Answer, ClientError> {
        let mut resp = self.signed_response(
            method,
            path_and_query,
            digest,
            content_type,
            extra_headers,
            body,
        )?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        let status = resp.status().as_u16();
        let retry_after = header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let etag = header("etag").map(|v| v.trim_matches('"').to_owned());
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Answer {
            status,
            retry_after,
            etag,
            bytes,
        })
    }

    /// The server could not be talked to: why, in words that say what to change where the
    /// cause is known (TLS spoken to a plain-HTTP server answers with bytes that are no TLS
    /// record, which rustls calls a corrupt message).
    fn unreachable(&self, e: &ureq::Error) -> ClientError {
        let reason = e.to_string();
        let plain_http_answer =
            reason.contains("InvalidContentType") || reason.contains("corrupt message");
        let reason = if self.base.starts_with("https://") && plain_http_answer {
            format!(
                "it answered in plain HTTP, not TLS ({reason}); use {} instead, or give the server a certificate (tls_cert, tls_key)",
                self.base.replacen("https://", "http://", 1)
            )
        } else {
            reason
        };
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    /// Signs and sends a request; the response's body is not read yet.
    fn signed_response(
        &self,
        method: &str,
        path_and_query: &str,
        digest: &str,
        content_type: Option<&str>,
        extra_headers: &[(&str, &str)],
        body: impl ureq::AsSendBody,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let headers = SignatureHeaders::sign_digest(
            &self.identity,
            &self.origin,
            method,
            path_and_query,
            digest,
            yeet_proto::clock::unix_now(),
            random::<16>()?,
        );
        let unreachable = |e: ureq::Error| self.unreachable(&e);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers.to_pairs() {
            req = req.header(k, v);
        }
        // The server checks the signature against this before reading the body.
        req = req.header(yeet_proto::signing::HEADER_CONTENT_SHA256, digest);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (name, value) in extra_headers {
            req = req.header(*name, *value);
        }
        let req = req.body(body).map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        self.agent.run(req).map_err(unreachable)
    }

    /// The hosts' listing and its tag. Given the tag of the listing the caller has, the
    /// server holds the request up to `wait_secs` (at most `MAX_WATCH_SECS`) until the
    /// listing changes; `None` when it did not.
    pub fn watch_hosts(
        &self,
        seen: Option<&str>,
        wait_secs: u64,
    ) -> Result<Option<(Vec<yeet_proto::api::HostInfo>, String)>, ClientError> {
        let path = format!("{}?wait={wait_secs}", yeet_proto::api::paths::HOSTS);
        let quoted = seen.map(|tag| format!("\"{tag}\""));
        let headers: Vec<(&str, &str)> = quoted
            .iter()
            .map(|tag| ("if-none-match", tag.as_str()))
            .collect();
        let answer = self.send_raw("GET", &path, &headers, None)?;
        if answer.status == 304 {
            return Ok(None);
        }
        let hosts = self.decode(answer.status, &answer.bytes)?;
        // A server older than watches (no tag) answers at once, and one that answers the
        // very listing it was shown as new does not hold either: waiting here keeps a
        // watch loop from asking it as fast as it can.
        let tag = answer.etag.unwrap_or_default();
        if tag.is_empty() || seen == Some(tag.as_str()) {
            std::thread::sleep(Duration::from_secs(wait_secs.min(5)));
        }
        Ok(Some((hosts, tag)))
    }

    /// A signed `GET` whose body is streamed into `out` (large downloads); returns the
    /// response headers. An error status is decoded as usual.
    pub fn download(
        &self,
        path: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<ureq::http::HeaderMap, ClientError> {
        let digest = yeet_proto::signing::body_digest(&[]);
        let mut resp = self.signed_response("GET", path, &digest, None, &[], ())?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
            return self.decode::<serde_json::Value>(status, &bytes).and(Err(
                ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: format!("unexpected status {status}"),
                },
            ));
        }
        let headers = resp.headers().clone();
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, out).map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: format!("the download broke off: {e}"),
        })?;
        Ok(headers)
    }

    /// Uploads `body` with `PUT`, streamed. The caller computed the body's SHA-256 while
    /// producing it (the signature covers the digest, so it must be known before the first
    /// byte is sent).
    pub fn put_hashed(
        &self,
        path: &str,
        sha256: &[u8; 32],
        body: impl ureq::AsSendBody,
    ) -> Result<(), ClientError> {
        let digest = hex::encode(sha256);
        let answer = self.send_signed(
            "PUT",
            path,
            &digest,
            Some("application/octet-stream"),
            &[],
            body,
        )?;
        self.decode::<serde_json::Value>(answer.status, &answer.bytes)
            .map(drop)
    }

    /// An unsigned `GET` (cache reads); `Ok(None)` on 404.
    pub fn get_public(&self, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |e: ureq::Error| self.unreachable(&e);
        let mut resp = self.agent.get(&url).call().map_err(unreachable)?;
        match resp.status().as_u16() {
            200 => Ok(Some(
                resp.body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_vec()
                    .map_err(unreachable)?,
            )),
            404 => Ok(None),
            status => Err(ClientError::BadResponse { url, status }),
        }
    }

    fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let answer = self.send_raw(method, path_and_query, &[], body)?;
        self.decode(answer.status, &answer.bytes)
    }

    /// A success body as `T`, or the server's JSON error.
    fn decode<T: DeserializeOwned>(&self, status: u16, bytes: &[u8]) -> Result<T, ClientError> {
        if (200..300).contains(&status) {
            return serde_json::from_slice(bytes).map_err(|_| ClientError::BadResponse {
                url: self.base.clone(),
                status,
            });
        }
        match serde_json::from_slice::<ErrorBody>(bytes) {
            // A refusal is shown to people (the CLI's error line, the agent's log and
            // status): a hostile server's escape sequences and bidi overrides stop here,
            // and an endless message is cut.
            Ok(e) => Err(ClientError::Api {
                status,
                code: yeet_proto::text::clean_line(&e.error.code, MAX_CODE_CHARS),
                message: yeet_proto::text::clean_line(&e.error.message, MAX_MESSAGE_CHARS),
            }),
            Err(_) => Err(ClientError::BadResponse {
                url: self.base.clone(),
                status,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/id_yeet");
        let id = generate_identity_file(&path, "test").unwrap();
        assert_eq!(load_identity(&path).unwrap().public(), id.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let pub_line = std::fs::read_to_string(format!("{}.pub", path.display())).unwrap();
        assert_eq!(
            &yeet_proto::PublicIdentity::from_openssh(&pub_line).unwrap(),
            id.public()
        );
        assert!(matches!(
            generate_identity_file(&path, "again"),
            Err(ClientError::KeyWrite { .. })
        ));
    }

    #[test]
    fn key_ids_match_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let id = generate_identity_file(&path, "test").unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&path)
            .output();
        // ssh-keygen is part of openssh-client; the README's test command installs it.
        let out = out.expect("ssh-keygen (openssh-client) must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(id.public().key_id()),
            "{text} vs {}",
            id.public().key_id()
        );
        // And keys written by ssh-keygen load.
        let theirs = dir.path().join("theirs");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(ok.success());
        let loaded = load_identity(&theirs).unwrap();
        let pub_line = std::fs::read_to_string(theirs.with_extension("pub")).unwrap();
        assert_eq!(
            &yeet_proto::PublicIdentity::from_openssh(&pub_line).unwrap(),
            loaded.public()
        );
    }

    /// A server that answers every watch at once with the listing the client already has
    /// (hostile, or broken) is not asked as fast as the client can: counted over 3 s of a
    /// watch loop, a handful of requests, not thousands.
    #[test]
    fn a_server_that_never_holds_a_watch_is_not_asked_in_a_loop() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\netag: \"same\"\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
                );
            }
        });
        let client = Client::new(
            &url,
            Identity::from_seed(&[7; 32]),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            let answer = client.watch_hosts(Some("same"), 25).unwrap();
            assert_eq!(
                answer.map(|(h, tag)| (h.len(), tag)),
                Some((0, "same".into()))
            );
        }
        let asked = asked.load(std::sync::atomic::Ordering::Relaxed);
        assert!(asked <= 2, "asked {asked} times in 3 s");
    }
}
