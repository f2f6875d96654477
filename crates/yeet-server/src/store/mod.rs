//! Storage: one set of SQL queries, run through sqlx's `Any` driver on SQLite (the embedded
//! default) or PostgreSQL (replicas). Each backend has its own migration set; the queries use
//! only the SQL both understand (`$n` parameters, `RETURNING`, BIGINT timestamps in seconds).

//!
//! One file per table (or pair of tables that change together). Dynamic SQL in them only
//! splices their constant column lists, never input (`AssertSqlSafe`).

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use thiserror::Error;

mod activations;
mod detachments;
mod events;
mod hosts;
mod nonces;
mod osquery_data;
mod osquery_nodes;
mod registrations;
mod releases;
mod secrets;
mod users;

pub use activations::ActivationRow;
pub use detachments::{DetachmentRow, EndedDetachment};
pub use events::{EVENTS_CHANNEL, EventStream};
pub use hosts::{HostReport, HostRow};
pub use osquery_data::{
    CampaignRow, CarveRow, LogQuery, LogRow, NewLogLine, TargetAnswer, TargetRow,
};
pub use osquery_nodes::{Enrolled, NodeEnrollment, NodeRow, OptionRow, ScheduledQueryRow};
pub use registrations::RegistrationRow;
pub use releases::{DesiredRow, NewRelease, ReleaseRow};
pub use secrets::{Change, ChangeRow, GrantRow, SecretRow};
pub use users::UserRow;

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
        "the database's {0} setting holds {1:?}, which is not a number; delete that row from the settings table and restart the servers"
    )]
    CorruptSetting(&'static str, String),
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

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Where the nonce log is written: one connection that does not wait for the disk on
    /// commit (see `record_nonces`).
    nonce_pool: AnyPool,
    backend: Backend,
    url: String,
}

impl Store {
    /// Connects and brings the schema up to date. `max_connections` sizes the request
    /// pool (`None`: 4 on SQLite, 16 on PostgreSQL).
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `database_max_connections` reaches the request pool; the nonce log keeps its one.
    #[tokio::test]
    async fn the_request_pool_is_sized_as_configured() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("y.db").display());
        for (configured, expected) in [(Some(2), 2), (Some(40), 40), (None, 4)] {
            let store = Store::open(&url, configured).await?;
            assert_eq!(store.pool.options().get_max_connections(), expected);
            assert_eq!(store.nonce_pool.options().get_max_connections(), 1);
            store.close().await;
        }
        Ok(())
    }
}
