//! The sender's side of locked files (Windows sharing violations): after each scan, report the
//! files the scanner found locked (summary, `sender-status.json`, the process-wide count the
//! metrics page shows) and say when the sender should scan again to retry them.
//!
//! The scanner (`swrepl_tree`) owns the policy: a locked file keeps its last known state, is left
//! out of what is sent, and is opened again only when its backoff (1 s doubling to 60 s) is due.
//! The sender only has to wake up at [`after_scan`]'s returned time and rescan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use swrepl_tree::{LockedFile, ScanOutcome, ScanProblem, STATE_DIR_NAME};

use crate::status::{write_sender_status, LockedFileStatus, SenderStatus};
use crate::{now_unix_ms, SendSummary, SenderOptions};

/// The locked files last reported by each sender of this process, by state directory.
static REPORTED: Mutex<BTreeMap<PathBuf, Vec<LockedFileStatus>>> = Mutex::new(BTreeMap::new());

/// What one sender session knows about locked files: the last scan's list and when to retry.
#[derive(Debug, Default)]
pub(crate) struct SenderLocked {
    files: Vec<LockedFile>,
    retry_at: Option<tokio::time::Instant>,
}

impl SenderLocked {
    /// Takes in what a finished scan found locked: reports it (status file, metrics count) and
    /// arms the retry for the earliest file due.
    pub fn after_scan(&mut self, options: &SenderOptions, outcome: &ScanOutcome) {
        report(&state_dir(options), &outcome.locked);
        self.retry_at = outcome
            .locked
            .iter()
            .map(|f| f.next_retry)
            .min()
            .map(tokio::time::Instant::from_std);
        self.files = outcome.locked.clone();
    }

    /// When the sender should scan again to retry locked files (None: nothing to retry).
    pub fn retry_at(&self) -> Option<tokio::time::Instant> {
        self.retry_at
    }

    /// The retry fired and a scan is on its way: disarm until that scan reports.
    pub fn retrying(&mut self) {
        self.retry_at = None;
    }

    /// Locked files count as unreadable: a `once` run that could not read them is not complete.
    pub fn add_to(&self, summary: &mut SendSummary) {
        summary.unreadable.extend(self.files.iter().map(as_problem));
    }
}

/// How many files the senders of this process currently find locked (for the metrics page).
pub fn locked_file_count() -> usize {
    REPORTED
        .lock()
        .map(|reported| reported.values().map(Vec::len).sum())
        .unwrap_or(0)
}

/// The sender's state directory, as `open_scanner` chooses it.
fn state_dir(options: &SenderOptions) -> PathBuf {
    options
        .state_dir
        .clone()
        .unwrap_or_else(|| options.root.join(STATE_DIR_NAME))
}

fn as_problem(file: &LockedFile) -> ScanProblem {
    ScanProblem {
        path: file.path.clone(),
        reason: format!(
            "locked by another process since {} ({} attempts; {}); the Slave keeps its previous version, retrying",
            humantime::format_rfc3339_seconds(file.since),
            file.attempts,
            file.error
        ),
    }
}

fn status_of(file: &LockedFile) -> LockedFileStatus {
    LockedFileStatus {
        path: file.path.clone(),
        since_unix_ms: file
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        attempts: file.attempts,
        error: file.error.clone(),
    }
}

/// Writes `sender-status.json` when the locked set differs from what was last written by this
/// process (always on the first scan, so a file left by an earlier run is replaced).
fn report(state_dir: &Path, locked: &[LockedFile]) {
    let current: Vec<LockedFileStatus> = locked.iter().map(status_of).collect();
    let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    if reported.get(state_dir) == Some(&current) {
        return;
    }
    let status = SenderStatus {
        updated_unix_ms: now_unix_ms(),
        locked: current.clone(),
    };
    match write_sender_status(state_dir, &status) {
        Ok(()) => {
            reported.insert(state_dir.to_path_buf(), current);
        }
        Err(e) => tracing::warn!(
            path = %state_dir.display(),
            "cannot write the sender status file: {e}; `swrepl status` will not show locked files"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn locked(path: &str, attempts: u32) -> LockedFile {
        LockedFile {
            path: path.into(),
            since: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            attempts,
            next_retry: Instant::now() + Duration::from_secs(u64::from(attempts)),
            error: "The process cannot access the file because it is being used by another process. (os error 32)".into(),
        }
    }

    #[test]
    fn locked_files_are_written_to_the_status_file_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        report(&state, &[locked("Mail/box.mbx", 3)]);
        let status = crate::status::read_sender_status(&state).unwrap();
        assert_eq!(
            status.locked,
            [LockedFileStatus {
                path: "Mail/box.mbx".into(),
                since_unix_ms: 1_700_000_000_000,
                attempts: 3,
                error: locked("x", 1).error,
            }]
        );
        assert!(locked_file_count() >= 1);

        report(&state, &[]);
        assert!(crate::status::read_sender_status(&state)
            .unwrap()
            .locked
            .is_empty());
        assert!(status.updated_unix_ms > 0);
    }

    #[test]
    fn a_locked_file_is_an_unreadable_problem_that_says_so() {
        let problem = as_problem(&locked("a.dat", 2));
        assert_eq!(problem.path, "a.dat");
        assert!(
            problem
                .reason
                .contains("locked by another process since 2023-11-14T22:13:20Z (2 attempts"),
            "{}",
            problem.reason
        );
    }
}
