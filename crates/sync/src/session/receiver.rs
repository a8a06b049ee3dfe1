//! The receiver's half of a sender session, as a state machine.
//!
//! It takes the sender's messages one at a time ([`ReceiverMachine::receive`]), applies what is
//! ready strictly in sequence order ([`ReceiverMachine::apply_ready`]) through a
//! [`ReceiverStore`], acknowledges cumulatively ([`ReceiverMachine::acknowledge`]) and queues
//! what the outside world must do: messages to send, events, status changes
//! ([`ReceiverMachine::poll_output`]). Chunk requests for later changes go out as soon as those
//! changes arrive, so transfers are pipelined while the head of the queue waits for its data.

use std::collections::{HashSet, VecDeque};
use std::path::Path;

use swrepl_proto::summary::BucketSet;
use swrepl_proto::{
    validate_entry, validate_message, EntryKind, ErrorCode, FileEntry, Hash, Message, Prune, Seq,
};

use super::{Completion, PendingContent, Prepared, ReceiverStore};
use crate::receiver::ReceiverEvent;
use crate::registry::ReceiverRegistry;
use crate::SyncError;

/// Changes received but not yet applied that the receiver accepts (twice the sender's window).
pub const MAX_QUEUED_CHANGES: usize = 2 * super::WINDOW;

/// Something the driver must do on the machine's behalf.
#[derive(Debug)]
pub enum ReceiverOutput {
    /// Send this message to the sender.
    Send(Message),
    /// Report this event (demo, tests, logs).
    Event(ReceiverEvent),
    /// Record this in the receiver's status.
    Status(StatusChange),
}

/// A change to what the receiver's status file reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// Changes received and not yet applied.
    Pending(u64),
    /// Everything up to `seq` is applied and acknowledged; `idle` when nothing else waits (a
    /// pre-check reads the status then, so it should be written at once).
    Acked { seq: Seq, idle: bool },
    /// The sender's heartbeat, with the Master's monitored service as text.
    Heartbeat { service: Option<String> },
    /// What the end of a full pass pruned or held back.
    PassOutcome { pruned: u64, held: u64 },
}

/// One queued change, applied in sequence order.
enum Op<P> {
    File {
        seq: Seq,
        pending: Box<P>,
        then_remove: Option<String>,
    },
    Structural {
        seq: Seq,
        entry: FileEntry,
    },
    Delete {
        seq: Seq,
        path: String,
    },
    Rename {
        seq: Seq,
        from: String,
        entry: FileEntry,
    },
    Done {
        seq: Seq,
    },
    /// A file that was up to date when its change arrived, behind changes that may still remove
    /// or replace it (a delete, a rename, the prune of a full pass): checked again in its turn.
    Recheck {
        seq: Seq,
        entry: FileEntry,
        then_remove: Option<String>,
    },
    Refuse {
        seq: Seq,
        path: String,
        reason: String,
    },
    /// The end of a pass; a full pass carries the paths it named, to prune the rest. (They are
    /// taken when `PassEnd` arrives: the next pass may begin before this op is applied.)
    PassEnd {
        pass: u64,
        prune: Prune,
        seen: Option<HashSet<String>>,
        skipped: Option<BucketSet>,
    },
    Registry {
        seq: Seq,
        changes: swrepl_registry::ChangeSet,
    },
    /// Answer a sender's `RegistryRequest` once everything before it is applied.
    RegistryReport,
    /// Answer a sender's `SummaryRequest` once everything before it is applied.
    Summary {
        id: u64,
    },
}

impl<P> Op<P> {
    fn seq(&self) -> Option<Seq> {
        match self {
            Op::File { seq, .. }
            | Op::Structural { seq, .. }
            | Op::Delete { seq, .. }
            | Op::Rename { seq, .. }
            | Op::Done { seq }
            | Op::Recheck { seq, .. }
            | Op::Refuse { seq, .. }
            | Op::Registry { seq, .. } => Some(*seq),
            Op::PassEnd { .. } | Op::RegistryReport | Op::Summary { .. } => None,
        }
    }
}

