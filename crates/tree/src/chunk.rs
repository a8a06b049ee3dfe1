//! Content-defined chunking and hashing.
//!
//! Boundaries come from fastcdc v2020 with the crate's fixed sizes: they are part of the
//! deduplication contract between peers (both must cut the same data the same way), so the sizes
//! and the fastcdc major version must not change without a protocol version bump.
//!
//! Every path here cuts exactly where fastcdc's sequential `StreamCDC` cuts (the tests compare
//! them): where a chunk ends depends only on where it starts and on the `CHUNK_MAX` bytes that
//! follow (or the end of the data), so any code that hands fastcdc that window from each chunk
//! start finds the same cuts.
//!
//! - Streams and files under [`PARALLEL_MIN_LEN`] are chunked on one thread, through one large
//!   buffer (chunks are hashed in place, never copied out).
//! - A larger file is split into segments of [`SEGMENT_LEN`] analysed on all cores: each worker
//!   reads its segment (plus `CHUNK_MAX` bytes of the next, with positional reads) and chunks it
//!   as if a chunk started at the segment's first byte, hashing those chunks and the segment's
//!   blake3 subtree. Then, in order, the true cut sequence coming from the previous segment is
//!   continued chunk by chunk until it lands on a cut of the segment's guess; from there on both
//!   are the same sequence (same start, same bytes), so the rest of the guess is taken as is.
//!   Content-defined cuts resynchronise within a few chunks; data that never does (long runs of
//!   one byte value) is simply chunked sequentially from the segment's buffer. The whole-file
//!   hash is assembled from the segments' subtree chaining values along blake3's tree.

use std::io::Read;
use std::path::Path;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use fastcdc::v2020::{cut, select_masks, Normalization};

use crate::parallel::{for_each_segment, segment_workers};
use crate::{ChunkRef, Hash, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

mod rechunk;

/// The result of chunking one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunked {
    /// Chunks in stream order; their lengths sum to `size`.
    pub chunks: Vec<ChunkRef>,
    /// blake3 of the whole stream.
    pub file_hash: Hash,
    /// Bytes read.
    pub size: u64,
    /// When the file was hashed in segments (8 MiB, from its start; large files): each
    /// segment's blake3 chaining value, the subtree the whole-file hash is built from. Empty
    /// otherwise. Given back to [`rechunk_file`] after an edit, it shows which segments hold the
    /// same bytes as before without hashing their chunks.
    pub segment_cvs: Vec<Hash>,
}

