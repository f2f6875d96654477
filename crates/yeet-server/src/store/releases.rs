//! The `releases` and `release_hosts` tables: immutable host → system sets, and the desired
//! system of each host that follows from them.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRow {
    pub id: i64,
    pub author: String,
    pub message: String,
    pub created_at: i64,
    pub revision: Option<String>,
    pub dirty: bool,
    /// (host name at release time, store path), sorted by host name.
    pub entries: Vec<(String, String)>,
    /// The host id of each entry, in the same order (names change; ids do not).
    pub host_ids: Vec<i64>,
}

impl ReleaseRow {
    /// Keeps the entries of the hosts `keep` accepts (by id); `None` when none is left.
    pub fn only_hosts(mut self, keep: impl Fn(i64) -> bool) -> Option<ReleaseRow> {
        let (entries, host_ids) = self
            .entries
            .into_iter()
            .zip(self.host_ids)
            .filter(|(_, id)| keep(*id))
            .unzip();
        self.entries = entries;
        self.host_ids = host_ids;
        (!self.entries.is_empty()).then_some(self)
    }
}

/// The provenance of a release about to be written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRelease {
    pub author: String,
    pub message: String,
    pub revision: Option<String>,
    pub dirty: bool,
    /// A rollback: its systems are not new to its hosts, and rollbacks walk past it.
    pub rollback: bool,
    /// Applied in waves: its entries reach their hosts as their waves open.
    pub rollout: Option<super::NewRollout>,
}

pub(super) const RELEASE_SELECT: &str = "SELECT r.id, r.author, r.message, r.created_at, r.revision, r.dirty, rh.host_name, rh.store_path, rh.host_id
     FROM releases r JOIN release_hosts rh ON rh.release_id = r.id";

/// Folds joined release rows (ordered by release) into releases with their entries.
pub(super) fn group_releases(rows: Vec<AnyRow>) -> Result<Vec<ReleaseRow>, sqlx::Error> {
    let mut out: Vec<ReleaseRow> = Vec::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let entry = (row.try_get("host_name")?, row.try_get("store_path")?);
        let host_id: i64 = row.try_get("host_id")?;
        match out.last_mut() {
            Some(last) if last.id == id => {
                last.entries.push(entry);
                last.host_ids.push(host_id);
            }
            _ => out.push(ReleaseRow {
                id,
                author: row.try_get("author")?,
                message: row.try_get("message")?,
                created_at: row.try_get("created_at")?,
                revision: row.try_get("revision")?,
                dirty: row.try_get::<i64, _>("dirty")? != 0,
                entries: vec![entry],
                host_ids: vec![host_id],
            }),
        }
    }
    Ok(out)
}

/// A `DesiredRow` from a row with its three columns.
fn desired_row(r: &AnyRow) -> Result<DesiredRow, StoreError> {
    Ok(DesiredRow {
        host_id: r.try_get("host_id")?,
        release_id: r.try_get("release_id")?,
        store_path: r.try_get("store_path")?,
    })
}

/// The newest release entry for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRow {
    pub host_id: i64,
    pub release_id: i64,
    pub store_path: String,
}

