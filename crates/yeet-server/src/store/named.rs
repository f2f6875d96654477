//! Tables of named JSON specs that operators set and remove whole: rollout policies and
//! maintenance windows. One set of queries for both; each table's JSON is a typed value of
//! `yeet-proto`, parsed here so that a corrupt row is a clear error, never a default.

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{AssertSqlSafe, Row};

use super::{AuditEntry, Store, StoreError};

/// Which table of named specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Named {
    RolloutPolicies,
    MaintenanceWindows,
}

impl Named {
    /// The table's name: a constant, so that splicing it into SQL is safe.
    fn table(self) -> &'static str {
        match self {
            Named::RolloutPolicies => "rollout_policies",
            Named::MaintenanceWindows => "maintenance_windows",
        }
    }

    fn corrupt(self, name: &str, why: String) -> StoreError {
        let (what, fix) = match self {
            Named::RolloutPolicies => ("rollout policy", "yeet rollout policy set"),
            Named::MaintenanceWindows => ("maintenance window", "yeet window set"),
        };
        StoreError::CorruptSpec {
            what,
            fix,
            name: name.to_owned(),
            why,
        }
    }
}

/// One stored spec with who last set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSpec<T> {
    pub name: String,
    pub spec: T,
    pub updated_at: i64,
    pub updated_by: String,
}

pub(super) fn parse<T: DeserializeOwned>(
    table: Named,
    name: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| table.corrupt(name, e.to_string()))
}

pub(super) fn to_json<T: Serialize>(
    table: Named,
    name: &str,
    spec: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| table.corrupt(name, e.to_string()))
}

impl Store {
    /// Stores `spec` under `name`, replacing one of that name, with its audit event.
    pub(super) async fn set_named<T: Serialize>(
        &self,
        table: Named,
        name: &str,
        spec: &T,
        now: i64,
        by: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let json = to_json(table, name, spec)?;
        let t = table.table();
        let mut tx = self.writer.begin().await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {t} WHERE name = $1")))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {t} (name, spec, updated_at, updated_by) VALUES ($1, $2, $3, $4)"
        )))
        .bind(name)
        .bind(json)
        .bind(now)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes `name`, with its audit event; false (and no event) when there was none.
    pub(super) async fn remove_named(
        &self,
        table: Named,
        name: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let gone = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE name = $1",
            table.table()
        )))
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if gone {
            self.append_audit(&mut tx, audit).await?;
            tx.commit().await?;
        }
        Ok(gone)
    }

    /// Every spec of the table, by name.
    pub(super) async fn list_named<T: DeserializeOwned>(
        &self,
        table: Named,
    ) -> Result<Vec<NamedSpec<T>>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT name, spec, updated_at, updated_by FROM {} ORDER BY name",
            table.table()
        )))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let json: String = r.try_get("spec")?;
                Ok(NamedSpec {
                    spec: parse(table, &name, &json)?,
                    name,
                    updated_at: r.try_get("updated_at")?,
                    updated_by: r.try_get("updated_by")?,
                })
            })
            .collect()
    }

    /// One spec by name.
    pub(super) async fn named<T: DeserializeOwned>(
        &self,
        table: Named,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let json: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT spec FROM {} WHERE name = $1",
            table.table()
        )))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        json.map(|j| parse(table, name, &j)).transpose()
    }

    pub async fn set_window(
        &self,
        name: &str,
        window: &yeet_proto::windows::MaintenanceWindow,
        now: i64,
        by: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.set_named(Named::MaintenanceWindows, name, window, now, by, audit)
            .await
    }

    pub async fn remove_window(&self, name: &str, audit: &AuditEntry) -> Result<bool, StoreError> {
        self.remove_named(Named::MaintenanceWindows, name, audit)
            .await
    }

    pub async fn list_windows(
        &self,
    ) -> Result<Vec<NamedSpec<yeet_proto::windows::MaintenanceWindow>>, StoreError> {
        self.list_named(Named::MaintenanceWindows).await
    }
}
