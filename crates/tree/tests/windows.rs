//! File identity, attributes and long paths on Windows (CI runs these under Wine with
//! `.ci/wine-test`).
#![cfg(windows)]

use std::fs;
use std::io::Write;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use swrepl_tree::{
    attributes_of, file_id_of, hash_bytes, list_tree, to_os_path, Change, Excludes, Index,
    ScanOutcome, Scanner, TreeError,
};
use windows_sys::Win32::Storage::FileSystem::{
    SetFileAttributesW, FILE_ATTRIBUTE_ARCHIVE, FILE_ATTRIBUTE_HIDDEN, FILE_ATTRIBUTE_NORMAL,
    FILE_ATTRIBUTE_READONLY, FILE_ATTRIBUTE_SYSTEM,
};

fn scanner(root: &Path) -> Scanner {
    Scanner::new(
        root,
        Excludes::new(&[], true).unwrap(),
        Index::open_in_memory().unwrap(),
    )
}

fn set_attributes(path: &Path, attributes: u32) {
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    // SAFETY: `wide` is a NUL-terminated UTF-16 path that outlives the call.
    let ok = unsafe { SetFileAttributesW(wide.as_ptr(), attributes) };
    assert_ne!(
        ok,
        0,
        "SetFileAttributesW({}): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn file_ids_are_stable_across_renames_and_distinct_between_files() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    let b = tmp.path().join("b.txt");
    fs::write(&a, b"a").unwrap();
    fs::write(&b, b"b").unwrap();
    let id_a = file_id_of(&a).expect("a file id for a.txt");
    let id_b = file_id_of(&b).expect("a file id for b.txt");
    assert_ne!(id_a, id_b);
    assert!(file_id_of(tmp.path()).is_some(), "directories have ids too");

    let moved = tmp.path().join("moved.txt");
    fs::rename(&a, &moved).unwrap();
    assert_eq!(file_id_of(&moved), Some(id_a));
    assert_eq!(file_id_of(&a), None, "nothing is left at the old path");
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn renames(changes: &[Change]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|c| match c {
            Change::Rename { from, entry } => (from.clone(), entry.path.clone()),
            other => panic!("expected only renames, got {other:?}"),
        })
        .collect()
}

#[test]
fn the_scanner_recognises_renames_by_file_id() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("html")).unwrap();
    fs::write(root.join("html/page.php"), b"page").unwrap();
    fs::write(root.join("other.txt"), b"other").unwrap();
    let mut s = scanner(root);
    let first = s.scan().unwrap();
    assert!(first.entries.iter().all(|e| e.file_id.is_some()));

    fs::rename(root.join("other.txt"), root.join("renamed.txt")).unwrap();
    fs::rename(root.join("html"), root.join("portal")).unwrap();
    let mut found = renames(&s.scan().unwrap().changes);
    found.sort();
    assert_eq!(
        found,
        [
            ("html".to_string(), "portal".to_string()),
            ("other.txt".to_string(), "renamed.txt".to_string()),
        ]
    );
}

/// NTFS changes the case of a name in place; Wine (whose files live on a case-sensitive Unix
/// file system behind a case-insensitive lookup) leaves the old name, so there the test has
/// nothing to check and says so.
#[test]
fn the_scanner_recognises_a_case_only_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::write(root.join("Swserver.cfg"), b"config").unwrap();
    let mut s = scanner(root);
    s.scan().unwrap();

    fs::rename(root.join("Swserver.cfg"), root.join("swserver.cfg")).unwrap();
    if names_in(root) != ["swserver.cfg"] {
        eprintln!(
            "skipped: this file system kept the old case after a case-only rename: {:?}",
            names_in(root)
        );
        return;
    }
    assert_eq!(
        renames(&s.scan().unwrap().changes),
        [("Swserver.cfg".to_string(), "swserver.cfg".to_string())]
    );
}

/// What Wine can show of a case-only rename: done in two steps (as an editor saving through a
/// temporary name does), the case-insensitive file system ends with the new spelling and the
/// scanner reports one rename from the old spelling, not an upsert plus a delete (which a
/// case-insensitive receiver would apply to the very same file).
#[test]
fn a_case_only_rename_through_a_temporary_name_is_one_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("Logs")).unwrap();
    fs::write(root.join("Logs/Server.LOG"), b"log line").unwrap();
    let mut s = scanner(root);
    s.scan().unwrap();

    fs::rename(root.join("Logs/Server.LOG"), root.join("Logs/tmp.swp")).unwrap();
    fs::rename(root.join("Logs/tmp.swp"), root.join("Logs/server.log")).unwrap();
    assert_eq!(names_in(&root.join("Logs")), ["server.log"]);
    let out = s.scan().unwrap();
    assert_eq!(
        renames(&out.changes),
        [("Logs/Server.LOG".to_string(), "Logs/server.log".to_string())]
    );
    assert_eq!(out.files_hashed, 0);
    assert!(s.scan().unwrap().changes.is_empty());
}

