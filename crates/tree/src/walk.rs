//! Walking a root (stat only) and reading files so that a half-written file is never described.

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::chunk::{chunk_reader_with_progress, hash_reader_with_progress};
use crate::fsmeta::{file_id_from, link_target_inside};
use crate::{
    attributes_of, hash_bytes, mtime_ns, to_wire_path, Attributes, Chunked, EntryKind, Excludes,
    FileEntry, FileId, Hash, ScanProblem, TreeError,
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

/// One entry as seen by `stat`: everything but a file's content.
#[derive(Clone, Debug)]
pub(crate) struct WalkItem {
    pub rel: String,
    pub os_path: PathBuf,
    pub kind: ItemKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub attributes: Attributes,
    pub file_id: Option<FileId>,
}

impl WalkItem {
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
    check_root(root)?;
    let mut walk = Walk::default();
    let mut entries = WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(next) = entries.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(err) => {
                if err.depth() == 0 {
                    let source = err
                        .into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("walk failed"));
                    return Err(TreeError::io(root, source));
                }
                record_unseen(
                    &mut walk,
                    root,
                    err.path(),
                    &format!("cannot read: {err}; will retry"),
                );
                continue;
            }
        };
        let is_dir = entry.file_type().is_dir();
        let Some(rel) = to_wire_path(root, entry.path()) else {
            walk.problems.push(ScanProblem {
                path: entry.path().display().to_string(),
                reason: "name is not valid Unicode; skipped".to_string(),
            });
            if is_dir {
                entries.skip_current_dir();
            }
            continue;
        };
        if excludes.is_excluded(&rel) {
            if is_dir {
                entries.skip_current_dir();
            }
            continue;
        }
        if check_names {
            if let Err(e) = swrepl_proto::validate_path(&rel) {
                walk.problems.push(ScanProblem {
                    path: rel,
                    reason: format!("name cannot be replicated ({e}); skipped"),
                });
                if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(err) => {
                if is_dir {
                    entries.skip_current_dir();
                }
                record_unseen(
                    &mut walk,
                    root,
                    Some(entry.path()),
                    &format!("cannot read: {err}; will retry"),
                );
                continue;
            }
        };
        match stat_item(rel, entry.path(), &meta) {
            Ok(item) => walk.items.push(item),
            Err(problem) => walk.problems.push(problem),
        }
    }
    Ok(walk)
}

fn record_unseen(walk: &mut Walk, root: &Path, path: Option<&Path>, reason: &str) {
    let rel = path.and_then(|p| to_wire_path(root, p));
    let shown = rel
        .clone()
        .or_else(|| path.map(|p| p.display().to_string()));
    walk.problems.push(ScanProblem {
        path: shown.unwrap_or_else(|| root.display().to_string()),
        reason: reason.to_string(),
    });
    if let Some(rel) = rel {
        walk.unseen.push(rel);
    }
}

/// Describes the entry at `os_path` (wire path `rel`) from its `lstat` metadata, or says why it
/// cannot be replicated.
pub(crate) fn stat_item(
    rel: String,
    os_path: &Path,
    meta: &Metadata,
) -> Result<WalkItem, ScanProblem> {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        let target = std::fs::read_link(os_path).map_err(|e| ScanProblem {
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
    Ok(WalkItem {
        file_id: file_id_from(os_path, meta),
        os_path: os_path.to_path_buf(),
        kind,
        size: meta.len(),
        mtime_ns: mtime_ns(meta),
        attributes: attributes_of(meta),
        rel,
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
