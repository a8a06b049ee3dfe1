//! Registry replication inside a replication session: the configured keys travel over the same
//! TLS connection as the files.
//!
//! Negotiation: in a sender session, a receiver with registry replication on sends a
//! `RegistrySnapshot` (the state of the keys it replicates) as its first message after `Welcome`;
//! one without sends none, so a sender that sees any other message first (a heartbeat aside)
//! knows the receiver replicates no keys. A snapshot with no roots says the same (the receiver's
//! keys could not be read). A sender with registry replication configured diffs that snapshot
//! against its own keys and sends the difference as `RegistryChanges`, which takes the next
//! number of the change sequence and is acknowledged like a file change. From then on the sender reads its keys whenever the
//! backend signals a change (and at least every [`RegistrySource::poll_interval`]) and sends what
//! changed since the last state it sent. At every full pass it asks again (`RegistryRequest`) so
//! that a Slave edited by hand is brought back in line.
//!
//! The receiver applies a change set in sequence order on its apply thread, all-or-nothing,
//! after saving the previous state to `<archive>/registry-<UTC>.reg`; a change set that touches
//! any key outside the receiver's own configured keys is refused whole (`Refused`, the session
//! goes on).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swrepl_proto::registry::{RegistryChangeSet, RegistrySnapshot};
use swrepl_proto::{Message, Seq};
use swrepl_registry::wire::{from_wire_changes, from_wire_snapshot, to_wire_changes};
use swrepl_registry::{
    apply_changes, diff, ChangeSet, Error as RegistryError, RegFileBackend, RegistryBackend, Scope,
    Snapshot,
};
use tokio::sync::mpsc;

use crate::SyncError;

/// Opens the backend that holds the registry keys (called once per use, on a blocking thread).
pub type OpenRegistry =
    Arc<dyn Fn() -> Result<Box<dyn RegistryBackend>, RegistryError> + Send + Sync>;

/// How long a sender waits for a change signal before reading its keys anyway.
pub const DEFAULT_REGISTRY_POLL: Duration = Duration::from_secs(2);
/// Pause between the two reads that must agree before a local state is sent, so a `.reg` file
/// caught halfway through being rewritten by an editor is never replicated.
const SETTLE: Duration = Duration::from_millis(150);
/// Reads tried before giving up on a state that keeps changing or cannot be read.
const SETTLE_ATTEMPTS: usize = 10;

/// Where one side's registry keys live and which keys are replicated.
#[derive(Clone)]
pub struct RegistrySource {
    scope: Scope,
    open: OpenRegistry,
    description: String,
    poll_interval: Duration,
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("backend", &self.description)
            .field("scope", &self.scope)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl RegistrySource {
    /// A source over any backend; `description` names it in messages.
    pub fn new(scope: Scope, description: impl Into<String>, open: OpenRegistry) -> Self {
        RegistrySource {
            scope,
            open,
            description: description.into(),
            poll_interval: DEFAULT_REGISTRY_POLL,
        }
    }

    /// The keys kept in a regedit `.reg` file (the lab backend). With `create`, a missing file is
    /// created empty (a receiver's); otherwise it must exist (a sender's).
    pub fn reg_file(path: impl Into<PathBuf>, scope: Scope, create: bool) -> Self {
        let path: PathBuf = path.into();
        let description = format!("registry file {}", path.display());
        let open: OpenRegistry = Arc::new(move || {
            let backend = if create {
                RegFileBackend::open_or_create(&path)?
            } else {
                RegFileBackend::open(&path)?
            };
            Ok(Box::new(backend) as Box<dyn RegistryBackend>)
        });
        RegistrySource::new(scope, description, open)
    }

    /// The live Windows registry.
    #[cfg(windows)]
    pub fn live(scope: Scope) -> Self {
        let open: OpenRegistry = Arc::new(|| {
            Ok(Box::new(swrepl_registry::LiveRegistry::new()) as Box<dyn RegistryBackend>)
        });
        RegistrySource::new(scope, "the live registry", open)
    }

    /// Sets how long a sender waits for a change signal before reading its keys anyway.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(50));
        self
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Where the keys live, for messages.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Opens the backend (blocking).
    pub fn open(&self) -> Result<Box<dyn RegistryBackend>, RegistryError> {
        (self.open)()
    }

    /// The current state of the configured keys (blocking).
    pub fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        swrepl_registry::snapshot(self.open()?.as_ref(), &self.scope)
    }
}

