//! Throughput of content-defined chunking + blake3 (what a scan pays per byte read), with blake3
//! alone for comparison.
//!
//! - `fastcdc+blake3 64MiB`: `chunk_reader` over a slice in memory, one thread (streams always
//!   are chunked on one thread).
//! - `chunk_file <N>MiB`: `chunk_file` of one large file in tmpfs (`/dev/shm` when there is one):
//!   what the scanner does with a big file; large files are cut in segments on all cores. The
//!   size is `SWREPL_BENCH_FILE_MIB` (default 256; the figure is for 1024).
//! - `blake3 only 64MiB`: one thread, the bound for one core; `blake3 only file` the same file
//!   hashed without chunking by a single reader (what hashing it cost before segments).
//!
//! - `rechunk <N>MiB after …`: the same file after a 4 KiB overwrite and after a 100-byte
//!   insert in the middle, chunked in full (`full`), from its previous chunk list and segment
//!   values (`with previous chunks`, `rechunk_file`: what the scanner pays for a small edit in a
//!   large file that the index knows), and from the chunk list alone (`… without segment values`:
//!   every old chunk hashed).
//!
//! Run: `cargo bench --bench chunking` (a minute or two; the file is removed afterwards).

mod common;

use common::{noise, scratch_dir};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::io::Write;

const DATA_LEN: usize = 64 * 1024 * 1024;

fn chunking(c: &mut Criterion) {
    let data = noise(0, DATA_LEN);
    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(DATA_LEN as u64));
    group.sample_size(10);
    group.bench_function("fastcdc+blake3 64MiB", |b| {
        b.iter(|| {
            swrepl_tree::chunk_reader(black_box(&data[..])).expect("reading a slice cannot fail")
        })
    });
    group.bench_function("blake3 only 64MiB", |b| {
        b.iter(|| blake3::hash(black_box(&data)))
    });
    group.finish();
}

fn large_file(c: &mut Criterion) {
    let mib = bench_file_mib();
    let dir = scratch_dir("chunking");
    let path = dir.path().join("large.bin");
    {
        let mut file = std::fs::File::create(&path).expect("cannot create the file");
        for i in 0..mib {
            file.write_all(&noise(i, 1024 * 1024))
                .expect("cannot write the file");
        }
    }
    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(mib * 1024 * 1024));
    group.sample_size(10);
    group.bench_function(format!("chunk_file {mib}MiB"), |b| {
        b.iter(|| swrepl_tree::chunk_file(black_box(&path)).expect("cannot chunk the file"))
    });
    group.bench_function(format!("blake3 only file {mib}MiB"), |b| {
        b.iter(|| {
            let file = std::fs::File::open(&path).expect("cannot open the file");
            let mut hasher = blake3::Hasher::new();
            std::io::copy(
                &mut std::io::BufReader::with_capacity(256 * 1024, file),
                &mut hasher,
            )
            .expect("cannot read the file");
            hasher.finalize()
        })
    });
    group.finish();
}

fn rechunk_after_edit(c: &mut Criterion) {
    let mib = bench_file_mib();
    let dir = scratch_dir("rechunk");
    let path = dir.path().join("large.bin");
    let mut data = Vec::with_capacity((mib * 1024 * 1024) as usize);
    for i in 0..mib {
        data.extend_from_slice(&noise(i, 1024 * 1024));
    }
    std::fs::write(&path, &data).expect("cannot write the file");
    let previous = swrepl_tree::chunk_file(&path).expect("cannot chunk the file");
    let chunks_only = swrepl_tree::Chunked {
        segment_cvs: Vec::new(),
        ..previous.clone()
    };
    let middle = data.len() / 2;
    let mut overwritten = data.clone();
    overwritten[middle..middle + 4096].copy_from_slice(&noise(u64::MAX, 4096));
    let mut inserted = data;
    inserted.splice(middle..middle, noise(u64::MAX - 1, 100));

    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(mib * 1024 * 1024));
    group.sample_size(10);
    for (edit, content) in [
        ("4 KiB overwrite", overwritten),
        ("100-byte insert", inserted),
    ] {
        std::fs::write(&path, &content).expect("cannot write the file");
        drop(content);
        group.bench_function(format!("rechunk {mib}MiB after {edit}: full"), |b| {
            b.iter(|| swrepl_tree::chunk_file(black_box(&path)).expect("cannot chunk the file"))
        });
        for (what, previous) in [
            ("with previous chunks", &previous),
            ("with previous chunks without segment values", &chunks_only),
        ] {
            group.bench_function(format!("rechunk {mib}MiB after {edit}: {what}"), |b| {
                b.iter(|| {
                    swrepl_tree::rechunk_file(black_box(&path), black_box(previous))
                        .expect("cannot chunk the file")
                })
            });
        }
    }
    group.finish();
}

/// `SWREPL_BENCH_FILE_MIB`, default 256.
fn bench_file_mib() -> u64 {
    std::env::var("SWREPL_BENCH_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

criterion_group!(benches, chunking, large_file, rechunk_after_edit);
criterion_main!(benches);
