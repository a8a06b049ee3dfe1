//! The sender: scans the Master's tree, streams changes to the receiver, serves the chunks it
//! asks for, and (unless `once`) watches the tree and keeps streaming.
//!
//! Every connection starts with a full pass (the whole tree, so the receiver can fix anything
//! that drifted and prune extras under the mass-delete guard). After it, file-system events
//! trigger incremental passes within milliseconds; a periodic rescan, and a rescan whenever the
//! watcher reports an error or overflow, is the safety net because watchers drop events.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swrepl_net::{FrameReader, FrameWriter, Identity};
use swrepl_proto::{EntryKind, FileEntry, Heartbeat, Message, Prune, Role, Seq, ServiceStatus};
use swrepl_tree::{
    Change, Excludes, Index, ScanOutcome, ScanProblem, Scanner, TreeError, STATE_DIR_NAME,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{now_unix_ms, Fingerprint, SyncError, HEARTBEAT_INTERVAL, PEER_TIMEOUT, SOFTWARE};

/// Changes sent but not yet acknowledged, at most.
pub(crate) const WINDOW: usize = 4096;
/// Quiet time after a file-system event before rescanning, so a burst becomes one pass.
const DEBOUNCE: Duration = Duration::from_millis(40);
/// Quiet time before refreshing files whose content changed (no walk, so it can be short).
const FILES_DEBOUNCE: Duration = Duration::from_millis(5);
/// Longest a continuous burst of events can postpone a rescan.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);
/// How often a `once` run retries files it could not read cleanly before giving up on them.
const ONCE_RETRIES: u32 = 3;

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
    let mut last_paths: Option<HashSet<String>> = None;
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
        last_paths = session.last_paths.take();
        match result {
            Ok(()) => return Ok(session.summary(&counters)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
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
    let index = Index::open(&state.join("sender-index.db"))?;
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

/// One file reread after a content event: its path and what the refresh found.
type Refreshed = (String, Result<Option<swrepl_tree::ScannedEntry>, TreeError>);

/// What the sender must keep to serve chunk requests for an unacknowledged change.
struct InFlight {
    entry: Option<FileEntry>,
    offsets: Vec<u64>,
}

enum ScanKind {
    Full,
    Incremental,
}

struct Session<'a> {
    options: &'a SenderOptions,
    scanner: Arc<Mutex<Scanner>>,
    writer: FrameWriter,
    incoming: mpsc::UnboundedReceiver<Result<Message, SyncError>>,
    _reader_task: AbortOnDrop,
    next_seq: Seq,
    acked: Seq,
    in_flight: BTreeMap<Seq, InFlight>,
    queue: VecDeque<Message>,
    pass: u64,
    passes_done: u64,
    passes_sent: u64,
    last_paths: Option<HashSet<String>>,
    summary: SendSummary,
    scan: Option<(
        ScanKind,
        tokio::task::JoinHandle<Result<ScanOutcome, TreeError>>,
    )>,
    dirty: Option<(Instant, Instant)>,
    want_full: bool,
    /// Files whose content changed, refreshed on their own (no walk) once events go quiet.
    changed_files: BTreeSet<String>,
    files_dirty: Option<(Instant, Instant)>,
    refresh: Option<tokio::task::JoinHandle<Vec<Refreshed>>>,
    retries_left: u32,
    registry: Option<crate::registry::SenderRegistry>,
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
        last_paths: Option<HashSet<String>>,
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
        Session {
            options,
            scanner,
            writer,
            incoming,
            _reader_task: AbortOnDrop(reader_task),
            next_seq: 1,
            acked: 0,
            in_flight: BTreeMap::new(),
            queue: VecDeque::new(),
            pass: 0,
            passes_done: 0,
            passes_sent: 0,
            last_paths,
            summary: SendSummary::default(),
            scan: None,
            dirty: None,
            want_full: false,
            changed_files: BTreeSet::new(),
            files_dirty: None,
            refresh: None,
            retries_left: ONCE_RETRIES,
            registry: options
                .registry
                .clone()
                .map(|source| crate::registry::start_sender(source, options.once)),
        }
    }

    fn summary(&self, counters: &swrepl_net::Counters) -> SendSummary {
        let mut summary = self.summary.clone();
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
            self.send_queued().await?;
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
                _ = tokio::time::sleep_until(debounce.unwrap_or_else(Instant::now)), if debounce.is_some() && self.scan.is_none() => {
                    self.dirty = None;
                    let kind = if std::mem::take(&mut self.want_full) { ScanKind::Full } else { ScanKind::Incremental };
                    self.start_scan(kind);
                }
                refreshed = async { self.refresh.as_mut().expect("guarded").await }, if self.refresh.is_some() => {
                    self.refresh = None;
                    let refreshed = refreshed.map_err(|e| SyncError::Internal(e.to_string()))?;
                    self.refresh_done(refreshed);
                }
                _ = tokio::time::sleep_until(files_due.unwrap_or_else(Instant::now)), if files_due.is_some() && self.scan.is_none() && self.refresh.is_none() => {
                    self.files_dirty = None;
                    self.start_refresh();
                }
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
                _ = full.tick(), if !self.options.once => {
                    self.mark_dirty(true);
                    self.registry_resync();
                }
            }
        }
    }

    fn watch_signal(&mut self, signal: Option<WatchSignal>) {
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
                    let result = scanner.refresh(&rel);
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
                // Gone, excluded, or not a plain file any more: the walk decides what it became.
                Ok(_) => self.mark_dirty(false),
                Err(e) => {
                    tracing::debug!(path = %rel, "refresh deferred to the next scan: {e}");
                    self.mark_dirty(false);
                }
            }
        }
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

    fn mark_dirty(&mut self, full: bool) {
        self.want_full |= full;
        let now = Instant::now();
        self.dirty.get_or_insert((now, now));
    }

    fn once_finished(&self) -> bool {
        self.scan.is_none()
            && self.dirty.is_none()
            && self.queue.is_empty()
            && self.in_flight.is_empty()
            && self.passes_sent > 0
            && self.passes_done == self.passes_sent
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
            self.queue.push_back(request);
        }
    }

    /// A registry change set takes the next sequence number, like a file change.
    fn queue_registry_changes(
        &mut self,
        (changes, ops): (swrepl_proto::registry::RegistryChangeSet, usize),
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(
            seq,
            InFlight {
                entry: None,
                offsets: Vec::new(),
            },
        );
        self.queue
            .push_back(Message::RegistryChanges { seq, changes });
        if let Some(registry) = self.registry.as_mut() {
            registry.sent(seq, ops);
        }
    }

    fn start_scan(&mut self, kind: ScanKind) {
        let scanner = self.scanner.clone();
        let handle =
            tokio::task::spawn_blocking(move || scanner.lock().expect("scanner lock").scan());
        self.scan = Some((kind, handle));
    }

    fn scan_done(
        &mut self,
        kind: ScanKind,
        outcome: Result<ScanOutcome, TreeError>,
    ) -> Result<(), SyncError> {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(TreeError::RootMissing { .. }) if !self.options.once => {
                tracing::error!(root = %self.options.root.display(), "the Master's root is missing: holding all changes (nothing is deleted on the Slave) until it is back");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.summary.bytes_scanned += outcome.bytes_hashed;
        for problem in &outcome.problems {
            tracing::warn!(path = %problem.path, "cannot replicate now, will retry: {}", problem.reason);
        }
        if !outcome.problems.is_empty() {
            if self.options.once && self.retries_left > 0 {
                self.retries_left -= 1;
                self.mark_dirty(false);
            } else if !self.options.once {
                self.mark_dirty(false);
            }
        }
        self.summary.unreadable = outcome.problems.clone();
        let current: HashSet<String> = outcome
            .entries
            .iter()
            .map(|e| e.entry.path.clone())
            .collect();
        match kind {
            ScanKind::Full => self.queue_full_pass(&outcome),
            ScanKind::Incremental => self.queue_incremental(&outcome, &current),
        }
        self.record_tree(&outcome);
        self.last_paths = Some(current);
        Ok(())
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
        let prune = if self.options.allow_mass_delete {
            Prune::All
        } else {
            Prune::UpToPermille(self.options.mass_delete_permille)
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
        let over = removed * 1000 > u64::from(self.options.mass_delete_permille) * total;
        if removed == 0 || !over || self.options.allow_mass_delete {
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

    fn queue_change(&mut self, change: Change) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (msg, entry) = match change {
            Change::Upsert(entry) => (
                Message::Upsert {
                    seq,
                    entry: entry.clone(),
                },
                Some(entry),
            ),
            Change::Rename { from, entry } => (
                Message::Rename {
                    seq,
                    from,
                    entry: entry.clone(),
                },
                Some(entry),
            ),
            Change::Delete(path) => (Message::Delete { seq, path }, None),
        };
        let entry = entry.filter(|e| e.kind == EntryKind::File && !e.chunks.is_empty());
        let offsets = entry.as_ref().map(chunk_offsets).unwrap_or_default();
        self.in_flight.insert(seq, InFlight { entry, offsets });
        self.queue.push_back(msg);
    }

    async fn send_queued(&mut self) -> Result<(), SyncError> {
        let mut sent = false;
        while let Some(msg) = self.queue.front() {
            if let Some(seq) = change_seq(msg) {
                if seq > self.acked + WINDOW as u64 {
                    break;
                }
            }
            let msg = self.queue.pop_front().expect("front exists");
            self.writer.feed(&msg).await?;
            sent = true;
        }
        if sent {
            self.writer.flush().await?;
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Result<(), SyncError> {
        if !matches!(msg, Message::Heartbeat(_) | Message::RegistrySnapshot(_)) {
            if let Some(registry) = self.registry.as_mut() {
                registry.on_other_message();
            }
        }
        match msg {
            Message::NeedChunks { seq, indices } => self.serve_chunks(seq, indices).await?,
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
                if let Some(registry) = self.registry.as_mut() {
                    registry.on_ack(seq);
                }
            }
            Message::Refused { seq, path, reason } => {
                if let Some(registry) = self.registry.as_mut() {
                    registry.on_refused(seq);
                }
                tracing::warn!(%path, "receiver refused: {reason}");
                self.summary.refused.push((path, reason));
            }
            Message::PassDone { pass, pruned, held } => {
                self.passes_done += 1;
                self.summary.pruned += pruned;
                if held > 0 {
                    tracing::warn!(pass, held, "mass-delete guard on the receiver: {held} extra entries were NOT removed; if the Master's tree really shrank that much, run the sender with --allow-mass-delete");
                    self.summary.held_deletes += held;
                }
            }
            Message::Heartbeat(_) => {}
            Message::RegistrySnapshot(snapshot) => self.registry_remote(&snapshot)?,
            Message::Error { code, message } => return Err(SyncError::PeerError { code, message }),
            other => {
                return Err(SyncError::Protocol(
                    format!("unexpected message from the receiver: {other:?}")
                        .chars()
                        .take(200)
                        .collect(),
                ))
            }
        }
        Ok(())
    }

    /// Reads the requested chunks from the file, checking each against the hash the receiver
    /// was promised; if the file changed since it was scanned, the change is withdrawn and the
    /// file rescanned, so a half-written state is never sent.
    async fn serve_chunks(&mut self, seq: Seq, indices: Vec<u32>) -> Result<(), SyncError> {
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
        let offsets = in_flight.offsets.clone();
        let path = self.options.root.join(&entry.path);
        let (tx, mut rx) = mpsc::channel::<Result<(u32, Vec<u8>), String>>(8);
        let reader = tokio::task::spawn_blocking(move || {
            read_chunks(&path, &entry, &offsets, &indices, &tx)
        });
        while let Some(item) = rx.recv().await {
            match item {
                Ok((index, data)) => {
                    self.summary.data_bytes_sent += data.len() as u64;
                    self.writer
                        .feed(&Message::ChunkData { seq, index, data })
                        .await?;
                }
                Err(reason) => {
                    self.withdraw(seq, reason).await?;
                    break;
                }
            }
        }
        let _ = reader.await;
        self.writer.flush().await?;
        Ok(())
    }

    async fn withdraw(&mut self, seq: Seq, reason: String) -> Result<(), SyncError> {
        let path = self
            .in_flight
            .get(&seq)
            .and_then(|f| f.entry.as_ref())
            .map(|e| e.path.clone())
            .unwrap_or_default();
        tracing::info!(%path, "file changed while being sent ({reason}); withdrawing and rescanning it");
        self.writer
            .send(&Message::FileUnavailable { seq, reason })
            .await?;
        // Forget what the index believes about the file so the next scan rereads it.
        let scanner = self.scanner.clone();
        tokio::task::spawn_blocking(move || {
            let mut scanner = scanner.lock().expect("scanner lock");
            if let Ok(Some(mut stale)) = scanner.index().get(&path) {
                stale.entry.mtime_ns = i64::MIN;
                let _ = scanner.index_mut().put(&stale);
            }
        })
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?;
        self.mark_dirty(false);
        Ok(())
    }
}

fn read_chunks(
    path: &std::path::Path,
    entry: &FileEntry,
    offsets: &[u64],
    indices: &[u32],
    tx: &mpsc::Sender<Result<(u32, Vec<u8>), String>>,
) {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            let _ = tx.blocking_send(Err(format!("cannot open: {e}")));
            return;
        }
    };
    for &index in indices {
        let item = entry
            .chunks
            .get(index as usize)
            .ok_or_else(|| format!("receiver asked for chunk {index} of {}", entry.chunks.len()))
            .and_then(|chunk| {
                let mut data = vec![0u8; chunk.len as usize];
                file.seek(SeekFrom::Start(offsets[index as usize]))
                    .and_then(|_| file.read_exact(&mut data))
                    .map_err(|e| format!("read failed: {e}"))?;
                if *blake3::hash(&data).as_bytes() != chunk.hash {
                    return Err("content changed since it was scanned".to_string());
                }
                Ok((index, data))
            });
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
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

    fn refused() -> SyncError {
        SyncError::PeerError {
            code: swrepl_proto::ErrorCode::ReceiverUnavailable,
            message: "cannot apply \"big.bin\": No space left on device".into(),
        }
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
