//! The `regfile` and `registry_wire` fuzz targets' inputs (seeds, local corpus, crash inputs)
//! replayed through the same checks (`fuzz/checks/*.rs`), and the findings as named cases.

#[path = "../../../fuzz/checks/regfile.rs"]
mod regfile;
#[path = "../../../fuzz/checks/registry_wire.rs"]
mod registry_wire;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

use swrepl_proto::registry::RegistrySnapshot;
use swrepl_proto::{encode_message, Message};
use swrepl_registry::wire::from_wire_snapshot;

fn fuzz_dir() -> std::path::PathBuf {
    replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"), 2)
}

#[test]
fn regfile_fuzz_inputs_replay_clean() {
    let n = replay::replay(&fuzz_dir(), "regfile", regfile::check);
    eprintln!("{n} regfile inputs replayed");
}

#[test]
fn registry_wire_fuzz_inputs_replay_clean() {
    let n = replay::replay(&fuzz_dir(), "registry_wire", registry_wire::check);
    eprintln!("{n} registry_wire inputs replayed");
}

/// Fuzzing finding (`registry_wire`): a key name holding a line feed passed the wire checks, was
/// accepted into the model, and then the receiver's `.reg` restore point (and the lab's registry
/// file) could not be read back: `[…\n…]` is two broken lines. Such paths are now refused.
#[test]
fn a_key_name_with_a_line_break_is_refused_from_the_wire() {
    for bad in ["Soft\nware", "Soft\rware", "Software\\a\r\n"] {
        let wire = RegistrySnapshot {
            roots: vec![format!("HKEY_LOCAL_MACHINE\\{bad}")],
            keys: vec![],
        };
        let err = from_wire_snapshot(&wire).expect_err(bad);
        assert!(err.to_string().contains("line break"), "{bad:?}: {err}");
        // And the whole message, as the fuzzer found it, passes the check.
        registry_wire::check(&encode_message(&Message::RegistrySnapshot(wire)));
    }
}