/// The receiver's session state: the queue of changes in sequence order and what was applied
/// and acknowledged.
pub struct ReceiverMachine<S: ReceiverStore> {
    store: S,
    registry: ReceiverRegistry,
    outputs: VecDeque<ReceiverOutput>,
    queue: VecDeque<Op<S::Pending>>,
    last_seq: Seq,
    applied_seq: Seq,
    acked_seq: Seq,
    /// Chunk hashes asked for in this session: a second copy is filled locally.
    requested: HashSet<Hash>,
    /// The pass in progress and whether it is full.
    pass: Option<(u64, bool)>,
    /// Paths the current full pass named so far, so its end can prune the rest.
    seen: HashSet<String>,
    /// Buckets the current full pass leaves out (`PassSkips`): kept whole at its end.
    skipped: Option<BucketSet>,
}

impl<S: ReceiverStore> ReceiverMachine<S> {
    /// A session that replicates files only.
    pub fn new(store: S) -> Self {
        Self::with_registry(store, ReceiverRegistry::new(None, Path::new("")))
    }

    /// A session that also applies registry change sets. With registry replication on, the
    /// first message after Welcome is the state of the keys the sender may write.
    pub(crate) fn with_registry(store: S, registry: ReceiverRegistry) -> Self {
        let mut machine = ReceiverMachine {
            store,
            registry,
            outputs: VecDeque::new(),
            queue: VecDeque::new(),
            last_seq: 0,
            applied_seq: 0,
            acked_seq: 0,
            requested: HashSet::new(),
            pass: None,
            seen: HashSet::new(),
            skipped: None,
        };
        if let Some(snapshot) = machine.registry.first_message() {
            machine.send(snapshot);
        }
        machine
    }

    /// The next thing to do for the machine, in order.
    pub fn poll_output(&mut self) -> Option<ReceiverOutput> {
        self.outputs.pop_front()
    }

    /// The highest sequence number applied (and durable) so far.
    pub fn applied_seq(&self) -> Seq {
        self.applied_seq
    }

    /// Whether changes were applied since the last acknowledgement.
    pub fn has_unacknowledged(&self) -> bool {
        self.applied_seq > self.acked_seq
    }

    /// Whether more messages are on their way: changes wait to be applied (most often files
    /// waiting for the chunks asked for), or the pass being received has not ended yet. A
    /// stream of small files, each applied before the next arrives, is one pass.
    pub fn expects_more(&self) -> bool {
        !self.queue.is_empty() || self.pass.is_some()
    }

    /// Ends the session: pending files are discarded (their staging removed) and the store is
    /// handed back for the next session.
    pub fn into_store(mut self) -> S {
        for op in std::mem::take(&mut self.queue) {
            if let Op::File { pending, .. } = op {
                self.store.discard(*pending);
            }
        }
        // A change that failed half way (e.g. the disk filled up) left its staging file behind.
        self.store.clear_staging();
        self.store
    }

    /// The store (for inspection, e.g. by the simulation).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Ends the session as a crash would: nothing is cleaned up, pending files stay where they
    /// are (a restarted receiver clears its staging area when it opens the store).
    pub fn abandon(self) -> S {
        self.store
    }

    /// Takes one message from the sender (already checked against the protocol's limits). A
    /// fatal error is also told to the peer before the session ends.
    pub fn receive(&mut self, msg: Message) -> Result<(), SyncError> {
        let result = self.handle(msg);
        self.tell_peer(&result);
        result
    }

    /// Applies queued changes from the head while they are ready. A fatal error (a full disk, a
    /// file that does not assemble to its hash) is also told to the peer, so its operator reads
    /// the reason, not "connection closed".
    pub fn apply_ready(&mut self) -> Result<(), SyncError> {
        let result = self.drain();
        self.tell_peer(&result);
        result
    }

