//! Storage: one set of SQL queries, run through sqlx's `Any` driver on SQLite (the embedded
//! default) or PostgreSQL (replicas). Each backend has its own migration set; the queries use
//! only the SQL both understand (`$n` parameters, `RETURNING`, BIGINT timestamps in seconds).

//!
//! One file per table (or pair of tables that change together). Dynamic SQL in them only
//! splices their constant column lists, never input (`AssertSqlSafe`).

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection};
use thiserror::Error;

mod activations;
mod audit;
mod detachments;
mod events;
mod hosts;
mod named;
mod nonces;
mod osquery_data;
mod osquery_nodes;
mod registrations;
mod releases;
mod rollouts;
mod secrets;
mod users;

pub use activations::ActivationRow;
pub use audit::{AuditEntry, REQUEST, RequestOrigin};
pub use detachments::{DetachmentRow, EndedDetachment};
pub use events::{EVENTS_CHANNEL, EventStream};
pub use hosts::{HostReport, HostRow, join_tags, split_tags};
pub use named::NamedSpec;
pub use osquery_data::{
    CampaignRow, CarveRow, LogQuery, LogRow, NewLogLine, TargetAnswer, TargetRow,
};
pub use osquery_nodes::{Enrolled, NodeEnrollment, NodeRow, OptionRow, ScheduledQueryRow};
pub use registrations::RegistrationRow;
pub use releases::{DesiredRow, NewRelease, ReleaseRow};
pub use rollouts::{NewRollout, RollbackRelease, RolloutHostRow, RolloutRow, Transition};
pub use secrets::{Change, ChangeRow, GrantRow, SecretRow, TagGrantRow};
pub use users::{UserChange, UserKeyRow, UserRefusal, UserRow};

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
    #[error(
        "cannot connect to the database at {target}: {source}; is it running, and is the database URL right?"
    )]
    Connect { target: String, source: sqlx::Error },
    #[error(
        "cannot open the nonce log {path}: {source}; it holds only the nonces of the last minutes' requests, so move it aside and restart (requests from those minutes could be replayed once)"
    )]
    NonceLog { path: String, source: sqlx::Error },
    #[error(
        "cannot lock {path} to bring the database's schema up to date: {source}; is the database's directory writable?"
    )]
    MigrationLock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the database's {0} setting holds {1:?}, which is not a number; delete that row from the settings table and restart the servers"
    )]
    CorruptSetting(&'static str, String),
    #[error(
        "the {what} {name:?} in the database cannot be read ({why}); set it again with `{fix}`"
    )]
    CorruptSpec {
        what: &'static str,
        fix: &'static str,
        name: String,
        why: String,
    },
}

impl StoreError {
    /// True when the database could not answer in time, though nothing is wrong with the
    /// request: no connection free within the pool's wait, SQLite's write lock held past
    /// its busy timeout, PostgreSQL out of connections or a lock.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::PoolTimedOut) => true,
            StoreError::Db(sqlx::Error::Database(d)) => {
                // SQLITE_BUSY and SQLITE_LOCKED with their extended codes; PostgreSQL's
                // too_many_connections and lock_not_available.
                let busy_code = d.code().is_some_and(|c| {
                    matches!(
                        c.as_ref(),
                        "5" | "6" | "261" | "262" | "517" | "518" | "773" | "53300" | "55P03"
                    )
                });
                busy_code
                    || d.message().contains("database is locked")
                    || d.message().contains("database is busy")
            }
            _ => false,
        }
    }

    /// True when a UNIQUE or PRIMARY KEY constraint rejected a write.
    fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
    }
}

/// A transaction on either backend, for writes that several tables make together.
pub(super) type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// Ids spliced into an `IN (...)` list: they are integers, so nothing else can get in. An
/// empty list matches nothing.
pub(super) fn id_list(ids: &[i64]) -> String {
    if ids.is_empty() {
        return "NULL".into();
    }
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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

/// A column that holds an enum's wire name (`AgentState`, `Role`, ...), decoded by parsing
/// it. An unknown name (a corrupt row, a downgrade) is a decode error that names the value,
/// which the service logs; it never turns into a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire<T>(pub T);

impl<T> sqlx::Type<sqlx::Any> for Wire<T> {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <String as sqlx::Type<sqlx::Any>>::type_info()
    }
}

