//! Secrets: the server's age identity, operators' changes (admins change, viewers see
//! metadata, nobody reads content), and hosts' fetches. A fetch decrypts each granted
//! secret with the server's identity and re-encrypts it at once to the recipient the host
//! made for that request; the plaintext lives in a wiped buffer for that moment only.
//! Logs and errors name secrets, never their content.

use base64::Engine;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use yeet_proto::ErrorCode;
use yeet_proto::api::{ActivationResult, Role};
use yeet_proto::secrets::{
    AddSecretRequest, DeliveredSecret, FetchSecretsRequest, FetchSecretsResponse, MAX_SECRETS,
    SecretChange, SecretGrant, SecretHostsRequest, SecretInfo, SecretRecipient,
    validate_secret_name, versions_digest,
};

use super::auth::{Scope, require_host, require_role_in_scope};
use super::{EVENT_SECRETS, Principal, Result, Service, ServiceError, now};
use crate::store::{Change, Store, StoreError};

/// The systemd credential that, when present, holds the identity.
pub const CREDENTIAL_NAME: &str = "secrets-key";
/// The digest of a host granted nothing (most hosts): computed once, not per check-in.
static NO_SECRETS_DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The changes of each secret that a listing shows.
const HISTORY_SHOWN: i64 = 20;
/// The most plaintext one fetch re-encrypts, over all its secrets.
const MAX_FETCH_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("cannot read the secrets key {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot create the secrets key {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("the secrets key {0} is invalid: {1}")]
    Invalid(PathBuf, String),
    #[error(
        "the secrets key {0} can be read by other users (mode {1:o}): run `chmod 0400 {0}` (only the server's user may read it)"
    )]
    Exposed(PathBuf, u32),
    #[error(
        "the secrets key {path} is not the fleet's: its recipient is {mine}, while the database's secrets are encrypted to {fleet}. Give every replica the same key (copy it from the first, or pass it as the systemd credential `secrets-key`)"
    )]
    NotTheFleets {
        path: PathBuf,
        mine: String,
        fleet: String,
    },
    #[error(
        "there is no secrets key at {0}, and the database already has secrets encrypted to {1}: copy the key from another replica (or pass it as the systemd credential `secrets-key`)"
    )]
    Missing(PathBuf, String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The server's age identity, and the recipient operators encrypt to.
pub struct SecretKeeper {
    identity: age::x25519::Identity,
    recipient: String,
}

impl SecretKeeper {
    /// Where the identity comes from: the systemd credential when the service has one,
    /// else `configured` (created there on first start, 0400).
    pub fn source(configured: &Path) -> (PathBuf, bool) {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let credential = Path::new(&dir).join(CREDENTIAL_NAME);
            if credential.exists() {
                return (credential, false);
            }
        }
        (configured.to_owned(), true)
    }

    /// Loads the identity (or creates it, when `may_create` and the database has no
    /// secrets yet), and checks it is the one the fleet's secrets are encrypted to.
    pub async fn load(
        path: &Path,
        may_create: bool,
        store: &Store,
    ) -> Result<SecretKeeper, SecretKeyError> {
        let fleet = store.setting(FLEET_RECIPIENT).await?;
        let identity = match std::fs::read_to_string(path) {
            Ok(text) => {
                if may_create {
                    check_private(path)?;
                }
                yeet_proto::secrets::x25519_identity(&text)
                    .map_err(|e| SecretKeyError::Invalid(path.to_owned(), e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                if let Some(fleet) = fleet.clone() {
                    return Err(SecretKeyError::Missing(path.to_owned(), fleet));
                }
                create(path)?
            }
            Err(e) => return Err(SecretKeyError::Read(path.to_owned(), e)),
        };
        let recipient = identity.to_public().to_string();
        // The first server to start records its recipient; every later one must match it.
        let fleet = match fleet {
            Some(f) => f,
            None => store.setting_or_insert(FLEET_RECIPIENT, &recipient).await?,
        };
        if fleet != recipient {
            return Err(SecretKeyError::NotTheFleets {
                path: path.to_owned(),
                mine: recipient,
                fleet,
            });
        }
        Ok(SecretKeeper {
            identity,
            recipient,
        })
    }

    pub fn recipient(&self) -> &str {
        &self.recipient
    }
}

/// The settings row holding the recipient the fleet's secrets are encrypted to.
const FLEET_RECIPIENT: &str = "secrets_recipient";

fn check_private(path: &Path) -> Result<(), SecretKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| SecretKeyError::Read(path.to_owned(), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SecretKeyError::Exposed(path.to_owned(), mode & 0o777));
    }
    Ok(())
}

