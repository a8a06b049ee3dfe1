//! The sender's half of a session, as a state machine.
//!
//! Scans go in ([`SenderMachine::scan_done`], [`SenderMachine::refresh_done`]) and become
//! numbered changes; [`SenderMachine::poll_transmit`] hands out what to send next, at most a
//! window of changes ([`WINDOW`](super::WINDOW)) ahead of the receiver's cumulative acknowledgement; the receiver's messages
//! go in through [`SenderMachine::handle`], which says what the driver must do (serve chunks,
//! note an acknowledgement). Reading files, scanning and the socket stay with the driver.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};

use swrepl_proto::registry::{RegistryChangeSet, RegistrySnapshot};
use swrepl_proto::{EntryKind, FileEntry, Message, Prune, Seq};
use swrepl_tree::{Change, ScanOutcome};

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

/// The sender's session state: numbered changes, the window, passes and the run's summary.
pub struct SenderMachine {
    config: SenderConfig,
    next_seq: Seq,
    acked: Seq,
    in_flight: BTreeMap<Seq, InFlight>,
    /// Changes and pass markers, in order; changes leave only within the window.
    queue: VecDeque<Message>,
    /// Replies to the receiver's requests (chunk data, withdrawals): never held by the window.
    replies: VecDeque<Message>,
    pass: u64,
    passes_done: u64,
    passes_sent: u64,
    /// The paths of the last scanned tree, for the mass-delete guard of watched changes.
    last_paths: Option<HashSet<String>>,
    summary: SendSummary,
    retries_left: u32,
}

impl SenderMachine {
    /// A new session; `last_paths` is the tree the previous session saw, if any.
    pub fn new(config: SenderConfig, last_paths: Option<HashSet<String>>) -> Self {
        SenderMachine {
            config,
            next_seq: 1,
            acked: 0,
            in_flight: BTreeMap::new(),
            queue: VecDeque::new(),
            replies: VecDeque::new(),
            pass: 0,
            passes_done: 0,
            passes_sent: 0,
            last_paths,
            summary: SendSummary::default(),
            retries_left: ONCE_RETRIES,
        }
    }

    /// What this session did so far (wire bytes and registry counts are the driver's to add).
    pub fn summary(&self) -> &SendSummary {
        &self.summary
    }

    /// The tree the last scan saw, for the next session.
    pub fn take_last_paths(&mut self) -> Option<HashSet<String>> {
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
            && self.passes_sent > 0
            && self.passes_done == self.passes_sent
    }

