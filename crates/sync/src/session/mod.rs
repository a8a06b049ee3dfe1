//! Replication sessions as sans-IO state machines.
//!
//! [`SenderMachine`] and [`ReceiverMachine`] hold all of a session's protocol logic — sequence
//! numbers, the window, passes, acknowledgements, chunk requests, withdrawals, pruning — and do
//! no I/O of their own: no sockets, no clock, no async runtime. Messages go in and come out as
//! [`Message`](swrepl_proto::Message) values; the receiver's file system is reached only through
//! the [`ReceiverStore`] trait (the real one is [`Applier`](crate::apply::Applier)), and the
//! sender's files only through the scans and chunk reads its driver performs.
//!
//! The tokio drivers in `sender.rs` and `receiver.rs` run them over TLS; the simulation test
//! (`crates/sync/tests/simulation.rs`) runs the same machines against an in-memory file system
//! and network with crashes, disconnects, short reads and I/O errors, seed by seed.

mod receiver;
mod sender;

use std::collections::HashSet;

use swrepl_proto::summary::{BucketSet, TreeDigest};
use swrepl_proto::{FileEntry, Hash, Prune};

use crate::SyncError;

pub use receiver::{
    check_message, ReceiverMachine, ReceiverOutput, StatusChange, MAX_QUEUED_CHANGES,
};
pub use sender::{read_chunk, ChunkRequest, KnownPaths, Reaction, SenderConfig, SenderMachine};

/// Changes sent but not yet acknowledged, at most.
pub const WINDOW: usize = 4096;

/// What the receiver does with an incoming upsert.
pub enum Prepared<P> {
    /// The target already holds exactly this content; only metadata may have been refreshed.
    /// The entry comes back: the session may have to ask again when the change's turn comes.
    UpToDate(FileEntry),
    /// A directory or link, ready to apply in order.
    Structural(FileEntry),
    /// A file whose content is being assembled; `need` lists the chunk indices to ask the peer for.
    File { pending: Box<P>, need: Vec<u32> },
}

/// The outcome of trying to finish a pending file.
pub enum Completion {
    /// Installed under its final name.
    Installed,
    /// Some local copies had changed; ask the peer for these chunk indices and try again later.
    NeedMore(Vec<u32>),
}

/// Outcome of the end of a full pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneOutcome {
    pub pruned: u64,
    pub held: u64,
}

/// A file being assembled on the receiver.
pub trait PendingContent {
    /// The entry being written.
    fn entry(&self) -> &FileEntry;
    /// True when no chunk is still expected from the peer.
    fn has_all_remote(&self) -> bool;
    /// Bytes of chunk data received from the peer for this file.
    fn received_bytes(&self) -> u64;
}

/// The receiver's file system as the session sees it. Every path is a validated wire path
/// (relative, `/`-separated, checked by `swrepl_proto::validate_path` before it gets here).
///
/// Each operation is atomic for the files it names: a file is either its old or its new
/// version, whatever happens (a crash, an I/O error) during the call.
pub trait ReceiverStore {
    type Pending: PendingContent;

    /// True when `rel` falls under this receiver's excludes (or swrepl's state directory).
    fn is_excluded(&self, rel: &str) -> bool;
    /// True when a link at `link` pointing at `target` would lead into excluded territory.
    fn link_reaches_excluded(&self, link: &str, target: &str) -> bool;
    /// Decides what an upsert needs. `requested` holds chunk hashes already asked for in this
    /// session: a second copy of new content is filled locally once the first is installed.
    fn prepare_upsert(
        &mut self,
        entry: FileEntry,
        requested: &mut HashSet<Hash>,
    ) -> Result<Prepared<Self::Pending>, SyncError>;
    /// Stores the peer's bytes for chunk `index` (which must hash to what the entry says).
    fn write_chunk(
        &mut self,
        pending: &mut Self::Pending,
        index: u32,
        data: &[u8],
    ) -> Result<(), SyncError>;
    /// Fills local chunks, verifies the whole file and installs it, durably by the next
    /// [`ReceiverStore::checkpoint`] (a store may batch installs until then, provided every
    /// other operation sees the file installed).
    fn complete(&mut self, pending: &mut Self::Pending) -> Result<Completion, SyncError>;
    /// Forgets a file that will not be completed.
    fn discard(&mut self, pending: Self::Pending);
    /// Creates a directory or link (archiving whatever was in the way).
    fn apply_structural(&mut self, entry: FileEntry) -> Result<(), SyncError>;
    /// Archives and removes `rel` (a whole subtree for a directory); false when nothing was there.
    fn delete(&mut self, rel: &str) -> Result<bool, SyncError>;
    /// Moves `from` to `entry.path` when `from` holds what `entry` describes; false when it
    /// does not (the session then builds the target like an upsert).
    fn rename(&mut self, from: &str, entry: &FileEntry) -> Result<bool, SyncError>;
    /// The end of a full pass: removes (archives) what the pass did not name, within `prune`.
    /// Entries in `skipped` buckets count as named: the pass left them out because the
    /// receiver's summary showed them equal to the sender's.
    fn prune(
        &mut self,
        seen: &HashSet<String>,
        skipped: Option<&BucketSet>,
        prune: Prune,
    ) -> Result<PruneOutcome, SyncError>;
    /// The tree as it is now, as bucket digests (see `swrepl_proto::summary`).
    fn summary(&mut self) -> Result<TreeDigest, SyncError>;
    /// Removes whatever a failed or abandoned file left in the staging area.
    fn clear_staging(&mut self);
    /// Makes everything applied so far durable: called before each acknowledgement, which it
    /// must not let through on error. Bookkeeping that only saves work (such as an index) may
    /// lag behind while more changes are expected (`_more_expected`, see
    /// [`ReceiverMachine::expects_more`]), and is saved by the first checkpoint without them.
    fn checkpoint(&mut self, _more_expected: bool) -> Result<(), SyncError> {
        Ok(())
    }
}
