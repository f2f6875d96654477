//! One typed method per endpoint of the yeet API: callers never pair a path with a response
//! type by hand, every query string is built by `yeet_proto::api::paths`, and every name
//! put in a path is encoded as one segment (`paths::segment`).

use yeet_proto::api::{
    Activation, ActivationLog, ActivationReport, ApproveRequest, CacheGcReport, CacheGcRequest,
    CacheMissingRequest, CacheMissingResponse, CheckinRequest, CheckinResponse,
    CreateReleaseRequest, DetachRequest, Detachment, HostInfo, HostPolicyChange, Limit,
    PendingRegistration, RegisterRequest, RegisterResponse, RejectRequest, Release, ReleaseFilter,
    RenameRequest, RollbackRequest, TagHostRequest, WhoAmI, paths,
};
use yeet_proto::api::{
    AddKeyRequest, AddUserRequest, RemoveKeyRequest, Role, SetRoleRequest, SetTagsRequest, UserInfo,
};

use yeet_proto::secrets::{
    AddSecretRequest, FetchSecretsRequest, FetchSecretsResponse, RotateSecretRequest,
    SecretHostsRequest, SecretInfo, SecretRecipient,
};

use yeet_proto::osquery::paths as oq;
use yeet_proto::osquery::{
    Campaign, CarveInfo, LogFilter, OsqueryLogPage, OsqueryNode, OsqueryOption, ScheduledQuery,
    SetOption, StartCarve, StartQuery,
};
use yeet_proto::rollout::{
    NamedPolicy, Rollout, RolloutControl, RolloutPolicy, StartRolloutRequest,
};
use yeet_proto::windows::{MaintenanceWindow, NamedWindow};

use crate::{Client, ClientError};

type Result<T> = std::result::Result<T, ClientError>;

/// Answers without a body of interest (`{}`).
type Done = serde_json::Value;

