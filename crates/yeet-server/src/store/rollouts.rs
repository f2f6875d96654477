//! The `rollout_policies` and `rollouts` tables, and the opening of a rollout's release
//! entries. A rollout's state moves only by `advance_rollout`, a conditional update on its
//! `step`: whichever replica (or restarted server) sees a gate pass first makes the
//! transition, with its audit events and any opened entries or rollback release in the
//! same transaction, and the others' attempts change nothing.

use sqlx::{AssertSqlSafe, Row};
use yeet_proto::api::ActivationResult;
use yeet_proto::rollout::{NamedPolicy, RolloutPolicy, RolloutState, WaveCandidate};

use super::named::Named;
use super::{AuditEntry, NewRelease, Store, StoreError, Tx, Wire, id_list};

/// The rollout a release about to be written starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    pub policy_name: String,
    pub policy: RolloutPolicy,
    /// The release's hosts, in the order of its entries, with the tags that waves select.
    pub hosts: Vec<WaveCandidate>,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    pub release_id: i64,
    pub policy_name: String,
    pub policy: RolloutPolicy,
    pub state: RolloutState,
    pub reason: String,
    /// The newest open wave; -1 before the first opens, the number of waves once all passed.
    pub wave: i64,
    /// Milliseconds of the server's clock.
    pub wave_opened_at: Option<i64>,
    pub bake_started_at: Option<i64>,
    /// Transitions made so far: the guard of the next one.
    pub step: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub author: String,
}

/// One host of a rollout, with what the gates need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutHostRow {
    pub host_id: i64,
    /// Its name now, or at release time if it was removed since.
    pub name: String,
    /// False once the host was removed.
    pub exists: bool,
    pub store_path: String,
    pub wave: i64,
    /// When its entry was opened (given to the host), in milliseconds; `None` while held.
    pub opened_at_ms: Option<i64>,
    /// The newest release naming the host: when newer than this rollout's, the host
    /// follows that one, and this rollout no longer decides what it runs.
    pub newest_release: Option<i64>,
    pub last_seen: Option<i64>,
    pub failed_units: Option<i64>,
    /// Its tags now (maintenance windows select hosts by them).
    pub tags: Vec<String>,
    /// How the host's newest attempt at this release's system ended, counting only reports
    /// the server received after it opened the entry: a host cannot pass a gate by
    /// reporting success for a system it was never given.
    pub result: Option<ActivationResult>,
}

/// One step of a rollout: its new state, and what else changes with it.
#[derive(Debug, Clone, Default)]
pub struct Transition {
    pub state: Option<RolloutState>,
    pub reason: Option<String>,
    pub wave: Option<i64>,
    /// `Some(None)` clears the column.
    pub wave_opened_at: Option<Option<i64>>,
    pub bake_started_at: Option<Option<i64>>,
    /// Hosts whose entries this step opens (those already open stay as they are).
    pub open_hosts: Vec<i64>,
    /// A rollback release made with the step (a halt that rolls its wave back).
    pub rollback: Option<RollbackRelease>,
    pub audit: Vec<AuditEntry>,
}

/// The release a halting rollout points its failed wave back with.
#[derive(Debug, Clone)]
pub struct RollbackRelease {
    pub release: NewRelease,
    /// (host id, host name, store path), as `insert_release` takes them.
    pub entries: Vec<(i64, String, String)>,
    pub audit: AuditEntry,
}

const ROLLOUT_SELECT: &str = "SELECT ro.release_id, ro.policy_name, ro.policy, ro.state, ro.reason, ro.wave, ro.wave_opened_at_ms, ro.bake_started_at_ms, ro.step, ro.created_at, ro.updated_at, r.author
     FROM rollouts ro JOIN releases r ON r.id = ro.release_id";

fn parse_policy(name: &str, json: &str) -> Result<RolloutPolicy, StoreError> {
    super::named::parse(Named::RolloutPolicies, name, json)
}

fn rollout_from_row(row: &sqlx::any::AnyRow) -> Result<RolloutRow, StoreError> {
    let policy_name: String = row.try_get("policy_name")?;
    let policy: String = row.try_get("policy")?;
    Ok(RolloutRow {
        release_id: row.try_get("release_id")?,
        policy: parse_policy(&policy_name, &policy)?,
        policy_name,
        state: row.try_get::<Wire<RolloutState>, _>("state")?.0,
        reason: row.try_get("reason")?,
        wave: row.try_get("wave")?,
        wave_opened_at: row.try_get("wave_opened_at_ms")?,
        bake_started_at: row.try_get("bake_started_at_ms")?,
        step: row.try_get("step")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        author: row.try_get("author")?,
    })
}

/// The states in which a rollout still opens entries, as an SQL list.
const ACTIVE_STATES: &str = "('running', 'paused')";