    /// Acknowledges everything applied so far (cumulative), once the store made it durable; on
    /// error nothing is acknowledged and the session must end (the peer is told why).
    pub fn acknowledge(&mut self) -> Result<(), SyncError> {
        if self.applied_seq > self.acked_seq {
            let durable = self.store.checkpoint(self.expects_more());
            self.tell_peer(&durable);
            durable?;
            self.acked_seq = self.applied_seq;
            self.send(Message::Ack {
                seq: self.acked_seq,
            });
            self.status(StatusChange::Acked {
                seq: self.acked_seq,
                idle: !self.expects_more(),
            });
        }
        Ok(())
    }

    fn send(&mut self, msg: Message) {
        self.outputs.push_back(ReceiverOutput::Send(msg));
    }

    fn event(&mut self, event: ReceiverEvent) {
        self.outputs.push_back(ReceiverOutput::Event(event));
    }

    fn status(&mut self, change: StatusChange) {
        self.outputs.push_back(ReceiverOutput::Status(change));
    }

    fn tell_peer(&mut self, result: &Result<(), SyncError>) {
        if let Err(e) = result {
            let code = match e {
                SyncError::Protocol(_) => ErrorCode::ProtocolViolation,
                _ => ErrorCode::ReceiverUnavailable,
            };
            self.send(Message::Error {
                code,
                message: e.to_string(),
            });
        }
    }

    fn next_seq(&mut self, seq: Seq) -> Result<(), SyncError> {
        if seq != self.last_seq + 1 {
            return Err(SyncError::Protocol(format!(
                "sequence {seq} after {}",
                self.last_seq
            )));
        }
        // A sender may not run ahead without bound (an honest one keeps at most its window of
        // unacknowledged changes in flight).
        if self.queue.len() >= MAX_QUEUED_CHANGES {
            return Err(SyncError::Protocol(format!(
                "more than {MAX_QUEUED_CHANGES} changes not yet applied"
            )));
        }
        self.last_seq = seq;
        Ok(())
    }

    fn handle(&mut self, msg: Message) -> Result<(), SyncError> {
        match msg {
            Message::Upsert { seq, entry } => {
                self.next_seq(seq)?;
                let op = match self.check_entry(seq, &entry) {
                    Some(refusal) => refusal,
                    None => self.prepare(seq, entry, None, false)?,
                };
                self.queue.push_back(op);
            }
            Message::Rename { seq, from, entry } => {
                self.next_seq(seq)?;
                let op = self
                    .check_entry(seq, &entry)
                    .or_else(|| self.check_path(seq, &from))
                    .unwrap_or(Op::Rename { seq, from, entry });
                self.queue.push_back(op);
            }
            Message::Delete { seq, path } => {
                self.next_seq(seq)?;
                let op = self
                    .check_path(seq, &path)
                    .unwrap_or(Op::Delete { seq, path });
                self.queue.push_back(op);
            }
            Message::ChunkData { seq, index, data } => self.chunk_data(seq, index, &data)?,
            Message::FileUnavailable { seq, reason } => self.withdraw(seq, &reason),
            Message::PassBegin { pass, full } => {
                self.pass = Some((pass, full));
                self.seen.clear();
                self.skipped = None;
            }
            Message::PassSkips {
                pass,
                bits,
                unchanged,
            } => {
                if self.pass != Some((pass, true)) || !self.seen.is_empty() {
                    return Err(SyncError::Protocol(format!(
                        "PassSkips for pass {pass} outside the start of that full pass"
                    )));
                }
                let skipped = BucketSet::from_wire(bits, unchanged).ok_or_else(|| {
                    SyncError::Protocol(format!(
                        "PassSkips of {bits} bits with a bitmap of the wrong length"
                    ))
                })?;
                self.skipped = Some(skipped);
            }
            Message::PassEnd { pass, prune, .. } => {
                let (seen, skipped) = match self.pass.take() {
                    Some((begun, true)) if begun == pass => {
                        (Some(std::mem::take(&mut self.seen)), self.skipped.take())
                    }
                    _ => (None, None),
                };
                self.queue.push_back(Op::PassEnd {
                    pass,
                    prune,
                    seen,
                    skipped,
                })
            }
            Message::SummaryRequest { id } => {
                // Only the latest request matters to the sender (it drops older answers): one
                // summary, hence one rescan, waits at a time however often it is asked.
                self.queue.retain(|op| !matches!(op, Op::Summary { .. }));
                self.queue.push_back(Op::Summary { id });
            }
            Message::RegistryChanges { seq, changes } => {
                self.next_seq(seq)?;
                let op = match self.registry.check(&changes) {
                    Ok(changes) => Op::Registry { seq, changes },
                    Err(refusal) => Op::Refuse {
                        seq,
                        path: refusal.path,
                        reason: refusal.reason,
                    },
                };
                self.queue.push_back(op);
            }
            Message::RegistryRequest => self.queue.push_back(Op::RegistryReport),
            Message::Heartbeat(hb) => {
                let service = hb
                    .service
                    .map(|service| format!("{}: {:?}", service.name, service.state));
                self.status(StatusChange::Heartbeat { service });
            }
            Message::Error { code, message } => {
                return Err(SyncError::Protocol(format!(
                    "sender reported {code:?}: {message}"
                )))
            }
            other => {
                return Err(SyncError::Protocol(format!(
                    "unexpected message from a sender: {}",
                    swrepl_proto::message_name(&other)
                )))
            }
        }
        Ok(())
    }

