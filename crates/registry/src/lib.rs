//! # swrepl-registry — the HttpAliases registry keys: model, `.reg` files, backends, diff/apply
//!
//! Supportworks keeps its HTTP aliases in two registry keys ([`DEFAULT_KEYS`]). This crate reads
//! them, writes them, compares them and replicates them exactly, value types and all.
//!
//! Public API:
//! - Model: [`KeyPath`] (full path, compared case-insensitively as Windows does), [`Value`]
//!   (registry type number + raw bytes: every type, unknown ones included), [`Key`], [`Tree`],
//!   and [`Snapshot`] (the subtrees of a set of configured root keys).
//! - [`RegFile`]: the `.reg` format exactly as regedit writes it (UTF-16LE + BOM, CRLF, wrapped
//!   hex), read in UTF-16LE or UTF-8; errors name the line.
//! - [`RegistryBackend`]: `read` a snapshot, `apply` a change set all-or-nothing,
//!   `wait_for_change`. Implemented by [`RegFileBackend`] (a `.reg` file: the lab and tests) and,
//!   on Windows, `LiveRegistry` (the real registry, through `windows-registry`).
//! - [`diff`] → [`ChangeSet`] of [`Op`]s; [`Scope`] (the configured keys: nothing else is ever
//!   written); [`snapshot`] and [`apply_changes`] (scope check, archive of the previous state as
//!   a `.reg` file, then apply) — the two calls replication makes.
//! - [`wire`]: conversions to and from the wire types in `swrepl_proto::registry`.

mod backend;
mod changes;
#[cfg(windows)]
mod live;
mod model;
mod path;
mod regfile;
mod replicate;
pub mod wire;

use std::path::PathBuf;

pub use backend::{RegFileBackend, RegistryBackend};
pub use changes::{diff, ChangeSet, Op};
#[cfg(windows)]
pub use live::LiveRegistry;
pub use model::{kind, Key, NamedValue, Snapshot, Tree, Value};
pub use path::{fold, same_name, KeyPath};
pub use regfile::{encode, Encoding, Entry, RegFile, Section, HEADER};
pub use replicate::{
    apply_changes, archive_snapshot, default_roots, snapshot, ApplyOutcome, Scope, DEFAULT_KEYS,
};

/// Everything that can go wrong reading, comparing or writing registry keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad registry key path {path:?}: {reason}")]
    BadKeyPath { path: String, reason: String },
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("{message}")]
    Encoding { message: String },
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error("refused: the change touches key {path}, which is not one of the replicated keys ({allowed}); nothing was applied")]
    OutOfScope { path: String, allowed: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid registry data from the peer: {0}")]
    Wire(String),
    #[error("{0}")]
    Os(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
