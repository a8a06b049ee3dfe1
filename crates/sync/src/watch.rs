//! File-system events as hints: any change under the root (outside excluded paths) asks the
//! sender to rescan; a watcher error or overflow asks for a rescan too, because events were lost.
//! The receiver watches its own root too ([`TreeWatch`]), to know when its tree has not changed
//! since it last described it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use swrepl_tree::Excludes;
use tokio::sync::mpsc::UnboundedSender;

use crate::sender::WatchSignal;
use crate::SyncError;

#[cfg(target_os = "linux")]
mod inotify;

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `root` recursively.
pub fn start(
    root: &Path,
    excludes: Excludes,
    tx: UnboundedSender<WatchSignal>,
) -> Result<WatchHandle, SyncError> {
    let watcher = watch_root(root, move |root, event| {
        let signal = match event {
            Ok(event) if event.need_rescan() => Some(WatchSignal::Rescan),
            Ok(event) => classify(root, &excludes, event),
            Err(e) => {
                tracing::warn!("file watcher error: {e}");
                Some(WatchSignal::Rescan)
            }
        };
        if let Some(signal) = signal {
            let _ = tx.send(signal);
        }
    })?;
    Ok(WatchHandle { _watcher: watcher })
}

/// Watches `root` recursively, handing every event to `handle` with the root as events name it.
fn watch_root(
    root: &Path,
    mut handle: impl FnMut(&Path, &notify::Result<Event>) + Send + 'static,
) -> Result<notify::RecommendedWatcher, SyncError> {
    // notify reports paths under the watched path made absolute against the current directory
    // (not canonicalized): events are matched against exactly that prefix. With a relative root
    // (`--root master`) every event would otherwise fall outside it and be dropped, leaving only
    // the periodic rescan.
    let root = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| SyncError::Watch(format!("cannot resolve {}: {e}", root.display())))?
            .join(root)
    };
    let root_owned = root.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        handle(&root_owned, &event)
    })
    .map_err(|e| SyncError::Watch(e.to_string()))?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .map_err(|e| SyncError::Watch(format!("cannot watch {}: {e}", root.display())))?;
    Ok(watcher)
}

/// Counts changes under a root (outside excluded paths; a lost event or a watcher error counts
/// as one), so that whoever described the tree can tell later whether it may still stand: the
/// receiver's tree summary. Events arrive a little after the changes; [`TreeWatch::catch_up`]
/// waits until every change made before it was called has been counted. Linux only, with
/// inotify directly (see `watch/inotify.rs`: no event for a mere open); see
/// [`TreeWatch::AVAILABLE`].
pub struct TreeWatch {
    /// Keeps the watching going; dropping it stops it.
    _backend: Box<dyn std::any::Any + Send>,
    state: Arc<WatchState>,
    /// Where markers are created: a directory under the root that the excludes leave out.
    marker_dir: PathBuf,
}

#[derive(Default)]
struct WatchState {
    changes: AtomicU64,
    /// The highest marker number seen in an event.
    marker_seen: Mutex<u64>,
    marker_arrived: Condvar,
    markers_made: AtomicU64,
    /// The watcher stopped working: nothing it counts can be trusted any more.
    failed: AtomicBool,
}

/// Name prefix of the marker files [`TreeWatch::catch_up`] creates in its marker directory.
const MARKER_PREFIX: &str = "watch-marker-";

impl TreeWatch {
    /// Whether this system has a backend. Only Linux (inotify) here: notify's Windows backend
    /// drops an overflowing buffer of events without a word, and a lost change would let a
    /// stale summary stand.
    pub const AVAILABLE: bool = cfg!(target_os = "linux");

    /// Starts counting changes under `root`. `marker_dir` must be under `root`, existing, and
    /// excluded by `excludes` (a directory in swrepl's state directory).
    pub fn start(
        root: &Path,
        excludes: Excludes,
        marker_dir: &Path,
    ) -> Result<TreeWatch, SyncError> {
        let state = Arc::new(WatchState::default());
        let backend = start_backend(root, excludes, marker_dir, state.clone())?;
        Ok(TreeWatch {
            _backend: backend,
            state,
            marker_dir: marker_dir.to_path_buf(),
        })
    }

    /// How many changes have been counted so far: equal counts mean no change in between.
    pub fn changes(&self) -> u64 {
        self.state.changes.load(Ordering::Acquire)
    }

