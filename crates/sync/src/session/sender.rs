//! The sender's half of a session, as a state machine.
//!
//! Scans go in ([`SenderMachine::scan_done`], [`SenderMachine::refresh_done`]) and become
//! numbered changes; [`SenderMachine::poll_transmit`] hands out what to send next, at most a
//! window of changes ([`WINDOW`](super::WINDOW)) ahead of the receiver's cumulative acknowledgement; the receiver's messages
//! go in through [`SenderMachine::handle`], which says what the driver must do (serve chunks,
//! note an acknowledgement). Reading files, scanning and the socket stay with the driver.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;

use swrepl_proto::registry::{RegistryChangeSet, RegistrySnapshot};
use swrepl_proto::summary::{BucketSet, EntryKey, TreeDigest};

use crate::summary_keys::entry_keys;
use swrepl_proto::{EntryKind, FileEntry, Message, Prune, Seq};
use swrepl_tree::{Change, ScanOutcome, ScannedEntry};

use crate::sender::SendSummary;
use crate::SyncError;

/// How often a `once` run retries files it could not read cleanly before giving up on them.
const ONCE_RETRIES: u32 = 3;

/// The sender's settings that shape a session.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// One full pass, then stop once everything is acknowledged.
    pub once: bool,
    /// Confirms a mass delete: extras are pruned whatever their share of the tree.
    pub allow_mass_delete: bool,
    /// The mass-delete guard's threshold, per mille of the tree (200 = 20 %).
    pub mass_delete_permille: u16,
    /// Changes sent but not yet acknowledged, at most ([`WINDOW`](super::WINDOW); at most
    /// [`MAX_QUEUED_CHANGES`](super::MAX_QUEUED_CHANGES), what a receiver accepts).
    pub window: usize,
}

/// Chunks the receiver asked for: read them from the file at `entry.path` (checking each
/// against its hash with [`read_chunk`]) and hand them to [`SenderMachine::chunk_read`], or
/// withdraw the change ([`SenderMachine::withdraw`]) when the file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    pub seq: Seq,
    pub entry: FileEntry,
    pub offsets: Vec<u64>,
    pub indices: Vec<u32>,
}

/// What a message from the receiver asks of the driver.
#[derive(Debug)]
pub enum Reaction {
    /// Nothing beyond what the machine did itself.
    None,
    /// Changes up to this sequence number are applied on the receiver.
    Acked(Seq),
    /// The receiver refused this change.
    Refused(Seq),
    /// Read and send these chunks.
    ServeChunks(ChunkRequest),
    /// The receiver's registry state (for the registry replication the driver runs).
    RegistrySnapshot(RegistrySnapshot),
}

/// What the sender must keep to serve chunk requests for an unacknowledged change.
struct InFlight {
    entry: Option<FileEntry>,
    offsets: Vec<u64>,
}

/// Where the session stands with the receiver's tree summary for the next full pass.
enum SummaryState {
    /// None asked for, or the last one went stale: a full pass describes everything.
    Idle,
    /// `SummaryRequest { id }` sent, not yet answered.
    Requested(u64),
    /// The answer, for the full pass whose scan is still running.
    Received(TreeDigest),
}

/// A full pass, ready to queue once the receiver's summary says what it may leave out.
struct FullPassPlan {
    /// Renames found by the scan, described first.
    renames: Vec<(String, FileEntry)>,
    /// The scanned tree (shared with the queued pass, not copied): every entry
    /// except the renames' targets is described after them.
    tree: Arc<Vec<ScannedEntry>>,
    /// The summary key of each entry of `tree`, when the driver computed them ahead.
    keys: Option<Vec<EntryKey>>,
    /// Whether the tree's paths are kept for the mass-delete guard of later scans.
    keep_paths: bool,
}

impl FullPassPlan {
    /// The summary keys of the renames' entries and of the tree's: the driver's keys when they
    /// fit the tree, else computed now.
    fn take_keys(&mut self) -> (Vec<EntryKey>, Vec<EntryKey>) {
        let rename_keys = self
            .renames
            .iter()
            .map(|(_, entry)| EntryKey::of(entry))
            .collect();
        let tree_keys = match self.keys.take() {
            Some(keys) if keys.len() == self.tree.len() => keys,
            _ => entry_keys(&self.tree, |scanned| &scanned.entry),
        };
        (rename_keys, tree_keys)
    }
}

/// One item of the send queue, in the order it goes out.
enum Queued {
    /// A message built when it was queued: pass markers, requests, registry changes, renames
    /// and the changes of incremental passes (few, and each may differ from the tree).
    Message(Message),
    /// The tree's entries of a full pass, built into upserts only as they leave.
    TreeRun(TreeRun),
}

impl Queued {
    /// The sequence number of the next change this item sends, if it is a change: what the
    /// window is checked against.
    fn next_seq(&self) -> Option<Seq> {
        match self {
            Queued::Message(msg) => change_seq(msg),
            Queued::TreeRun(run) => Some(run.seqs.start),
        }
    }
}

/// The entries of a full pass still to describe: the scanned tree (shared, never copied) and
/// which of its entries the pass picked. Each `Upsert` is built when it leaves, so that a pass
/// of a million entries holds a million bits here rather than a million messages, each with its
/// own path and chunk list, while only a window of them can leave anyway.
struct TreeRun {
    tree: Arc<Vec<ScannedEntry>>,
    picked: Picked,
    /// The first entry of `tree` not yet looked at.
    next_index: usize,
    /// The sequence numbers still to hand out, one per picked entry, in order: reserved when
    /// the run was queued, so that the run keeps its place among the numbered changes.
    seqs: Range<Seq>,
}

impl TreeRun {
    /// The next picked entry as an upsert with its sequence number.
    fn next_upsert(&mut self) -> Option<Message> {
        let index = self.picked.next_from(self.next_index)?;
        let scanned = self.tree.get(index)?;
        let seq = self.seqs.next()?;
        self.next_index = index + 1;
        Some(Message::Upsert {
            seq,
            entry: scanned.entry.clone(),
        })
    }

    /// True once every picked entry was handed out.
    fn is_done(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// Which entries of a tree a full pass describes: one bit per entry (125 KB for a million
/// entries, whatever share is picked).
struct Picked {
    words: Vec<u64>,
    len: usize,
}

impl Picked {
    /// Every one of `len` entries.
    fn all(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        if len % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1 << (len % 64)) - 1;
            }
        }
        Picked { words, len }
    }

    fn contains(&self, index: usize) -> bool {
        self.words
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    fn remove(&mut self, index: usize) {
        if let Some(word) = self.words.get_mut(index / 64) {
            *word &= !(1 << (index % 64));
        }
    }

    fn count(&self) -> usize {
        self.words
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum()
    }

    /// The first picked entry at or after `from`.
    fn next_from(&self, from: usize) -> Option<usize> {
        let mut at = from / 64;
        let mut word = self.words.get(at)? & (u64::MAX << (from % 64));
        while word == 0 {
            at += 1;
            word = *self.words.get(at)?;
        }
        Some(at * 64 + word.trailing_zeros() as usize)
    }

    /// The picked entries, in order.
    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }
}

