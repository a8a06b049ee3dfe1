//! File-system events as hints: any change under the root (outside excluded paths) asks the
//! sender to rescan; a watcher error or overflow asks for a rescan too, because events were lost.

use std::path::Path;

use notify::{Event, RecursiveMode, Watcher};
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
            Ok(event) => {
                let relevant = event.paths.iter().any(|p| {
                    swrepl_tree::to_wire_path(&root_owned, p)
                        .is_none_or(|rel| rel.is_empty() || !excludes.is_excluded(&rel))
                });
                relevant.then_some(WatchSignal::Changed)
            }
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
