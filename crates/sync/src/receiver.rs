//! The receiver: accepts mutual-TLS connections, runs one sender session at a time (a new one
//! replaces an older one that has gone quiet), serves verifiers, and applies changes in order.
//!
//! Network I/O runs on tokio; the session's file-system work runs on a blocking thread that owns
//! the [`Applier`]. Changes are applied strictly in sequence order, while chunk requests for later
//! changes go out as soon as those changes arrive, so the link stays busy.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use swrepl_net::{FrameReader, FrameWriter, Identity, Listener};
use swrepl_proto::{
    validate_entry, validate_message, EntryKind, ErrorCode, FileEntry, Hash, Message, Prune, Role,
    Seq,
};
use swrepl_tree::Excludes;
use tokio::sync::{mpsc, Mutex};

use crate::apply::{Applier, Completion, PendingFile, Prepared};
use crate::status::StatusFile;
use crate::{now_unix_ms, Fingerprint, SyncError, HEARTBEAT_INTERVAL, PEER_TIMEOUT, SOFTWARE};

/// How the receiver is set up.
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    pub root: PathBuf,
    pub listen: String,
    pub identity: Identity,
    pub trusted: Vec<Fingerprint>,
    /// Where replaced and deleted files go (default `<root>/.swrepl/archive`).
    pub archive: Option<PathBuf>,
    /// How long archived generations are kept (None: forever).
    pub archive_retention: Option<Duration>,
    pub excludes: Excludes,
    /// Registry keys this receiver lets the sender write (None: files only).
    pub registry: Option<crate::RegistrySource>,
}

/// Something the receiver did, for the demo and for tests that watch a receiver in-process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    Listening(std::net::SocketAddr),
    SenderConnected(String),
    Applied {
        path: String,
        kind: &'static str,
        bytes_received: u64,
    },
    Deleted(String),
    Renamed {
        from: String,
        to: String,
    },
    Refused {
        path: String,
        reason: String,
    },
    PassDone {
        pass: u64,
        pruned: u64,
        held: u64,
    },
    SenderGone(String),
    /// A registry change set was applied; `ops` operations changed something.
    RegistryApplied {
        ops: usize,
    },
}

type Events = Option<mpsc::UnboundedSender<ReceiverEvent>>;

/// Runs the receiver until `shutdown` resolves.
pub async fn run_receiver(
    options: ReceiverOptions,
    events: Events,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SyncError> {
    let archive = options.archive.clone().unwrap_or_else(|| {
        options
            .root
            .join(swrepl_tree::STATE_DIR_NAME)
            .join("archive")
    });
    let root = options.root.clone();
    let excludes = options.excludes.clone();
    let retention = options.archive_retention;
    let applier =
        tokio::task::spawn_blocking(move || Applier::open(&root, &archive, retention, excludes))
            .await
            .map_err(|e| SyncError::Internal(e.to_string()))??;
    let listener = Listener::bind(&options.listen, &options.identity, &options.trusted).await?;
    tracing::info!(listen = %listener.local_addr(), root = %options.root.display(), archive = %applier.archive_path().display(), "receiver ready");
    emit(&events, ReceiverEvent::Listening(listener.local_addr()));
    let status = Arc::new(StatusFile::new(&options.root));
    status.update_now(|s| s.connected = false);
    let applier = Arc::new(Mutex::new(Some(applier)));
    let current: Arc<std::sync::Mutex<Option<StopSender>>> = Default::default();

    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("refused a connection: {e}");
                continue;
            }
        };
        let peer = stream.peer_addr().to_string();
        let (reader, writer) = stream.split();
        let ctx = ConnectionContext {
            applier: applier.clone(),
            current: current.clone(),
            events: events.clone(),
            status: status.clone(),
            registry: options.registry.clone(),
        };
        tokio::spawn(async move {
            match handle_connection(reader, writer, &peer, ctx).await {
                Ok(()) => {}
                Err(e @ SyncError::Stopped(_)) => tracing::info!(%peer, "{e}"),
                Err(e) => tracing::warn!(%peer, "session ended: {e}"),
            }
        });
    }
    if let Some(stop) = current.lock().expect("not poisoned").take() {
        let _ = stop.send(Some("the receiver is shutting down"));
    }
    Ok(())
}

