//! Version negotiation and whole-message validation.

use crate::limits::{MAX_CHUNKS_PER_ENTRY, MAX_CHUNK_LEN, MAX_TEXT_LEN};
use crate::path::validate_component;
use crate::registry::{validate_registry_changes, validate_registry_snapshot};
use crate::summary::{bitmap_len, DIGEST_LEN, MAX_SUMMARY_BITS};
use crate::{validate_path, EntryKind, FileEntry, Hello, Message, ProtoError, Role, MAGIC};

/// The protocol version this crate speaks best.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this crate still speaks.
pub const MIN_VERSION: u16 = 1;

/// The `Hello` this implementation sends.
pub fn hello(role: Role, software: &str) -> Hello {
    Hello {
        magic: MAGIC,
        min_version: MIN_VERSION,
        max_version: PROTOCOL_VERSION,
        role,
        software: truncate_text(software).to_string(),
    }
}

/// `text` cut to at most [`MAX_TEXT_LEN`] bytes at a character boundary, so that what we send
/// always passes the peer's [`validate_message`].
pub fn truncate_text(text: &str) -> &str {
    if text.len() <= MAX_TEXT_LEN {
        return text;
    }
    let mut end = MAX_TEXT_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Picks the highest version both sides speak, or explains why there is none.
pub fn negotiate(peer: &Hello) -> Result<u16, ProtoError> {
    if peer.magic != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let high = peer.max_version.min(PROTOCOL_VERSION);
    let low = peer.min_version.max(MIN_VERSION);
    if high < low || peer.min_version > peer.max_version {
        return Err(ProtoError::VersionMismatch {
            ours_min: MIN_VERSION,
            ours_max: PROTOCOL_VERSION,
            theirs_min: peer.min_version,
            theirs_max: peer.max_version,
        });
    }
    Ok(high)
}

fn check_text(what: &str, text: &str) -> Result<(), ProtoError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(ProtoError::Limit(format!(
            "{what} longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ProtoError> {
    validate_path(path).map_err(|reason| ProtoError::InvalidPath {
        path: path.to_string(),
        reason,
    })
}

/// Checks an entry's internal consistency: valid path, at most [`MAX_CHUNKS_PER_ENTRY`] chunks,
/// each 1..=[`MAX_CHUNK_LEN`] bytes, summing to the size; no size or chunks for directories and
/// links; a link target that stays inside the root (see [`check_link_target`]).
///
/// The whole-file hash cannot be checked here: the receiver checks it over the bytes it writes.
pub fn validate_entry(entry: &FileEntry) -> Result<(), ProtoError> {
    check_path(&entry.path)?;
    if entry.chunks.len() > MAX_CHUNKS_PER_ENTRY {
        return Err(ProtoError::Limit(format!(
            "{} chunks in {:?}, at most {MAX_CHUNKS_PER_ENTRY} allowed",
            entry.chunks.len(),
            entry.path
        )));
    }
    match &entry.kind {
        EntryKind::File => check_chunks_sum_to_size(entry),
        EntryKind::Dir => check_no_content(entry, "directory"),
        EntryKind::Symlink { target } => {
            check_no_content(entry, "symbolic link")?;
            check_link_target(&entry.path, target)
        }
    }
}

fn check_chunks_sum_to_size(entry: &FileEntry) -> Result<(), ProtoError> {
    let mut total: u64 = 0;
    for (index, chunk) in entry.chunks.iter().enumerate() {
        if chunk.len == 0 || chunk.len > MAX_CHUNK_LEN {
            return Err(ProtoError::Limit(format!(
                "chunk {index} of {:?} is {} bytes, must be 1..={MAX_CHUNK_LEN}",
                entry.path, chunk.len
            )));
        }
        // Cannot overflow: at most 400 000 chunks of at most 1 MiB each.
        total += u64::from(chunk.len);
    }
    if total != entry.size {
        return Err(ProtoError::Malformed(format!(
            "chunk lengths of {:?} sum to {total} bytes but its size is {}",
            entry.path, entry.size
        )));
    }
    Ok(())
}

fn check_no_content(entry: &FileEntry, what: &str) -> Result<(), ProtoError> {
    if !entry.chunks.is_empty() || entry.size != 0 {
        return Err(ProtoError::Malformed(format!(
            "{what} {:?} has content (size {}, {} chunks); it must have none",
            entry.path,
            entry.size,
            entry.chunks.len()
        )));
    }
    Ok(())
}

/// Checks that a link at `link_path` pointing to `target` stays inside the root.
///
/// The target must be relative, `/`-separated, and of the form `(../)*name(/name)*`: any `..`
/// components come first. A `..` after a name is refused even when it looks harmless
/// (`a/../b`), because the file system resolves it physically: if `a` is itself a link,
/// `a/..` is the parent of wherever `a` points, which a lexical check cannot know. With
/// leading `..` only, the climb starts from the link's own (real) directory and is checked here;
/// the rest descends by names, each of which is an entry inside the root. Every name must also be
/// a valid path component (no NUL, no `:`, no device names, …). Empty and `.` components are
/// ignored.
pub fn check_link_target(link_path: &str, target: &str) -> Result<(), ProtoError> {
    check_path(link_path)?;
    let bad = |why: &str| {
        Err(ProtoError::Malformed(format!(
            "link {link_path:?} -> {target:?}: {why}"
        )))
    };
    check_text("link target", target)?;
    if target.is_empty() {
        return bad("the target is empty");
    }
    if target.starts_with('/') || target.contains('\\') || target.contains(':') {
        return bad("the target must be relative with '/' separators (no drive, UNC or '\\')");
    }
    // The link's directory is `depth` levels below the root.
    let mut depth = link_path.split('/').count() - 1;
    let mut seen_name = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_name => return bad("'..' after a name can escape through another link"),
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return bad("the target leaves the root"),
            },
            name => {
                if let Err(reason) = validate_component(name) {
                    return bad(&format!("component {name:?}: {reason}"));
                }
                seen_name = true;
            }
        }
    }
    Ok(())
}