/// Reads the keys until two reads a moment apart agree.
fn read_settled(source: &RegistrySource) -> Result<Snapshot, RegistryError> {
    let mut last = source.snapshot();
    for _ in 0..SETTLE_ATTEMPTS {
        std::thread::sleep(SETTLE);
        let again = source.snapshot();
        match (&last, &again) {
            (Ok(a), Ok(b)) if a == b => return again,
            _ => last = again,
        }
    }
    last
}

// ---------------------------------------------------------------------------------------------
// Sender side

/// A local read: the keys' state, or why they could not be read.
pub(crate) type LocalRead = Result<Snapshot, String>;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sender's registry state for one session.
pub(crate) struct SenderRegistry {
    source: RegistrySource,
    local_rx: mpsc::Receiver<LocalRead>,
    _watcher: AbortOnDrop,
    /// Whether the receiver replicates registry keys (None until its snapshot arrived).
    offered: Option<bool>,
    /// The receiver's state as last known: its snapshot, then each state sent to it.
    remote: Option<Snapshot>,
    /// The latest settled local state.
    local: Option<Snapshot>,
    /// Why the local keys could not be read or sent, if that is the latest news.
    local_problem: Option<String>,
    /// The configured keys missing on the Master, as last reported.
    missing_reported: Option<String>,
    /// A `RegistryRequest` is out: hold changes until its answer (a fresh baseline) arrives.
    awaiting_snapshot: bool,
    /// Change sets sent and not yet acknowledged: seq → operations.
    pending: BTreeMap<Seq, usize>,
    ops_acked: u64,
}

/// What to tell the operator when configured keys do not exist on the Master (the runbook keeps
/// "either or both" keys: a missing one is news, not an error).
fn missing_roots_notice(local: &Snapshot) -> Option<String> {
    let missing: Vec<String> = local
        .roots()
        .iter()
        .filter(|(_, key)| key.is_none())
        .map(|(path, _)| path.to_string())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "registry key(s) {} do not exist on the Master: not replicated, and the Slave's copy is kept (check the configured keys, or create them on the Master)",
            missing.join(", ")
        )
    })
}

/// The local state to replicate: a configured key missing on the Master is neither deleted on
/// the Slave nor created empty there — it is left as the receiver has it (and reported).
fn keep_missing_roots(local: &Snapshot, remote: &Snapshot) -> Snapshot {
    let roots = local
        .roots()
        .iter()
        .map(|(path, key)| match key {
            Some(key) => (path.clone(), Some(key.clone())),
            None => (path.clone(), remote.root(path).cloned()),
        })
        .collect();
    Snapshot::new(roots)
}

/// Starts reading the local keys: once now, then (unless `once`) on every change signal and at
/// least every poll interval. Only states that differ from the previous one are reported.
pub(crate) fn start_sender(source: RegistrySource, once: bool) -> SenderRegistry {
    let (tx, local_rx) = mpsc::channel(4);
    let watcher = tokio::spawn(watch_local(source.clone(), once, tx));
    SenderRegistry {
        source,
        local_rx,
        _watcher: AbortOnDrop(watcher),
        offered: None,
        remote: None,
        local: None,
        local_problem: None,
        missing_reported: None,
        awaiting_snapshot: false,
        pending: BTreeMap::new(),
        ops_acked: 0,
    }
}

async fn watch_local(source: RegistrySource, once: bool, tx: mpsc::Sender<LocalRead>) {
    let mut previous: Option<LocalRead> = None;
    let mut first = true;
    loop {
        let src = source.clone();
        let wait = !std::mem::take(&mut first);
        let read = tokio::task::spawn_blocking(move || {
            if wait {
                // A signal is only a hint, and an error here just means "read again now".
                if let Err(e) = src.open().and_then(|backend| {
                    backend.wait_for_change(src.scope().roots(), src.poll_interval())
                }) {
                    tracing::debug!("registry change wait: {e}");
                    std::thread::sleep(src.poll_interval());
                }
            }
            read_settled(&src).map_err(|e| e.to_string())
        })
        .await;
        let read = match read {
            Ok(read) => read,
            Err(e) => Err(format!("registry reader failed: {e}")),
        };
        if previous.as_ref() != Some(&read) {
            if let Err(e) = &read {
                tracing::error!(
                    "cannot read the registry keys from {}: {e}; retrying",
                    source.describe()
                );
            }
            previous = Some(read.clone());
            if tx.send(read).await.is_err() {
                return;
            }
        }
        if once {
            return;
        }
    }
}

