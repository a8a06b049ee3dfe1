//! The scanner: the current state of a root and the changes since the previous scan.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::chunk::{Chunked, RECHUNK_MIN_LEN, SEGMENT_LEN};
use crate::diff::{by_path, settle, Found, Unseen};
use crate::locked::{LockedFile, LockedSet};
use crate::parallel::parallel_map_costliest_first;
use crate::walk::{
    check_root, read_stable_reusing, stat_item, walk_each, AfterReadHook, ItemKind, ReadFailure,
    Stat, WalkItem, Walked,
};
use crate::{
    compare_paths, hash_bytes, to_os_path, ChunkRef, EntryKind, Excludes, FileEntry, FileId, Hash,
    Index, TreeError,
};

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

/// Which changes a scan lists in [`ScanOutcome::changes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeDetail {
    /// Every change: renames, upserts and deletes.
    #[default]
    All,
    /// Only the renames ([`Change::Rename`]), for a caller that describes the whole tree to its
    /// peer anyway (a full pass): on a first scan, the upserts would be a copy of every entry.
    Renames,
}

/// What [`Scanner::scan`] found.
#[derive(Clone, Debug, Default)]
pub struct ScanOutcome {
    /// The whole current tree, parents before children (see [`crate::compare_paths`]). Entries
    /// that could not be read this time appear as they were last known.
    pub entries: Vec<ScannedEntry>,
    /// Changes since the previous scan: renames (with any directory they need created first),
    /// then upserts (parents first), then deletes (the top-most path of each deleted subtree).
    /// Only the renames when scanned with [`ChangeDetail::Renames`].
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
        self.scan_with(ChangeDetail::All)
    }

    /// [`Scanner::scan`], listing only the changes `detail` asks for. The entries, the index
    /// and the renames are the same whatever the detail.
    pub fn scan_with(&mut self, detail: ChangeDetail) -> Result<ScanOutcome, TreeError> {
        let now = Instant::now();
        let Scanner {
            root,
            excludes,
            index,
            after_read,
            locked,
        } = self;
        let (prev, observed) = walk_each(root, excludes, true, |walked| {
            // Loaded while the other cores start the walk.
            let prev = recorded_tree(index)?;
            let mut observed = Observed::new(prev.len());
            for next in walked {
                observed.add(next, &prev, locked);
            }
            Ok::<_, TreeError>((prev, observed))
        })??;
        let Observed {
            mut found,
            mut edits,
            unknown,
            problems,
            mut unseen,
            locked_seen,
            ..
        } = observed;
        let mut outcome = ScanOutcome {
            problems,
            ..ScanOutcome::default()
        };

        // Files whose content is not known yet are in `edits` already, without content: their
        // content is filled in there, or they leave `edits` again when it cannot be had.
        let mut left_out = Vec::new();
        let mut to_read = unknown;
        reuse_by_id(&prev, &mut edits, &mut found, &mut to_read, locked);
        to_read.retain(|slot| {
            let path = &edits[slot.edit].entry.path;
            if !locked.waiting(path, now) {
                return true;
            }
            unseen.paths.insert(path.clone());
            left_out.push(slot.edit);
            false
        });

        // Largest first: a big file late in walk order would otherwise be hashed alone at the end.
        // Read in batches, so that only a batch's results wait to be filled in.
        to_read.sort_by_key(|slot| std::cmp::Reverse(edits[slot.edit].entry.size));
        let hook = after_read.as_ref();
        let mut read_problems = Vec::new();
        for batch in to_read.chunks(READ_BATCH) {
            // A changed file's previous chunks spare most of the chunking of a small edit, and
            // its segment values most of the hashing of its chunks.
            let work: Vec<(&Unknown, Vec<Hash>)> = batch
                .iter()
                .map(|slot| {
                    let segments = slot.at.map(|i| previous_segments(index, &prev[i]));
                    (slot, segments.unwrap_or_default())
                })
                .collect();
            let results = parallel_map_costliest_first(
                &work,
                |(slot, _)| edits[slot.edit].entry.size,
                |(slot, segments)| {
                    let item = located_file(root, &edits[slot.edit]);
                    let previous = slot.at.map_or(&[][..], |i| &prev[i].entry.chunks[..]);
                    read_stable_reusing(&item, previous, segments, hook, &mut |_| {})
                },
            );
            for (slot, result) in batch.iter().zip(results) {
                let scanned = &mut edits[slot.edit];
                let path = &scanned.entry.path;
                match result {
                    Ok(content) => {
                        outcome.files_hashed += 1;
                        outcome.bytes_hashed += content.size;
                        locked.resolved(path);
                        record_segments(index, path, &content);
                        set_content(scanned, &content.chunks, content.file_hash);
                        mark_edited(&mut found, slot.at);
                        continue;
                    }
                    Err(ReadFailure::Locked(e)) => locked.failed(path, &e, now),
                    Err(failure) => {
                        tracing::debug!(path = %path, reason = %failure.reason(), "file not described");
                        read_problems.push(crate::ScanProblem {
                            path: path.clone(),
                            reason: failure.reason(),
                        });
                    }
                }
                unseen.paths.insert(path.clone());
                left_out.push(slot.edit);
            }
        }
        drop(to_read);
        read_problems.sort_unstable_by(|a, b| compare_paths(&a.path, &b.path));
        outcome.problems.extend(read_problems);
        remove_at(&mut edits, left_out);

        // A locked file below a directory that could not be listed is still there, unseen.
        locked.retain(|rel| locked_seen.contains(rel) || unseen.covers(rel));
        outcome.locked = locked.snapshot();

        edits.sort_unstable_by(by_path);
        let mut settled = settle(prev, &found, edits, &unseen, detail);
        index.replace_state(&settled.before, &settled.after)?;
        outcome.changes = std::mem::take(&mut settled.changes);
        outcome.entries = settled.into_entries();
        tracing::debug!(
            root = %root.display(),
            entries = outcome.entries.len(),
            changes = outcome.changes.len(),
            problems = outcome.problems.len(),
            locked = outcome.locked.len(),
            files_hashed = outcome.files_hashed,
            bytes_hashed = outcome.bytes_hashed,
            "scan done"
        );
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
        let previous = match item.kind {
            ItemKind::File => previous_content(&self.index, rel, item.size),
            _ => Previous::default(),
        };
        let entry = match item.kind {
            ItemKind::File if self.locked.waiting(rel, Instant::now()) => {
                return Err(TreeError::Locked {
                    path: rel.to_string(),
                })
            }
            ItemKind::File => match read_stable_reusing(
                &item,
                &previous.chunks,
                &previous.segment_cvs,
                self.after_read.as_ref(),
                &mut |_| {},
            ) {
                Ok(content) => {
                    self.locked.resolved(rel);
                    record_segments(&mut self.index, rel, &content);
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

    /// [`Scanner::refresh`] for a path whose directory the index records already; `Ok(None)`
    /// otherwise, leaving the path to the next walk. A watcher reports a file written into a
    /// new directory before any walk has seen that directory: recorded alone, the file would be
    /// described to the peer (which creates the directory for it) while the index never learnt
    /// of the directory, so the directory's removal would never be reported and the peer would
    /// keep it. The walk records a directory before what is in it.
    pub fn refresh_in_indexed_dir(&mut self, rel: &str) -> Result<Option<ScannedEntry>, TreeError> {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            let indexed_dir = self
                .index
                .get(parent)?
                .is_some_and(|known| known.entry.kind == EntryKind::Dir);
            if !indexed_dir {
                return Ok(None);
            }
        }
        self.refresh(rel)
    }
}

/// What `index` records of the content of the file at `rel` (nothing for a file too small to
/// gain from it): a cache, so an index that cannot answer just means a full read.
fn previous_content(index: &Index, rel: &str, size: u64) -> Previous {
    if size < RECHUNK_MIN_LEN {
        return Previous::default();
    }
    match index.get(rel) {
        Ok(Some(known)) => Previous {
            segment_cvs: previous_segments(index, &known),
            chunks: known.entry.chunks,
        },
        Ok(None) => Previous::default(),
        Err(e) => {
            tracing::debug!(path = rel, error = %e, "previous chunks unavailable; reading in full");
            Previous::default()
        }
    }
}

/// A file's previous chunk list and segment values.
#[derive(Default)]
struct Previous {
    chunks: Vec<ChunkRef>,
    segment_cvs: Vec<Hash>,
}

/// The segment values `index` records for `known`'s content (none for a file of one segment,
/// which has none, without asking).
fn previous_segments(index: &Index, known: &ScannedEntry) -> Vec<Hash> {
    if known.entry.size <= SEGMENT_LEN as u64 {
        return Vec::new();
    }
    index
        .segments(&known.entry.path, &known.entry.file_hash)
        .unwrap_or_else(|e| {
            tracing::debug!(path = %known.entry.path, error = %e, "segment values unavailable");
            Vec::new()
        })
}

/// Keeps the segment values of a file just read for its next rechunk (a cache: a failure to
/// record them only costs hashing next time).
fn record_segments(index: &mut Index, rel: &str, content: &Chunked) {
    if content.segment_cvs.is_empty() {
        return;
    }
    if let Err(e) = index.put_segments(rel, &content.file_hash, &content.segment_cvs) {
        tracing::debug!(path = rel, error = %e, "segment values not recorded");
    }
}

/// The index's entries in path order.
fn recorded_tree(index: &Index) -> Result<Vec<ScannedEntry>, TreeError> {
    let mut prev = index.all()?;
    let in_order = |a: &ScannedEntry, b: &ScannedEntry| compare_paths(&a.entry.path, &b.entry.path);
    // sqlite returns them in byte order, which differs from path order only where a name holds
    // a byte below '/' (a space, '-', '.'): usually in order already, which one pass confirms.
    if !prev.is_sorted_by(|a, b| in_order(a, b).is_lt()) {
        prev.sort_unstable_by(in_order);
    }
    Ok(prev)
}

/// What the walk found, compared entry by entry with the recorded tree as it comes.
struct Observed {
    /// How each recorded entry was found (by index in the recorded tree).
    found: Vec<Found>,
    /// Entries that are not exactly as recorded at their path.
    edits: Vec<ScannedEntry>,
    /// Files whose content is not recorded at their path: in `edits` without content until it
    /// is reused from another path or read.
    unknown: Vec<Unknown>,
    problems: Vec<ScanProblem>,
    unseen: Unseen,
    /// Locked files still there as files: the others are forgotten after the walk.
    locked_seen: HashSet<String>,
    cursor: Cursor,
    /// The hash recorded for directories and links.
    empty_hash: Hash,
}

impl Observed {
    fn new(recorded: usize) -> Observed {
        Observed {
            found: vec![Found::Absent; recorded],
            edits: Vec::new(),
            unknown: Vec::new(),
            problems: Vec::new(),
            unseen: Unseen::default(),
            locked_seen: HashSet::new(),
            cursor: Cursor::default(),
            empty_hash: hash_bytes(b""),
        }
    }

    fn add(&mut self, walked: Walked, prev: &[ScannedEntry], locked: &LockedSet) {
        match walked {
            Walked::Item(stat) => self.add_item(stat, prev, locked),
            Walked::Problem(problem) => self.problems.push(problem),
            Walked::Unseen(problem) => {
                self.unseen.trees.insert(problem.path.clone());
                self.problems.push(problem);
            }
        }
    }

    fn add_item(&mut self, stat: Stat, prev: &[ScannedEntry], locked: &LockedSet) {
        let at = self.cursor.find(prev, &stat.rel);
        let known = at.map(|i| (i, &prev[i]));
        if stat.kind != ItemKind::File {
            match known {
                Some((i, known)) if self.is_recorded(&stat, known) => self.found[i] = Found::Same,
                _ => {
                    mark_edited(&mut self.found, at);
                    self.edits.push(described(stat));
                }
            }
            return;
        }
        if locked.contains(&stat.rel) {
            self.locked_seen.insert(stat.rel.clone());
        }
        match known {
            Some((i, known)) if content_unchanged(&stat, known) => {
                if stat.attributes == known.entry.attributes {
                    self.found[i] = Found::Same;
                } else {
                    mark_edited(&mut self.found, at);
                    self.edits.push(reuse(stat, known));
                }
            }
            _ => {
                self.unknown.push(Unknown {
                    edit: self.edits.len(),
                    at,
                });
                self.edits.push(described(stat));
            }
        }
    }

    /// True when the directory or link `stat` is exactly the recorded `known`.
    fn is_recorded(&self, stat: &Stat, known: &ScannedEntry) -> bool {
        let entry = &known.entry;
        let same_kind = match (&stat.kind, &entry.kind) {
            (ItemKind::Dir, EntryKind::Dir) => true,
            (ItemKind::Symlink { target }, EntryKind::Symlink { target: was }) => target == was,
            _ => false,
        };
        same_kind
            && entry.size == 0
            && entry.mtime_ns == stat.mtime_ns
            && entry.attributes == stat.attributes
            && entry.chunks.is_empty()
            && entry.file_hash == self.empty_hash
            && known.file_id == stat.file_id
    }
}

/// A file in the walk's edits whose content is not known yet.
#[derive(Clone, Copy, Debug)]
struct Unknown {
    /// Its index in the edits.
    edit: usize,
    /// The index of the recorded entry at its path.
    at: Option<usize>,
}

/// How many files are read between two fillings-in of their content: the results of one batch
/// are held at a time, not those of every file.
const READ_BATCH: usize = 4096;

/// The entry `stat` describes, without content (for a file).
fn described(stat: Stat) -> ScannedEntry {
    let file_id = stat.file_id;
    ScannedEntry {
        entry: stat.into_entry(),
        file_id,
    }
}

/// The recorded entry at `at`, if any, was found not as recorded.
fn mark_edited(found: &mut [Found], at: Option<usize>) {
    if let Some(i) = at {
        found[i] = Found::Edited;
    }
}

fn set_content(scanned: &mut ScannedEntry, chunks: &[ChunkRef], file_hash: Hash) {
    // A copy made here, of exactly the size needed, rather than the reading thread's list (room
    // for four chunks) kept and shrunk: held for as long as the tree is, the kept lists would
    // pin the reading threads' heap, where every file read leaves some garbage, with them.
    scanned.entry.chunks = chunks.to_vec();
    scanned.entry.file_hash = file_hash;
}

/// What reading the file `scanned` (described by its stat) needs.
fn located_file(root: &Path, scanned: &ScannedEntry) -> WalkItem {
    let entry = &scanned.entry;
    Stat {
        rel: entry.path.clone(),
        kind: ItemKind::File,
        size: entry.size,
        mtime_ns: entry.mtime_ns,
        attributes: entry.attributes,
        file_id: scanned.file_id,
    }
    .located(root)
}

/// Removes the entries at the positions `gone` (in any order) from `entries`.
fn remove_at(entries: &mut Vec<ScannedEntry>, gone: Vec<usize>) {
    if gone.is_empty() {
        return;
    }
    let mut remove = vec![false; entries.len()];
    for i in gone {
        remove[i] = true;
    }
    let mut position = 0;
    entries.retain(|_| {
        position += 1;
        !remove[position - 1]
    });
}

/// True when size, time and file id show that the file `stat` still has the recorded
/// content of `known`.
fn content_unchanged(stat: &Stat, known: &ScannedEntry) -> bool {
    same_content(known, stat.size, stat.mtime_ns, stat.file_id)
}

/// True when a file of this size, time and file id has the recorded content of `known`.
fn same_content(known: &ScannedEntry, size: u64, mtime_ns: i64, file_id: Option<FileId>) -> bool {
    known.entry.kind == EntryKind::File
        && known.entry.size == size
        && known.entry.mtime_ns == mtime_ns
        && known.file_id == file_id
}

/// The entry for file `stat` with the content recorded for `known`.
fn reuse(stat: Stat, known: &ScannedEntry) -> ScannedEntry {
    let mut scanned = described(stat);
    scanned.entry.chunks = known.entry.chunks.clone();
    scanned.entry.file_hash = known.entry.file_hash;
    scanned
}

/// Gives each file of `unknown` (described in `edits`) the content of a recorded file (in
/// `prev`) with the same file id whose size and time show the same content, and takes it out
/// of `unknown`: a rename, or a hard link, which is not read again (nor retried, when it was
/// locked). The first such file in path order; one pass over `prev`, and none when no file
/// needs it.
fn reuse_by_id(
    prev: &[ScannedEntry],
    edits: &mut [ScannedEntry],
    found: &mut [Found],
    unknown: &mut Vec<Unknown>,
    locked: &mut LockedSet,
) {
    if prev.is_empty() {
        return;
    }
    // Sorted pairs rather than a map: on a scan that finds many new files, a map with a list
    // per file would cost several times as much.
    let mut wanted: Vec<(FileId, usize)> = unknown
        .iter()
        .enumerate()
        .filter_map(|(k, slot)| edits[slot.edit].file_id.map(|id| (id, k)))
        .collect();
    if wanted.is_empty() {
        return;
    }
    wanted.sort_unstable();
    let mut reused = vec![false; unknown.len()];
    for known in prev {
        let Some(id) = known.file_id else {
            continue;
        };
        let first = wanted.partition_point(|(w, _)| *w < id);
        for &(_, k) in wanted[first..].iter().take_while(|(w, _)| *w == id) {
            let slot = unknown[k];
            let file = &mut edits[slot.edit];
            let (size, mtime_ns) = (file.entry.size, file.entry.mtime_ns);
            if !reused[k] && same_content(known, size, mtime_ns, file.file_id) {
                reused[k] = true;
                locked.resolved(&file.entry.path);
                set_content(file, &known.entry.chunks, known.entry.file_hash);
                mark_edited(found, slot.at);
            }
        }
    }
    let mut k = 0;
    unknown.retain(|_| {
        k += 1;
        !reused[k - 1]
    });
}

/// Finds walked paths in the recorded tree, which the walk asks for in path order: one step
/// forward per path, no search and no allocation. Searches once a path came out of order.
#[derive(Default)]
struct Cursor {
    next: usize,
    out_of_order: bool,
    /// The path asked last (a reused buffer).
    last_asked: String,
}

impl Cursor {
    /// The index in `prev` (in path order) of the entry at `rel`.
    fn find(&mut self, prev: &[ScannedEntry], rel: &str) -> Option<usize> {
        if !self.last_asked.is_empty() && compare_paths(&self.last_asked, rel).is_ge() {
            self.out_of_order = true;
        }
        self.last_asked.clear();
        self.last_asked.push_str(rel);
        if self.out_of_order {
            return prev
                .binary_search_by(|e| compare_paths(&e.entry.path, rel))
                .ok();
        }
        while prev
            .get(self.next)
            .is_some_and(|e| compare_paths(&e.entry.path, rel).is_lt())
        {
            self.next += 1;
        }
        let found = prev.get(self.next).is_some_and(|e| e.entry.path == rel);
        if found {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }
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

    fn known(paths: &[&str]) -> Vec<ScannedEntry> {
        paths
            .iter()
            .map(|path| ScannedEntry {
                entry: FileEntry {
                    path: path.to_string(),
                    kind: EntryKind::File,
                    size: 0,
                    mtime_ns: 0,
                    attributes: Attributes::default(),
                    chunks: vec![],
                    file_hash: hash_bytes(b""),
                },
                file_id: None,
            })
            .collect()
    }

    #[test]
    fn lookups_find_entries_in_and_out_of_walk_order() {
        let prev = known(&["a", "a/b", "a/c", "a b", "z"]);
        let mut cursor = Cursor::default();
        let mut found = |rel: &str| cursor.find(&prev, rel).map(|i| prev[i].entry.path.clone());
        // In walk order, with paths the index does not know in between.
        assert_eq!(found("a").as_deref(), Some("a"));
        assert_eq!(found("a/a"), None);
        assert_eq!(found("a/c").as_deref(), Some("a/c"));
        assert_eq!(found("a b").as_deref(), Some("a b"));
        // Out of order: falls back to searching, still right.
        assert_eq!(found("a/b").as_deref(), Some("a/b"));
        assert_eq!(found("z").as_deref(), Some("z"));
        assert_eq!(found("a").as_deref(), Some("a"));
        assert_eq!(found("y"), None);
    }
}
