//! Enrollment: a host registers its key, gets a short code, and an admin approves the code.
//! The code is shown only to the host, never listed: typing it proves the admin saw the host.
//!
//! Flood resistance: one registration per key, new keys are rate-limited per client address,
//! and when the table is full the registration seen least recently is evicted. Hosts that
//! are really waiting re-register on every poll, so they stay fresh and keep their place.

use std::net::IpAddr;
use std::time::Instant;
use yeet_proto::api::{
    ApproveRequest, HostInfo, PendingRegistration, RegisterRequest, RegisterResponse, Role,
};
use yeet_proto::names::validate_host_name;

use super::auth::require_role;
use super::{Principal, Result, Service, ServiceError, lock, now};
use crate::store::{RegistrationRow, StoreError};

/// Letters and digits that cannot be mistaken for each other (no 0/O, 1/I/L, U/V).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTWXYZ23456789";
const CODE_LEN: usize = 8;

/// A token bucket for one client address.
pub(crate) struct Bucket {
    tokens: f64,
    updated: Instant,
}

fn fresh_code() -> Result<String> {
    let mut raw = [0u8; CODE_LEN];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ServiceError::System(format!("no randomness for a code: {e}")))?;
    // Modulo bias over 29 letters is below 1%, irrelevant for a code an admin types.
    Ok(raw
        .iter()
        .map(|b| CODE_ALPHABET[*b as usize % CODE_ALPHABET.len()] as char)
        .collect())
}

/// Upper-cases and drops separators, so `abcd-efgh`, `ABCD EFGH` and `ABCDEFGH` match.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Shows a code as `ABCD-EFGH`.
fn display_code(code: &str) -> String {
    match code.split_at_checked(CODE_LEN / 2) {
        Some((a, b)) => format!("{a}-{b}"),
        None => code.to_owned(),
    }
}