/// The paths of a scanned tree, for the mass-delete guard of watched changes: their 64-bit
/// hashes, sorted. 8 bytes a path: keeping the scanned tree itself for this held a second copy
/// of the tree (a million entries: about 270 MB) while the next scan loaded the index's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownPaths(Vec<u64>);

impl KnownPaths {
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a str>) -> KnownPaths {
        let mut hashes: Vec<u64> = paths.into_iter().map(path_hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        KnownPaths(hashes)
    }

    fn of_tree(tree: &[ScannedEntry]) -> KnownPaths {
        KnownPaths::of(tree.iter().map(|s| s.entry.path.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, path_hash: u64) -> bool {
        self.0.binary_search(&path_hash).is_ok()
    }
}

/// A path's hash for [`KnownPaths`] (the same for the same path within one process: paths are
/// only compared with others hashed by the same run).
fn path_hash(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish()
}

/// The sender's session state: numbered changes, the window, passes and the run's summary.
pub struct SenderMachine {
    config: SenderConfig,
    next_seq: Seq,
    acked: Seq,
    /// The last change sent (changes leave in the order of their numbers).
    sent_up_to: Seq,
    /// Changes sent and not yet acknowledged.
    in_flight: BTreeMap<Seq, InFlight>,
    /// Changes and pass markers, in order; changes leave only within the window.
    queue: VecDeque<Queued>,
    /// Replies to the receiver's requests (chunk data, withdrawals): never held by the window.
    replies: VecDeque<Message>,
    pass: u64,
    passes_done: u64,
    passes_sent: u64,
    /// The paths of the last scanned tree, for the mass-delete guard of watched changes.
    last_paths: Option<KnownPaths>,
    summary: SendSummary,
    retries_left: u32,
    /// The receiver speaks protocol version 2: full passes skip what its summary shows equal.
    tree_summaries: bool,
    last_summary_id: u64,
    summary_state: SummaryState,
    /// A full pass whose scan finished before the receiver's summary arrived.
    held_full: Option<FullPassPlan>,
}

impl SenderMachine {
    /// A new session; `last_paths` are those of the tree the previous session saw, if any.
    pub fn new(config: SenderConfig, last_paths: Option<KnownPaths>) -> Self {
        SenderMachine {
            config,
            next_seq: 1,
            acked: 0,
            sent_up_to: 0,
            in_flight: BTreeMap::new(),
            queue: VecDeque::new(),
            replies: VecDeque::new(),
            pass: 0,
            passes_done: 0,
            passes_sent: 0,
            last_paths,
            summary: SendSummary::default(),
            retries_left: ONCE_RETRIES,
            tree_summaries: false,
            last_summary_id: 0,
            summary_state: SummaryState::Idle,
            held_full: None,
        }
    }

    /// The receiver speaks protocol version 2 or later: full passes ask for its tree summary
    /// and describe only the buckets where the trees differ.
    pub fn enable_tree_summaries(&mut self) {
        self.tree_summaries = true;
    }

    /// True when the full scan that just started will be compared with the receiver's summary:
    /// the driver should then hand [`SenderMachine::take_scan`] the summary key of every
    /// scanned entry (`summary_keys::entry_keys`, computed on all cores right after
    /// the scan), so that the summary, when it arrives, only needs adding up.
    pub fn wants_summary_keys(&self) -> bool {
        self.tree_summaries && !matches!(self.summary_state, SummaryState::Idle)
    }

    /// True while a full pass waits for the receiver's summary: the driver should not start
    /// another scan or refresh now, since a change queued meanwhile makes the summary stale.
    pub fn awaits_summary(&self) -> bool {
        matches!(self.summary_state, SummaryState::Requested(_))
    }

    /// The driver started a full scan: ask the receiver for its summary now, so that it is
    /// computed while the scan runs. The receiver answers after applying everything queued
    /// before the request; any file change queued after it makes the answer stale.
    pub fn full_scan_started(&mut self) {
        if !self.tree_summaries {
            return;
        }
        self.summary_went_stale();
        self.last_summary_id += 1;
        self.enqueue(Message::SummaryRequest {
            id: self.last_summary_id,
        });
        self.summary_state = SummaryState::Requested(self.last_summary_id);
    }

    /// What this session did so far (wire bytes and registry counts are the driver's to add).
    pub fn summary(&self) -> &SendSummary {
        &self.summary
    }

    /// The paths of the tree the last scan saw, for the next session.
    pub fn take_last_paths(&mut self) -> Option<KnownPaths> {
        self.last_paths.take()
    }

    /// The highest sequence number the receiver acknowledged.
    pub fn acked(&self) -> Seq {
        self.acked
    }

    /// True when everything queued was sent and acknowledged and every pass was answered.
    pub fn is_settled(&self) -> bool {
        self.queue.is_empty()
            && self.replies.is_empty()
            && self.in_flight.is_empty()
            && self.held_full.is_none()
            && self.passes_sent > 0
            && self.passes_done == self.passes_sent
    }

    /// The next message to send: replies first, then queued changes within the window.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(reply) = self.replies.pop_front() {
            return Some(reply);
        }
        let seq = self.queue.front().and_then(Queued::next_seq);
        if seq.is_some_and(|seq| seq > self.acked + self.config.window as u64) {
            return None;
        }
        let msg = self.pop_queued()?;
        if let Some(seq) = change_seq(&msg) {
            self.now_in_flight(seq, &msg);
        }
        Some(msg)
    }

    /// The front of the queue as a message: a tree run gives its next entry and leaves the
    /// queue with its last.
    fn pop_queued(&mut self) -> Option<Message> {
        match self.queue.front_mut()? {
            Queued::TreeRun(run) => {
                let msg = run.next_upsert();
                if run.is_done() {
                    self.queue.pop_front();
                }
                msg
            }
            Queued::Message(_) => match self.queue.pop_front() {
                Some(Queued::Message(msg)) => Some(msg),
                _ => None,
            },
        }
    }

    fn enqueue(&mut self, msg: Message) {
        self.queue.push_back(Queued::Message(msg));
    }

    /// Change `seq` is leaving: remember what serving its chunks needs until it is acknowledged.
    /// Done as it leaves, not when it is queued, so that only the window's changes are held
    /// twice.
    fn now_in_flight(&mut self, seq: Seq, msg: &Message) {
        let entry = match msg {
            Message::Upsert { entry, .. } | Message::Rename { entry, .. } => Some(entry),
            _ => None,
        }
        .filter(|e| e.kind == EntryKind::File && !e.chunks.is_empty())
        .cloned();
        let offsets = entry.as_ref().map(chunk_offsets).unwrap_or_default();
        self.in_flight.insert(seq, InFlight { entry, offsets });
        self.sent_up_to = seq;
    }

    /// A finished scan: a full one becomes a full pass, an incremental one a pass of its
    /// changes. Returns true when some files could not be read and a rescan should follow.
    ///
    /// Copies the outcome; a driver that owns it hands it over with
    /// [`SenderMachine::take_scan`] instead.
    pub fn scan_done(&mut self, full: bool, outcome: &ScanOutcome) -> bool {
        self.take_scan(full, outcome.clone(), None)
    }

    /// [`SenderMachine::scan_done`] for an outcome the driver gives up: nothing of the tree is
    /// copied. `keys`, when given, are the summary keys of `outcome.entries` in order (see
    /// [`SenderMachine::wants_summary_keys`]); without them they are computed when the
    /// receiver's summary arrives.
    pub fn take_scan(
        &mut self,
        full: bool,
        mut outcome: ScanOutcome,
        keys: Option<Vec<EntryKey>>,
    ) -> bool {
        self.summary.bytes_scanned += outcome.bytes_hashed;
        for problem in &outcome.problems {
            tracing::warn!(path = %problem.path, "cannot replicate now, will retry: {}", problem.reason);
        }
        let mut retry = false;
        if !outcome.problems.is_empty() && (!self.config.once || self.retries_left > 0) {
            self.retries_left = self
                .retries_left
                .saturating_sub(u32::from(self.config.once));
            retry = true;
        }
        self.summary.unreadable = std::mem::take(&mut outcome.problems);
        self.record_tree(&outcome.entries);
        let tree = Arc::new(std::mem::take(&mut outcome.entries));
        // A run that stops after its pass scans again only to retry unreadable files.
        let keep_paths = !self.config.once || retry;
        if full {
            // Only the renames matter to a full pass: the upserts (every entry, on an initial
            // sync) go now rather than stay beside the queued pass.
            let renames = std::mem::take(&mut outcome.changes)
                .into_iter()
                .filter_map(|change| match change {
                    Change::Rename { from, entry } => Some((from, entry)),
                    _ => None,
                })
                .collect();
            self.full_scan_done(renames, tree, keys, keep_paths);
        } else {
            let paths = keep_paths.then(|| KnownPaths::of_tree(&tree));
            self.queue_incremental(&outcome.changes, &tree, paths.as_ref());
            self.last_paths = paths;
        }
        retry
    }

    /// Files reread after content events (no walk): one pass of upserts.
    pub fn refresh_done(&mut self, upserts: Vec<FileEntry>) {
        if upserts.is_empty() {
            return;
        }
        self.summary_went_stale();
        let pass = self.begin_pass(false);
        let count = upserts.len() as u64;
        for entry in upserts {
            self.queue_change(Change::Upsert(entry));
        }
        self.end_pass(pass, count, Prune::Never);
    }

    /// A registry change set takes the next sequence number, like a file change.
    pub fn queue_registry_changes(&mut self, changes: RegistryChangeSet) -> Seq {
        let seq = self.take_seq();
        self.enqueue(Message::RegistryChanges { seq, changes });
        seq
    }

    /// A request without a sequence number (e.g. `RegistryRequest`), sent in queue order.
    pub fn queue_request(&mut self, msg: Message) {
        self.enqueue(msg);
    }

    /// Takes one message from the receiver.
    pub fn handle(&mut self, msg: Message) -> Result<Reaction, SyncError> {
        Ok(match msg {
            Message::NeedChunks { seq, indices } => {
                Reaction::ServeChunks(self.chunk_request(seq, indices)?)
            }
            Message::Ack { seq } => {
                if seq > self.sent_up_to {
                    return Err(SyncError::Protocol(format!(
                        "ack for {seq}, which was never sent"
                    )));
                }
                let newly = self.in_flight.range(..=seq).count() as u64;
                self.summary.changes += newly;
                self.in_flight = self.in_flight.split_off(&(seq + 1));
                self.acked = self.acked.max(seq);
                Reaction::Acked(seq)
            }
            Message::Refused { seq, path, reason } => {
                tracing::warn!(%path, "receiver refused: {reason}");
                self.summary.refused.push((path, reason));
                Reaction::Refused(seq)
            }
            Message::PassDone { pass, pruned, held } => {
                self.passes_done += 1;
                self.summary.pruned += pruned;
                if held > 0 {
                    tracing::warn!(pass, held, "mass-delete guard on the receiver: {held} extra entries were NOT removed; if the Master's tree really shrank that much, run the sender with --allow-mass-delete");
                    self.summary.held_deletes += held;
                }
                Reaction::None
            }
            Message::Heartbeat(_) => Reaction::None,
            Message::RegistrySnapshot(snapshot) => Reaction::RegistrySnapshot(snapshot),
            Message::TreeSummary { id, bits, digests } => {
                self.summary_received(id, bits, &digests)?;
                Reaction::None
            }
            Message::Error { code, message } => return Err(SyncError::PeerError { code, message }),
            other => {
                return Err(SyncError::Protocol(
                    format!("unexpected message from the receiver: {other:?}")
                        .chars()
                        .take(200)
                        .collect(),
                ))
            }
        })
    }

    /// One chunk read for a [`ChunkRequest`]: queued for sending at once.
    pub fn chunk_read(&mut self, seq: Seq, index: u32, data: Vec<u8>) {
        self.summary.data_bytes_sent += data.len() as u64;
        self.replies
            .push_back(Message::ChunkData { seq, index, data });
    }

    /// The file of change `seq` changed since it was scanned: the change is withdrawn (the
    /// receiver keeps its previous version). Returns the entry that was announced: the driver
    /// must make sure the next scan describes that file again, wherever it is by then.
    pub fn withdraw(&mut self, seq: Seq, reason: String) -> Option<FileEntry> {
        let entry = self.in_flight.get(&seq).and_then(|f| f.entry.clone());
        let path = entry.as_ref().map_or("", |e| e.path.as_str());
        tracing::info!(%path, "file changed while being sent ({reason}); withdrawing and rescanning it");
        self.replies
            .push_back(Message::FileUnavailable { seq, reason });
        entry
    }

    fn chunk_request(&self, seq: Seq, indices: Vec<u32>) -> Result<ChunkRequest, SyncError> {
        let Some(in_flight) = self.in_flight.get(&seq) else {
            return Err(SyncError::Protocol(format!(
                "chunks asked for change {seq}, which is not in flight"
            )));
        };
        let Some(entry) = in_flight.entry.clone() else {
            return Err(SyncError::Protocol(format!(
                "chunks asked for change {seq}, which has no content"
            )));
        };
        Ok(ChunkRequest {
            seq,
            entry,
            offsets: in_flight.offsets.clone(),
            indices,
        })
    }

    fn record_tree(&mut self, entries: &[ScannedEntry]) {
        let files = entries.iter().filter(|e| e.entry.kind == EntryKind::File);
        self.summary.entries = entries.len() as u64;
        self.summary.files = files.clone().count() as u64;
        self.summary.bytes_in_tree = files.map(|e| e.entry.size).sum();
    }

    fn begin_pass(&mut self, full: bool) -> u64 {
        self.pass += 1;
        self.enqueue(Message::PassBegin {
            pass: self.pass,
            full,
        });
        self.pass
    }

    fn end_pass(&mut self, pass: u64, entries: u64, prune: Prune) {
        self.enqueue(Message::PassEnd {
            pass,
            entries,
            prune,
        });
        self.passes_sent += 1;
    }

    /// A full scan: queued at once, or held until the receiver's summary (asked for when the
    /// scan started) arrives.
    fn full_scan_done(
        &mut self,
        renames: Vec<(String, FileEntry)>,
        tree: Arc<Vec<ScannedEntry>>,
        keys: Option<Vec<EntryKey>>,
        keep_paths: bool,
    ) {
        let plan = FullPassPlan {
            renames,
            tree,
            keys,
            keep_paths,
        };
        match std::mem::replace(&mut self.summary_state, SummaryState::Idle) {
            SummaryState::Received(theirs) => self.queue_full_pass(plan, Some(&theirs)),
            SummaryState::Requested(id) => {
                self.summary_state = SummaryState::Requested(id);
                self.held_full = Some(plan);
            }
            SummaryState::Idle => self.queue_full_pass(plan, None),
        }
    }

    /// The receiver's answer to `SummaryRequest { id }`; answers to requests gone stale are
    /// dropped.
    fn summary_received(&mut self, id: u64, bits: u8, digests: &[u8]) -> Result<(), SyncError> {
        if id > self.last_summary_id {
            return Err(SyncError::Protocol(format!(
                "tree summary {id}, which was never asked for"
            )));
        }
        let Some(theirs) = TreeDigest::from_wire(bits, digests) else {
            return Err(SyncError::Protocol(format!(
                "tree summary of {bits} bits with {} bytes of digests",
                digests.len()
            )));
        };
        if !matches!(self.summary_state, SummaryState::Requested(asked) if asked == id) {
            return Ok(());
        }
        match self.held_full.take() {
            Some(plan) => {
                self.summary_state = SummaryState::Idle;
                self.queue_full_pass(plan, Some(&theirs));
            }
            None => self.summary_state = SummaryState::Received(theirs),
        }
        Ok(())
    }

    /// A file change is about to be queued after the last `SummaryRequest`: the receiver's
    /// answer would describe its tree before that change, so it cannot be used. A held full
    /// pass goes out whole, first.
    fn summary_went_stale(&mut self) {
        self.summary_state = SummaryState::Idle;
        if let Some(plan) = self.held_full.take() {
            self.queue_full_pass(plan, None);
        }
    }

    /// Queues a full pass. With the receiver's summary, buckets equal on both sides are left
    /// out (`PassSkips`), and the receiver keeps them whole at the pass's end. The renames go
    /// first as messages; the tree's entries follow as one [`TreeRun`], built as they leave.
    fn queue_full_pass(&mut self, mut plan: FullPassPlan, theirs: Option<&TreeDigest>) {
        let keys = theirs.map(|_| plan.take_keys());
        let FullPassPlan {
            mut renames,
            tree,
            keep_paths,
            keys: unused_keys,
        } = plan;
        drop(unused_keys); // without the receiver's summary, the pass is described whole
                           // A rename's target is described by the rename, not again as an entry of the tree.
        let mut picked = Picked::all(tree.len());
        if !renames.is_empty() {
            let renamed: HashSet<&str> = renames.iter().map(|(_, e)| e.path.as_str()).collect();
            for (i, scanned) in tree.iter().enumerate() {
                if renamed.contains(scanned.entry.path.as_str()) {
                    picked.remove(i);
                }
            }
        }
        let total = renames.len() + picked.count();
        let skipped = theirs
            .zip(keys.as_ref())
            .and_then(|(theirs, (rename_keys, tree_keys))| {
                let mut ours = TreeDigest::new(theirs.bits());
                rename_keys.iter().for_each(|key| ours.add_key(key));
                picked.indices().for_each(|i| ours.add_key(&tree_keys[i]));
                ours.unchanged_buckets(theirs)
            });
        if let Some((skipped, (rename_keys, tree_keys))) = skipped.as_ref().zip(keys.as_ref()) {
            let in_skipped = |key: &EntryKey| skipped.contains(key.bucket(skipped.bits()));
            renames = renames
                .into_iter()
                .zip(rename_keys)
                .filter(|(_, key)| !in_skipped(key))
                .map(|(rename, _)| rename)
                .collect();
            for (i, key) in tree_keys.iter().enumerate() {
                if in_skipped(key) {
                    picked.remove(i);
                }
            }
        }
        let pass = self.begin_pass(true);
        if let Some(skipped) = &skipped {
            self.enqueue(Message::PassSkips {
                pass,
                bits: skipped.bits(),
                unchanged: skipped.as_wire().to_vec(),
            });
        }
        let described = (renames.len() + picked.count()) as u64;
        for (from, entry) in renames {
            self.queue_change(Change::Rename { from, entry });
        }
        // The paths are taken once the summary keys are gone (a million entries: 8 MB for the
        // former, 20 MB for the latter), so that the two are not held at once.
        drop(keys);
        if keep_paths {
            self.last_paths = Some(KnownPaths::of_tree(&tree));
        }
        self.queue_tree_run(tree, picked);
        if let Some(skipped) = &skipped {
            log_skips(described, total, skipped);
        }
        let prune = if self.config.allow_mass_delete {
            Prune::All
        } else {
            Prune::UpToPermille(self.config.mass_delete_permille)
        };
        self.end_pass(pass, described, prune);
    }

    /// Queues the picked entries of `tree` as one item, their sequence numbers taken now:
    /// changes leave in the order of their numbers, and whatever is queued after the run is
    /// numbered after it.
    fn queue_tree_run(&mut self, tree: Arc<Vec<ScannedEntry>>, picked: Picked) {
        let count = picked.count() as u64;
        if count == 0 {
            return;
        }
        let first = self.next_seq;
        self.next_seq += count;
        self.queue.push_back(Queued::TreeRun(TreeRun {
            tree,
            picked,
            next_index: 0,
            seqs: first..first + count,
        }));
    }

    fn queue_incremental(
        &mut self,
        changes: &[Change],
        tree: &[ScannedEntry],
        current: Option<&KnownPaths>,
    ) {
        if changes.is_empty() {
            return;
        }
        self.summary_went_stale();
        let held = current.map_or(0, |current| self.deletes_to_hold(changes, tree, current));
        let pass = self.begin_pass(false);
        for change in changes {
            if held > 0 && matches!(change, Change::Delete(_)) {
                continue;
            }
            self.queue_change(change.clone());
        }
        self.end_pass(pass, tree.len() as u64, Prune::Never);
    }

    /// The mass-delete guard for watched changes: when one scan removes more than the threshold
    /// of the tree, its deletes are held (not sent) until a confirmed full pass. What a rename
    /// moved is not removed; `current` are the paths of `tree`.
    fn deletes_to_hold(
        &mut self,
        changes: &[Change],
        tree: &[ScannedEntry],
        current: &KnownPaths,
    ) -> u64 {
        let Some(previous) = &self.last_paths else {
            return 0;
        };
        let moved = moved_sources(changes, tree, previous);
        let removed = previous
            .0
            .iter()
            .filter(|&&path| !current.contains(path) && !moved.contains(path))
            .count() as u64;
        let total = previous.len() as u64;
        let over = removed * 1000 > u64::from(self.config.mass_delete_permille) * total;
        if removed == 0 || !over || self.config.allow_mass_delete {
            return 0;
        }
        tracing::warn!(
            removed,
            total,
            "mass-delete guard: the Master's tree lost {removed} of {total} entries in one change; the deletes are HELD (not replicated). If this is intended, restart the sender with --allow-mass-delete"
        );
        self.summary.held_deletes += removed;
        removed
    }

    /// Numbers a change (in queue order: changes leave in the order of their numbers).
    fn take_seq(&mut self) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn queue_change(&mut self, change: Change) {
        let msg = match change {
            Change::Upsert(entry) => {
                let seq = self.take_seq();
                Message::Upsert { seq, entry }
            }
            Change::Rename { from, entry } => {
                let seq = self.take_seq();
                Message::Rename { seq, from, entry }
            }
            Change::Delete(path) => {
                let seq = self.take_seq();
                Message::Delete { seq, path }
            }
        };
        self.enqueue(msg);
    }
}