/// Tells a running sender session to stop, and why.
type StopSender = tokio::sync::watch::Sender<Option<&'static str>>;

struct ConnectionContext {
    applier: Arc<Mutex<Option<Applier>>>,
    current: Arc<std::sync::Mutex<Option<StopSender>>>,
    events: Events,
    status: Arc<StatusFile>,
    registry: Option<crate::RegistrySource>,
}

fn emit(events: &Events, event: ReceiverEvent) {
    if let Some(tx) = events {
        let _ = tx.send(event);
    }
}

async fn handle_connection(
    mut reader: FrameReader,
    mut writer: FrameWriter,
    peer: &str,
    ctx: ConnectionContext,
) -> Result<(), SyncError> {
    let hello = match tokio::time::timeout(PEER_TIMEOUT, reader.recv()).await {
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        Ok(Ok(Some(_))) => return Err(SyncError::Protocol("first message was not Hello".into())),
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(SyncError::Protocol("no Hello within the timeout".into())),
    };
    let welcome = match swrepl_proto::accept_hello(
        &hello,
        &[Role::Sender, Role::Verifier],
        Role::Receiver,
        SOFTWARE,
    ) {
        Ok(welcome) => welcome,
        Err(e) => {
            // The peer learns why (version mismatch, wrong role, not a swrepl peer) before we close.
            let _ = writer.send(&e.to_message()).await;
            return Err(SyncError::Protocol(e.to_string()));
        }
    };
    writer.send(&Message::Welcome(welcome)).await?;
    if hello.role == Role::Sender {
        run_sender_session(reader, writer, peer, ctx).await
    } else {
        serve_verifier(reader, writer, ctx).await
    }
}

