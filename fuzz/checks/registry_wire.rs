//! The `registry_wire` property, shared by the fuzz target and the replay test in
//! `crates/registry/tests/fuzz_replay.rs`.

use swrepl_proto::{decode_message, Message};
use swrepl_registry::wire::{
    from_wire_changes, from_wire_snapshot, to_wire_changes, to_wire_snapshot,
};
use swrepl_registry::{diff, Encoding, RegFile, Snapshot};

fn check_snapshot(snapshot: &Snapshot) {
    let again = from_wire_snapshot(&to_wire_snapshot(snapshot)).expect("our own snapshot is valid");
    assert_eq!(&again, snapshot, "snapshot changed on a wire round trip");
    let file = RegFile::restore_point(snapshot);
    let reread = RegFile::parse(&file.to_bytes(Encoding::Utf16Le)).expect("a restore point parses");
    assert_eq!(reread, file, "restore point changed on a .reg round trip");
    // Replicating into an empty registry reproduces the snapshot exactly.
    let nothing = swrepl_registry::Tree::new().snapshot(&snapshot.root_paths());
    let changes = diff(&nothing, snapshot);
    let _ = changes.describe(&nothing);
    assert_eq!(
        &nothing.apply(&changes),
        snapshot,
        "diff from empty does not rebuild the snapshot"
    );
}

/// Any frame body, as the receiver decodes it: when it is a registry message, the conversion to
/// the registry model must not panic, and what it accepts must convert back and forth unchanged
/// and be written to a `.reg` file (restore point, lab registry file) that reads back the same.
pub fn check(body: &[u8]) {
    match decode_message(body) {
        Ok(Message::RegistrySnapshot(wire)) => {
            if let Ok(snapshot) = from_wire_snapshot(&wire) {
                check_snapshot(&snapshot);
            }
        }
        Ok(Message::RegistryChanges { changes, .. }) => {
            if let Ok(ops) = from_wire_changes(&changes) {
                let again = from_wire_changes(&to_wire_changes(&ops)).expect("our own changes");
                assert_eq!(again, ops, "change set changed on a wire round trip");
                // What the lab backend does with them: apply, then write the registry file.
                let mut tree = swrepl_registry::Tree::new();
                tree.apply(&ops);
                let file = RegFile::from_tree(&tree).to_bytes(Encoding::Utf16Le);
                let reread = RegFile::parse(&file).expect("the registry file parses");
                assert_eq!(
                    reread.to_tree(),
                    tree,
                    "registry file changed on a round trip"
                );
            }
        }
        _ => {}
    }
}