impl<'r, T: std::str::FromStr<Err = String>> sqlx::Decode<'r, sqlx::Any> for Wire<T> {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <String as sqlx::Decode<sqlx::Any>>::decode(value)?;
        Ok(Wire(text.parse()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite's writer connections. Two, not one: at most one write waits in SQLite's busy
/// handler while the other commits, and a connection that never comes back to the pool
/// (seen once in CI after a host lost power mid-request, not understood yet; the server's
/// log says so, see `writer_is_idle`) slows writes down instead of stopping them all.
const SQLITE_WRITERS: u32 = 2;

/// How long a request waits for a database connection before it is answered `503 busy`
/// (the pool's own default, 30 s, outlasts the clients' patience).
const CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Store {
    /// Where reads go. On SQLite: WAL readers of their own (`query_only`), so that no read
    /// waits behind a write, whatever holds the write lock. On PostgreSQL: the one pool.
    reader: AnyPool,
    /// Where writes go. On SQLite: `SQLITE_WRITERS` connections, since SQLite lets one
    /// writer in at a time anyway; writers queue in the pool (and are answered `busy`
    /// after `CONNECTION_WAIT`) instead of spinning in SQLite's busy handler. On
    /// PostgreSQL: the same pool as `reader`.
    writer: AnyPool,
    /// Where the nonce log is written: one connection that does not wait for the disk on
    /// commit (see `record_nonces`). On SQLite the log is a database file of its own
    /// (`<database>.nonces`, with the main database attached for its settings), so that
    /// authenticating a read never waits for the main database's write lock.
    nonce_pool: AnyPool,
    backend: Backend,
    url: String,
}

impl Store {
    /// Connects and brings the schema up to date. `max_connections` sizes the pool that
    /// serves reads (`None`: 4 on SQLite, 16 on PostgreSQL, where it serves writes too).
    pub async fn open(url: &str, max_connections: Option<u32>) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let max = max_connections.unwrap_or(match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        });
        // One connection first: its failure is the database's own error (refused, no such
        // file, bad password), where the pool would retry until its wait ran out and then
        // say only that it timed out.
        let first = tokio::time::timeout(CONNECTION_WAIT, sqlx::AnyConnection::connect(url))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
            .map_err(|source| StoreError::Connect {
                target: without_password(url),
                source,
            })?;
        let _ = first.close().await;
        let (reader, writer, nonce_pool) = match backend {
            Backend::Sqlite => {
                let writer = AnyPoolOptions::new()
                    .max_connections(SQLITE_WRITERS)
                    .acquire_timeout(CONNECTION_WAIT)
                    .connect(url)
                    .await?;
                // SQLite's migrator takes no lock of its own: a server starting while
                // `yeet-server admin add` opens the same fresh file would run each
                // migration twice ("table already exists").
                let lock = sqlite_migration_lock(&writer).await?;
                // WAL lets readers proceed while a writer commits; it persists in the file.
                sqlx::query("PRAGMA journal_mode=WAL")
                    .execute(&writer)
                    .await?;
                sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
                drop(lock);
                let reader = on_each_connection(
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .acquire_timeout(CONNECTION_WAIT),
                    "PRAGMA query_only=ON",
                )
                .connect(url)
                .await?;
                let nonce_pool = sqlite_nonce_log(url, &writer).await?;
                (reader, writer, nonce_pool)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(CONNECTION_WAIT)
                    .connect(url)
                    .await?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                // Nonce rows are written without waiting for the disk, on a connection of
                // their own.
                let nonce_pool = on_each_connection(
                    AnyPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(CONNECTION_WAIT),
                    "SET synchronous_commit TO OFF",
                )
                .connect(url)
                .await?;
                (pool.clone(), pool, nonce_pool)
            }
        };
        Ok(Store {
            reader,
            writer,
            nonce_pool,
            backend,
            url: url.to_owned(),
        })
    }

    /// The pools' connections, open and idle, for the log when the database is busy: a
    /// writer that stays open and never idle is held by someone.
    pub fn pool_state(&self) -> String {
        let pool = |p: &AnyPool| format!("{} open, {} idle", p.size(), p.num_idle());
        format!(
            "writer: {}; readers: {}; nonce log: {}",
            pool(&self.writer),
            pool(&self.reader),
            pool(&self.nonce_pool)
        )
    }

    /// True when every open writer connection is in its pool now.
    pub fn writer_is_idle(&self) -> bool {
        self.writer.num_idle() >= self.writer.size() as usize
    }

    /// A write transaction that runs alone among those taking the same `lock`, for rules
    /// that read before they write (the last admin; later, the audit chain): on SQLite
    /// `BEGIN IMMEDIATE` takes the database's write lock from the start, so no other
    /// writer's commit can slip between the read and the write; on PostgreSQL a
    /// transaction-scoped advisory lock serialises it across replicas.
    pub(crate) async fn exclusive(
        &self,
        lock: i64,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.writer.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// True on PostgreSQL, where other replicas may change what this one serves.
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
        self.nonce_pool.close().await;
    }
}

/// A database URL fit for messages and logs: a password in it is replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

/// The nonce log of a SQLite database: its own file next to the database, written without
/// waiting for the disk (`synchronous=NORMAL`), with the main database attached as `yeet`
/// so that expiry can read the nonce horizon from its settings. Rows an older version kept
/// in the main database are moved over once. An in-memory database keeps its log inside.
/// The file of the SQLite database behind `writer`, or `None` for an in-memory one.
async fn sqlite_main_file(writer: &AnyPool) -> Result<Option<String>, StoreError> {
    let main_file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(writer)
            .await?;
    Ok(Some(main_file).filter(|f| !f.is_empty()))
}

/// An exclusive lock, across processes, on migrating the SQLite database behind `writer`:
/// a `flock` on `<database>.migrate-lock`, released when the returned file is dropped (or
/// the process dies). `None` for an in-memory database, which no other process can open.
async fn sqlite_migration_lock(writer: &AnyPool) -> Result<Option<std::fs::File>, StoreError> {
    let Some(main_file) = sqlite_main_file(writer).await? else {
        return Ok(None);
    };
    let path = format!("{main_file}.migrate-lock");
    let locked = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            Ok(file)
        }
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r);
    locked
        .map(Some)
        .map_err(|source| StoreError::MigrationLock { path, source })
}

