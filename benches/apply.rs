//! Receiver-side costs, in process (no network):
//!
//! - `prepare_upsert`: an announced file before any data is asked for, a new entry with many
//!   chunks, none of which the receiver holds (the initial sync of a large file). The receiver's
//!   index knows a small tree (1 000 files of 16 KiB), so its chunk table is not empty. The
//!   staging file is discarded after each call; only `prepare_upsert` is timed.
//!   `SWREPL_BENCH_CHUNKS=N` changes the number of chunks (default 100 000; the protocol allows
//!   400 000).
//! - `rebuild`: a 4 KiB overwrite in a large file (default 256 MiB, `SWREPL_BENCH_EDIT_MIB`),
//!   from announcement to installed: the changed chunks come "from the peer", the rest is copied
//!   from the previous version (checked chunk by chunk), the whole-file hash checked, the file
//!   fsynced, the old version archived. Each iteration flips the file between two versions; the
//!   archive is emptied outside the timed part.
//!
//! Trees live in tmpfs (`/dev/shm`) when there is one (`SWREPL_BENCH_DIR` picks another place).
//!
//! Run: `cargo bench --bench apply` (about a minute).

mod common;

use common::{noise, scratch_dir};

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swrepl_proto::{Attributes, ChunkRef, EntryKind, FileEntry};
use swrepl_sync::apply::{Applier, Completion, Prepared};
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

/// An entry for `data` as a sender would announce it.
fn entry_of(path: &str, data: &[u8]) -> FileEntry {
    let chunked = swrepl_tree::chunk_reader(data).expect("chunking from memory cannot fail");
    FileEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size: chunked.size,
        mtime_ns: 1_700_000_000_000_000_000,
        attributes: Attributes {
            unix_mode: 0o644,
            windows: 0x20,
        },
        chunks: chunked.chunks,
        file_hash: chunked.file_hash,
    }
}

/// Announces `entry`, hands over the chunks asked for (cut from `data`) and installs it.
fn install(applier: &mut Applier, entry: &FileEntry, data: &[u8]) {
    let (mut pending, mut need) = match applier
        .prepare_upsert(entry.clone(), &mut HashSet::new())
        .expect("prepare_upsert failed")
    {
        Prepared::File { pending, need } => (pending, need),
        _ => panic!("an edited file must need content"),
    };
    loop {
        for &i in &need {
            let start: usize = entry.chunks[..i as usize]
                .iter()
                .map(|c| c.len as usize)
                .sum();
            let end = start + entry.chunks[i as usize].len as usize;
            applier
                .write_chunk(&mut pending, i, &data[start..end])
                .expect("write_chunk failed");
        }
        match applier.complete(&mut pending).expect("complete failed") {
            Completion::Installed => return,
            Completion::NeedMore(more) => need = more,
        }
    }
}

fn rebuild(c: &mut Criterion) {
    let mib: usize = std::env::var("SWREPL_BENCH_EDIT_MIB")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let scratch = scratch_dir("apply-rebuild");
    let root = scratch.path().join("slave");
    let archive = scratch.path().join("archive");
    std::fs::create_dir_all(root.join("Big")).expect("cannot create the Slave root");
    let one = noise(11, mib << 20);
    let mut two = one.clone();
    let middle = one.len() / 2;
    two[middle..middle + 4096].copy_from_slice(&noise(12, 4096));
    std::fs::write(root.join("Big/calls.idx"), &one).expect("cannot write the large file");
    let versions = [
        entry_of("Big/calls.idx", &two),
        entry_of("Big/calls.idx", &one),
    ];
    let excludes = Excludes::new(&[], true).expect("default excludes are valid");
    let mut applier =
        Applier::open(&root, &archive, None, excludes).expect("cannot open the receiver's root");

    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(one.len() as u64));
    let mut flip = 0usize;
    group.bench_function(format!("rebuild {mib} MiB file after a 4 KiB edit"), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (entry, data) = if flip % 2 == 0 {
                    (&versions[0], &two)
                } else {
                    (&versions[1], &one)
                };
                flip += 1;
                let started = Instant::now();
                install(&mut applier, entry, data);
                total += started.elapsed();
                // The archive's folder stays (the receiver holds it open); its generations go.
                for generation in std::fs::read_dir(&archive).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir_all(generation.path());
                }
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, prepare_upsert, rebuild);
criterion_main!(benches);
