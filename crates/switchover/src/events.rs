//! The switch-over event log: one JSON object per line, appended and flushed to disk, so the
//! history survives a crash and can be read with any JSON tool.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How a switch-over attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    Completed,
    Refused,
    Failed,
    DryRun,
    /// A re-run after a completed switch-over: nothing to do.
    AlreadyDone,
    /// The operator did not confirm.
    Cancelled,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time_unix_ms: u64,
    /// `switchover` (the monitor may add `alert`, `auto_switchover`, …).
    pub action: String,
    pub outcome: EventOutcome,
    pub forced: bool,
    /// One line for people.
    pub message: String,
    /// Structured details (assessment, outcome, tables).
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Event {
    /// An event stamped with the current time.
    pub fn now(action: &str, outcome: EventOutcome, forced: bool, message: String) -> Self {
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            time_unix_ms,
            action: action.to_owned(),
            outcome,
            forced,
            message,
            details: serde_json::Value::Null,
        }
    }
}

/// The log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("event log {path}: {source} (check the directory exists and is writable, or set [switchover] event_log)")]
pub struct EventLogError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// An append-only JSON-lines file.
#[derive(Debug, Clone)]
pub struct EventLog {
    path: PathBuf,
}

impl EventLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` as one line and flushes it to disk.
    pub fn append(&self, event: &Event) -> Result<(), EventLogError> {
        let wrap = |source| EventLogError {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(event).map_err(|e| wrap(std::io::Error::other(e)))?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(wrap)?;
        file.write_all(line.as_bytes()).map_err(wrap)?;
        file.sync_data().map_err(wrap)
    }

    /// The last event with `action` that changed something: `Completed` or `Failed` (dry runs,
    /// refusals, cancellations and no-ops are skipped). Lines that are not events (hand edits,
    /// a torn last line) are skipped. A missing file is `Ok(None)`.
    pub fn last_decisive(&self, action: &str) -> Result<Option<Event>, EventLogError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EventLogError {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut last = None;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| EventLogError {
                path: self.path.clone(),
                source,
            })?;
            let Ok(event) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            let decisive = matches!(
                event.outcome,
                EventOutcome::Completed | EventOutcome::Failed
            );
            if event.action == action && decisive {
                last = Some(event);
            }
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_finds_the_last_decisive_event() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(dir.path().join("events.jsonl"));
        assert_eq!(log.last_decisive("switchover").unwrap(), None);
        log.append(&Event::now(
            "switchover",
            EventOutcome::Failed,
            false,
            "a".into(),
        ))
        .unwrap();
        log.append(&Event::now(
            "switchover",
            EventOutcome::Completed,
            true,
            "b".into(),
        ))
        .unwrap();
        log.append(&Event::now(
            "switchover",
            EventOutcome::DryRun,
            false,
            "c".into(),
        ))
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{torn")
            .unwrap();
        let last = log.last_decisive("switchover").unwrap().unwrap();
        assert_eq!(last.message, "b");
        assert!(last.forced);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 4);
    }
}
