//! Walking a root (stat only) and reading files so that a half-written file is never described.
//!
//! The walk lists directories with `read_dir` and stats each entry through its directory
//! (`DirEntry::metadata`: `statx`/`fstatat` relative to the open directory on Linux, the
//! listing's own data on Windows) rather than by its full path, which would look every
//! component up again. Directories are listed on up to one thread per core, ahead of the
//! consumer, which still gets every entry in walk order (parents before children).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::chunk::{
    chunk_reader_with_progress, hash_reader_with_progress, rechunk_reader_with_progress,
};
use crate::diff::TreeKey;
use crate::fsmeta::{file_id_from, file_id_with, link_target_inside};
use crate::{
    attributes_of, hash_bytes, mtime_ns, to_os_path, Attributes, ChunkRef, Chunked, EntryKind,
    Excludes, FileEntry, FileId, Hash, ScanProblem, TreeError,
};

/// Called after a file's content was read and before it is stat'ed again (a testing aid).
pub(crate) type AfterReadHook = Box<dyn Fn(&Path) + Send + Sync>;

pub(crate) const CHANGED_WHILE_READ: &str = "changed while being read; will retry";

/// What a walked entry is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ItemKind {
    Dir,
    File,
    Symlink { target: String },
}

/// One entry as seen by `stat`: everything but a file's content and its OS path (rebuilt from
/// the root and `rel` for the few files that are read, see [`Stat::located`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stat {
    pub rel: String,
    pub kind: ItemKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub attributes: Attributes,
    pub file_id: Option<FileId>,
}

impl Stat {
    /// The entry for this item with the whole-file hash `file_hash` and no chunk list: enough
    /// for [`crate::compare`], not for a peer (which needs the chunks).
    pub fn hashed_entry(&self, file_hash: Hash) -> FileEntry {
        FileEntry {
            file_hash,
            ..self.entry(None)
        }
    }

    /// The wire entry for this item; `content` is required for files and ignored otherwise.
    pub fn entry(&self, content: Option<&Chunked>) -> FileEntry {
        let (kind, chunks, file_hash) = match (&self.kind, content) {
            (ItemKind::File, Some(c)) => (EntryKind::File, c.chunks.clone(), c.file_hash),
            (ItemKind::File, None) => (EntryKind::File, Vec::new(), hash_bytes(b"")),
            (ItemKind::Dir, _) => (EntryKind::Dir, Vec::new(), hash_bytes(b"")),
            (ItemKind::Symlink { target }, _) => (
                EntryKind::Symlink {
                    target: target.clone(),
                },
                Vec::new(),
                hash_bytes(b""),
            ),
        };
        FileEntry {
            path: self.rel.clone(),
            kind,
            size: if self.kind == ItemKind::File {
                self.size
            } else {
                0
            },
            mtime_ns: self.mtime_ns,
            attributes: self.attributes,
            chunks,
            file_hash,
        }
    }

    /// [`Stat::entry`] with no content (a file's chunks and hash are filled in later), taking
    /// the path rather than copying it.
    pub fn into_entry(self) -> FileEntry {
        let (kind, size) = match self.kind {
            ItemKind::File => (EntryKind::File, self.size),
            ItemKind::Dir => (EntryKind::Dir, 0),
            ItemKind::Symlink { target } => (EntryKind::Symlink { target }, 0),
        };
        FileEntry {
            path: self.rel,
            kind,
            size,
            mtime_ns: self.mtime_ns,
            attributes: self.attributes,
            chunks: Vec::new(),
            file_hash: hash_bytes(b""),
        }
    }

    /// This entry with its OS path under `root`: what reading the file needs.
    pub fn located(self, root: &Path) -> WalkItem {
        WalkItem {
            os_path: to_os_path(root, &self.rel),
            stat: self,
        }
    }
}