impl Client {
    // The agent's endpoints.

    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        self.post(paths::REGISTER, req)
    }

    pub fn checkin(&self, req: &CheckinRequest) -> Result<CheckinResponse> {
        self.post(paths::CHECKIN, req)
    }

    pub fn report(&self, req: &ActivationReport) -> Result<Activation> {
        self.post(paths::REPORT, req)
    }

    /// Asks to detach; refused (`detach_refused`) unless the host's policy allows it.
    pub fn detach(&self, req: &DetachRequest) -> Result<Detachment> {
        self.post(paths::AGENT_DETACH, req)
    }

    /// Ends this host's detachment (a no-op when it has none).
    pub fn attach(&self) -> Result<()> {
        self.post::<_, Done>(paths::AGENT_ATTACH, &serde_json::json!({}))
            .map(drop)
    }

    // Operators' endpoints.

    pub fn whoami(&self) -> Result<WhoAmI> {
        self.get(paths::WHOAMI)
    }

    pub fn users(&self) -> Result<Vec<UserInfo>> {
        self.get(paths::USERS)
    }

    pub fn user(&self, name: &str) -> Result<UserInfo> {
        self.get(&paths::user(&paths::segment(name)))
    }

    pub fn add_user(&self, req: &AddUserRequest) -> Result<UserInfo> {
        self.post(paths::USERS, req)
    }

    pub fn remove_user(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&paths::user(&paths::segment(name)))
            .map(drop)
    }

    pub fn set_user_role(&self, name: &str, role: Role) -> Result<UserInfo> {
        self.put(
            &paths::user_role(&paths::segment(name)),
            &SetRoleRequest { role },
        )
    }

    pub fn set_user_tags(&self, name: &str, tags: &[String]) -> Result<UserInfo> {
        let req = SetTagsRequest {
            tags: tags.to_vec(),
        };
        self.put(&paths::user_tags(&paths::segment(name)), &req)
    }

    pub fn add_user_key(&self, name: &str, public_key: &str) -> Result<UserInfo> {
        let req = AddKeyRequest {
            public_key: public_key.to_owned(),
        };
        self.post(&paths::user_keys(&paths::segment(name)), &req)
    }

    pub fn remove_user_key(&self, name: &str, key_id: &str) -> Result<UserInfo> {
        let req = RemoveKeyRequest {
            key_id: key_id.to_owned(),
        };
        self.post(&paths::user_keys_remove(&paths::segment(name)), &req)
    }

    pub fn pending(&self) -> Result<Vec<PendingRegistration>> {
        self.get(paths::REGISTRATIONS)
    }

    pub fn approve(&self, code: &str, name: &str, tags: &[String]) -> Result<HostInfo> {
        let req = ApproveRequest {
            code: code.to_owned(),
            name: name.to_owned(),
            tags: tags.to_vec(),
        };
        self.post(paths::APPROVE, &req)
    }

    pub fn reject(&self, key_id: &str) -> Result<()> {
        let req = RejectRequest {
            key_id: key_id.to_owned(),
        };
        self.post::<_, Done>(paths::REJECT, &req).map(drop)
    }

    pub fn hosts(&self) -> Result<Vec<HostInfo>> {
        self.get(paths::HOSTS)
    }

    pub fn host(&self, name: &str) -> Result<HostInfo> {
        self.get(&paths::host(&paths::segment(name)))
    }

    pub fn rename_host(&self, name: &str, new_name: &str) -> Result<HostInfo> {
        let req = RenameRequest {
            new_name: new_name.to_owned(),
        };
        self.post(&paths::host_rename(&paths::segment(name)), &req)
    }

    pub fn tag_host(&self, name: &str, req: &TagHostRequest) -> Result<HostInfo> {
        self.post(&paths::host_tags(&paths::segment(name)), req)
    }

    pub fn set_host_policy(&self, name: &str, policy: &HostPolicyChange) -> Result<HostInfo> {
        self.put(&paths::host_policy(&paths::segment(name)), policy)
    }

    /// Ends a host's detachment from the operator's side.
    pub fn attach_host(&self, name: &str) -> Result<HostInfo> {
        self.post(
            &paths::host_attach(&paths::segment(name)),
            &serde_json::json!({}),
        )
    }

    pub fn remove_host(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&paths::host(&paths::segment(name)))
            .map(drop)
    }

    pub fn activations(&self, host: &str, limit: Limit) -> Result<Vec<Activation>> {
        self.get(&paths::activations(host, &limit))
    }

    pub fn latest_log(&self, host: &str) -> Result<ActivationLog> {
        self.get(&paths::host_log(&paths::segment(host)))
    }

    /// One page of the audit log.
    pub fn audit(
        &self,
        filter: &yeet_proto::audit::AuditFilter,
    ) -> Result<yeet_proto::audit::AuditPage> {
        self.get(&filter.path())
    }

    pub fn releases(&self, filter: &ReleaseFilter) -> Result<Vec<Release>> {
        self.get(&paths::releases(filter))
    }

    pub fn release(&self, id: i64) -> Result<Release> {
        self.get(&paths::release(&id.to_string()))
    }

    pub fn create_release(&self, req: &CreateReleaseRequest) -> Result<Release> {
        self.post(paths::RELEASES, req)
    }

    pub fn rollout_policies(&self) -> Result<Vec<NamedPolicy>> {
        self.get(paths::ROLLOUT_POLICIES)
    }

    pub fn set_rollout_policy(&self, name: &str, policy: &RolloutPolicy) -> Result<NamedPolicy> {
        self.put(&paths::rollout_policy(&paths::segment(name)), policy)
    }

    pub fn remove_rollout_policy(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&paths::rollout_policy(&paths::segment(name)))
            .map(drop)
    }

    pub fn windows(&self) -> Result<Vec<NamedWindow>> {
        self.get(paths::WINDOWS)
    }

    pub fn set_window(&self, name: &str, window: &MaintenanceWindow) -> Result<NamedWindow> {
        self.put(&paths::window(&paths::segment(name)), window)
    }

    pub fn remove_window(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&paths::window(&paths::segment(name)))
            .map(drop)
    }

    pub fn rollouts(&self, limit: Limit) -> Result<Vec<Rollout>> {
        self.get(&paths::rollouts(&limit))
    }

    pub fn rollout(&self, id: i64) -> Result<Rollout> {
        self.get(&paths::rollout(&id.to_string()))
    }

    pub fn start_rollout(&self, req: &StartRolloutRequest) -> Result<Release> {
        self.post(paths::ROLLOUTS, req)
    }

    /// Pause, resume, abort or promote a rollout; answers it as it is after.
    pub fn control_rollout(&self, id: i64, control: RolloutControl) -> Result<Rollout> {
        self.post(
            &paths::rollout_control(&id.to_string(), control.as_str()),
            &serde_json::json!({}),
        )
    }

    pub fn rollback(&self, req: &RollbackRequest) -> Result<Release> {
        self.post(paths::ROLLBACK, req)
    }

    pub fn retry(
        &self,
        req: &yeet_proto::api::RetryRequest,
    ) -> Result<yeet_proto::api::RetryResponse> {
        self.post(paths::RETRY, req)
    }

    /// Which store path hashes the embedded cache lacks, and the keys it requires.
    pub fn cache_missing(&self, req: &CacheMissingRequest) -> Result<CacheMissingResponse> {
        self.post(paths::CACHE_MISSING, req)
    }

    pub fn cache_gc(&self, req: &CacheGcRequest) -> Result<CacheGcReport> {
        self.post(paths::CACHE_GC, req)
    }

    // Secrets.

    pub fn secret_recipient(&self) -> Result<SecretRecipient> {
        self.get(paths::SECRETS_RECIPIENT)
    }

    pub fn secrets(&self) -> Result<Vec<SecretInfo>> {
        self.get(paths::SECRETS)
    }

    pub fn add_secret(&self, req: &AddSecretRequest) -> Result<SecretInfo> {
        self.post(paths::SECRETS, req)
    }

    pub fn rotate_secret(&self, name: &str, req: &RotateSecretRequest) -> Result<SecretInfo> {
        self.post(&paths::secret_rotate(&paths::segment(name)), req)
    }

    /// Grants `name` to `hosts` and `tags` (`grant`), or revokes it from them.
    pub fn set_secret_hosts(
        &self,
        name: &str,
        hosts: &[String],
        tags: &[String],
        grant: bool,
    ) -> Result<SecretInfo> {
        let req = SecretHostsRequest {
            hosts: hosts.to_vec(),
            tags: tags.to_vec(),
        };
        let name = paths::segment(name);
        let path = if grant {
            paths::secret_grant(&name)
        } else {
            paths::secret_revoke(&name)
        };
        self.post(&path, &req)
    }

    pub fn remove_secret(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&paths::secret(&paths::segment(name)))
            .map(drop)
    }

    /// The agent's fetch of its system's secrets.
    pub fn fetch_secrets(&self, req: &FetchSecretsRequest) -> Result<FetchSecretsResponse> {
        self.post(paths::AGENT_SECRETS, req)
    }

    // osquery.

    pub fn osquery_nodes(&self) -> Result<Vec<OsqueryNode>> {
        self.get(oq::NODES)
    }

    pub fn osquery_schedule(&self) -> Result<Vec<ScheduledQuery>> {
        self.get(oq::SCHEDULE)
    }

    pub fn add_scheduled_query(&self, q: &ScheduledQuery) -> Result<ScheduledQuery> {
        self.post(oq::SCHEDULE, q)
    }

    pub fn remove_scheduled_query(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&oq::scheduled_query(&paths::segment(name)))
            .map(drop)
    }

    pub fn osquery_options(&self) -> Result<Vec<OsqueryOption>> {
        self.get(oq::OPTIONS)
    }

    pub fn set_osquery_option(
        &self,
        name: &str,
        value: serde_json::Value,
    ) -> Result<OsqueryOption> {
        self.put(&oq::option(&paths::segment(name)), &SetOption { value })
    }

    pub fn remove_osquery_option(&self, name: &str) -> Result<()> {
        self.delete::<Done>(&oq::option(&paths::segment(name)))
            .map(drop)
    }

    /// One page of stored lines; `next_after` says where the next one starts.
    pub fn osquery_logs(&self, filter: &LogFilter) -> Result<OsqueryLogPage> {
        self.get(&oq::logs(filter))
    }

    pub fn start_osquery_query(&self, req: &StartQuery) -> Result<Campaign> {
        self.post(oq::QUERIES, req)
    }

    pub fn osquery_campaign(&self, id: i64) -> Result<Campaign> {
        self.get(&oq::query(&id.to_string()))
    }

    pub fn osquery_carves(&self) -> Result<Vec<CarveInfo>> {
        self.get(oq::CARVES)
    }

    pub fn start_osquery_carve(&self, req: &StartCarve) -> Result<Campaign> {
        self.post(oq::CARVES, req)
    }

    /// Streams a complete carve's archive into `out`; returns the server's SHA-256 of it.
    pub fn download_carve(&self, id: i64, out: &mut dyn std::io::Write) -> Result<Option<String>> {
        let headers = self.download(&oq::carve_archive(&id.to_string()), out)?;
        Ok(headers
            .get("x-yeet-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }
}
