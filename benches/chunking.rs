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
    let mib: u64 = std::env::var("SWREPL_BENCH_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
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

criterion_group!(benches, chunking, large_file);
criterion_main!(benches);
