//! The `audit_events` and `audit_hosts` tables: the hash-chained audit log. Events are
//! appended inside the transaction of the change they record (`append_audit`), so a change
//! and its event commit or roll back together; appends are serialised so that the chain
//! never forks, whichever replica writes.

use sqlx::Row;
use yeet_proto::audit::{AuditEvent, AuditFilter, GENESIS, event_hash};

use super::{Backend, Store, StoreError, Tx};

/// The advisory lock that serialises appends on PostgreSQL ("yeetau").
const AUDIT_LOCK: i64 = 0x7965_6574_6175;

/// Host names resolved to ids per statement (bounded parameter lists).
const HOSTS_PER_STATEMENT: usize = 500;

/// What the HTTP layer knows of the request being served, for its events.
#[derive(Debug, Default)]
pub struct RequestOrigin {
    pub address: String,
    pub nonce: String,
    /// Events appended for this request so far (committed or not).
    pub events: std::sync::atomic::AtomicUsize,
}

tokio::task_local! {
    /// The request being served, set by the HTTP layer around its handler.
    pub static REQUEST: RequestOrigin;
}

/// An event about to be appended; the store adds its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub key_id: String,
    pub action: String,
    pub outcome: String,
    /// The names of the hosts it is about; the store links the ones that exist (after the
    /// change) by id, so that a scoped listing finds them after a rename.
    pub hosts: Vec<String>,
    pub details: serde_json::Value,
    pub address: String,
    pub nonce: String,
}