    /// Waits (up to `timeout`) until the watcher has counted every change made before this call:
    /// it creates a marker file and waits for its event, which one watcher delivers after the
    /// events of every earlier change. False when the marker's event did not come or the watcher
    /// failed: then [`TreeWatch::changes`] cannot be trusted.
    pub fn catch_up(&self, timeout: Duration) -> bool {
        let number = self.state.markers_made.fetch_add(1, Ordering::AcqRel) + 1;
        let marker = self.marker_dir.join(format!("{MARKER_PREFIX}{number}"));
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::debug!(path = %marker.display(), "cannot create a watch marker: {e}");
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut seen = self
            .state
            .marker_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let arrived = loop {
            if self.state.failed.load(Ordering::Acquire) {
                break false;
            }
            if *seen >= number {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            seen = self
                .state
                .marker_arrived
                .wait_timeout(seen, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(seen);
        let _ = std::fs::remove_file(&marker);
        arrived
    }
}

#[cfg(target_os = "linux")]
fn start_backend(
    root: &Path,
    excludes: Excludes,
    marker_dir: &Path,
    state: Arc<WatchState>,
) -> Result<Box<dyn std::any::Any + Send>, SyncError> {
    Ok(Box::new(inotify::start(root, excludes, marker_dir, state)?))
}

#[cfg(not(target_os = "linux"))]
fn start_backend(
    _root: &Path,
    _excludes: Excludes,
    _marker_dir: &Path,
    _state: Arc<WatchState>,
) -> Result<Box<dyn std::any::Any + Send>, SyncError> {
    Err(SyncError::Watch(
        "no tree watch on this system that reports lost events".into(),
    ))
}

// Fed by the watching backend, which only Linux has.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl WatchState {
    fn count_change(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Records a marker, when `name` is one.
    fn note_marker(&self, name: &str) {
        let Some(number) = name
            .strip_prefix(MARKER_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        let mut seen = self.marker_seen.lock().unwrap_or_else(|p| p.into_inner());
        if number > *seen {
            *seen = number;
            self.marker_arrived.notify_all();
        }
    }

    /// The watcher stopped working: counts a change and makes every catch-up fail.
    fn fail(&self, why: &str) {
        tracing::warn!("the watcher on the receiver's root failed: {why}");
        self.failed.store(true, Ordering::Release);
        self.count_change();
        let _seen = self.marker_seen.lock().unwrap_or_else(|p| p.into_inner());
        self.marker_arrived.notify_all();
    }
}

/// What an event asks for: nothing (only excluded paths), a refresh of the files whose content
/// changed (the fast path: no walk of the tree), or an incremental scan (anything that changes
/// the shape of the tree — creations of directories, removals, renames — where only a walk can
/// recognise renames and whole deleted subtrees).
fn classify(root: &Path, excludes: &Excludes, event: &Event) -> Option<WatchSignal> {
    // Opening, reading or closing a file without writing changes nothing (notify reports opens
    // on Linux): without this, every reader of the tree — Supportworks itself, a backup, this
    // sender serving chunks — would make the sender walk the whole tree.
    if let EventKind::Access(access) = event.kind {
        if access != AccessKind::Close(AccessMode::Write) {
            return None;
        }
    }
    let relevant: Vec<String> = event
        .paths
        .iter()
        .filter_map(|p| swrepl_tree::to_wire_path(root, p))
        .filter(|rel| rel.is_empty() || !excludes.is_excluded(rel))
        .collect();
    if relevant.is_empty() && !event.paths.is_empty() {
        return None;
    }
    let content_only = matches!(
        event.kind,
        EventKind::Create(CreateKind::File)
            | EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Modify(ModifyKind::Metadata(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    let files: Vec<String> = relevant.into_iter().filter(|rel| !rel.is_empty()).collect();
    if content_only && !files.is_empty() {
        Some(WatchSignal::Files(files))
    } else {
        Some(WatchSignal::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{ModifyKind, RemoveKind, RenameMode};

    fn classify_at(kind: EventKind, rel: &str) -> Option<WatchSignal> {
        let root = Path::new("/master");
        let excludes = Excludes::new(&[], true).unwrap();
        let event = Event::new(kind).add_path(root.join(rel));
        classify(root, &excludes, &event)
    }

    #[test]
    fn reads_change_nothing_and_writes_refresh_just_the_file() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert_eq!(classify_at(quiet, "conf/app.xml"), None, "{quiet:?}");
        }
        let file = Some(WatchSignal::Files(vec!["conf/app.xml".into()]));
        for content in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
        ] {
            assert_eq!(classify_at(content, "conf/app.xml"), file, "{content:?}");
        }
        for shape in [
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::Any)),
            EventKind::Create(CreateKind::Folder),
        ] {
            assert_eq!(
                classify_at(shape, "conf/app.xml"),
                Some(WatchSignal::Changed),
                "{shape:?}"
            );
        }
        let excluded = EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any));
        assert_eq!(
            classify_at(excluded, "Core Services/SwSqlServer/data/t.MYD"),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tree_watch_counts_changes_to_the_tree_only_and_catches_up_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = root.join(swrepl_tree::STATE_DIR_NAME);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(root.join("mail")).unwrap();
        std::fs::write(root.join("mail/a.eml"), b"a").unwrap();
        let excludes = Excludes::new(&[], true).unwrap();
        let watch = TreeWatch::start(root, excludes, &state).unwrap();
        let timeout = Duration::from_secs(30);
        assert!(watch.catch_up(timeout));
        let quiet = watch.changes();

        std::fs::read(root.join("mail/a.eml")).unwrap();
        std::fs::write(state.join("index.db"), b"state").unwrap();
        assert!(watch.catch_up(timeout), "the marker's event arrives");
        assert_eq!(
            watch.changes(),
            quiet,
            "reads and swrepl's own state change nothing"
        );
        assert!(
            std::fs::read_dir(&state)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(MARKER_PREFIX)),
            "markers are removed"
        );

        std::fs::write(root.join("mail/b.eml"), b"b").unwrap();
        assert!(watch.catch_up(timeout));
        assert!(
            watch.changes() > quiet,
            "a new file is counted by the time catch_up returns"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tree_watch_follows_new_and_moved_in_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = root.join(swrepl_tree::STATE_DIR_NAME);
        let excluded = root.join("Core Services/SwSqlServer/data");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(excluded.join("db1/tables")).unwrap();
        let excludes = Excludes::new(&[], true).unwrap();
        let watch = TreeWatch::start(root, excludes, &state).unwrap();
        let timeout = Duration::from_secs(30);
        let counted = |what: &str, change: &dyn Fn()| {
            assert!(watch.catch_up(timeout));
            let before = watch.changes();
            change();
            assert!(watch.catch_up(timeout));
            assert!(watch.changes() > before, "{what} is counted");
        };
        let quiet = |what: &str, change: &dyn Fn()| {
            assert!(watch.catch_up(timeout));
            let before = watch.changes();
            change();
            assert!(watch.catch_up(timeout));
            assert_eq!(watch.changes(), before, "{what} is not counted");
        };

        quiet("a write in an excluded folder", &|| {
            std::fs::write(excluded.join("db1/tables/t.MYD"), b"rows").unwrap()
        });
        // Created together: the inner one may exist before the outer one is watched.
        counted("new folders", &|| {
            std::fs::create_dir_all(root.join("mail/2026/11")).unwrap()
        });
        counted("a file in the inner new folder", &|| {
            std::fs::write(root.join("mail/2026/11/a.eml"), b"a").unwrap()
        });
        counted("a folder moved out of the excludes", &|| {
            std::fs::rename(excluded.join("db1"), root.join("mail/db1")).unwrap()
        });
        counted("a write in a folder moved in", &|| {
            std::fs::write(root.join("mail/db1/tables/t.MYD"), b"more rows").unwrap()
        });
        quiet("opening and reading a file", &|| {
            std::fs::read(root.join("mail/2026/11/a.eml")).unwrap();
        });
    }

    /// `path` relative to the current directory (which tests do not change: they share it).
    #[cfg(unix)]
    fn relative_to_cwd(path: &Path) -> std::path::PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let up = cwd.components().count() - 1; // all but the root
        let mut relative: std::path::PathBuf = std::iter::repeat_n("..", up).collect();
        relative.push(path.strip_prefix("/").unwrap());
        relative
    }

    #[cfg(unix)]
    #[test]
    fn a_relative_root_is_watched_like_an_absolute_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mime/00")).unwrap();
        let root = relative_to_cwd(dir.path());
        assert!(root.is_relative());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let excludes = Excludes::new(&[], true).unwrap();
        let _watching = start(&root, excludes, tx).unwrap();
        std::fs::write(dir.path().join("mime/00/new.eml"), b"new").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let wanted = WatchSignal::Files(vec!["mime/00/new.eml".into()]);
        loop {
            match rx.try_recv() {
                Ok(signal) if signal == wanted => break,
                Ok(_) => {}
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("no signal for the new file within 30 s: {e}"),
            }
        }
    }
}
