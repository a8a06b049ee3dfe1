//! The status files `swrepl status` and the switch-over pre-checks read:
//! - the receiver's, `<root>/.swrepl/status.json` ([`ReceiverStatus`]): whether the Slave's files
//!   are caught up;
//! - the sender's, `<state dir>/sender-status.json` ([`SenderStatus`]): what the Master cannot
//!   replicate right now (files locked by another process). A separate name, because after a
//!   fail-back the same root can hold a receiver's state too.

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

fn write_atomically(path: &Path, status: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A file on the Master that another process holds locked, as the sender reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedFileStatus {
    /// Path relative to the root, `/`-separated.
    pub path: String,
    /// When it was first found locked (ms since the Unix epoch).
    pub since_unix_ms: u64,
    /// Failed attempts to read it so far (retried after 1 s, doubling to 60 s).
    pub attempts: u32,
    /// The last error, as the OS worded it.
    pub error: String,
}

/// The sender's view, as written to `sender-status.json` whenever it changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SenderStatus {
    /// When this was written (ms since the Unix epoch).
    pub updated_unix_ms: u64,
    /// Files that keep their previous version on the Slave until they can be read.
    #[serde(default)]
    pub locked: Vec<LockedFileStatus>,
}

/// Where a sender keeps its status, given its state directory (default `<root>/.swrepl`).
pub fn sender_status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sender-status.json")
}

/// Reads a sender's status file from its state directory.
pub fn read_sender_status(state_dir: &Path) -> std::io::Result<SenderStatus> {
    let text = std::fs::read_to_string(sender_status_path(state_dir))?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes a sender's status file atomically (creating the state directory if needed).
pub fn write_sender_status(state_dir: &Path, status: &SenderStatus) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    write_atomically(&sender_status_path(state_dir), status)
}
