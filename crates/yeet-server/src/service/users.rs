//! Operators. Users are created only offline, on the server host (`yeet-server admin add`):
//! there is no trust-on-first-use over the network.

use yeet_proto::ErrorCode;
use yeet_proto::PublicIdentity;
use yeet_proto::api::{Role, WhoAmI};
use yeet_proto::names::validate_host_name;

use super::{Principal, Result, Service, ServiceError, now};
use crate::store::{Store, StoreError, UserRow};

/// Adds a user directly in the store (used by the offline admin command).
pub async fn add_user(
    store: &Store,
    name: &str,
    public_key_line: &str,
    role: Role,
) -> Result<UserRow> {
    // User names follow the host-name rules: short, lower-case, printable in tables.
    validate_host_name(name).map_err(|_| {
        ServiceError::refused(
            ErrorCode::InvalidName,
            format!("invalid user name {name:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.'"),
        )
    })?;
    let public = PublicIdentity::from_openssh(public_key_line)
        .map_err(|e| ServiceError::refused(ErrorCode::InvalidKey, e.to_string()))?;
    if store.host_by_key(public.key_id()).await?.is_some() {
        return Err(ServiceError::refused(
            ErrorCode::KeyInUse,
            "this key belongs to a host; operators need their own key",
        ));
    }
    match store
        .insert_user(name, public.key_id(), &public.to_openssh(), role, now())
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

impl Service {
    pub fn whoami(&self, principal: &Principal) -> Result<WhoAmI> {
        match principal {
            Principal::User { name, role, key_id } => Ok(WhoAmI {
                name: name.clone(),
                role: *role,
                key_id: key_id.clone(),
            }),
            _ => Err(ServiceError::refused(
                ErrorCode::Forbidden,
                "this endpoint is for operators",
            )),
        }
    }
}