/// The next local read, or never when registry replication is off.
pub(crate) async fn next_local(registry: &mut Option<SenderRegistry>) -> Option<LocalRead> {
    match registry {
        Some(registry) => registry.local_rx.recv().await,
        None => std::future::pending().await,
    }
}

impl SenderRegistry {
    /// A new local state (or read error) arrived; returns the changes to send, if any.
    pub(crate) fn on_local(&mut self, read: LocalRead) -> Option<(RegistryChangeSet, usize)> {
        match read {
            Ok(snapshot) => {
                let missing = missing_roots_notice(&snapshot);
                if missing != self.missing_reported {
                    if let Some(notice) = &missing {
                        tracing::warn!("{notice}");
                    }
                    self.missing_reported = missing;
                }
                self.local = Some(snapshot);
                self.local_problem = None;
            }
            Err(e) => {
                self.local_problem = Some(format!(
                    "cannot read the registry keys from {}: {e}",
                    self.source.describe()
                ));
            }
        }
        self.changes_to_send()
    }

    /// The receiver sent something else before any `RegistrySnapshot`: it replicates no
    /// registry keys (one that does always opens the session with its snapshot).
    pub(crate) fn on_other_message(&mut self) {
        if self.offered.is_none() {
            tracing::warn!("the receiver replicates no registry keys: registry changes are NOT replicated (start the receiver with --registry-file, or on Windows without --no-registry)");
            self.offered = Some(false);
        }
    }

    /// The receiver's snapshot arrived (at session start, or answering our request).
    pub(crate) fn on_remote(
        &mut self,
        wire: &RegistrySnapshot,
    ) -> Result<Option<(RegistryChangeSet, usize)>, SyncError> {
        self.awaiting_snapshot = false;
        if wire.roots.is_empty() {
            if self.offered != Some(false) {
                tracing::warn!("the receiver replicates no registry keys: registry changes are NOT replicated (start the receiver with --registry-file, or on Windows without --no-registry)");
            }
            self.offered = Some(false);
            return Ok(None);
        }
        let snapshot = from_wire_snapshot(wire).map_err(|e| {
            SyncError::Protocol(format!("bad registry snapshot from the receiver: {e}"))
        })?;
        if self.offered.is_none() {
            self.warn_about_scope(&snapshot);
        }
        self.offered = Some(true);
        self.remote = Some(snapshot);
        Ok(self.changes_to_send())
    }

    fn warn_about_scope(&self, remote: &Snapshot) {
        let theirs = remote.root_paths();
        for root in self.source.scope().roots() {
            if !theirs.contains(root) {
                tracing::warn!(key = %root, "the receiver does not replicate this key; changes to it will be refused (configure the same --registry-key on both sides)");
            }
        }
    }

    /// What turns the receiver's known state into the local one, if anything; remembered as sent.
    fn changes_to_send(&mut self) -> Option<(RegistryChangeSet, usize)> {
        if self.offered != Some(true) || self.awaiting_snapshot {
            return None;
        }
        let (remote, local) = (self.remote.as_ref()?, self.local.as_ref()?);
        let local = keep_missing_roots(local, remote);
        let changes = diff(remote, &local);
        if changes.is_empty() {
            return None;
        }
        let wire = to_wire_changes(&changes);
        let probe = Message::RegistryChanges {
            seq: Seq::MAX,
            changes: wire.clone(),
        };
        if let Err(e) = swrepl_proto::encode_frame(&probe) {
            let problem = format!(
                "the registry change set ({} operations) is too large to send: {e}",
                changes.len()
            );
            tracing::error!("{problem}");
            self.local_problem = Some(problem);
            return None;
        }
        for line in changes.describe(remote) {
            tracing::info!("registry change: {line}");
        }
        self.remote = Some(local);
        Some((wire, changes.len()))
    }

    /// Remembers that change set `seq` with `ops` operations went out.
    pub(crate) fn sent(&mut self, seq: Seq, ops: usize) {
        self.pending.insert(seq, ops);
    }

