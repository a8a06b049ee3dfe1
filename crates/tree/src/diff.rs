//! Change detection: the list of changes that turns the previous state of a tree into its
//! current state, with renames recognised by file identity.
//!
//! The changes are meant to be applied in order by a receiver holding the previous state. The
//! algorithm keeps a "virtual" copy of that receiver's state and updates it with every change it
//! emits, so each change is stated against the state the receiver has at that point:
//!
//! 1. Renames, found repeatedly until none is left (a rotation `log.1 → log.2, log → log.1`
//!    frees `log.1` only after the first rename). A rename into a directory the receiver does not
//!    have yet is preceded by an upsert of that directory.
//! 2. Upserts of everything that differs from the virtual state, parents first.
//! 3. Deletes of what the virtual state still has and the tree has not: only the top-most path of
//!    a deleted subtree.
//!
//! A wrongly recognised rename (say a reused inode number) costs efficiency, never correctness:
//! the rename carries the full new entry and later upserts and deletes fix whatever moved along.
//!
//! Trees are sorted vectors of entries ([`compare_paths`] order, each path once), not maps: a
//! tree of a million entries is held once, with no second copy of every path as a key.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::fsmeta::is_same_or_below;
use crate::{compare_paths, Change, ChangeDetail, EntryKind, FileEntry, FileId, ScannedEntry};

/// A wire path ordered with [`compare_paths`], so a map of them lists parents before children
/// and a subtree is one contiguous range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TreeKey(pub String);

impl Ord for TreeKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_paths(&self.0, &other.0)
    }
}

impl PartialOrd for TreeKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders entries by path ([`compare_paths`]).
pub(crate) fn by_path(a: &ScannedEntry, b: &ScannedEntry) -> Ordering {
    compare_paths(&a.entry.path, &b.entry.path)
}

/// The entry at `path` in `tree` (in path order).
fn find<'a>(tree: &'a [ScannedEntry], path: &str) -> Option<&'a ScannedEntry> {
    tree.binary_search_by(|e| compare_paths(&e.entry.path, path))
        .ok()
        .map(|i| &tree[i])
}

/// Paths the scan could not look at this time: what was known about them is kept.
#[derive(Debug, Default)]
pub(crate) struct Unseen {
    /// Single entries (a file that could not be read or changed while read).
    pub paths: HashSet<String>,
    /// Whole subtrees (a directory that could not be listed).
    pub trees: HashSet<String>,
}

impl Unseen {
    pub fn covers(&self, path: &str) -> bool {
        if self.paths.contains(path) {
            return true;
        }
        if self.trees.is_empty() {
            return false;
        }
        let mut prefix = path;
        loop {
            if self.trees.contains(prefix) {
                return true;
            }
            match prefix.rfind('/') {
                Some(cut) => prefix = &prefix[..cut],
                None => return false,
            }
        }
    }
}

/// True when `old` and `new` describe the same thing as far as a receiver is concerned. Times of
/// directories and links are ignored: a directory's time moves whenever its content does, and a
/// receiver cannot keep it anyway while it writes into the directory.
pub(crate) fn equivalent(old: &FileEntry, new: &FileEntry) -> bool {
    old.kind == new.kind
        && old.attributes == new.attributes
        && match new.kind {
            EntryKind::File => {
                old.size == new.size
                    && old.file_hash == new.file_hash
                    && old.mtime_ns == new.mtime_ns
            }
            EntryKind::Dir | EntryKind::Symlink { .. } => true,
        }
}

fn same_kind(a: &EntryKind, b: &EntryKind) -> bool {
    matches!(
        (a, b),
        (EntryKind::File, EntryKind::File)
            | (EntryKind::Dir, EntryKind::Dir)
            | (EntryKind::Symlink { .. }, EntryKind::Symlink { .. })
    )
}

/// The receiver's state as the changes emitted so far leave it. A map, since renames move whole
/// subtrees in it; it only ever holds the region a change can touch (see [`settle`]).
struct Virtual {
    map: BTreeMap<TreeKey, ScannedEntry>,
    by_id: HashMap<FileId, Vec<String>>,
}

impl Virtual {
    fn new(prev: &[ScannedEntry]) -> Virtual {
        let mut by_id: HashMap<FileId, Vec<String>> = HashMap::new();
        for scanned in prev {
            if let Some(id) = scanned.file_id {
                by_id
                    .entry(id)
                    .or_default()
                    .push(scanned.entry.path.clone());
            }
        }
        Virtual {
            map: prev
                .iter()
                .map(|e| (TreeKey(e.entry.path.clone()), e.clone()))
                .collect(),
            by_id,
        }
    }

