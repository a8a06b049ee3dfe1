//! Throughput of content-defined chunking + blake3 (what a scan pays per byte read), with blake3
//! alone for comparison.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const DATA_LEN: usize = 64 * 1024 * 1024;

/// Deterministic pseudo-random bytes (splitmix64): incompressible, like most attachments.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x5EED_u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chunking(c: &mut Criterion) {
    let data = noise(DATA_LEN);
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
