//! Operators. The first admin is created offline, on the server host (`yeet-server admin
//! add`): there is no trust-on-first-use over the network. After that, unscoped admins
//! manage users over the API; nobody changes their own role, scope or existence, and the
//! fleet always keeps one admin who acts on all of it.

use yeet_proto::ErrorCode;
use yeet_proto::PublicIdentity;
use yeet_proto::api::{Role, UserInfo, UserKey, WhoAmI};
use yeet_proto::names::{tag_set, validate_host_name};

use super::auth::require_role;
use super::{Principal, Result, Service, ServiceError, now};
use crate::store::{
    AuditEntry, Store, StoreError, UserChange, UserKeyRow, UserRefusal, UserRow, join_tags,
    split_tags,
};

/// A public key line as an identity, refused with what is wrong.
fn parse_key(public_key_line: &str) -> Result<PublicIdentity> {
    PublicIdentity::from_openssh(public_key_line)
        .map_err(|e| ServiceError::refused(ErrorCode::InvalidKey, e.to_string()))
}

/// Tags as a user's stored scope.
fn scope(tags: &[String]) -> Result<String> {
    let set =
        tag_set(tags).map_err(|e| ServiceError::refused(ErrorCode::InvalidTag, e.to_string()))?;
    Ok(join_tags(&set))
}

/// A host's key cannot also be an operator's: the key decides who is calling.
async fn refuse_host_key(store: &Store, public: &PublicIdentity) -> Result<()> {
    if store.host_by_key(public.key_id()).await?.is_some() {
        return Err(ServiceError::refused(
            ErrorCode::KeyInUse,
            "this key belongs to a host; operators need their own key",
        ));
    }
    Ok(())
}

