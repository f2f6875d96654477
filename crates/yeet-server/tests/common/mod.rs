//! Test backends: a fresh SQLite file, or a fresh database on the real PostgreSQL at
//! 127.0.0.1:5432 (override with YEET_TEST_POSTGRES). PostgreSQL tests never skip: when no
//! server answers they fail, and the README's test command starts one before running them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use sqlx::{AnyPool, Executor};
use yeet_server::store::Store;

pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_admin_url() -> String {
    std::env::var("YEET_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_PG.to_owned())
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).unwrap();
    format!(
        "{prefix}_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// An audit event for store calls made by a test, as `yeet-server admin` would record it.
pub fn ev() -> yeet_server::store::AuditEntry {
    yeet_server::service::audit::local_entry("test", serde_json::json!({}))
}

/// A database that lives as long as the test; dropped databases are removed best-effort.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("yeet.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            pg_name: None,
        }
    }

    pub async fn postgres() -> TestDb {
        sqlx::any::install_default_drivers();
        let admin = pg_admin_url();
        let pool = AnyPool::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test (the README's test command starts one): {e}"));
        let name = unique("yeet_test");
        pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TestDb {
            url: format!("{base}/{name}"),
            _dir: None,
            pg_name: Some(name),
        }
    }

    /// The SQLite database's directory.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.as_ref().expect("a SQLite test database").path()
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.url, None).await.unwrap()
    }

    /// Drops the PostgreSQL database (call after closing every pool on it).
    pub async fn cleanup(self) {
        let Some(name) = &self.pg_name else { return };
        if let Ok(pool) = AnyPool::connect(&pg_admin_url()).await {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = pool.execute(sqlx::AssertSqlSafe(drop)).await;
            pool.close().await;
        }
    }
}

/// Runs one async test body against both backends, as two separate tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let db = $crate::common::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
                #[tokio::test]
                async fn postgres() {
                    let db = $crate::common::TestDb::postgres().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            }
        )*
    };
}

/// A registration of key `key` with code `code`, seen at `seen` (milliseconds).
pub fn registration(key: &str, code: &str, seen: i64) -> yeet_server::store::RegistrationRow {
    yeet_server::store::RegistrationRow {
        key_id: key.into(),
        public_key: format!("ssh-ed25519 {key}"),
        hostname_hint: format!("hint-{key}"),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        code: code.into(),
        code_expires_at: seen + 900,
        first_seen_ms: seen,
        last_seen_ms: seen,
        source: "10.0.0.1".into(),
        suggested_tags: String::new(),
    }
}

/// An approved host named `name` with key `key`; its id.
pub async fn host(store: &Store, key: &str, name: &str) -> i64 {
    store
        .upsert_registration(&registration(key, &format!("C{key}"), 1))
        .await
        .unwrap();
    store
        .approve_registration(key, name, "alice", &Default::default(), false, &ev())
        .await
        .unwrap()
        .unwrap()
        .id
}
