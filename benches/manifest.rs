//! Stat-only rescan of an unchanged tree: what the sender pays every safety-net rescan and at
//! every (re)connect, once the index knows every file.
//!
//! The tree (100 000 small files in 1 000 folders by default; `SWREPL_BENCH_FILES` changes the
//! count) is built once, in tmpfs (`/dev/shm`) when there is one so the disk's noise stays out,
//! and scanned once to fill the index. Each iteration is then one [`Scanner::scan`]: walk + stat of
//! every entry, load of the index, manifest diff, and the index write-back (which finds nothing
//! to write). A second benchmark times loading the index alone, to split the cost.
//!
//! Peak memory: the first scan (which reads every file) runs in a child process, and one rescan
//! runs before criterion starts, its peak resident memory printed (`peak RSS of a rescan`, from
//! `VmHWM` in `/proc/self/status` on Linux, reset just before it).
//!
//! Run: `cargo bench --bench manifest`.

mod common;

use common::scratch_dir;

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use swrepl_tree::{Excludes, Index, Scanner};

const DEFAULT_FILES: usize = 100_000;
const FILES_PER_DIR: usize = 100;
/// Set (to "root index-path") in the child process that runs the first scan.
const FIRST_SCAN_ENV: &str = "SWREPL_BENCH_MANIFEST_FIRST_SCAN";

fn file_count() -> usize {
    std::env::var("SWREPL_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_FILES)
}

/// `files` small files (0–255 bytes) spread over folders shaped like a MIME attachment store.
fn build_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!(
            "Supportworks Server/data/mime/{:02}/{:04}",
            i / (FILES_PER_DIR * 100),
            i / FILES_PER_DIR
        ));
        if i % FILES_PER_DIR == 0 {
            std::fs::create_dir_all(&dir).expect("cannot create a folder of the bench tree");
        }
        let content = vec![(i % 251) as u8; i % 256];
        std::fs::write(dir.join(format!("call-{i:07}.eml")), content)
            .expect("cannot write a file of the bench tree");
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    index_path: PathBuf,
}

fn fixture(files: usize) -> Fixture {
    let dir = scratch_dir("manifest");
    let root = dir.path().join("master");
    let index_path = dir.path().join("state/index.db");
    build_tree(&root, files);
    // In a child process: the first scan reads every file and its memory is not what is measured.
    let status = std::process::Command::new(std::env::current_exe().expect("no current exe"))
        .env(FIRST_SCAN_ENV, "1")
        .env("SWREPL_BENCH_ROOT", &root)
        .env("SWREPL_BENCH_INDEX", &index_path)
        .status()
        .expect("cannot start the first scan");
    assert!(status.success(), "the first scan failed: {status}");
    Fixture {
        _dir: dir,
        root,
        index_path,
    }
}

/// The child process's job: scan the tree once to fill the index.
fn first_scan() {
    let var = |name| PathBuf::from(std::env::var_os(name).expect("first scan: variable missing"));
    let mut scanner = new_scanner(&var("SWREPL_BENCH_ROOT"), &var("SWREPL_BENCH_INDEX"));
    let first = scanner.scan().expect("first scan of the bench tree failed");
    assert!(
        first.problems.is_empty(),
        "the first scan met problems: {:?}",
        first.problems
    );
}

fn new_scanner(root: &Path, index_path: &Path) -> Scanner {
    let excludes = Excludes::new(&[], true).expect("default excludes are valid");
    let index = Index::open(index_path).expect("cannot open the bench index");
    Scanner::new(root, excludes, index)
}

/// Resets the process's peak resident memory to its current value (Linux; elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory in kB since the last reset (`None` where unknown).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rescan(c: &mut Criterion) {
    let files = file_count();
    let fx = fixture(files);
    let mut scanner = new_scanner(&fx.root, &fx.index_path);

    // One rescan outside criterion first, for its memory: criterion's own analysis allocates
    // more than a rescan of a small tree.
    reset_peak_rss();
    let before = peak_rss_kb();
    scanner.scan().expect("rescan failed");
    if let (Some(before), Some(peak)) = (before, peak_rss_kb()) {
        eprintln!(
            "peak RSS of a rescan of {files} files: {:.1} MiB ({:.1} MiB before it)",
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        );
    }

    let mut group = c.benchmark_group("manifest");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(files as u64));
    group.bench_function(format!("rescan unchanged {files} files"), |b| {
        b.iter(|| {
            let outcome = scanner.scan().expect("rescan failed");
            assert!(outcome.changes.is_empty(), "the tree did not change");
            assert_eq!(outcome.files_hashed, 0, "a rescan must be stat-only");
            outcome.entries.len()
        })
    });
    group.bench_function(format!("index load {files} files"), |b| {
        b.iter(|| scanner.index().all().expect("index load failed").len())
    });
    group.finish();
}

criterion_group!(benches, rescan);

fn main() {
    if std::env::var_os(FIRST_SCAN_ENV).is_some() {
        first_scan();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
