//! Wire protocol throughput: encoding and decoding the two messages that dominate traffic, an
//! `Upsert` describing a large file (1000 chunks) and a 64 KiB `ChunkData`.
//!
//! Run with `cargo bench --bench proto`. Throughput is reported in frame bytes per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use swrepl_proto::{
    encode_frame, Attributes, ChunkRef, EntryKind, FileEntry, FrameDecoder, Message,
};

const CHUNKS: usize = 1000;
const CHUNK_DATA_LEN: usize = 64 * 1024;

/// An `Upsert` of a ~64 MiB file in 1000 chunks with real blake3 hashes.
fn upsert_with_1000_chunks() -> Message {
    let chunks: Vec<ChunkRef> = (0..CHUNKS as u32)
        .map(|i| ChunkRef {
            hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            len: 60_000 + (i * 37) % 8_000,
        })
        .collect();
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    Message::Upsert {
        seq: 123_456,
        entry: FileEntry {
            path: "Supportworks Server/data/mailarchive/2025/archive.mbx".into(),
            kind: EntryKind::File,
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            attributes: Attributes {
                unix_mode: 0o644,
                windows: 0x20,
            },
            chunks,
            file_hash: *blake3::hash(b"whole file").as_bytes(),
        },
    }
}

fn chunk_data_64k() -> Message {
    let data: Vec<u8> = (0..CHUNK_DATA_LEN).map(|i| (i * 31 % 251) as u8).collect();
    Message::ChunkData {
        seq: 123_456,
        index: 17,
        data,
    }
}

fn bench_message(c: &mut Criterion, name: &str, msg: &Message) {
    let frame = encode_frame(msg).expect("bench message fits in a frame");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("encode_frame", |b| {
        b.iter(|| encode_frame(black_box(msg)).expect("fits"))
    });
    group.bench_function("decode_frame", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::default();
            decoder.push(black_box(&frame));
            decoder
                .next_message()
                .expect("valid frame")
                .expect("complete frame")
        })
    });
    group.finish();
}

fn proto(c: &mut Criterion) {
    bench_message(c, "upsert_1000_chunks", &upsert_with_1000_chunks());
    bench_message(c, "chunk_data_64KiB", &chunk_data_64k());
}

criterion_group!(benches, proto);
criterion_main!(benches);
