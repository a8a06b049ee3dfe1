//! The `decode_message` property, shared by the fuzz target and the replay test in
//! `proto/tests/fuzz_replay.rs`.

use swrepl_proto::{decode_message, encode_message, validate_message};

/// Any body bytes: decoding must not panic, and whatever decodes must re-encode to bytes that
/// decode to the same message and pass or fail validation without panicking.
pub fn check(body: &[u8]) {
    let Ok(msg) = decode_message(body) else {
        return;
    };
    let _ = validate_message(&msg);
    let again = encode_message(&msg);
    // Decoders accept overlong varints, so the bytes may differ; the value may not.
    assert_eq!(decode_message(&again).as_ref(), Ok(&msg));
    assert!(
        again.len() <= body.len(),
        "canonical encoding is never longer than the input"
    );
}
