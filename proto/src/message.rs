//! Message types. Every enum is append-only: a new variant goes at the end, an existing
//! variant's fields never change within a protocol version (postcard encodes variants by index).

use serde::{Deserialize, Serialize};

/// A blake3 hash (32 bytes).
pub type Hash = [u8; 32];

/// A per-session sequence number, assigned by the sender to every change it sends (starting at 1).
pub type Seq = u64;

/// Magic bytes at the start of every `Hello`.
pub const MAGIC: [u8; 8] = *b"SWREPL\r\n";

/// Who is speaking on a connection.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Master's sender.
    Sender,
    /// The Slave's receiver.
    Receiver,
    /// A `swrepl verify --connect` client: asks for the receiver's tree and changes nothing.
    Verifier,
}

/// First frame on every connection, sent by the connecting side.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub magic: [u8; 8],
    /// Lowest protocol version the speaker understands.
    pub min_version: u16,
    /// Highest protocol version the speaker understands.
    pub max_version: u16,
    pub role: Role,
    /// Free text, e.g. `swrepl 0.1.0`; for logs only.
    pub software: String,
}

/// The accepting side's answer to `Hello`: the version both will speak.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    pub role: Role,
    pub software: String,
}

/// One content-defined chunk of a file: its blake3 hash and its length in bytes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// What kind of tree entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link whose target (relative, `/`-separated) resolves inside the root.
    Symlink {
        target: String,
    },
}

/// File attributes carried across platforms.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes {
    /// Unix permission bits (`mode & 0o7777`); 0 when unknown (a Windows sender).
    pub unix_mode: u32,
    /// Windows `FILE_ATTRIBUTE_*` bits swrepl carries: READONLY 0x1, HIDDEN 0x2, SYSTEM 0x4,
    /// ARCHIVE 0x20; 0 when unknown (a Unix sender).
    pub windows: u32,
}

/// One entry of a tree, as the sender describes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path with `/` separators; checked by [`crate::validate_path`] on receipt.
    pub path: String,
    pub kind: EntryKind,
    /// File size in bytes (0 for directories and links).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub attributes: Attributes,
    /// The file's chunks in order; their lengths sum to `size`. Empty for directories and links.
    pub chunks: Vec<ChunkRef>,
    /// blake3 of the whole content (of the empty string for directories and links).
    pub file_hash: Hash,
}

/// What the receiver may do with entries it holds that a full pass did not mention.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Remove nothing (deletes are held).
    Never,
    /// Remove extras only if they are at most this many per mille of the receiver's entries
    /// (the mass-delete guard); otherwise hold them all and say so in `PassDone`.
    UpToPermille(u16),
    /// Remove every extra (the operator confirmed a mass delete).
    All,
}

/// A service state reported by the Master in heartbeats.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Stopped,
    StartPending,
    StopPending,
    Paused,
    Unknown,
}

/// A named service and its state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
}

/// Liveness and progress, sent by both sides every few seconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Speaker's wall clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The monitored service on the Master, when the sender watches one.
    pub service: Option<ServiceStatus>,
}

/// Why a connection is being closed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No protocol version in common.
    VersionMismatch,
    /// A frame or message broke the protocol (bad order, unknown seq, over a limit).
    ProtocolViolation,
    /// The peer's role is not acceptable here (e.g. two senders to one receiver).
    RoleRejected,
    /// The receiver cannot go on (disk full, state unreadable); retry later.
    ReceiverUnavailable,
    /// Anything else.
    Other,
}