/// Writes a fresh identity, 0400, in the format `age-keygen` writes.
fn create(path: &Path) -> Result<age::x25519::Identity, SecretKeyError> {
    use age::secrecy::ExposeSecret;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let identity = age::x25519::Identity::generate();
    let text = zeroize::Zeroizing::new(format!(
        "# yeet-server's secrets key: keep it (and its backups) private.\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    ));
    let failed = |e| SecretKeyError::Create(path.to_owned(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(failed)?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(failed)?;
    tracing::info!(path = %path.display(), recipient = %identity.to_public(), "created the secrets key");
    Ok(identity)
}

fn invalid_secret(message: impl Into<String>) -> ServiceError {
    ServiceError::refused(ErrorCode::InvalidSecret, message)
}

fn check_name(name: &str) -> Result<()> {
    validate_secret_name(name)
        .map_err(|e| ServiceError::refused(ErrorCode::InvalidSecretName, e.to_string()))
}

fn unknown_secret(name: &str) -> ServiceError {
    ServiceError::refused(
        ErrorCode::UnknownSecret,
        format!("no secret named {name}; see `yeet secret list`"),
    )
}

/// Host id → the digest of its granted versions, from the database.
pub(super) async fn load_digests(store: &Store) -> Result<HashMap<i64, String>, StoreError> {
    let mut per_host: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
    for (host, name, version) in store.granted_versions().await? {
        per_host.entry(host).or_default().push((name, version));
    }
    Ok(per_host
        .into_iter()
        .map(|(host, v)| {
            (
                host,
                versions_digest(v.iter().map(|(n, v)| (n.as_str(), *v))),
            )
        })
        .collect())
}

impl Service {
    fn keeper(&self) -> Result<&SecretKeeper> {
        self.secrets
            .as_ref()
            .ok_or_else(|| ServiceError::System("no secrets key was loaded".into()))
    }

    /// The digest of the versions granted to a host now.
    pub(crate) async fn secrets_digest(&self, host_id: i64) -> String {
        self.secret_digests
            .read()
            .await
            .get(&host_id)
            .cloned()
            .unwrap_or_else(|| {
                NO_SECRETS_DIGEST
                    .get_or_init(|| versions_digest([]))
                    .clone()
            })
    }

    /// Re-reads every host's digest and wakes held check-ins, here and on other replicas.
    pub(super) async fn secrets_changed(&self) -> Result<()> {
        self.reload_secret_digests().await?;
        if let Err(e) = self.store.notify(EVENT_SECRETS).await {
            tracing::warn!(error = %e, "could not notify other replicas of a secret change");
        }
        Ok(())
    }

    pub(super) async fn reload_secret_digests(&self) -> Result<(), StoreError> {
        let fresh = load_digests(&self.store).await?;
        *self.secret_digests.write().await = fresh;
        // The enroll secret may have come or gone: osquery is on exactly while it exists.
        self.forget_osquery_set_up();
        self.desired_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    pub fn secret_recipient(&self, principal: &Principal) -> Result<SecretRecipient> {
        // The server's public key: nothing about hosts.
        require_role_in_scope(principal, Role::Viewer)?;
        Ok(SecretRecipient {
            recipient: self.keeper()?.recipient.clone(),
        })
    }

    /// Checks an operator's ciphertext: base64 of an age file this server can open, of an
    /// allowed size. The plaintext is dropped (and wiped) at once.
    fn check_ciphertext(&self, base64_text: &str) -> Result<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_text.trim())
            .map_err(|_| invalid_secret("the ciphertext is not base64"))?;
        let plaintext =
            yeet_proto::secrets::open(&self.keeper()?.identity, &bytes).map_err(|e| {
                invalid_secret(format!(
                    "{e}; encrypt to this server's recipient (`yeet secret recipient`)"
                ))
            })?;
        if plaintext.is_empty() {
            return Err(invalid_secret("the secret is empty"));
        }
        Ok(bytes)
    }

    /// Host names → ids; an unknown name, or one outside the caller's scope, is refused
    /// alike.
    async fn host_ids(&self, scope: Scope<'_>, names: &[String]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            let row = self.host_in_scope(scope, name).await.map_err(|_| {
                ServiceError::refused(
                    ErrorCode::UnknownHostInRequest,
                    format!("no host named {name}; see `yeet status` for the fleet"),
                )
            })?;
            ids.push(row.id);
        }
        Ok(ids)
    }

    /// The ids of the hosts a secret is granted to.
    async fn secret_holders(&self, name: &str) -> Result<Vec<i64>> {
        Ok(self
            .store
            .list_grants()
            .await?
            .into_iter()
            .filter(|g| g.secret == name)
            .map(|g| g.host_id)
            .collect())
    }

    /// Whether any host would still hold `name` after revoking it from `host_ids` and from
    /// `tags`: a host keeps a direct grant it is not revoked from, and a grant by any tag it
    /// carries that stays granted.
    async fn held_after_revoke(
        &self,
        name: &str,
        host_ids: &[i64],
        tags: &BTreeSet<String>,
    ) -> Result<bool> {
        let kept_tags: BTreeSet<String> = self
            .store
            .list_tag_grants()
            .await?
            .into_iter()
            .filter(|g| g.secret == name && !tags.contains(&g.tag))
            .map(|g| g.tag)
            .collect();
        let carries_kept_tag: BTreeSet<i64> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| {
                crate::store::split_tags(&h.tags)
                    .iter()
                    .any(|t| kept_tags.contains(t))
            })
            .map(|h| h.id)
            .collect();
        Ok(self
            .store
            .list_grants()
            .await?
            .iter()
            .filter(|g| g.secret == name)
            .any(|g| {
                (g.via_tag.is_empty() && !host_ids.contains(&g.host_id))
                    || carries_kept_tag.contains(&g.host_id)
            }))
    }

    /// May a scoped admin change this secret? Only when it is theirs: granted to at least
    /// one host, all in their scope. One they cannot see is unknown to them; one also
    /// granted outside their scope is refused, since changing it would reach other hosts
    /// (and granting it would hand another team's secret to their own hosts).
    async fn require_own_secret(&self, scope: Scope<'_>, name: &str) -> Result<()> {
        let Some(visible) = self.host_ids_in_scope(scope).await? else {
            return Ok(());
        };
        let holders = self.secret_holders(name).await?;
        if !holders.iter().any(|h| visible.contains(h)) {
            return Err(unknown_secret(name));
        }
        if !holders.iter().all(|h| visible.contains(h)) {
            return Err(ServiceError::refused(
                ErrorCode::Forbidden,
                format!(
                    "{name} is also granted to hosts outside your scope; ask a user without tags"
                ),
            ));
        }
        Ok(())
    }

    pub async fn add_secret(
        &self,
        principal: &Principal,
        req: AddSecretRequest,
    ) -> Result<SecretInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        check_name(&req.name)?;
        if scope != Scope::Fleet && req.hosts.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::UngrantedSecret,
                "grant the secret to at least one of your hosts (--host): a secret of no host is nobody's in a scope",
            ));
        }
        let ciphertext = self.check_ciphertext(&req.ciphertext)?;
        let host_ids = self.host_ids(scope, &req.hosts).await?;
        let detail = if req.hosts.is_empty() {
            "version 1".to_owned()
        } else {
            format!("version 1, granted to {}", req.hosts.join(", "))
        };
        let audit = self.audit_entry(
            principal,
            "secret.add",
            req.hosts.clone(),
            serde_json::json!({ "secret": req.name }),
        );
        let change = Change {
            author: admin,
            action: "added",
            detail,
            at: now(),
            audit: Some(&audit),
        };
        match self
            .store
            .insert_secret(&req.name, &ciphertext, &host_ids, &change)
            .await
        {
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::refused(
                    ErrorCode::SecretExists,
                    format!(
                        "a secret named {} exists; `yeet secret rotate {}` stores a new version",
                        req.name, req.name
                    ),
                ));
            }
            other => other?,
        }
        tracing::info!(secret = %req.name, by = admin, hosts = ?req.hosts, "secret added");
        self.retry_failed_attempts(&host_ids).await?;
        self.secrets_changed().await?;
        self.secret_info(scope, &req.name).await
    }

    pub async fn rotate_secret(
        &self,
        principal: &Principal,
        name: &str,
        ciphertext: &str,
    ) -> Result<SecretInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        check_name(name)?;
        if self.store.secret_by_name(name).await?.is_none() {
            return Err(unknown_secret(name));
        }
        self.require_own_secret(scope, name).await?;
        let ciphertext = self.check_ciphertext(ciphertext)?;
        // The store names the version it wrote: concurrent rotations each record their own.
        let audit = self.audit_entry(
            principal,
            "secret.rotate",
            Vec::new(),
            serde_json::json!({ "secret": name }),
        );
        let change = Change {
            author: admin,
            action: "rotated",
            detail: String::new(),
            at: now(),
            audit: Some(&audit),
        };
        let version = self
            .store
            .rotate_secret(name, &ciphertext, &change)
            .await?
            .ok_or_else(|| unknown_secret(name))?;
        tracing::info!(secret = name, by = admin, version, "secret rotated");
        let holders = self.secret_holders(name).await?;
        self.retry_failed_attempts(&holders).await?;
        self.secrets_changed().await?;
        self.secret_info(scope, name).await
    }

    /// Grants (`grant`) or revokes a secret for hosts and tags.
    pub async fn set_secret_hosts(
        &self,
        principal: &Principal,
        name: &str,
        req: &SecretHostsRequest,
        grant: bool,
    ) -> Result<SecretInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        check_name(name)?;
        if req.hosts.is_empty() && req.tags.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::InvalidJson,
                "name at least one host or tag",
            ));
        }
        let tags = yeet_proto::names::tag_set(&req.tags)
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidTag, e.to_string()))?;
        // A scoped admin's tags are the only ones whose hosts are all in their scope.
        if let Scope::Tags(own) = scope
            && let Some(foreign) = tags.iter().find(|t| !own.contains(t))
        {
            return Err(ServiceError::refused(
                ErrorCode::Forbidden,
                format!(
                    "{foreign} is not one of your tags; you may grant to {} only",
                    own.join(", ")
                ),
            ));
        }
        self.require_own_secret(scope, name).await?;
        let host_ids = self.host_ids(scope, &req.hosts).await?;
        if !grant
            && scope != Scope::Fleet
            && !self.held_after_revoke(name, &host_ids, &tags).await?
        {
            return Err(ServiceError::refused(
                ErrorCode::UngrantedSecret,
                format!(
                    "that would leave {name} granted to no host, which in a scope is nobody's secret; remove it instead (`yeet secret rm {name}`)"
                ),
            ));
        }
        let action = if grant { "granted" } else { "revoked" };
        let tags: Vec<String> = tags.into_iter().collect();
        let mut named = req.hosts.clone();
        named.extend(tags.iter().map(|t| format!("tag {t}")));
        let audit = self.audit_entry(
            principal,
            if grant {
                "secret.grant"
            } else {
                "secret.revoke"
            },
            req.hosts.clone(),
            serde_json::json!({ "secret": name, "tags": tags }),
        );
        let change = Change {
            author: admin,
            action,
            detail: named.join(", "),
            at: now(),
            audit: Some(&audit),
        };
        let before = self.secret_holders(name).await?;
        let done = self
            .store
            .set_grants(name, &host_ids, &tags, grant, &change)
            .await?;
        if !done {
            return Err(unknown_secret(name));
        }
        tracing::info!(secret = name, by = admin, hosts = ?req.hosts, ?tags, "secret {action}");
        if grant {
            let gained: Vec<i64> = self
                .secret_holders(name)
                .await?
                .into_iter()
                .filter(|h| !before.contains(h))
                .collect();
            self.retry_failed_attempts(&gained).await?;
        }
        self.secrets_changed().await?;
        self.secret_info(scope, name).await
    }

    /// A grant or a new version may be what a host's failed attempt lacked (a failure
    /// changed nothing on the host): its desired system is offered again, once. The caller
    /// wakes the hosts (`secrets_changed`).
    async fn retry_failed_attempts(&self, host_ids: &[i64]) -> Result<()> {
        let retried = self
            .store
            .forget_attempts(host_ids, Some(&[ActivationResult::Failed]), None)
            .await?;
        if !retried.is_empty() {
            tracing::info!(hosts = ?retried, "a secret changed: hosts whose last attempt failed are offered their system again");
        }
        Ok(())
    }

    pub async fn remove_secret(&self, principal: &Principal, name: &str) -> Result<()> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        check_name(name)?;
        self.require_own_secret(scope, name).await?;
        let audit = self.audit_entry(
            principal,
            "secret.remove",
            Vec::new(),
            serde_json::json!({ "secret": name }),
        );
        let change = Change {
            author: admin,
            action: "removed",
            detail: String::new(),
            at: now(),
            audit: Some(&audit),
        };
        if !self.store.delete_secret(name, &change).await? {
            return Err(unknown_secret(name));
        }
        tracing::info!(secret = name, by = admin, "secret removed");
        self.secrets_changed().await
    }

    /// Secrets' metadata. A scoped user sees the secrets granted to one of their hosts,
    /// with those grants only, and no history (its entries name hosts and people outside
    /// the scope).
    pub async fn list_secrets(&self, principal: &Principal) -> Result<Vec<SecretInfo>> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        self.visible_secret_infos(scope, None).await
    }

    /// `secret_infos`, as `scope` sees them (see `list_secrets`).
    async fn visible_secret_infos(
        &self,
        scope: Scope<'_>,
        only: Option<&str>,
    ) -> Result<Vec<SecretInfo>> {
        let infos = self.secret_infos(only).await?;
        let Some(visible) = self.host_ids_in_scope(scope).await? else {
            return Ok(infos);
        };
        let names: std::collections::BTreeSet<String> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| visible.contains(&h.id))
            .map(|h| h.name)
            .collect();
        Ok(infos
            .into_iter()
            .filter_map(|mut info| {
                info.hosts.retain(|g| names.contains(&g.host));
                if let Scope::Tags(own) = scope {
                    info.tags.retain(|t| own.contains(t));
                }
                info.history.clear();
                (!info.hosts.is_empty()).then_some(info)
            })
            .collect())
    }

    /// One secret, as `scope` sees it.
    async fn secret_info(&self, scope: Scope<'_>, name: &str) -> Result<SecretInfo> {
        self.visible_secret_infos(scope, Some(name))
            .await?
            .pop()
            .ok_or_else(|| unknown_secret(name))
    }

    /// Every secret's metadata (or one's), with grants and history.
    async fn secret_infos(&self, only: Option<&str>) -> Result<Vec<SecretInfo>> {
        let mut grants: BTreeMap<String, Vec<SecretGrant>> = BTreeMap::new();
        for g in self.store.list_grants().await? {
            grants.entry(g.secret).or_default().push(SecretGrant {
                host: g.host,
                granted_at: g.granted_at,
                granted_by: g.granted_by,
                fetched_version: g.fetched_version,
                fetched_at: g.fetched_at,
                via_tag: (!g.via_tag.is_empty()).then_some(g.via_tag),
            });
        }
        let mut tag_grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.store.list_tag_grants().await? {
            tag_grants.entry(t.secret).or_default().push(t.tag);
        }
        let mut history: BTreeMap<String, Vec<SecretChange>> = BTreeMap::new();
        for c in self.store.list_secret_changes(HISTORY_SHOWN).await? {
            history.entry(c.secret).or_default().push(SecretChange {
                at: c.at,
                by: c.author,
                action: c.action,
                detail: c.detail,
            });
        }
        Ok(self
            .store
            .list_secrets()
            .await?
            .into_iter()
            .filter(|s| only.is_none_or(|n| n == s.name))
            .map(|s| SecretInfo {
                hosts: grants.remove(&s.name).unwrap_or_default(),
                tags: tag_grants.remove(&s.name).unwrap_or_default(),
                history: history.remove(&s.name).unwrap_or_default(),
                name: s.name,
                version: s.version,
                created_at: s.created_at,
                created_by: s.created_by,
                updated_at: s.updated_at,
                updated_by: s.updated_by,
            })
            .collect())
    }

    /// A secret's plaintext, for the server's own use (the osquery enroll secret); `None`
    /// when it does not exist. Wiped when dropped.
    pub(crate) async fn read_secret(
        &self,
        name: &str,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        let Some(stored) = self.store.secret_ciphertext(name).await? else {
            return Ok(None);
        };
        self.open_stored(name, &stored).map(Some)
    }

    /// Decrypts a stored ciphertext with the server's identity.
    fn open_stored(&self, name: &str, stored: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        yeet_proto::secrets::open(&self.keeper()?.identity, stored).map_err(|e| {
            tracing::error!(secret = %name, error = %e, "a stored secret cannot be decrypted with this server's key");
            ServiceError::System(format!("secret {name} cannot be decrypted"))
        })
    }

    /// A host fetches the secrets its system names, re-encrypted to `req.recipient`.
    /// Names it may not have are listed as missing, whether they exist or not.
    pub async fn fetch_secrets(
        &self,
        principal: &Principal,
        req: FetchSecretsRequest,
    ) -> Result<FetchSecretsResponse> {
        let (host_id, host) = require_host(principal)?;
        if req.names.len() > MAX_SECRETS {
            return Err(ServiceError::refused(
                ErrorCode::TooManySecrets,
                format!("at most {MAX_SECRETS} secrets per fetch"),
            ));
        }
        for name in &req.names {
            check_name(name)?;
        }
        let recipient = yeet_proto::secrets::x25519_recipient(&req.recipient)
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidRecipient, e.to_string()))?;
        self.keeper()?;
        let granted = self.store.granted_ciphertexts(host_id, &req.names).await?;
        let mut secrets = Vec::with_capacity(granted.len());
        let mut total = 0usize;
        for (name, version, stored) in granted {
            let plaintext = self.open_stored(&name, &stored)?;
            total += plaintext.len();
            if total > MAX_FETCH_BYTES {
                return Err(ServiceError::refused(
                    ErrorCode::TooManySecrets,
                    format!(
                        "the secrets asked for hold more than {} MiB together",
                        MAX_FETCH_BYTES >> 20
                    ),
                ));
            }
            let sealed = yeet_proto::secrets::seal(&recipient, &plaintext)
                .map_err(|e| ServiceError::System(format!("secret {name}: {e}")))?;
            drop(plaintext);
            secrets.push(DeliveredSecret {
                name,
                version,
                ciphertext: base64::engine::general_purpose::STANDARD.encode(sealed),
            });
        }
        let mut missing: Vec<String> = req
            .names
            .iter()
            .filter(|n| !secrets.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        let fetched: Vec<(String, i64)> = secrets
            .iter()
            .map(|s| (s.name.clone(), s.version))
            .collect();
        self.store.record_fetched(host_id, &fetched, now()).await?;
        if missing.is_empty() {
            tracing::info!(host, count = secrets.len(), "secrets fetched");
        } else {
            tracing::warn!(
                host,
                count = secrets.len(),
                ?missing,
                "secrets fetched; some are not granted to this host"
            );
        }
        Ok(FetchSecretsResponse {
            secrets,
            missing,
            digest: self.secrets_digest(host_id).await,
        })
    }
}
