//! The receiver's status file, `<root>/.swrepl/status.json`: what `swrepl status` and the
//! switch-over pre-checks read to learn whether the Slave's files are caught up.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The receiver's view of replication, as written to `status.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiverStatus {
    /// A sender session is up.
    pub connected: bool,
    /// The sender's address.
    pub peer: Option<String>,
    /// Highest change of the current session acknowledged as applied and durable.
    pub last_ack_seq: u64,
    /// Changes received but not yet applied.
    pub pending: u64,
    /// When the last change was applied (ms since the Unix epoch; 0 = never).
    pub last_applied_unix_ms: u64,
    /// When the sender was last heard from (ms since the Unix epoch; 0 = never).
    pub last_heartbeat_unix_ms: u64,
    /// The Master's monitored service, as the sender last reported it.
    pub master_service: Option<String>,
    /// Extras removed by the last full pass.
    pub last_pass_pruned: u64,
    /// Extras held by the mass-delete guard in the last full pass.
    pub last_pass_held: u64,
}

/// Writes [`ReceiverStatus`] atomically, at most a few times a second.
pub struct StatusFile {
    path: PathBuf,
    state: Mutex<(ReceiverStatus, Option<Instant>)>,
}

const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(200);

impl StatusFile {
    pub fn new(root: &Path) -> StatusFile {
        StatusFile {
            path: status_path(root),
            state: Mutex::new((ReceiverStatus::default(), None)),
        }
    }

    /// Changes the status and writes it unless a write happened very recently.
    pub fn update(&self, change: impl FnOnce(&mut ReceiverStatus)) {
        self.apply(change, false);
    }

    /// Changes the status and writes it at once (connection changes, heartbeats, going idle).
    pub fn update_now(&self, change: impl FnOnce(&mut ReceiverStatus)) {
        self.apply(change, true);
    }

    fn apply(&self, change: impl FnOnce(&mut ReceiverStatus), urgent: bool) {
        let mut guard = self.state.lock().expect("status lock");
        change(&mut guard.0);
        let due = guard.1.is_none_or(|t| t.elapsed() >= MIN_WRITE_INTERVAL);
        if urgent || due {
            guard.1 = Some(Instant::now());
            if let Err(e) = write_atomically(&self.path, &guard.0) {
                tracing::warn!(path = %self.path.display(), "cannot write status file: {e}");
            }
        }
    }
}

/// Where a receiver rooted at `root` keeps its status.
pub fn status_path(root: &Path) -> PathBuf {
    root.join(swrepl_tree::STATE_DIR_NAME).join("status.json")
}

/// Reads a receiver's status file.
pub fn read_status(root: &Path) -> std::io::Result<ReceiverStatus> {
    let text = std::fs::read_to_string(status_path(root))?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn write_atomically(path: &Path, status: &ReceiverStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