async fn serve_verifier(
    mut reader: FrameReader,
    mut writer: FrameWriter,
    ctx: ConnectionContext,
) -> Result<(), SyncError> {
    while let Some(msg) = reader.recv().await? {
        if msg == Message::RegistryRequest {
            let answer = crate::registry::answer_request(ctx.registry.clone()).await?;
            writer.send(&answer).await?;
            writer.flush().await?;
            continue;
        }
        if msg != Message::ListRequest {
            return Err(SyncError::Protocol(
                "a verifier may only send ListRequest".into(),
            ));
        }
        // Waits for any running sender session to release the tree for the listing.
        let listing = {
            let mut guard = loop {
                let guard = ctx.applier.clone().lock_owned().await;
                if guard.is_some() {
                    break guard;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            tokio::task::spawn_blocking(move || guard.as_mut().expect("checked").listing())
                .await
                .map_err(|e| SyncError::Internal(e.to_string()))??
        };
        let count = listing.len() as u64;
        for entry in listing {
            writer.feed(&Message::ListEntry(entry)).await?;
        }
        writer.send(&Message::ListEnd { entries: count }).await?;
        writer.flush().await?;
    }
    Ok(())
}

async fn run_sender_session(
    mut reader: FrameReader,
    mut writer: FrameWriter,
    peer: &str,
    ctx: ConnectionContext,
) -> Result<(), SyncError> {
    // A newer sender session wins: the old one is most likely a dead connection not yet timed out.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(None);
    if let Some(previous) = ctx.current.lock().expect("not poisoned").replace(stop_tx) {
        let _ = previous.send(Some("replaced by a newer sender session"));
    }
    let applier = loop {
        if let Some(applier) = ctx.applier.lock().await.take() {
            break applier;
        }
        if stop_rx.borrow().is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tracing::info!(%peer, "sender connected");
    emit(
        &ctx.events,
        ReceiverEvent::SenderConnected(peer.to_string()),
    );
    ctx.status.update_now(|s| {
        s.connected = true;
        s.peer = Some(peer.to_string());
        s.last_ack_seq = 0;
        s.pending = 0;
    });

    let (in_tx, in_rx) = mpsc::channel::<Message>(256);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    // The reading half tells the peer about a message that breaks the protocol's limits.
    let violations = out_tx.clone();
    let events = ctx.events.clone();
    let status = ctx.status.clone();
    let registry_source = ctx.registry.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let registry =
            crate::registry::ReceiverRegistry::new(registry_source, applier.archive_path());
        let mut session = Session::new(applier, out_tx, events, status, registry);
        let result = session.run(in_rx);
        (session.into_applier(), result)
    });

    let writer_task = tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                msg = out_rx.recv() => match msg {
                    Some(msg) => {
                        writer.feed(&msg).await?;
                        if out_rx.is_empty() { writer.flush().await?; }
                    }
                    None => break,
                },
                _ = heartbeat.tick() => {
                    writer.send(&Message::Heartbeat(swrepl_proto::Heartbeat { unix_ms: now_unix_ms(), service: None })).await?;
                    writer.flush().await?;
                }
            }
        }
        let _ = writer.shutdown().await;
        Ok::<(), SyncError>(())
    });

    let read_result: Result<(), SyncError> = async {
        loop {
            let msg = tokio::select! {
                _ = stop_rx.changed() => {
                    let reason = stop_rx.borrow().unwrap_or("stopped");
                    return Err(SyncError::Stopped(reason));
                }
                // The worker ended the session (its result says why): stop reading at once
                // rather than when the peer next speaks or times out.
                _ = in_tx.closed() => return Ok(()),
                read = tokio::time::timeout(PEER_TIMEOUT, reader.recv()) => match read {
                    Err(_) => return Err(SyncError::PeerSilent),
                    Ok(read) => read?,
                },
            };
            let Some(msg) = msg else { return Ok(()) };
            if let Err(e) = check_message(&msg) {
                let _ = violations.send(Message::Error {
                    code: ErrorCode::ProtocolViolation,
                    message: e.to_string(),
                });
                return Err(e);
            }
            if in_tx.send(msg).await.is_err() {
                return Ok(()); // the worker stopped; its result says why
            }
        }
    }
    .await;
    drop(in_tx);
    drop(violations);
    let (applier, work_result) = worker
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?;
    *ctx.applier.lock().await = Some(applier);
    let _ = writer_task.await;
    ctx.status.update_now(|s| {
        s.connected = false;
        s.master_service = None;
        s.pending = 0;
    });
    emit(&ctx.events, ReceiverEvent::SenderGone(peer.to_string()));
    tracing::info!(%peer, "sender disconnected");
    work_result.and(read_result)
}

/// Changes received but not yet applied that the receiver accepts (twice the sender's window).
const MAX_QUEUED_CHANGES: usize = 2 * crate::sender::WINDOW;

/// One queued change, applied in sequence order.
enum Op {
    File {
        seq: Seq,
        pending: Box<PendingFile>,
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
    Refuse {
        seq: Seq,
        path: String,
        reason: String,
    },
    PassEnd {
        pass: u64,
        prune: Prune,
    },
    Registry {
        seq: Seq,
        changes: swrepl_registry::ChangeSet,
    },
    /// Answer a sender's `RegistryRequest` once everything before it is applied.
    RegistryReport,
}

impl Op {
    fn seq(&self) -> Option<Seq> {
        match self {
            Op::File { seq, .. }
            | Op::Structural { seq, .. }
            | Op::Delete { seq, .. }
            | Op::Rename { seq, .. }
            | Op::Done { seq }
            | Op::Refuse { seq, .. }
            | Op::Registry { seq, .. } => Some(*seq),
            Op::PassEnd { .. } | Op::RegistryReport => None,
        }
    }
}

/// The blocking half of a sender session.
struct Session {
    applier: Applier,
    out: mpsc::UnboundedSender<Message>,
    events: Events,
    status: Arc<StatusFile>,
    queue: VecDeque<Op>,
    last_seq: Seq,
    applied_seq: Seq,
    acked_seq: Seq,
    requested: HashSet<Hash>,
    pass: Option<(u64, bool)>,
    seen: HashSet<String>,
    registry: crate::registry::ReceiverRegistry,
}

impl Session {
    fn new(
        applier: Applier,
        out: mpsc::UnboundedSender<Message>,
        events: Events,
        status: Arc<StatusFile>,
        registry: crate::registry::ReceiverRegistry,
    ) -> Self {
        Session {
            applier,
            out,
            events,
            status,
            queue: VecDeque::new(),
            last_seq: 0,
            applied_seq: 0,
            acked_seq: 0,
            requested: HashSet::new(),
            pass: None,
            seen: HashSet::new(),
            registry,
        }
    }

