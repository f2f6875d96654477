//! Storage: one set of SQL queries, run through sqlx's `Any` driver on SQLite (the embedded
//! default) or PostgreSQL (replicas). Each backend has its own migration set; the queries use
//! only the SQL both understand (`$n` parameters, `RETURNING`, BIGINT timestamps in seconds).

use sqlx::any::{AnyPoolOptions, AnyRow};
// Dynamic SQL here only splices the constant column lists below, never input.
use sqlx::{AnyPool, AssertSqlSafe, FromRow, Row};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("{0} already exists")]
    Conflict(&'static str),
}

impl StoreError {
    /// True when a UNIQUE or PRIMARY KEY constraint rejected a write.
    fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
    }
}

/// Maps a unique violation to `Conflict(what)`, everything else to `Db`.
fn conflict(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if StoreError::is_unique_violation(&e) {
            StoreError::Conflict(what)
        } else {
            StoreError::Db(e)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub key_id: String,
    pub public_key: String,
    pub role: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostRow {
    pub id: i64,
    pub name: String,
    pub key_id: String,
    pub public_key: String,
    pub approved_at: i64,
    pub approved_by: String,
    pub last_seen: Option<i64>,
    pub current_system: Option<String>,
    pub booted_system: Option<String>,
    pub state: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub last_result: Option<String>,
    pub last_result_path: Option<String>,
}

/// What a host last reported; written only when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostReport {
    pub current_system: Option<String>,
    pub booted_system: Option<String>,
    pub state: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RegistrationRow {
    pub key_id: String,
    pub public_key: String,
    pub hostname_hint: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub code: String,
    pub code_expires_at: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The network it registered from (see `service::enrollment::source_of`).
    pub source: String,
}

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
}

/// The provenance of a release about to be written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRelease {
    pub author: String,
    pub message: String,
    pub revision: Option<String>,
    pub dirty: bool,
}

const RELEASE_SELECT: &str = "SELECT r.id, r.author, r.message, r.created_at, r.revision, r.dirty, rh.host_name, rh.store_path
     FROM releases r JOIN release_hosts rh ON rh.release_id = r.id";

/// Folds joined release rows (ordered by release) into releases with their entries.
fn group_releases(rows: Vec<AnyRow>) -> Result<Vec<ReleaseRow>, sqlx::Error> {
    let mut out: Vec<ReleaseRow> = Vec::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let entry = (row.try_get("host_name")?, row.try_get("store_path")?);
        match out.last_mut() {
            Some(last) if last.id == id => last.entries.push(entry),
            _ => out.push(ReleaseRow {
                id,
                author: row.try_get("author")?,
                message: row.try_get("message")?,
                created_at: row.try_get("created_at")?,
                revision: row.try_get("revision")?,
                dirty: row.try_get::<i64, _>("dirty")? != 0,
                entries: vec![entry],
            }),
        }
    }
    Ok(out)
}

/// The newest release entry for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRow {
    pub host_id: i64,
    pub release_id: i64,
    pub store_path: String,
}

/// One activation attempt; `log_gzip` is loaded only when asked for.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActivationRow {
    pub id: i64,
    pub host_id: i64,
    pub host_name: String,
    pub store_path: String,
    pub release_id: Option<i64>,
    pub result: String,
    pub reason: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub reboot_required: i64,
}

/// The PostgreSQL channel on which replicas tell each other about changes.
pub const EVENTS_CHANNEL: &str = "yeet_events";

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Where the nonce log is written: one connection that does not wait for the disk on
    /// commit (see `record_nonces`).
    nonce_pool: AnyPool,
    backend: Backend,
    url: String,
}

/// Change events from other replicas (PostgreSQL `LISTEN`).
pub struct EventStream {
    listener: sqlx::postgres::PgListener,
}

impl EventStream {
    /// The next event. `Ok(None)` means the connection was lost and re-established: events
    /// may have been missed, so the caller should reload what it caches.
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .listener
            .try_recv()
            .await?
            .map(|n| n.payload().to_owned()))
    }
}