impl Store {
    /// Inserts a release with its (host id, host name, store path) entries atomically. An
    /// ordinary release's entries are opened at once; a rollout's wait for their waves.
    pub async fn insert_release(
        &self,
        release: &NewRelease,
        now: i64,
        entries: &[(i64, String, String)],
        audit: &super::AuditEntry,
    ) -> Result<i64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let id = self
            .insert_release_in(&mut tx, release, now, entries, audit)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// `insert_release` inside a transaction of the caller's.
    pub(super) async fn insert_release_in(
        &self,
        tx: &mut super::Tx<'_>,
        release: &NewRelease,
        now: i64,
        entries: &[(i64, String, String)],
        audit: &super::AuditEntry,
    ) -> Result<i64, StoreError> {
        let id: i64 = sqlx::query("INSERT INTO releases (author, message, created_at, revision, dirty, rollback) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
            .bind(&release.author)
            .bind(&release.message)
            .bind(now)
            .bind(&release.revision)
            .bind(i64::from(release.dirty))
            .bind(i64::from(release.rollback))
            .fetch_one(&mut **tx)
            .await?
            .try_get("id")?;
        // The waves hash the release id, so they are assigned once it is known.
        let waves = release
            .rollout
            .as_ref()
            .map(|r| yeet_proto::rollout::assign_waves(&r.policy, id, &r.hosts));
        for (i, (host_id, host_name, path)) in entries.iter().enumerate() {
            let (wave, opened_at) = match waves.as_ref().and_then(|w| w.get(i)) {
                Some(w) => (Some(*w as i64), None),
                None => (None, Some(now * 1000)),
            };
            sqlx::query("INSERT INTO release_hosts (release_id, host_id, host_name, store_path, wave, opened_at_ms) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(*host_id)
                .bind(host_name)
                .bind(path)
                .bind(wave)
                .bind(opened_at)
                .execute(&mut **tx)
                .await?;
        }
        // The event names the release it created.
        let mut audit = audit.clone();
        if let Some(details) = audit.details.as_object_mut() {
            details.insert("release".into(), id.into());
        }
        self.append_audit(tx, &audit).await?;
        if let Some(rollout) = &release.rollout {
            self.start_rollout_in(tx, id, rollout, now).await?;
        }
        Ok(id)
    }

    /// The newest `limit` releases, newest first; with `hosts`, only those naming one of
    /// these host ids (with all their entries: the caller filters what it shows).
    pub async fn list_releases(
        &self,
        hosts: Option<&[i64]>,
        limit: i64,
    ) -> Result<Vec<ReleaseRow>, StoreError> {
        // Ids are integers, spliced as such; everything else is bound.
        let naming = match hosts {
            None => String::new(),
            Some(ids) => format!(
                "WHERE id IN (SELECT release_id FROM release_hosts WHERE host_id IN ({}))",
                super::id_list(ids)
            ),
        };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{RELEASE_SELECT}
             WHERE r.id IN (SELECT id FROM releases {naming} ORDER BY id DESC LIMIT $1)
             ORDER BY r.id DESC, rh.host_name"
        )))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(group_releases(rows)?)
    }

    pub async fn release_by_id(&self, id: i64) -> Result<Option<ReleaseRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{RELEASE_SELECT} WHERE r.id = $1 ORDER BY rh.host_name"
        )))
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        Ok(group_releases(rows)?.pop())
    }

    /// The store paths of every host's newest `keep` releases.
    pub async fn paths_of_newest_releases(&self, keep: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_id, store_path FROM release_hosts ORDER BY host_id, release_id DESC",
        )
        .fetch_all(&self.reader)
        .await?;
        let (mut out, mut current, mut taken) = (Vec::new(), None, 0u32);
        for row in rows {
            let host: i64 = row.try_get("host_id")?;
            if current != Some(host) {
                (current, taken) = (Some(host), 0);
            }
            if taken < keep {
                out.push(row.try_get("store_path")?);
                taken += 1;
            }
        }
        Ok(out)
    }

    /// Where a rollback of a host from its system in release `from_release` goes, as NixOS
    /// generations do: to the newest system that an ordinary release gave the host before
    /// the one it rolls back from, and that the host confirmed. "Before" counts from the
    /// ordinary release that gave the host the system being rolled back from, so a rollback
    /// of a rollback walks further back instead of returning. `None`: the host has no such
    /// system, or release `from_release` does not name it.
    pub async fn rollback_target(
        &self,
        host_id: i64,
        from_release: i64,
    ) -> Result<Option<String>, StoreError> {
        let from: Option<String> = sqlx::query_scalar(
            "SELECT store_path FROM release_hosts WHERE host_id = $1 AND release_id = $2 AND opened_at_ms IS NOT NULL",
        )
        .bind(host_id)
        .bind(from_release)
        .fetch_optional(&self.reader)
        .await?;
        let Some(from) = from else {
            return Ok(None);
        };
        let given_in: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(rh.release_id) FROM release_hosts rh JOIN releases r ON r.id = rh.release_id
             WHERE rh.host_id = $1 AND rh.store_path = $2 AND rh.release_id <= $3 AND r.rollback = 0
               AND rh.opened_at_ms IS NOT NULL",
        )
        .bind(host_id)
        .bind(&from)
        .bind(from_release)
        .fetch_one(&self.reader)
        .await?;
        let target = sqlx::query_scalar(
            "SELECT rh.store_path FROM release_hosts rh JOIN releases r ON r.id = rh.release_id
             WHERE rh.host_id = $1 AND rh.release_id < $2 AND r.rollback = 0 AND rh.store_path <> $3
               AND rh.opened_at_ms IS NOT NULL
               AND EXISTS (SELECT 1 FROM activations a WHERE a.host_id = rh.host_id
                           AND a.store_path = rh.store_path AND a.result = 'confirmed')
             ORDER BY rh.release_id DESC LIMIT 1",
        )
        .bind(host_id)
        .bind(given_in.unwrap_or(from_release))
        .bind(&from)
        .fetch_optional(&self.reader)
        .await?;
        Ok(target)
    }

    /// The opened entries of one release whose hosts still exist.
    pub async fn opened_entries(&self, release_id: i64) -> Result<Vec<DesiredRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT rh.host_id, rh.release_id, rh.store_path FROM release_hosts rh
             JOIN hosts h ON h.id = rh.host_id
             WHERE rh.release_id = $1 AND rh.opened_at_ms IS NOT NULL",
        )
        .bind(release_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(desired_row).collect()
    }

    /// Every host's newest opened release entry: the desired state of the whole fleet.
    pub async fn desired_systems(&self) -> Result<Vec<DesiredRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT rh.host_id, rh.release_id, rh.store_path FROM release_hosts rh
             WHERE rh.release_id = (SELECT MAX(r2.release_id) FROM release_hosts r2
                                    WHERE r2.host_id = rh.host_id AND r2.opened_at_ms IS NOT NULL)",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(desired_row).collect()
    }
}