/// A [`Stat`] together with the OS path the entry was found at.
#[derive(Clone, Debug)]
pub(crate) struct WalkItem {
    pub stat: Stat,
    pub os_path: PathBuf,
}

impl std::ops::Deref for WalkItem {
    type Target = Stat;

    fn deref(&self) -> &Stat {
        &self.stat
    }
}

/// The result of walking a root.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Every entry that can be described, in walk order (parents before children).
    pub items: Vec<WalkItem>,
    pub problems: Vec<ScanProblem>,
    /// Wire paths that could not be looked at (with everything below them): what is known about
    /// them from before must be kept, not taken as deleted.
    pub unseen: Vec<String>,
}

/// What [`walk_each`] reports, entry by entry.
#[derive(Debug)]
pub(crate) enum Walked {
    /// An entry that can be described.
    Item(Stat),
    /// Something left out; the reason says whether for good ("skipped") or not ("will retry").
    Problem(ScanProblem),
    /// The wire path `path`, with everything below it, could not be looked at: what is known
    /// about it must be kept, not taken as deleted.
    Unseen(ScanProblem),
}

/// Fails unless `root` is an existing directory (a link to one is fine).
pub(crate) fn check_root(root: &Path) -> Result<(), TreeError> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(TreeError::RootNotDir {
            path: root.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TreeError::RootMissing {
            path: root.to_path_buf(),
        }),
        Err(e) => Err(TreeError::io(root, e)),
    }
}

/// Walks `root` without following links, skipping excluded entries (and not descending into
/// excluded directories). With `check_names`, names a Windows receiver could not hold are skipped
/// and reported. Fails only when the root itself cannot be read.
pub(crate) fn walk(root: &Path, excludes: &Excludes, check_names: bool) -> Result<Walk, TreeError> {
    walk_each(root, excludes, check_names, |walked| {
        let mut walk = Walk::default();
        for next in walked {
            match next {
                Walked::Item(stat) => walk.items.push(stat.located(root)),
                Walked::Problem(problem) => walk.problems.push(problem),
                Walked::Unseen(problem) => {
                    walk.unseen.push(problem.path.clone());
                    walk.problems.push(problem);
                }
            }
        }
        walk
    })
}

/// Walks `root` like [`walk`], handing every entry to `consume` as it comes, in
/// [`compare_paths`](crate::compare_paths) order (a directory right before its content), so
/// that the caller need not hold the whole walk. Directories are listed and their entries
/// stat'ed ahead of `consume` on the other cores, up to [`WALK_AHEAD`] entries; that starts
/// before `consume` is called, so whatever `consume` does first (say, load the index) overlaps
/// with the walk. Fails only when the root itself cannot be read.
pub(crate) fn walk_each<T>(
    root: &Path,
    excludes: &Excludes,
    check_names: bool,
    consume: impl FnOnce(&mut dyn Iterator<Item = Walked>) -> T,
) -> Result<T, TreeError> {
    walk_each_ahead(root, excludes, check_names, WALK_AHEAD, consume)
}

/// [`walk_each`] with at most `ahead` entries listed ahead of `consume`.
fn walk_each_ahead<T>(
    root: &Path,
    excludes: &Excludes,
    check_names: bool,
    ahead: usize,
    consume: impl FnOnce(&mut dyn Iterator<Item = Walked>) -> T,
) -> Result<T, TreeError> {
    check_root(root)?;
    let rules = Rules {
        excludes,
        check_names,
    };
    let ahead = Ahead::new(ahead);
    let top = list_dir(root, "", &rules).map_err(|e| TreeError::io(root, e))?;
    std::thread::scope(|scope| {
        // Stops the helpers however this scope is left (a panic in `consume` included), so that
        // joining them cannot hang.
        let _stop = StopOnDrop(&ahead);
        ahead.queue_subdirs(&mut ahead.lock(), &top);
        for _ in 1..walk_threads() {
            scope.spawn(|| ahead.help(&rules));
        }
        let mut entries = DepthFirst {
            ahead: &ahead,
            rules: &rules,
            stack: vec![top.into_iter()],
            pending: None,
        };
        Ok(consume(&mut entries))
    })
}