    /// Everything up to `seq` is applied.
    pub(crate) fn on_ack(&mut self, seq: Seq) {
        let rest = self.pending.split_off(&(seq + 1));
        self.ops_acked += self.pending.values().map(|&n| n as u64).sum::<u64>();
        self.pending = rest;
    }

    /// Change `seq` was refused; true when it was a registry change set.
    pub(crate) fn on_refused(&mut self, seq: Seq) -> bool {
        self.pending.remove(&seq).is_some()
    }

    /// Asks the receiver for a fresh baseline, unless one is already on its way.
    pub(crate) fn resync(&mut self) -> Option<Message> {
        if self.offered != Some(true) || self.awaiting_snapshot {
            return None;
        }
        self.awaiting_snapshot = true;
        Some(Message::RegistryRequest)
    }

    /// For a `once` run: the receiver has answered, the local keys were read (or failed), and
    /// every change set sent is acknowledged or refused.
    pub(crate) fn settled(&self) -> bool {
        match self.offered {
            None => false,
            Some(false) => true,
            Some(true) => {
                (self.local.is_some() || self.local_problem.is_some())
                    && self.pending.is_empty()
                    && !self.awaiting_snapshot
            }
        }
    }

    /// Registry operations the receiver acknowledged.
    pub(crate) fn ops_acked(&self) -> u64 {
        self.ops_acked
    }

    /// Why the configured keys are not (fully) replicated, if they are not.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.offered == Some(false) {
            return Some("the receiver replicates no registry keys: start it with --registry-file (or, on Windows, without --no-registry)".into());
        }
        self.local_problem.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver side

/// Why a change set was refused: the key named, and the reason.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub path: String,
    pub reason: String,
}

/// The receiver's registry for one session; lives on the apply thread.
pub(crate) struct ReceiverRegistry {
    source: Option<RegistrySource>,
    archive: PathBuf,
}

impl ReceiverRegistry {
    /// `source` None: this receiver replicates no registry keys.
    pub(crate) fn new(source: Option<RegistrySource>, archive: &Path) -> Self {
        ReceiverRegistry {
            source,
            archive: archive.to_path_buf(),
        }
    }

    /// What opens a sender session when registry replication is on (blocking): the snapshot.
    pub(crate) fn first_message(&self) -> Option<Message> {
        self.source.is_some().then(|| self.snapshot_message())
    }

    /// The `RegistrySnapshot` to send (blocking): the keys' state, or no roots when registry
    /// replication is off or the keys cannot be read (logged: the files still replicate).
    pub(crate) fn snapshot_message(&self) -> Message {
        Message::RegistrySnapshot(wire_snapshot(self.source.as_ref()))
    }

    /// Checks a received change set: its shape, and that it touches only our configured keys.
    pub(crate) fn check(&self, wire: &RegistryChangeSet) -> Result<ChangeSet, Refusal> {
        let Some(source) = &self.source else {
            return Err(Refusal {
                path: "registry".into(),
                reason: "this receiver does not replicate registry keys".into(),
            });
        };
        let changes = from_wire_changes(wire).map_err(|e| Refusal {
            path: "registry".into(),
            reason: e.to_string(),
        })?;
        if let Some(op) = changes
            .ops
            .iter()
            .find(|op| !source.scope().allows(op.key()))
        {
            // The whole set is refused: applying the rest would leave a state the Master never had.
            return Err(Refusal {
                path: op.key().to_string(),
                reason: format!(
                    "the registry change set touches a key outside this receiver's replicated keys ({}); nothing of it was applied",
                    scope_text(source.scope())
                ),
            });
        }
        Ok(changes)
    }

    /// Applies a checked change set all-or-nothing, archiving the previous state first; returns
    /// how many operations changed something.
    pub(crate) fn apply(&self, changes: &ChangeSet) -> Result<usize, Refusal> {
        let refusal = |e: RegistryError| Refusal {
            path: "registry".into(),
            reason: format!("not applied: {e}"),
        };
        let Some(source) = &self.source else {
            return Err(refusal(RegistryError::Wire(
                "this receiver does not replicate registry keys".into(),
            )));
        };
        let mut backend = source.open().map_err(refusal)?;
        let outcome = apply_changes(
            backend.as_mut(),
            source.scope(),
            changes,
            Some(&self.archive),
        )
        .map_err(refusal)?;
        if let Some(archived) = &outcome.archived {
            tracing::info!(
                ops = outcome.applied.len(),
                archive = %archived.display(),
                "registry changes applied to {}",
                source.describe()
            );
        }
        Ok(outcome.applied.len())
    }
}

