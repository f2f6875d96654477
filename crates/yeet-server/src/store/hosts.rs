//! The `hosts` table: approved hosts, what they last reported, and when they were seen.

use sqlx::{AssertSqlSafe, Row};

use super::registrations::{REGISTRATION_COLUMNS, RegistrationRow};
use super::{AuditEntry, Store, StoreError, Wire, conflict};
use yeet_proto::api::{ActivationResult, AgentState, HostPolicy, RebootPolicy};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostRow {
    pub id: i64,
    pub name: String,
    pub key_id: String,
    pub public_key: String,
    pub approved_at: i64,
    pub approved_by: String,
    /// Written in batches, so possibly behind the service's in-memory view.
    pub last_seen: Option<i64>,
    /// What the host last reported.
    pub current_system: Option<String>,
    pub booted_system: Option<String>,
    pub state: Wire<AgentState>,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    /// How the newest activation ended (`NULL` before the first).
    pub last_result: Option<Wire<ActivationResult>>,
    /// The system that activation was for.
    pub last_result_path: Option<String>,
    /// People at the host may detach it (0 or 1).
    pub allow_detach: i64,
    /// The DMI UUID the agent reports ('' when none): osquery nodes link by it.
    pub hardware_uuid: String,
    pub os_version: String,
    pub kernel: String,
    pub booted_at: Option<i64>,
    /// Set by operators (space-separated, sorted; see `split_tags`).
    pub tags: String,
    /// What the host's agent suggests, validated (space-separated, sorted).
    pub suggested_tags: String,
    /// The reboot policy an admin set, and the one the host's agent declares (which holds).
    pub reboot_policy: Wire<RebootPolicy>,
    pub declared_reboot: Option<Wire<RebootPolicy>>,
}

impl HostRow {
    /// What the host may do on its own, as the API shows it.
    pub fn policy(&self) -> HostPolicy {
        HostPolicy {
            allow_detach: self.allow_detach != 0,
            reboot: self.reboot_policy.0,
            declared_reboot: self.declared_reboot.map(|w| w.0),
        }
    }
}

/// A stored tag list (space-separated; the tag alphabet has no space) as tags.
pub fn split_tags(stored: &str) -> Vec<String> {
    stored.split_whitespace().map(str::to_owned).collect()
}