/// Adds a user directly in the store (the offline admin command, and the API's `add`).
pub async fn add_user(
    store: &Store,
    name: &str,
    public_key_line: &str,
    role: Role,
    tags: &[String],
    audit: &AuditEntry,
) -> Result<UserRow> {
    // User names follow the host-name rules: short, lower-case, printable in tables.
    validate_host_name(name).map_err(|_| {
        ServiceError::refused(
            ErrorCode::InvalidName,
            format!("invalid user name {name:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.'"),
        )
    })?;
    let public = parse_key(public_key_line)?;
    let scope = scope(tags)?;
    refuse_host_key(store, &public).await?;
    match store
        .insert_user(
            name,
            public.key_id(),
            &public.to_openssh(),
            role,
            &scope,
            audit,
        )
        .await
    {
        Ok(u) => Ok(u),
        Err(StoreError::Conflict(_)) => Err(ServiceError::refused(
            ErrorCode::UserExists,
            format!(
                "a user named {name} or with key {} already exists",
                public.key_id()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Applies a change to a user from the offline admin command or the API; `Ok(None)` once
/// the user is removed. The refusals say why.
pub async fn change_user(
    store: &Store,
    name: &str,
    change: &UserChange,
    audit: &AuditEntry,
) -> Result<(Vec<String>, Option<UserRow>)> {
    let outcome = match store.change_user(name, change, now(), audit).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ServiceError::refused(
                ErrorCode::KeyInUse,
                "this key already belongs to a user",
            ));
        }
        other => other?,
    };
    outcome.map_err(|refusal| match refusal {
        UserRefusal::NoSuchUser => ServiceError::refused(
            ErrorCode::UnknownUser,
            format!("no user named {name}; see `yeet user list`"),
        ),
        UserRefusal::LastUnscopedAdmin => ServiceError::refused(
            ErrorCode::LastAdmin,
            format!(
                "{name} is the last admin who acts on the whole fleet; make another user an unscoped admin first (`yeet user add NAME --public-key FILE --role admin`)"
            ),
        ),
        UserRefusal::LastKey => ServiceError::refused(
            ErrorCode::InvalidKey,
            format!("{name} has no other key; add the new key first (`yeet user add-key {name} --public-key FILE`), or remove the user"),
        ),
        UserRefusal::NoSuchKey => ServiceError::refused(
            ErrorCode::InvalidKey,
            format!("{name} has no key with this fingerprint; `yeet user show {name}` lists its keys"),
        ),
    })
}

/// The audit action and details of a change to the user `name`.
pub fn change_event(name: &str, change: &UserChange) -> (&'static str, serde_json::Value) {
    match change {
        UserChange::Role(role) => (
            "user.role",
            serde_json::json!({ "user": name, "role": role }),
        ),
        UserChange::Tags(tags) => (
            "user.tags",
            serde_json::json!({ "user": name, "tags": split_tags(tags) }),
        ),
        UserChange::AddKey { key_id, .. } => (
            "user.key.add",
            serde_json::json!({ "user": name, "key_id": key_id }),
        ),
        UserChange::RemoveKey(key_id) => (
            "user.key.remove",
            serde_json::json!({ "user": name, "key_id": key_id }),
        ),
        UserChange::Remove => ("user.remove", serde_json::json!({ "user": name })),
    }
}

/// The details of adding a user.
pub fn add_event(
    name: &str,
    public_key_line: &str,
    role: Role,
    tags: &[String],
) -> serde_json::Value {
    let key_id = PublicIdentity::from_openssh(public_key_line.trim())
        .map(|p| p.key_id().to_owned())
        .unwrap_or_default();
    serde_json::json!({ "user": name, "role": role, "tags": tags, "key_id": key_id })
}

/// A user with its keys, as the API shows it.
fn user_info(user: UserRow, keys: &[UserKeyRow]) -> UserInfo {
    UserInfo {
        keys: keys
            .iter()
            .filter(|k| k.user_id == user.id)
            .map(|k| UserKey {
                key_id: k.key_id.clone(),
                public_key: k.public_key.clone(),
                added_at: k.added_at,
            })
            .collect(),
        tags: split_tags(&user.tags),
        name: user.name,
        role: user.role.0,
        created_at: user.created_at,
    }
}

impl Service {
    pub fn whoami(&self, principal: &Principal) -> Result<WhoAmI> {
        match principal {
            Principal::User {
                name,
                role,
                key_id,
                tags,
            } => Ok(WhoAmI {
                name: name.clone(),
                role: *role,
                key_id: key_id.clone(),
                tags: tags.clone(),
            }),
            _ => Err(ServiceError::refused(
                ErrorCode::Forbidden,
                "this endpoint is for operators",
            )),
        }
    }

    /// Managing users is for admins who act on the whole fleet: a scoped admin who could
    /// create users could create an unscoped one, and so step out of their scope.
    fn require_user_manager<'p>(&self, principal: &'p Principal) -> Result<&'p str> {
        let name = require_role(principal, Role::Admin)?;
        match principal {
            Principal::User { tags, .. } if tags.is_empty() => Ok(name),
            _ => Err(ServiceError::refused(
                ErrorCode::Forbidden,
                "only an admin who acts on the whole fleet (no tags) may manage users",
            )),
        }
    }

    pub async fn list_users(&self, principal: &Principal) -> Result<Vec<UserInfo>> {
        self.require_user_manager(principal)?;
        let keys = self.store.list_user_keys().await?;
        Ok(self
            .store
            .list_users()
            .await?
            .into_iter()
            .map(|u| user_info(u, &keys))
            .collect())
    }

    pub async fn show_user(&self, principal: &Principal, name: &str) -> Result<UserInfo> {
        self.require_user_manager(principal)?;
        let user = self.store.user_by_name(name).await?.ok_or_else(|| {
            ServiceError::refused(
                ErrorCode::UnknownUser,
                format!("no user named {name}; see `yeet user list`"),
            )
        })?;
        Ok(user_info(user, &self.store.list_user_keys().await?))
    }

    pub async fn add_user(
        &self,
        principal: &Principal,
        req: &yeet_proto::api::AddUserRequest,
    ) -> Result<UserInfo> {
        let admin = self.require_user_manager(principal)?;
        let audit = self.audit_entry(
            principal,
            "user.add",
            Vec::new(),
            add_event(&req.name, &req.public_key, req.role, &req.tags),
        );
        let user = add_user(
            &self.store,
            &req.name,
            &req.public_key,
            req.role,
            &req.tags,
            &audit,
        )
        .await?;
        tracing::info!(user = %user.name, role = req.role.as_str(), by = admin, "user added");
        self.show_user(principal, &req.name).await
    }

    pub async fn set_user_role(
        &self,
        principal: &Principal,
        name: &str,
        role: Role,
    ) -> Result<UserInfo> {
        self.apply_user_change(principal, name, UserChange::Role(role))
            .await
    }

    /// Replaces a user's scope; no tags: the whole fleet.
    pub async fn set_user_tags(
        &self,
        principal: &Principal,
        name: &str,
        tags: &[String],
    ) -> Result<UserInfo> {
        let tags = scope(tags)?;
        self.apply_user_change(principal, name, UserChange::Tags(tags))
            .await
    }

    pub async fn add_user_key(
        &self,
        principal: &Principal,
        name: &str,
        public_key_line: &str,
    ) -> Result<UserInfo> {
        self.require_user_manager(principal)?;
        let public = parse_key(public_key_line)?;
        refuse_host_key(&self.store, &public).await?;
        let change = UserChange::AddKey {
            key_id: public.key_id().to_owned(),
            public_key: public.to_openssh(),
        };
        self.apply_user_change(principal, name, change).await
    }

    pub async fn remove_user_key(
        &self,
        principal: &Principal,
        name: &str,
        key_id: &str,
    ) -> Result<UserInfo> {
        self.apply_user_change(principal, name, UserChange::RemoveKey(key_id.to_owned()))
            .await
    }

    pub async fn remove_user(&self, principal: &Principal, name: &str) -> Result<()> {
        self.apply_user_change(principal, name, UserChange::Remove)
            .await
            .map(drop)
    }

    /// Applies a change to a user other than the caller (their own keys aside); answers the
    /// user as it is now (for a removal, as it was).
    async fn apply_user_change(
        &self,
        principal: &Principal,
        name: &str,
        change: UserChange,
    ) -> Result<UserInfo> {
        let admin = self.require_user_manager(principal)?;
        let before = self.show_user(principal, name).await?;
        // Adding or removing one's own key is not a change of rights; the rest is.
        let own_rights = matches!(
            change,
            UserChange::Role(_) | UserChange::Tags(_) | UserChange::Remove
        );
        if own_rights && admin == name {
            return Err(ServiceError::refused(
                ErrorCode::OwnRights,
                "you cannot change your own role, scope or account; ask another admin",
            ));
        }
        let (action, details) = change_event(name, &change);
        let audit = self.audit_entry(principal, action, Vec::new(), details);
        let (gone, user) = change_user(&self.store, name, &change, &audit).await?;
        // The keys' cached principals carry the old role and scope: drop them here, and
        // tell the other replicas.
        for key in &gone {
            self.announce_key_change(key).await;
        }
        tracing::info!(user = name, change = ?change, by = admin, "user changed");
        match user {
            Some(_) => self.show_user(principal, name).await,
            None => Ok(before),
        }
    }
}
