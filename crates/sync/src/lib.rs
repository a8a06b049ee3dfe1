//! # swrepl-sync — the sender and the receiver
//!
//! This crate runs replication sessions over the channel of `swrepl-net`, speaking the protocol
//! of `swrepl-proto`, on trees described by `swrepl-tree`.
//!
//! Public API:
//! - [`run_sender`] with [`SenderOptions`]: scan, stream, serve chunks, watch (or one pass with
//!   `once`), reconnecting with backoff; returns a [`SendSummary`].
//! - [`run_receiver`] with [`ReceiverOptions`]: accept, apply atomically under the root, archive
//!   what is replaced or removed, answer verifiers; reports [`ReceiverEvent`]s to an optional
//!   channel and keeps `<root>/.swrepl/status.json` ([`ReceiverStatus`]) current. On Linux it
//!   prepares the next session's tree summary after each session and watches its root (inotify,
//!   the private `watch` module) so that an unchanged Slave is not walked again.
//! - [`remote_listing`]: a receiver's tree over the channel, for `swrepl verify --connect`.
//! - [`RegistrySource`] (a backend factory and the configured keys, in `SenderOptions::registry`
//!   and `ReceiverOptions::registry`): the registry keys replicated over the same session
//!   (see the `registry` module); [`remote_registry`]: a receiver's keys, for verify.
//!
//! - [`session`]: the protocol logic of both sides as sans-IO state machines
//!   ([`session::SenderMachine`], [`session::ReceiverMachine`] over a [`session::ReceiverStore`]);
//!   `run_sender` and `run_receiver` drive them over TLS, the simulation test drives them over an
//!   in-memory world with faults.
//!
//! The receiver applies changes strictly in sequence order on a blocking thread that owns the
//! file system state ([`apply`]); chunk requests for later changes go out as soon as those
//! changes arrive, so transfers are pipelined.

pub mod apply;
pub mod archive;
mod locked;
mod receiver;
mod registry;
mod sender;
pub mod session;
pub mod status;
mod summary_keys;
mod verify;
mod watch;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use locked::locked_file_count;
pub use receiver::{run_receiver, ReceiverEvent, ReceiverOptions};
pub use registry::{OpenRegistry, RegistrySource, DEFAULT_REGISTRY_POLL};
pub use sender::{run_sender, SendSummary, SenderOptions, ServiceProbe, WatchSignal};
pub use status::{read_status, ReceiverStatus};
pub use swrepl_net::Fingerprint;
pub use verify::{remote_listing, remote_registry};

/// How often each side sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence after which the peer is considered gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Our name in `Hello`/`Welcome`.
pub const SOFTWARE: &str = concat!("swrepl ", env!("CARGO_PKG_VERSION"));

/// Everything that can end a replication session or stop a sender or receiver.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Net(#[from] swrepl_net::NetError),
    #[error("{0}")]
    Tree(#[from] swrepl_tree::TreeError),
    #[error("root {path} is not usable: {source}; check --root")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use swrepl's state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot apply {path:?}: {source}")]
    Apply {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the receiver at {addr}: {reason}; check that `swrepl receive` runs there and the port is open")]
    Unreachable { addr: String, reason: String },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the peer reported {code:?}: {message}")]
    PeerError {
        code: swrepl_proto::ErrorCode,
        message: String,
    },
    #[error("the peer went silent (no data for {} s)", PEER_TIMEOUT.as_secs())]
    PeerSilent,
    #[error("the peer closed the connection")]
    Closed,
    #[error("file watcher: {0}")]
    Watch(String),
    #[error("session stopped: {0}")]
    Stopped(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SyncError {
    /// Errors that retrying cannot fix: the sender exits instead of reconnecting.
    pub fn is_fatal(&self) -> bool {
        match self {
            SyncError::Net(e) => e.is_auth_failure(),
            SyncError::Root { .. } | SyncError::State { .. } | SyncError::Watch(_) => true,
            SyncError::PeerError { code, .. } => {
                matches!(
                    code,
                    swrepl_proto::ErrorCode::VersionMismatch
                        | swrepl_proto::ErrorCode::RoleRejected
                )
            }
            _ => false,
        }
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
