//! Receiver-side cost of an announced file before any data is asked for:
//! `Applier::prepare_upsert` of a new entry with many chunks, none of which the receiver holds
//! (the initial sync of a large file). The receiver's index knows a small tree (1 000 files of
//! 16 KiB), so its chunk table is not empty. The staging file is sparse and discarded after each
//! call; only `prepare_upsert` is timed.
//!
//! `SWREPL_BENCH_CHUNKS=N` changes the number of chunks (default 100 000; the protocol allows
//! 400 000). Trees live in tmpfs (`/dev/shm`) when there is one (`SWREPL_BENCH_DIR` picks another
//! place).
//!
//! Run: `cargo bench --bench apply` (under a minute).

mod common;

use common::{noise, scratch_dir};

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swrepl_proto::{Attributes, ChunkRef, EntryKind, FileEntry};
use swrepl_sync::apply::{Applier, Prepared};
use swrepl_tree::Excludes;

const KNOWN_FILES: u64 = 1_000;
const KNOWN_FILE_BYTES: usize = 16 * 1024;
const CHUNK_LEN: u32 = 4096;

fn build_known_tree(root: &Path) {
    for i in 0..KNOWN_FILES {
        let dir = root.join(format!("Attachments/{:02}", i % 20));
        std::fs::create_dir_all(&dir).expect("cannot create a folder");
        std::fs::write(dir.join(format!("{i}.eml")), noise(i, KNOWN_FILE_BYTES))
            .expect("cannot write a file");
    }
}

/// A file of `chunks` distinct chunks that nothing on the receiver holds.
fn announced_entry(chunks: u32) -> FileEntry {
    FileEntry {
        path: "Big/new.bin".to_string(),
        kind: EntryKind::File,
        size: u64::from(chunks) * u64::from(CHUNK_LEN),
        mtime_ns: 1_700_000_000_000_000_000,
        attributes: Attributes {
            unix_mode: 0o644,
            windows: 0x20,
        },
        chunks: (0..chunks)
            .map(|i| ChunkRef {
                hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
                len: CHUNK_LEN,
            })
            .collect(),
        file_hash: *blake3::hash(b"new").as_bytes(),
    }
}

fn prepare_upsert(c: &mut Criterion) {
    let chunks: u32 = std::env::var("SWREPL_BENCH_CHUNKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let scratch = scratch_dir("apply");
    let root = scratch.path().join("slave");
    std::fs::create_dir_all(&root).expect("cannot create the Slave root");
    build_known_tree(&root);
    let excludes = Excludes::new(&[], true).expect("default excludes are valid");
    let mut applier = Applier::open(&root, &scratch.path().join("archive"), None, excludes)
        .expect("cannot open the receiver's root");
    let entry = announced_entry(chunks);

    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(u64::from(chunks)));
    group.bench_function(format!("prepare_upsert new file of {chunks} chunks"), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let mut requested = HashSet::new();
                let started = Instant::now();
                let prepared = applier
                    .prepare_upsert(entry.clone(), &mut requested)
                    .expect("prepare_upsert failed");
                total += started.elapsed();
                match prepared {
                    Prepared::File { pending, need } => {
                        assert_eq!(need.len(), chunks as usize, "every chunk must be asked for");
                        applier.discard(*pending);
                    }
                    _ => panic!("a new file must need content"),
                }
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, prepare_upsert);
criterion_main!(benches);
