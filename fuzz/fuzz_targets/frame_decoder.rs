//! A byte stream delivered in arbitrary pieces: the decoder must not panic, must never buffer
//! more than it was given, must stop for good on an oversize length prefix, and must yield the
//! same messages however the stream is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swrepl_proto::{FrameDecoder, Message, ProtoError};

/// Decodes `stream` fed in pieces whose sizes come from `splits` (cycled; 0 means 1).
fn decode_all(
    stream: &[u8],
    splits: &[u8],
    limit: usize,
) -> (Vec<Result<Message, ProtoError>>, usize) {
    let mut decoder = FrameDecoder::new(limit);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = splits.iter().map(|&s| usize::from(s).max(1)).cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (piece, tail) = rest.split_at(size);
        rest = tail;
        decoder.push(piece);
        assert!(decoder.buffered() <= stream.len());
        loop {
            match decoder.next_message() {
                Ok(None) => break,
                Ok(Some(msg)) => out.push(Ok(msg)),
                Err(err @ ProtoError::FrameTooLarge { .. }) => {
                    out.push(Err(err));
                    return (out, decoder.buffered());
                }
                Err(err) => out.push(Err(err)),
            }
        }
    }
    (out, decoder.buffered())
}

fuzz_target!(|input: (u16, Vec<u8>, Vec<u8>)| {
    let (limit, splits, stream) = input;
    let limit = usize::from(limit);
    let (in_pieces, left_in_pieces) = decode_all(&stream, &splits, limit);
    let (at_once, left_at_once) = decode_all(&stream, &[], limit);
    let stopped_on_bad_length =
        matches!(at_once.last(), Some(Err(ProtoError::FrameTooLarge { .. })));
    assert_eq!(
        in_pieces, at_once,
        "result depends on how the stream was split"
    );
    if !stopped_on_bad_length {
        // What is left is the incomplete last frame, however it arrived. (After a bad length the
        // caller stops reading, so how much was buffered then depends on the last read.)
        assert_eq!(left_in_pieces, left_at_once);
    }
});
