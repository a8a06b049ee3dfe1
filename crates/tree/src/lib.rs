//! # swrepl-tree — what is in a tree, what changed, and whether two trees are equal
//!
//! This crate owns everything swrepl knows about files on one machine. It does no networking and
//! knows nothing about sessions; the sync crate drives it.
//!
//! Public API:
//! - [`Excludes`]: root-relative globs, matched case-insensitively (as on Windows), with the
//!   default excludes ([`DEFAULT_EXCLUDES`]: the SwSQL data folder) and swrepl's own state
//!   directory ([`STATE_DIR_NAME`], always excluded).
//! - [`chunk_reader`] / [`chunk_file`] / [`hash_bytes`]: content-defined chunking (fastcdc v2020,
//!   [`CHUNK_MIN`]/[`CHUNK_AVG`]/[`CHUNK_MAX`]) with blake3 hashes, streaming in bounded memory;
//!   [`rechunk_file`] gives the same result for a changed file from what chunking it gave
//!   before ([`Chunked`]: chunk list and segment values), confirming the old chunks still there
//!   instead of scanning for cuts, without hashing them inside unchanged segments; [`hash_file_exact`]
//!   hashes an open file on all cores when it is at least [`PARALLEL_MIN_LEN`].
//! - [`Index`]: the persistent sqlite index (path → entry, chunks, file id; chunk hash → where
//!   those bytes live locally), so an unchanged file is never reread. A damaged index can be
//!   recreated ([`Index::open_or_recreate`]): it is a cache, never the only copy of anything.
//!   [`Index::track_chunks`] keeps an in-memory filter so that [`Index::has_chunk`] answers "not
//!   here" without a query; [`Index::files_starting_with`] finds a file's content wherever it
//!   moved ([`Index::locate_first_chunks_only`] keeps just what that needs);
//!   [`Index::segments`] holds a large file's segment values for its next rechunk.
//! - [`Scanner`]: walks a root, describes it as [`FileEntry`]s and reports the [`Change`]s since
//!   the previous scan, renames (by file identity, [`FileId`]) included; [`Scanner::scan_with`]
//!   lists only the renames ([`ChangeDetail`]) for a caller that sends the whole tree anyway.
//! - Locked files (Windows sharing/lock violations): kept at their last known state, retried
//!   with backoff ([`locked_retry_delay`]) and reported in [`ScanOutcome::locked`] /
//!   [`Scanner::locked_files`]; [`is_locked_error`] says which OS errors mean "locked".
//! - [`list_tree`], [`compare`], [`verify_trees`]: hash whole trees in parallel and compare them.
//! - Helpers: [`to_os_path`], [`to_wire_path`], [`compare_paths`], [`file_id_of`],
//!   [`file_id_from`], [`attributes_of`], [`mtime_ns`].
//!
//! Wire paths are relative, `/`-separated UTF-8 strings. Throughout the crate, trees are listed in
//! [`compare_paths`] order, in which a directory always comes before everything below it.

mod chunk;
mod diff;
mod excludes;
mod fsmeta;
mod index;
mod locked;
mod parallel;
mod scan;
mod verify;
mod walk;

use std::path::PathBuf;

pub use chunk::{
    chunk_file, chunk_reader, hash_bytes, hash_file_exact, rechunk_file, Chunked, PARALLEL_MIN_LEN,
};
pub use excludes::Excludes;
pub use fsmeta::{
    attributes_of, compare_paths, file_id_from, file_id_of, is_same_or_below, mtime_ns, to_os_path,
    to_wire_path, FileId,
};
pub use index::{ChunkLocation, Index};
pub use locked::{
    is_locked_error, locked_retry_delay, LockedFile, LOCKED_RETRY_FIRST, LOCKED_RETRY_MAX,
};
pub use scan::{Change, ChangeDetail, ScanOutcome, ScanProblem, ScannedEntry, Scanner};
pub use swrepl_proto::{Attributes, ChunkRef, EntryKind, FileEntry, Hash};
pub use verify::{compare, list_tree, verify_trees, Difference, TreeListing, VerifySummary};

/// Name of swrepl's own state directory inside a root (index, archive, temporaries). It is always
/// excluded: swrepl never replicates or verifies its own state.
pub const STATE_DIR_NAME: &str = ".swrepl";

/// Excludes applied unless the operator drops them (`--no-default-excludes`): the SwSQL data
/// folder, which MySQL replication carries instead, and swrepl's state directory. Each one also
/// excludes everything below it, in any case spelling.
pub const DEFAULT_EXCLUDES: &[&str] = &["Core Services/SwSqlServer/data", STATE_DIR_NAME];

/// Smallest chunk, in bytes (except a file's last chunk).
pub const CHUNK_MIN: u32 = 16 * 1024;
/// Average chunk size the boundaries aim for, in bytes.
pub const CHUNK_AVG: u32 = 64 * 1024;
/// Largest chunk, in bytes.
pub const CHUNK_MAX: u32 = 256 * 1024;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("root {path} does not exist; check the configured root (a missing root is never taken to mean 'everything was deleted')")]
    RootMissing { path: PathBuf },
    #[error("root {path} is not a directory; point the root at the folder to replicate")]
    RootNotDir { path: PathBuf },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index database error: {0}; if it persists, stop swrepl and delete the index file (it is rebuilt by the next scan)")]
    Index(#[from] rusqlite::Error),
    #[error("index database is damaged ({reason}); stop swrepl and delete the index file (it is rebuilt by the next scan)")]
    IndexCorrupt { reason: String },
    #[error("index database has schema version {found}, this swrepl understands up to {supported}; upgrade swrepl or delete the index file")]
    IndexTooNew { found: i64, supported: i64 },
    #[error("bad exclude glob {glob:?}: {reason}")]
    BadExclude { glob: String, reason: String },
    #[error("invalid tree path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("{path} is locked by another process; the Slave keeps its previous version and it is retried with backoff")]
    Locked { path: String },
    #[error("{path} changed while being read; it will be read again later")]
    ChangedWhileRead { path: String },
    #[error("{path} cannot be replicated: {reason}")]
    NotReplicable { path: String, reason: String },
}

impl TreeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> TreeError {
        TreeError::Io {
            path: path.into(),
            source,
        }
    }
}