/// Tags as stored: sorted and without repeats, as `names::tag_set` returns them.
pub fn join_tags(tags: &std::collections::BTreeSet<String>) -> String {
    tags.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a host last reported; written only when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostReport {
    pub current_system: Option<String>,
    pub booted_system: Option<String>,
    pub state: AgentState,
    /// Facts, cleaned to short printable lines.
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub hardware_uuid: String,
    pub trust_digest: String,
    pub os_version: String,
    pub kernel: String,
    pub booted_at: Option<i64>,
    /// Stored as `join_tags` writes them.
    pub suggested_tags: String,
    /// Failed systemd units; `None` where the host runs no systemd.
    pub failed_units: Option<i64>,
    /// The reboot policy the host's agent declares, if any.
    pub declared_reboot: Option<RebootPolicy>,
}

pub(super) const HOST_COLUMNS: &str = "id, name, key_id, public_key, approved_at, approved_by, last_seen, current_system, booted_system, state, os, arch, agent_version, last_result, last_result_path, allow_detach, hardware_uuid, os_version, kernel, booted_at, tags, suggested_tags, reboot_policy, declared_reboot";

impl Store {
    pub async fn host_by_key(&self, key_id: &str) -> Result<Option<HostRow>, StoreError> {
        self.host_where("key_id", key_id.to_owned()).await
    }

    pub async fn host_by_name(&self, name: &str) -> Result<Option<HostRow>, StoreError> {
        self.host_where("name", name.to_owned()).await
    }

    /// The host reporting this hardware UUID, if exactly one does.
    pub async fn host_by_hardware_uuid(&self, uuid: &str) -> Result<Option<HostRow>, StoreError> {
        let mut rows = sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE hardware_uuid = $1 LIMIT 2"
        )))
        .bind(uuid)
        .fetch_all(&self.reader)
        .await?;
        Ok(if rows.len() == 1 { rows.pop() } else { None })
    }

    pub async fn host_by_id(&self, id: i64) -> Result<Option<HostRow>, StoreError> {
        self.host_where("id", id).await
    }

    /// (host id, last attempted store path) of those of `ids` that attempted one.
    pub async fn last_result_paths(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        // Only placeholders are formatted in; every value is bound.
        let sql = format!(
            "SELECT id, last_result_path FROM hosts WHERE last_result_path IS NOT NULL AND id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("last_result_path")?)))
            .collect()
    }

    /// The host whose unique `column` (a name from this file, never input) equals `value`.
    async fn host_where<V>(
        &self,
        column: &'static str,
        value: V,
    ) -> Result<Option<HostRow>, StoreError>
    where
        V: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'static,
    {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE {column} = $1"
        )))
        .bind(value)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Sets a host's tags to `new` if they are still `old` (as stored), so that two
    /// operators' changes never overwrite each other; `None` when the host is gone, `Some`
    /// with the row as it is when it changed in between.
    pub async fn replace_host_tags(
        &self,
        name: &str,
        old: &str,
        new: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<Option<(bool, HostRow)>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let updated = sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "UPDATE hosts SET tags = $1 WHERE name = $2 AND tags = $3 RETURNING {HOST_COLUMNS}"
        )))
        .bind(new)
        .bind(name)
        .bind(old)
        .fetch_optional(&mut *tx)
        .await?;
        match updated {
            Some(row) => {
                // The secrets granted to tags follow the host's new tags, in the same
                // transaction.
                super::secrets::sync_tag_grants(&mut tx, now).await?;
                self.append_audit(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(Some((true, row)))
            }
            None => {
                drop(tx);
                Ok(self.host_by_name(name).await?.map(|row| (false, row)))
            }
        }
    }

    /// Turns a registration into a host, in one transaction: the registration must still
    /// exist, so two admins approving the same code cannot create two hosts. `tags` are
    /// the host's first tags; `with_suggested` adds those the registration suggested.
    pub async fn approve_registration(
        &self,
        key_id: &str,
        name: &str,
        approved_by: &str,
        tags: &std::collections::BTreeSet<String>,
        with_suggested: bool,
        audit: &AuditEntry,
    ) -> Result<Option<HostRow>, StoreError> {
        // The change happens when its event says.
        let now = audit.at_ms / 1000;
        let mut tx = self.writer.begin().await?;
        let Some(reg) = sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!(
            "DELETE FROM registrations WHERE key_id = $1 RETURNING {REGISTRATION_COLUMNS}"
        )))
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let mut tags = tags.clone();
        if with_suggested {
            let room = yeet_proto::names::MAX_TAGS.saturating_sub(tags.len());
            let suggested = split_tags(&reg.suggested_tags);
            let new: Vec<String> = suggested
                .into_iter()
                .filter(|t| !tags.contains(t))
                .collect();
            tags.extend(new.into_iter().take(room));
        }
        let host = sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "INSERT INTO hosts (name, key_id, public_key, approved_at, approved_by, os, arch, agent_version, tags, suggested_tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {HOST_COLUMNS}"
        )))
        .bind(name)
        .bind(&reg.key_id)
        .bind(&reg.public_key)
        .bind(now)
        .bind(approved_by)
        .bind(&reg.os)
        .bind(&reg.arch)
        .bind(&reg.agent_version)
        .bind(join_tags(&tags))
        .bind(&reg.suggested_tags)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict("a host with this name"))?;
        super::secrets::sync_tag_grants(&mut tx, now).await?;
        // The event names the tags the host got, which the admin may not have listed.
        let mut audit = audit.clone();
        if let Some(details) = audit.details.as_object_mut() {
            details.insert("tags".into(), serde_json::json!(split_tags(&host.tags)));
        }
        self.append_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Some(host))
    }

    pub async fn rename_host(
        &self,
        old: &str,
        new: &str,
        audit: &AuditEntry,
    ) -> Result<Option<HostRow>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "UPDATE hosts SET name = $1 WHERE name = $2 RETURNING {HOST_COLUMNS}"
        )))
        .bind(new)
        .bind(old)
        .fetch_optional(&mut *tx)
        .await
        .map_err(conflict("a host with this name"))?;
        if row.is_some() {
            self.append_audit(&mut tx, audit).await?;
            tx.commit().await?;
        }
        Ok(row)
    }

    /// Removes a host and its secret grants, in one transaction.
    pub async fn delete_host(
        &self,
        name: &str,
        audit: &AuditEntry,
    ) -> Result<Option<HostRow>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "DELETE FROM hosts WHERE name = $1 RETURNING {HOST_COLUMNS}"
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = &row {
            sqlx::query("DELETE FROM secret_grants WHERE host_id = $1")
                .bind(row.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM detachments WHERE host_id = $1")
                .bind(row.id)
                .execute(&mut *tx)
                .await?;
            self.append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    pub async fn update_host_report(
        &self,
        host_id: i64,
        report: &HostReport,
        now: i64,
    ) -> Result<(), StoreError> {
        // A host whose trusted keys changed may now trust a system it refused: its
        // untrusted attempt is forgotten in the same statement, so it is offered again.
        sqlx::query(
            "UPDATE hosts SET current_system = $1, booted_system = $2, state = $3, os = $4, arch = $5, agent_version = $6, last_seen = $7, hardware_uuid = $9, os_version = $11, kernel = $12, booted_at = $13, suggested_tags = $14,
                failed_units = $15, declared_reboot = $16,
                last_result_path = CASE WHEN trust_digest <> $10 AND last_result = 'untrusted' THEN NULL ELSE last_result_path END,
                trust_digest = $10
             WHERE id = $8",
        )
        .bind(&report.current_system)
        .bind(&report.booted_system)
        .bind(report.state.as_str())
        .bind(&report.os)
        .bind(&report.arch)
        .bind(&report.agent_version)
        .bind(now)
        .bind(host_id)
        .bind(&report.hardware_uuid)
        .bind(&report.trust_digest)
        .bind(&report.os_version)
        .bind(&report.kernel)
        .bind(report.booted_at)
        .bind(&report.suggested_tags)
        .bind(report.failed_units)
        .bind(report.declared_reboot.map(RebootPolicy::as_str))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets what these hosts last tried to activate (only attempts that ended with one of
    /// `results`, when given), so that their desired system is offered once more; returns
    /// the hosts it forgot an attempt of. `audit`: the event of the operator's request
    /// (`yeet retry`), in the same transaction.
    pub async fn forget_attempts(
        &self,
        host_ids: &[i64],
        results: Option<&[yeet_proto::api::ActivationResult]>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<i64>, StoreError> {
        if host_ids.is_empty() {
            return Ok(Vec::new());
        }
        // Ids and result names are integers and the protocol's fixed words, spliced as such.
        let mut sql = format!(
            "UPDATE hosts SET last_result_path = NULL WHERE last_result_path IS NOT NULL AND id IN ({})",
            super::id_list(host_ids)
        );
        if let Some(results) = results {
            let names: Vec<String> = results
                .iter()
                .map(|r| format!("'{}'", r.as_str()))
                .collect();
            sql.push_str(&format!(" AND last_result IN ({})", names.join(", ")));
        }
        sql.push_str(" RETURNING id");
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await?;
        if let Some(audit) = audit {
            self.append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(rows)
    }

    /// Writes a batch of last-seen times in one transaction.
    pub async fn touch_hosts(&self, seen: &[(i64, i64)]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for (host_id, at) in seen {
            sqlx::query("UPDATE hosts SET last_seen = $1 WHERE id = $2 AND (last_seen IS NULL OR last_seen < $1)")
                .bind(*at)
                .bind(*host_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
