//! A changed file that the index knows is rechunked from its previous chunks: the result must be
//! exactly what a scan with an empty index describes.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use swrepl_tree::{
    ChunkRef, EntryKind, Excludes, FileEntry, Index, ScanOutcome, ScannedEntry, Scanner,
};

use common::noise;

fn scanner(root: &Path) -> Scanner {
    Scanner::new(
        root,
        Excludes::new(&[], true).unwrap(),
        Index::open_in_memory().unwrap(),
    )
}

/// What a scanner that knows nothing of `root` describes.
fn fresh_scan(root: &Path) -> ScanOutcome {
    scanner(root).scan().unwrap()
}

/// Gives `path` a modification time no earlier scan saw, however coarse the file system's clock.
fn touch(path: &Path, seconds: i64) {
    filetime::set_file_mtime(path, filetime::FileTime::from_unix_time(seconds, 500)).unwrap();
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    let mut file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(bytes).unwrap();
}

/// A 3 MiB file (chunked on one thread) and a 34 MiB one (in segments on all cores).
const SIZES: [(&str, usize); 2] = [("medium.bin", 3 << 20), ("large.bin", 34 << 20)];

#[test]
fn edits_in_the_middle_of_indexed_files_are_described_as_by_an_empty_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (name, len) in SIZES {
        fs::write(root.join(name), noise(len, len as u64)).unwrap();
    }
    let mut s = scanner(root);
    s.scan().unwrap();

    // 4 KiB overwritten in the middle: the same size, found through the time.
    for (name, len) in SIZES {
        let path = root.join(name);
        overwrite(&path, len as u64 / 2, &noise(4096, 1));
        touch(&path, 1_000_000);
    }
    let out = s.scan().unwrap();
    assert_eq!((out.changes.len(), out.files_hashed), (2, 2));
    assert_eq!(out.entries, fresh_scan(root).entries);

    // 100 bytes inserted in the middle, and one file cut short.
    for (name, len) in SIZES {
        let path = root.join(name);
        let mut data = fs::read(&path).unwrap();
        data.splice(len / 2 + 777..len / 2 + 777, noise(100, 2));
        fs::write(&path, &data).unwrap();
        touch(&path, 1_000_001);
    }
    let medium = root.join(SIZES[0].0);
    fs::OpenOptions::new()
        .write(true)
        .open(&medium)
        .unwrap()
        .set_len(SIZES[0].1 as u64 / 3)
        .unwrap();
    touch(&medium, 1_000_002);
    let out = s.scan().unwrap();
    assert_eq!(out.changes.len(), 2);
    assert_eq!(out.entries, fresh_scan(root).entries);
}

/// A file of three segments (8 MiB each) is rechunked with the segment values its previous read
/// recorded; what comes out is still what an empty index gives, and the values go with the file.
#[test]
fn segment_values_recorded_by_one_rescan_serve_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let path = root.join("calls.idx");
    let len = 20 << 20;
    fs::write(&path, noise(len, 11)).unwrap();
    let mut s = scanner(root);
    s.scan().unwrap();
    let recorded = |s: &Scanner| {
        let entry = s.index().get("calls.idx").unwrap().expect("indexed").entry;
        s.index().segments("calls.idx", &entry.file_hash).unwrap()
    };

    for (round, at) in [(0, len / 2), (1, 3 << 20), (2, len - 100)] {
        overwrite(&path, at as u64, &noise(4096.min(len - at), round));
        touch(&path, 1_000_000 + round as i64);
        let out = s.scan().unwrap();
        assert_eq!(out.files_hashed, 1, "round {round}");
        assert_eq!(out.entries, fresh_scan(root).entries, "round {round}");
        assert_eq!(
            recorded(&s).len(),
            3,
            "round {round}: one value per segment"
        );
    }

    fs::remove_file(&path).unwrap();
    let entry = s.index().get("calls.idx").unwrap().unwrap().entry;
    s.scan().unwrap();
    assert!(s
        .index()
        .segments("calls.idx", &entry.file_hash)
        .unwrap()
        .is_empty());
}

#[test]
fn refresh_of_an_edited_indexed_file_is_described_as_by_an_empty_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let path = root.join("log.txt");
    let mut data = noise(2 << 20, 5);
    fs::write(&path, &data).unwrap();
    let mut s = scanner(root);
    s.scan().unwrap();

    data.splice(1 << 20..1 << 20, noise(100, 6));
    fs::write(&path, &data).unwrap();
    touch(&path, 1_000_000);
    let refreshed = s.refresh("log.txt").unwrap().expect("the file is there");
    let fresh = fresh_scan(root);
    let expected = fresh
        .entries
        .iter()
        .find(|e| e.entry.path == "log.txt")
        .unwrap();
    assert_eq!(&refreshed, expected);
}

#[test]
fn an_index_that_lies_about_a_file_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let path = root.join("data.bin");
    fs::write(&path, noise(3 << 20, 9)).unwrap();
    let expected = fresh_scan(root).entries;
    let mut s = scanner(root);
    let real = expected[0].clone();
    let chunk = |len: u32, hash: u8| ChunkRef {
        hash: [hash; 32],
        len,
    };
    let lies: [Vec<ChunkRef>; 4] = [
        // Right lengths, wrong hashes.
        real.entry
            .chunks
            .iter()
            .map(|c| chunk(c.len, c.hash[0] ^ 1))
            .collect(),
        // More bytes than the file holds.
        vec![chunk(200_000, 1); 100],
        // Lengths that cannot be chunks.
        vec![chunk(u32::MAX, 2), chunk(0, 3), chunk(1, 4)],
        // Nothing at all.
        Vec::new(),
    ];
    for (k, chunks) in lies.into_iter().enumerate() {
        s.index_mut()
            .put(&ScannedEntry {
                entry: FileEntry {
                    kind: EntryKind::File,
                    mtime_ns: 1,
                    chunks,
                    ..real.entry.clone()
                },
                file_id: real.file_id,
            })
            .unwrap();
        let out = s.scan().unwrap();
        assert_eq!(out.files_hashed, 1, "lie {k}");
        assert_eq!(out.entries, expected, "lie {k}");
    }
}
