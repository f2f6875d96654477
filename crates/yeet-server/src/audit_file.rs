//! `audit_log_file`: every audit event, as one JSON object per line, appended to a file for
//! a SIEM to follow. The database is the source; the file follows it a second or so behind,
//! at least once: an event is written after it committed, the file is synced, and only
//! then is the cursor (the `seq` of the last event written) saved next to it
//! (`<file>.seq`). After a crash or restart the cursor is the larger of that and the `seq`
//! on the file's last complete line (a half-written last line is cut off first), so
//! nothing is skipped; an event may at worst be written twice. A file rotated away (by
//! logrotate) is created anew and continues where the old one ended.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::service::Service;

/// Events read from the database per write.
const BATCH: u32 = 500;
/// How far back from its end the file is read for its last line, per step.
const TAIL_STEP: u64 = 64 << 10;

/// The cursor file next to `path`.
fn cursor_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".seq");
    PathBuf::from(name)
}

/// The `seq` of the last complete line of the file at `path` (0 when it has none), after
/// cutting off a half-written last line.
fn last_seq_in_file(path: &Path) -> std::io::Result<i64> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // Read backwards until the tail holds a whole line before its end.
    let mut start = len;
    let mut tail = Vec::new();
    loop {
        let step = TAIL_STEP.min(start);
        start -= step;
        let mut chunk = vec![0; step as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let complete_end = tail.iter().rposition(|&b| b == b'\n');
        let line_start = complete_end.and_then(|end| tail[..end].iter().rposition(|&b| b == b'\n'));
        if line_start.is_some() || start == 0 {
            let Some(end) = complete_end else {
                // No complete line at all: the whole file is a half-written line.
                file.set_len(0)?;
                return Ok(0);
            };
            if (end as u64) + 1 < tail.len() as u64 {
                file.set_len(start + end as u64 + 1)?;
            }
            let from = line_start.map_or(0, |s| s + 1);
            let seq = serde_json::from_slice::<serde_json::Value>(&tail[from..end])
                .ok()
                .and_then(|v| v.get("seq")?.as_i64())
                .unwrap_or(0);
            return Ok(seq);
        }
    }
}

/// Where the file continues from.
fn resume_from(path: &Path) -> std::io::Result<i64> {
    let saved = match std::fs::read_to_string(cursor_path(path)) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok(saved.max(last_seq_in_file(path)?))
}

/// Appends `lines` to the file and syncs it, then saves `seq` as the cursor.
fn append(path: &Path, lines: &[u8], seq: i64) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(lines)?;
    file.sync_data()?;
    let cursor = cursor_path(path);
    let temporary = cursor.with_extension("seq.tmp");
    std::fs::write(&temporary, format!("{seq}\n"))?;
    std::fs::rename(&temporary, &cursor)
}

/// Writes every event after `cursor` to the file; returns the new cursor.
async fn export(service: &Service, path: &Path, mut cursor: i64) -> Result<i64, String> {
    loop {
        let events = service
            .store()
            .audit_after(cursor, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(cursor);
        };
        let mut lines = Vec::new();
        for event in &events {
            serde_json::to_writer(&mut lines, event).map_err(|e| e.to_string())?;
            lines.push(b'\n');
        }
        let target = path.to_owned();
        tokio::task::spawn_blocking(move || append(&target, &lines, last))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        cursor = last;
        if events.len() < BATCH as usize {
            return Ok(cursor);
        }
    }
}

/// Follows the audit log into `path` every `every`, until the server stops.
pub fn spawn(service: Arc<Service>, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cursor = None;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let from = match cursor {
                Some(c) => c,
                None => {
                    let target = path.clone();
                    match tokio::task::spawn_blocking(move || resume_from(&target)).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, file = %path.display(), "cannot read the audit file; will retry");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the audit file reader failed; will retry");
                            continue;
                        }
                    }
                }
            };
            match export(&service, &path, from).await {
                Ok(c) => cursor = Some(c),
                Err(e) => {
                    // Read the file again next time: what reached it decides.
                    cursor = None;
                    tracing::warn!(error = %e, "could not write the audit file; will retry");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_written_last_line_is_cut_and_the_last_complete_one_gives_the_cursor() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.jsonl");
        assert_eq!(last_seq_in_file(&path).ok(), Some(0));
        let long = "x".repeat(200_000);
        let text = format!("{{\"seq\":1}}\n{{\"seq\":2,\"pad\":\"{long}\"}}\n{{\"seq\":3,\"det");
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last_seq_in_file(&path).ok(), Some(2));
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(kept.ends_with("\"}\n"), "the half-written line is cut off");
        // Rotated away: the saved cursor carries on.
        append(&path, b"{\"seq\":3}\n", 3).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resume_from(&path).ok(), Some(3));
        std::fs::write(&path, "{\"seq\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resume_from(&path).ok(), Some(3));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), "");
    }
}
