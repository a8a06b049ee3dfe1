//! The scanner: the current state of a root and the changes since the previous scan.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::diff::{detect, TreeKey, TreeMap, Unseen};
use crate::locked::{LockedFile, LockedSet};
use crate::parallel::parallel_map_costliest_first;
use crate::walk::{
    check_root, read_stable, stat_item, walk, AfterReadHook, ItemKind, ReadFailure, WalkItem,
};
use crate::{compare_paths, to_os_path, EntryKind, Excludes, FileEntry, FileId, Index, TreeError};

/// An entry of the tree together with the local identity of the file it describes.
#[derive(Clone, Debug, PartialEq)]
pub struct ScannedEntry {
    pub entry: FileEntry,
    pub file_id: Option<FileId>,
}

/// Something in the tree that could not be described this time, and why. The reason says whether
/// it will be retried ("will retry") or is left out for good ("skipped").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanProblem {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// One change since the previous scan. Apply in order: each is stated against the state the
/// previous ones leave.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Make `path` exactly this entry. Replacing a directory by a file or link removes the
    /// directory's content too.
    Upsert(FileEntry),
    /// Remove this path and everything below it.
    Delete(String),
    /// Rename `from` (with everything below it) to `entry.path`, which then is `entry`.
    Rename { from: String, entry: FileEntry },
}

/// What [`Scanner::scan`] found.
#[derive(Clone, Debug, Default)]
pub struct ScanOutcome {
    /// The whole current tree, parents before children (see [`crate::compare_paths`]). Entries
    /// that could not be read this time appear as they were last known.
    pub entries: Vec<ScannedEntry>,
    /// Changes since the previous scan: renames (with any directory they need created first),
    /// then upserts (parents first), then deletes (the top-most path of each deleted subtree).
    pub changes: Vec<Change>,
    /// Something could not be described this time (apart from locked files).
    pub problems: Vec<ScanProblem>,
    /// Every file currently known to be locked by another process, in path order: each is
    /// described as it was last known (or not at all when it is new) and retried with backoff;
    /// see [`Scanner::next_locked_retry`].
    pub locked: Vec<LockedFile>,
    /// Files whose content was read (0 when every file matched the index).
    pub files_hashed: u64,
    /// Bytes read to hash those files.
    pub bytes_hashed: u64,
}