    fn get(&self, path: &str) -> Option<&ScannedEntry> {
        if self.map.is_empty() {
            // An initial scan: no key to build for each of its entries.
            return None;
        }
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

    /// The entries of the virtual state that `tree` (in path order) has no entry for, in path
    /// order: one walk of both.
    fn not_in<'a>(&'a self, tree: &'a [ScannedEntry]) -> impl Iterator<Item = &'a ScannedEntry> {
        let mut rest = tree;
        self.map.iter().filter_map(move |(key, kept)| {
            let ahead = rest.partition_point(|e| compare_paths(&e.entry.path, &key.0).is_lt());
            rest = &rest[ahead..];
            match rest.first() {
                Some(e) if e.entry.path == key.0 => None,
                _ => Some(kept),
            }
        })
    }
}

/// Computes the changes from `prev` to `new`, both in path order. Entries covered by `unseen`
/// that `new` lacks are copied into `new` from the (renamed) previous state, so the scan keeps
/// what it knew about them and emits no change for them. With [`ChangeDetail::Renames`] only
/// the renames are listed (and `new` is completed the same way).
pub(crate) fn detect(
    prev: &[ScannedEntry],
    new: &mut Vec<ScannedEntry>,
    unseen: &Unseen,
    detail: ChangeDetail,
) -> Vec<Change> {
    if unchanged(prev, new) {
        // The common rescan: the full algorithm below would copy the whole previous state to
        // find nothing to emit.
        return Vec::new();
    }
    let mut virt = Virtual::new(prev);
    let mut changes = Vec::new();

    find_renames(&mut virt, new, unseen, &mut changes);

    let kept: Vec<ScannedEntry> = virt
        .not_in(new)
        .filter(|kept| unseen.covers(&kept.entry.path))
        .cloned()
        .collect();
    merge_sorted(new, kept);
    if detail == ChangeDetail::Renames {
        changes.retain(|c| matches!(c, Change::Rename { .. }));
        return changes;
    }

    for scanned in new.iter() {
        let replaces_dir = match virt.get(&scanned.entry.path) {
            Some(old) if equivalent(&old.entry, &scanned.entry) => continue,
            Some(old) => old.entry.kind == EntryKind::Dir && scanned.entry.kind != EntryKind::Dir,
            None => false,
        };
        if replaces_dir {
            // Replacing a directory by a file or link removes the directory's content with it.
            virt.remove_below(&scanned.entry.path);
        }
        // Not inserted into `virt`: only the deletes below look at it now, and they skip every
        // path `new` holds (a copy of each new entry would be the whole tree on an initial sync).
        changes.push(Change::Upsert(scanned.entry.clone()));
    }

    let mut last_deleted: Option<&str> = None;
    for gone in virt.not_in(new) {
        let path = gone.entry.path.as_str();
        if last_deleted.is_some_and(|d| is_same_or_below(path, d)) {
            continue;
        }
        changes.push(Change::Delete(path.to_string()));
        last_deleted = Some(path);
    }
    changes
}

/// True when `new` holds exactly `prev`'s paths, each [`equivalent`] to what it was: then there
/// is no rename (every path is still there), no upsert and no delete, whatever is unseen.
fn unchanged(prev: &[ScannedEntry], new: &[ScannedEntry]) -> bool {
    prev.len() == new.len()
        && prev.iter().zip(new).all(|(old, now)| {
            old.entry.path == now.entry.path && equivalent(&old.entry, &now.entry)
        })
}

fn find_renames(
    virt: &mut Virtual,
    new: &[ScannedEntry],
    unseen: &Unseen,
    changes: &mut Vec<Change>,
) {
    loop {
        let mut found_any = false;
        for scanned in new {
            if virt.get(&scanned.entry.path).is_some() {
                continue;
            }
            let Some(from) = rename_source(virt, new, unseen, scanned) else {
                continue;
            };
            let to = &scanned.entry.path;
            add_missing_parents(virt, new, to, changes);
            changes.push(Change::Rename {
                from: from.clone(),
                entry: scanned.entry.clone(),
            });
            virt.move_tree(&from, to);
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
    new: &[ScannedEntry],
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
            let gone = match find(new, from) {
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
fn add_missing_parents(
    virt: &mut Virtual,
    new: &[ScannedEntry],
    path: &str,
    changes: &mut Vec<Change>,
) {
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
        if let Some(dir) = find(new, ancestor) {
            virt.remove_below(ancestor);
            changes.push(Change::Upsert(dir.entry.clone()));
            virt.insert(dir.clone());
        }
    }
}

/// How the walk found one recorded entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Not at its path (deleted, renamed, or not looked at this time).
    Absent,
    /// Exactly as recorded.
    Same,
    /// At its path, but not as recorded: an edit (see [`settle`]) says how it is now.
    Edited,
}

/// The outcome of [`settle`]. Every list is in path order.
#[derive(Debug)]
pub(crate) struct Settled {
    pub changes: Vec<Change>,
    /// The recorded entries the index must be brought from, to `after`: only those that may
    /// differ, so that writing them back costs nothing when little changed.
    pub before: Vec<ScannedEntry>,
    /// The current entries that may differ from what is recorded.
    pub after: Vec<ScannedEntry>,
    /// The current entries that are exactly as recorded and not in `after`.
    kept: Vec<ScannedEntry>,
}

impl Settled {
    /// The whole current tree, in path order: `after` merged into `kept` in place.
    pub fn into_entries(self) -> Vec<ScannedEntry> {
        drop(self.before);
        let mut entries = self.kept;
        merge_sorted(&mut entries, self.after);
        entries
    }
}

/// Computes the changes from the recorded tree `prev` (in [`compare_paths`] order) to the walked
/// one, given as how each recorded entry was `found` and the walked entries that are not exactly
/// as recorded at their path (`edits`, in path order, each path once): the same changes as
/// [`detect`] on both whole trees, with the same unseen entries kept.
///
/// Only the region a change can touch is handed to [`detect`]: the subtree of every path that
/// is absent or not [`equivalent`] (with the same file id) and the directories above them.
/// Outside it every entry is in both trees alike, so no rename, upsert or delete can involve it,
/// and it is neither copied nor compared again: on a rescan that finds little or nothing
/// changed, no second copy of the tree is made. The edits become the result in place: on an
/// initial scan (every entry an edit) no entry is copied either.
pub(crate) fn settle(
    mut prev: Vec<ScannedEntry>,
    found: &[Found],
    mut edits: Vec<ScannedEntry>,
    unseen: &Unseen,
    detail: ChangeDetail,
) -> Settled {
    debug_assert_eq!(prev.len(), found.len());
    debug_assert!(edits.is_sorted_by(|a, b| by_path(a, b).is_lt()));
    let clean = clean_edits(&prev, &edits);
    let any_dirty = found.contains(&Found::Absent) || clean.contains(&false);
    let (outside, prev_in_region) = if prev.is_empty() {
        // A first scan: every edit is new, hence in the region, and nothing is recorded.
        (vec![false; edits.len()], Vec::new())
    } else {
        region_flags(&prev, found, &edits, &clean)
    };

    // The region on both sides.
    let mut before = Vec::new();
    let mut same_in_region = Vec::new();
    for ((scanned, f), in_region) in prev.iter().zip(found).zip(&prev_in_region) {
        if *in_region {
            before.push(scanned.clone());
            if *f == Found::Same {
                same_in_region.push(scanned.clone());
            }
        }
    }
    let clean_outside = take_marked(&mut edits, &outside);
    let mut after = edits;
    merge_sorted(&mut after, same_in_region);
    let changes = if any_dirty {
        detect(&before, &mut after, unseen, detail)
    } else {
        Vec::new()
    };

    // Outside the region, the entries that differ but are equivalent: the index records them.
    let recorded_outside: Vec<ScannedEntry> = prev
        .iter()
        .zip(found)
        .zip(&prev_in_region)
        .filter(|((_, f), r)| **f == Found::Edited && !**r)
        .map(|((scanned, _), _)| scanned.clone())
        .collect();
    merge_sorted(&mut before, recorded_outside);
    merge_sorted(&mut after, clean_outside);

    let must_go = |i: usize| found[i] != Found::Same || prev_in_region[i];
    if (0..prev.len()).any(must_go) {
        let mut position = 0;
        prev.retain(|_| {
            position += 1;
            !must_go(position - 1)
        });
    }
    Settled {
        changes,
        before,
        after,
        kept: prev,
    }
}

/// Which of `edits` are clean and outside the region (written back with no change for the
/// peer: a directory whose time moved), and which of `prev` are in the region. Every other edit
/// is in the region: a dirty one covers itself.
fn region_flags(
    prev: &[ScannedEntry],
    found: &[Found],
    edits: &[ScannedEntry],
    clean: &[bool],
) -> (Vec<bool>, Vec<bool>) {
    let mut dirty: Vec<&str> = prev
        .iter()
        .zip(found)
        .filter(|(_, f)| **f == Found::Absent)
        .map(|(e, _)| e.entry.path.as_str())
        .chain(
            edits
                .iter()
                .zip(clean)
                .filter(|(_, clean)| !**clean)
                .map(|(e, _)| e.entry.path.as_str()),
        )
        .collect();
    dirty.sort_unstable_by(|a, b| compare_paths(a, b));
    let region = Region::new(&dirty);
    let outside = edits
        .iter()
        .zip(clean)
        .map(|(e, clean)| *clean && !region.covers(&e.entry.path))
        .collect();
    (outside, region.mark(prev))
}

/// For each of `edits` (in path order), whether it is [`equivalent`] to the recorded entry at
/// its path, with the same file id: one walk of both lists.
fn clean_edits(prev: &[ScannedEntry], edits: &[ScannedEntry]) -> Vec<bool> {
    let mut rest = prev;
    edits
        .iter()
        .map(|edit| {
            let ahead = rest.partition_point(|e| by_path(e, edit).is_lt());
            rest = &rest[ahead..];
            rest.first().is_some_and(|known| {
                known.entry.path == edit.entry.path
                    && equivalent(&known.entry, &edit.entry)
                    && known.file_id == edit.file_id
            })
        })
        .collect()
}

/// Moves the entries of `entries` that `marked` flags (one flag per entry) into a new list,
/// both keeping their order, without a second copy of the unmarked ones.
fn take_marked(entries: &mut Vec<ScannedEntry>, marked: &[bool]) -> Vec<ScannedEntry> {
    debug_assert_eq!(entries.len(), marked.len());
    let mut taken = Vec::new();
    if !marked.contains(&true) {
        return taken;
    }
    let mut flags = marked.iter();
    entries.retain_mut(|entry| {
        let take = flags.next().copied().unwrap_or(false);
        if take {
            taken.push(std::mem::replace(entry, placeholder()));
        }
        !take
    });
    taken
}

/// The paths a change can touch: the subtrees of the changed paths and the directories above
/// them. Looked up by binary search in the sorted changed paths: no set of them is built (on an
/// initial scan every path is changed).
struct Region<'a> {
    /// Changed paths, in path order.
    changed: &'a [&'a str],
}

impl<'a> Region<'a> {
    fn new(changed: &'a [&'a str]) -> Region<'a> {
        debug_assert!(changed.is_sorted_by(|a, b| compare_paths(a, b).is_le()));
        Region { changed }
    }

    /// True when `path` is in the region: a changed path, below one, or above one.
    fn covers(&self, path: &str) -> bool {
        if self.changed.is_empty() {
            return false;
        }
        // In path order a subtree follows its top: the first changed path not before `path`
        // is `path` itself or below it exactly when `path` is changed or above a changed path.
        let at = self
            .changed
            .partition_point(|c| compare_paths(c, path).is_lt());
        if self
            .changed
            .get(at)
            .is_some_and(|c| is_same_or_below(c, path))
        {
            return true;
        }
        path.match_indices('/')
            .any(|(cut, _)| self.is_changed(&path[..cut]))
    }

    fn is_changed(&self, path: &str) -> bool {
        self.changed
            .binary_search_by(|c| compare_paths(c, path))
            .is_ok()
    }

    /// Which of `sorted` (in path order) are in the region: a search per changed subtree and
    /// per ancestor, not a look at every entry.
    fn mark(&self, sorted: &[ScannedEntry]) -> Vec<bool> {
        let mut marked = vec![false; sorted.len()];
        if sorted.is_empty() {
            return marked;
        }
        let position =
            |path: &str| sorted.partition_point(|e| compare_paths(&e.entry.path, path).is_lt());
        let mut covered_by: Option<&str> = None;
        let mut ancestors = HashSet::new();
        for &path in self.changed {
            for (cut, _) in path.match_indices('/') {
                ancestors.insert(&path[..cut]);
            }
            // A subtree inside the one marked last is marked already.
            if covered_by.is_some_and(|top| is_same_or_below(path, top)) {
                continue;
            }
            covered_by = Some(path);
            let start = position(path);
            for (i, e) in sorted.iter().enumerate().skip(start) {
                if !is_same_or_below(&e.entry.path, path) {
                    break;
                }
                marked[i] = true;
            }
        }
        for ancestor in ancestors {
            let i = position(ancestor);
            if sorted.get(i).is_some_and(|e| e.entry.path == ancestor) {
                marked[i] = true;
            }
        }
        marked
    }
}

