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
use swrepl_proto::summary::{bucket_of, TreeDigest};
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
    renames: Vec<(String, FileEntry)>,
    entries: Vec<FileEntry>,
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
    /// The receiver speaks protocol version 2: full passes skip what its summary shows equal.
    tree_summaries: bool,
    last_summary_id: u64,
    summary_state: SummaryState,
    /// A full pass whose scan finished before the receiver's summary arrived.
    held_full: Option<FullPassPlan>,
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
        self.queue.push_back(Message::SummaryRequest {
            id: self.last_summary_id,
        });
        self.summary_state = SummaryState::Requested(self.last_summary_id);
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
            && self.held_full.is_none()
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
            self.full_scan_done(outcome);
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

    /// A full scan: queued at once, or held until the receiver's summary (asked for when the
    /// scan started) arrives.
    fn full_scan_done(&mut self, outcome: &ScanOutcome) {
        let mut renamed = HashSet::new();
        let mut renames = Vec::new();
        for change in &outcome.changes {
            if let Change::Rename { from, entry } = change {
                renamed.insert(entry.path.as_str());
                renames.push((from.clone(), entry.clone()));
            }
        }
        let entries = outcome
            .entries
            .iter()
            .filter(|scanned| !renamed.contains(scanned.entry.path.as_str()))
            .map(|scanned| scanned.entry.clone())
            .collect();
        let plan = FullPassPlan { renames, entries };
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
    /// out (`PassSkips`), and the receiver keeps them whole at the pass's end.
    fn queue_full_pass(&mut self, plan: FullPassPlan, theirs: Option<&TreeDigest>) {
        // Each entry's bucket, renames first (computed once: it decides both the digest and
        // whether the entry is described).
        let all_entries = plan.renames.iter().map(|(_, e)| e).chain(&plan.entries);
        let (skipped, buckets) = match theirs {
            Some(theirs) => {
                let mut ours = TreeDigest::new(theirs.bits());
                let buckets: Vec<usize> = all_entries
                    .map(|entry| {
                        let bucket = bucket_of(&entry.path, ours.bits());
                        ours.add_to(bucket, entry);
                        bucket
                    })
                    .collect();
                (ours.unchanged_buckets(theirs), buckets)
            }
            None => (None, Vec::new()),
        };
        let mut is_skipped = buckets
            .into_iter()
            .map(|bucket| skipped.as_ref().is_some_and(|s| s.contains(bucket)));
        let pass = self.begin_pass(true);
        if let Some(skipped) = &skipped {
            self.queue.push_back(Message::PassSkips {
                pass,
                bits: skipped.bits(),
                unchanged: skipped.as_wire().to_vec(),
            });
        }
        let total = plan.renames.len() + plan.entries.len();
        let mut described = 0u64;
        for (from, entry) in plan.renames {
            if !is_skipped.next().unwrap_or(false) {
                described += 1;
                self.queue_change(Change::Rename { from, entry });
            }
        }
        for entry in plan.entries {
            if !is_skipped.next().unwrap_or(false) {
                described += 1;
                self.queue_change(Change::Upsert(entry));
            }
        }
        if let Some(skipped) = &skipped {
            tracing::info!(
                described,
                total,
                buckets_equal = skipped.len(),
                buckets = skipped.capacity(),
                "full pass: the receiver's summary leaves {} of {total} entries to describe",
                described
            );
        }
        let prune = if self.config.allow_mass_delete {
            Prune::All
        } else {
            Prune::UpToPermille(self.config.mass_delete_permille)
        };
        self.end_pass(pass, described, prune);
    }

    fn queue_incremental(&mut self, outcome: &ScanOutcome, current: &HashSet<String>) {
        if outcome.changes.is_empty() {
            return;
        }
        self.summary_went_stale();
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
}