fn scope_text(scope: &Scope) -> String {
    scope
        .roots()
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn wire_snapshot(source: Option<&RegistrySource>) -> RegistrySnapshot {
    let Some(source) = source else {
        return RegistrySnapshot::default();
    };
    match source.snapshot() {
        Ok(snapshot) => swrepl_registry::wire::to_wire_snapshot(&snapshot),
        Err(e) => {
            tracing::error!("cannot read the registry keys from {}: {e}; registry replication is off for this session", source.describe());
            RegistrySnapshot::default()
        }
    }
}

/// Answers a verifier's `RegistryRequest` (reads on a blocking thread).
pub(crate) async fn answer_request(source: Option<RegistrySource>) -> Result<Message, SyncError> {
    let snapshot = tokio::task::spawn_blocking(move || wire_snapshot(source.as_ref()))
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?;
    Ok(Message::RegistrySnapshot(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swrepl_proto::registry::{RegistryOp, RegistryValue};
    use swrepl_registry::wire::to_wire_snapshot;

    const ALIASES: &str =
        r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases";

    fn reg_file(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("Windows Registry Editor Version 5.00\n\n{body}"),
        )
        .unwrap();
        path
    }

    fn set_value(key: &str, name: &str) -> RegistryOp {
        RegistryOp::SetValue {
            key: key.into(),
            value: RegistryValue {
                name: name.into(),
                kind: 4,
                data: vec![1, 0, 0, 0],
            },
        }
    }

    #[test]
    fn receiver_refuses_change_sets_outside_its_keys_or_malformed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = reg_file(tmp.path(), "slave.reg", "");
        let source = RegistrySource::reg_file(&path, Scope::default_keys(), false);
        let registry = ReceiverRegistry::new(Some(source), &tmp.path().join("archive"));

        let inside = RegistryChangeSet {
            ops: vec![set_value(&format!(r"{ALIASES}\sub"), "port")],
        };
        assert!(registry.check(&inside).is_ok());

        let outside = RegistryChangeSet {
            ops: vec![
                set_value(ALIASES, "port"),
                set_value(r"HKEY_LOCAL_MACHINE\Software\Microsoft\Windows\Run", "evil"),
            ],
        };
        let refusal = registry.check(&outside).expect_err("refused");
        assert_eq!(
            refusal.path,
            r"HKEY_LOCAL_MACHINE\Software\Microsoft\Windows\Run"
        );
        let parent = RegistryChangeSet {
            ops: vec![RegistryOp::DeleteKey {
                path: r"HKEY_LOCAL_MACHINE\Software\Hornbill".into(),
            }],
        };
        assert!(registry.check(&parent).is_err());
        let malformed = RegistryChangeSet {
            ops: vec![RegistryOp::CreateKey {
                path: r"C:\Windows".into(),
            }],
        };
        assert!(registry.check(&malformed).is_err());

        let off = ReceiverRegistry::new(None, tmp.path());
        assert!(off.check(&inside).is_err());
        assert_eq!(
            off.snapshot_message(),
            Message::RegistrySnapshot(RegistrySnapshot::default())
        );
    }

    #[test]
    fn receiver_applies_with_an_archive_and_twice_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = reg_file(tmp.path(), "slave.reg", "");
        let archive = tmp.path().join("archive");
        let source = RegistrySource::reg_file(&path, Scope::default_keys(), false);
        let registry = ReceiverRegistry::new(Some(source.clone()), &archive);
        let changes = registry
            .check(&RegistryChangeSet {
                ops: vec![
                    RegistryOp::CreateKey {
                        path: ALIASES.into(),
                    },
                    set_value(ALIASES, "port"),
                ],
            })
            .expect("in scope");
        assert_eq!(registry.apply(&changes).ok(), Some(2));
        assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 1);
        assert_eq!(registry.apply(&changes).ok(), Some(0));
        assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 1);
        let Message::RegistrySnapshot(snapshot) = registry.snapshot_message() else {
            panic!("not a snapshot")
        };
        assert_eq!(snapshot.keys.len(), 1);
        assert_eq!(snapshot.keys[0].values.len(), 1);
    }

    #[tokio::test]
    async fn a_key_missing_on_the_master_is_reported_and_neither_deleted_nor_created_on_the_slave()
    {
        let tmp = tempfile::tempdir().unwrap();
        let path = reg_file(
            tmp.path(),
            "master.reg",
            &format!("[{ALIASES}]\n\"sw\"=\"x\"\n"),
        );
        let source = RegistrySource::reg_file(&path, Scope::default_keys(), false);
        let mut registry = Some(start_sender(source.clone(), true));
        let local = next_local(&mut registry).await.expect("one read");
        let sender = registry.as_mut().unwrap();
        sender.on_local(local);
        assert!(sender
            .missing_reported
            .as_deref()
            .is_some_and(|notice| notice.contains(r"Supportworks Server\HttpAliases")
                && notice.contains("kept")));
        // The Slave holds both keys; the Master only the first.
        let roots = Scope::default_keys().roots().to_vec();
        let slave_text = format!(
            "[{}]\n\"sw\"=\"old\"\n\n[{}]\n\"portal\"=\"keep me\"\n",
            roots[0], roots[1]
        );
        let slave = reg_file(tmp.path(), "slave.reg", &slave_text);
        let slave_source = RegistrySource::reg_file(&slave, Scope::default_keys(), false);
        let wire = to_wire_snapshot(&slave_source.snapshot().unwrap());
        let (changes, ops) = sender.on_remote(&wire).unwrap().expect("the changed value");
        assert_eq!(ops, 1, "{changes:?}");
        assert!(
            changes
                .ops
                .iter()
                .all(|op| !matches!(op, RegistryOp::DeleteKey { .. })),
            "the key missing on the Master would be deleted on the Slave: {changes:?}"
        );
        assert_eq!(
            sender.problem(),
            None,
            "a missing key is news, not an error"
        );
    }

    #[tokio::test]
    async fn sender_sends_the_difference_to_the_receivers_snapshot_once() {
        let tmp = tempfile::tempdir().unwrap();
        let path = reg_file(
            tmp.path(),
            "master.reg",
            &format!("[{ALIASES}]\n\"sw\"=\"x\"\n"),
        );
        let source = RegistrySource::reg_file(&path, Scope::default_keys(), false);
        let mut registry = Some(start_sender(source.clone(), true));
        let local = next_local(&mut registry).await.expect("one read");
        let sender = registry.as_mut().unwrap();
        assert!(
            sender.on_local(local).is_none(),
            "nothing before the receiver spoke"
        );
        assert!(!sender.settled());

        let empty_slave = to_wire_snapshot(&Snapshot::new(
            Scope::default_keys()
                .roots()
                .iter()
                .map(|r| (r.clone(), None))
                .collect(),
        ));
        let (changes, ops) = sender
            .on_remote(&empty_slave)
            .unwrap()
            .expect("the key and its value");
        assert_eq!(ops, 2);
        assert_eq!(changes.ops.len(), 2);
        sender.sent(3, ops);
        assert!(!sender.settled());
        sender.on_ack(2);
        assert!(!sender.settled());
        sender.on_ack(3);
        assert!(sender.settled());
        assert_eq!(sender.ops_acked(), 2);
        assert_eq!(sender.problem(), None);

        // The same local state again: nothing more to send.
        let again = source.snapshot().map_err(|e| e.to_string());
        assert!(sender.on_local(again).is_none());
        // A resync asks once and holds changes until the answer.
        assert_eq!(sender.resync(), Some(Message::RegistryRequest));
        assert_eq!(sender.resync(), None);
        assert!(!sender.settled());
    }

    #[tokio::test]
    async fn sender_reports_a_receiver_without_registry_replication() {
        let tmp = tempfile::tempdir().unwrap();
        let path = reg_file(tmp.path(), "master.reg", "");
        let source = RegistrySource::reg_file(&path, Scope::default_keys(), false);
        let mut sender = start_sender(source, true);
        assert!(sender
            .on_remote(&RegistrySnapshot::default())
            .unwrap()
            .is_none());
        assert!(sender.settled());
        assert!(sender.problem().unwrap().contains("no registry keys"));
    }
}