fn check_summary_bits(bits: u8) -> Result<(), ProtoError> {
    if bits > MAX_SUMMARY_BITS {
        return Err(ProtoError::Limit(format!(
            "tree summary of {bits} bucket bits, at most {MAX_SUMMARY_BITS} allowed"
        )));
    }
    Ok(())
}

/// Checks every field of a message received from a peer against the protocol's rules and limits.
pub fn validate_message(msg: &Message) -> Result<(), ProtoError> {
    match msg {
        Message::Hello(h) => check_text("software", &h.software),
        Message::Welcome(w) => check_text("software", &w.software),
        Message::Upsert { entry, .. } | Message::ListEntry(entry) => validate_entry(entry),
        Message::Rename { from, entry, .. } => {
            check_path(from)?;
            validate_entry(entry)
        }
        Message::Delete { path, .. } => check_path(path),
        Message::NeedChunks { indices, .. } => {
            if indices.len() > MAX_CHUNKS_PER_ENTRY {
                return Err(ProtoError::Limit(format!(
                    "{} chunk indices requested, at most {MAX_CHUNKS_PER_ENTRY} allowed",
                    indices.len()
                )));
            }
            Ok(())
        }
        Message::ChunkData { data, .. } => {
            if data.len() > MAX_CHUNK_LEN as usize {
                return Err(ProtoError::Limit(format!(
                    "chunk of {} bytes, at most {MAX_CHUNK_LEN} allowed",
                    data.len()
                )));
            }
            Ok(())
        }
        Message::FileUnavailable { reason, .. } => check_text("reason", reason),
        Message::Refused { path, reason, .. } => {
            check_text("path", path)?;
            check_text("reason", reason)
        }
        Message::Heartbeat(hb) => match &hb.service {
            Some(s) => check_text("service name", &s.name),
            None => Ok(()),
        },
        Message::Error { message, .. } => check_text("message", message),
        Message::RegistrySnapshot(snapshot) => validate_registry_snapshot(snapshot),
        Message::RegistryChanges { changes, .. } => validate_registry_changes(changes),
        Message::TreeSummary { bits, digests, .. } => {
            check_summary_bits(*bits)?;
            if digests.len() != DIGEST_LEN << bits {
                return Err(ProtoError::Malformed(format!(
                    "tree summary of {bits} bits carries {} bytes of digests, not {}",
                    digests.len(),
                    DIGEST_LEN << bits
                )));
            }
            Ok(())
        }
        Message::PassSkips {
            bits, unchanged, ..
        } => {
            check_summary_bits(*bits)?;
            if unchanged.len() != bitmap_len(*bits) {
                return Err(ProtoError::Malformed(format!(
                    "pass skips of {bits} bits carry a bitmap of {} bytes, not {}",
                    unchanged.len(),
                    bitmap_len(*bits)
                )));
            }
            Ok(())
        }
        Message::SummaryRequest { .. }
        | Message::PassBegin { .. }
        | Message::PassEnd { .. }
        | Message::Ack { .. }
        | Message::PassDone { .. }
        | Message::ListRequest
        | Message::ListEnd { .. }
        | Message::RegistryRequest => Ok(()),
    }
}
