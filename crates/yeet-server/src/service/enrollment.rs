//! Enrollment: a host registers its key, gets a short code, and an admin approves the code.
//! The code is shown only to the host, never listed: typing it proves the admin saw the host.
//!
//! Flood resistance:
//! - one registration per key; a pending key may re-register at most every
//!   `reregister_interval` (the agent polls every few seconds or more);
//! - new keys are rate-limited per source network (an IPv4 address, or an IPv6 /64, since
//!   one machine owns a whole /64);
//! - a full table evicts from the network holding the most pending keys (fair share), and
//!   the count, eviction and insert happen under one lock, so the cap holds under bursts;
//! - a registration's nonce is spent only once it is admitted, so throwaway keys cannot fill
//!   the replay cache.
//!
//! A host waiting alone on its network therefore keeps its row, and its code, whatever a
//! flood from elsewhere does.

use std::net::IpAddr;
use std::time::Duration;
use yeet_proto::ErrorCode;
use yeet_proto::api::{
    ApproveRequest, HostInfo, PendingRegistration, RegisterRequest, RegisterResponse, Role,
};
use yeet_proto::names::validate_host_name;
use yeet_proto::text::clean_line;

use super::auth::{Scope, require_role, require_role_in_scope};
use super::{Principal, Result, Service, ServiceError, now};
use crate::store::{RegistrationRow, StoreError};

/// Letters and digits that cannot be mistaken for each other (no 0/O, 1/I/L, U/V).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTWXYZ23456789";
const CODE_LEN: usize = 8;