impl Service {
    fn take_registration_token(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client else { return true };
        let (burst, refill) = (
            self.config.registration_burst as f64,
            self.config.registration_refill.as_secs_f64().max(1e-3),
        );
        let mut buckets = lock(&self.registration_buckets);
        if buckets.len() > 100_000 {
            // Forget full buckets: they would allow a full burst anyway.
            buckets.retain(|_, b| b.tokens + b.updated.elapsed().as_secs_f64() / refill < burst);
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            updated: Instant::now(),
        });
        b.tokens = (b.tokens + b.updated.elapsed().as_secs_f64() / refill).min(burst);
        b.updated = Instant::now();
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Handles a registration. An approved key learns its host name; a pending one gets its
    /// current code, or a fresh one when the old code expired.
    pub async fn register(
        &self,
        principal: &Principal,
        req: RegisterRequest,
        client: Option<IpAddr>,
    ) -> Result<RegisterResponse> {
        let public = match principal {
            Principal::Host { name, .. } => {
                return Ok(RegisterResponse::Approved { host: name.clone() });
            }
            Principal::User { .. } => {
                return Err(ServiceError::conflict(
                    "operator_key",
                    "this key belongs to an operator; a host must register with its own key",
                ));
            }
            Principal::Registrant { public } => public,
        };
        if public.key_id()
            != yeet_proto::PublicIdentity::from_openssh(&req.public_key)
                .map(|p| p.key_id().to_owned())
                .unwrap_or_default()
        {
            return Err(ServiceError::invalid(
                "key_mismatch",
                "public_key in the body is not the key that signed the request",
            ));
        }
        // Free text from an unapproved host: keep it short and printable.
        let clip = |s: &str| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        };
        if self.store.is_rejected(public.key_id()).await? {
            return Err(ServiceError::Forbidden(
                "an admin rejected this host's key; it cannot register again".into(),
            ));
        }
        let t = now();
        let t_ms = super::now_ms();
        let existing = self.store.registration_by_key(public.key_id()).await?;
        if existing.is_none() {
            if !self.take_registration_token(client) {
                return Err(ServiceError::RateLimited(
                    "too many new registrations from this address; retry in a minute".into(),
                ));
            }
            let over = self.store.count_registrations().await? - self.config.max_pending + 1;
            if over > 0 {
                let evicted = self.store.evict_stalest_registrations(over).await?;
                tracing::warn!(
                    evicted,
                    "pending registrations at capacity; evicted the stalest"
                );
            }
        }
        let (code, expires, first_seen) = match &existing {
            Some(r) if r.code_expires_at > t => {
                (r.code.clone(), r.code_expires_at, r.first_seen_ms)
            }
            Some(r) => (
                fresh_code()?,
                t + self.config.code_ttl_secs,
                r.first_seen_ms,
            ),
            None => (fresh_code()?, t + self.config.code_ttl_secs, t_ms),
        };
        let row = RegistrationRow {
            key_id: public.key_id().to_owned(),
            public_key: public.to_openssh(),
            hostname_hint: clip(&req.hostname_hint),
            os: clip(&req.facts.os),
            arch: clip(&req.facts.arch),
            agent_version: clip(&req.facts.agent_version),
            code: code.clone(),
            code_expires_at: expires,
            first_seen_ms: first_seen,
            last_seen_ms: t_ms,
        };
        self.store.upsert_registration(&row).await?;
        Ok(RegisterResponse::Pending {
            code: display_code(&code),
            expires_at: expires,
        })
    }

    pub async fn list_pending(&self, principal: &Principal) -> Result<Vec<PendingRegistration>> {
        require_role(principal, Role::Viewer)?;
        let t = now();
        Ok(self
            .store
            .list_registrations()
            .await?
            .into_iter()
            .map(|r| PendingRegistration {
                key_id: r.key_id,
                hostname_hint: r.hostname_hint,
                facts: yeet_proto::api::Facts {
                    os: r.os,
                    arch: r.arch,
                    agent_version: r.agent_version,
                },
                first_seen: r.first_seen_ms / 1000,
                last_seen: r.last_seen_ms / 1000,
                code_expired: r.code_expires_at <= t,
            })
            .collect())
    }

    pub async fn approve(&self, principal: &Principal, req: ApproveRequest) -> Result<HostInfo> {
        let admin = require_role(principal, Role::Admin)?;
        validate_host_name(&req.name)
            .map_err(|e| ServiceError::invalid("invalid_name", e.to_string()))?;
        let code = normalize_code(&req.code);
        let reg = self.store.registration_by_code(&code).await?.ok_or_else(|| {
            ServiceError::not_found("unknown_code", format!("no pending registration has code {}; check the code that yeet-agent prints on the host", req.code))
        })?;
        if reg.code_expires_at <= now() {
            return Err(ServiceError::Expired(format!(
                "code {} has expired; yeet-agent on the host prints a fresh code at its next poll",
                req.code
            )));
        }
        if self.store.host_by_name(&req.name).await?.is_some() {
            return Err(ServiceError::conflict(
                "name_taken",
                format!(
                    "a host named {} already exists; choose another name or remove it first",
                    req.name
                ),
            ));
        }
        let host = match self
            .store
            .approve_registration(&reg.key_id, &req.name, admin, now())
            .await
        {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(ServiceError::not_found(
                    "unknown_code",
                    "the registration was approved or rejected meanwhile",
                ));
            }
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::conflict(
                    "name_taken",
                    format!("a host named {} already exists", req.name),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.announce_key_change(&host.key_id).await;
        tracing::info!(host = %host.name, key = %host.key_id, by = admin, "host approved");
        Ok(self.host_info(host).await)
    }

    pub async fn reject(&self, principal: &Principal, key_id: &str) -> Result<()> {
        let admin = require_role(principal, Role::Admin)?;
        if !self.store.reject_registration(key_id, admin, now()).await? {
            return Err(ServiceError::not_found(
                "unknown_registration",
                format!("no pending registration for key {key_id}; see `yeet pending`"),
            ));
        }
        tracing::info!(key = key_id, by = admin, "registration rejected");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_normalize_and_display() {
        assert_eq!(normalize_code(" abcd-efgh "), "ABCDEFGH");
        assert_eq!(display_code("ABCDEFGH"), "ABCD-EFGH");
        let c = fresh_code().unwrap();
        assert_eq!(c.len(), CODE_LEN);
        assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)));
        assert_eq!(normalize_code(&display_code(&c)), c);
    }
}
