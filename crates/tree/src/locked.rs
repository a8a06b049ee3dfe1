//! Files another process holds open without sharing read access (Windows sharing and lock
//! violations): never described half-read, kept at their last known state, retried with
//! backoff, and reported.
//!
//! On Windows a program (an open mailbox, a database file, a log being rotated) can open a file
//! with no `FILE_SHARE_READ`; every other open then fails with `ERROR_SHARING_VIOLATION`, and a
//! read of a byte range locked with `LockFileEx` fails with `ERROR_LOCK_VIOLATION`. Such a file is
//! not broken and not gone: the Slave keeps the version it has until the file can be read again.
//! Retrying at every scan would turn a file locked for hours into a stream of failed opens and
//! warnings, so each locked file is retried on its own schedule ([`locked_retry_delay`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// Wait before the first retry of a file found locked.
pub const LOCKED_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two retries of a locked file.
pub const LOCKED_RETRY_MAX: Duration = Duration::from_secs(60);

/// True when `error` says another process holds the file so that it cannot be read now (Windows
/// `ERROR_SHARING_VIOLATION` or `ERROR_LOCK_VIOLATION`). Elsewhere always false: POSIX locks are
/// advisory and never make a read fail, so no error there means "locked, try later".
pub fn is_locked_error(error: &std::io::Error) -> bool {
    #[cfg(windows)]
    {
        const ERROR_SHARING_VIOLATION: i32 = 32;
        const ERROR_LOCK_VIOLATION: i32 = 33;
        matches!(
            error.raw_os_error(),
            Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION)
        )
    }
    #[cfg(not(windows))]
    {
        let _ = error;
        false
    }
}

/// How long to wait before retrying a file after `failed_attempts` failed reads (at least 1):
/// [`LOCKED_RETRY_FIRST`], doubling with each failure, capped at [`LOCKED_RETRY_MAX`].
pub fn locked_retry_delay(failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(31);
    LOCKED_RETRY_FIRST
        .saturating_mul(1u32 << doublings)
        .min(LOCKED_RETRY_MAX)
}

/// A file that could not be read because another process holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedFile {
    /// Wire path (relative, `/`-separated).
    pub path: String,
    /// When the file was first found locked (this time).
    pub since: SystemTime,
    /// Failed attempts to read it so far.
    pub attempts: u32,
    /// When the next attempt is due; scans before that leave the file alone.
    pub next_retry: Instant,
    /// The last error, as the OS worded it.
    pub error: String,
}

/// The locked files of one root, kept by the scanner across scans.
#[derive(Debug, Default)]
pub(crate) struct LockedSet {
    files: BTreeMap<String, LockedFile>,
}

impl LockedSet {
    /// True when `rel` is known to be locked and its next retry is not due: do not open it now.
    pub fn waiting(&self, rel: &str, now: Instant) -> bool {
        self.files.get(rel).is_some_and(|f| f.next_retry > now)
    }

    pub fn contains(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }

    /// Records a failed read of `rel`; warns once, when the file is first found locked.
    pub fn failed(&mut self, rel: &str, error: &std::io::Error, now: Instant) {
        let file = self.files.entry(rel.to_string()).or_insert_with(|| {
            tracing::warn!(
                path = %rel,
                "locked by another process ({error}): the Slave keeps its previous version; retrying every {}-{} s until it can be read",
                LOCKED_RETRY_FIRST.as_secs(),
                LOCKED_RETRY_MAX.as_secs()
            );
            LockedFile {
                path: rel.to_string(),
                since: SystemTime::now(),
                attempts: 0,
                next_retry: now,
                error: String::new(),
            }
        });
        file.attempts = file.attempts.saturating_add(1);
        file.next_retry = now + locked_retry_delay(file.attempts);
        file.error = error.to_string();
        tracing::debug!(path = %rel, attempts = file.attempts, "still locked");
    }

    /// `rel` was read (or is known from the index) again: it is replicated from now on.
    pub fn resolved(&mut self, rel: &str) {
        if let Some(file) = self.files.remove(rel) {
            tracing::info!(
                path = %rel,
                attempts = file.attempts,
                "no longer locked: replicating it again"
            );
        }
    }

    /// Forgets locked files for which `keep` is false (deleted, renamed or excluded since).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.files.retain(|rel, file| {
            let kept = keep(rel);
            if !kept {
                tracing::info!(path = %rel, attempts = file.attempts, "a file that was locked is no longer there");
            }
            kept
        });
    }

    /// The locked files, in path order.
    pub fn snapshot(&self) -> Vec<LockedFile> {
        self.files.values().cloned().collect()
    }

    /// When the earliest retry is due (None: nothing is locked).
    pub fn next_retry(&self) -> Option<Instant> {
        self.files.values().map(|f| f.next_retry).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_one_second_and_double_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| locked_retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(locked_retry_delay(0), LOCKED_RETRY_FIRST);
        assert_eq!(locked_retry_delay(u32::MAX), LOCKED_RETRY_MAX);
    }

    #[test]
    fn a_locked_file_is_left_alone_until_its_retry_is_due() {
        let mut set = LockedSet::default();
        let t0 = Instant::now();
        let error = std::io::Error::other("sharing violation");
        set.failed("Mail/box.mbx", &error, t0);
        assert!(set.waiting("Mail/box.mbx", t0));
        assert!(!set.waiting("other", t0));
        assert_eq!(set.next_retry(), Some(t0 + Duration::from_secs(1)));
        assert!(!set.waiting("Mail/box.mbx", t0 + Duration::from_secs(1)));

        let t1 = t0 + Duration::from_secs(1);
        set.failed("Mail/box.mbx", &error, t1);
        let [file] = &set.snapshot()[..] else {
            panic!("one locked file")
        };
        assert_eq!(file.attempts, 2);
        assert_eq!(file.next_retry, t1 + Duration::from_secs(2));
        assert!(set.waiting("Mail/box.mbx", t1 + Duration::from_millis(1999)));

        set.resolved("Mail/box.mbx");
        assert!(set.snapshot().is_empty());
        assert_eq!(set.next_retry(), None);
    }

    #[test]
    fn files_that_went_away_are_forgotten() {
        let mut set = LockedSet::default();
        let now = Instant::now();
        let error = std::io::Error::other("sharing violation");
        set.failed("a", &error, now);
        set.failed("b", &error, now);
        set.retain(|rel| rel == "b");
        assert!(!set.contains("a"));
        assert!(set.contains("b"));
    }

    #[test]
    fn only_windows_sharing_and_lock_violations_count_as_locked() {
        let permission = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!is_locked_error(&permission));
        assert!(!is_locked_error(&std::io::Error::other("x")));
        // EAGAIN / EWOULDBLOCK (11 on Linux) is not a lock on POSIX; 32 is EPIPE there.
        let raw_32 = std::io::Error::from_raw_os_error(32);
        let raw_33 = std::io::Error::from_raw_os_error(33);
        assert_eq!(is_locked_error(&raw_32), cfg!(windows));
        assert_eq!(is_locked_error(&raw_33), cfg!(windows));
        assert!(!is_locked_error(&std::io::Error::from_raw_os_error(11)));
    }
}