/// Merges `extra` into `base`, both in path order with no path in both, in place: the entries
/// of `base` after the first insertion point move once, and no second copy of `base` is made.
pub(crate) fn merge_sorted(base: &mut Vec<ScannedEntry>, mut extra: Vec<ScannedEntry>) {
    if extra.is_empty() {
        return;
    }
    if base.is_empty() {
        *base = extra;
        return;
    }
    let mut unplaced = base.len();
    // Exactly: grown by doubling, a large tree would keep up to its own size in spare room.
    base.reserve_exact(extra.len());
    base.resize_with(base.len() + extra.len(), placeholder);
    let mut free = base.len();
    // Fill from the end: the largest of what is left goes to the last free slot.
    while let Some(next) = extra.pop() {
        while unplaced > 0
            && compare_paths(&base[unplaced - 1].entry.path, &next.entry.path).is_gt()
        {
            unplaced -= 1;
            free -= 1;
            base.swap(unplaced, free);
        }
        free -= 1;
        base[free] = next;
    }
}

/// An entry that owns no memory, for slots about to be overwritten.
fn placeholder() -> ScannedEntry {
    ScannedEntry {
        entry: FileEntry {
            path: String::new(),
            kind: EntryKind::Dir,
            size: 0,
            mtime_ns: 0,
            attributes: crate::Attributes::default(),
            chunks: Vec::new(),
            file_hash: [0; 32],
        },
        file_id: None,
    }
}

