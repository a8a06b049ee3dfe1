//! The receiver: accepts mutual-TLS connections, runs one sender session at a time (a new one
//! replaces an older one that has gone quiet), serves verifiers, and applies changes in order.
//!
//! Network I/O runs on tokio; a session's protocol logic is the [`ReceiverMachine`], run on a
//! blocking thread together with the [`Applier`] it writes through.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swrepl_net::{FrameReader, FrameWriter, Identity, Listener};
use swrepl_proto::{ErrorCode, Message, Role};
use swrepl_tree::Excludes;
use tokio::sync::{mpsc, Mutex};

use crate::apply::Applier;
use crate::session::{check_message, ReceiverMachine, ReceiverOutput, StatusChange};
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
    let applier = tokio::task::spawn_blocking(move || {
        let mut applier = Applier::open(&root, &archive, retention, excludes)?;
        if !applier.watch_tree() {
            tracing::info!(
                "no watch of the Slave's tree on this system: each sender connection rescans it"
            );
        }
        Ok::<_, SyncError>(applier)
    })
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
            Err(e) if e.is_silent_probe() => {
                tracing::debug!("{e}");
                continue;
            }
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
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<Message>>();
    // The reading half tells the peer about a message that breaks the protocol's limits.
    let violations = out_tx.clone();
    let events = ctx.events.clone();
    let status = ctx.status.clone();
    let registry_source = ctx.registry.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let registry =
            crate::registry::ReceiverRegistry::new(registry_source, applier.archive_path());
        let mut machine = ReceiverMachine::with_registry(applier, registry);
        let result = apply_loop(&mut machine, in_rx, &out_tx, &events, &status);
        let mut applier = machine.into_store();
        applier.save_index(); // the session may have ended in the middle of a burst
        (applier, result)
    });

    let writer_task = tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                batch = out_rx.recv() => match batch {
                    Some(batch) => {
                        for msg in &batch {
                            writer.feed(msg).await?;
                        }
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
                let _ = violations.send(vec![Message::Error {
                    code: ErrorCode::ProtocolViolation,
                    message: e.to_string(),
                }]);
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
    tokio::spawn(prepare_summary(ctx.applier.clone()));
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

/// How long after a session the receiver waits before preparing the next one's summary, so
/// that a sender reconnecting at once (one `send --once` run after another) is not kept waiting
/// for it: that session's own summary then skips setting up the watch.
const SUMMARY_PREPARE_DELAY: Duration = Duration::from_millis(200);

/// Prepares the summary the next sender session will ask for, in the quiet after a session
/// (while the tree stays unchanged, the next session gets it without a walk of the Slave's tree).
/// Gives way to a session that has taken the tree meanwhile.
async fn prepare_summary(applier: Arc<Mutex<Option<Applier>>>) {
    tokio::time::sleep(SUMMARY_PREPARE_DELAY).await;
    let mut guard = applier.lock_owned().await;
    if !guard.as_ref().is_some_and(Applier::summary_worth_preparing) {
        return;
    }
    // The lock is held throughout: a session that comes meanwhile waits for the summary it will
    // ask for anyway.
    let prepared = tokio::task::spawn_blocking(move || {
        if let Some(Err(e)) = guard.as_mut().map(Applier::prepare_summary) {
            tracing::debug!("summary not prepared ahead: {e}");
        }
    })
    .await;
    if let Err(e) = prepared {
        tracing::error!("preparing the tree summary failed: {e}");
    }
}

/// The blocking half of a sender session: feeds the machine what the reading half received and
/// applies what is ready. Applied changes are acknowledged at once when no more are expected (a
/// lone change: nothing waits to be applied and its pass has ended) or when the last
/// acknowledgement is [`ACK_INTERVAL`] old; otherwise (a burst: files waiting for their chunks,
/// or a pass still being received) they wait for the rest of that interval, so that one
/// checkpoint (fsyncs, renames, index commit, status file) serves all the changes applied
/// meanwhile rather than one each time the applier catches up with the network.
fn apply_loop(
    machine: &mut ReceiverMachine<Applier>,
    mut incoming: mpsc::Receiver<Message>,
    out: &mpsc::UnboundedSender<Vec<Message>>,
    events: &Events,
    status: &StatusFile,
) -> Result<(), SyncError> {
    let runtime = tokio::runtime::Handle::current();
    let mut carrier = Carrier {
        out,
        outbox: Vec::new(),
        events,
        status,
        last_ack: None,
    };
    // With registry replication on, the machine opens with the keys' snapshot.
    carrier.step(machine, Ok(()))?;
    let mut next = incoming.blocking_recv();
    while let Some(msg) = next {
        let received = machine.receive(msg);
        carrier.step(machine, received)?;
        loop {
            let applied = machine.apply_ready();
            carrier.step(machine, applied)?;
            if machine.has_unacknowledged() && (carrier.ack_due() || !machine.expects_more()) {
                carrier.acknowledge(machine)?;
            }
            let Ok(msg) = incoming.try_recv() else { break };
            let received = machine.receive(msg);
            carrier.step(machine, received)?;
        }
        carrier.flush(); // the peer hears what was said (chunks needed) before any wait
        if !machine.has_unacknowledged() {
            next = incoming.blocking_recv();
            continue;
        }
        // Acknowledged a moment ago: more changes may come before the interval is over.
        let wait = carrier.until_ack_due();
        next = match runtime.block_on(tokio::time::timeout(wait, incoming.recv())) {
            Ok(Some(msg)) => Some(msg),
            Ok(None) => None,
            Err(_quiet) => {
                carrier.acknowledge(machine)?;
                incoming.blocking_recv()
            }
        };
    }
    carrier.acknowledge(machine)
}

/// Acknowledgements in a burst of changes are this far apart at least: the sender's window
/// holds thousands of changes, so it never waits for them.
const ACK_INTERVAL: Duration = Duration::from_millis(20);

/// Messages the writing half gets at once, at most (a batch costs one wake-up and one flush).
const OUTBOX_MAX: usize = 64;

/// Does what the machine asks for: messages to the writing half (in batches), events, status.
struct Carrier<'a> {
    out: &'a mpsc::UnboundedSender<Vec<Message>>,
    outbox: Vec<Message>,
    events: &'a Events,
    status: &'a StatusFile,
    /// When the machine last acknowledged (checkpointed).
    last_ack: Option<Instant>,
}

impl Carrier<'_> {
    /// Carries out what the machine asked for after a step whose outcome is `result`; an error
    /// ends the session, and whatever the machine said before it (its error message) goes out.
    fn step(
        &mut self,
        machine: &mut ReceiverMachine<Applier>,
        result: Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        while let Some(output) = machine.poll_output() {
            match output {
                ReceiverOutput::Send(msg) => {
                    self.outbox.push(msg);
                    if self.outbox.len() >= OUTBOX_MAX {
                        self.flush();
                    }
                }
                ReceiverOutput::Event(event) => emit(self.events, event),
                ReceiverOutput::Status(change) => record_status(self.status, change),
            }
        }
        if result.is_err() {
            self.flush();
        }
        result
    }

    /// Acknowledges what was applied (a checkpoint first) and sends everything said so far.
    fn acknowledge(&mut self, machine: &mut ReceiverMachine<Applier>) -> Result<(), SyncError> {
        let acked = machine.acknowledge();
        self.last_ack = Some(Instant::now());
        self.step(machine, acked)?;
        self.flush();
        Ok(())
    }

    fn ack_due(&self) -> bool {
        self.until_ack_due().is_zero()
    }

    fn until_ack_due(&self) -> Duration {
        self.last_ack.map_or(Duration::ZERO, |at| {
            ACK_INTERVAL.saturating_sub(at.elapsed())
        })
    }

    fn flush(&mut self) {
        if !self.outbox.is_empty() {
            let _ = self.out.send(std::mem::take(&mut self.outbox));
        }
    }
}

fn record_status(status: &StatusFile, change: StatusChange) {
    match change {
        StatusChange::Pending(pending) => status.update(|s| s.pending = pending),
        StatusChange::Acked { seq, idle } => {
            let record = |s: &mut crate::status::ReceiverStatus| {
                s.last_ack_seq = seq;
                s.last_applied_unix_ms = now_unix_ms();
            };
            // Idle is when a pre-check reads the file: make sure it is exact then.
            if idle {
                status.update_now(record);
            } else {
                status.update(record);
            }
        }
        StatusChange::Heartbeat { service } => status.update_now(|s| {
            s.master_service = service;
            s.last_heartbeat_unix_ms = now_unix_ms();
        }),
        StatusChange::PassOutcome { pruned, held } => status.update(|s| {
            s.last_pass_pruned = pruned;
            s.last_pass_held = held;
        }),
    }
}