#[test]
fn the_carried_attributes_are_read_from_files_and_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let all = root.join("all.dat");
    let archive_only = root.join("archive.dat");
    let dir = root.join("hidden dir");
    fs::write(&all, b"x").unwrap();
    fs::write(&archive_only, b"y").unwrap();
    fs::create_dir(&dir).unwrap();
    let carried = FILE_ATTRIBUTE_READONLY
        | FILE_ATTRIBUTE_HIDDEN
        | FILE_ATTRIBUTE_SYSTEM
        | FILE_ATTRIBUTE_ARCHIVE;
    set_attributes(&all, carried);
    set_attributes(&archive_only, FILE_ATTRIBUTE_ARCHIVE);
    set_attributes(&dir, FILE_ATTRIBUTE_HIDDEN);

    let of = |path: &Path| attributes_of(&fs::symlink_metadata(path).unwrap()).windows;
    assert_eq!(of(&all), carried);
    assert_eq!(of(&archive_only), FILE_ATTRIBUTE_ARCHIVE);
    assert_eq!(of(&dir) & FILE_ATTRIBUTE_HIDDEN, FILE_ATTRIBUTE_HIDDEN);

    // The scanner carries the same bits in its entries (what the sender puts on the wire).
    let scanned = scanner(root).scan().unwrap();
    let entry = |name: &str| {
        scanned
            .entries
            .iter()
            .find(|e| e.entry.path == name)
            .unwrap_or_else(|| panic!("{name} scanned"))
            .entry
            .attributes
    };
    assert_eq!(entry("all.dat").windows, carried);
    assert_eq!(entry("all.dat").unix_mode, 0);
    assert_eq!(entry("archive.dat").windows, FILE_ATTRIBUTE_ARCHIVE);

    // Read-only files cannot be deleted: clear it so the temporary directory can go.
    set_attributes(&all, FILE_ATTRIBUTE_NORMAL);
}

/// A directory chain whose full path is well past MAX_PATH (260).
fn long_relative_path() -> (String, PathBuf) {
    let segment = "Core Services Long Folder Name Number";
    let parts: Vec<String> = (0..9).map(|i| format!("{segment} {i}")).collect();
    let rel = format!("{}/attachment.mime", parts.join("/"));
    let os: PathBuf = rel.split('/').collect();
    (rel, os)
}

#[test]
fn long_paths_are_scanned_hashed_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (rel, os_rel) = long_relative_path();
    let full = root.join(&os_rel);
    assert!(
        full.as_os_str().len() > 300,
        "{} chars",
        full.as_os_str().len()
    );
    fs::create_dir_all(full.parent().unwrap()).unwrap();
    let content = b"a MIME attachment deep in a long path".repeat(100);
    fs::write(&full, &content).unwrap();

    assert_eq!(to_os_path(root, &rel), full);
    assert!(file_id_of(&full).is_some());

    let listing = list_tree(root, &Excludes::new(&[], true).unwrap(), &|_| {}).unwrap();
    assert!(listing.problems.is_empty(), "{:?}", listing.problems);
    let listed = listing
        .entries
        .iter()
        .find(|e| e.path == rel)
        .expect("the long path is listed");
    assert_eq!(listed.size, content.len() as u64);
    assert_eq!(listed.file_hash, hash_bytes(&content));

    let mut s = scanner(root);
    let scanned = s.scan().unwrap();
    assert!(scanned.problems.is_empty(), "{:?}", scanned.problems);
    let entry = scanned
        .entries
        .iter()
        .find(|e| e.entry.path == rel)
        .expect("the long path is scanned");
    assert!(entry.file_id.is_some());
    assert_eq!(entry.entry.file_hash, hash_bytes(&content));
    assert_eq!(fs::read(to_os_path(root, &rel)).unwrap(), content);

    // A rescan is stat-only: the index keys long paths like any other.
    let again = s.scan().unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.files_hashed, 0);
}

