//! Any bytes as a `.reg` file (the lab backend's file, `swrepl registry apply FILE`): parsing
//! must not panic, and whatever parses must survive being written back, in both encodings, and
//! imported: what swrepl writes it reads back as the same file and the same registry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swrepl_registry::{Encoding, RegFile};

fuzz_target!(|bytes: &[u8]| {
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
    assert_eq!(reread.to_tree(), tree, "export of the imported tree differs");
});