const HOST_COLUMNS: &str = "id, name, key_id, public_key, approved_at, approved_by, last_seen, current_system, booted_system, state, os, arch, agent_version, last_result, last_result_path";
const ACTIVATION_COLUMNS: &str = "id, host_id, host_name, store_path, release_id, result, reason, started_at, finished_at, reboot_required";
const REGISTRATION_COLUMNS: &str = "key_id, public_key, hostname_hint, os, arch, agent_version, code, code_expires_at, first_seen_ms, last_seen_ms, source";

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let max = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(url)
            .await?;
        // Nonce rows are written without waiting for the disk, on connections of their own.
        let relaxed = match backend {
            Backend::Sqlite => "PRAGMA synchronous=NORMAL",
            Backend::Postgres => "SET synchronous_commit TO OFF",
        };
        let nonce_pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                Box::pin(async move { sqlx::query(relaxed).execute(conn).await.map(drop) })
            })
            .connect(url)
            .await?;
        let store = Store {
            pool,
            nonce_pool,
            backend,
            url: url.to_owned(),
        };
        match backend {
            Backend::Sqlite => {
                // WAL lets readers proceed while a writer commits; it persists in the file.
                sqlx::query("PRAGMA journal_mode=WAL")
                    .execute(&store.pool)
                    .await?;
                sqlx::migrate!("./migrations/sqlite")
                    .run(&store.pool)
                    .await?;
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&store.pool)
                    .await?
            }
        }
        Ok(store)
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.nonce_pool.close().await;
    }

    // --- users ---

    pub async fn insert_user(
        &self,
        name: &str,
        key_id: &str,
        public_key: &str,
        role: &str,
        now: i64,
    ) -> Result<UserRow, StoreError> {
        sqlx::query_as::<_, UserRow>("INSERT INTO users (name, key_id, public_key, role, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id, name, key_id, public_key, role, created_at")
            .bind(name)
            .bind(key_id)
            .bind(public_key)
            .bind(role)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(conflict("a user with this name or key"))
    }

    pub async fn user_by_key(&self, key_id: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, key_id, public_key, role, created_at FROM users WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, key_id, public_key, role, created_at FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a user; returns its key id if it existed.
    pub async fn delete_user(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("DELETE FROM users WHERE name = $1 RETURNING key_id")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("key_id")).transpose()?)
    }

    // --- hosts ---

    pub async fn host_by_key(&self, key_id: &str) -> Result<Option<HostRow>, StoreError> {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE key_id = $1"
        )))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn host_by_name(&self, name: &str) -> Result<Option<HostRow>, StoreError> {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Turns a registration into a host, in one transaction: the registration must still
    /// exist, so two admins approving the same code cannot create two hosts.
    pub async fn approve_registration(
        &self,
        key_id: &str,
        name: &str,
        approved_by: &str,
        now: i64,
    ) -> Result<Option<HostRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(reg) = sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!(
            "DELETE FROM registrations WHERE key_id = $1 RETURNING {REGISTRATION_COLUMNS}"
        )))
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let host = sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "INSERT INTO hosts (name, key_id, public_key, approved_at, approved_by, os, arch, agent_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {HOST_COLUMNS}"
        )))
        .bind(name)
        .bind(&reg.key_id)
        .bind(&reg.public_key)
        .bind(now)
        .bind(approved_by)
        .bind(&reg.os)
        .bind(&reg.arch)
        .bind(&reg.agent_version)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict("a host with this name"))?;
        tx.commit().await?;
        Ok(Some(host))
    }

    pub async fn rename_host(&self, old: &str, new: &str) -> Result<Option<HostRow>, StoreError> {
        sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "UPDATE hosts SET name = $1 WHERE name = $2 RETURNING {HOST_COLUMNS}"
        )))
        .bind(new)
        .bind(old)
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict("a host with this name"))
    }

    pub async fn delete_host(&self, name: &str) -> Result<Option<HostRow>, StoreError> {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "DELETE FROM hosts WHERE name = $1 RETURNING {HOST_COLUMNS}"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn update_host_report(
        &self,
        host_id: i64,
        report: &HostReport,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET current_system = $1, booted_system = $2, state = $3, os = $4, arch = $5, agent_version = $6, last_seen = $7 WHERE id = $8")
            .bind(&report.current_system)
            .bind(&report.booted_system)
            .bind(&report.state)
            .bind(&report.os)
            .bind(&report.arch)
            .bind(&report.agent_version)
            .bind(now)
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes a batch of last-seen times in one transaction.
    pub async fn touch_hosts(&self, seen: &[(i64, i64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
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

    // --- nonces ---

    /// Records a batch of (key id, nonce, expiry) in one statement and returns the ones
    /// that were new; the others were seen before (replays, possibly via another replica).
    ///
    /// Nonce rows are written without waiting for the disk (SQLite `synchronous=NORMAL`,
    /// PostgreSQL `synchronous_commit = off`, both on the log's own connection):
    /// after a crash of the whole machine the last fraction of a second of nonces may be
    /// lost, which reopens those requests to replay until their timestamps go stale (at most
    /// the skew window); the database itself stays consistent. Waiting for an fsync per
    /// batch would cut the check-in rate by more than half.
    pub async fn record_nonces(
        &self,
        batch: &[(String, String, i64)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        if batch.is_empty() {
            return Ok(Default::default());
        }
        let values: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        // Only placeholders are formatted in; every value is bound.
        let sql = format!(
            "INSERT INTO nonces (key_id, nonce, expires_at) VALUES {} ON CONFLICT DO NOTHING RETURNING key_id, nonce",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (key, nonce, expires) in batch {
            query = query.bind(key).bind(nonce).bind(*expires);
        }
        let rows = query.fetch_all(&self.nonce_pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_id")?, r.try_get("nonce")?)))
            .collect()
    }

    /// Forgets nonces that can no longer pass the skew check.
    pub async fn delete_expired_nonces(&self, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM nonces WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    // --- registrations ---

    pub async fn registration_by_key(
        &self,
        key_id: &str,
    ) -> Result<Option<RegistrationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE key_id = $1"
        )))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn registration_by_code(
        &self,
        code: &str,
    ) -> Result<Option<RegistrationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!("SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE code = $1 ORDER BY code_expires_at DESC")))
            .bind(code)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_registrations(&self) -> Result<Vec<RegistrationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations ORDER BY first_seen_ms"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Inserts or refreshes a registration (one row per key).
    pub async fn upsert_registration(&self, r: &RegistrationRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registrations (key_id, public_key, hostname_hint, os, arch, agent_version, code, code_expires_at, first_seen_ms, last_seen_ms, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (key_id) DO UPDATE SET hostname_hint = $3, os = $4, arch = $5, agent_version = $6, code = $7, code_expires_at = $8, last_seen_ms = $10, source = $11",
        )
        .bind(&r.key_id)
        .bind(&r.public_key)
        .bind(&r.hostname_hint)
        .bind(&r.os)
        .bind(&r.arch)
        .bind(&r.agent_version)
        .bind(&r.code)
        .bind(r.code_expires_at)
        .bind(r.first_seen_ms)
        .bind(r.last_seen_ms)
        .bind(&r.source)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn count_registrations(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM registrations")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Removes one registration to make room: from the network (`source`) that holds the
    /// most pending keys, the one seen least recently there. A host waiting alone on its
    /// network is never evicted while a flooder holds more; among networks of equal size
    /// the one that arrived last loses, so hosts already waiting keep their codes.
    pub async fn evict_one_registration(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM registrations WHERE key_id IN (
               SELECT key_id FROM registrations WHERE source = (
                 SELECT source FROM registrations GROUP BY source
                 ORDER BY COUNT(*) DESC, MAX(first_seen_ms) DESC LIMIT 1)
               ORDER BY last_seen_ms, first_seen_ms DESC LIMIT 1)",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Rejects a pending registration for good: the key may not register again.
    pub async fn reject_registration(
        &self,
        key_id: &str,
        by: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM registrations WHERE key_id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO rejected_keys (key_id, rejected_at, rejected_by) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING")
            .bind(key_id)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn is_rejected(&self, key_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT key_id FROM rejected_keys WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    // --- releases ---

    /// Inserts a release with its (host id, host name, store path) entries atomically.
    pub async fn insert_release(
        &self,
        release: &NewRelease,
        now: i64,
        entries: &[(i64, String, String)],
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query("INSERT INTO releases (author, message, created_at, revision, dirty) VALUES ($1, $2, $3, $4, $5) RETURNING id")
            .bind(&release.author)
            .bind(&release.message)
            .bind(now)
            .bind(&release.revision)
            .bind(i64::from(release.dirty))
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
        for (host_id, host_name, path) in entries {
            sqlx::query("INSERT INTO release_hosts (release_id, host_id, host_name, store_path) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(*host_id)
                .bind(host_name)
                .bind(path)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// The newest `limit` releases, newest first; only those naming `host_id` if given.
    pub async fn list_releases(
        &self,
        host_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ReleaseRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{RELEASE_SELECT}
             WHERE r.id IN (SELECT id FROM releases WHERE $1 < 0 OR id IN (SELECT release_id FROM release_hosts WHERE host_id = $1) ORDER BY id DESC LIMIT $2)
             ORDER BY r.id DESC, rh.host_name"
        )))
        .bind(host_id.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(group_releases(rows)?)
    }

    // --- activations ---

    pub async fn host_by_id(&self, id: i64) -> Result<Option<HostRow>, StoreError> {
        Ok(sqlx::query_as::<_, HostRow>(AssertSqlSafe(format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records an activation and the host's newest result together.
    pub async fn record_activation(
        &self,
        a: &ActivationRow,
        log_gzip: &[u8],
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO activations (host_id, host_name, store_path, release_id, result, reason, started_at, finished_at, reboot_required, log_gzip)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(a.host_id)
        .bind(&a.host_name)
        .bind(&a.store_path)
        .bind(a.release_id)
        .bind(&a.result)
        .bind(&a.reason)
        .bind(a.started_at)
        .bind(a.finished_at)
        .bind(a.reboot_required)
        .bind(log_gzip)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        sqlx::query("UPDATE hosts SET last_result = $1, last_result_path = $2 WHERE id = $3")
            .bind(&a.result)
            .bind(&a.store_path)
            .bind(a.host_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A host's activations, newest first.
    pub async fn list_activations(
        &self,
        host_id: i64,
        limit: i64,
    ) -> Result<Vec<ActivationRow>, StoreError> {
        Ok(sqlx::query_as::<_, ActivationRow>(AssertSqlSafe(format!("SELECT {ACTIVATION_COLUMNS} FROM activations WHERE host_id = $1 ORDER BY id DESC LIMIT $2")))
            .bind(host_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A host's newest activation with its compressed log.
    pub async fn latest_activation_log(
        &self,
        host_id: i64,
    ) -> Result<Option<(ActivationRow, Vec<u8>)>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ACTIVATION_COLUMNS}, log_gzip FROM activations WHERE host_id = $1 ORDER BY id DESC LIMIT 1")))
            .bind(host_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((ActivationRow::from_row(&r)?, r.try_get("log_gzip")?)),
            None => None,
        })
    }

    // --- events between replicas ---

    /// Tells every replica (PostgreSQL `NOTIFY`) that something changed; a no-op on SQLite,
    /// where there is only one server process.
    pub async fn notify(&self, event: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(event)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Subscribes to other replicas' events; `None` on SQLite (a single process).
    pub async fn subscribe_events(&self) -> Result<Option<EventStream>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(Some(EventStream { listener }))
    }

    pub async fn release_by_id(&self, id: i64) -> Result<Option<ReleaseRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{RELEASE_SELECT} WHERE r.id = $1 ORDER BY rh.host_name"
        )))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(group_releases(rows)?.pop())
    }

    /// The store paths of every host's newest `keep` releases.
    pub async fn paths_of_newest_releases(&self, keep: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_id, store_path FROM release_hosts ORDER BY host_id, release_id DESC",
        )
        .fetch_all(&self.pool)
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

    /// The ids of the hosts a release names (they follow renames; names do not).
    pub async fn release_host_ids(&self, release_id: i64) -> Result<Vec<i64>, StoreError> {
        let rows =
            sqlx::query("SELECT host_id FROM release_hosts WHERE release_id = $1 ORDER BY host_id")
                .bind(release_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("host_id"))
            .collect::<Result<_, _>>()?)
    }

    /// The system a host had in the newest release before `release_id`.
    pub async fn path_before(
        &self,
        host_id: i64,
        release_id: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT store_path FROM release_hosts WHERE host_id = $1 AND release_id < $2 ORDER BY release_id DESC LIMIT 1")
            .bind(host_id)
            .bind(release_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("store_path")).transpose()?)
    }

    /// Every host's newest release entry: the desired state of the whole fleet.
    pub async fn desired_systems(&self) -> Result<Vec<DesiredRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT rh.host_id, rh.release_id, rh.store_path FROM release_hosts rh
             WHERE rh.release_id = (SELECT MAX(r2.release_id) FROM release_hosts r2 WHERE r2.host_id = rh.host_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DesiredRow {
                    host_id: r.try_get("host_id")?,
                    release_id: r.try_get("release_id")?,
                    store_path: r.try_get("store_path")?,
                })
            })
            .collect()
    }
}
