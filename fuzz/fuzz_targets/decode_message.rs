//! Any body bytes: decoding must not panic, and whatever decodes must re-encode to bytes that
//! decode to the same message and pass or fail validation without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/decode_message.rs"]
mod decode_message;

fuzz_target!(|body: &[u8]| decode_message::check(body));