/// Scans one root against its persistent [`Index`].
pub struct Scanner {
    root: PathBuf,
    excludes: Excludes,
    index: Index,
    after_read: Option<AfterReadHook>,
    locked: LockedSet,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("root", &self.root)
            .field("excludes", &self.excludes)
            .field("index", &self.index)
            .field("locked", &self.locked)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    pub fn new(root: &Path, excludes: Excludes, index: Index) -> Scanner {
        Scanner {
            root: root.to_path_buf(),
            excludes,
            index,
            after_read: None,
            locked: LockedSet::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn excludes(&self) -> &Excludes {
        &self.excludes
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// The files currently known to be locked by another process, in path order.
    pub fn locked_files(&self) -> Vec<LockedFile> {
        self.locked.snapshot()
    }

    /// When the earliest locked file is due for another try (None: nothing is locked). A scan or
    /// refresh before then does not open those files; the caller should scan again at that time.
    pub fn next_locked_retry(&self) -> Option<Instant> {
        self.locked.next_retry()
    }

    /// Testing aid: `hook` runs (on a hashing thread) after each file's content was read and
    /// before the file is stat'ed again to check that it did not change meanwhile.
    pub fn set_after_read_hook(&mut self, hook: impl Fn(&Path) + Send + Sync + 'static) {
        self.after_read = Some(Box::new(hook));
    }

    /// Walks the whole root (never following links, never leaving it) and records the result in
    /// the index.
    ///
    /// A file whose size, modification time and file id match the index (at its path, or at the
    /// path it was renamed from) is not read again. Any other file is chunked and then stat'ed
    /// again: when it changed meanwhile it is reported as a problem and its previous state is
    /// kept, so a half-written file is never described. The same goes for files and directories
    /// that cannot be read: they are reported, and never taken as deleted. A file locked by
    /// another process is not a problem but goes into [`ScanOutcome::locked`]: it keeps its last
    /// known state and is opened again only when its retry is due (1 s, doubling to 60 s).
    ///
    /// Renames are recognised by file identity: a new path whose file id (same kind and, for
    /// files, same content) belonged to a path that no longer holds it. A renamed directory is
    /// one [`Change::Rename`]; what moved along unchanged is not listed again.
    pub fn scan(&mut self) -> Result<ScanOutcome, TreeError> {
        let walked = walk(&self.root, &self.excludes, true)?;
        let prev: TreeMap = self
            .index
            .all()?
            .into_iter()
            .map(|e| (TreeKey(e.entry.path.clone()), e))
            .collect();
        let mut known = KnownState::new(&prev);

        let mut outcome = ScanOutcome {
            problems: walked.problems,
            ..ScanOutcome::default()
        };
        let mut unseen = Unseen::default();
        unseen.trees.extend(walked.unseen);
        // Collected first and turned into a map at once: the walk lists entries (almost always)
        // in map order, so that is one cheap sort instead of an ordered insert per entry.
        let mut described = Vec::with_capacity(walked.items.len());
        let mut to_read = Vec::new();
        let now = Instant::now();
        // Locked files still there as files: the others are forgotten after the walk.
        let mut locked_seen = HashSet::new();
        for item in walked.items {
            if item.kind == ItemKind::File {
                if self.locked.contains(&item.rel) {
                    locked_seen.insert(item.rel.clone());
                }
                match known.reusable_content(&item) {
                    Some(entry) => {
                        self.locked.resolved(&item.rel);
                        described.push(keyed(entry, item.file_id));
                    }
                    None if self.locked.waiting(&item.rel, now) => {
                        unseen.paths.insert(item.rel.clone());
                    }
                    None => to_read.push(item),
                }
            } else {
                described.push(keyed(item.entry(None), item.file_id));
            }
        }

        let hook = self.after_read.as_ref();
        // Largest first: a big file late in walk order would otherwise be hashed alone at the end.
        let results = parallel_map_costliest_first(
            &to_read,
            |item| item.size,
            |item| read_stable(item, hook, &mut |_| {}),
        );
        for (item, result) in to_read.iter().zip(results) {
            match result {
                Ok(content) => {
                    outcome.files_hashed += 1;
                    outcome.bytes_hashed += content.size;
                    self.locked.resolved(&item.rel);
                    described.push(keyed(item.entry(Some(&content)), item.file_id));
                }
                Err(ReadFailure::Locked(e)) => {
                    self.locked.failed(&item.rel, &e, now);
                    unseen.paths.insert(item.rel.clone());
                }
                Err(failure) => {
                    tracing::debug!(path = %item.rel, reason = %failure.reason(), "file not described");
                    outcome.problems.push(crate::ScanProblem {
                        path: item.rel.clone(),
                        reason: failure.reason(),
                    });
                    unseen.paths.insert(item.rel.clone());
                }
            }
        }

        // A locked file below a directory that could not be listed is still there, unseen.
        self.locked
            .retain(|rel| locked_seen.contains(rel) || unseen.covers(rel));
        outcome.locked = self.locked.snapshot();

        let mut current: TreeMap = described.into_iter().collect();
        outcome.changes = detect(&prev, &mut current, &unseen);
        self.index.replace_state(&prev, &current)?;
        tracing::debug!(
            root = %self.root.display(),
            entries = current.len(),
            changes = outcome.changes.len(),
            problems = outcome.problems.len(),
            locked = outcome.locked.len(),
            files_hashed = outcome.files_hashed,
            bytes_hashed = outcome.bytes_hashed,
            "scan done"
        );
        outcome.entries = current.into_values().collect();
        Ok(outcome)
    }

    /// Stats and (for a file) rereads one path now, records it in the index and returns it; the
    /// caller must describe the returned entry to its peer, since the index now records it.
    /// `Ok(None)` when the path does not exist (the index is left alone, so the next scan reports
    /// the delete) or is excluded. [`TreeError::Locked`] when another process holds the file (or
    /// it was found locked and its retry is not due yet): the index keeps its previous state.
    pub fn refresh(&mut self, rel: &str) -> Result<Option<ScannedEntry>, TreeError> {
        swrepl_proto::validate_path(rel).map_err(|e| TreeError::InvalidPath {
            path: rel.to_string(),
            reason: e.to_string(),
        })?;
        if self.excludes.is_excluded(rel) {
            return Ok(None);
        }
        check_root(&self.root)?;
        if !parents_are_real_dirs(&self.root, rel)? {
            return Ok(None);
        }
        let os_path = to_os_path(&self.root, rel);
        let meta = match std::fs::symlink_metadata(&os_path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TreeError::io(os_path, e)),
        };
        let item =
            stat_item(rel.to_string(), &os_path, &meta).map_err(|p| TreeError::NotReplicable {
                path: p.path,
                reason: p.reason,
            })?;
        let entry = match item.kind {
            ItemKind::File if self.locked.waiting(rel, Instant::now()) => {
                return Err(TreeError::Locked {
                    path: rel.to_string(),
                })
            }
            ItemKind::File => match read_stable(&item, self.after_read.as_ref(), &mut |_| {}) {
                Ok(content) => {
                    self.locked.resolved(rel);
                    item.entry(Some(&content))
                }
                Err(ReadFailure::Locked(e)) => {
                    self.locked.failed(rel, &e, Instant::now());
                    return Err(TreeError::Locked {
                        path: rel.to_string(),
                    });
                }
                Err(ReadFailure::Changed) => {
                    return Err(TreeError::ChangedWhileRead {
                        path: rel.to_string(),
                    })
                }
                Err(ReadFailure::Unreadable(e)) => return Err(TreeError::io(os_path, e)),
            },
            _ => item.entry(None),
        };
        let scanned = ScannedEntry {
            entry,
            file_id: item.file_id,
        };
        if scanned.entry.kind != EntryKind::Dir {
            // A directory that became a file or link took its content with it.
            self.index.remove_tree(rel)?;
        }
        self.index.put(&scanned)?;
        Ok(Some(scanned))
    }
}

fn keyed(entry: FileEntry, file_id: Option<FileId>) -> (TreeKey, ScannedEntry) {
    (TreeKey(entry.path.clone()), ScannedEntry { entry, file_id })
}

/// The index's state at the start of a scan, looked up by the walk's items.
struct KnownState<'a> {
    prev: &'a TreeMap,
    /// Walks `prev` once alongside the walk, which asks for paths in map order: no allocation and
    /// no tree search per item. `None` once a path came out of order (then lookups search).
    cursor:
        Option<std::iter::Peekable<std::collections::btree_map::Iter<'a, TreeKey, ScannedEntry>>>,
    /// The path asked last (a reused buffer).
    last_asked: String,
    /// Previous files by file id, built on first need (a path whose entry cannot be reused).
    files_by_id: Option<HashMap<FileId, Vec<&'a ScannedEntry>>>,
}

impl<'a> KnownState<'a> {
    fn new(prev: &'a TreeMap) -> KnownState<'a> {
        KnownState {
            prev,
            cursor: Some(prev.iter().peekable()),
            last_asked: String::new(),
            files_by_id: None,
        }
    }

    /// The previous entry at `rel`.
    fn at_path(&mut self, rel: &str) -> Option<&'a ScannedEntry> {
        let first = self.last_asked.is_empty();
        if !first && compare_paths(&self.last_asked, rel).is_ge() {
            self.cursor = None;
        }
        self.last_asked.clear();
        self.last_asked.push_str(rel);
        let Some(cursor) = self.cursor.as_mut() else {
            return self.prev.get(&TreeKey(rel.to_string()));
        };
        while cursor
            .next_if(|(key, _)| compare_paths(&key.0, rel).is_lt())
            .is_some()
        {}
        cursor
            .next_if(|(key, _)| key.0 == rel)
            .map(|(_, scanned)| scanned)
    }

