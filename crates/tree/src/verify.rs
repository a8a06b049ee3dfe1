//! Verification: hash whole trees (no index, every byte read) and compare them.

use std::collections::HashMap;
use std::path::Path;

use crate::fsmeta::is_same_or_below;
use crate::parallel::parallel_map_costliest_first;
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

/// Hashes both trees (the files of both in one parallel pool) and compares them.
///
/// Only whole-file hashes are computed (no chunking: the comparison looks at sizes and hashes
/// alone), reading each file in blocks that stay in cache and checking it did not change while
/// read. Both trees are walked at once, and only files that have a file of the same size at the
/// same path in the other tree are read: any other file differs whatever its content. Largest
/// files go first, each on all cores (see `chunk.rs`), so that no large file runs alone at the end.
pub fn verify_trees(
    a: &Path,
    b: &Path,
    excludes: &Excludes,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifySummary, TreeError> {
    let (walked_a, walked_b) = std::thread::scope(|scope| {
        let other = scope.spawn(|| walk(b, excludes, false));
        let walked_a = walk(a, excludes, false);
        let walked_b = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (walked_a, walked_b)
    });
    let (walked_a, walked_b) = (walked_a?, walked_b?);
    let walks = [&walked_a, &walked_b];
    let files = files_to_compare(&walked_a, &walked_b);
    let hashes = parallel_map_costliest_first(
        &files,
        |&(tree, i)| walks[tree].items[i].size,
        |&(tree, i)| hash_stable(&walks[tree].items[i], &mut |n| progress(n)),
    );
    let mut hashed: [Vec<Option<Result<Hash, ReadFailure>>>; 2] = walks.map(|w| {
        std::iter::repeat_with(|| None)
            .take(w.items.len())
            .collect()
    });
    for ((tree, i), hash) in files.into_iter().zip(hashes) {
        hashed[tree][i] = Some(hash);
    }
    let [hashed_a, hashed_b] = hashed;
    let listing_a = assemble_hashed(&walked_a, hashed_a);
    let listing_b = assemble_hashed(&walked_b, hashed_b);

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

/// The files of both walks whose content decides the comparison, as (0 for `a` or 1 for `b`,
/// index in that walk's items): those with a file of the same size at the same path in the
/// other tree.
fn files_to_compare(a: &Walk, b: &Walk) -> Vec<(usize, usize)> {
    let files_b: HashMap<&str, (usize, &WalkItem)> = b
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.kind == ItemKind::File)
        .map(|(i, item)| (item.rel.as_str(), (i, item)))
        .collect();
    let mut pairs = Vec::new();
    for (i, item) in a.items.iter().enumerate() {
        if item.kind != ItemKind::File {
            continue;
        }
        match files_b.get(item.rel.as_str()) {
            Some(&(j, other)) if other.size == item.size => {
                pairs.push((0, i));
                pairs.push((1, j));
            }
            _ => {}
        }
    }
    pairs
}

/// Chunks and hashes `files` in parallel: full entries, as a peer needs them.
fn chunk_files(
    files: &[&WalkItem],
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Result<Chunked, ReadFailure>> {
    parallel_map_costliest_first(
        files,
        |item| item.size,
        |item| read_stable(item, None, &mut |n| progress(n)),
    )
}

/// The listing of `walked` for [`compare`]: files carry their whole-file hash (`hashes` has one
/// slot per item) and no chunks. A file without a hash was not read (it differs from the other
/// tree by its presence or size alone, all that `compare` looks at then): its hash stays empty.
fn assemble_hashed(walked: &Walk, hashes: Vec<Option<Result<Hash, ReadFailure>>>) -> TreeListing {
    let mut listing = TreeListing {
        entries: Vec::with_capacity(walked.items.len()),
        problems: walked.problems.clone(),
    };
    for (item, hash) in walked.items.iter().zip(hashes) {
        if item.kind != ItemKind::File {
            listing.entries.push(item.entry(None));
            continue;
        }
        match hash {
            Some(Ok(hash)) => listing.entries.push(item.hashed_entry(hash)),
            Some(Err(failure)) => listing.problems.push(ScanProblem {
                path: item.rel.clone(),
                reason: failure.reason(),
            }),
            None => listing.entries.push(item.entry(None)),
        }
    }
    listing
        .entries
        .sort_by(|x, y| compare_paths(&x.path, &y.path));
    listing
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn only_files_of_equal_size_on_both_sides_are_read() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(a.path(), "same", b"0123456789");
        write(b.path(), "same", b"0123456789");
        write(a.path(), "d/edited", b"abcdefghij");
        write(b.path(), "d/edited", b"abcdefghiX");
        write(a.path(), "d/grown", b"12345");
        write(b.path(), "d/grown", b"123456");
        write(a.path(), "only_a", b"aaaaaaa");
        write(b.path(), "only_b", b"bbb");
        write(a.path(), "file_or_dir", b"ff");
        write(b.path(), "file_or_dir/inner", b"ii");
        let read = AtomicU64::new(0);
        let summary = verify_trees(
            a.path(),
            b.path(),
            &Excludes::new(&[], true).unwrap(),
            &|n| {
                read.fetch_add(n, Ordering::SeqCst);
            },
        )
        .unwrap();
        assert!(summary.problems.is_empty(), "{:?}", summary.problems);
        let found: Vec<String> = summary.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            found,
            [
                "content: d/edited",
                "size: d/grown (a 5, b 6)",
                "kind: file_or_dir",
                "extra: file_or_dir/inner",
                "missing: only_a",
                "extra: only_b",
            ]
        );
        // `same` and `d/edited`, on both sides; nothing else decides anything.
        assert_eq!(read.load(Ordering::SeqCst), 2 * (10 + 10));
        assert_eq!((summary.files, summary.bytes), (5, 10 + 10 + 5 + 7 + 2));
    }

    #[test]
    fn a_large_file_is_hashed_in_segments_and_compared() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let len = crate::chunk::PARALLEL_MIN_LEN as usize + 4097;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        write(a.path(), "big", &data);
        write(b.path(), "big", &data);
        write(a.path(), "big2", &data);
        let mut edited = data.clone();
        edited[len / 2] ^= 1;
        write(b.path(), "big2", &edited);
        let summary = verify_trees(
            a.path(),
            b.path(),
            &Excludes::new(&[], true).unwrap(),
            &|_| {},
        )
        .unwrap();
        assert!(summary.problems.is_empty(), "{:?}", summary.problems);
        assert_eq!(
            summary.differences,
            [Difference::Content {
                path: "big2".to_string()
            }]
        );
    }
}
