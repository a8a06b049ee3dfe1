//! Framing: a 4-byte big-endian body length, then the postcard encoding of one [`Message`].
//!
//! The decoder never trusts a length prefix: it checks the announced length against its limit as
//! soon as the 4 header bytes are buffered and only ever holds bytes that actually arrived, so a
//! hostile peer cannot make it allocate more than it sent (plus at most one frame limit).

use crate::limits::{FRAME_HEADER_LEN, MAX_FRAME_LEN};
use crate::{Message, ProtoError};

/// Buffer capacity above which an emptied [`FrameDecoder`] gives memory back, so one large frame
/// does not pin its size for the rest of a long-lived connection.
const SHRINK_ABOVE: usize = 4 * 1024 * 1024;
/// Capacity an emptied decoder keeps: enough for the common frames without reallocating.
const SHRINK_TO: usize = 256 * 1024;

/// Encodes `msg` as postcard bytes (no frame header).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    // Serializing into a growable Vec fails only for types whose sequence length is unknown up
    // front; every `Message` field is a plain struct, enum, String or Vec, so this cannot fail.
    postcard::to_stdvec(msg).expect("every Message is serializable")
}

/// Encodes `msg` as one frame: length prefix plus body. Fails when the body would exceed
/// [`MAX_FRAME_LEN`], which no peer would accept.
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, ProtoError> {
    let body = encode_message(msg);
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME_LEN)
        .ok_or(ProtoError::FrameTooLarge {
            len: body.len(),
            limit: MAX_FRAME_LEN,
        })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one message body (no frame header); trailing bytes are an error.
pub fn decode_message(body: &[u8]) -> Result<Message, ProtoError> {
    let (msg, rest) = postcard::take_from_bytes::<Message>(body)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after a {} message",
            rest.len(),
            message_name(&msg)
        )));
    }
    Ok(msg)
}

/// Incremental frame decoder: push bytes as they arrive, pop whole messages.
///
/// Errors: an oversized length prefix is reported by [`announced_len`](Self::announced_len) and
/// [`next_message`](Self::next_message) and stays reported (the stream cannot be resynchronised);
/// a body that does not decode is consumed and reported once, leaving the decoder at the next
/// frame. Both are protocol violations: the caller should send `Error` and close.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as messages; compacted lazily so that popping many small
    /// frames from one large read does not move the remaining bytes each time.
    start: usize,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames whose body exceeds `limit` bytes (at most [`MAX_FRAME_LEN`]).
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limit: limit.min(MAX_FRAME_LEN),
        }
    }

    /// Appends received bytes. The decoder keeps whatever it is given: callers push what they read
    /// from the transport and pop messages (or stop on an error) before reading more, which bounds
    /// the buffer to one read plus one frame.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The body length announced by the next frame header, once its 4 bytes are here; checked
    /// against the limit so a caller reading from a stream can reject before buffering the body.
    pub fn announced_len(&self) -> Result<Option<usize>, ProtoError> {
        let Some(header) = self.pending().first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.limit {
            return Err(ProtoError::FrameTooLarge {
                len,
                limit: self.limit,
            });
        }
        Ok(Some(len))
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        let Some(body) = self.pending().get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = decode_message(body);
        self.start += FRAME_HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.compact();
        }
        msg.map(Some)
    }

    /// Bytes buffered but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drops consumed bytes once they are at least half the buffer (amortised O(1) per byte), and
    /// returns memory after an unusually large frame.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf.shrink_to(SHRINK_TO);
            }
        } else if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// The variant name of `msg`, for error messages and logs.
pub fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::Hello(_) => "Hello",
        Message::Welcome(_) => "Welcome",
        Message::PassBegin { .. } => "PassBegin",
        Message::Upsert { .. } => "Upsert",
        Message::Delete { .. } => "Delete",
        Message::Rename { .. } => "Rename",
        Message::NeedChunks { .. } => "NeedChunks",
        Message::ChunkData { .. } => "ChunkData",
        Message::FileUnavailable { .. } => "FileUnavailable",
        Message::PassEnd { .. } => "PassEnd",
        Message::Ack { .. } => "Ack",
        Message::Refused { .. } => "Refused",
        Message::PassDone { .. } => "PassDone",
        Message::Heartbeat(_) => "Heartbeat",
        Message::ListRequest => "ListRequest",
        Message::ListEntry(_) => "ListEntry",
        Message::ListEnd { .. } => "ListEnd",
        Message::Error { .. } => "Error",
        Message::RegistrySnapshot(_) => "RegistrySnapshot",
        Message::RegistryChanges { .. } => "RegistryChanges",
        Message::RegistryRequest => "RegistryRequest",
        Message::SummaryRequest { .. } => "SummaryRequest",
        Message::TreeSummary { .. } => "TreeSummary",
        Message::PassSkips { .. } => "PassSkips",
    }
}
