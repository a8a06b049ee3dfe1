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
    let root_owned = root.to_path_buf();
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
        .watch(root, RecursiveMode::Recursive)
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
}
