//! Tree verification on real files in temporary directories.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use swrepl_tree::{compare, list_tree, verify_trees, Difference, EntryKind, Excludes};

use common::noise;

fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn populate(root: &Path) {
    write(root, "Core Services/Mail/config.xml", b"<mail/>");
    write(root, "Logs/server.log", &vec![b'x'; 300_000]);
    write(root, "html/index.html", b"<html>");
    fs::create_dir_all(root.join("empty")).unwrap();
}

fn no_progress(_: u64) {}

#[test]
fn identical_trees_have_no_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    populate(&a);
    populate(&b);
    // Differences inside excluded folders do not count.
    write(&a, "Core Services/SwSqlServer/Data/t.MYD", b"master db");
    write(&b, "Core Services/SwSqlServer/data/t.MYD", b"slave db");
    write(&b, "Core Services/SwSqlServer/DATA/u.MYD", b"slave db");
    write(&b, ".swrepl/archive/x", b"archived");
    let hashed = AtomicU64::new(0);
    let progress = |n: u64| {
        hashed.fetch_add(n, Ordering::Relaxed);
    };
    let summary = verify_trees(&a, &b, &Excludes::new(&[], true).unwrap(), &progress).unwrap();
    assert_eq!(summary.differences, []);
    assert!(summary.problems.is_empty());
    assert_eq!(summary.files, 3);
    assert_eq!(summary.bytes, 7 + 300_000 + 6);
    assert_eq!(hashed.load(Ordering::Relaxed), 2 * summary.bytes);
}

#[test]
fn every_kind_of_difference_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    populate(&a);
    populate(&b);
    write(&a, "only-in-a", b"a");
    write(&b, "only-in-b", b"b");
    write(&b, "html/index.html", b"<HTML>");
    write(&b, "Logs/server.log", b"short");
    fs::remove_dir(b.join("empty")).unwrap();
    write(&b, "empty", b"now a file");
    let summary = verify_trees(&a, &b, &Excludes::new(&[], true).unwrap(), &no_progress).unwrap();
    let lines: Vec<String> = summary.differences.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        lines,
        [
            "size: Logs/server.log (a 300000, b 5)",
            "kind: empty",
            "content: html/index.html",
            "missing: only-in-a",
            "extra: only-in-b",
        ]
    );
}

#[test]
fn listing_hashes_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    populate(tmp.path());
    let listing = list_tree(tmp.path(), &Excludes::new(&[], true).unwrap(), &no_progress).unwrap();
    let log = listing
        .entries
        .iter()
        .find(|e| e.path == "Logs/server.log")
        .unwrap();
    assert_eq!(log.kind, EntryKind::File);
    assert_eq!(log.file_hash, swrepl_tree::hash_bytes(&vec![b'x'; 300_000]));
    assert_eq!(
        log.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(),
        300_000
    );
    assert_eq!(compare(&listing.entries, &listing.entries), []);
    let mut fewer = listing.entries.clone();
    fewer.retain(|e| e.path != "empty");
    assert_eq!(
        compare(&listing.entries, &fewer),
        [Difference::Missing {
            path: "empty".into()
        }]
    );
}

#[test]
fn missing_root_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = verify_trees(
        &tmp.path().join("nope"),
        tmp.path(),
        &Excludes::new(&[], true).unwrap(),
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, swrepl_tree::TreeError::RootMissing { .. }));
}

/// `verify_trees` hashes without chunking; its verdicts must be those of comparing full chunked
/// listings (what it did before, and what a remote verify still does with `list_tree`).
#[test]
fn hash_only_verify_agrees_with_chunked_listings() {
    let excludes = Excludes::new(&[], true).unwrap();
    let big = noise(3 * 1024 * 1024 + 5, 11);
    let mut big_edited = big.clone();
    big_edited[2 * 1024 * 1024 + 100] ^= 0xff; // same size, one byte differs past the first block
    let cases: [(&str, &[u8]); 3] = [
        ("identical", &big),
        ("one content difference", &big_edited),
        ("one size difference", &big[..big.len() - 1]),
    ];
    for (case, b_content) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        populate(&a);
        populate(&b);
        write(&a, "Logs/big.bin", &big);
        write(&b, "Logs/big.bin", b_content);

        let summary = verify_trees(&a, &b, &excludes, &no_progress).unwrap();
        let listing_a = list_tree(&a, &excludes, &no_progress).unwrap();
        let listing_b = list_tree(&b, &excludes, &no_progress).unwrap();
        let chunked_verdict = compare(&listing_a.entries, &listing_b.entries);

        assert!(
            summary.problems.is_empty(),
            "{case}: {:?}",
            summary.problems
        );
        assert_eq!(summary.differences, chunked_verdict, "{case}");
        let expected: Vec<Difference> = match case {
            "identical" => vec![],
            "one content difference" => vec![Difference::Content {
                path: "Logs/big.bin".into(),
            }],
            _ => vec![Difference::Size {
                path: "Logs/big.bin".into(),
                a: big.len() as u64,
                b: big.len() as u64 - 1,
            }],
        };
        assert_eq!(summary.differences, expected, "{case}");
        assert_eq!(summary.files, 4, "{case}");
        assert_eq!(summary.bytes, 7 + 300_000 + 6 + big.len() as u64, "{case}");
    }
}
