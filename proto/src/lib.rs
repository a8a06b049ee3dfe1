//! # swrepl-proto — the swrepl wire protocol, sans-IO
//!
//! This crate owns everything two swrepl peers must agree on, and nothing else: no sockets, no
//! files, no clocks. It is pure data and checks, so it can be tested byte-for-byte against golden
//! vectors (`tests/golden.rs`) and fuzzed (`fuzz/`). The wire format is documented in `SPEC.md`.
//!
//! Public API:
//! - [`Message`] and the types it carries ([`FileEntry`], [`ChunkRef`], [`Hello`], …): every
//!   message of protocol version [`PROTOCOL_VERSION`].
//! - [`encode_frame`] / [`FrameDecoder`]: length-prefixed postcard frames with limits checked
//!   before any allocation.
//! - [`hello`], [`negotiate`], and the [`handshake`] helpers [`accept_hello`] /
//!   [`check_welcome`]: version and role negotiation.
//! - [`validate_message`], [`validate_entry`], [`validate_path`] and [`check_link_target`]: what
//!   a peer must check on every untrusted message before acting on it.
//! - [`ProtoError`] (with [`ProtoError::to_message`] for the `Error` frame that closes a
//!   connection) and [`PathError`].
//! - [`limits`]: the numbers every implementation must enforce.
//! - [`summary`]: tree summaries (bucket digests) that let a full pass skip what the receiver
//!   already has (protocol version 2).

pub mod frame;
pub mod handshake;
pub mod limits;
pub mod message;
pub mod path;
pub mod registry;
pub mod summary;
pub mod version;

pub use frame::{decode_message, encode_frame, encode_message, message_name, FrameDecoder};
pub use handshake::{accept_hello, check_welcome};
pub use message::*;
pub use path::{validate_path, PathError};
pub use version::{
    check_link_target, hello, negotiate, truncate_text, validate_entry, validate_message,
    MIN_VERSION, PROTOCOL_VERSION,
};

/// Everything that can be wrong with bytes or messages received from a peer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("bad magic in hello: the peer is not swrepl (check the address and port)")]
    BadMagic,
    #[error("no common protocol version: we speak {ours_min}..={ours_max}, peer speaks {theirs_min}..={theirs_max}; upgrade the older side")]
    VersionMismatch {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: PathError },
    #[error("limit exceeded: {0}")]
    Limit(String),
    #[error("peer speaks as {theirs:?}, but only {expected:?} may connect here: check which address each side uses")]
    RoleRejected { theirs: Role, expected: Vec<Role> },
}
