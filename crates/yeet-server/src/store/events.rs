//! Change events between replicas: PostgreSQL `NOTIFY`/`LISTEN`; nothing on SQLite.

use super::{Backend, Store, StoreError};

/// The PostgreSQL channel on which replicas tell each other about changes.
pub const EVENTS_CHANNEL: &str = "yeet_events";

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

impl Store {
    /// Tells every replica (PostgreSQL `NOTIFY`) that something changed; a no-op on SQLite,
    /// where there is only one server process.
    pub async fn notify(&self, event: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(event)
                .execute(&self.writer)
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
}
