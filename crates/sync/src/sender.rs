//! The sender: scans the Master's tree, streams changes to the receiver, serves the chunks it
//! asks for, and (unless `once`) watches the tree and keeps streaming.
//!
//! Every connection starts with a full pass (the whole tree, so the receiver can fix anything
//! that drifted and prune extras under the mass-delete guard). After it, file-system events
//! trigger incremental passes within milliseconds; a periodic rescan, and a rescan whenever the
//! watcher reports an error or overflow, is the safety net because watchers drop events.
//!
//! This file is the driver: connections, scans, the watcher, timers and file reads. The
//! protocol logic (sequence numbers, the window, passes, acknowledgements, withdrawals) is the
//! sans-IO [`SenderMachine`].

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swrepl_net::{FrameReader, FrameWriter, Identity};
use swrepl_proto::summary::EntryKey;
use swrepl_proto::{EntryKind, FileEntry, Heartbeat, Message, Role, Seq, ServiceStatus};
use swrepl_tree::{
    ChangeDetail, Excludes, Index, ScanOutcome, ScanProblem, Scanner, TreeError, STATE_DIR_NAME,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::session::{read_chunk, ChunkRequest, KnownPaths, Reaction, SenderConfig, SenderMachine};
use crate::summary_keys::entry_keys;
use crate::{now_unix_ms, Fingerprint, SyncError, HEARTBEAT_INTERVAL, PEER_TIMEOUT, SOFTWARE};

/// Quiet time after a file-system event before rescanning, so a burst becomes one pass.
const DEBOUNCE: Duration = Duration::from_millis(40);
/// Quiet time before refreshing files whose content changed (no walk, so it can be short).
const FILES_DEBOUNCE: Duration = Duration::from_millis(5);
/// Longest a continuous burst of events can postpone a rescan.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// Reports the state of the Master's monitored service for heartbeats.
pub type ServiceProbe = Arc<dyn Fn() -> Option<ServiceStatus> + Send + Sync>;

/// How the sender is set up.
#[derive(Clone)]
pub struct SenderOptions {
    pub root: PathBuf,
    /// Index and other state (default `<root>/.swrepl`).
    pub state_dir: Option<PathBuf>,
    pub connect: String,
    pub identity: Identity,
    pub trusted: Vec<Fingerprint>,
    pub excludes: Excludes,
    /// One full pass, then exit once everything is acknowledged.
    pub once: bool,
    /// How long to keep trying to reach the receiver (per attempt, and in total for `once`).
    pub connect_timeout: Duration,
    /// Confirms a mass delete: extras are pruned whatever their share of the tree.
    pub allow_mass_delete: bool,
    /// The mass-delete guard's threshold, per mille of the tree (200 = 20 %).
    pub mass_delete_permille: u16,
    /// Safety-net rescan interval while watching.
    pub rescan_interval: Duration,
    /// Interval between full passes while watching.
    pub full_pass_interval: Duration,
    /// The Master's monitored service, reported in heartbeats.
    pub service_probe: Option<ServiceProbe>,
    /// Registry keys to replicate over the same session (None: files only).
    pub registry: Option<crate::RegistrySource>,
}

/// What a `once` run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Entries in the tree (files, directories, links).
    pub entries: u64,
    /// Files in the tree.
    pub files: u64,
    /// Bytes of file content in the tree.
    pub bytes_in_tree: u64,
    /// Bytes read and hashed by scans (0 when the index made the scan stat-only).
    pub bytes_scanned: u64,
    /// Chunk payload bytes sent.
    pub data_bytes_sent: u64,
    /// Bytes on the wire (frames, both directions counted separately).
    pub wire_bytes_sent: u64,
    pub wire_bytes_received: u64,
    /// Changes sent and acknowledged.
    pub changes: u64,
    /// Paths the receiver refused, with its reason.
    pub refused: Vec<(String, String)>,
    /// Files that could not be read cleanly, with the reason.
    pub unreadable: Vec<ScanProblem>,
    /// Extras the receiver removed / held back under the mass-delete guard.
    pub pruned: u64,
    pub held_deletes: u64,
    /// Registry operations the receiver applied (acknowledged).
    pub registry_ops: u64,
    /// Why the configured registry keys were not replicated, when they were not.
    pub registry_problem: Option<String>,
}