/// The network a client belongs to for rate limits and fair eviction: its IPv4 address, or
/// the /64 of an IPv6 address. Unknown (in-process callers): the empty string.
pub fn source_of(client: Option<IpAddr>) -> String {
    match client.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => String::new(),
    }
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
    fn take_registration_token(&self, source: &str) -> bool {
        source.is_empty() || self.registration_buckets.take(&source.to_owned())
    }

    /// Handles a registration. An approved key learns its host name; a pending one gets its
    /// current code, or a fresh one when the old code expired.
    /// The body names the key that signed it, and no admin rejected that key.
    async fn check_registering_key(
        &self,
        public: &yeet_proto::PublicIdentity,
        req: &RegisterRequest,
    ) -> Result<()> {
        let named = yeet_proto::PublicIdentity::from_openssh(&req.public_key)
            .map(|p| p.key_id().to_owned())
            .unwrap_or_default();
        if public.key_id() != named {
            return Err(ServiceError::refused(
                ErrorCode::KeyMismatch,
                "public_key in the body is not the key that signed the request",
            ));
        }
        if self.store.is_rejected(public.key_id()).await? {
            return Err(ServiceError::refused(
                ErrorCode::Forbidden,
                "an admin rejected this host's key; it cannot register again",
            ));
        }
        Ok(())
    }

    /// Makes room for a key not seen before: one of this network's registration tokens,
    /// then, at the cap, the eviction of a pending registration from the busiest network.
    /// The returned guard admits one new key at a time.
    async fn admit_new_key(&self, source: &str) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        if !self.take_registration_token(source) {
            return Err(ServiceError::refused(
                ErrorCode::RateLimited,
                "too many new registrations from this network; retry in a minute",
            ));
        }
        let admission = self.registration_admission.lock().await;
        let mut evicted = 0;
        while self.store.count_registrations().await? >= self.config.max_pending {
            if self.store.evict_one_registration().await? == 0 {
                break;
            }
            evicted += 1;
        }
        if evicted > 0 {
            tracing::warn!(
                evicted,
                source,
                "pending registrations at capacity; evicted from the busiest network"
            );
        }
        Ok(admission)
    }

    pub async fn register(
        &self,
        principal: &Principal,
        req: RegisterRequest,
        client: Option<IpAddr>,
    ) -> Result<RegisterResponse> {
        let (public, signed) = match principal {
            Principal::Host { name, .. } => {
                return Ok(RegisterResponse::Approved { host: name.clone() });
            }
            Principal::User { .. } => {
                return Err(ServiceError::refused(
                    ErrorCode::OperatorKey,
                    "this key belongs to an operator; a host must register with its own key",
                ));
            }
            Principal::Registrant { public, signed } => (public, signed),
        };
        self.check_registering_key(public, &req).await?;
        let source = source_of(client);
        let t = now();
        let t_ms = super::now_ms();
        let existing = self.store.registration_by_key(public.key_id()).await?;
        // Held until the row is written, so that a new key's count, eviction and insert
        // cannot interleave with another's and overshoot the cap.
        let _admission = match &existing {
            Some(r)
                if t_ms.saturating_sub(r.last_seen_ms)
                    < self.config.reregister_interval.as_millis() as i64 =>
            {
                return Err(ServiceError::refused(
                    ErrorCode::RateLimited,
                    format!(
                        "this key registers too often; wait {} ms between registrations",
                        self.config.reregister_interval.as_millis()
                    ),
                ));
            }
            Some(_) => None,
            None => Some(self.admit_new_key(&source).await?),
        };
        // Admitted: only now may this registration's nonce take room in the replay cache.
        self.spend_nonce(signed).await?;
        let (code, expires, shown_before) = match &existing {
            Some(r) if r.code_expires_at > t => (r.code.clone(), r.code_expires_at, true),
            _ => (fresh_code()?, t + self.config.code_ttl_secs, false),
        };
        let first_seen = existing.as_ref().map_or(t_ms, |r| r.first_seen_ms);
        let row = RegistrationRow {
            key_id: public.key_id().to_owned(),
            public_key: public.to_openssh(),
            hostname_hint: clean_line(&req.hostname_hint, 64),
            os: clean_line(&req.facts.os, 64),
            arch: clean_line(&req.facts.arch, 64),
            agent_version: clean_line(&req.facts.agent_version, 64),
            code: code.clone(),
            code_expires_at: expires,
            first_seen_ms: first_seen,
            last_seen_ms: t_ms,
            source,
            suggested_tags: super::hosts::suggested_tags(&req.facts.suggested_tags),
        };
        self.store.upsert_registration(&row).await?;
        drop(_admission);
        // A code the host has already shown: hold until an admin approves it, the wait
        // ends, or the code expires. A new code is answered at once, to be shown.
        if shown_before && req.wait_secs > 0 {
            let hold = req.wait_secs.min(self.config.max_long_poll_secs);
            let until = Duration::from_secs(hold.min(expires.saturating_sub(t).max(0) as u64));
            if let Some(host) = self.approval_within(public.key_id(), until).await? {
                return Ok(RegisterResponse::Approved { host });
            }
        }
        Ok(RegisterResponse::Pending {
            code: display_code(&code),
            expires_at: expires,
        })
    }

    /// Waits up to `hold` for the key to be approved; its host's name once it is. Woken
    /// only for this key: by its approval (here, or on another replica through its key
    /// event), or by a newer registration of it, which this one then yields to.
    async fn approval_within(&self, key_id: &str, hold: Duration) -> Result<Option<String>> {
        let mut closing = self.closing.subscribe();
        if *closing.borrow() {
            return Ok(None);
        }
        let held = super::hosts::HeldPoll::claim(&self.held_registrations, key_id.to_owned());
        // Approved between this request's authentication and its claim: no wake-up would
        // come to say so. A wake-up after the claim is kept as a permit.
        if let Some(host) = self.store.host_by_key(key_id).await? {
            return Ok(Some(host.name));
        }
        tokio::select! {
            _ = held.released() => Ok(self.store.host_by_key(key_id).await?.map(|h| h.name)),
            _ = tokio::time::sleep(hold) => Ok(None),
            _ = closing.changed() => Ok(None),
        }
    }

    /// Wakes the registration held for `key` (every held one for `None`: events may have
    /// been missed), so that it looks whether the key was approved.
    pub(crate) fn wake_held_registrations(&self, key: Option<&str>) {
        let held = super::lock(&self.held_registrations);
        match key {
            Some(key) => held.get(key).into_iter().for_each(|n| n.notify_one()),
            None => held.values().for_each(|n| n.notify_one()),
        }
    }

    pub async fn list_pending(&self, principal: &Principal) -> Result<Vec<PendingRegistration>> {
        // Waiting machines are no host of anyone's yet: scoped users see them too, since a
        // scoped admin may approve one (into their scope).
        require_role_in_scope(principal, Role::Viewer)?;
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
                    suggested_tags: crate::store::split_tags(&r.suggested_tags),
                    ..Default::default()
                },
                first_seen: r.first_seen_ms / 1000,
                last_seen: r.last_seen_ms / 1000,
                code_expired: r.code_expires_at <= t,
            })
            .collect())
    }

    pub async fn approve(&self, principal: &Principal, req: ApproveRequest) -> Result<HostInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        validate_host_name(&req.name)
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidName, e.to_string()))?;
        let mut tags = yeet_proto::names::tag_set(&req.tags)
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidTag, e.to_string()))?;
        // A scoped admin's new host carries their tags, so that it is in their scope and
        // they cannot create hosts nobody scoped like them sees.
        if let Scope::Tags(own) = scope {
            tags.extend(own.iter().cloned());
            if tags.len() > yeet_proto::names::MAX_TAGS {
                return Err(ServiceError::refused(
                    ErrorCode::InvalidTag,
                    yeet_proto::names::InvalidTags::TooMany(tags.len()).to_string(),
                ));
            }
        }
        let code = normalize_code(&req.code);
        let reg = self.store.registration_by_code(&code).await?.ok_or_else(|| {
            ServiceError::refused(ErrorCode::UnknownCode, format!("no pending registration has code {}; check the code that yeet-agent prints on the host", req.code))
        })?;
        if reg.code_expires_at <= now() {
            return Err(ServiceError::refused(
                ErrorCode::CodeExpired,
                format!(
                    "code {} has expired; yeet-agent on the host prints a fresh code at its next poll",
                    req.code
                ),
            ));
        }
        if self.store.host_by_name(&req.name).await?.is_some() {
            return Err(ServiceError::refused(
                ErrorCode::NameTaken,
                format!(
                    "a host named {} already exists; choose another name or remove it first",
                    req.name
                ),
            ));
        }
        let audit = self.audit_entry(
            principal,
            "host.approve",
            vec![req.name.clone()],
            serde_json::json!({ "key_id": reg.key_id, "hostname_hint": reg.hostname_hint }),
        );
        let host = match self
            .store
            .approve_registration(
                &reg.key_id,
                &req.name,
                admin,
                &tags,
                self.config.accept_suggested_tags,
                &audit,
            )
            .await
        {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(ServiceError::refused(
                    ErrorCode::UnknownCode,
                    "the registration was approved or rejected meanwhile",
                ));
            }
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::refused(
                    ErrorCode::NameTaken,
                    format!("a host named {} already exists", req.name),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.announce_key_change(&host.key_id).await;
        if !host.tags.is_empty() {
            // Its tags may carry secrets granted to them.
            self.secrets_changed().await?;
        }
        tracing::info!(host = %host.name, key = %host.key_id, by = admin, "host approved");
        Ok(self.host_info(host).await)
    }

    pub async fn reject(&self, principal: &Principal, key_id: &str) -> Result<()> {
        let admin = require_role(principal, Role::Admin)?;
        let audit = self.audit_entry(
            principal,
            "host.reject",
            Vec::new(),
            serde_json::json!({ "key_id": key_id }),
        );
        if !self
            .store
            .reject_registration(key_id, admin, now(), &audit)
            .await?
        {
            return Err(ServiceError::refused(
                ErrorCode::UnknownRegistration,
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