/// Where the entries the renames among `changes` moved were before: for each entry of `tree` at
/// or below a rename's target, its path with the target replaced by the source. Only entries
/// the previous tree did not hold can have moved there.
fn moved_sources(changes: &[Change], tree: &[ScannedEntry], previous: &KnownPaths) -> KnownPaths {
    let renames: Vec<(&str, &str)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Rename { from, entry } => Some((from.as_str(), entry.path.as_str())),
            _ => None,
        })
        .collect();
    if renames.is_empty() {
        return KnownPaths::default();
    }
    let mut sources = Vec::new();
    for path in tree.iter().map(|s| s.entry.path.as_str()) {
        if previous.contains(path_hash(path)) {
            continue;
        }
        for &(from, to) in &renames {
            if is_same_or_under(path, to) {
                sources.push(format!("{from}{}", &path[to.len()..]));
            }
        }
    }
    KnownPaths::of(sources.iter().map(String::as_str))
}

fn log_skips(described: u64, total: usize, skipped: &BucketSet) {
    tracing::info!(
        described,
        total,
        buckets_equal = skipped.len(),
        buckets = skipped.capacity(),
        "full pass: the receiver's summary leaves {described} of {total} entries to describe"
    );
}

/// Reads chunk `index` of `entry` from its file and checks it against the hash the receiver was
/// promised: an error (the reason) means the file changed since it was scanned, and the change
/// must be withdrawn so that a half-written state is never sent.
pub fn read_chunk<R: Read + Seek>(
    file: &mut R,
    entry: &FileEntry,
    offsets: &[u64],
    index: u32,
) -> Result<Vec<u8>, String> {
    let (chunk, offset) = entry
        .chunks
        .get(index as usize)
        .zip(offsets.get(index as usize))
        .ok_or_else(|| format!("receiver asked for chunk {index} of {}", entry.chunks.len()))?;
    // Read into spare capacity: zeroing a buffer first would touch every byte once more.
    let mut data = Vec::with_capacity(chunk.len as usize);
    file.seek(SeekFrom::Start(*offset))
        .and_then(|_| file.take(u64::from(chunk.len)).read_to_end(&mut data))
        .map_err(|e| format!("read failed: {e}"))?;
    if data.len() != chunk.len as usize {
        return Err("the file is shorter than when it was scanned".to_string());
    }
    if *blake3::hash(&data).as_bytes() != chunk.hash {
        return Err("content changed since it was scanned".to_string());
    }
    Ok(data)
}

