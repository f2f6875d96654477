//! Authentication (who signed this request) and authorization (may they do this).

use yeet_proto::ErrorCode;
use yeet_proto::api::{RegisterRequest, Role};
use yeet_proto::{AuthError, PublicIdentity, SignatureHeaders};

use super::{Result, Service, ServiceError, lock, now};

/// Cached keys are re-read after this long, so that a user removed with the offline
/// `yeet-server admin rm` (another process) or a change made through another replica
/// takes effect without a restart. Local changes evict at once.
const KEY_CACHE_SECS: i64 = 30;

/// What the HTTP layer knows of a signed request, besides its body.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a SignatureHeaders,
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User {
        name: String,
        role: Role,
        key_id: String,
        /// The user's scope: hosts carrying any of these tags. Empty: the whole fleet.
        tags: Vec<String>,
    },
    Host {
        id: i64,
        name: String,
        key_id: String,
    },
    /// An unknown key registering itself; it proved it holds the key and nothing more.
    /// Its nonce is not spent yet: `register` spends it once the registration is admitted.
    Registrant {
        public: PublicIdentity,
        signed: Box<SignatureHeaders>,
    },
}

impl Principal {
    /// The name recorded as author of changes.
    pub fn display_name(&self) -> String {
        match self {
            Principal::User { name, .. } => name.clone(),
            Principal::Host { name, .. } => format!("host:{name}"),
            Principal::Registrant { public, .. } => format!("key:{}", public.key_id()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct KnownKey {
    principal: Principal,
    public: PublicIdentity,
    loaded_at: i64,
}

impl Service {
    async fn known_key(&self, key_id: &str) -> Result<Option<KnownKey>> {
        let t = now();
        if let Some(k) = self
            .keys
            .read()
            .await
            .get(key_id)
            .filter(|k| t - k.loaded_at < KEY_CACHE_SECS)
        {
            return Ok(Some(k.clone()));
        }
        let parse = |line: &str| PublicIdentity::from_openssh(line).ok();
        let known = if let Some(h) = self.store.host_by_key(key_id).await? {
            parse(&h.public_key).map(|public| KnownKey {
                principal: Principal::Host {
                    id: h.id,
                    name: h.name,
                    key_id: h.key_id,
                },
                public,
                loaded_at: t,
            })
        } else if let Some((u, key)) = self.store.user_by_key(key_id).await? {
            parse(&key.public_key).map(|public| KnownKey {
                principal: Principal::User {
                    name: u.name,
                    role: u.role.0,
                    key_id: key.key_id,
                    tags: crate::store::split_tags(&u.tags),
                },
                public,
                loaded_at: t,
            })
        } else {
            None
        };
        let mut keys = self.keys.write().await;
        match &known {
            Some(k) => keys.insert(key_id.to_owned(), k.clone()),
            None => keys.remove(key_id),
        };
        Ok(known)
    }

    /// Drops a key from the cache after its host or user changed.
    pub(crate) async fn forget_key(&self, key_id: &str) {
        self.keys.write().await.remove(key_id);
    }

    /// Refuses requests signed for another server: the signed origin must be one of this
    /// server's public origins (`public_urls`, or its own loopback address when it listens
    /// only there). No header of the request is trusted for this: a replayer sets those.
    fn check_origin(&self, headers: &SignatureHeaders) -> Result<()> {
        if self.config.public_origins.contains(&headers.origin) {
            Ok(())
        } else {
            Err(AuthError::WrongServer(headers.origin.clone()).into())
        }
    }

    /// Who claims to have signed: a fresh timestamp and a known key, or, for a registration
    /// (`registering_body`), the unknown key the body carries.
    async fn claimed_signer(
        &self,
        headers: &SignatureHeaders,
        registering_body: Option<&[u8]>,
    ) -> Result<(Principal, PublicIdentity)> {
        headers.check_timestamp(now(), self.config.skew_secs)?;
        if let Some(k) = self.known_key(&headers.key_id).await? {
            return Ok((k.principal, k.public));
        }
        let body = registering_body.ok_or(AuthError::UnknownKey)?;
        let req: RegisterRequest =
            serde_json::from_slice(body).map_err(|_| AuthError::UnknownKey)?;
        let public =
            PublicIdentity::from_openssh(&req.public_key).map_err(|_| AuthError::UnknownKey)?;
        Ok((
            Principal::Registrant {
                public: public.clone(),
                signed: Box::new(headers.clone()),
            },
            public,
        ))
    }

    /// The whole check of a signed request: the server it names, a fresh timestamp, a known
    /// key (or, for a registration, the key its body carries), the signature over `digest`,
    /// then the nonce (only verified requests can burn nonces, and a registrant's waits
    /// until it is admitted).
    async fn verify_request(
        &self,
        request: &SignedRequest<'_>,
        digest: &str,
        registering_body: Option<&[u8]>,
    ) -> Result<Principal> {
        let headers = request.headers;
        self.check_origin(headers)?;
        let (principal, public) = self.claimed_signer(headers, registering_body).await?;
        headers.verify_digest(&public, request.method, request.path_and_query, digest)?;
        if !matches!(principal, Principal::Registrant { .. }) {
            self.spend_nonce(headers).await?;
        }
        Ok(principal)
    }

    /// Records a verified request's nonce: first in this process's cache (which refuses
    /// replays and keys over their share at once), then in the fleet's nonce log, which
    /// refuses what this process never saw (a replica's request, or one from before a
    /// restart).
    pub(crate) async fn spend_nonce(&self, headers: &SignatureHeaders) -> Result<()> {
        lock(&self.nonces).check_and_record(headers, now())?;
        match self
            .nonce_log
            .record(&headers.key_id, &headers.nonce, headers.timestamp)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::ReplayedNonce.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Authenticates a signed request. `registering` allows an unknown key whose public
    /// half is in the body (the registration request) to prove possession of it.
    pub async fn authenticate(
        &self,
        request: &SignedRequest<'_>,
        body: &[u8],
        registering: bool,
    ) -> Result<Principal> {
        let digest = yeet_proto::signing::body_digest(body);
        self.verify_request(request, &digest, registering.then_some(body))
            .await
    }

    /// Authenticates a streamed upload (`PUT`) from its headers alone, before any of its
    /// body is read: the signature covers `digest`, the body digest the client declared,
    /// which the caller then checks the body against. Only publishers and admins upload.
    pub async fn authenticate_upload(
        &self,
        request: &SignedRequest<'_>,
        digest: &str,
    ) -> Result<Principal> {
        let principal = self.verify_request(request, digest, None).await?;
        // Store paths belong to no host: a publisher scoped by tags uploads like any other.
        require_role_in_scope(&principal, Role::Publisher)?;
        Ok(principal)
    }
}

/// Allows users whose role is at least `min` and who act on the whole fleet; users scoped
/// by tags are refused (a function that serves them limits itself to their hosts and calls
/// `require_role_in_scope` instead); hosts and registrants are refused.
pub(crate) fn require_role(principal: &Principal, min: Role) -> Result<&str> {
    match require_role_in_scope(principal, min)? {
        (name, Scope::Fleet) => Ok(name),
        (_, Scope::Tags(tags)) => Err(fleet_wide_refusal(tags)),
    }
}

/// The refusal of a user scoped by `tags` where the whole fleet is acted on.
pub fn fleet_wide_refusal(tags: &[String]) -> ServiceError {
    ServiceError::refused(
        ErrorCode::Forbidden,
        format!(
            "you act on hosts tagged {} only, and this acts on the whole fleet; ask a user without tags",
            tags.join(" or ")
        ),
    )
}

/// Which hosts a user acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    Fleet,
    /// Hosts carrying at least one of these tags.
    Tags(&'a [String]),
}

impl Scope<'_> {
    /// True when a host with `host_tags` is in this scope.
    pub(crate) fn covers(self, host_tags: &[String]) -> bool {
        match self {
            Scope::Fleet => true,
            Scope::Tags(tags) => host_tags.iter().any(|t| tags.contains(t)),
        }
    }
}

/// As `require_role`, for functions that serve scoped users: the user's name and scope.
pub(crate) fn require_role_in_scope(principal: &Principal, min: Role) -> Result<(&str, Scope<'_>)> {
    match principal {
        Principal::User {
            name, role, tags, ..
        } if *role >= min => Ok((
            name,
            if tags.is_empty() {
                Scope::Fleet
            } else {
                Scope::Tags(tags)
            },
        )),
        Principal::User { role, .. } => Err(ServiceError::refused(
            ErrorCode::Forbidden,
            format!(
                "this needs the {} role; your role is {}",
                min.as_str(),
                role.as_str()
            ),
        )),
        _ => Err(ServiceError::refused(
            ErrorCode::Forbidden,
            "this endpoint is for operators; host keys cannot use it",
        )),
    }
}

/// Allows approved hosts only; returns (host id, host name).
pub(crate) fn require_host(principal: &Principal) -> Result<(i64, &str)> {
    match principal {
        Principal::Host { id, name, .. } => Ok((*id, name)),
        Principal::Registrant { .. } => Err(ServiceError::refused(
            ErrorCode::Forbidden,
            "this host is not approved yet; ask an admin to run `yeet approve NAME CODE`",
        )),
        Principal::User { .. } => Err(ServiceError::refused(
            ErrorCode::Forbidden,
            "only hosts check in; operator keys cannot",
        )),
    }
}