#[cfg(test)]
#[path = "diff_reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::reference::TreeMap;
    use super::*;
    use crate::{hash_bytes, Attributes};

    fn entry(path: &str, kind: EntryKind, id: u128, content: &str) -> ScannedEntry {
        let is_file = kind == EntryKind::File;
        ScannedEntry {
            entry: FileEntry {
                path: path.to_string(),
                kind,
                size: if is_file { content.len() as u64 } else { 0 },
                mtime_ns: 7,
                attributes: Attributes::default(),
                chunks: vec![],
                file_hash: hash_bytes(content.as_bytes()),
            },
            file_id: FileId::from_u128(id),
        }
    }

    fn file(path: &str, id: u128, content: &str) -> ScannedEntry {
        entry(path, EntryKind::File, id, content)
    }

    fn dir(path: &str, id: u128) -> ScannedEntry {
        entry(path, EntryKind::Dir, id, "")
    }

    fn map(entries: Vec<ScannedEntry>) -> TreeMap {
        entries
            .into_iter()
            .map(|e| (TreeKey(e.entry.path.clone()), e))
            .collect()
    }

    /// A tree in path order, each path once (the last entry given for a path wins).
    fn tree(entries: Vec<ScannedEntry>) -> Vec<ScannedEntry> {
        map(entries).into_values().collect()
    }

    /// `tree` with `scanned` at its path, replacing what was there.
    fn with(tree: &[ScannedEntry], scanned: ScannedEntry) -> Vec<ScannedEntry> {
        let mut all = tree.to_vec();
        all.push(scanned);
        self::tree(all)
    }

    fn describe(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(e) => format!("upsert {}", e.path),
                Change::Delete(p) => format!("delete {p}"),
                Change::Rename { from, entry } => format!("rename {from} -> {}", entry.path),
            })
            .collect()
    }

    /// [`detect`] listing every change, checked against the reference (the algorithm over
    /// whole maps) and against [`ChangeDetail::Renames`] (the same renames, the same tree).
    fn changes(prev: &[ScannedEntry], new: &mut Vec<ScannedEntry>, unseen: &Unseen) -> Vec<Change> {
        let mut renames_only = new.clone();
        let mut whole = map(new.clone());
        let expected = reference::detect(&map(prev.to_vec()), &mut whole, unseen);
        let changes = detect(prev, new, unseen, ChangeDetail::All);
        assert_eq!(changes, expected, "the reference");
        assert_eq!(*new, whole.into_values().collect::<Vec<_>>());
        let renames = detect(prev, &mut renames_only, unseen, ChangeDetail::Renames);
        let wanted: Vec<Change> = changes
            .iter()
            .filter(|c| matches!(c, Change::Rename { .. }))
            .cloned()
            .collect();
        assert_eq!(renames, wanted, "renames only");
        assert_eq!(renames_only, *new);
        changes
    }

    #[test]
    fn unchanged_tree_gives_no_change_and_any_difference_is_found() {
        let prev = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("x", 3, "x")]);
        let mut same = prev.clone();
        assert!(changes(&prev, &mut same, &Unseen::default()).is_empty());
        assert_eq!(same, prev);

        let mut edited = with(&prev, file("d/f", 2, "g"));
        let found = changes(&prev, &mut edited, &Unseen::default());
        assert_eq!(describe(&found), ["upsert d/f"]);

        let mut moved = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("y", 3, "x")]);
        let found = changes(&prev, &mut moved, &Unseen::default());
        assert_eq!(describe(&found), ["rename x -> y"]);
    }

    #[test]
    fn log_rotation_is_a_chain_of_renames() {
        let prev = tree(vec![file("log", 1, "today"), file("log.1", 2, "yesterday")]);
        let mut new = tree(vec![
            file("log", 3, ""),
            file("log.1", 1, "today"),
            file("log.2", 2, "yesterday"),
        ]);
        let found = changes(&prev, &mut new, &Unseen::default());
        assert_eq!(
            describe(&found),
            ["rename log.1 -> log.2", "rename log -> log.1", "upsert log"]
        );
    }

    #[test]
    fn rename_into_a_new_directory_creates_it_first() {
        let prev = tree(vec![file("a", 1, "x")]);
        let mut new = tree(vec![dir("d", 2), file("d/a", 1, "x")]);
        let found = changes(&prev, &mut new, &Unseen::default());
        assert_eq!(describe(&found), ["upsert d", "rename a -> d/a"]);
    }

    #[test]
    fn nested_renames_refer_to_the_state_after_earlier_ones() {
        let prev = tree(vec![dir("a", 1), dir("a/s", 2), file("a/s/f", 3, "f")]);
        let mut new = tree(vec![dir("b", 1), dir("b/t", 2), file("b/t/f", 3, "f")]);
        let found = changes(&prev, &mut new, &Unseen::default());
        assert_eq!(describe(&found), ["rename a -> b", "rename b/s -> b/t"]);
    }

    #[test]
    fn changed_content_is_not_a_rename() {
        let prev = tree(vec![file("a", 1, "x")]);
        let mut new = tree(vec![file("b", 1, "y")]);
        let found = changes(&prev, &mut new, &Unseen::default());
        assert_eq!(describe(&found), ["upsert b", "delete a"]);
    }

    #[test]
    fn dir_replaced_by_file_takes_its_content_along() {
        let prev = tree(vec![dir("x", 1), file("x/f", 2, "f"), file("y", 3, "y")]);
        let mut new = tree(vec![file("x", 4, "now a file")]);
        let found = changes(&prev, &mut new, &Unseen::default());
        assert_eq!(describe(&found), ["upsert x", "delete y"]);
    }

    #[test]
    fn unseen_entries_are_kept_even_after_a_rename() {
        let prev = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("d/g", 3, "g")]);
        let mut new = tree(vec![dir("e", 1), file("e/g", 3, "g")]);
        let unseen = Unseen {
            paths: HashSet::from(["e/f".to_string()]),
            trees: HashSet::new(),
        };
        let found = changes(&prev, &mut new, &unseen);
        assert_eq!(describe(&found), ["rename d -> e"]);
        assert_eq!(find(&new, "e/f").unwrap().entry.path, "e/f");
    }

    #[test]
    fn unseen_subtree_is_not_deleted() {
        let prev = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("x", 3, "x")]);
        let mut new = tree(vec![dir("d", 1)]);
        let unseen = Unseen {
            paths: HashSet::new(),
            trees: HashSet::from(["d".to_string()]),
        };
        let found = changes(&prev, &mut new, &unseen);
        assert_eq!(describe(&found), ["delete x"]);
        assert!(find(&new, "d/f").is_some());
    }

    /// How the scanner reports a walk of `new` against the recorded `prev`.
    fn observe(prev: &[ScannedEntry], new: &[ScannedEntry]) -> (Vec<Found>, Vec<ScannedEntry>) {
        let mut found = vec![Found::Absent; prev.len()];
        let mut edits = Vec::new();
        for scanned in new {
            let at = prev
                .binary_search_by(|e| compare_paths(&e.entry.path, &scanned.entry.path))
                .ok();
            match at {
                Some(i) if prev[i] == *scanned => found[i] = Found::Same,
                _ => {
                    if let Some(i) = at {
                        found[i] = Found::Edited;
                    }
                    edits.push(scanned.clone());
                }
            }
        }
        (found, edits)
    }

    /// Settles `new` against `prev` and checks it against the reference algorithm on the whole
    /// trees: the same changes, the same resulting tree, and an index write that gives that
    /// tree; with [`ChangeDetail::Renames`], the renames of those changes and the same tree.
    fn check_settle_agrees(prev: &[ScannedEntry], new: &[ScannedEntry], unseen: &Unseen) {
        let mut whole = map(new.to_vec());
        let expected = reference::detect(&map(prev.to_vec()), &mut whole, unseen);
        let (found, edits) = observe(prev, new);
        let settled = settle(
            prev.to_vec(),
            &found,
            edits.clone(),
            unseen,
            ChangeDetail::All,
        );
        assert_eq!(describe(&settled.changes), describe(&expected));
        assert_eq!(settled.changes, expected);
        assert!(settled.before.is_sorted_by(|a, b| by_path(a, b).is_lt()));
        assert!(settled.after.is_sorted_by(|a, b| by_path(a, b).is_lt()));
        let mut index = map(prev.to_vec());
        let before = map(settled.before.clone());
        let after = map(settled.after.clone());
        index.retain(|k, _| !before.contains_key(k) || after.contains_key(k));
        index.extend(after);
        assert_eq!(index, whole, "the index write-back");
        let entries = settled.into_entries();
        let wanted: Vec<ScannedEntry> = whole.into_values().collect();
        assert_eq!(entries, wanted);

        let renames = settle(prev.to_vec(), &found, edits, unseen, ChangeDetail::Renames);
        let expected_renames: Vec<Change> = expected
            .into_iter()
            .filter(|c| matches!(c, Change::Rename { .. }))
            .collect();
        assert_eq!(renames.changes, expected_renames);
        assert_eq!(renames.into_entries(), wanted);
    }

    /// A tree over a small universe of names: every parent a directory, ids from a small range
    /// (so that renames happen), contents from a few.
    fn arbitrary_tree() -> impl proptest::strategy::Strategy<Value = TreeMap> {
        use proptest::prelude::*;
        let leaf = (
            proptest::sample::select(vec![
                "a", "b", "a b", "c/d", "a/x", "a/y", "b/x", "a/x/z", "e",
            ]),
            0u8..3,
            1u128..6,
            proptest::sample::select(vec!["", "one", "two"]),
        );
        proptest::collection::vec(leaf, 0..8).prop_map(|leaves| {
            let mut map = TreeMap::new();
            for (path, kind, id, content) in leaves {
                for (cut, _) in path.match_indices('/') {
                    let parent = &path[..cut];
                    map.insert(TreeKey(parent.to_string()), dir(parent, 100 + id));
                }
                let below = map
                    .keys()
                    .any(|k| k.0.len() > path.len() && is_same_or_below(&k.0, path));
                let scanned = match kind {
                    _ if below => dir(path, id + 10),
                    0 => file(path, id, content),
                    1 => dir(path, id),
                    _ => entry(
                        path,
                        EntryKind::Symlink {
                            target: content.to_string(),
                        },
                        id,
                        "",
                    ),
                };
                map.insert(TreeKey(path.to_string()), scanned);
            }
            map
        })
    }

    proptest::proptest! {
        #[test]
        fn settling_agrees_with_the_reference_on_whole_trees(
            prev in arbitrary_tree(),
            new in arbitrary_tree(),
            unseen_paths in proptest::collection::hash_set(
                proptest::sample::select(vec!["a", "a/x", "b", "c/d", "e"]), 0..2),
            unseen_trees in proptest::collection::hash_set(
                proptest::sample::select(vec!["a", "c", "b/x"]), 0..2),
            keep_some in proptest::bool::ANY,
        ) {
            let unseen = Unseen {
                paths: unseen_paths.into_iter().map(String::from).collect(),
                trees: unseen_trees.into_iter().map(String::from).collect(),
            };
            // Half the time, a new tree that mostly matches the old one (few changes).
            let new = if keep_some {
                let mut mostly = prev.clone();
                mostly.extend(new.into_iter().take(2));
                mostly
            } else {
                new
            };
            let prev: Vec<ScannedEntry> = prev.into_values().collect();
            let mut new: Vec<ScannedEntry> = new.into_values().collect();
            check_settle_agrees(&prev, &new, &unseen);
            changes(&prev, &mut new, &unseen);
        }

        #[test]
        fn region_lookups_agree_with_a_walk_of_every_changed_path(
            changed in proptest::collection::btree_set(
                proptest::sample::select(vec!["a", "a/b", "a/b/c", "a b", "a/b c", "b", "b/a", "c/d/e"]),
                0..4),
            path in proptest::sample::select(vec!["a", "a/b", "a/b/c", "a b", "a/b c", "b", "b/a", "c", "c/d", "c/d/e", "d"]),
        ) {
            let mut changed: Vec<&str> = changed.into_iter().collect();
            changed.sort_unstable_by(|a, b| compare_paths(a, b));
            let expected = changed
                .iter()
                .any(|c| is_same_or_below(path, c) || is_same_or_below(c, path));
            proptest::prop_assert_eq!(Region::new(&changed).covers(path), expected);
        }
    }

    #[test]
    fn settling_an_unchanged_tree_writes_nothing_and_keeps_the_recorded_entries() {
        let recorded = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("x", 3, "x")]);
        let settled = settle(
            recorded.clone(),
            &[Found::Same; 3],
            vec![],
            &Unseen::default(),
            ChangeDetail::All,
        );
        assert!(settled.changes.is_empty());
        assert!(settled.before.is_empty() && settled.after.is_empty());
        assert_eq!(settled.into_entries(), recorded);
    }

    #[test]
    fn an_initial_scan_keeps_its_entries_in_place() {
        let new = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("x", 3, "x")]);
        let edits = new.clone();
        let first = edits.as_ptr();
        let settled = settle(
            vec![],
            &[],
            edits,
            &Unseen::default(),
            ChangeDetail::Renames,
        );
        assert!(settled.changes.is_empty());
        assert_eq!(settled.after, new);
        let entries = settled.into_entries();
        assert_eq!(
            entries.as_ptr(),
            first,
            "the edits became the tree, not a copy"
        );
        assert_eq!(entries, new);
    }

    #[test]
    fn a_directory_whose_time_moved_is_written_back_without_a_change() {
        let prev = tree(vec![dir("d", 1), file("d/f", 2, "f"), file("x", 3, "x")]);
        let mut moved = dir("d", 1);
        moved.entry.mtime_ns = 99;
        let new = with(&prev, moved);
        check_settle_agrees(&prev, &new, &Unseen::default());
        let (found, edits) = observe(&prev, &new);
        let settled = settle(prev, &found, edits, &Unseen::default(), ChangeDetail::All);
        assert!(settled.changes.is_empty());
        assert_eq!(
            settled
                .after
                .iter()
                .map(|e| e.entry.path.as_str())
                .collect::<Vec<_>>(),
            ["d"]
        );
    }

    #[test]
    fn only_the_region_of_a_change_is_compared() {
        // One file changed deep in a large tree: its directories are in the region, the rest
        // of the tree is not.
        let mut entries = vec![dir("a", 1), dir("a/b", 2), dir("z", 3)];
        for i in 0..50 {
            entries.push(file(&format!("a/b/f{i:02}"), 10 + i, "f"));
            entries.push(file(&format!("z/g{i:02}"), 100 + i, "g"));
        }
        let prev = tree(entries);
        let new = with(&prev, file("a/b/f07", 17, "changed"));
        let changed = ["a/b/f07"];
        let region = Region::new(&changed);
        assert!(region.covers("a") && region.covers("a/b") && region.covers("a/b/f07"));
        assert!(!region.covers("a/b/f08") && !region.covers("z") && !region.covers("z/g07"));
        let marked = region.mark(&prev);
        assert_eq!(marked.iter().filter(|m| **m).count(), 3);
        check_settle_agrees(&prev, &new, &Unseen::default());
    }

    #[test]
    fn merging_sorted_entries_in_place() {
        let entries = tree(vec![
            dir("a", 1),
            file("a/b", 2, ""),
            file("a b", 3, ""),
            dir("c", 4),
            file("c/d", 5, ""),
            file("e", 6, ""),
        ]);
        for mask in 0u32..64 {
            let (mut base, mut extra) = (Vec::new(), Vec::new());
            for (i, e) in entries.iter().enumerate() {
                if mask & (1 << i) == 0 {
                    base.push(e.clone());
                } else {
                    extra.push(e.clone());
                }
            }
            let (wanted_base, wanted_extra) = (base.clone(), extra.clone());
            let mut split = base.clone();
            split.extend(extra.iter().cloned());
            split.sort_unstable_by(by_path);
            merge_sorted(&mut base, extra);
            assert_eq!(base, entries, "mask {mask:b}");

            let flags: Vec<bool> = split.iter().map(|e| wanted_extra.contains(e)).collect();
            let taken = take_marked(&mut split, &flags);
            assert_eq!(taken, wanted_extra, "mask {mask:b}");
            assert_eq!(split, wanted_base, "mask {mask:b}");
        }
    }
}