    /// The next message to send: replies first, then queued changes within the window.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(reply) = self.replies.pop_front() {
            return Some(reply);
        }
        let seq = self.queue.front().and_then(change_seq);
        if seq.is_some_and(|seq| seq > self.acked + self.config.window as u64) {
            return None;
        }
        self.queue.pop_front()
    }

    /// A finished scan: a full one becomes a full pass, an incremental one a pass of its
    /// changes. Returns true when some files could not be read and a rescan should follow.
    pub fn scan_done(&mut self, full: bool, outcome: &ScanOutcome) -> bool {
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
        self.summary.unreadable = outcome.problems.clone();
        let current: HashSet<String> = outcome
            .entries
            .iter()
            .map(|e| e.entry.path.clone())
            .collect();
        if full {
            self.queue_full_pass(outcome);
        } else {
            self.queue_incremental(outcome, &current);
        }
        self.record_tree(outcome);
        self.last_paths = Some(current);
        retry
    }

    /// Files reread after content events (no walk): one pass of upserts.
    pub fn refresh_done(&mut self, upserts: Vec<FileEntry>) {
        if upserts.is_empty() {
            return;
        }
        let pass = self.begin_pass(false);
        let count = upserts.len() as u64;
        for entry in upserts {
            self.queue_change(Change::Upsert(entry));
        }
        self.end_pass(pass, count, Prune::Never);
    }

    /// A registry change set takes the next sequence number, like a file change.
    pub fn queue_registry_changes(&mut self, changes: RegistryChangeSet) -> Seq {
        let seq = self.take_seq(None);
        self.queue
            .push_back(Message::RegistryChanges { seq, changes });
        seq
    }

    /// A request without a sequence number (e.g. `RegistryRequest`), sent in queue order.
    pub fn queue_request(&mut self, msg: Message) {
        self.queue.push_back(msg);
    }

    /// Takes one message from the receiver.
    pub fn handle(&mut self, msg: Message) -> Result<Reaction, SyncError> {
        Ok(match msg {
            Message::NeedChunks { seq, indices } => {
                Reaction::ServeChunks(self.chunk_request(seq, indices)?)
            }
            Message::Ack { seq } => {
                if seq >= self.next_seq {
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

    fn record_tree(&mut self, outcome: &ScanOutcome) {
        let files = outcome
            .entries
            .iter()
            .filter(|e| e.entry.kind == EntryKind::File);
        self.summary.entries = outcome.entries.len() as u64;
        self.summary.files = files.clone().count() as u64;
        self.summary.bytes_in_tree = files.map(|e| e.entry.size).sum();
    }

    fn begin_pass(&mut self, full: bool) -> u64 {
        self.pass += 1;
        self.queue.push_back(Message::PassBegin {
            pass: self.pass,
            full,
        });
        self.pass
    }

    fn end_pass(&mut self, pass: u64, entries: u64, prune: Prune) {
        self.queue.push_back(Message::PassEnd {
            pass,
            entries,
            prune,
        });
        self.passes_sent += 1;
    }

    fn queue_full_pass(&mut self, outcome: &ScanOutcome) {
        let pass = self.begin_pass(true);
        let mut renamed = HashSet::new();
        for change in &outcome.changes {
            if let Change::Rename { from, entry } = change {
                renamed.insert(entry.path.clone());
                self.queue_change(Change::Rename {
                    from: from.clone(),
                    entry: entry.clone(),
                });
            }
        }
        for scanned in &outcome.entries {
            if !renamed.contains(&scanned.entry.path) {
                self.queue_change(Change::Upsert(scanned.entry.clone()));
            }
        }
        let prune = if self.config.allow_mass_delete {
            Prune::All
        } else {
            Prune::UpToPermille(self.config.mass_delete_permille)
        };
        self.end_pass(pass, outcome.entries.len() as u64, prune);
    }

    fn queue_incremental(&mut self, outcome: &ScanOutcome, current: &HashSet<String>) {
        if outcome.changes.is_empty() {
            return;
        }
        let held = self.deletes_to_hold(outcome, current);
        let pass = self.begin_pass(false);
        for change in &outcome.changes {
            if held > 0 && matches!(change, Change::Delete(_)) {
                continue;
            }
            self.queue_change(change.clone());
        }
        self.end_pass(pass, outcome.entries.len() as u64, Prune::Never);
    }

    /// The mass-delete guard for watched changes: when one scan removes more than the threshold
    /// of the tree, its deletes are held (not sent) until a confirmed full pass.
    fn deletes_to_hold(&mut self, outcome: &ScanOutcome, current: &HashSet<String>) -> u64 {
        let Some(previous) = &self.last_paths else {
            return 0;
        };
        let moved_from: Vec<&str> = outcome
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Rename { from, .. } => Some(from.as_str()),
                _ => None,
            })
            .collect();
        let removed = previous
            .iter()
            .filter(|p| !current.contains(*p))
            .filter(|p| !moved_from.iter().any(|from| is_same_or_under(p, from)))
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

    /// Numbers a change and remembers what serving its chunks needs until it is acknowledged.
    fn take_seq(&mut self, entry: Option<FileEntry>) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = entry.filter(|e| e.kind == EntryKind::File && !e.chunks.is_empty());
        let offsets = entry.as_ref().map(chunk_offsets).unwrap_or_default();
        self.in_flight.insert(seq, InFlight { entry, offsets });
        seq
    }

    fn queue_change(&mut self, change: Change) {
        let msg = match change {
            Change::Upsert(entry) => {
                let seq = self.take_seq(Some(entry.clone()));
                Message::Upsert { seq, entry }
            }
            Change::Rename { from, entry } => {
                let seq = self.take_seq(Some(entry.clone()));
                Message::Rename { seq, from, entry }
            }
            Change::Delete(path) => {
                let seq = self.take_seq(None);
                Message::Delete { seq, path }
            }
        };
        self.queue.push_back(msg);
    }
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
    let mut data = vec![0u8; chunk.len as usize];
    file.seek(SeekFrom::Start(*offset))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|e| format!("read failed: {e}"))?;
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
