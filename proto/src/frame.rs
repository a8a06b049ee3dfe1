//! Framing: a 4-byte big-endian body length, then the postcard encoding of one [`Message`].

use crate::limits::{FRAME_HEADER_LEN, MAX_FRAME_LEN};
use crate::{Message, ProtoError};

/// Encodes `msg` as postcard bytes (no frame header).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("every Message is serializable")
}

/// Encodes `msg` as one frame: length prefix plus body.
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, ProtoError> {
    let body = encode_message(msg);
    if body.len() > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge { len: body.len(), limit: MAX_FRAME_LEN });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one message body; trailing bytes are an error.
pub fn decode_message(body: &[u8]) -> Result<Message, ProtoError> {
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Incremental frame decoder: push bytes as they arrive, pop whole messages.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
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
        Self { buf: Vec::new(), limit: limit.min(MAX_FRAME_LEN) }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The body length announced by the next frame header, once its 4 bytes are here; checked
    /// against the limit so a caller reading from a stream can reject before buffering the body.
    pub fn announced_len(&self) -> Result<Option<usize>, ProtoError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > self.limit {
            return Err(ProtoError::FrameTooLarge { len, limit: self.limit });
        }
        Ok(Some(len))
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        let Some(len) = self.announced_len()? else { return Ok(None) };
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let msg = decode_message(&self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
        self.buf.drain(..FRAME_HEADER_LEN + len);
        msg.map(Some)
    }

    /// Bytes buffered but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