    fn files_with_id(&mut self, id: FileId) -> &[&'a ScannedEntry] {
        let prev = self.prev;
        self.files_by_id
            .get_or_insert_with(|| files_by_id(prev))
            .get(&id)
            .map_or(&[], Vec::as_slice)
    }

    /// The entry for file `item` built from what the index knows, when size, time and file id
    /// show the content cannot have changed: at the same path, or at another path with the same
    /// file id (a rename, or a hard link).
    fn reusable_content(&mut self, item: &WalkItem) -> Option<FileEntry> {
        let unchanged = |old: &ScannedEntry| {
            old.entry.kind == EntryKind::File
                && old.entry.size == item.size
                && old.entry.mtime_ns == item.mtime_ns
                && old.file_id == item.file_id
        };
        let known = match self.at_path(&item.rel).filter(|old| unchanged(old)) {
            Some(old) => old,
            None => {
                let id = item.file_id?;
                *self.files_with_id(id).iter().find(|old| unchanged(old))?
            }
        };
        let mut entry = item.entry(None);
        entry.chunks = known.entry.chunks.clone();
        entry.file_hash = known.entry.file_hash;
        Some(entry)
    }
}

fn files_by_id(prev: &TreeMap) -> HashMap<FileId, Vec<&ScannedEntry>> {
    let mut by_id: HashMap<FileId, Vec<&ScannedEntry>> = HashMap::new();
    for scanned in prev.values().filter(|s| s.entry.kind == EntryKind::File) {
        if let Some(id) = scanned.file_id {
            by_id.entry(id).or_default().push(scanned);
        }
    }
    by_id
}

/// False when a directory above `rel` is a link or not a directory: following it could leave the
/// root.
fn parents_are_real_dirs(root: &Path, rel: &str) -> Result<bool, TreeError> {
    let mut path = root.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            break;
        }
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(TreeError::io(path, e)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hash_bytes, Attributes};