/// Entries listed ahead of the consumer at most (about 200 bytes each, with their path): a few
/// dozen directories of a thousand files keep every listing thread busy, and a scan's memory
/// should go to the tree it describes.
const WALK_AHEAD: usize = 1 << 15;

/// Threads that list directories, the consumer's included: stat is cheap, beyond a few threads
/// the directory locks of the file system are the limit.
const MAX_WALK_THREADS: usize = 4;

fn walk_threads() -> usize {
    crate::parallel::cores().clamp(1, MAX_WALK_THREADS)
}

/// What decides whether an entry is reported.
struct Rules<'a> {
    excludes: &'a Excludes,
    check_names: bool,
}

/// One entry of a directory listing, ready to be reported.
#[derive(Debug)]
struct Listed {
    walked: Walked,
    /// For a directory to descend into: its OS path.
    descend: Option<PathBuf>,
}

impl Listed {
    fn report(walked: Walked) -> Listed {
        Listed {
            walked,
            descend: None,
        }
    }
}

type Listing = std::io::Result<Vec<Listed>>;

/// Lists the directory `dir` (wire path `dir_rel`, empty for the root) in name order and
/// describes each entry, stat'ed through the open directory rather than by full path. A
/// directory that cannot be read in full fails as a whole: what is known below it is kept.
fn list_dir(dir: &Path, dir_rel: &str, rules: &Rules) -> Listing {
    let mut named: Vec<(OsString, std::fs::DirEntry)> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| (e.file_name(), e)))
        .collect::<std::io::Result<_>>()?;
    named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(named
        .into_iter()
        .filter_map(|(name, entry)| list_entry(dir, dir_rel, &name, &entry, rules))
        .collect())
}

/// Describes one entry of `dir`, or `None` when it is excluded.
fn list_entry(
    dir: &Path,
    dir_rel: &str,
    name: &OsStr,
    entry: &std::fs::DirEntry,
    rules: &Rules,
) -> Option<Listed> {
    let Some(name_utf8) = name.to_str() else {
        return Some(Listed::report(Walked::Problem(ScanProblem {
            path: dir.join(name).display().to_string(),
            reason: "name is not valid Unicode; skipped".to_string(),
        })));
    };
    let rel = if dir_rel.is_empty() {
        name_utf8.to_string()
    } else {
        let mut rel = String::with_capacity(dir_rel.len() + 1 + name_utf8.len());
        rel.push_str(dir_rel);
        rel.push('/');
        rel.push_str(name_utf8);
        rel
    };
    if rules.excludes.is_excluded(&rel) {
        return None;
    }
    if rules.check_names {
        if let Err(e) = validate_child(&rel, name_utf8) {
            return Some(Listed::report(Walked::Problem(ScanProblem {
                path: rel,
                reason: format!("name cannot be replicated ({e}); skipped"),
            })));
        }
    }
    let meta = match entry.metadata() {
        Ok(meta) => meta,
        Err(err) => {
            return Some(Listed::report(Walked::Unseen(ScanProblem {
                path: rel,
                reason: format!("cannot read: {err}; will retry"),
            })))
        }
    };
    match describe(rel, &meta, || dir.join(name)) {
        Ok(stat) => {
            let descend = (stat.kind == ItemKind::Dir).then(|| dir.join(name));
            Some(Listed {
                walked: Walked::Item(stat),
                descend,
            })
        }
        Err(problem) => Some(Listed::report(Walked::Problem(problem))),
    }
}