impl Store {
    /// Starts the rollout of release `release_id`, in the transaction that writes it.
    pub(super) async fn start_rollout_in(
        &self,
        tx: &mut Tx<'_>,
        release_id: i64,
        rollout: &NewRollout,
        now: i64,
    ) -> Result<(), StoreError> {
        let policy = super::named::to_json(
            Named::RolloutPolicies,
            &rollout.policy_name,
            &rollout.policy,
        )?;
        sqlx::query("INSERT INTO rollouts (release_id, policy_name, policy, state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
            .bind(release_id)
            .bind(&rollout.policy_name)
            .bind(policy)
            .bind(RolloutState::Running.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn set_policy(
        &self,
        name: &str,
        policy: &RolloutPolicy,
        now: i64,
        by: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.set_named(Named::RolloutPolicies, name, policy, now, by, audit)
            .await
    }

    /// Removes a policy; false when there was none of that name.
    pub async fn remove_policy(&self, name: &str, audit: &AuditEntry) -> Result<bool, StoreError> {
        self.remove_named(Named::RolloutPolicies, name, audit).await
    }

    pub async fn list_policies(&self) -> Result<Vec<NamedPolicy>, StoreError> {
        Ok(self
            .list_named::<RolloutPolicy>(Named::RolloutPolicies)
            .await?
            .into_iter()
            .map(|n| NamedPolicy {
                name: n.name,
                policy: n.spec,
                updated_at: n.updated_at,
                updated_by: n.updated_by,
            })
            .collect())
    }

    pub async fn policy(&self, name: &str) -> Result<Option<RolloutPolicy>, StoreError> {
        self.named(Named::RolloutPolicies, name).await
    }

    /// Rollouts that may still open entries: running or paused, oldest first.
    pub async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{ROLLOUT_SELECT} WHERE ro.state IN {ACTIVE_STATES} ORDER BY ro.release_id"
        )))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// The newest `limit` rollouts, newest first.
    pub async fn list_rollouts(&self, limit: i64) -> Result<Vec<RolloutRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{ROLLOUT_SELECT} ORDER BY ro.release_id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    pub async fn rollout(&self, release_id: i64) -> Result<Option<RolloutRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{ROLLOUT_SELECT} WHERE ro.release_id = $1"
        )))
        .bind(release_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    /// Every host of a rollout, by wave and name, with what its gates look at.
    pub async fn rollout_hosts(&self, release_id: i64) -> Result<Vec<RolloutHostRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT rh.host_id, rh.host_name, h.name AS current_name, rh.store_path, rh.wave, rh.opened_at_ms,
                    h.last_seen, h.failed_units, h.tags,
                    (SELECT MAX(o.release_id) FROM release_hosts o
                      WHERE o.host_id = rh.host_id) AS newest_release,
                    (SELECT a.result FROM activations a
                      WHERE a.host_id = rh.host_id AND a.store_path = rh.store_path
                        AND rh.opened_at_ms IS NOT NULL AND a.reported_at_ms > rh.opened_at_ms
                      ORDER BY a.id DESC LIMIT 1) AS result
             FROM release_hosts rh LEFT JOIN hosts h ON h.id = rh.host_id
             WHERE rh.release_id = $1
             ORDER BY rh.wave, rh.host_name",
        )
        .bind(release_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let current: Option<String> = r.try_get("current_name")?;
                Ok(RolloutHostRow {
                    host_id: r.try_get("host_id")?,
                    exists: current.is_some(),
                    name: match current {
                        Some(n) => n,
                        None => r.try_get("host_name")?,
                    },
                    store_path: r.try_get("store_path")?,
                    wave: r.try_get::<Option<i64>, _>("wave")?.unwrap_or(0),
                    opened_at_ms: r.try_get("opened_at_ms")?,
                    newest_release: r.try_get("newest_release")?,
                    last_seen: r.try_get("last_seen")?,
                    failed_units: r.try_get("failed_units")?,
                    tags: super::split_tags(
                        &r.try_get::<Option<String>, _>("tags")?.unwrap_or_default(),
                    ),
                    result: r
                        .try_get::<Option<Wire<ActivationResult>>, _>("result")?
                        .map(|w| w.0),
                })
            })
            .collect()
    }

    /// Makes one step of rollout `release_id` at `now_ms` if no other step was made since the caller
    /// read it at `step`: true when this call made it, false when another replica (or an
    /// operator) moved the rollout first and nothing changed.
    pub async fn advance_rollout(
        &self,
        release_id: i64,
        step: i64,
        now_ms: i64,
        t: &Transition,
    ) -> Result<bool, StoreError> {
        let now = now_ms / 1000;
        let mut tx = self.writer.begin().await?;
        let moved = sqlx::query(
            "UPDATE rollouts SET step = step + 1, updated_at = $1,
                 state = COALESCE($2, state), reason = COALESCE($3, reason), wave = COALESCE($4, wave),
                 wave_opened_at_ms = CASE WHEN $5 = 1 THEN $6 ELSE wave_opened_at_ms END,
                 bake_started_at_ms = CASE WHEN $7 = 1 THEN $8 ELSE bake_started_at_ms END
             WHERE release_id = $9 AND step = $10",
        )
        .bind(now)
        .bind(t.state.map(RolloutState::as_str))
        .bind(t.reason.as_deref())
        .bind(t.wave)
        .bind(i64::from(t.wave_opened_at.is_some()))
        .bind(t.wave_opened_at.flatten())
        .bind(i64::from(t.bake_started_at.is_some()))
        .bind(t.bake_started_at.flatten())
        .bind(release_id)
        .bind(step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        if !t.open_hosts.is_empty() {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE release_hosts SET opened_at_ms = $1
                 WHERE release_id = $2 AND opened_at_ms IS NULL AND host_id IN ({})",
                id_list(&t.open_hosts)
            )))
            .bind(now_ms)
            .bind(release_id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(r) = &t.rollback {
            self.insert_release_in(&mut tx, &r.release, now, &r.entries, &r.audit)
                .await?;
        }
        for event in &t.audit {
            self.append_audit(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