/// blake3 of `data`.
pub fn hash_bytes(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Chunks and hashes everything `reader` yields, holding at most a few MiB in memory.
pub fn chunk_reader<R: Read>(reader: R) -> std::io::Result<Chunked> {
    chunk_stream(reader, STREAM_BUFFER_LEN as u64, &mut |_| {})
}

/// Chunks and hashes the file at `path`; a large file on all cores.
pub fn chunk_file(path: &Path) -> std::io::Result<Chunked> {
    chunk_reader_with_progress(std::fs::File::open(path)?, &mut |_| {})
}

/// Chunks and hashes the file at `path` exactly like [`chunk_file`], using `previous` (what
/// chunking the file gave before it changed, e.g. as the index recorded it) to skip the
/// content-defined scan wherever the old chunks are still there: each is taken once its bytes
/// hash to its recorded hash, or without hashing when the whole segment it lies in hashes to the
/// recorded segment value (see the `rechunk` module). A stale, damaged or unrelated list only
/// costs the hashing of the candidates that fail.
pub fn rechunk_file(path: &Path, previous: &Chunked) -> std::io::Result<Chunked> {
    rechunk_reader_with_progress(
        std::fs::File::open(path)?,
        &previous.chunks,
        &previous.segment_cvs,
        &mut |_| {},
    )
}

/// Files shorter than this are chunked in full even when their previous chunks are known: the
/// scan costs well under a millisecond there.
pub(crate) const RECHUNK_MIN_LEN: u64 = 1024 * 1024;

/// [`chunk_reader_with_progress`] with the previous chunk list (and segment values) of the
/// file, as [`rechunk_file`] uses them; large files on all cores.
pub(crate) fn rechunk_reader_with_progress(
    file: std::fs::File,
    previous: &[ChunkRef],
    previous_segments: &[Hash],
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Chunked> {
    let len = file.metadata()?.len();
    if len >= RECHUNK_MIN_LEN {
        if let Some(previous) = rechunk::Previous::new(previous, previous_segments) {
            let workers = if len >= PARALLEL_MIN_LEN {
                segment_workers()
            } else {
                1
            };
            let rechunked = rechunk::rechunk_segments(
                &file,
                len,
                &previous,
                SEGMENT_LEN,
                workers,
                &mut *progress,
            )?;
            if let Some((chunked, _)) = rechunked {
                return Ok(chunked);
            }
            tracing::debug!("file changed length while rechunked; chunking it in one pass");
        }
    }
    chunk_reader_with_progress(file, progress)
}

/// Files at least this long are chunked and hashed in segments on all cores.
pub const PARALLEL_MIN_LEN: u64 = 4 * SEGMENT_LEN as u64;

/// Length of a segment of a large file. A power of two (blake3 subtrees must be) and at least
/// `CHUNK_MAX` (the true cut sequence enters a segment within `CHUNK_MAX` bytes of its start).
pub(crate) const SEGMENT_LEN: usize = 8 * 1024 * 1024;

/// Read buffer of the sequential chunker: a multiple of `CHUNK_MAX`, so that the bytes left over
/// to move to the front after each fill (at most `CHUNK_MAX`) are few.
const STREAM_BUFFER_LEN: usize = 4 * 1024 * 1024 + CHUNK_MAX as usize;

/// Largest read when only the whole-file hash is needed: big enough for blake3's SIMD paths and
/// few system calls, small enough to stay in the core's cache.
const HASH_BLOCK: usize = 256 * 1024;

/// Chunks and hashes the open `file`, calling `progress` with the number of bytes done as it goes.
/// Files of [`PARALLEL_MIN_LEN`] or more are done on all cores. Reads until the end of the file:
/// when it grows or shrinks meanwhile, the result describes what was read (the caller compares
/// metadata before and after to reject such content).
pub(crate) fn chunk_reader_with_progress(
    file: std::fs::File,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Chunked> {
    let len = file.metadata()?.len();
    if len >= PARALLEL_MIN_LEN && segment_workers() > 1 {
        if let Some(chunked) =
            chunk_segments(&file, len, SEGMENT_LEN, segment_workers(), &mut *progress)?
        {
            return Ok(chunked);
        }
        // `progress` already heard of the segments done: a progress bar overshoots, no more.
        tracing::debug!("file changed length while chunked in parallel; chunking it in one pass");
    }
    chunk_stream(PositionalReader::new(&file), len, progress)
}

/// The blake3 of the open `file` and the number of bytes read, without chunking: for
/// comparisons that need only the whole-file hash. `size_hint` (the expected length) sizes the
/// read buffer and decides whether the file is hashed on all cores; `progress` gets the length
/// of every block hashed.
pub(crate) fn hash_reader_with_progress(
    file: std::fs::File,
    size_hint: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<(Hash, u64)> {
    if size_hint >= PARALLEL_MIN_LEN && segment_workers() > 1 {
        if let Some(hashed) =
            hash_segments(&file, size_hint, SEGMENT_LEN, segment_workers(), progress)?
        {
            return Ok(hashed);
        }
        tracing::debug!("file changed length while hashed in parallel; hashing it in one pass");
    }
    hash_stream(PositionalReader::new(&file), size_hint, progress)
}

/// The blake3 of the open `file`, which should be `len` bytes long, on all cores when it is at
/// least [`PARALLEL_MIN_LEN`]; `Ok(None)` when it is not `len` bytes long. Reads are positional:
/// the file's cursor is neither used nor moved. For a file assembled out of order (the receiver's
/// rebuild of a large edited file), where hashing as it is written is not possible.
pub fn hash_file_exact(file: &std::fs::File, len: u64) -> std::io::Result<Option<Hash>> {
    if len >= PARALLEL_MIN_LEN && segment_workers() > 1 {
        let hashed = hash_segments(file, len, SEGMENT_LEN, segment_workers(), &mut |_| {})?;
        return Ok(hashed.map(|(hash, _)| hash));
    }
    let (hash, size) = hash_stream(PositionalReader::new(file), len, &mut |_| {})?;
    Ok((size == len).then_some(hash))
}

/// Where fastcdc cuts, with the crate's sizes: the masks `StreamCDC::new` would pick.
struct Cutter {
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    fn new() -> Cutter {
        let (mask_s, mask_l) = select_masks(CHUNK_AVG as usize, Normalization::Level1);
        Cutter { mask_s, mask_l }
    }

    /// Length of the chunk starting at `window[0]`. `window` must hold `CHUNK_MAX` bytes or
    /// reach the end of the data; bytes past `CHUNK_MAX` are not looked at. Empty gives 0.
    fn chunk_len(&self, window: &[u8]) -> usize {
        let (_, len) = cut(
            window,
            CHUNK_MIN as usize,
            CHUNK_AVG as usize,
            CHUNK_MAX as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }
}

/// The reference for a chunk of `data` (at most `CHUNK_MAX` bytes).
fn chunk_ref(data: &[u8]) -> ChunkRef {
    ChunkRef {
        hash: hash_bytes(data),
        // Callers pass at most CHUNK_MAX bytes, which fits in a u32.
        len: u32::try_from(data.len()).unwrap_or(u32::MAX),
    }
}

/// Chunks `reader` on this thread. `size_hint` sizes the first buffer (a small file needs no
/// large one).
fn chunk_stream<R: Read>(
    mut reader: R,
    size_hint: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Chunked> {
    let cutter = Cutter::new();
    let first_len = usize::try_from(size_hint.saturating_add(1))
        .unwrap_or(STREAM_BUFFER_LEN)
        .clamp(8 * 1024, STREAM_BUFFER_LEN);
    let mut buffer = vec![0u8; first_len];
    let mut filled = 0;
    let mut whole = blake3::Hasher::new();
    // A file that is one chunk has that chunk's hash as its whole-file hash: most files are
    // small, and this spares hashing them twice.
    let mut only_chunk = None;
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let at_end = fill(&mut reader, &mut buffer, &mut filled)?;
        if !at_end && buffer.len() < STREAM_BUFFER_LEN {
            // Longer than the hint said: room for at least one full window after every cut.
            buffer.resize(STREAM_BUFFER_LEN, 0);
            continue;
        }
        let mut start = 0;
        while start < filled && (at_end || filled - start >= CHUNK_MAX as usize) {
            let len = cutter.chunk_len(&buffer[start..filled]);
            let data = &buffer[start..start + len];
            let chunk = chunk_ref(data);
            if at_end && size == 0 && len == filled {
                only_chunk = Some(chunk.hash);
            } else {
                whole.update(data);
            }
            chunks.push(chunk);
            size += len as u64;
            progress(len as u64);
            start += len;
        }
        if at_end {
            break;
        }
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
    Ok(Chunked {
        chunks,
        file_hash: only_chunk.unwrap_or_else(|| *whole.finalize().as_bytes()),
        size,
        segment_cvs: Vec::new(),
    })
}

/// Reads into `buffer[*filled..]` until it is full or the reader is at its end; true at the end.
fn fill<R: Read>(reader: &mut R, buffer: &mut [u8], filled: &mut usize) -> std::io::Result<bool> {
    while *filled < buffer.len() {
        match reader.read(&mut buffer[*filled..]) {
            Ok(0) => return Ok(true),
            Ok(n) => *filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// blake3 of `reader` on this thread, read in blocks of at most [`HASH_BLOCK`].
fn hash_stream<R: Read>(
    mut reader: R,
    size_hint: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<(Hash, u64)> {
    let buffer_len = usize::try_from(size_hint.saturating_add(1))
        .unwrap_or(HASH_BLOCK)
        .clamp(8 * 1024, HASH_BLOCK);
    let mut buffer = vec![0u8; buffer_len];
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        let at_end = fill(&mut reader, &mut buffer, &mut filled)?;
        hasher.update(&buffer[..filled]);
        size += filled as u64;
        if filled > 0 {
            progress(filled as u64);
        }
        if at_end {
            break;
        }
    }
    Ok((*hasher.finalize().as_bytes(), size))
}

/// Reading at an offset without a shared cursor, so that several threads can read one file.
pub(crate) trait ReadAt: Sync {
    /// Reads into `buf` from `offset`; returns how many bytes were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

#[cfg(unix)]
impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

#[cfg(windows)]
impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        // seek_read passes the offset with the read (OVERLAPPED), so concurrent calls are fine.
        std::os::windows::fs::FileExt::seek_read(self, buf, offset)
    }
}

#[cfg(not(any(unix, windows)))]
impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        // Only one thread ever reads on these platforms (see `segment_workers`).
        let mut file = self;
        file.seek(SeekFrom::Start(offset))?;
        file.read(buf)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// A [`Read`] over a [`ReadAt`], from offset 0 (the file's own cursor is never used, so
/// a parallel attempt that gave up leaves nothing to rewind).
struct PositionalReader<'a, S: ReadAt + ?Sized> {
    source: &'a S,
    offset: u64,
}

impl<'a, S: ReadAt + ?Sized> PositionalReader<'a, S> {
    fn new(source: &'a S) -> Self {
        PositionalReader { source, offset: 0 }
    }
}

impl<S: ReadAt + ?Sized> Read for PositionalReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads `buf.len()` bytes at `offset`, fewer only at the end of the source.
fn read_full_at<S: ReadAt + ?Sized>(
    source: &S,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match source.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The source turned out not to be `len` bytes long: the parallel attempt is abandoned.
#[derive(Debug)]
struct LengthChanged;

impl std::fmt::Display for LengthChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file changed length while being read")
    }
}

impl std::error::Error for LengthChanged {}

fn is_length_changed(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<LengthChanged>())
}

/// Segment `k` of a source of `len` bytes cut in segments of `segment_len`: where it starts,
/// where it ends, and the bytes read for it (its own and up to `CHUNK_MAX` more, for the
/// windows of the chunks that start in it).
struct SegmentData {
    start: u64,
    end: u64,
    data: Vec<u8>,
}

impl SegmentData {
    /// Reads segment `k` into `buffer`. Fails with [`LengthChanged`] when the source ends
    /// early or (for the last segment) goes on past `len`.
    fn read<S: ReadAt + ?Sized>(
        source: &S,
        len: u64,
        segment_len: usize,
        k: usize,
        mut buffer: Vec<u8>,
    ) -> std::io::Result<SegmentData> {
        let start = k as u64 * segment_len as u64;
        let end = (start + segment_len as u64).min(len);
        let read_end = (end + u64::from(CHUNK_MAX)).min(len);
        // At most segment_len + CHUNK_MAX: fits in memory, hence in usize.
        let want = (read_end - start) as usize;
        buffer.resize(want, 0);
        if read_full_at(source, &mut buffer, start)? < want {
            return Err(std::io::Error::other(LengthChanged));
        }
        if read_end == len && read_full_at(source, &mut [0u8; 1], len)? != 0 {
            return Err(std::io::Error::other(LengthChanged));
        }
        Ok(SegmentData {
            start,
            end,
            data: buffer,
        })
    }

    /// The window of the chunk starting at absolute offset `at` (within this segment's data).
    fn window(&self, at: u64) -> &[u8] {
        &self.data[(at - self.start) as usize..]
    }
}

/// A segment chunked as if a chunk started at its first byte.
struct SegmentGuess {
    segment: SegmentData,
    /// Absolute ends of the guessed chunks, increasing; the last is at or past the segment's end.
    ends: Vec<u64>,
    chunks: Vec<ChunkRef>,
    subtree: ChainingValue,
}

impl SegmentGuess {
    fn analyse(segment: SegmentData, cutter: &Cutter) -> SegmentGuess {
        let mut ends = Vec::new();
        let mut chunks = Vec::new();
        let mut subtree = blake3::Hasher::new();
        subtree.set_input_offset(segment.start);
        let mut at = segment.start;
        while at < segment.end {
            let window = segment.window(at);
            let len = cutter.chunk_len(window);
            let data = &window[..len];
            chunks.push(chunk_ref(data));
            // Hashed while the chunk is still in cache; the part past the segment's end belongs
            // to the next segment's subtree.
            let own = ((segment.end - at) as usize).min(len);
            subtree.update(&data[..own]);
            at += len as u64;
            ends.push(at);
        }
        SegmentGuess {
            subtree: subtree.finalize_non_root(),
            segment,
            ends,
            chunks,
        }
    }

    /// Index of the first guessed chunk starting at `at`, if the guess has a chunk start there.
    fn chunk_starting_at(&self, at: u64) -> Option<usize> {
        if at == self.segment.start {
            return Some(0);
        }
        self.ends.binary_search(&at).ok().map(|i| i + 1)
    }
}

/// Chunks `source` (`len` bytes) in segments on `workers` threads. `Ok(None)` when it is shorter
/// than two segments or did not have `len` bytes (it changed): chunk it sequentially instead.
fn chunk_segments<S: ReadAt + ?Sized>(
    source: &S,
    len: u64,
    segment_len: usize,
    workers: usize,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<Chunked>> {
    let segments = segment_count(len, segment_len);
    if segments < 2 {
        return Ok(None);
    }
    let cutter = Cutter::new();
    let mut chunks = Vec::with_capacity((len / u64::from(CHUNK_AVG)) as usize + 16);
    let mut subtrees = Vec::with_capacity(segments);
    // The start of the next chunk of the true sequence.
    let mut next_start = 0u64;
    let outcome = for_each_segment(
        segments,
        workers,
        |k, buffer| {
            let segment = SegmentData::read(source, len, segment_len, k, buffer)?;
            Ok(SegmentGuess::analyse(segment, &cutter))
        },
        |_, guess| {
            next_start = stitch(&guess, next_start, &cutter, &mut chunks);
            subtrees.push(guess.subtree);
            progress(guess.segment.end - guess.segment.start);
            Ok(guess.segment.data)
        },
    );
    match outcome {
        Ok(()) => Ok(Some(Chunked {
            chunks,
            file_hash: root_hash(&subtrees, len, segment_len as u64),
            size: len,
            segment_cvs: subtrees,
        })),
        Err(e) if is_length_changed(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Continues the true chunk sequence, whose next chunk starts at `next_start` (within
/// `CHUNK_MAX` of the segment's start), through `guess`'s segment: chunk by chunk until it
/// meets a chunk start of the guess, whose chunks from there on are the true ones. Returns the
/// start of the first chunk past the segment.
fn stitch(
    guess: &SegmentGuess,
    next_start: u64,
    cutter: &Cutter,
    chunks: &mut Vec<ChunkRef>,
) -> u64 {
    let segment = &guess.segment;
    let mut at = next_start;
    while at < segment.end {
        if let Some(first) = guess.chunk_starting_at(at) {
            chunks.extend_from_slice(&guess.chunks[first..]);
            return guess.ends.last().copied().unwrap_or(at);
        }
        let window = segment.window(at);
        let len = cutter.chunk_len(window);
        chunks.push(chunk_ref(&window[..len]));
        at += len as u64;
    }
    at
}

/// Hashes `source` (`len` bytes) in segments on `workers` threads. `Ok(None)` when it is shorter
/// than two segments or did not have `len` bytes (it changed): hash it sequentially instead.
///
/// Each worker reads its segment in blocks of [`HASH_BLOCK`], hashed while still in cache: only
/// the whole-file hash is wanted, so no segment is held in memory whole.
fn hash_segments<S: ReadAt + ?Sized>(
    source: &S,
    len: u64,
    segment_len: usize,
    workers: usize,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<(Hash, u64)>> {
    let segments = segment_count(len, segment_len);
    if segments < 2 {
        return Ok(None);
    }
    let mut subtrees = Vec::with_capacity(segments);
    let outcome = for_each_segment(
        segments,
        workers,
        |k, mut buffer| {
            buffer.resize(HASH_BLOCK, 0);
            let start = k as u64 * segment_len as u64;
            let end = (start + segment_len as u64).min(len);
            let mut hasher = blake3::Hasher::new();
            hasher.set_input_offset(start);
            let mut at = start;
            while at < end {
                let block = &mut buffer[..HASH_BLOCK.min((end - at) as usize)];
                if read_full_at(source, block, at)? < block.len() {
                    return Err(std::io::Error::other(LengthChanged));
                }
                hasher.update(block);
                at += block.len() as u64;
            }
            if end == len && read_full_at(source, &mut [0u8; 1], len)? != 0 {
                return Err(std::io::Error::other(LengthChanged));
            }
            Ok((hasher.finalize_non_root(), end - start, buffer))
        },
        |_, (subtree, hashed, buffer)| {
            subtrees.push(subtree);
            progress(hashed);
            Ok(buffer)
        },
    );
    match outcome {
        Ok(()) => Ok(Some((root_hash(&subtrees, len, segment_len as u64), len))),
        Err(e) if is_length_changed(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn segment_count(len: u64, segment_len: usize) -> usize {
    // A source split in segments fits in memory a segment at a time; its count fits in usize.
    len.div_ceil(segment_len as u64) as usize
}

/// The blake3 of `len` bytes from the chaining values of its segments of `segment_len` (a power
/// of two of at least one blake3 chunk; at least two segments), merged along blake3's tree:
/// every left subtree is the largest power of two of chunks that leaves something on the
/// right, hence a whole number of segments.
fn root_hash(subtrees: &[ChainingValue], len: u64, segment_len: u64) -> Hash {
    let left_len = left_subtree_len(len);
    let left_count = (left_len / segment_len) as usize;
    let left = merge(&subtrees[..left_count], left_len, segment_len);
    let right = merge(&subtrees[left_count..], len - left_len, segment_len);
    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
}

/// The chaining value of the non-root subtree of `len` bytes made of `subtrees`.
fn merge(subtrees: &[ChainingValue], len: u64, segment_len: u64) -> ChainingValue {
    if let [only] = subtrees {
        return *only;
    }
    let left_len = left_subtree_len(len);
    let left_count = (left_len / segment_len) as usize;
    let left = merge(&subtrees[..left_count], left_len, segment_len);
    let right = merge(&subtrees[left_count..], len - left_len, segment_len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::StreamCDC;
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

    /// The contract: what fastcdc's sequential StreamCDC cuts, hashed chunk by chunk (the
    /// implementation before chunking went through one buffer and onto all cores).
    pub(super) fn reference(data: &[u8]) -> Chunked {
        let cdc = StreamCDC::new(
            data,
            CHUNK_MIN as usize,
            CHUNK_AVG as usize,
            CHUNK_MAX as usize,
        );
        let chunks: Vec<ChunkRef> = cdc
            .map(|c| {
                let c = c.unwrap();
                ChunkRef {
                    hash: hash_bytes(&c.data),
                    len: c.data.len() as u32,
                }
            })
            .collect();
        Chunked {
            chunks,
            file_hash: hash_bytes(data),
            size: data.len() as u64,
            segment_cvs: Vec::new(),
        }
    }

    /// The chaining values of `data`'s segments, computed independently: none for one segment.
    pub(super) fn segment_cvs(data: &[u8], segment_len: usize) -> Vec<Hash> {
        if data.len() <= segment_len {
            return Vec::new();
        }
        data.chunks(segment_len)
            .enumerate()
            .map(|(k, segment)| {
                let mut hasher = blake3::Hasher::new();
                hasher.set_input_offset((k * segment_len) as u64);
                hasher.update(segment);
                hasher.finalize_non_root()
            })
            .collect()
    }

    /// Segments small enough that a few MiB make many of them.
    pub(super) const SMALL_SEGMENT: usize = CHUNK_MAX as usize;

    /// `chunk_segments` of `data`, with its segment values checked, then dropped (so that the
    /// result compares with [`reference`], which has none).
    fn chunk_in_segments(data: &[u8], segment_len: usize, workers: usize) -> Chunked {
        let mut progressed = 0;
        let mut chunked = chunk_segments(data, data.len() as u64, segment_len, workers, &mut |n| {
            progressed += n
        })
        .unwrap()
        .expect("at least two segments and a source that does not change");
        assert_eq!(progressed, data.len() as u64);
        assert_eq!(
            chunked.segment_cvs,
            segment_cvs(data, segment_len),
            "segment values"
        );
        chunked.segment_cvs.clear();
        chunked
    }

    pub(super) fn assert_same_chunks(actual: &Chunked, expected: &Chunked, what: &str) {
        assert_eq!(actual.size, expected.size, "{what}: size");
        assert_eq!(actual.file_hash, expected.file_hash, "{what}: file hash");
        let ends = |c: &Chunked| {
            c.chunks
                .iter()
                .scan(0u64, |end, c| {
                    *end += u64::from(c.len);
                    Some(*end)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ends(actual), ends(expected), "{what}: boundaries");
        assert_eq!(actual.chunks, expected.chunks, "{what}: chunk hashes");
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
    fn sequential_chunking_matches_stream_cdc_around_buffer_boundaries() {
        let buffer = STREAM_BUFFER_LEN;
        for len in [
            CHUNK_MAX as usize - 1,
            CHUNK_MAX as usize,
            buffer - 1,
            buffer,
            buffer + 1,
            2 * buffer + CHUNK_MAX as usize + 3,
        ] {
            let data = noise(len, len as u64);
            let expected = reference(&data);
            assert_same_chunks(&chunk_reader(&data[..]).unwrap(), &expected, "reader");
            // A wrong size hint (a file that grew) must not move a boundary either.
            let hinted = chunk_stream(&data[..], 100, &mut |_| {}).unwrap();
            assert_same_chunks(&hinted, &expected, "small hint");
        }
    }

    #[test]
    fn segments_match_stream_cdc_around_segment_boundaries() {
        let s = SMALL_SEGMENT;
        let max = CHUNK_MAX as usize;
        for len in [
            2 * s,
            2 * s + 1,
            2 * s - 1 + max,
            3 * s - 1,
            3 * s + 1024,
            4 * s + max + 1,
            5 * s + CHUNK_MIN as usize - 1,
            7 * s + 12_345,
        ] {
            let data = noise(len, 3 + len as u64);
            let expected = reference(&data);
            for workers in [1, 2, 3] {
                assert_same_chunks(
                    &chunk_in_segments(&data, s, workers),
                    &expected,
                    &format!("len {len}, {workers} workers"),
                );
            }
            if len > 2 * (2 * s) {
                assert_same_chunks(
                    &chunk_in_segments(&data, 2 * s, 2),
                    &expected,
                    &format!("len {len}, segments of {}", 2 * s),
                );
            }
        }
    }

    #[test]
    fn segments_match_stream_cdc_where_cuts_never_resynchronise() {
        // After a random prefix, zeros are cut every CHUNK_MAX bytes from wherever the prefix
        // ended: the guess of a segment (cut from its start) never meets the true sequence, so
        // every segment is chunked sequentially from its buffer.
        let s = SMALL_SEGMENT;
        for prefix in [1usize, 1000, CHUNK_MIN as usize + 7, 3 * s + 5] {
            let mut data = noise(prefix, prefix as u64);
            data.resize(prefix + 6 * s + 333, 0);
            let expected = reference(&data);
            assert_same_chunks(
                &chunk_in_segments(&data, s, 2),
                &expected,
                &format!("prefix {prefix}"),
            );
        }
        // A short repeating pattern: cuts are periodic too, out of phase with the segments.
        let pattern = noise(40_000, 9);
        let data: Vec<u8> = pattern.iter().copied().cycle().take(8 * s + 99).collect();
        assert_same_chunks(
            &chunk_in_segments(&data, s, 2),
            &reference(&data),
            "pattern",
        );
    }

    #[test]
    fn segments_match_stream_cdc_after_inserts_at_segment_boundaries() {
        let s = SMALL_SEGMENT;
        let data = noise(6 * s + 4321, 11);
        for at in [
            0,
            1,
            s - 1,
            s,
            s + 1,
            2 * s - 17,
            3 * s + CHUNK_MIN as usize,
            5 * s,
        ] {
            for insert in [1usize, 100, CHUNK_MAX as usize + 3] {
                let mut edited = data.clone();
                edited.splice(at..at, noise(insert, at as u64));
                assert_same_chunks(
                    &chunk_in_segments(&edited, s, 2),
                    &reference(&edited),
                    &format!("{insert} bytes inserted at {at}"),
                );
            }
        }
    }

    #[test]
    fn whole_hash_from_segments_is_blake3() {
        let s = SMALL_SEGMENT;
        for len in [
            2 * s,
            2 * s + 1,
            3 * s,
            4 * s,
            4 * s + 1,
            5 * s - 1,
            7 * s + 1,
            8 * s,
            9 * s + 1023,
        ] {
            let data = noise(len, len as u64 + 5);
            for workers in [1, 2] {
                let mut progressed = 0;
                let (hash, size) =
                    hash_segments(&data[..], len as u64, s, workers, &mut |n| progressed += n)
                        .unwrap()
                        .expect("two segments or more");
                assert_eq!(hash, hash_bytes(&data), "len {len}");
                assert_eq!((size, progressed), (len as u64, len as u64));
            }
        }
    }

    #[test]
    fn a_length_change_abandons_the_parallel_pass() {
        let s = SMALL_SEGMENT;
        let data = noise(3 * s + 10, 12);
        let len = data.len() as u64;
        for claimed in [len - 1, len + 1, len + s as u64] {
            // Claiming another length than the source has: it shrank, or grew, while read.
            assert!(chunk_segments(&data[..], claimed, s, 2, &mut |_| {})
                .unwrap()
                .is_none());
            assert!(hash_segments(&data[..], claimed, s, 2, &mut |_| {})
                .unwrap()
                .is_none());
        }
        // One segment only: nothing to split.
        assert!(chunk_segments(&data[..s], s as u64, s, 2, &mut |_| {})
            .unwrap()
            .is_none());
    }

    #[test]
    fn large_files_are_chunked_and_hashed_in_segments_like_stream_cdc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large");
        let mut data = noise(PARALLEL_MIN_LEN as usize + 3 * CHUNK_MAX as usize + 5, 13);
        // A run of zeros across a segment boundary: no resynchronisation there.
        data[SEGMENT_LEN - 1000..SEGMENT_LEN + 2 * CHUNK_MAX as usize].fill(0);
        std::fs::write(&path, &data).unwrap();
        let expected = reference(&data);
        assert_same_chunks(&chunk_file(&path).unwrap(), &expected, "chunk_file");
        let mut progressed = 0;
        let chunked = chunk_reader_with_progress(std::fs::File::open(&path).unwrap(), &mut |n| {
            progressed += n
        })
        .unwrap();
        assert_same_chunks(&chunked, &expected, "with progress");
        assert_eq!(progressed, data.len() as u64);
        let (hash, size) = hash_reader_with_progress(
            std::fs::File::open(&path).unwrap(),
            data.len() as u64,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((hash, size), (expected.file_hash, data.len() as u64));
        // A wrong size hint (the file changed since it was listed) falls back to one pass.
        let (hash, size) = hash_reader_with_progress(
            std::fs::File::open(&path).unwrap(),
            PARALLEL_MIN_LEN + 1,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((hash, size), (expected.file_hash, data.len() as u64));
    }

    #[test]
    fn an_exact_file_hash_is_blake3_and_none_for_another_length() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 5, 300_000, PARALLEL_MIN_LEN as usize + 12_345] {
            let data = noise(len, len as u64);
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let expected = *blake3::hash(&data).as_bytes();
            assert_eq!(
                hash_file_exact(&file, len as u64).unwrap(),
                Some(expected),
                "{len}"
            );
            assert_eq!(
                hash_file_exact(&file, len as u64 + 1).unwrap(),
                None,
                "{len} + 1"
            );
            if len > 0 {
                assert_eq!(
                    hash_file_exact(&file, len as u64 - 1).unwrap(),
                    None,
                    "{len} - 1"
                );
            }
        }
    }

    #[test]
    fn hash_only_agrees_with_chunking() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0usize,
            1,
            8 * 1024,
            HASH_BLOCK - 1,
            HASH_BLOCK,
            2 * HASH_BLOCK + 17,
        ] {
            let data = noise(len, len as u64);
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let mut progressed = 0u64;
            // A size hint that is off must not matter.
            let (hash, size) =
                hash_reader_with_progress(std::fs::File::open(&path).unwrap(), 10, &mut |n| {
                    progressed += n
                })
                .unwrap();
            let chunked = chunk_reader(&data[..]).unwrap();
            assert_eq!(hash, chunked.file_hash, "len {len}");
            assert_eq!(size, chunked.size);
            assert_eq!(progressed, len as u64);
            let slow = hash_stream(
                SlowReader {
                    data: &data,
                    step: 70_001,
                },
                len as u64,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(slow, (hash, size));
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
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a, reference(&data));
        }

        #[test]
        fn segments_agree_with_stream_cdc(
            len in (2 * SMALL_SEGMENT)..(6 * SMALL_SEGMENT + CHUNK_MAX as usize),
            seed: u64,
            insert_at in 0usize..(6 * SMALL_SEGMENT),
            insert_len in 0usize..300,
            workers in 1usize..4,
        ) {
            let mut data = noise(len, seed);
            let at = insert_at.min(data.len());
            data.splice(at..at, std::iter::repeat_n(0xA5, insert_len));
            let expected = reference(&data);
            let chunked = chunk_in_segments(&data, SMALL_SEGMENT, workers);
            prop_assert_eq!(&chunked, &expected);
            let (hash, _) = hash_segments(&data[..], data.len() as u64, SMALL_SEGMENT, workers, &mut |_| {})
                .unwrap()
                .expect("two segments or more");
            prop_assert_eq!(hash, expected.file_hash);
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