impl SendSummary {
    /// True when everything was replicated and nothing was held or refused.
    pub fn is_complete(&self) -> bool {
        self.refused.is_empty()
            && self.unreadable.is_empty()
            && self.held_deletes == 0
            && self.registry_problem.is_none()
    }
}

impl std::fmt::Display for SendSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replicated: {} files ({} bytes), {} bytes scanned, {} bytes of file data sent, {} bytes on the wire, {} changes",
            self.files, self.bytes_in_tree, self.bytes_scanned, self.data_bytes_sent, self.wire_bytes_sent, self.changes
        )?;
        if self.pruned > 0 {
            write!(f, ", {} extras archived", self.pruned)?;
        }
        if self.registry_ops > 0 {
            write!(f, ", {} registry changes", self.registry_ops)?;
        }
        if self.held_deletes > 0 {
            write!(
                f,
                "; {} deletes HELD by the mass-delete guard",
                self.held_deletes
            )?;
        }
        if !self.refused.is_empty() {
            write!(f, "; {} refused by the receiver", self.refused.len())?;
        }
        if !self.unreadable.is_empty() {
            write!(f, "; {} unreadable", self.unreadable.len())?;
        }
        Ok(())
    }
}

/// Runs the sender. With `once`, returns after one acknowledged full pass; otherwise runs until
/// `shutdown` resolves or an error that retrying cannot fix (authentication, missing root).
pub async fn run_sender(
    options: SenderOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<SendSummary, SyncError> {
    let scanner = Arc::new(Mutex::new(open_scanner(&options)?));
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<WatchSignal>();
    let _watcher = if options.once {
        None
    } else {
        Some(crate::watch::start(
            &options.root,
            options.excludes.clone(),
            watch_tx,
        )?)
    };

    tokio::pin!(shutdown);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    let mut last_paths: Option<KnownPaths> = None;
    // Sessions in a row that the receiver ended with an error (e.g. its disk is full).
    let mut refused_sessions: u32 = 0;
    loop {
        let attempt = tokio::select! {
            _ = &mut shutdown => return Ok(SendSummary::default()),
            attempt = swrepl_net::connect(&options.connect, &options.identity, &options.trusted, options.connect_timeout) => attempt,
        };
        let stream = match attempt {
            Ok(stream) => stream,
            Err(e) if e.is_auth_failure() => return Err(e.into()),
            Err(e) => {
                if options.once && started.elapsed() >= options.connect_timeout {
                    return Err(SyncError::Unreachable {
                        addr: options.connect.clone(),
                        reason: e.to_string(),
                    });
                }
                tracing::warn!("{e}; retrying in {:.1}s", backoff.as_secs_f64());
                tokio::select! {
                    _ = &mut shutdown => return Ok(SendSummary::default()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        let counters = stream.counters();
        let session_started = Instant::now();
        let (reader, writer) = stream.split();
        let mut session =
            Session::new(&options, scanner.clone(), writer, reader, last_paths.take());
        let result = tokio::select! {
            _ = &mut shutdown => return Ok(session.summary(&counters)),
            result = session.run(&mut watch_rx) => result,
        };
        match result {
            Ok(()) => return Ok(session.summary(&counters)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                // Only a session that follows needs the tree this one saw.
                last_paths = session.machine.take_last_paths();
                if options.once && started.elapsed() >= options.connect_timeout * 4 {
                    return Err(e);
                }
                let pause = retry_pause(&e, session_started.elapsed(), &mut refused_sessions);
                tracing::warn!(
                    "session with {} ended: {e}; reconnecting in {:.1}s",
                    options.connect,
                    pause.as_secs_f64()
                );
                tokio::select! {
                    _ = &mut shutdown => return Ok(session.summary(&counters)),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// FOR TESTS ONLY: `SWREPL_TEST_DROP_WATCH_EVENTS=N` makes the sender ignore every Nth
/// file-system watch signal (1 = all of them), as notify's Windows backend does when its buffer
/// overflows, so a test can show that the periodic rescan alone brings the Slave up to date
/// (tests/watch_overflow.rs). Never set it in production: changes then wait for the rescan.
fn drop_watch_signal_for_tests() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let every = *EVERY.get_or_init(|| {
        let every = std::env::var("SWREPL_TEST_DROP_WATCH_EVENTS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if every > 0 {
            tracing::warn!("SWREPL_TEST_DROP_WATCH_EVENTS={every}: ignoring one in {every} file-system watch signals (a test knob; unset it in production)");
        }
        every
    });
    every > 0 && (SEEN.fetch_add(1, Ordering::Relaxed) + 1) % every == 0
}

/// How long to wait before the next session. A receiver that keeps ending sessions with an
/// error of its own (its disk is full, it cannot write a file) is retried ever more slowly, up
/// to 30 s, so that it does not turn into a loop resending the same data several times a second;
/// a session that ran for a while, or one lost to the network, starts the count again.
fn retry_pause(error: &SyncError, lasted: Duration, refused_sessions: &mut u32) -> Duration {
    const BASE: Duration = Duration::from_millis(250);
    if !matches!(error, SyncError::PeerError { .. }) || lasted > Duration::from_secs(300) {
        *refused_sessions = 0;
    }
    if matches!(error, SyncError::PeerError { .. }) {
        *refused_sessions = (*refused_sessions + 1).min(8);
    }
    (BASE * 2u32.pow(*refused_sessions)).min(Duration::from_secs(30))
}

fn open_scanner(options: &SenderOptions) -> Result<Scanner, SyncError> {
    let meta = std::fs::metadata(&options.root).map_err(|e| SyncError::Root {
        path: options.root.clone(),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(SyncError::Root {
            path: options.root.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    std::fs::read_dir(&options.root).map_err(|e| SyncError::Root {
        path: options.root.clone(),
        source: e,
    })?;
    let state = options
        .state_dir
        .clone()
        .unwrap_or_else(|| options.root.join(STATE_DIR_NAME));
    let mut index = Index::open(&state.join("sender-index.db"))?;
    // The sender reads chunks where its requests say; it never looks them up.
    index.locate_first_chunks_only();
    Ok(Scanner::new(&options.root, options.excludes.clone(), index))
}

/// A hint from the file-system watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSignal {
    /// The content of these files (relative paths) changed: refresh just them.
    Files(Vec<String>),
    /// The shape of the tree changed (creations of directories, removals, renames): rescan.
    Changed,
    /// The watcher lost events or failed: only a rescan can tell what changed.
    Rescan,
}

/// A finished scan, with the summary keys of its entries when the machine wants them.
type Scanned = (ScanOutcome, Option<Vec<EntryKey>>);

/// One file reread after a content event: its path and what the refresh found.
type Refreshed = (String, Result<Option<swrepl_tree::ScannedEntry>, TreeError>);

enum ScanKind {
    Full,
    Incremental,
}

/// One connection's session: the [`SenderMachine`] driven over the socket, with the scans,
/// watch signals, timers and chunk reads it needs.
struct Session<'a> {
    options: &'a SenderOptions,
    machine: SenderMachine,
    scanner: Arc<Mutex<Scanner>>,
    writer: FrameWriter,
    incoming: mpsc::UnboundedReceiver<Result<Message, SyncError>>,
    _reader_task: AbortOnDrop,
    scan: Option<(
        ScanKind,
        tokio::task::JoinHandle<Result<Scanned, TreeError>>,
    )>,
    dirty: Option<(Instant, Instant)>,
    want_full: bool,
    /// Files whose content changed, refreshed on their own (no walk) once events go quiet.
    changed_files: BTreeSet<String>,
    files_dirty: Option<(Instant, Instant)>,
    refresh: Option<tokio::task::JoinHandle<Vec<Refreshed>>>,
    registry: Option<crate::registry::SenderRegistry>,
    /// Files another process holds locked: reported, and retried on their backoff.
    locked: crate::locked::SenderLocked,
    /// Reads requested chunks on a blocking thread while the session goes on.
    chunks: ChunkReader,
}

/// One result of the chunk reader.
enum ChunkRead {
    Data {
        seq: Seq,
        index: u32,
        data: Vec<u8>,
    },
    /// The file changed since it was scanned (or cannot be read): withdraw change `seq`.
    Failed {
        seq: Seq,
        reason: String,
    },
}

/// Serves the receiver's chunk requests from a blocking thread, one request after another, so
/// that the session goes on receiving requests and sending data while files are read (one
/// thread hand-off per request instead of a task per file and a flush per file).
struct ChunkReader {
    requests: mpsc::UnboundedSender<(PathBuf, ChunkRequest)>,
    results: mpsc::Receiver<ChunkRead>,
}

/// Chunks read ahead of the socket, at most (each at most 256 KiB).
const CHUNKS_AHEAD: usize = 64;

impl ChunkReader {
    fn start() -> Self {
        let (requests, mut incoming) = mpsc::unbounded_channel::<(PathBuf, ChunkRequest)>();
        let (tx, results) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            while let Some((path, request)) = incoming.blocking_recv() {
                if read_chunks(&path, &request, &tx).is_err() {
                    return; // the session is gone
                }
            }
        });
        ChunkReader { requests, results }
    }

    fn request(&mut self, path: PathBuf, request: ChunkRequest) -> Result<(), SyncError> {
        self.requests
            .send((path, request))
            .map_err(|_| SyncError::Internal("the chunk reader stopped".into()))
    }

    /// The next chunk read (or failure); `None` once the reader stopped.
    async fn next(&mut self) -> Option<ChunkRead> {
        self.results.recv().await
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<'a> Session<'a> {
    fn new(
        options: &'a SenderOptions,
        scanner: Arc<Mutex<Scanner>>,
        writer: FrameWriter,
        mut reader: FrameReader,
        last_paths: Option<KnownPaths>,
    ) -> Self {
        let (tx, incoming) = mpsc::unbounded_channel();
        let reader_task = tokio::spawn(async move {
            loop {
                let read = match tokio::time::timeout(PEER_TIMEOUT, reader.recv()).await {
                    Err(_) => Err(SyncError::PeerSilent),
                    Ok(Ok(Some(msg))) => Ok(msg),
                    Ok(Ok(None)) => Err(SyncError::Closed),
                    Ok(Err(e)) => Err(e.into()),
                };
                let failed = read.is_err();
                if tx.send(read).is_err() || failed {
                    return;
                }
            }
        });
        let config = SenderConfig {
            once: options.once,
            allow_mass_delete: options.allow_mass_delete,
            mass_delete_permille: options.mass_delete_permille,
            window: crate::session::WINDOW,
        };
        Session {
            options,
            machine: SenderMachine::new(config, last_paths),
            scanner,
            writer,
            incoming,
            _reader_task: AbortOnDrop(reader_task),
            scan: None,
            dirty: None,
            want_full: false,
            changed_files: BTreeSet::new(),
            files_dirty: None,
            refresh: None,
            locked: Default::default(),
            chunks: ChunkReader::start(),
            registry: options
                .registry
                .clone()
                .map(|source| crate::registry::start_sender(source, options.once)),
        }
    }

    fn summary(&self, counters: &swrepl_net::Counters) -> SendSummary {
        let mut summary = self.machine.summary().clone();
        self.locked.add_to(&mut summary);
        summary.wire_bytes_sent = counters.bytes_sent();
        summary.wire_bytes_received = counters.bytes_received();
        if let Some(registry) = &self.registry {
            summary.registry_ops = registry.ops_acked();
            summary.registry_problem = registry.problem();
        }
        summary
    }

    async fn handshake(&mut self) -> Result<(), SyncError> {
        self.writer
            .send(&Message::Hello(swrepl_proto::hello(Role::Sender, SOFTWARE)))
            .await?;
        self.writer.flush().await?;
        match self.incoming.recv().await {
            Some(Ok(Message::Welcome(welcome))) => {
                let version = swrepl_proto::check_welcome(&welcome, Role::Receiver)
                    .map_err(|e| SyncError::Protocol(e.to_string()))?;
                tracing::info!(version, peer = %welcome.software, "connected to receiver {}", self.options.connect);
                if version >= 2 {
                    self.machine.enable_tree_summaries();
                }
                Ok(())
            }
            Some(Ok(Message::Error { code, message })) => {
                Err(SyncError::PeerError { code, message })
            }
            Some(Ok(_)) => Err(SyncError::Protocol(
                "receiver did not answer Hello with Welcome".into(),
            )),
            Some(Err(e)) => Err(e),
            None => Err(SyncError::Protocol(
                "receiver closed the connection during the handshake".into(),
            )),
        }
    }

    async fn run(
        &mut self,
        watch: &mut mpsc::UnboundedReceiver<WatchSignal>,
    ) -> Result<(), SyncError> {
        self.handshake().await?;
        self.start_scan(ScanKind::Full);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut rescan = tokio::time::interval(self.options.rescan_interval);
        rescan.tick().await;
        let mut full = tokio::time::interval(self.options.full_pass_interval);
        full.tick().await;
        loop {
            self.transmit().await?;
            if self.options.once && self.once_finished() {
                return Ok(());
            }
            let debounce = self
                .dirty
                .map(|(first, last)| (last + DEBOUNCE).min(first + DEBOUNCE_MAX));
            let files_due = self
                .files_dirty
                .map(|(first, last)| (last + FILES_DEBOUNCE).min(first + DEBOUNCE_MAX));
            tokio::select! {
                msg = self.incoming.recv() => match msg {
                    Some(Ok(msg)) => self.handle(msg).await?,
                    Some(Err(e)) => return Err(e),
                    None => return Err(SyncError::Closed),
                },
                outcome = async { (&mut self.scan.as_mut().expect("guarded").1).await }, if self.scan.is_some() => {
                    let (kind, _) = self.scan.take().expect("guarded");
                    let outcome = outcome.map_err(|e| SyncError::Internal(e.to_string()))?;
                    self.scan_done(kind, outcome)?;
                }
                _ = tokio::time::sleep_until(debounce.unwrap_or_else(Instant::now)), if debounce.is_some() && self.scan.is_none() && !self.machine.awaits_summary() => {
                    self.dirty = None;
                    let kind = if std::mem::take(&mut self.want_full) { ScanKind::Full } else { ScanKind::Incremental };
                    self.start_scan(kind);
                }
                refreshed = async { self.refresh.as_mut().expect("guarded").await }, if self.refresh.is_some() => {
                    self.refresh = None;
                    let refreshed = refreshed.map_err(|e| SyncError::Internal(e.to_string()))?;
                    self.refresh_done(refreshed);
                }
                _ = tokio::time::sleep_until(files_due.unwrap_or_else(Instant::now)), if files_due.is_some() && self.scan.is_none() && self.refresh.is_none() && !self.machine.awaits_summary() => {
                    self.files_dirty = None;
                    self.start_refresh();
                }
                read = self.chunks.next() => self.chunk_read(read).await?,
                signal = watch.recv() => self.watch_signal(signal),
                local = crate::registry::next_local(&mut self.registry) => {
                    if let Some(local) = local {
                        self.registry_local(local);
                    }
                }
                _ = heartbeat.tick() => {
                    let service = self.options.service_probe.as_ref().and_then(|probe| probe());
                    self.writer.send(&Message::Heartbeat(Heartbeat { unix_ms: now_unix_ms(), service })).await?;
                    self.writer.flush().await?;
                }
                _ = rescan.tick(), if !self.options.once => self.mark_dirty(false),
                _ = tokio::time::sleep_until(self.locked.retry_at().unwrap_or_else(Instant::now)), if self.locked.retry_at().is_some() && self.scan.is_none() => {
                    self.locked.retrying();
                    self.mark_dirty(false);
                }
                _ = full.tick(), if !self.options.once => {
                    self.mark_dirty(true);
                    self.registry_resync();
                }
            }
        }
    }

    /// Sends what the machine has ready (replies, then changes within the window).
    async fn transmit(&mut self) -> Result<(), SyncError> {
        if self.feed_ready().await? {
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// Feeds what the machine has ready without flushing (chunk data streams); true when
    /// anything was fed.
    async fn feed_ready(&mut self) -> Result<bool, SyncError> {
        let mut fed = false;
        while let Some(msg) = self.machine.poll_transmit() {
            self.writer.feed(&msg).await?;
            fed = true;
        }
        Ok(fed)
    }

    fn watch_signal(&mut self, signal: Option<WatchSignal>) {
        if signal.is_some() && drop_watch_signal_for_tests() {
            return;
        }
        let now = Instant::now();
        match signal {
            Some(WatchSignal::Files(paths)) => {
                self.changed_files.extend(paths);
                self.files_dirty = Some(
                    self.files_dirty
                        .map_or((now, now), |(first, _)| (first, now)),
                );
            }
            Some(WatchSignal::Rescan) => {
                tracing::info!("watcher lost events or failed; rescanning");
                self.dirty = Some(self.dirty.map_or((now, now), |(first, _)| (first, now)));
            }
            Some(WatchSignal::Changed) | None => {
                self.dirty = Some(self.dirty.map_or((now, now), |(first, _)| (first, now)));
            }
        }
    }

    /// Rereads just the files whose content changed (no walk of the tree).
    fn start_refresh(&mut self) {
        let paths = std::mem::take(&mut self.changed_files);
        if paths.is_empty() {
            return;
        }
        let scanner = self.scanner.clone();
        self.refresh = Some(tokio::task::spawn_blocking(move || {
            let mut scanner = scanner.lock().expect("scanner lock");
            paths
                .into_iter()
                .map(|rel| {
                    let result = scanner.refresh_in_indexed_dir(&rel);
                    (rel, result)
                })
                .collect()
        }));
    }

    fn refresh_done(&mut self, refreshed: Vec<Refreshed>) {
        let mut upserts = Vec::new();
        for (rel, result) in refreshed {
            match result {
                Ok(Some(scanned)) if scanned.entry.kind == EntryKind::File => {
                    upserts.push(scanned.entry)
                }
                // Gone, excluded, not a plain file any more, or in a directory not indexed yet:
                // the walk decides what it became.
                Ok(_) => self.mark_dirty(false),
                Err(e) => {
                    tracing::debug!(path = %rel, "refresh deferred to the next scan: {e}");
                    self.mark_dirty(false);
                }
            }
        }
        self.machine.refresh_done(upserts);
    }

    fn mark_dirty(&mut self, full: bool) {
        self.want_full |= full;
        let now = Instant::now();
        self.dirty.get_or_insert((now, now));
    }

    fn once_finished(&self) -> bool {
        self.scan.is_none()
            && self.dirty.is_none()
            && self.machine.is_settled()
            && self.registry.as_ref().is_none_or(|r| r.settled())
    }

    /// A new state of the Master's registry keys: queue what the receiver lacks.
    fn registry_local(&mut self, local: crate::registry::LocalRead) {
        if let Some(changes) = self.registry.as_mut().and_then(|r| r.on_local(local)) {
            self.queue_registry_changes(changes);
        }
    }

    /// The receiver's registry state: the baseline to diff against.
    fn registry_remote(
        &mut self,
        snapshot: &swrepl_proto::registry::RegistrySnapshot,
    ) -> Result<(), SyncError> {
        let Some(registry) = self.registry.as_mut() else {
            return Ok(()); // registry replication is off here: nothing to compare
        };
        if let Some(changes) = registry.on_remote(snapshot)? {
            self.queue_registry_changes(changes);
        }
        Ok(())
    }

    /// Asks the receiver for its registry state, to correct drift (e.g. hand edits on the Slave).
    fn registry_resync(&mut self) {
        if let Some(request) = self.registry.as_mut().and_then(|r| r.resync()) {
            self.machine.queue_request(request);
        }
    }

    fn queue_registry_changes(
        &mut self,
        (changes, ops): (swrepl_proto::registry::RegistryChangeSet, usize),
    ) {
        let seq = self.machine.queue_registry_changes(changes);
        if let Some(registry) = self.registry.as_mut() {
            registry.sent(seq, ops);
        }
    }

    fn start_scan(&mut self, kind: ScanKind) {
        let full = matches!(kind, ScanKind::Full);
        if full {
            self.machine.full_scan_started();
        }
        let want_keys = full && self.machine.wants_summary_keys();
        let scanner = self.scanner.clone();
        // A full pass sends the whole tree and only needs the scan's renames: listing every
        // upsert too would copy every entry on a first scan.
        let detail = if full {
            ChangeDetail::Renames
        } else {
            ChangeDetail::All
        };
        let handle = tokio::task::spawn_blocking(move || {
            let outcome = scanner.lock().expect("scanner lock").scan_with(detail)?;
            // Right away and on every core, while the receiver works on its summary: when
            // that arrives, comparing takes no more than adding these up.
            let keys = want_keys.then(|| entry_keys(&outcome.entries, |s| &s.entry));
            Ok((outcome, keys))
        });
        self.scan = Some((kind, handle));
    }

    fn scan_done(
        &mut self,
        kind: ScanKind,
        scanned: Result<Scanned, TreeError>,
    ) -> Result<(), SyncError> {
        let (outcome, keys) = match scanned {
            Ok(scanned) => scanned,
            Err(TreeError::RootMissing { .. }) if !self.options.once => {
                tracing::error!(root = %self.options.root.display(), "the Master's root is missing: holding all changes (nothing is deleted on the Slave) until it is back");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.locked.after_scan(self.options, &outcome);
        let full = matches!(kind, ScanKind::Full);
        if self.machine.take_scan(full, outcome, keys) {
            self.mark_dirty(false);
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Result<(), SyncError> {
        if !matches!(msg, Message::Heartbeat(_) | Message::RegistrySnapshot(_)) {
            if let Some(registry) = self.registry.as_mut() {
                registry.on_other_message();
            }
        }
        match self.machine.handle(msg)? {
            Reaction::None => {}
            Reaction::Acked(seq) => {
                if let Some(registry) = self.registry.as_mut() {
                    registry.on_ack(seq);
                }
            }
            Reaction::Refused(seq) => {
                if let Some(registry) = self.registry.as_mut() {
                    registry.on_refused(seq);
                }
            }
            Reaction::ServeChunks(request) => self.serve_chunks(request)?,
            Reaction::RegistrySnapshot(snapshot) => self.registry_remote(&snapshot)?,
        }
        Ok(())
    }

    /// Hands a chunk request to the reader thread; its chunks go out as they are read.
    fn serve_chunks(&mut self, request: ChunkRequest) -> Result<(), SyncError> {
        let path = self.options.root.join(&request.entry.path);
        self.chunks.request(path, request)
    }

    /// A chunk from the reader thread, or a file that changed since it was scanned: that change
    /// is withdrawn and the file rescanned.
    async fn chunk_read(&mut self, read: Option<ChunkRead>) -> Result<(), SyncError> {
        match read {
            Some(ChunkRead::Data { seq, index, data }) => {
                self.machine.chunk_read(seq, index, data);
                // Stream without flushing while more chunks are ready; `transmit` flushes.
                if !self.chunks.results.is_empty() {
                    self.feed_ready().await?;
                }
            }
            Some(ChunkRead::Failed { seq, reason }) => {
                if let Some(withdrawn) = self.machine.withdraw(seq, reason) {
                    self.forget_indexed(withdrawn).await?;
                }
                self.mark_dirty(false);
            }
            None => return Err(SyncError::Internal("the chunk reader stopped".into())),
        }
        Ok(())
    }

    async fn forget_indexed(&mut self, withdrawn: FileEntry) -> Result<(), SyncError> {
        let scanner = self.scanner.clone();
        tokio::task::spawn_blocking(move || {
            forget_withdrawn(&mut scanner.lock().expect("scanner lock"), &withdrawn)
        })
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?
    }
}

/// See [`Session::forget_indexed`].
fn forget_withdrawn(scanner: &mut Scanner, withdrawn: &FileEntry) -> Result<(), SyncError> {
    let mut paths = vec![withdrawn.path.clone()];
    if let Some(first) = withdrawn.chunks.first() {
        paths.extend(scanner.index().files_starting_with(&first.hash)?);
    }
    for path in paths {
        let Some(mut known) = scanner.index().get(&path)? else {
            continue;
        };
        if path == withdrawn.path || known.entry.file_hash == withdrawn.file_hash {
            known.entry.mtime_ns = i64::MIN;
            scanner.index_mut().put(&known)?;
        }
    }
    Ok(())
}

/// Reads the requested chunks, one at a time, into `tx`; stops at the first that fails.
/// Reads the chunks of one request in order, stopping at the first that cannot be read as
/// scanned. Err when the session is gone.
fn read_chunks(
    path: &std::path::Path,
    request: &ChunkRequest,
    tx: &mpsc::Sender<ChunkRead>,
) -> Result<(), ()> {
    let seq = request.seq;
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            let reason = format!("cannot open: {e}");
            return tx
                .blocking_send(ChunkRead::Failed { seq, reason })
                .map_err(drop);
        }
    };
    for &index in &request.indices {
        let read = match read_chunk(&mut file, &request.entry, &request.offsets, index) {
            Ok(data) => ChunkRead::Data { seq, index, data },
            Err(reason) => {
                return tx
                    .blocking_send(ChunkRead::Failed { seq, reason })
                    .map_err(drop)
            }
        };
        tx.blocking_send(read).map_err(drop)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> SyncError {
        SyncError::PeerError {
            code: swrepl_proto::ErrorCode::ReceiverUnavailable,
            message: "cannot apply \"big.bin\": No space left on device".into(),
        }
    }

    /// Found by tests/watch_overflow.rs on a loaded machine: files announced, then renamed with
    /// their directory before their chunks were read, were withdrawn; the scan that saw the
    /// rename had already moved them in the index, so forgetting the old path did nothing and
    /// the files never reached the Slave (until the next full pass).
    #[test]
    fn a_withdrawn_file_renamed_meanwhile_is_sent_again_by_the_next_scan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("batch05")).unwrap();
        std::fs::write(root.join("batch05/new0500.eml"), b"an attachment").unwrap();
        let excludes = Excludes::new(&[], true).unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let mut scanner = Scanner::new(&root, excludes, index);
        let announced = scanner
            .scan()
            .unwrap()
            .entries
            .into_iter()
            .find(|s| s.entry.path == "batch05/new0500.eml")
            .unwrap()
            .entry;

        std::fs::rename(root.join("batch05"), root.join("renamed05")).unwrap();
        let renamed = scanner.scan().unwrap();
        assert!(
            renamed.changes.iter().any(
                |c| matches!(c, swrepl_tree::Change::Rename { from, .. } if from == "batch05")
            ),
            "{:?}",
            renamed.changes
        );
        forget_withdrawn(&mut scanner, &announced).unwrap();

        let next = scanner.scan().unwrap();
        assert!(
            next.changes.iter().any(|c| matches!(
                c,
                swrepl_tree::Change::Upsert(e) if e.path == "renamed05/new0500.eml"
            )),
            "the withdrawn file is not sent again: {:?}",
            next.changes
        );
    }

    #[test]
    fn a_receiver_that_keeps_failing_is_retried_ever_more_slowly() {
        let mut count = 0;
        let short = Duration::from_secs(1);
        let pauses: Vec<u128> = (0..10)
            .map(|_| retry_pause(&refused(), short, &mut count).as_millis())
            .collect();
        assert_eq!(
            pauses,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        // A session lost to the network, or one that ran for a long time, starts over.
        let lost = SyncError::PeerSilent;
        assert_eq!(retry_pause(&lost, short, &mut count).as_millis(), 250);
        assert_eq!(retry_pause(&refused(), short, &mut count).as_millis(), 500);
        let long = Duration::from_secs(3600);
        assert_eq!(retry_pause(&refused(), long, &mut count).as_millis(), 500);
    }
}