fn chunk_offsets(entry: &FileEntry) -> Vec<u64> {
    let mut offset = 0;
    entry
        .chunks
        .iter()
        .map(|c| {
            let here = offset;
            offset += u64::from(c.len);
            here
        })
        .collect()
}

fn change_seq(msg: &Message) -> Option<Seq> {
    match msg {
        Message::Upsert { seq, .. }
        | Message::Rename { seq, .. }
        | Message::Delete { seq, .. }
        | Message::RegistryChanges { seq, .. } => Some(*seq),
        _ => None,
    }
}

fn is_same_or_under(path: &str, dir: &str) -> bool {
    path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use swrepl_proto::summary::{summary_bits, TreeDigest};
    use swrepl_proto::{Attributes, ChunkRef};
    use swrepl_tree::ScannedEntry;

    fn file(path: &str, content: u8) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            size: 1,
            mtime_ns: 0,
            attributes: Attributes::default(),
            chunks: vec![ChunkRef {
                hash: [content; 32],
                len: 1,
            }],
            file_hash: [content; 32],
        }
    }

    fn tree(entries: &[FileEntry]) -> ScanOutcome {
        ScanOutcome {
            entries: entries
                .iter()
                .map(|entry| ScannedEntry {
                    entry: entry.clone(),
                    file_id: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn summary_of(id: u64, entries: &[FileEntry]) -> Message {
        let mut digest = TreeDigest::new(summary_bits(entries.len() as u64));
        entries.iter().for_each(|e| digest.add(e));
        Message::TreeSummary {
            id,
            bits: digest.bits(),
            digests: digest.to_wire(),
        }
    }

    fn machine() -> SenderMachine {
        let mut machine = SenderMachine::new(
            SenderConfig {
                once: true,
                allow_mass_delete: false,
                mass_delete_permille: 200,
                window: 4096,
            },
            None,
        );
        machine.enable_tree_summaries();
        machine
    }

    /// A machine that keeps watching after its first pass (incremental scans follow).
    fn watching() -> SenderMachine {
        let mut machine = machine();
        machine.config.once = false;
        machine
    }

    fn drain(machine: &mut SenderMachine) -> Vec<Message> {
        std::iter::from_fn(|| machine.poll_transmit()).collect()
    }

    fn described(sent: &[Message]) -> Vec<String> {
        sent.iter()
            .filter_map(|m| match m {
                Message::Upsert { entry, .. } => Some(entry.path.clone()),
                _ => None,
            })
            .collect()
    }

    fn forty_files() -> Vec<FileEntry> {
        (0..40).map(|i| file(&format!("f{i}"), i as u8)).collect()
    }

    #[test]
    fn a_full_pass_describes_only_buckets_that_differ_from_the_receivers_summary() {
        let master = forty_files();
        let mut slave = master.clone();
        slave[7] = file("f7", 200);
        let mut machine = machine();
        machine.full_scan_started();
        assert_eq!(drain(&mut machine), [Message::SummaryRequest { id: 1 }]);
        machine.scan_done(true, &tree(&master));
        assert!(machine.awaits_summary());
        assert!(
            drain(&mut machine).is_empty(),
            "the pass waits for the summary"
        );
        machine.handle(summary_of(1, &slave)).expect("valid");
        let sent = drain(&mut machine);
        assert!(matches!(sent[1], Message::PassSkips { .. }), "{sent:?}");
        let paths = described(&sent);
        assert!(paths.contains(&"f7".to_string()), "{paths:?}");
        assert!(paths.len() < 10, "only f7's bucket: {paths:?}");
    }

    #[test]
    fn a_summary_answered_before_the_scan_ends_is_used_when_it_ends() {
        let master = forty_files();
        let mut machine = machine();
        machine.full_scan_started();
        machine.handle(summary_of(1, &master)).expect("valid");
        machine.scan_done(true, &tree(&master));
        let sent = drain(&mut machine);
        assert!(described(&sent).is_empty(), "{sent:?}");
        assert!(matches!(
            sent.last(),
            Some(Message::PassEnd { entries: 0, .. })
        ));
    }

    #[test]
    fn a_file_change_queued_after_the_request_makes_the_summary_stale() {
        // The receiver answers after applying what came before the request: a change queued
        // after it is not in the answer, and skipping by that answer could undo the change.
        let master = forty_files();
        let mut machine = machine();
        machine.full_scan_started();
        machine.refresh_done(vec![file("f3", 99)]);
        machine.handle(summary_of(1, &master)).expect("valid");
        machine.scan_done(true, &tree(&master));
        let sent = drain(&mut machine);
        assert!(!sent.iter().any(|m| matches!(m, Message::PassSkips { .. })));
        assert_eq!(
            described(&sent).len(),
            1 + master.len(),
            "f3's refresh, then every entry"
        );
    }

    #[test]
    fn a_held_pass_goes_out_whole_when_a_change_must_follow_it() {
        let master = forty_files();
        let mut machine = machine();
        machine.full_scan_started();
        machine.scan_done(true, &tree(&master));
        machine.refresh_done(vec![file("f3", 99)]);
        assert!(!machine.awaits_summary());
        let sent = drain(&mut machine);
        let paths = described(&sent);
        assert_eq!(paths.len(), master.len() + 1);
        assert_eq!(
            paths.last().map(String::as_str),
            Some("f3"),
            "the change comes after the pass"
        );
        // The late answer is dropped; one never asked for is a protocol error.
        machine
            .handle(summary_of(1, &master))
            .expect("stale answers are ignored");
        assert!(drain(&mut machine).is_empty());
        assert!(machine.handle(summary_of(2, &master)).is_err());
    }

    fn keys_of(outcome: &ScanOutcome) -> Vec<EntryKey> {
        entry_keys(&outcome.entries, |s| &s.entry)
    }

    #[test]
    fn keys_computed_by_the_driver_give_the_same_pass_as_keys_computed_late() {
        let master = forty_files();
        let mut slave = master.clone();
        slave[7] = file("f7", 200);
        slave.push(file("extra", 1));
        let run = |keys: Option<Vec<EntryKey>>| {
            let mut machine = machine();
            machine.full_scan_started();
            assert!(machine.wants_summary_keys());
            drain(&mut machine);
            machine.take_scan(true, tree(&master), keys);
            machine.handle(summary_of(1, &slave)).expect("valid");
            drain(&mut machine)
        };
        let late = run(None);
        assert!(described(&late).contains(&"f7".to_string()), "{late:?}");
        assert_eq!(run(Some(keys_of(&tree(&master)))), late);
        // Keys that do not fit the tree (a driver bug) are not trusted: computed again.
        assert_eq!(run(Some(Vec::new())), late);
        let mut borrowed = machine();
        borrowed.full_scan_started();
        drain(&mut borrowed);
        borrowed.scan_done(true, &tree(&master));
        borrowed.handle(summary_of(1, &slave)).expect("valid");
        assert_eq!(drain(&mut borrowed), late);
    }

    #[test]
    fn keys_for_a_summary_gone_stale_are_unused_and_the_pass_goes_out_whole() {
        let master = forty_files();
        let mut machine = machine();
        machine.full_scan_started();
        machine.refresh_done(vec![file("f3", 99)]);
        assert!(!machine.wants_summary_keys(), "no summary will be used");
        let outcome = tree(&master);
        let keys = keys_of(&outcome);
        machine.handle(summary_of(1, &master)).expect("valid");
        machine.take_scan(true, outcome, Some(keys));
        let sent = drain(&mut machine);
        assert!(!sent.iter().any(|m| matches!(m, Message::PassSkips { .. })));
        assert_eq!(described(&sent).len(), 1 + master.len());
    }

    #[test]
    fn a_rename_is_described_once_and_counts_in_its_bucket() {
        let mut master = forty_files();
        master.push(file("moved", 77));
        let mut slave = forty_files();
        slave.push(file("was", 77));
        let mut outcome = tree(&master);
        outcome.changes = vec![Change::Rename {
            from: "was".into(),
            entry: file("moved", 77),
        }];
        let keys = keys_of(&outcome);
        let mut machine = machine();
        machine.full_scan_started();
        drain(&mut machine);
        machine.take_scan(true, outcome, Some(keys));
        machine.handle(summary_of(1, &slave)).expect("valid");
        let sent = drain(&mut machine);
        let renames: Vec<_> = sent
            .iter()
            .filter(|m| matches!(m, Message::Rename { .. }))
            .collect();
        assert_eq!(renames.len(), 1, "{sent:?}");
        assert!(!described(&sent).contains(&"moved".to_string()), "{sent:?}");
        let Some(Message::PassSkips {
            bits, unchanged, ..
        }) = sent.get(1)
        else {
            panic!("{sent:?}");
        };
        let skipped = BucketSet::from_wire(*bits, unchanged.clone()).expect("valid");
        assert!(!skipped.contains_path("moved"));
        assert!(!skipped.contains_path("was"));
        let Some(Message::PassEnd { entries, .. }) = sent.last() else {
            panic!("{sent:?}");
        };
        assert_eq!(*entries as usize, renames.len() + described(&sent).len());
    }

    #[test]
    fn the_mass_delete_guard_compares_with_the_tree_of_this_or_the_previous_session() {
        let master = forty_files();
        let few: Vec<FileEntry> = master[..5].to_vec();
        let deletes = |machine: &mut SenderMachine| {
            let mut outcome = tree(&few);
            outcome.changes = master[5..]
                .iter()
                .map(|e| Change::Delete(e.path.clone()))
                .collect();
            machine.take_scan(false, outcome, None);
            drain(machine)
                .iter()
                .filter(|m| matches!(m, Message::Delete { .. }))
                .count()
        };
        // The tree scanned in this session.
        let mut machine = watching();
        machine.take_scan(true, tree(&master), None);
        drain(&mut machine);
        assert_eq!(deletes(&mut machine), 0, "35 of 40 is over the guard");
        assert_eq!(machine.summary().held_deletes, 35);
        // The paths handed over from a previous session.
        let paths = KnownPaths::of(master.iter().map(|e| e.path.as_str()));
        let config = machine.config.clone();
        let mut next = SenderMachine::new(config, Some(paths.clone()));
        assert_eq!(deletes(&mut next), 0);
        assert_eq!(next.summary().held_deletes, 35);
        // The tree a session scanned is handed on to the next one as paths.
        let mut small = SenderMachine::new(machine.config.clone(), Some(paths));
        small.take_scan(false, tree(&master[..39]), None);
        assert_eq!(small.take_last_paths().map(|p| p.len()), Some(39));
    }

    #[test]
    fn what_a_rename_moved_is_not_removed_for_the_mass_delete_guard() {
        let dir = |path: &str| FileEntry {
            kind: EntryKind::Dir,
            chunks: Vec::new(),
            ..file(path, 0)
        };
        let folder = |name: &str| -> Vec<FileEntry> {
            std::iter::once(dir(name))
                .chain((0..30).map(|i| file(&format!("{name}/m{i:02}"), i)))
                .collect()
        };
        let others: Vec<FileEntry> = (0..10).map(|i| file(&format!("z{i}"), 100 + i)).collect();
        let before = [folder("a"), others.clone()].concat();
        // The folder renamed and one other file deleted: 1 of 41 entries removed, not 32.
        let after = [folder("b"), others[1..].to_vec()].concat();
        let mut machine = watching();
        machine.take_scan(true, tree(&before), None);
        drain(&mut machine);
        let mut outcome = tree(&after);
        outcome.changes = vec![
            Change::Rename {
                from: "a".into(),
                entry: dir("b"),
            },
            Change::Delete("z0".into()),
        ];
        machine.take_scan(false, outcome, None);
        let sent = drain(&mut machine);
        let deleted = |m: &Message| matches!(m, Message::Delete { path, .. } if path == "z0");
        assert!(sent.iter().any(deleted), "{sent:?}");
        assert_eq!(machine.summary().held_deletes, 0);
        // Moving the folder away and deleting it are not the same.
        let mut outcome = tree(&others[1..]);
        outcome.changes = vec![Change::Delete("b".into())];
        machine.take_scan(false, outcome, None);
        assert!(!drain(&mut machine)
            .iter()
            .any(|m| matches!(m, Message::Delete { .. })));
        assert_eq!(machine.summary().held_deletes, 31);
    }

    #[test]
    fn without_summaries_a_full_pass_describes_everything_at_once() {
        let master = forty_files();
        let mut machine = machine();
        machine.tree_summaries = false;
        machine.full_scan_started();
        machine.scan_done(true, &tree(&master));
        let sent = drain(&mut machine);
        assert!(matches!(sent[0], Message::PassBegin { full: true, .. }));
        assert_eq!(described(&sent).len(), master.len());
    }

    fn machine_with_window(window: usize) -> SenderMachine {
        let mut machine = machine();
        machine.config.window = window;
        machine
    }

    /// What one session sent, acknowledged batch by batch as a receiver would.
    #[derive(Default)]
    struct Sent {
        messages: Vec<Message>,
        /// The most changes out unacknowledged at once.
        most_in_flight: usize,
    }

    /// Sends until nothing more can leave, acknowledging what is in flight after each batch as
    /// a receiver would; checks the window on the way.
    fn drain_acking(machine: &mut SenderMachine, sent: &mut Sent) {
        loop {
            let batch = drain(machine);
            let in_flight = machine.in_flight.len();
            assert!(in_flight <= machine.config.window, "{in_flight} in flight");
            sent.most_in_flight = sent.most_in_flight.max(in_flight);
            let idle = batch.is_empty();
            sent.messages.extend(batch);
            if machine.sent_up_to > machine.acked {
                let seq = machine.sent_up_to;
                machine.handle(Message::Ack { seq }).expect("sent");
            } else if idle {
                return;
            }
        }
    }

    fn seqs(sent: &[Message]) -> Vec<Seq> {
        sent.iter().filter_map(change_seq).collect()
    }

    fn pass_ends(sent: &[Message]) -> Vec<u64> {
        sent.iter()
            .filter_map(|m| match m {
                Message::PassEnd { entries, .. } => Some(*entries),
                _ => None,
            })
            .collect()
    }

    fn hundred_files() -> Vec<FileEntry> {
        (0..100)
            .map(|i| file(&format!("f{i:03}"), i as u8))
            .collect()
    }

    #[test]
    fn a_full_pass_is_built_as_it_leaves_in_seq_order_within_the_window() {
        let mut master = hundred_files();
        master.push(file("moved", 77));
        let mut slave = hundred_files();
        slave.push(file("was", 77));
        for i in (0..100).step_by(9) {
            slave[i] = file(&format!("f{i:03}"), 250);
        }
        let mut outcome = tree(&master);
        outcome.changes = vec![Change::Rename {
            from: "was".into(),
            entry: file("moved", 77),
        }];
        let mut machine = machine_with_window(8);
        machine.full_scan_started();
        let mut sent = Sent::default();
        drain_acking(&mut machine, &mut sent);
        machine.take_scan(true, outcome, None);
        machine.handle(summary_of(1, &slave)).expect("valid");
        // PassBegin, PassSkips, the rename, the run of the tree's entries, PassEnd: the
        // entries are not messages yet.
        assert_eq!(machine.queue.len(), 5);
        // Half the window leaves, then a change is queued behind the pass.
        for _ in 0..6 {
            sent.messages.extend(machine.poll_transmit());
        }
        machine.refresh_done(vec![file("late", 5)]);
        drain_acking(&mut machine, &mut sent);
        assert!(machine.queue.is_empty() && machine.in_flight.is_empty());
        assert_eq!(sent.most_in_flight, 8, "the window was full and held");

        let numbered = seqs(&sent.messages);
        let expected: Vec<Seq> = (1..=numbered.len() as u64).collect();
        assert_eq!(
            numbered, expected,
            "changes leave in the order of their numbers"
        );
        let Some(Message::PassSkips {
            bits, unchanged, ..
        }) = sent.messages.get(2)
        else {
            panic!("{:?}", &sent.messages[..3]);
        };
        let skipped = BucketSet::from_wire(*bits, unchanged.clone()).expect("valid");
        let mut paths: Vec<String> = master
            .iter()
            .map(|e| e.path.clone())
            .filter(|p| p != "moved" && !skipped.contains_path(p))
            .collect();
        assert!(paths.len() > 8 && paths.len() < 100, "{}", paths.len());
        paths.push("late".into());
        assert_eq!(described(&sent.messages), paths);
        assert!(matches!(sent.messages[3], Message::Rename { seq: 1, .. }));
        assert_eq!(
            pass_ends(&sent.messages),
            [paths.len() as u64, 1],
            "the full pass counts the rename and its upserts, the refresh its one"
        );
        let tail = &sent.messages[sent.messages.len() - 4..];
        assert!(
            matches!(tail, [
                Message::PassEnd { .. },
                Message::PassBegin { full: false, .. },
                Message::Upsert { entry, .. },
                Message::PassEnd { .. },
            ] if entry.path == "late"),
            "the change queued during the pass follows it: {tail:?}"
        );
    }

    #[test]
    fn a_full_pass_without_summary_or_renames_describes_every_entry_in_order() {
        let master = hundred_files();
        let mut machine = machine_with_window(7);
        machine.tree_summaries = false;
        machine.take_scan(true, tree(&master), None);
        assert_eq!(machine.queue.len(), 3, "PassBegin, the run, PassEnd");
        machine.queue_registry_changes(RegistryChangeSet::default());
        let mut sent = Sent::default();
        drain_acking(&mut machine, &mut sent);
        let paths: Vec<String> = master.iter().map(|e| e.path.clone()).collect();
        assert_eq!(described(&sent.messages), paths);
        assert_eq!(pass_ends(&sent.messages), [100]);
        assert_eq!(seqs(&sent.messages), (1..=101).collect::<Vec<Seq>>());
        assert!(matches!(
            sent.messages.last(),
            Some(Message::RegistryChanges { seq: 101, .. })
        ));
        assert!(machine.queue.is_empty() && machine.in_flight.is_empty());
    }

    #[test]
    fn a_summary_gone_stale_while_a_run_is_queued_sends_the_held_pass_whole_after_it() {
        let master = hundred_files();
        let mut slave = master.clone();
        for i in (0..100).step_by(5) {
            slave[i] = file(&format!("f{i:03}"), 250);
        }
        let mut machine = machine_with_window(3);
        machine.full_scan_started();
        machine.handle(summary_of(1, &slave)).expect("valid");
        machine.scan_done(true, &tree(&master));
        let mut sent = Sent::default();
        sent.messages.extend(drain(&mut machine));
        assert_eq!(seqs(&sent.messages), [1, 2, 3], "the window holds the run");
        // A second full scan while the first pass is still queued: its summary request goes
        // behind that pass, the scan is held for the answer, and a refresh makes the answer
        // stale before it arrives.
        let mut changed = master.clone();
        changed[3] = file("f003", 99);
        machine.full_scan_started();
        machine.scan_done(true, &tree(&changed));
        assert!(machine.awaits_summary());
        machine.refresh_done(vec![file("f003", 99)]);
        assert!(!machine.awaits_summary());
        machine
            .handle(summary_of(2, &slave))
            .expect("a stale answer is ignored");
        drain_acking(&mut machine, &mut sent);

        let messages = &sent.messages;
        let numbered = seqs(messages);
        assert_eq!(numbered, (1..=numbered.len() as u64).collect::<Vec<Seq>>());
        let first_end = messages
            .iter()
            .position(|m| matches!(m, Message::PassEnd { .. }))
            .expect("ended");
        assert!(matches!(
            messages[first_end + 1],
            Message::SummaryRequest { id: 2 }
        ));
        let first = described(&messages[..first_end]);
        assert!(first.contains(&"f040".to_string()), "{first:?}");
        assert!(first.len() > 3 && first.len() < 100, "{}", first.len());
        let mut then: Vec<String> = master.iter().map(|e| e.path.clone()).collect();
        then.push("f003".into());
        assert_eq!(described(&messages[first_end..]), then);
        assert_eq!(pass_ends(messages), [first.len() as u64, 100, 1]);
        assert!(
            !messages[first_end..]
                .iter()
                .any(|m| matches!(m, Message::PassSkips { .. })),
            "the stale summary is not used"
        );
    }

    #[test]
    fn picked_finds_each_entry_left_across_words() {
        let mut picked = Picked::all(130);
        assert_eq!(picked.count(), 130);
        assert_eq!(picked.next_from(130), None);
        for i in (0..130).filter(|i| ![0, 63, 64, 127, 129].contains(i)) {
            picked.remove(i);
        }
        assert_eq!(picked.indices().collect::<Vec<_>>(), [0, 63, 64, 127, 129]);
        assert_eq!(picked.next_from(1), Some(63));
        assert_eq!(picked.next_from(65), Some(127));
        assert_eq!(picked.next_from(128), Some(129));
        assert_eq!(Picked::all(64).next_from(64), None);
        assert_eq!(Picked::all(0).count(), 0);
    }
}