const EVENT_COLUMNS: &str =
    "id, at_ms, actor, key_id, action, outcome, hosts, details, address, nonce, prev_hash, hash";

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<AuditEvent, StoreError> {
    let details: String = row.try_get("details")?;
    let hosts: String = row.try_get("hosts")?;
    Ok(AuditEvent {
        seq: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        actor: row.try_get("actor")?,
        key_id: row.try_get("key_id")?,
        action: row.try_get("action")?,
        outcome: row.try_get("outcome")?,
        hosts: super::split_tags(&hosts),
        // A row edited into invalid JSON still verifies as altered, not as an error.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        address: row.try_get("address")?,
        nonce: row.try_get("nonce")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl Store {
    /// Appends `entry` to the chain inside `tx`, after every event committed before it:
    /// the row is inserted first (on SQLite that takes the write lock; on PostgreSQL the
    /// advisory lock is taken before), so the predecessor it reads cannot change before
    /// commit. Returns the event's `seq`.
    pub(crate) async fn append_audit(
        &self,
        tx: &mut Tx<'_>,
        entry: &AuditEntry,
    ) -> Result<i64, StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        let mut hosts = entry.hosts.clone();
        hosts.sort();
        hosts.dedup();
        let details = entry.details.to_string();
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO audit_events (at_ms, actor, key_id, action, outcome, hosts, details, address, nonce, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '', '') RETURNING id",
        )
        .bind(entry.at_ms)
        .bind(&entry.actor)
        .bind(&entry.key_id)
        .bind(&entry.action)
        .bind(&entry.outcome)
        .bind(hosts.join(" "))
        .bind(&details)
        .bind(&entry.address)
        .bind(&entry.nonce)
        .fetch_one(&mut **tx)
        .await?;
        let prev_hash: String = sqlx::query_scalar(
            "SELECT hash FROM audit_events WHERE id < $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or_else(|| GENESIS.to_owned());
        let hash = event_hash(
            &prev_hash,
            entry.at_ms,
            &entry.actor,
            &entry.key_id,
            &entry.action,
            &entry.outcome,
            &hosts,
            &details,
            &entry.address,
            &entry.nonce,
        );
        sqlx::query("UPDATE audit_events SET prev_hash = $1, hash = $2 WHERE id = $3")
            .bind(&prev_hash)
            .bind(&hash)
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        let _ = REQUEST.try_with(|r| r.events.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        for names in hosts.chunks(HOSTS_PER_STATEMENT) {
            let placeholders = (0..names.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO audit_hosts (host_id, event_id) SELECT id, $1 FROM hosts WHERE name IN ({placeholders})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(seq);
            for name in names {
                query = query.bind(name);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(seq)
    }

    /// Appends an event in a transaction of its own: a refusal, or an action whose change
    /// is not in the database (the embedded cache's garbage collection).
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let mut tx = self.exclusive(AUDIT_LOCK).await?;
        let seq = self.append_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Events matching `filter`, oldest first, at most `limit` and about `max_bytes` of
    /// details; `scope`, when given, keeps only the events about those host ids or by that
    /// actor. True with them when more may follow.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        scope: Option<(&[i64], &str)>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<(Vec<AuditEvent>, bool), StoreError> {
        let mut conditions = vec!["id > $1".to_owned()];
        let mut binds: Vec<String> = Vec::new();
        let mut bind = |value: String, conditions: &mut Vec<String>, sql: &str| {
            binds.push(value);
            conditions.push(sql.replace('?', &format!("${}", binds.len() + 1)));
        };
        if let Some(host) = &filter.host {
            // A host name holds no space or '%' (names::validate_host_name), but may hold
            // '_', which LIKE reads as any letter.
            let escaped = host
                .replace('\\', "\\\\")
                .replace('_', "\\_")
                .replace('%', "\\%");
            bind(
                format!("% {escaped} %"),
                &mut conditions,
                "(' ' || hosts || ' ') LIKE ? ESCAPE '\\'",
            );
        }
        if let Some(user) = &filter.user {
            bind(user.clone(), &mut conditions, "actor = ?");
        }
        if let Some(action) = &filter.action {
            // `host` matches every `host.*` action; action names hold no LIKE wildcard
            // but '_', escaped.
            bind(
                action.clone(),
                &mut conditions,
                "(action = ? OR action LIKE (replace(?, '_', '\\_') || '.%') ESCAPE '\\')",
            );
        }
        if let Some((ids, actor)) = scope {
            // Ids are integers, spliced as such.
            let about = if ids.is_empty() {
                String::new()
            } else {
                format!(
                    "id IN (SELECT event_id FROM audit_hosts WHERE host_id IN ({})) OR ",
                    super::id_list(ids)
                )
            };
            bind(
                actor.to_owned(),
                &mut conditions,
                &format!("({about}actor = ?)"),
            );
        }
        let since = filter.since_ms.unwrap_or(i64::MIN);
        let order = if filter.newest { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE {} AND at_ms >= {since} ORDER BY id {order} LIMIT {limit}",
            conditions.join(" AND "),
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(filter.after.unwrap_or(0));
        for value in &binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.reader).await?;
        let mut more = rows.len() >= limit as usize;
        let mut events = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in &rows {
            let event = event_from_row(row)?;
            bytes += event.details.to_string().len()
                + event.hosts.iter().map(String::len).sum::<usize>();
            events.push(event);
            if bytes >= max_bytes {
                more |= events.len() < rows.len();
                break;
            }
        }
        if filter.newest {
            events.reverse();
        }
        Ok((events, more))
    }

    /// The whole chain, oldest first, in pages (for verification).
    pub async fn audit_chain(&self) -> Result<Vec<AuditEvent>, StoreError> {
        let mut events: Vec<AuditEvent> = Vec::new();
        loop {
            let filter = AuditFilter {
                after: events.last().map(|e| e.seq),
                ..Default::default()
            };
            let (page, more) = self.list_audit(&filter, None, 1000, usize::MAX).await?;
            events.extend(page);
            if !more {
                return Ok(events);
            }
        }
    }

    /// Retention: drops the events recorded before `cutoff_ms` (the oldest ones, always
    /// keeping the newest event so that the chain goes on from it), and appends
    /// `checkpoint` with what was dropped and the hash of the last dropped event, which
    /// the first kept event links to. One exclusive transaction; `None` when nothing was
    /// old enough.
    pub async fn drop_audit_before(
        &self,
        cutoff_ms: i64,
        checkpoint: &AuditEntry,
    ) -> Result<Option<i64>, StoreError> {
        // Most runs find nothing: checked without the lock first.
        let old: Option<i64> =
            sqlx::query_scalar("SELECT id FROM audit_events WHERE at_ms < $1 LIMIT 1")
                .bind(cutoff_ms)
                .fetch_optional(&self.reader)
                .await?;
        if old.is_none() {
            return Ok(None);
        }
        let mut tx = self.exclusive(AUDIT_LOCK).await?;
        let last: Option<(i64, String)> = sqlx::query(
            "SELECT id, hash FROM audit_events WHERE at_ms < $1 AND id < (SELECT MAX(id) FROM audit_events) ORDER BY id DESC LIMIT 1",
        )
        .bind(cutoff_ms)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| Ok::<_, sqlx::Error>((row.try_get("id")?, row.try_get("hash")?)))
        .transpose()?;
        let Some((last_seq, last_hash)) = last else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM audit_hosts WHERE event_id <= $1")
            .bind(last_seq)
            .execute(&mut *tx)
            .await?;
        let dropped = sqlx::query("DELETE FROM audit_events WHERE id <= $1")
            .bind(last_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        let mut checkpoint = checkpoint.clone();
        if let Some(details) = checkpoint.details.as_object_mut() {
            details.insert("dropped".into(), dropped.into());
            details.insert("last_dropped_seq".into(), last_seq.into());
            details.insert("last_dropped_hash".into(), last_hash.into());
        }
        self.append_audit(&mut tx, &checkpoint).await?;
        tx.commit().await?;
        Ok(Some(dropped))
    }

    /// Events after `after`, oldest first, at most `limit` (for the audit file).
    pub async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let filter = AuditFilter {
            after: Some(after),
            ..Default::default()
        };
        Ok(self.list_audit(&filter, None, limit, usize::MAX).await?.0)
    }
}