    /// Applies a registry change set; a failure refuses it (nothing applied) and the session
    /// goes on.
    fn apply_registry(&mut self, seq: Seq, changes: &swrepl_registry::ChangeSet) {
        match self.registry.apply(changes) {
            Ok(0) => {}
            Ok(ops) => self.event(ReceiverEvent::RegistryApplied { ops }),
            Err(refusal) => self.refuse(seq, refusal.path, refusal.reason),
        }
    }

    fn refuse(&mut self, seq: Seq, path: String, reason: String) {
        tracing::warn!(%path, "refused: {reason}");
        self.event(ReceiverEvent::Refused {
            path: path.clone(),
            reason: reason.clone(),
        });
        self.send(Message::Refused { seq, path, reason });
    }

    /// Refuses an entry with an invalid or excluded path, or inconsistent fields.
    fn check_entry(&mut self, seq: Seq, entry: &FileEntry) -> Option<Op<S::Pending>> {
        let refusal = |reason: String| Op::Refuse {
            seq,
            path: entry.path.clone(),
            reason,
        };
        if let Err(e) = validate_entry(entry) {
            return Some(refusal(e.to_string()));
        }
        if let EntryKind::Symlink { target } = &entry.kind {
            if self.store.link_reaches_excluded(&entry.path, target) {
                return Some(refusal(format!(
                    "link target {target:?} leads into swrepl's state or an excluded folder"
                )));
            }
        }
        if self.pass.is_some_and(|(_, full)| full) {
            self.seen.insert(entry.path.clone());
        }
        self.check_path(seq, &entry.path)
    }

    fn check_path(&self, seq: Seq, path: &str) -> Option<Op<S::Pending>> {
        let reason = if let Err(e) = swrepl_proto::validate_path(path) {
            e.to_string()
        } else if self.store.is_excluded(path) {
            "path is excluded on this receiver (SwSQL data or swrepl state)".to_string()
        } else {
            return None;
        };
        Some(Op::Refuse {
            seq,
            path: path.to_string(),
            reason,
        })
    }

    /// Turns an upsert into its op. `in_turn`: every change before it is applied, so what the
    /// store says now is what this change will find.
    fn prepare(
        &mut self,
        seq: Seq,
        entry: FileEntry,
        then_remove: Option<String>,
        in_turn: bool,
    ) -> Result<Op<S::Pending>, SyncError> {
        let in_turn = in_turn || self.queue.is_empty();
        Ok(
            match self.store.prepare_upsert(entry, &mut self.requested)? {
                Prepared::UpToDate(entry) if !in_turn => Op::Recheck {
                    seq,
                    entry,
                    then_remove,
                },
                Prepared::UpToDate(_) => match then_remove {
                    Some(from) => Op::Delete { seq, path: from },
                    None => Op::Done { seq },
                },
                Prepared::Structural(entry) => Op::Structural { seq, entry },
                Prepared::File { pending, need } => {
                    if !need.is_empty() {
                        self.send(Message::NeedChunks { seq, indices: need });
                    }
                    Op::File {
                        seq,
                        pending,
                        then_remove,
                    }
                }
            },
        )
    }