/// [`swrepl_proto::validate_path`] of `rel`, which is `name` below a directory whose path passed
/// it already: only what the name adds is checked (its component and the total length), not
/// every component above it again.
fn validate_child(rel: &str, name: &str) -> Result<(), swrepl_proto::PathError> {
    if rel.len() > swrepl_proto::limits::MAX_PATH_LEN {
        return Err(swrepl_proto::PathError::TooLong);
    }
    swrepl_proto::validate_path(name)
}

/// Directories listed ahead of the consumer, shared by the listing threads.
struct Ahead {
    state: Mutex<AheadState>,
    /// Signalled whenever `state` changed.
    changed: Condvar,
    /// Entries held in `listed` at most, before helpers wait for the consumer.
    limit: usize,
}

#[derive(Default)]
struct AheadState {
    /// Directories found and not listed yet, in walk order: the first is the one the consumer
    /// reaches first.
    queued: BTreeMap<TreeKey, PathBuf>,
    /// Directories a thread is listing now.
    claimed: HashSet<String>,
    /// Listings the consumer has not reached yet, by wire path.
    listed: HashMap<String, Listing>,
    /// Entries in `listed`.
    held: usize,
    /// The consumer is gone: helpers stop.
    stop: bool,
}

fn listing_len(listing: &Listing) -> usize {
    listing.as_ref().map_or(0, Vec::len)
}

impl Ahead {
    fn new(limit: usize) -> Ahead {
        Ahead {
            state: Mutex::new(AheadState::default()),
            changed: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, AheadState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, AheadState>) -> MutexGuard<'a, AheadState> {
        self.changed
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues the directories `listing` descends into, so that any thread may list them.
    fn queue_subdirs(&self, state: &mut AheadState, entries: &[Listed]) {
        let mut queued_any = false;
        for listed in entries {
            if let (Walked::Item(stat), Some(path)) = (&listed.walked, &listed.descend) {
                state.queued.insert(TreeKey(stat.rel.clone()), path.clone());
                queued_any = true;
            }
        }
        if queued_any {
            self.changed.notify_all();
        }
    }

    /// Claims the first queued directory when there is room ahead, lists it with the lock
    /// released and stores the listing. Also returns false when there was nothing to do.
    fn list_one_ahead<'a>(
        &'a self,
        mut state: MutexGuard<'a, AheadState>,
        rules: &Rules,
    ) -> (MutexGuard<'a, AheadState>, bool) {
        if state.held >= self.limit {
            return (state, false);
        }
        let Some((TreeKey(rel), path)) = state.queued.pop_first() else {
            return (state, false);
        };
        state.claimed.insert(rel.clone());
        drop(state);
        let mut unwinding = ClaimGuard {
            ahead: self,
            rel: Some(&rel),
        };
        let listing = list_dir(&path, &rel, rules);
        unwinding.rel = None;
        drop(unwinding);
        let mut state = self.lock();
        state.claimed.remove(&rel);
        if let Ok(entries) = &listing {
            self.queue_subdirs(&mut state, entries);
        }
        state.held += listing_len(&listing);
        state.listed.insert(rel, listing);
        self.changed.notify_all();
        (state, true)
    }

    /// A helper thread: lists directories ahead of the consumer until it is gone.
    fn help(&self, rules: &Rules) {
        let mut state = self.lock();
        while !state.stop {
            let (guard, listed) = self.list_one_ahead(state, rules);
            state = if listed { guard } else { self.wait(guard) };
        }
    }

    /// The listing of directory `rel` (at `path`), which the consumer reached: listed ahead
    /// already, or listed now. While another thread lists it, this one lists the next
    /// directories rather than wait.
    fn take(&self, rel: &str, path: &Path, rules: &Rules) -> Listing {
        let mut state = self.lock();
        loop {
            if let Some(listing) = state.listed.remove(rel) {
                state.held -= listing_len(&listing);
                self.changed.notify_all();
                return listing;
            }
            if !state.claimed.contains(rel) {
                state.queued.remove(&TreeKey(rel.to_string()));
                drop(state);
                let listing = list_dir(path, rel, rules);
                if let Ok(entries) = &listing {
                    self.queue_subdirs(&mut self.lock(), entries);
                }
                return listing;
            }
            let (guard, listed) = self.list_one_ahead(state, rules);
            state = if listed { guard } else { self.wait(guard) };
        }
    }
}

