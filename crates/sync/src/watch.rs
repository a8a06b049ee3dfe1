//! File-system events as hints: any change under the root (outside excluded paths) asks the
//! sender to rescan; a watcher error or overflow asks for a rescan too, because events were lost.

use std::path::Path;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use swrepl_tree::Excludes;
use tokio::sync::mpsc::UnboundedSender;

use crate::sender::WatchSignal;
use crate::SyncError;

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
        let signal = match event {
            Ok(event) if event.need_rescan() => Some(WatchSignal::Rescan),
            Ok(event) => classify(&root_owned, &excludes, &event),
            Err(e) => {
                tracing::warn!("file watcher error: {e}");
                Some(WatchSignal::Rescan)
            }
        };
        if let Some(signal) = signal {
            let _ = tx.send(signal);
        }
    })
    .map_err(|e| SyncError::Watch(e.to_string()))?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .map_err(|e| SyncError::Watch(format!("cannot watch {}: {e}", root.display())))?;
    Ok(WatchHandle { _watcher: watcher })
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