    fn chunk_data(&mut self, seq: Seq, index: u32, data: &[u8]) -> Result<(), SyncError> {
        if seq > self.last_seq {
            return Err(SyncError::Protocol(format!(
                "chunk data for change {seq}, which was never announced (last is {})",
                self.last_seq
            )));
        }
        let Some(Op::File { pending, .. }) = self.queue.iter_mut().find(|op| op.seq() == Some(seq))
        else {
            // A change withdrawn or already refused; its data may still be in flight.
            tracing::debug!(seq, "chunk for a change not awaiting data; ignored");
            return Ok(());
        };
        self.store.write_chunk(pending, index, data)
    }

    /// The sender could not send a file's data: its change is dropped (the old version stays).
    /// A rename that had to be rebuilt as an upsert still removes its source, which the Master
    /// no longer has.
    fn withdraw(&mut self, seq: Seq, reason: &str) {
        let Some(op) = self.queue.iter_mut().find(|op| op.seq() == Some(seq)) else {
            return;
        };
        let old = std::mem::replace(op, Op::Done { seq });
        if let Op::File {
            pending,
            then_remove,
            ..
        } = old
        {
            tracing::info!(path = %pending.entry().path, "sender withdrew a change: {reason}");
            if let Some(from) = then_remove {
                *op = Op::Delete { seq, path: from };
            }
            self.store.discard(*pending);
        }
    }

    fn drain(&mut self) -> Result<(), SyncError> {
        while let Some(op) = self.queue.pop_front() {
            if let Some(blocked) = self.apply(op)? {
                self.queue.push_front(blocked);
                break;
            }
        }
        self.status(StatusChange::Pending(self.queue.len() as u64));
        Ok(())
    }

    /// Applies one op, or hands it back when it must wait for more data.
    fn apply(&mut self, op: Op<S::Pending>) -> Result<Option<Op<S::Pending>>, SyncError> {
        let seq = op.seq();
        match op {
            Op::File {
                seq,
                pending,
                then_remove,
            } => {
                if let Some(waiting) = self.apply_file(seq, pending, then_remove)? {
                    return Ok(Some(waiting));
                }
            }
            Op::Structural { entry, .. } => {
                let kind = if entry.kind == EntryKind::Dir {
                    "dir"
                } else {
                    "link"
                };
                let path = entry.path.clone();
                self.store.apply_structural(entry)?;
                self.event(ReceiverEvent::Applied {
                    path,
                    kind,
                    bytes_received: 0,
                });
            }
            Op::Delete { path, .. } => {
                if self.store.delete(&path)? {
                    self.event(ReceiverEvent::Deleted(path));
                }
            }
            Op::Rename { seq, from, entry } => {
                if self.store.rename(&from, &entry)? {
                    self.event(ReceiverEvent::Renamed {
                        from,
                        to: entry.path,
                    });
                } else {
                    // Not renameable here: build the target like any upsert, then remove `from`.
                    let fallback = self.prepare(seq, entry, Some(from), true)?;
                    return self.apply(fallback);
                }
            }
            Op::Done { .. } => {}
            Op::Recheck {
                seq,
                entry,
                then_remove,
            } => {
                let now = self.prepare(seq, entry, then_remove, true)?;
                return self.apply(now);
            }
            Op::Registry { seq, changes } => self.apply_registry(seq, &changes),
            Op::RegistryReport => {
                let snapshot = self.registry.snapshot_message();
                self.send(snapshot);
            }
            Op::Refuse { path, reason, seq } => self.refuse(seq, path, reason),
            Op::Summary { id } => {
                let digest = self.store.summary()?;
                self.send(Message::TreeSummary {
                    id,
                    bits: digest.bits(),
                    digests: digest.to_wire(),
                });
            }
            Op::PassEnd {
                pass,
                prune,
                seen,
                skipped,
            } => self.end_pass(pass, prune, seen, skipped)?,
        }
        if let Some(seq) = seq {
            self.applied_seq = seq;
        }
        Ok(None)
    }

