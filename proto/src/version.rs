//! Version negotiation and whole-message validation.

use crate::limits::{MAX_CHUNKS_PER_ENTRY, MAX_CHUNK_LEN, MAX_TEXT_LEN};
use crate::{validate_path, EntryKind, FileEntry, Hello, Message, ProtoError, Role, MAGIC};

/// The protocol version this crate speaks best.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this crate still speaks.
pub const MIN_VERSION: u16 = 1;

/// The `Hello` this implementation sends.
pub fn hello(role: Role, software: &str) -> Hello {
    Hello {
        magic: MAGIC,
        min_version: MIN_VERSION,
        max_version: PROTOCOL_VERSION,
        role,
        software: software.chars().take(MAX_TEXT_LEN).collect(),
    }
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
        return Err(ProtoError::Limit(format!("{what} longer than {MAX_TEXT_LEN} bytes")));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ProtoError> {
    validate_path(path).map_err(|reason| ProtoError::InvalidPath { path: path.to_string(), reason })
}

/// Checks an entry's internal consistency: valid path, chunk lengths that sum to the size,
/// no chunks for directories and links, a link target that stays inside the root.
pub fn validate_entry(entry: &FileEntry) -> Result<(), ProtoError> {
    check_path(&entry.path)?;
    if entry.chunks.len() > MAX_CHUNKS_PER_ENTRY {
        return Err(ProtoError::Limit(format!("more than {MAX_CHUNKS_PER_ENTRY} chunks")));
    }
    match &entry.kind {
        EntryKind::File => {
            let mut total: u64 = 0;
            for chunk in &entry.chunks {
                if chunk.len == 0 || chunk.len > MAX_CHUNK_LEN {
                    return Err(ProtoError::Limit(format!("chunk length {} out of range", chunk.len)));
                }
                total += u64::from(chunk.len);
            }
            if total != entry.size {
                return Err(ProtoError::Malformed(format!(
                    "chunk lengths sum to {total}, size says {}",
                    entry.size
                )));
            }
        }
        EntryKind::Dir => {
            if !entry.chunks.is_empty() || entry.size != 0 {
                return Err(ProtoError::Malformed("directory with content".into()));
            }
        }
        EntryKind::Symlink { target } => {
            if !entry.chunks.is_empty() {
                return Err(ProtoError::Malformed("link with content".into()));
            }
            check_link_target(&entry.path, target)?;
        }
    }
    Ok(())
}

/// A link target must be relative and, resolved against the link's directory, stay inside the root.
pub fn check_link_target(link_path: &str, target: &str) -> Result<(), ProtoError> {
    check_text("link target", target)?;
    let bad = |why: &str| format!("link target {target:?}: {why}");
    if target.is_empty() || target.starts_with('/') || target.contains('\\') || target.contains(':') {
        return Err(ProtoError::Malformed(bad("link target must be relative")));
    }
    let mut depth: i64 = link_path.split('/').count() as i64 - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(ProtoError::Malformed(bad("link target leaves the root")));
        }
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
                return Err(ProtoError::Limit("too many chunk indices".into()));
            }
            Ok(())
        }
        Message::ChunkData { data, .. } => {
            if data.len() > MAX_CHUNK_LEN as usize {
                return Err(ProtoError::Limit(format!("chunk of {} bytes", data.len())));
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
        Message::PassBegin { .. }
        | Message::PassEnd { .. }
        | Message::Ack { .. }
        | Message::PassDone { .. }
        | Message::ListRequest
        | Message::ListEnd { .. } => Ok(()),
    }
}