async fn sqlite_nonce_log(url: &str, writer: &AnyPool) -> Result<AnyPool, StoreError> {
    let one_connection =
        |pool: AnyPoolOptions| pool.max_connections(1).acquire_timeout(CONNECTION_WAIT);
    let Some(main_file) = sqlite_main_file(writer).await? else {
        return Ok(on_each_connection(
            one_connection(AnyPoolOptions::new()),
            "PRAGMA synchronous=NORMAL",
        )
        .connect(url)
        .await?);
    };
    // The URL's path is percent-decoded by sqlx: escape what would otherwise end it.
    let nonce_file = format!("{main_file}.nonces")
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    let nonce_url = format!("sqlite://{nonce_file}?mode=rwc");
    let unusable = |source| StoreError::NonceLog {
        path: format!("{main_file}.nonces"),
        source,
    };
    // One connection first, whose failure is the file's own error: the pool would only
    // retry until its wait ran out and then say that it timed out.
    let mut first = sqlx::AnyConnection::connect(&nonce_url)
        .await
        .map_err(unusable)?;
    prepare_nonce_log(&mut first, main_file.clone())
        .await
        .map_err(unusable)?;
    first.close().await.map_err(unusable)?;
    let attach = main_file.clone();
    let pool = one_connection(AnyPoolOptions::new())
        .after_connect(move |conn, _| Box::pin(prepare_nonce_log(conn, attach.clone())))
        .connect(&nonce_url)
        .await
        .map_err(unusable)?;
    let left_behind: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM yeet.request_nonces")
        .fetch_one(&pool)
        .await?;
    if left_behind > 0 {
        sqlx::query("INSERT OR IGNORE INTO request_nonces SELECT signed_at, key_id, nonce FROM yeet.request_nonces")
            .execute(&pool)
            .await?;
        sqlx::query("DELETE FROM request_nonces")
            .execute(writer)
            .await?;
    }
    Ok(pool)
}