/// Every message of protocol version 1. Variant order is the wire tag: append only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Tag 0: Connector → acceptor, first frame.
    Hello(Hello),
    /// Tag 1: Acceptor → connector, answer to `Hello`.
    Welcome(Welcome),
    /// Tag 2: S→R. A pass begins; `full` passes describe the whole tree (extras get pruned at the end).
    PassBegin { pass: u64, full: bool },
    /// Tag 3: S→R. Make `entry.path` exactly this entry (create or replace).
    Upsert { seq: Seq, entry: FileEntry },
    /// Tag 4: S→R. Remove `path` (a file, link, or a whole directory tree); the receiver archives it.
    Delete { seq: Seq, path: String },
    /// Tag 5: S→R. `from` was renamed to `entry.path`; the receiver renames when it holds `from`
    /// with the same content, and otherwise treats this as an `Upsert` of `entry` (plus removal of `from`).
    Rename {
        seq: Seq,
        from: String,
        entry: FileEntry,
    },
    /// Tag 6: R→S. Send these chunks (indices into the entry's chunk list) of change `seq`.
    NeedChunks { seq: Seq, indices: Vec<u32> },
    /// Tag 7: S→R. The bytes of chunk `index` of change `seq`.
    ChunkData {
        seq: Seq,
        index: u32,
        // Same bytes on the wire as a plain Vec<u8> (varint length + bytes), copied in one go.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Tag 8: S→R. The source of change `seq` changed while being sent; drop it (a later change follows).
    FileUnavailable { seq: Seq, reason: String },
    /// Tag 9: S→R. End of pass `pass`; `entries` were described. `prune` governs extras (full passes).
    PassEnd {
        pass: u64,
        entries: u64,
        prune: Prune,
    },
    /// Tag 10: R→S. Every change up to and including `seq` is applied and durable (fsynced).
    Ack { seq: Seq },
    /// Tag 11: R→S. Change `seq` on `path` was refused and not applied; `reason` says why.
    Refused {
        seq: Seq,
        path: String,
        reason: String,
    },
    /// Tag 12: R→S. Pass finished: `pruned` extras removed (archived), `held` extras kept by the guard.
    PassDone { pass: u64, pruned: u64, held: u64 },
    /// Tag 13: Both ways.
    Heartbeat(Heartbeat),
    /// Tag 14: Verifier → R. Ask for the receiver's tree.
    ListRequest,
    /// Tag 15: R → verifier. One entry of the receiver's tree.
    ListEntry(FileEntry),
    /// Tag 16: R → verifier. The listing is complete.
    ListEnd { entries: u64 },
    /// Tag 17: Either way, then close: a fatal error.
    Error { code: ErrorCode, message: String },
    /// Tag 18: R→S, the receiver's first message after `Welcome` in a sender session when it
    /// replicates registry keys (their state; a receiver replicating none sends none); and R→S or
    /// R→V in answer to `RegistryRequest` (no roots: it replicates none).
    RegistrySnapshot(crate::registry::RegistrySnapshot),
    /// Tag 19: S→R. Apply this registry change set, all-or-nothing. It takes the next number of
    /// the session's change sequence, so it is answered by the cumulative `Ack` or by `Refused`.
    RegistryChanges {
        seq: Seq,
        changes: crate::registry::RegistryChangeSet,
    },
    /// Tag 20: V→R or S→R. Ask for the receiver's `RegistrySnapshot` (a sender's request is
    /// answered after every change sent before it has been applied).
    RegistryRequest,
    /// Tag 21 (version 2): S→R. Send a `TreeSummary` of your tree once every change sent before
    /// this request has been applied. `id` is echoed back.
    SummaryRequest { id: u64 },
    /// Tag 22 (version 2): R→S. The receiver's tree as `2^bits` bucket digests, 16 bytes each
    /// (see [`crate::summary`]), in answer to `SummaryRequest { id }`.
    TreeSummary {
        id: u64,
        bits: u8,
        #[serde(with = "serde_bytes")]
        digests: Vec<u8>,
    },
    /// Tag 23 (version 2): S→R, right after `PassBegin { full: true }`. This full pass does not
    /// describe the buckets whose bit is set in `unchanged` (a bitmap of `2^bits` bits): the
    /// receiver's last `TreeSummary` showed them equal to the sender's, so the pass's end keeps
    /// whatever the receiver holds in them.
    PassSkips {
        pass: u64,
        bits: u8,
        #[serde(with = "serde_bytes")]
        unchanged: Vec<u8>,
    },
}