/// Dropped only when listing a claimed directory panicked: stores a failed listing in its
/// place, so that the consumer waiting for it reports the directory unseen instead of waiting
/// forever (the scope then re-raises the panic).
struct ClaimGuard<'a> {
    ahead: &'a Ahead,
    rel: Option<&'a str>,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        let Some(rel) = self.rel.take() else {
            return;
        };
        let mut state = self.ahead.lock();
        state.claimed.remove(rel);
        state.listed.insert(
            rel.to_string(),
            Err(std::io::Error::other(
                "internal error: the listing thread failed",
            )),
        );
        self.ahead.changed.notify_all();
    }
}

/// Tells the helpers to stop when dropped.
struct StopOnDrop<'a>(&'a Ahead);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.changed.notify_all();
    }
}

/// The consumer's side of [`walk_each`]: every entry in walk order.
struct DepthFirst<'a> {
    ahead: &'a Ahead,
    rules: &'a Rules<'a>,
    /// The listings being reported, the innermost directory last.
    stack: Vec<std::vec::IntoIter<Listed>>,
    /// Reported right after the directory it is about (which could not be listed).
    pending: Option<Walked>,
}

impl Iterator for DepthFirst<'_> {
    type Item = Walked;

    fn next(&mut self) -> Option<Walked> {
        if let Some(pending) = self.pending.take() {
            return Some(pending);
        }
        loop {
            let listed = match self.stack.last_mut()?.next() {
                Some(listed) => listed,
                None => {
                    self.stack.pop();
                    continue;
                }
            };
            if let (Walked::Item(stat), Some(path)) = (&listed.walked, &listed.descend) {
                match self.ahead.take(&stat.rel, path, self.rules) {
                    Ok(entries) => self.stack.push(entries.into_iter()),
                    Err(err) => {
                        self.pending = Some(Walked::Unseen(ScanProblem {
                            path: stat.rel.clone(),
                            reason: format!("cannot read: {err}; will retry"),
                        }))
                    }
                }
            }
            return Some(listed.walked);
        }
    }
}

/// Describes the entry `rel` from its `lstat` metadata, or says why it cannot be replicated;
/// `os_path` gives its OS path, needed only for a link's target (and on Windows its file id).
fn describe(
    rel: String,
    meta: &Metadata,
    os_path: impl Fn() -> PathBuf,
) -> Result<Stat, ScanProblem> {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        let target = std::fs::read_link(os_path()).map_err(|e| ScanProblem {
            path: rel.clone(),
            reason: format!("cannot read link: {e}; will retry"),
        })?;
        match link_target_inside(&rel, &target) {
            Some(target) => ItemKind::Symlink { target },
            None => {
                return Err(ScanProblem {
                    path: rel,
                    reason: format!("link to {} leaves the root; skipped", target.display()),
                })
            }
        }
    } else if file_type.is_dir() {
        ItemKind::Dir
    } else if file_type.is_file() {
        ItemKind::File
    } else {
        return Err(ScanProblem {
            path: rel,
            reason: "not a regular file, directory or link; skipped".to_string(),
        });
    };
    Ok(Stat {
        file_id: file_id_with(meta, os_path),
        kind,
        size: meta.len(),
        mtime_ns: mtime_ns(meta),
        attributes: attributes_of(meta),
        rel,
    })
}

/// Describes the entry at `os_path` (wire path `rel`) from its `lstat` metadata, or says why it
/// cannot be replicated.
pub(crate) fn stat_item(
    rel: String,
    os_path: &Path,
    meta: &Metadata,
) -> Result<WalkItem, ScanProblem> {
    let stat = describe(rel, meta, || os_path.to_path_buf())?;
    Ok(WalkItem {
        stat,
        os_path: os_path.to_path_buf(),
    })
}

