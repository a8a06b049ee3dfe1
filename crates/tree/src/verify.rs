//! Verification: hash whole trees (no index, every byte read) and compare them.

use std::path::Path;

use crate::fsmeta::is_same_or_below;
use crate::parallel::parallel_map;
use crate::walk::{hash_stable, read_stable, walk, ItemKind, ReadFailure, Walk, WalkItem};
use crate::{compare_paths, Chunked, EntryKind, Excludes, FileEntry, Hash, ScanProblem, TreeError};

/// One way in which tree B differs from tree A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// In A, not in B.
    Missing { path: String },
    /// In B, not in A.
    Extra { path: String },
    /// Same size (or both links), different content (or link target).
    Content { path: String },
    /// Files of different sizes.
    Size { path: String, a: u64, b: u64 },
    /// A file in one tree, a directory or link in the other (or any other kind mismatch).
    Kind { path: String },
}

impl Difference {
    pub fn path(&self) -> &str {
        match self {
            Difference::Missing { path }
            | Difference::Extra { path }
            | Difference::Content { path }
            | Difference::Size { path, .. }
            | Difference::Kind { path } => path,
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing { path } => write!(f, "missing: {path}"),
            Difference::Extra { path } => write!(f, "extra: {path}"),
            Difference::Content { path } => write!(f, "content: {path}"),
            Difference::Size { path, a, b } => write!(f, "size: {path} (a {a}, b {b})"),
            Difference::Kind { path } => write!(f, "kind: {path}"),
        }
    }
}

/// Every entry of a tree, fully hashed, in [`compare_paths`] order.
#[derive(Clone, Debug, Default)]
pub struct TreeListing {
    pub entries: Vec<FileEntry>,
    /// Entries that could not be described (unreadable, changed while read, links leaving the
    /// root, names that are not Unicode).
    pub problems: Vec<ScanProblem>,
}

/// The result of [`verify_trees`].
#[derive(Clone, Debug, Default)]
pub struct VerifySummary {
    /// Files in tree A.
    pub files: u64,
    /// Bytes in tree A's files.
    pub bytes: u64,
    pub differences: Vec<Difference>,
    /// Entries of either tree that could not be read; they are left out of the comparison, so
    /// an operator must treat a non-empty list as "not verified".
    pub problems: Vec<ScanProblem>,
}

/// Lists and hashes every file under `root` (in parallel, without the index). `progress` gets the
/// number of bytes hashed since its previous call.
pub fn list_tree(
    root: &Path,
    excludes: &Excludes,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<TreeListing, TreeError> {
    let walked = walk(root, excludes, false)?;
    let files: Vec<&WalkItem> = walked
        .items
        .iter()
        .filter(|i| i.kind == ItemKind::File)
        .collect();
    let mut contents = chunk_files(&files, progress).into_iter();
    Ok(assemble(&walked, &mut contents, |item, content| {
        item.entry(Some(content))
    }))
}

/// Hashes both trees (all files of both in one parallel pool) and compares them.
///
/// Only whole-file hashes are computed (no chunking: the comparison looks at sizes and hashes
/// alone), reading each file in large blocks and checking it did not change while read.
pub fn verify_trees(
    a: &Path,
    b: &Path,
    excludes: &Excludes,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifySummary, TreeError> {
    let walked_a = walk(a, excludes, false)?;
    let walked_b = walk(b, excludes, false)?;
    let files: Vec<&WalkItem> = walked_a
        .items
        .iter()
        .chain(&walked_b.items)
        .filter(|i| i.kind == ItemKind::File)
        .collect();
    let mut hashes = hash_files(&files, progress).into_iter();
    let hashed_entry = |item: &WalkItem, hash: &Hash| item.hashed_entry(*hash);
    let listing_a = assemble(&walked_a, &mut hashes, hashed_entry);
    let listing_b = assemble(&walked_b, &mut hashes, hashed_entry);

    let problems: Vec<ScanProblem> = listing_a
        .problems
        .into_iter()
        .chain(listing_b.problems)
        .collect();
    let differences = compare(&listing_a.entries, &listing_b.entries)
        .into_iter()
        .filter(|d| !problems.iter().any(|p| is_same_or_below(d.path(), &p.path)))
        .collect();
    let files_a = listing_a
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File);
    let (files, bytes) = files_a.fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.size));
    Ok(VerifySummary {
        files,
        bytes,
        differences,
        problems,
    })
}

/// Chunks and hashes `files` in parallel: full entries, as a peer needs them.
fn chunk_files(
    files: &[&WalkItem],
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Result<Chunked, ReadFailure>> {
    parallel_map(files, |item| read_stable(item, None, &mut |n| progress(n)))
}

/// Whole-file hashes of `files`, in parallel, without chunking.
fn hash_files(
    files: &[&WalkItem],
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Result<Hash, ReadFailure>> {
    parallel_map(files, |item| hash_stable(item, &mut |n| progress(n)))
}

/// The listing of `walked`, taking the content of its files, in order, from `contents`, and
/// building each file's entry with `file_entry`.
fn assemble<C>(
    walked: &Walk,
    contents: &mut impl Iterator<Item = Result<C, ReadFailure>>,
    file_entry: impl Fn(&WalkItem, &C) -> FileEntry,
) -> TreeListing {
    let mut listing = TreeListing {
        entries: Vec::new(),
        problems: walked.problems.clone(),
    };
    for item in &walked.items {
        if item.kind != ItemKind::File {
            listing.entries.push(item.entry(None));
            continue;
        }
        match contents.next() {
            Some(Ok(content)) => listing.entries.push(file_entry(item, &content)),
            Some(Err(failure)) => listing.problems.push(ScanProblem {
                path: item.rel.clone(),
                reason: failure.reason(),
            }),
            None => listing.problems.push(ScanProblem {
                path: item.rel.clone(),
                reason: "internal error: no hash result".to_string(),
            }),
        }
    }
    listing
        .entries
        .sort_by(|x, y| compare_paths(&x.path, &y.path));
    listing
}

/// The differences of tree `b` from tree `a`, in path order. Times and attributes are ignored;
/// directories are compared by presence, links by target, files by size and then content.
pub fn compare(a: &[FileEntry], b: &[FileEntry]) -> Vec<Difference> {
    let mut a: Vec<&FileEntry> = a.iter().collect();
    let mut b: Vec<&FileEntry> = b.iter().collect();
    a.sort_by(|x, y| compare_paths(&x.path, &y.path));
    b.sort_by(|x, y| compare_paths(&x.path, &y.path));
    let mut differences = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => compare_paths(&x.path, &y.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                differences.push(Difference::Missing {
                    path: a[i].path.clone(),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                differences.push(Difference::Extra {
                    path: b[j].path.clone(),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                differences.extend(compare_entries(a[i], b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    differences
}

fn compare_entries(a: &FileEntry, b: &FileEntry) -> Option<Difference> {
    let path = a.path.clone();
    match (&a.kind, &b.kind) {
        (EntryKind::Dir, EntryKind::Dir) => None,
        (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => {
            (x != y).then_some(Difference::Content { path })
        }
        (EntryKind::File, EntryKind::File) if a.size != b.size => Some(Difference::Size {
            path,
            a: a.size,
            b: b.size,
        }),
        (EntryKind::File, EntryKind::File) => {
            (a.file_hash != b.file_hash).then_some(Difference::Content { path })
        }
        _ => Some(Difference::Kind { path }),
    }
}