    fn into_applier(mut self) -> Applier {
        for op in std::mem::take(&mut self.queue) {
            if let Op::File { pending, .. } = op {
                self.applier.discard(*pending);
            }
        }
        // A change that failed half way (e.g. the disk filled up) left its staging file behind.
        self.applier.clear_staging();
        self.applier
    }

    fn send(&self, msg: Message) {
        let _ = self.out.send(msg);
    }

    fn run(&mut self, mut incoming: mpsc::Receiver<Message>) -> Result<(), SyncError> {
        // With registry replication on, the first message after Welcome: the state of the keys
        // the sender may write. A sender that sees any other message first knows there are none.
        if let Some(snapshot) = self.registry.first_message() {
            self.send(snapshot);
        }
        while let Some(msg) = incoming.blocking_recv() {
            self.handle_guarded(msg)?;
            while let Ok(msg) = incoming.try_recv() {
                self.handle_guarded(msg)?;
                self.drain_guarded()?;
            }
            self.drain_guarded()?;
            self.ack();
        }
        Ok(())
    }

    /// Handles a message; a fatal error is also told to the peer before the session ends.
    fn handle_guarded(&mut self, msg: Message) -> Result<(), SyncError> {
        let result = self.handle(msg);
        self.tell_peer(&result);
        result
    }

    /// Applies what is ready; a fatal error (a full disk, a file that does not assemble to its
    /// hash) is also told to the peer, so its operator reads the reason, not "connection closed".
    fn drain_guarded(&mut self) -> Result<(), SyncError> {
        let result = self.drain();
        self.tell_peer(&result);
        result
    }