/// Why reading a file did not give a usable description.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// Size, time or identity moved while it was read: the content read may be half-written.
    Changed,
    /// Another process holds the file (see [`crate::is_locked_error`]): retried with backoff.
    Locked(std::io::Error),
    /// The file could not be read (permissions, gone, an I/O error).
    Unreadable(std::io::Error),
}

impl ReadFailure {
    /// Classifies an error from opening or reading a file.
    fn from_io(error: std::io::Error) -> ReadFailure {
        if crate::is_locked_error(&error) {
            ReadFailure::Locked(error)
        } else {
            ReadFailure::Unreadable(error)
        }
    }
}

impl ReadFailure {
    pub fn reason(&self) -> String {
        match self {
            ReadFailure::Changed => CHANGED_WHILE_READ.to_string(),
            ReadFailure::Locked(e) => {
                format!("locked by another process ({e}); will retry")
            }
            ReadFailure::Unreadable(e) => format!("cannot read: {e}; will retry"),
        }
    }
}

/// Reads and chunks the file `item` describes, then checks with a second `stat` that it did not
/// change in the meantime, so that content read mid-write is never described.
pub(crate) fn read_stable(
    item: &WalkItem,
    after_read: Option<&AfterReadHook>,
    progress: &mut dyn FnMut(u64),
) -> Result<Chunked, ReadFailure> {
    read_checked(item, after_read, |file| {
        let chunked = chunk_reader_with_progress(file, progress)?;
        let size = chunked.size;
        Ok((chunked, size))
    })
}

/// Like [`read_stable`], for a file whose content changed since it was chunked into `previous`
/// (its chunk list and segment values from the index): the old chunks still there are confirmed
/// instead of scanned for (see [`crate::rechunk_file`]); the result is the same.
pub(crate) fn read_stable_reusing(
    item: &WalkItem,
    previous: &[ChunkRef],
    previous_segments: &[Hash],
    after_read: Option<&AfterReadHook>,
    progress: &mut dyn FnMut(u64),
) -> Result<Chunked, ReadFailure> {
    read_checked(item, after_read, |file| {
        let chunked = rechunk_reader_with_progress(file, previous, previous_segments, progress)?;
        let size = chunked.size;
        Ok((chunked, size))
    })
}

/// Like [`read_stable`] but computes only the whole-file hash (no chunking): for local
/// comparisons, which look at size and hash alone. Returns the hash.
pub(crate) fn hash_stable(
    item: &WalkItem,
    progress: &mut dyn FnMut(u64),
) -> Result<Hash, ReadFailure> {
    read_checked(item, None, |file| {
        hash_reader_with_progress(file, item.size, progress)
    })
}

