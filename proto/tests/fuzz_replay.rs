//! The `decode_message` fuzz target's inputs (seeds from the golden vectors, local corpus, crash
//! inputs) replayed through the same check (`fuzz/checks/decode_message.rs`).
//!
//! `frame_decoder` and `validate_path` take `arbitrary`-structured inputs, which only the fuzz
//! build decodes; `.ci/fuzz` replays their corpora (libFuzzer runs every corpus file first).

#[path = "../../fuzz/checks/decode_message.rs"]
mod decode_message;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn decode_message_fuzz_inputs_replay_clean() {
    let fuzz = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"), 1);
    let n = replay::replay(&fuzz, "decode_message", decode_message::check);
    eprintln!("{n} decode_message inputs replayed");
}
