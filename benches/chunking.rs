//! Throughput of content-defined chunking + blake3 (what a scan pays per byte read), with blake3
//! alone for comparison.

mod common;

use common::noise;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

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

criterion_group!(benches, chunking);
criterion_main!(benches);