    /// Installs a file whose data is all here; hands it back while chunks are still missing.
    fn apply_file(
        &mut self,
        seq: Seq,
        mut pending: Box<S::Pending>,
        then_remove: Option<String>,
    ) -> Result<Option<Op<S::Pending>>, SyncError> {
        if pending.has_all_remote() {
            match self.store.complete(&mut pending)? {
                Completion::NeedMore(indices) => {
                    self.send(Message::NeedChunks { seq, indices });
                }
                Completion::Installed => {
                    if let Some(from) = &then_remove {
                        self.store.delete(from)?;
                    }
                    self.event(ReceiverEvent::Applied {
                        path: pending.entry().path.clone(),
                        kind: "file",
                        bytes_received: pending.received_bytes(),
                    });
                    return Ok(None);
                }
            }
        }
        Ok(Some(Op::File {
            seq,
            pending,
            then_remove,
        }))
    }

    /// The end of a pass: a full pass prunes what it did not name (under the mass-delete guard).
    fn end_pass(
        &mut self,
        pass: u64,
        prune: Prune,
        seen: Option<HashSet<String>>,
        skipped: Option<BucketSet>,
    ) -> Result<(), SyncError> {
        let outcome = match seen {
            Some(seen) => self.store.prune(&seen, skipped.as_ref(), prune)?,
            None => Default::default(),
        };
        if outcome.held > 0 {
            tracing::warn!(
                held = outcome.held,
                "mass-delete guard: holding deletes until the sender confirms"
            );
        }
        self.send(Message::PassDone {
            pass,
            pruned: outcome.pruned,
            held: outcome.held,
        });
        self.event(ReceiverEvent::PassDone {
            pass,
            pruned: outcome.pruned,
            held: outcome.held,
        });
        self.status(StatusChange::PassOutcome {
            pruned: outcome.pruned,
            held: outcome.held,
        });
        Ok(())
    }
}

