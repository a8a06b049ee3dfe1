//! Content-defined chunking and hashing.
//!
//! Boundaries come from fastcdc v2020 with the crate's fixed sizes: they are part of the
//! deduplication contract between peers (both must cut the same data the same way), so the sizes
//! and the fastcdc major version must not change without a protocol version bump.

use std::io::Read;
use std::path::Path;

use fastcdc::v2020::StreamCDC;

use crate::{ChunkRef, Hash, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// The result of chunking one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunked {
    /// Chunks in stream order; their lengths sum to `size`.
    pub chunks: Vec<ChunkRef>,
    /// blake3 of the whole stream.
    pub file_hash: Hash,
    /// Bytes read.
    pub size: u64,
}

/// blake3 of `data`.
pub fn hash_bytes(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Chunks and hashes everything `reader` yields, holding at most one maximum-size chunk in memory.
pub fn chunk_reader<R: Read>(reader: R) -> std::io::Result<Chunked> {
    chunk_reader_with_progress(reader, &mut |_| {})
}

/// Chunks and hashes the file at `path`.
pub fn chunk_file(path: &Path) -> std::io::Result<Chunked> {
    chunk_reader(std::fs::File::open(path)?)
}

/// [`chunk_reader`], calling `progress` with the length of every chunk as it is hashed.
pub(crate) fn chunk_reader_with_progress<R: Read>(
    reader: R,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Chunked> {
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let cdc = StreamCDC::new(
        reader,
        CHUNK_MIN as usize,
        CHUNK_AVG as usize,
        CHUNK_MAX as usize,
    );
    for chunk in cdc {
        let chunk = chunk.map_err(std::io::Error::from)?;
        whole.update(&chunk.data);
        // A chunk is never longer than CHUNK_MAX, so its length always fits in a u32.
        let len = u32::try_from(chunk.data.len()).map_err(|_| {
            std::io::Error::other(format!(
                "chunk of {} bytes exceeds the maximum",
                chunk.data.len()
            ))
        })?;
        chunks.push(ChunkRef {
            hash: hash_bytes(&chunk.data),
            len,
        });
        size += u64::from(len);
        progress(u64::from(len));
    }
    Ok(Chunked {
        chunks,
        file_hash: *whole.finalize().as_bytes(),
        size,
    })
}

/// Largest read when only the whole-file hash is needed: big enough for blake3's SIMD paths and
/// few system calls, small enough to stay in cache.
const HASH_BLOCK: usize = 1024 * 1024;

/// The blake3 of everything `reader` yields and its length, without chunking: for comparisons
/// that need only the whole-file hash. `size_hint` (the expected length) sizes the read buffer,
/// so small files do not allocate a whole block; `progress` gets the length of every block read.
pub(crate) fn hash_reader_with_progress<R: Read>(
    mut reader: R,
    size_hint: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<(Hash, u64)> {
    let buffer_len = usize::try_from(size_hint)
        .unwrap_or(HASH_BLOCK)
        .clamp(8 * 1024, HASH_BLOCK);
    let mut buffer = vec![0u8; buffer_len];
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
        progress(n as u64);
    }
    Ok((*hasher.finalize().as_bytes(), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (splitmix64), so tests do not depend on a RNG crate.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
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

    #[test]
    fn empty_input_has_no_chunks() {
        let c = chunk_reader(&[][..]).unwrap();
        assert!(c.chunks.is_empty());
        assert_eq!(c.size, 0);
        assert_eq!(c.file_hash, hash_bytes(b""));
    }

    #[test]
    fn chunking_is_deterministic_and_sizes_are_bounded() {
        let data = noise(3 * 1024 * 1024 + 17, 1);
        let a = chunk_reader(&data[..]).unwrap();
        let b = chunk_reader(&data[..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.file_hash, hash_bytes(&data));
        assert_eq!(a.size, data.len() as u64);
        assert!(
            a.chunks.len() > 10,
            "3 MiB should give many chunks, got {}",
            a.chunks.len()
        );
        let (last, rest) = a.chunks.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|c| c.len >= CHUNK_MIN && c.len <= CHUNK_MAX));
        assert!(last.len <= CHUNK_MAX);
    }

    #[test]
    fn insert_near_start_keeps_most_chunks() {
        let data = noise(4 * 1024 * 1024, 2);
        let mut edited = data.clone();
        edited.splice(1000..1000, b"inserted bytes".iter().copied());
        let before = chunk_reader(&data[..]).unwrap();
        let after = chunk_reader(&edited[..]).unwrap();
        let old: std::collections::HashSet<_> = before.chunks.iter().map(|c| c.hash).collect();
        let shared = after
            .chunks
            .iter()
            .filter(|c| old.contains(&c.hash))
            .count();
        assert!(
            shared + 2 >= after.chunks.len(),
            "only {shared} of {} chunks survived an insert",
            after.chunks.len()
        );
        assert_ne!(before.file_hash, after.file_hash);
    }

    #[test]
    fn hash_only_agrees_with_chunking() {
        for len in [
            0usize,
            1,
            8 * 1024,
            HASH_BLOCK - 1,
            HASH_BLOCK,
            2 * HASH_BLOCK + 17,
        ] {
            let data = noise(len, len as u64);
            let mut progressed = 0u64;
            let (hash, size) = hash_reader_with_progress(
                SlowReader {
                    data: &data,
                    step: 70_001,
                },
                10,
                &mut |n| progressed += n,
            )
            .unwrap();
            let chunked = chunk_reader(&data[..]).unwrap();
            assert_eq!(hash, chunked.file_hash, "len {len}");
            assert_eq!(size, chunked.size);
            assert_eq!(progressed, len as u64);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn chunk_lengths_sum_to_size_and_rechunking_agrees(len in 0usize..700_000, seed: u64) {
            let data = noise(len, seed);
            let a = chunk_reader(&data[..]).unwrap();
            let total: u64 = a.chunks.iter().map(|c| u64::from(c.len)).sum();
            prop_assert_eq!(total, len as u64);
            prop_assert_eq!(a.size, len as u64);
            // A reader that returns few bytes per call must not move any boundary.
            let b = chunk_reader(SlowReader { data: &data, step: 4093 }).unwrap();
            prop_assert_eq!(a, b);
        }
    }

    struct SlowReader<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for SlowReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }
}