/// Opens the file `item` describes, lets `read` consume it (returning its result and the number
/// of bytes it read), then checks with a second `stat` that the file did not change meanwhile.
fn read_checked<T>(
    item: &WalkItem,
    after_read: Option<&AfterReadHook>,
    read: impl FnOnce(std::fs::File) -> std::io::Result<(T, u64)>,
) -> Result<T, ReadFailure> {
    let file = std::fs::File::open(&item.os_path).map_err(ReadFailure::from_io)?;
    let (content, bytes_read) = read(file).map_err(ReadFailure::from_io)?;
    if let Some(hook) = after_read {
        hook(&item.os_path);
    }
    let after = match std::fs::symlink_metadata(&item.os_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadFailure::Changed),
        Err(e) => return Err(ReadFailure::Unreadable(e)),
    };
    let unchanged = after.is_file()
        && after.len() == item.size
        && bytes_read == item.size
        && mtime_ns(&after) == item.mtime_ns
        && file_id_from(&item.os_path, &after) == item.file_id;
    if unchanged {
        Ok(content)
    } else {
        Err(ReadFailure::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare_paths;

    /// Every wire path below `dir`, listed the plain way (recursion, full-path stat).
    fn reference_listing(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(crate::to_wire_path(root, &path).unwrap());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                reference_listing(root, &path, out);
            }
        }
    }

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..12 {
            for e in 0..(d % 4) {
                let sub = dir.path().join(format!("d{d:02}/e {e}/f.{e}"));
                std::fs::create_dir_all(&sub).unwrap();
                std::fs::write(sub.join("x"), b"x").unwrap();
            }
            std::fs::create_dir_all(dir.path().join(format!("d{d:02}"))).unwrap();
            std::fs::write(dir.path().join(format!("d{d:02}.txt")), vec![7; d]).unwrap();
            std::fs::write(dir.path().join(format!("d{d:02} a")), b"").unwrap();
        }
        dir
    }

    #[test]
    fn every_entry_comes_once_in_path_order_however_far_ahead_the_walk_runs() {
        let tree = sample_tree();
        let root = tree.path();
        let mut expected = Vec::new();
        reference_listing(root, root, &mut expected);
        expected.sort_by(|a, b| compare_paths(a, b));
        let excludes = Excludes::new(&[], true).unwrap();
        for ahead in [0, 1, 3, WALK_AHEAD] {
            let walked = walk_each_ahead(root, &excludes, true, ahead, |walked| {
                walked
                    .map(|w| match w {
                        Walked::Item(stat) => stat.rel,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();
            assert_eq!(walked, expected, "ahead {ahead}");
        }
    }

    #[test]
    fn a_consumer_that_stops_early_ends_the_walk() {
        let tree = sample_tree();
        let excludes = Excludes::new(&[], true).unwrap();
        for ahead in [0, 1, WALK_AHEAD] {
            let first = walk_each_ahead(tree.path(), &excludes, true, ahead, |walked| {
                walked.take(3).count()
            })
            .unwrap();
            assert_eq!(first, 3);
        }
    }

    #[test]
    fn excluded_directories_are_not_descended() {
        let tree = sample_tree();
        let excludes = Excludes::new(&["d01/*".to_string(), "d03".to_string()], true).unwrap();
        let walked = walk(tree.path(), &excludes, true).unwrap();
        let paths: Vec<&str> = walked.items.iter().map(|i| i.rel.as_str()).collect();
        assert!(paths.contains(&"d01") && !paths.iter().any(|p| p.starts_with("d01/")));
        assert!(!paths.iter().any(|p| *p == "d03" || p.starts_with("d03/")));
        assert!(paths.contains(&"d02/e 1/f.1/x"));
        assert!(walked.problems.is_empty() && walked.unseen.is_empty());
        let item = walked
            .items
            .iter()
            .find(|i| i.rel == "d02/e 1/f.1/x")
            .unwrap();
        assert_eq!(
            item.os_path,
            tree.path().join("d02").join("e 1").join("f.1").join("x")
        );
        assert_eq!((item.kind.clone(), item.size), (ItemKind::File, 1));
    }

    proptest::proptest! {
        #[test]
        fn checking_a_name_below_a_valid_directory_is_checking_the_whole_path(
            parent in "[a-z]{1,8}(/[a-z .]{1,8}){0,3}",
            name in "[a-zA-Z0-9 .:<|*?\\\x01]{1,12}|(?i:con|aux|com1|lpt9)(\\.[a-z]{1,3})?",
            long in 0usize..2,
        ) {
            let parent = if long == 1 { format!("{parent}/{}", "p".repeat(200)).repeat(19) } else { parent };
            proptest::prop_assume!(swrepl_proto::validate_path(&parent).is_ok());
            let rel = format!("{parent}/{name}");
            proptest::prop_assert_eq!(validate_child(&rel, &name), swrepl_proto::validate_path(&rel));
        }
    }
}
