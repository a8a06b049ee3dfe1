//! The change detection as it was before trees became sorted vectors: whole `BTreeMap`s keyed
//! by path. Kept for the tests only, as the reference the current algorithm must agree with.

use std::collections::{BTreeMap, HashMap};

use super::{equivalent, same_kind, TreeKey, Unseen};
use crate::fsmeta::is_same_or_below;
use crate::{Change, EntryKind, FileId, ScannedEntry};

pub(crate) type TreeMap = BTreeMap<TreeKey, ScannedEntry>;

/// The receiver's state as the changes emitted so far leave it.
struct Virtual {
    map: TreeMap,
    by_id: HashMap<FileId, Vec<String>>,
}

impl Virtual {
    fn new(prev: &TreeMap) -> Virtual {
        let mut by_id: HashMap<FileId, Vec<String>> = HashMap::new();
        for (key, scanned) in prev {
            if let Some(id) = scanned.file_id {
                by_id.entry(id).or_default().push(key.0.clone());
            }
        }
        Virtual {
            map: prev.clone(),
            by_id,
        }
    }

    fn get(&self, path: &str) -> Option<&ScannedEntry> {
        self.map.get(&TreeKey(path.to_string()))
    }

    fn forget_id(&mut self, path: &str, id: Option<FileId>) {
        if let Some(paths) = id.and_then(|id| self.by_id.get_mut(&id)) {
            paths.retain(|p| p != path);
        }
    }

    fn insert(&mut self, scanned: ScannedEntry) {
        let key = TreeKey(scanned.entry.path.clone());
        if let Some(old) = self.map.get(&key) {
            let old_id = old.file_id;
            self.forget_id(&key.0, old_id);
        }
        if let Some(id) = scanned.file_id {
            self.by_id.entry(id).or_default().push(key.0.clone());
        }
        self.map.insert(key, scanned);
    }

    /// `path` itself (when `include_self`) and everything below it, in order.
    fn subtree(&self, path: &str, include_self: bool) -> Vec<TreeKey> {
        self.map
            .range(TreeKey(path.to_string())..)
            .map(|(k, _)| k)
            .take_while(|k| is_same_or_below(&k.0, path))
            .filter(|k| include_self || k.0 != path)
            .cloned()
            .collect()
    }

    fn remove_below(&mut self, path: &str) {
        for key in self.subtree(path, false) {
            if let Some(old) = self.map.remove(&key) {
                self.forget_id(&key.0, old.file_id);
            }
        }
    }

    /// Moves `from` and its subtree to `to`, as a receiver's rename does.
    fn move_tree(&mut self, from: &str, to: &str) {
        for key in self.subtree(from, true) {
            let Some(mut moved) = self.map.remove(&key) else {
                continue;
            };
            self.forget_id(&key.0, moved.file_id);
            moved.entry.path = format!("{to}{}", &key.0[from.len()..]);
            self.insert(moved);
        }
    }
}

/// Computes the changes from `prev` to `new`. Entries covered by `unseen` that `new` lacks are
/// copied into `new` from the (renamed) previous state, so the scan keeps what it knew about
/// them and emits no change for them.
pub(crate) fn detect(prev: &TreeMap, new: &mut TreeMap, unseen: &Unseen) -> Vec<Change> {
    if unchanged(prev, new) {
        // The common rescan: the full algorithm below would copy the whole previous state to
        // find nothing to emit.
        return Vec::new();
    }
    let mut virt = Virtual::new(prev);
    let mut changes = Vec::new();

    find_renames(&mut virt, new, unseen, &mut changes);

    for (key, kept) in &virt.map {
        if !new.contains_key(key) && unseen.covers(&key.0) {
            new.insert(key.clone(), kept.clone());
        }
    }

    for (key, scanned) in new.iter() {
        let replaces_dir = match virt.map.get(key) {
            Some(old) if equivalent(&old.entry, &scanned.entry) => continue,
            Some(old) => old.entry.kind == EntryKind::Dir && scanned.entry.kind != EntryKind::Dir,
            None => false,
        };
        if replaces_dir {
            // Replacing a directory by a file or link removes the directory's content with it.
            virt.remove_below(&key.0);
        }
        // Not inserted into `virt`: only the deletes below look at it now, and they skip every
        // path `new` holds (a copy of each new entry would be the whole tree on an initial sync).
        changes.push(Change::Upsert(scanned.entry.clone()));
    }

    let mut last_deleted: Option<&str> = None;
    for key in virt.map.keys() {
        if new.contains_key(key) || last_deleted.is_some_and(|d| is_same_or_below(&key.0, d)) {
            continue;
        }
        changes.push(Change::Delete(key.0.clone()));
        last_deleted = Some(&key.0);
    }
    changes
}

/// True when `new` holds exactly `prev`'s paths, each [`equivalent`] to what it was: then there
/// is no rename (every path is still there), no upsert and no delete, whatever is unseen.
fn unchanged(prev: &TreeMap, new: &TreeMap) -> bool {
    prev.len() == new.len()
        && prev
            .iter()
            .zip(new)
            .all(|((old_key, old), (new_key, now))| {
                old_key.0 == new_key.0 && equivalent(&old.entry, &now.entry)
            })
}

fn find_renames(virt: &mut Virtual, new: &TreeMap, unseen: &Unseen, changes: &mut Vec<Change>) {
    loop {
        let mut found_any = false;
        for (key, scanned) in new {
            if virt.map.contains_key(key) {
                continue;
            }
            let Some(from) = rename_source(virt, new, unseen, scanned) else {
                continue;
            };
            add_missing_parents(virt, new, &key.0, changes);
            changes.push(Change::Rename {
                from: from.clone(),
                entry: scanned.entry.clone(),
            });
            virt.move_tree(&from, &key.0);
            virt.insert(scanned.clone());
            found_any = true;
        }
        if !found_any {
            return;
        }
    }
}

/// The virtual path `scanned` was renamed from: an entry with the same file id and kind (and for
/// files the same content) whose path no longer holds that file.
fn rename_source(
    virt: &Virtual,
    new: &TreeMap,
    unseen: &Unseen,
    scanned: &ScannedEntry,
) -> Option<String> {
    let id = scanned.file_id?;
    let to = &scanned.entry.path;
    let candidates = virt.by_id.get(&id)?;
    candidates
        .iter()
        .find(|from| {
            let Some(old) = virt.get(from) else {
                return false;
            };
            let gone = match new.get(&TreeKey((*from).clone())) {
                None => !unseen.covers(from),
                Some(now) => now.file_id != Some(id),
            };
            gone && same_kind(&old.entry.kind, &scanned.entry.kind)
                && (old.entry.kind != EntryKind::File
                    || old.entry.file_hash == scanned.entry.file_hash)
                && !is_same_or_below(to, from)
                && !is_same_or_below(from, to)
        })
        .cloned()
}

/// Upserts the directories above `path` that the receiver does not have (as directories) yet.
fn add_missing_parents(virt: &mut Virtual, new: &TreeMap, path: &str, changes: &mut Vec<Change>) {
    let ancestors: Vec<&str> = path
        .match_indices('/')
        .map(|(cut, _)| &path[..cut])
        .collect();
    for ancestor in ancestors {
        let is_dir = virt
            .get(ancestor)
            .is_some_and(|v| v.entry.kind == EntryKind::Dir);
        if is_dir {
            continue;
        }
        if let Some(dir) = new.get(&TreeKey(ancestor.to_string())) {
            virt.remove_below(ancestor);
            changes.push(Change::Upsert(dir.entry.clone()));
            virt.insert(dir.clone());
        }
    }
}