    fn tell_peer(&self, result: &Result<(), SyncError>) {
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
        // Each queued file holds an open staging file: a sender may not run ahead without bound
        // (an honest one keeps at most its window of unacknowledged changes in flight).
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
                let op = self
                    .check_entry(seq, &entry)
                    .unwrap_or_else(|| self.prepare(seq, entry, None))?;
                self.queue.push_back(op);
            }
            Message::Rename { seq, from, entry } => {
                self.next_seq(seq)?;
                let op = match self.check_entry(seq, &entry) {
                    Some(refusal) => refusal?,
                    None => match self.check_path(seq, &from) {
                        Some(refusal) => refusal,
                        None => Op::Rename { seq, from, entry },
                    },
                };
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
            }
            Message::PassEnd { pass, prune, .. } => {
                self.queue.push_back(Op::PassEnd { pass, prune })
            }
            Message::RegistryChanges { seq, changes } => {
                self.next_seq(seq)?;
                let op = self.registry_op(seq, &changes);
                self.queue.push_back(op);
            }
            Message::RegistryRequest => self.queue.push_back(Op::RegistryReport),
            Message::Heartbeat(hb) => {
                let service = hb
                    .service
                    .map(|service| format!("{}: {:?}", service.name, service.state));
                self.status.update_now(|s| {
                    s.master_service = service;
                    s.last_heartbeat_unix_ms = now_unix_ms();
                });
            }
            Message::Error { code, message } => {
                return Err(SyncError::Protocol(format!(
                    "sender reported {code:?}: {message}"
                )))
            }
            other => {
                return Err(SyncError::Protocol(format!(
                    "unexpected message from a sender: {}",
                    message_name(&other)
                )))
            }
        }
        Ok(())
    }

    /// A registry change set to apply in order, or its refusal (outside our keys, malformed).
    fn registry_op(&self, seq: Seq, changes: &swrepl_proto::registry::RegistryChangeSet) -> Op {
        match self.registry.check(changes) {
            Ok(changes) => Op::Registry { seq, changes },
            Err(refusal) => Op::Refuse {
                seq,
                path: refusal.path,
                reason: refusal.reason,
            },
        }
    }

    /// Applies a registry change set; a failure refuses it (nothing applied) and the session
    /// goes on.
    fn apply_registry(&mut self, seq: Seq, changes: &swrepl_registry::ChangeSet) {
        match self.registry.apply(changes) {
            Ok(0) => {}
            Ok(ops) => emit(&self.events, ReceiverEvent::RegistryApplied { ops }),
            Err(refusal) => self.refuse(seq, refusal.path, refusal.reason),
        }
    }

    fn refuse(&self, seq: Seq, path: String, reason: String) {
        tracing::warn!(%path, "refused: {reason}");
        emit(
            &self.events,
            ReceiverEvent::Refused {
                path: path.clone(),
                reason: reason.clone(),
            },
        );
        self.send(Message::Refused { seq, path, reason });
    }

    /// Refuses an entry with an invalid or excluded path, or inconsistent fields.
    fn check_entry(&mut self, seq: Seq, entry: &FileEntry) -> Option<Result<Op, SyncError>> {
        if let Err(e) = validate_entry(entry) {
            return Some(Ok(Op::Refuse {
                seq,
                path: entry.path.clone(),
                reason: e.to_string(),
            }));
        }
        if let EntryKind::Symlink { target } = &entry.kind {
            if self.applier.link_reaches_excluded(&entry.path, target) {
                return Some(Ok(Op::Refuse {
                    seq,
                    path: entry.path.clone(),
                    reason: format!(
                        "link target {target:?} leads into swrepl's state or an excluded folder"
                    ),
                }));
            }
        }
        if self.pass.is_some_and(|(_, full)| full) {
            self.seen.insert(entry.path.clone());
        }
        self.check_path(seq, &entry.path).map(Ok)
    }

    fn check_path(&self, seq: Seq, path: &str) -> Option<Op> {
        if let Err(e) = swrepl_proto::validate_path(path) {
            return Some(Op::Refuse {
                seq,
                path: path.to_string(),
                reason: e.to_string(),
            });
        }
        if self.applier.is_excluded(path) {
            let reason =
                "path is excluded on this receiver (SwSQL data or swrepl state)".to_string();
            return Some(Op::Refuse {
                seq,
                path: path.to_string(),
                reason,
            });
        }
        None
    }

    fn prepare(
        &mut self,
        seq: Seq,
        entry: FileEntry,
        then_remove: Option<String>,
    ) -> Result<Op, SyncError> {
        Ok(
            match self.applier.prepare_upsert(entry, &mut self.requested)? {
                Prepared::UpToDate => Op::Done { seq },
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
        self.applier.write_chunk(pending, index, data)
    }

    fn withdraw(&mut self, seq: Seq, reason: &str) {
        if let Some(op) = self.queue.iter_mut().find(|op| op.seq() == Some(seq)) {
            let old = std::mem::replace(op, Op::Done { seq });
            if let Op::File { pending, .. } = old {
                tracing::info!(path = %pending.entry().path, "sender withdrew a change: {reason}");
                self.applier.discard(*pending);
            }
        }
    }

    /// Applies queued changes from the head while they are ready.
    fn drain(&mut self) -> Result<(), SyncError> {
        while let Some(op) = self.queue.pop_front() {
            match self.apply(op)? {
                None => {}
                Some(blocked) => {
                    self.queue.push_front(blocked);
                    break;
                }
            }
        }
        self.status.update(|s| s.pending = self.queue.len() as u64);
        Ok(())
    }

    /// Applies one op, or hands it back when it must wait for more data.
    fn apply(&mut self, op: Op) -> Result<Option<Op>, SyncError> {
        let seq = op.seq();
        match op {
            Op::File {
                seq,
                mut pending,
                then_remove,
            } => {
                if !pending.has_all_remote() {
                    return Ok(Some(Op::File {
                        seq,
                        pending,
                        then_remove,
                    }));
                }
                match self.applier.complete(&mut pending)? {
                    Completion::NeedMore(indices) => {
                        self.send(Message::NeedChunks { seq, indices });
                        return Ok(Some(Op::File {
                            seq,
                            pending,
                            then_remove,
                        }));
                    }
                    Completion::Installed => {
                        let path = pending.entry().path.clone();
                        if let Some(from) = then_remove {
                            self.applier.delete(&from)?;
                        }
                        emit(
                            &self.events,
                            ReceiverEvent::Applied {
                                path,
                                kind: "file",
                                bytes_received: pending.received_bytes,
                            },
                        );
                    }
                }
            }
            Op::Structural { entry, .. } => {
                let kind = if entry.kind == EntryKind::Dir {
                    "dir"
                } else {
                    "link"
                };
                let path = entry.path.clone();
                self.applier.apply_structural(entry)?;
                emit(
                    &self.events,
                    ReceiverEvent::Applied {
                        path,
                        kind,
                        bytes_received: 0,
                    },
                );
            }
            Op::Delete { path, .. } => {
                if self.applier.delete(&path)? {
                    emit(&self.events, ReceiverEvent::Deleted(path));
                }
            }
            Op::Rename { seq, from, entry } => {
                if self.applier.rename(&from, &entry)? {
                    emit(
                        &self.events,
                        ReceiverEvent::Renamed {
                            from,
                            to: entry.path,
                        },
                    );
                } else {
                    // Not renameable here: build the target like any upsert, then remove `from`.
                    let fallback = self.prepare(seq, entry, Some(from))?;
                    return self.apply(fallback);
                }
            }
            Op::Done { .. } => {}
            Op::Registry { seq, changes } => self.apply_registry(seq, &changes),
            Op::RegistryReport => self.send(self.registry.snapshot_message()),
            Op::Refuse { path, reason, seq } => {
                tracing::warn!(%path, "refused: {reason}");
                emit(
                    &self.events,
                    ReceiverEvent::Refused {
                        path: path.clone(),
                        reason: reason.clone(),
                    },
                );
                self.send(Message::Refused { seq, path, reason });
            }
            Op::PassEnd { pass, prune } => {
                let outcome = if self.pass.is_some_and(|(p, full)| p == pass && full) {
                    self.applier.prune(&self.seen, prune)?
                } else {
                    Default::default()
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
                emit(
                    &self.events,
                    ReceiverEvent::PassDone {
                        pass,
                        pruned: outcome.pruned,
                        held: outcome.held,
                    },
                );
                self.status.update(|s| {
                    s.last_pass_pruned = outcome.pruned;
                    s.last_pass_held = outcome.held;
                });
            }
        }
        if let Some(seq) = seq {
            self.applied_seq = seq;
        }
        Ok(None)
    }

    /// Acknowledges everything applied so far (cumulative).
    fn ack(&mut self) {
        if self.applied_seq > self.acked_seq {
            self.acked_seq = self.applied_seq;
            self.send(Message::Ack {
                seq: self.acked_seq,
            });
            let seq = self.acked_seq;
            let record = |s: &mut crate::status::ReceiverStatus| {
                s.last_ack_seq = seq;
                s.last_applied_unix_ms = now_unix_ms();
            };
            // Idle is when a pre-check reads the file: make sure it is exact then.
            if self.queue.is_empty() {
                self.status.update_now(record);
            } else {
                self.status.update(record);
            }
        }
    }
}

fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::Hello(_) => "Hello",
        Message::Welcome(_) => "Welcome",
        Message::NeedChunks { .. } => "NeedChunks",
        Message::Ack { .. } => "Ack",
        Message::Refused { .. } => "Refused",
        Message::PassDone { .. } => "PassDone",
        Message::ListRequest => "ListRequest",
        Message::ListEntry(_) => "ListEntry",
        Message::ListEnd { .. } => "ListEnd",
        _ => "message",
    }
}

/// Validates a received message's fields, turning a violation into a session error.
pub(crate) fn check_message(msg: &Message) -> Result<(), SyncError> {
    match msg {
        // Entries, paths and registry change sets are refused one by one, the session going on.
        Message::Upsert { .. }
        | Message::Rename { .. }
        | Message::Delete { .. }
        | Message::RegistryChanges { .. } => Ok(()),
        other => validate_message(other).map_err(|e| SyncError::Protocol(e.to_string())),
    }
}
