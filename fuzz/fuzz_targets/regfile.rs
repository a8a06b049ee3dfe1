//! Any bytes as a `.reg` file (the lab backend's file, `swrepl registry apply FILE`): parsing
//! must not panic, and whatever parses must survive being written back, in both encodings, and
//! imported: what swrepl writes it reads back as the same file and the same registry.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/regfile.rs"]
mod regfile;

fuzz_target!(|bytes: &[u8]| regfile::check(bytes));