/// Validates a received message's fields, turning a violation into a session error.
pub fn check_message(msg: &Message) -> Result<(), SyncError> {
    match msg {
        // Entries, paths and registry change sets are refused one by one, the session going on.
        Message::Upsert { .. }
        | Message::Rename { .. }
        | Message::Delete { .. }
        | Message::RegistryChanges { .. } => Ok(()),
        other => validate_message(other).map_err(|e| SyncError::Protocol(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Applier;
    use swrepl_proto::{Attributes, ChunkRef};

    fn file_entry(path: &str, content: &[u8]) -> FileEntry {
        let hash = *blake3::hash(content).as_bytes();
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            size: content.len() as u64,
            mtime_ns: 0,
            attributes: Attributes::default(),
            chunks: vec![ChunkRef {
                hash,
                len: content.len() as u32,
            }],
            file_hash: hash,
        }
    }

    fn sent(machine: &mut ReceiverMachine<Applier>) -> Vec<Message> {
        std::iter::from_fn(|| machine.poll_output())
            .filter_map(|output| match output {
                ReceiverOutput::Send(msg) => Some(msg),
                _ => None,
            })
            .collect()
    }

    fn applier_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Applier) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, content) in files {
            std::fs::write(dir.path().join(rel), content).unwrap();
        }
        let excludes = swrepl_tree::Excludes::new(&[], true).unwrap();
        let archive = dir.path().join(".swrepl/archive");
        let applier = Applier::open(dir.path(), &archive, None, excludes).unwrap();
        (dir, applier)
    }

    #[test]
    fn summary_requests_waiting_together_get_one_answer_for_the_latest() {
        let (_dir, applier) = applier_with(&[("a.txt", b"a")]);
        let mut machine = ReceiverMachine::new(applier);
        for id in 1..=3 {
            machine.receive(Message::SummaryRequest { id }).unwrap();
        }
        machine.apply_ready().unwrap();
        let answers: Vec<u64> = sent(&mut machine)
            .into_iter()
            .filter_map(|m| match m {
                Message::TreeSummary { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(answers, [3]);
    }

    #[test]
    fn a_skipped_bucket_is_not_pruned_and_a_bad_bitmap_is_refused() {
        let (dir, applier) = applier_with(&[("kept.txt", b"kept"), ("extra.txt", b"extra")]);
        let mut machine = ReceiverMachine::new(applier);
        let mut unchanged = swrepl_proto::summary::BucketSet::empty(4);
        unchanged.insert(swrepl_proto::summary::bucket_of("kept.txt", 4));
        assert!(
            !unchanged.contains_path("extra.txt"),
            "names in different buckets"
        );
        for msg in [
            Message::PassBegin {
                pass: 1,
                full: true,
            },
            Message::PassSkips {
                pass: 1,
                bits: 4,
                unchanged: unchanged.as_wire().to_vec(),
            },
            Message::PassEnd {
                pass: 1,
                entries: 0,
                prune: Prune::All,
            },
        ] {
            machine.receive(msg).unwrap();
        }
        machine.apply_ready().unwrap();
        assert!(dir.path().join("kept.txt").exists(), "in a skipped bucket");
        assert!(
            !dir.path().join("extra.txt").exists(),
            "an extra in a described bucket"
        );

        machine
            .receive(Message::PassBegin {
                pass: 2,
                full: true,
            })
            .unwrap();
        let bad = Message::PassSkips {
            pass: 2,
            bits: 4,
            unchanged: vec![0; 1],
        };
        assert!(machine.receive(bad).is_err());
    }

    /// Found by the simulation (seed 6): a full pass whose end waited for a file's data while
    /// the next pass began lost its prune, leaving the Slave's extras in place.
    #[test]
    fn a_full_pass_prunes_even_when_the_next_pass_begins_before_its_end_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("extra.txt"), b"only on the Slave").unwrap();
        let excludes = swrepl_tree::Excludes::new(&[], true).unwrap();
        let applier = Applier::open(root, &root.join(".swrepl/archive"), None, excludes).unwrap();
        let mut machine = ReceiverMachine::new(applier);
        let content = b"new content from the Master";
        let messages = [
            Message::PassBegin {
                pass: 1,
                full: true,
            },
            Message::Upsert {
                seq: 1,
                entry: file_entry("kept.txt", content),
            },
            Message::PassEnd {
                pass: 1,
                entries: 1,
                prune: Prune::All,
            },
            Message::PassBegin {
                pass: 2,
                full: false,
            },
            Message::PassEnd {
                pass: 2,
                entries: 1,
                prune: Prune::Never,
            },
        ];
        for msg in messages {
            machine.receive(msg).unwrap();
            machine.apply_ready().unwrap();
        }
        assert!(
            root.join("extra.txt").exists(),
            "nothing pruned before pass 1 ends"
        );
        machine
            .receive(Message::ChunkData {
                seq: 1,
                index: 0,
                data: content.to_vec(),
            })
            .unwrap();
        machine.apply_ready().unwrap();
        machine.acknowledge().unwrap();
        assert!(
            !root.join("extra.txt").exists(),
            "the full pass pruned the extra"
        );
        assert_eq!(std::fs::read(root.join("kept.txt")).unwrap(), content);
        let replies = sent(&mut machine);
        assert!(
            replies.contains(&Message::PassDone {
                pass: 1,
                pruned: 1,
                held: 0
            }),
            "{replies:?}"
        );
        assert!(replies.contains(&Message::Ack { seq: 1 }), "{replies:?}");
    }

    /// Found by the simulation (seed 2570): a file deleted and recreated with the same content
    /// while an earlier change waited for data was judged "up to date" on arrival, and then
    /// the queued delete removed it for good.
    #[test]
    fn an_upsert_found_up_to_date_is_checked_again_after_the_changes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let same = b"the same content before and after";
        std::fs::write(root.join("same.txt"), same).unwrap();
        let excludes = swrepl_tree::Excludes::new(&[], true).unwrap();
        let applier = Applier::open(root, &root.join(".swrepl/archive"), None, excludes).unwrap();
        let mut machine = ReceiverMachine::new(applier);
        let waiting = b"a file whose data is still on its way";
        let messages = [
            Message::Upsert {
                seq: 1,
                entry: file_entry("waiting.txt", waiting),
            },
            Message::Delete {
                seq: 2,
                path: "same.txt".into(),
            },
            Message::Upsert {
                seq: 3,
                entry: file_entry("same.txt", same),
            },
            Message::ChunkData {
                seq: 1,
                index: 0,
                data: waiting.to_vec(),
            },
        ];
        for msg in messages {
            machine.receive(msg).unwrap();
            machine.apply_ready().unwrap();
        }
        // Its turn came after the delete: the content must come again.
        let replies = sent(&mut machine);
        let asked = Message::NeedChunks {
            seq: 3,
            indices: vec![0],
        };
        assert!(replies.contains(&asked), "{replies:?}");
        machine
            .receive(Message::ChunkData {
                seq: 3,
                index: 0,
                data: same.to_vec(),
            })
            .unwrap();
        machine.apply_ready().unwrap();
        machine.acknowledge().unwrap();
        assert_eq!(std::fs::read(root.join("same.txt")).unwrap(), same);
        assert_eq!(std::fs::read(root.join("waiting.txt")).unwrap(), waiting);
        assert!(sent(&mut machine).contains(&Message::Ack { seq: 3 }));
    }

    /// Found by the simulation (seed 2090 of 3 000): a rename whose source the Slave did not hold
    /// as announced is rebuilt as an upsert of the target plus removal of the source; when the
    /// sender withdrew that upsert (the target vanished too), the source stayed on the Slave
    /// for good, though the Master had neither.
    #[test]
    fn a_withdrawn_rename_still_removes_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a"), b"an older version of a").unwrap();
        let excludes = swrepl_tree::Excludes::new(&[], true).unwrap();
        let applier = Applier::open(root, &root.join(".swrepl/archive"), None, excludes).unwrap();
        let mut machine = ReceiverMachine::new(applier);
        let moved = b"what the Master had in a when it moved it";
        machine
            .receive(Message::Rename {
                seq: 1,
                from: "a".into(),
                entry: file_entry("c", moved),
            })
            .unwrap();
        machine.apply_ready().unwrap();
        let asked = Message::NeedChunks {
            seq: 1,
            indices: vec![0],
        };
        assert!(sent(&mut machine).contains(&asked));
        machine
            .receive(Message::FileUnavailable {
                seq: 1,
                reason: "cannot open: not found".into(),
            })
            .unwrap();
        machine.apply_ready().unwrap();
        machine.acknowledge().unwrap();
        assert!(!root.join("a").exists(), "the rename's source survived");
        assert!(!root.join("c").exists());
        assert!(sent(&mut machine).contains(&Message::Ack { seq: 1 }));
    }

    #[test]
    fn more_is_expected_until_the_pass_has_ended_and_everything_in_it_is_applied() {
        let (_dir, applier) = applier_with(&[]);
        let mut machine = ReceiverMachine::new(applier);
        assert!(!machine.expects_more(), "a new session");
        machine
            .receive(Message::PassBegin {
                pass: 1,
                full: false,
            })
            .unwrap();
        let entry = file_entry("a.txt", b"a");
        let seq = 1;
        machine.receive(Message::Upsert { seq, entry }).unwrap();
        machine.apply_ready().unwrap();
        assert!(machine.expects_more(), "the file waits for its chunk");
        let data = b"a".to_vec();
        let index = 0;
        machine
            .receive(Message::ChunkData { seq, index, data })
            .unwrap();
        machine.apply_ready().unwrap();
        assert!(machine.has_unacknowledged());
        assert!(machine.expects_more(), "applied, but its pass goes on");
        let end = Message::PassEnd {
            pass: 1,
            entries: 1,
            prune: Prune::Never,
        };
        machine.receive(end).unwrap();
        machine.apply_ready().unwrap();
        assert!(
            !machine.expects_more(),
            "the pass has ended, all of it applied"
        );
    }
}
