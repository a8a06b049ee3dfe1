//! Full scan with an empty index: what the sender pays before the first sync of a new pair (every
//! file is read, chunked and hashed, on as many threads as the machine has cores, up to 8).
//!
//! Two trees, built once in tmpfs (`/dev/shm`) when there is one:
//! - `many files`: 512 files of 128 KiB (64 MiB), the hashing spread evenly;
//! - `files + one large`: 256 files of 128 KiB and one 64 MiB file that comes last in walk order
//!   (96 MiB), where the order in which files are handed to the threads decides whether both
//!   cores stay busy to the end.
//!
//! Each iteration is one [`Scanner::scan`] against a fresh in-memory [`Index`]. Run with
//! `taskset -c 0` to see the single-core time for comparison.
//!
//! Run: `cargo bench --bench scan` (about a minute).

mod common;

use common::{noise, scratch_dir};

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swrepl_tree::{Excludes, Index, Scanner};

const SMALL_FILE_BYTES: usize = 128 * 1024;
const LARGE_FILE_BYTES: usize = 64 * 1024 * 1024;

/// `small` files of 128 KiB in 16 folders, then (when `large`) one 64 MiB file last in walk
/// order; returns the bytes written.
fn build_tree(root: &Path, small: u64, large: bool) -> u64 {
    for i in 0..small {
        let dir = root.join(format!("Attachments/{:02}", i % 16));
        std::fs::create_dir_all(&dir).expect("cannot create a folder");
        std::fs::write(dir.join(format!("{i:04}.eml")), noise(i, SMALL_FILE_BYTES))
            .expect("cannot write a file");
    }
    let mut total = small * SMALL_FILE_BYTES as u64;
    if large {
        let dir = root.join("Zz backups");
        std::fs::create_dir_all(&dir).expect("cannot create a folder");
        std::fs::write(dir.join("export.bin"), noise(u64::MAX, LARGE_FILE_BYTES))
            .expect("cannot write the large file");
        total += LARGE_FILE_BYTES as u64;
    }
    total
}

fn bench_tree(c: &mut Criterion, name: &str, small: u64, large: bool) {
    let scratch = scratch_dir("scan");
    let root = scratch.path().join("master");
    let bytes = build_tree(&root, small, large);
    let excludes = Excludes::new(&[], true).expect("default excludes are valid");

    let mut group = c.benchmark_group("scan");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(format!("full scan, no index, {name}"), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let index = Index::open_in_memory().expect("cannot open an in-memory index");
                let mut scanner = Scanner::new(&root, excludes.clone(), index);
                let started = Instant::now();
                let outcome = scanner.scan().expect("scan failed");
                total += started.elapsed();
                assert_eq!(outcome.bytes_hashed, bytes, "every byte must be hashed");
            }
            total
        });
    });
    group.finish();
}

fn scan(c: &mut Criterion) {
    bench_tree(c, "many files", 512, false);
    bench_tree(c, "files + one large", 256, true);
}

criterion_group!(benches, scan);
criterion_main!(benches);