/// Pool options that run `statement` (a setting) on every connection the pool opens.
fn on_each_connection(options: AnyPoolOptions, statement: &'static str) -> AnyPoolOptions {
    options.after_connect(move |conn, _| {
        Box::pin(async move { sqlx::query(statement).execute(conn).await.map(drop) })
    })
}

/// Readies a connection to the nonce log: WAL, commits that do not wait for the disk,
/// the table, and the main database attached as `yeet`.
async fn prepare_nonce_log(
    conn: &mut sqlx::AnyConnection,
    main_file: String,
) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA journal_mode=WAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("PRAGMA synchronous=NORMAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS request_nonces (\
         signed_at BIGINT NOT NULL, key_id TEXT NOT NULL, nonce TEXT NOT NULL, \
         PRIMARY KEY (signed_at, key_id, nonce)) WITHOUT ROWID",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("ATTACH DATABASE $1 AS yeet")
        .bind(main_file)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password never reaches a message; the rest of the URL does.
    #[test]
    fn passwords_are_left_out_of_database_urls() {
        for (url, shown) in [
            (
                "postgres://yeet:s3cret@db.internal:5432/yeet",
                "postgres://yeet:***@db.internal:5432/yeet",
            ),
            (
                "postgres://yeet@db.internal/yeet",
                "postgres://yeet@db.internal/yeet",
            ),
            (
                "postgresql://a:b:c@h/d?sslmode=require",
                "postgresql://a:***@h/d?sslmode=require",
            ),
            (
                "sqlite:///var/lib/yeet-server/yeet.db?mode=rwc",
                "sqlite:///var/lib/yeet-server/yeet.db?mode=rwc",
            ),
        ] {
            assert_eq!(without_password(url), shown);
        }
    }

    /// An unreachable PostgreSQL is named with the database's own error at once, not after
    /// the pool's wait as "pool timed out".
    #[tokio::test]
    async fn an_unreachable_database_is_named_with_its_error() {
        let err = Store::open("postgres://yeet:pw@127.0.0.1:1/yeet", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot connect to the database at postgres://yeet:***@127.0.0.1:1/yeet")
                && err.to_lowercase().contains("refused")
                && !err.contains("pw@"),
            "{err}"
        );
    }

    /// A writer connection held outside the pool is seen (the server's log reports one
    /// held for long), and the other writer still takes writes meanwhile.
    #[tokio::test]
    async fn a_held_writer_is_seen_and_the_other_still_writes() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("y.db").display());
        let store = Store::open(&url, None).await?;
        assert!(store.writer_is_idle(), "{}", store.pool_state());
        let held = store.writer.acquire().await?;
        assert!(!store.writer_is_idle(), "{}", store.pool_state());
        store.setting_or_insert("probe", "1").await?;
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !store.writer_is_idle() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the writer came back to the pool");
        store.close().await;
        Ok(())
    }

    /// `database_max_connections` reaches the readers' pool; SQLite's writers and the nonce
    /// log keep theirs.
    #[tokio::test]
    async fn the_request_pool_is_sized_as_configured() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("y.db").display());
        for (configured, expected) in [(Some(2), 2), (Some(40), 40), (None, 4)] {
            let store = Store::open(&url, configured).await?;
            assert_eq!(store.reader.options().get_max_connections(), expected);
            assert_eq!(store.writer.options().get_max_connections(), SQLITE_WRITERS);
            assert_eq!(store.nonce_pool.options().get_max_connections(), 1);
            store.close().await;
        }
        Ok(())
    }
}