/// Opens `path` for reading and writing with no sharing at all, as a program that wants a file
/// to itself does: every other open fails with ERROR_SHARING_VIOLATION while the handle lives.
fn lock_exclusively(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .share_mode(0)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} without sharing: {e}", path.display()))
}

fn entry_hash(outcome: &ScanOutcome, rel: &str) -> Option<swrepl_tree::Hash> {
    outcome
        .entries
        .iter()
        .find(|e| e.entry.path == rel)
        .map(|e| e.entry.file_hash)
}

#[test]
fn a_locked_file_keeps_its_last_state_is_reported_and_is_described_once_released() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("Mail")).unwrap();
    let mailbox = root.join("Mail/box.mbx");
    fs::write(&mailbox, b"before").unwrap();
    let mut s = scanner(root);
    let first = s.scan().unwrap();
    assert_eq!(
        entry_hash(&first, "Mail/box.mbx"),
        Some(hash_bytes(b"before"))
    );

    // The mailbox changes under an exclusive handle, and a new file appears already locked.
    let mut held = lock_exclusively(&mailbox);
    fs::write(root.join("new.dat"), b"brand new").unwrap();
    let held_new = lock_exclusively(&root.join("new.dat"));
    held.write_all(b"after, and longer").unwrap();
    held.sync_all().unwrap();

    let out = s.scan().unwrap();
    let locked: Vec<(&str, u32)> = out
        .locked
        .iter()
        .map(|l| (l.path.as_str(), l.attempts))
        .collect();
    assert_eq!(locked, [("Mail/box.mbx", 1), ("new.dat", 1)]);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert!(
        out.changes.is_empty(),
        "nothing half-read is sent: {:?}",
        out.changes
    );
    assert_eq!(
        entry_hash(&out, "Mail/box.mbx"),
        Some(hash_bytes(b"before")),
        "the last known state is kept"
    );
    assert_eq!(
        entry_hash(&out, "new.dat"),
        None,
        "a new locked file is not described"
    );
    assert!(s.next_locked_retry().is_some());
    assert!(matches!(
        s.refresh("Mail/box.mbx"),
        Err(TreeError::Locked { .. })
    ));

    // Released: the next scan at or after the retry time reads both.
    drop(held);
    drop(held_new);
    let deadline = Instant::now() + Duration::from_secs(60);
    let released = loop {
        let out = s.scan().unwrap();
        if out.locked.is_empty() {
            break out;
        }
        assert!(Instant::now() < deadline, "still locked: {:?}", out.locked);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        entry_hash(&released, "Mail/box.mbx"),
        Some(hash_bytes(b"after, and longer"))
    );
    assert_eq!(
        entry_hash(&released, "new.dat"),
        Some(hash_bytes(b"brand new"))
    );
    let mut upserts: Vec<&str> = released
        .changes
        .iter()
        .map(|c| match c {
            Change::Upsert(e) => e.path.as_str(),
            other => panic!("expected upserts, got {other:?}"),
        })
        .collect();
    upserts.sort();
    assert_eq!(upserts, ["Mail/box.mbx", "new.dat"]);
    assert!(s.locked_files().is_empty());
}

/// A whole-file byte-range lock (`LockFileEx`, which `File::lock` takes on Windows) makes reads
/// from other handles fail with ERROR_LOCK_VIOLATION: locked too, not unreadable. Wine does not
/// enforce such locks on reads, so there the test has nothing to check and says so.
#[test]
fn a_byte_range_lock_is_a_locked_file_too() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let db = root.join("swdata.db");
    fs::write(&db, b"database page").unwrap();
    let holder = fs::File::open(&db).unwrap();
    holder.lock().unwrap();
    if fs::read(&db).is_ok() {
        // Windows refuses the read; Wine does not enforce byte-range locks on reads.
        eprintln!("skipped: reads through another handle ignore the byte-range lock here");
        return;
    }

    let mut s = scanner(root);
    let out = s.scan().unwrap();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let [locked] = &out.locked[..] else {
        panic!("one locked file: {:?}", out.locked)
    };
    assert_eq!(locked.path, "swdata.db");
    assert!(locked.error.contains("33"), "{}", locked.error);
    assert_eq!(entry_hash(&out, "swdata.db"), None);

    holder.unlock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = s.scan().unwrap();
        if out.locked.is_empty() {
            assert_eq!(
                entry_hash(&out, "swdata.db"),
                Some(hash_bytes(b"database page"))
            );
            break;
        }
        assert!(Instant::now() < deadline, "still locked: {:?}", out.locked);
        std::thread::sleep(Duration::from_millis(100));
    }
}