    fn known(paths: &[&str]) -> TreeMap {
        paths
            .iter()
            .map(|path| {
                let entry = FileEntry {
                    path: path.to_string(),
                    kind: EntryKind::File,
                    size: 0,
                    mtime_ns: 0,
                    attributes: Attributes::default(),
                    chunks: vec![],
                    file_hash: hash_bytes(b""),
                };
                keyed(entry, None)
            })
            .collect()
    }

    #[test]
    fn lookups_find_entries_in_and_out_of_walk_order() {
        let prev = known(&["a", "a/b", "a/c", "a b", "z"]);
        let mut state = KnownState::new(&prev);
        let found = |s: &mut KnownState, rel: &str| s.at_path(rel).map(|e| e.entry.path.clone());
        // In walk order, with paths the index does not know in between.
        assert_eq!(found(&mut state, "a").as_deref(), Some("a"));
        assert_eq!(found(&mut state, "a/a"), None);
        assert_eq!(found(&mut state, "a/c").as_deref(), Some("a/c"));
        assert_eq!(found(&mut state, "a b").as_deref(), Some("a b"));
        // Out of order: falls back to searching the map, still right.
        assert_eq!(found(&mut state, "a/b").as_deref(), Some("a/b"));
        assert_eq!(found(&mut state, "z").as_deref(), Some("z"));
        assert_eq!(found(&mut state, "a").as_deref(), Some("a"));
        assert_eq!(found(&mut state, "y"), None);
    }
}
