//! The `regfile` property, shared by the fuzz target and the replay test in
//! `crates/registry/tests/fuzz_replay.rs`.

use swrepl_registry::{Encoding, RegFile};

/// Any bytes as a `.reg` file: parsing must not panic, and whatever parses must survive being
/// written back, in both encodings, and imported.
pub fn check(bytes: &[u8]) {
    let Ok(file) = RegFile::parse(bytes) else {
        return;
    };
    for encoding in [Encoding::Utf16Le, Encoding::Utf8] {
        let written = file.to_bytes(encoding);
        let again = RegFile::parse(&written)
            .unwrap_or_else(|e| panic!("swrepl cannot read what it wrote ({encoding:?}): {e}"));
        assert_eq!(again, file, "{encoding:?} round trip changed the file");
    }
    // The registry the file describes, exported and read back, is the same registry.
    let tree = file.to_tree();
    let exported = RegFile::from_tree(&tree).to_bytes(Encoding::Utf16Le);
    let reread = RegFile::parse(&exported).expect("an export parses");
    assert_eq!(
        reread.to_tree(),
        tree,
        "export of the imported tree differs"
    );
}
