//! Rechunking a changed file with the help of its previous chunk list.
//!
//! Rereading a large file after a small edit should not cost a full content-defined chunking
//! pass: most of its chunks are where they were, or shifted by the size of an insert or delete.
//! An old chunk of `len` bytes is taken as the new chunk at offset `p` only when both hold:
//!
//! - its bytes are there: the blake3 of the new bytes `p..p + len` is the old chunk's hash;
//! - fastcdc, started at `p`, would cut after `len` bytes, which [`Cutter::cuts_at`] decides
//!   without the scan. fastcdc cuts at the first position whose gear hash matches a mask,
//!   testing positions in pairs, and the position that decides a cut at `len` is byte `len`
//!   itself, the first byte of the *next* chunk (which may have changed). So the decision
//!   depends on (1) no earlier position matching, which depends only on the bytes of the
//!   chunk, confirmed by the hash; (2) the gear hash at `len`, a function of the 64 bytes
//!   before it, recomputed on the new bytes; (3) how much data follows (the scan stops at the
//!   pair that holds the end of the data, or at `CHUNK_MAX`). An old final chunk, cut by the
//!   end of the old file rather than by content, is covered by the same rule: it is taken
//!   where the new file also ends there, or where its end is a content cut of the new data
//!   (its own scan stopped one pair short, so that pair's first position is checked too).
//!
//! Everything else is cut the ordinary way, from the current position, and after each cut the
//! old chunk that would start there (at the same offset, shifted like the last reused chunk, or
//! shifted by the change in file size) is tried: the sequence resynchronises right after an
//! edit. The result is exactly what [`super::chunk_reader_with_progress`] gives, i.e. where
//! fastcdc's sequential `StreamCDC` cuts (the tests compare them).
//!
//! Large files use the segments of the parallel path (see the parent module): each worker
//! reads its segment, and verifies on its own the old chunks that would start in it under the
//! two likely shifts (none, and the change in file size), following one chain of confirmed
//! chunks at a time so that each byte is hashed about once; it hashes the segment's blake3
//! subtree for the whole-file hash along the way, while the bytes are in the cache. The
//! in-order stitch then walks the true sequence through the segment, taking confirmed chunks
//! where it meets them and cutting (and trying other candidates) itself in between.
//!
//! A segment can spare even that hashing: when the previous version was hashed in segments, its
//! segment chaining values (the blake3 subtrees the whole-file hash is built from, computed here
//! anyway) say which segments still hold exactly the same bytes at the same offsets. An old chunk
//! lying wholly inside such a segment, at its old offset, has the bytes it was cut from, so only
//! condition 2 is checked: a 4 KiB edit of a large file hashes its bytes once (for the whole-file
//! hash) rather than twice. Here the recorded chunk hashes are believed where their segment is
//! unchanged, as the index is believed for a file whose metadata did not change: they were
//! recorded from the same read as the segment values, so only a damaged index can hold a wrong
//! one (the receiver's whole-file check and `swrepl verify` would then report the file).
//!
//! The previous list is a cache: nothing in it is trusted without a hash check, a list that
//! cannot be a chunk list (a chunk of no bytes, or over `CHUNK_MAX`) is ignored whole, and a
//! stale or unrelated list only costs the hashing of candidates that fail. What the hash cannot
//! show is whether the list's cuts came from this chunker at all (condition 1 is taken from the
//! list): a list with right hashes but cuts from elsewhere (another chunker's sizes) is still
//! refused at every cut whose gear hash does not match (all but about one in 2^15), but not for
//! a chunk of exactly `CHUNK_MAX` bytes or one that ends at the end of the file. Even then every
//! chunk hash and the file hash are right; only deduplication with peers would suffer.

use blake3::hazmat::{ChainingValue, HasherExt};
use fastcdc::v2020::get_gear_with_seed;

use super::{
    chunk_ref, is_length_changed, read_full_at, root_hash, segment_count, Chunked, Cutter, ReadAt,
    SegmentData,
};
use crate::parallel::for_each_segment;
use crate::{ChunkRef, Hash, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

const MIN: usize = CHUNK_MIN as usize;
const AVG: usize = CHUNK_AVG as usize;
const MAX: usize = CHUNK_MAX as usize;

/// A previous chunk list, with the offset each chunk started at.
pub(super) struct Previous<'a> {
    chunks: &'a [ChunkRef],
    /// The previous version's segment chaining values (empty when unknown).
    segment_cvs: &'a [Hash],
    /// Start of each chunk, strictly increasing.
    starts: Vec<u64>,
    /// The size the list describes (the sum of its lengths).
    total: u64,
}

impl<'a> Previous<'a> {
    /// `None` when the list is empty or cannot be a chunk list (a chunk of no bytes or longer
    /// than `CHUNK_MAX`): the index holding it is damaged, so none of it is used.
    pub(super) fn new(chunks: &'a [ChunkRef], segment_cvs: &'a [Hash]) -> Option<Previous<'a>> {
        if chunks.is_empty() {
            return None;
        }
        let mut starts = Vec::with_capacity(chunks.len());
        let mut total = 0u64;
        for chunk in chunks {
            if chunk.len == 0 || chunk.len > CHUNK_MAX {
                return None;
            }
            starts.push(total);
            total = total.checked_add(u64::from(chunk.len))?;
        }
        Some(Previous {
            chunks,
            segment_cvs,
            starts,
            total,
        })
    }

    /// The index of the old chunk that started at `old_offset`.
    fn starting_at(&self, old_offset: i128) -> Option<usize> {
        let offset = u64::try_from(old_offset).ok()?;
        self.starts.binary_search(&offset).ok()
    }

    /// The old chunk that would start at new offset `at` if the content had moved by `shift`.
    fn shifted_to(&self, at: u64, shift: i128) -> Option<usize> {
        self.starting_at(i128::from(at) - shift)
    }

    /// How far content after an edit moved, for a single insert or delete: the change in size.
    fn size_shift(&self, len: u64) -> i128 {
        i128::from(len) - i128::from(self.total)
    }
}

impl Cutter {
    /// True when fastcdc would end the chunk starting at `window[0]` after `len` bytes, given
    /// that no earlier position of those bytes is a cut (true when they are the bytes of a
    /// chunk this chunker cut before, anywhere). `window` is as for [`Cutter::chunk_len`]: at
    /// least `CHUNK_MAX + 1` bytes, or up to the end of the data.
    fn cuts_at(&self, window: &[u8], len: usize) -> bool {
        // What `cut` would scan: the data, at most CHUNK_MAX.
        let remaining = window.len().min(MAX);
        if len == 0 || len > remaining {
            return false;
        }
        if remaining <= MIN || len == remaining {
            // No content cut before `remaining`: the scan runs to its end and cuts there.
            return len == remaining;
        }
        // A content cut: `cut` tests positions in pairs and cuts *before* the byte whose gear
        // hash matched, so the decision also reads the first byte after the chunk. The chunk's
        // last pair must be scanned: `cut` stops at the pair holding `remaining`.
        let pair = len / 2;
        if len < MIN || pair >= remaining / 2 {
            return false;
        }
        // The gear hash holds the values of its 64 last bytes only (it shifts one bit per
        // byte), so replaying the 32 pairs before the cut from zero gives the exact value.
        let first = (MIN / 2).max(pair.saturating_sub(31));
        let (gear, gear_ls) = get_gear_with_seed(0);
        // Pairs below the average size are held to the stricter mask (normalisation).
        let (mask, mask_ls) = if pair < AVG / 2 {
            (self.mask_s, self.mask_s << 1)
        } else {
            (self.mask_l, self.mask_l << 1)
        };
        let mut hash = 0u64;
        for p in first..pair {
            hash = (hash << 2).wrapping_add(gear_ls[usize::from(window[2 * p])]);
            hash = hash.wrapping_add(gear[usize::from(window[2 * p + 1])]);
        }
        hash = (hash << 2).wrapping_add(gear_ls[usize::from(window[2 * pair])]);
        if len % 2 == 0 {
            return hash & mask_ls == 0;
        }
        // An odd cut comes second in its pair: the first position must not match. (It did not
        // in any chunk cut by content; a file's last chunk was not scanned that far.)
        if hash & mask_ls == 0 {
            return false;
        }
        hash = hash.wrapping_add(gear[usize::from(window[len])]);
        hash & mask == 0
    }

    /// The old chunk `old`, when it is the chunk that starts at `window[0]`.
    fn reuse(&self, window: &[u8], old: &ChunkRef) -> Option<ChunkRef> {
        let len = old.len as usize;
        let same = self.cuts_at(window, len) && super::hash_bytes(&window[..len]) == old.hash;
        same.then_some(*old)
    }
}

/// An old chunk tried at a new offset by a segment's worker.
#[derive(Clone, Copy, Debug)]
struct Tried {
    at: u64,
    old: usize,
    reused: bool,
}

/// What a worker found in one segment.
struct SegmentCheck {
    segment: SegmentData,
    /// Old chunks tried at offsets in the segment, by increasing offset.
    tried: Vec<Tried>,
    /// Chunks cut where no old chunk was confirmed, by increasing offset: each is the true
    /// chunk if the true sequence has a chunk starting at its offset.
    guessed: Vec<(u64, ChunkRef)>,
    whole: WholeHash,
    /// Bytes of old chunks taken because their segment is unchanged, without hashing them.
    unhashed: u64,
}

/// A segment's part of the whole-file hash.
enum WholeHash {
    /// The file is this one segment: its hash.
    Root(Hash),
    /// The segment's subtree, merged with the others along blake3's tree.
    Subtree(ChainingValue),
}

/// The shifts a worker tries: none (an overwrite, or before an insert) and the change in size
/// (after a single insert or delete).
fn likely_shifts(previous: &Previous, len: u64) -> Vec<i128> {
    let by_size = previous.size_shift(len);
    if by_size == 0 {
        vec![0]
    } else {
        vec![0, by_size]
    }
}

impl SegmentCheck {
    /// `recorded` is the previous version's chaining value of this segment, if known.
    fn analyse(
        segment: SegmentData,
        single: bool,
        recorded: Option<&Hash>,
        previous: &Previous,
        shifts: &[i128],
        cutter: &Cutter,
    ) -> SegmentCheck {
        let mut whole = WholeHashing::new(&segment, single);
        let unchanged = recorded.is_some_and(|cv| !single && whole.subtree(&segment) == *cv);
        let mut unhashed = 0;
        let tried = verify_candidates(
            &segment,
            previous,
            shifts,
            cutter,
            &mut whole,
            unchanged.then_some(&mut unhashed),
        );
        let guessed = cut_gaps(&segment, previous, &tried, cutter, &mut whole);
        let whole = whole.finish(&segment);
        SegmentCheck {
            segment,
            tried,
            guessed,
            whole,
            unhashed,
        }
    }
}

/// The segment's part of the whole-file hash, computed along with the chunks' hashes so that
/// the bytes are read from memory once, for both.
struct WholeHashing {
    hasher: blake3::Hasher,
    /// Bytes before this offset are hashed.
    done: u64,
    single: bool,
}

impl WholeHashing {
    fn new(segment: &SegmentData, single: bool) -> WholeHashing {
        let mut hasher = blake3::Hasher::new();
        if !single {
            hasher.set_input_offset(segment.start);
        }
        WholeHashing {
            hasher,
            done: segment.start,
            single,
        }
    }

    /// Hashes the segment's own bytes up to `offset` (those past its end belong to the next).
    fn hash_to(&mut self, segment: &SegmentData, offset: u64) {
        let to = offset.min(segment.end);
        if to > self.done {
            let from = (self.done - segment.start) as usize;
            self.hasher
                .update(&segment.data[from..(to - segment.start) as usize]);
            self.done = to;
        }
    }

    /// The segment's subtree chaining value (hashing all of it now).
    fn subtree(&mut self, segment: &SegmentData) -> ChainingValue {
        self.hash_to(segment, segment.end);
        self.hasher.finalize_non_root()
    }

    fn finish(mut self, segment: &SegmentData) -> WholeHash {
        self.hash_to(segment, segment.end);
        if self.single {
            WholeHash::Root(*self.hasher.finalize().as_bytes())
        } else {
            WholeHash::Subtree(self.hasher.finalize_non_root())
        }
    }
}

/// Tries the old chunks that would start in `segment` under `shifts`, in offset order. After a
/// chunk is confirmed, candidates that overlap it are skipped (the chain of confirmed chunks
/// is most likely the true sequence), so each byte is hashed about once where content did not
/// change; where it did, every candidate is tried until one is confirmed again. `unchanged`
/// (present when the segment holds the previous version's bytes) counts the bytes of old chunks
/// taken at their old offsets without hashing them.
fn verify_candidates(
    segment: &SegmentData,
    previous: &Previous,
    shifts: &[i128],
    cutter: &Cutter,
    whole: &mut WholeHashing,
    mut unchanged: Option<&mut u64>,
) -> Vec<Tried> {
    // For each shift, the next old chunk to try: the first whose shifted start is at or past
    // `frontier`.
    let mut next: Vec<usize> = shifts
        .iter()
        .map(|&s| first_start_at_or_after(previous, segment.start, s))
        .collect();
    let mut tried = Vec::new();
    let mut frontier = segment.start;
    let mut last_reused_shift = 0;
    loop {
        let mut best: Option<(u64, usize)> = None;
        for (k, &shift) in shifts.iter().enumerate() {
            while let Some(at) = shifted_start(previous, next[k], shift) {
                if at >= frontier {
                    break;
                }
                next[k] += 1;
            }
            let Some(at) = shifted_start(previous, next[k], shift) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((best_at, _)) => at < best_at || (at == best_at && shift == last_reused_shift),
            };
            if better {
                best = Some((at, k));
            }
        }
        let Some((at, k)) = best else {
            break;
        };
        if at >= segment.end {
            break;
        }
        let old = next[k];
        let end = at + u64::from(previous.chunks[old].len);
        let reused = match unchanged.as_deref_mut() {
            Some(unhashed) if previous.starts[old] == at && end <= segment.end => {
                // Its bytes are the ones it was cut from: only where the cut falls is checked.
                let cut = cutter.cuts_at(segment.window(at), previous.chunks[old].len as usize);
                if cut {
                    *unhashed += u64::from(previous.chunks[old].len);
                }
                cut
            }
            _ => {
                // The bytes up to the candidate's end are hashed for the whole file first, so
                // that they are still in the cache when the candidate is hashed.
                whole.hash_to(segment, end);
                cutter
                    .reuse(segment.window(at), &previous.chunks[old])
                    .is_some()
            }
        };
        tried.push(Tried { at, old, reused });
        next[k] += 1;
        if reused {
            frontier = at + u64::from(previous.chunks[old].len);
            last_reused_shift = shifts[k];
        }
    }
    tried
}

/// Cuts what the confirmed chunks leave uncovered in `segment`: from the end of each confirmed
/// chunk (most likely a true chunk start), and from the segment's start (a guess), until a cut
/// lands on a confirmed chunk again. The stitch takes such a chunk wherever the true sequence
/// starts one at its offset, so an edit's new chunks are cut here, on all cores, rather than in
/// the stitch; where nothing was confirmed (a rewritten file) this is the parallel path's
/// guess of the whole segment.
fn cut_gaps(
    segment: &SegmentData,
    previous: &Previous,
    tried: &[Tried],
    cutter: &Cutter,
    whole: &mut WholeHashing,
) -> Vec<(u64, ChunkRef)> {
    let mut confirmed = tried
        .iter()
        .filter(|t| t.reused)
        .map(|t| (t.at, u64::from(previous.chunks[t.old].len)))
        .peekable();
    let mut guessed = Vec::new();
    let mut at = segment.start;
    while at < segment.end {
        while confirmed.next_if(|&(start, _)| start < at).is_some() {}
        if let Some((_, len)) = confirmed.next_if(|&(start, _)| start == at) {
            at += len;
            continue;
        }
        let window = segment.window(at);
        let len = cutter.chunk_len(window);
        whole.hash_to(segment, at + len as u64);
        guessed.push((at, chunk_ref(&window[..len])));
        at += len as u64;
    }
    guessed
}

/// The new offset of old chunk `i` under `shift`, if it is a chunk and that offset is in range.
fn shifted_start(previous: &Previous, i: usize, shift: i128) -> Option<u64> {
    let start = *previous.starts.get(i)?;
    u64::try_from(i128::from(start) + shift).ok()
}

/// The first old chunk whose start, moved by `shift`, is at or past `offset`.
fn first_start_at_or_after(previous: &Previous, offset: u64, shift: i128) -> usize {
    let old_offset = i128::from(offset) - shift;
    match u64::try_from(old_offset) {
        Ok(old) => previous.starts.partition_point(|&s| s < old),
        Err(_) => 0,
    }
}

/// The in-order walk of the true chunk sequence through the segments.
struct Stitcher<'p, 'a> {
    previous: &'p Previous<'a>,
    cutter: &'p Cutter,
    size_shift: i128,
    /// The shift of the last old chunk taken: where the content of later chunks most likely is.
    last_shift: i128,
    /// Start of the next chunk of the true sequence.
    next_start: u64,
    chunks: Vec<ChunkRef>,
}

impl Stitcher<'_, '_> {
    /// Continues the true sequence through `check`'s segment. Returns the bytes reused.
    fn stitch(&mut self, check: &SegmentCheck) -> u64 {
        let segment = &check.segment;
        let mut tried = check.tried.iter().peekable();
        let mut guessed = check.guessed.iter().peekable();
        let mut reused_bytes = 0;
        let mut at = self.next_start;
        while at < segment.end {
            while tried.next_if(|t| t.at < at).is_some() {}
            let mut here = Vec::new();
            while let Some(t) = tried.next_if(|t| t.at == at) {
                here.push(*t);
            }
            while guessed.next_if(|g| g.0 < at).is_some() {}
            let guess = guessed.next_if(|g| g.0 == at).map(|g| g.1);
            let window = segment.window(at);
            let chunk = if let Some(chunk) = self.confirmed_chunk(at, &here) {
                reused_bytes += u64::from(chunk.len);
                chunk
            } else if let Some(chunk) = guess {
                chunk
            } else if let Some(chunk) = self.untried_chunk(window, at, &here) {
                reused_bytes += u64::from(chunk.len);
                chunk
            } else {
                chunk_ref(&window[..self.cutter.chunk_len(window)])
            };
            self.chunks.push(chunk);
            at += u64::from(chunk.len);
        }
        self.next_start = at;
        reused_bytes
    }

    /// The old chunk the worker confirmed at `at` (`here`: what it tried there).
    fn confirmed_chunk(&mut self, at: u64, here: &[Tried]) -> Option<ChunkRef> {
        let found = here.iter().find(|t| t.reused)?.old;
        Some(self.take(at, found))
    }

    /// One of the likely old chunks at `at` that the worker did not try, checked now: after an
    /// edit the worker's chains may not have met the true sequence.
    fn untried_chunk(&mut self, window: &[u8], at: u64, here: &[Tried]) -> Option<ChunkRef> {
        let found = [self.last_shift, 0, self.size_shift]
            .into_iter()
            .filter_map(|shift| self.previous.shifted_to(at, shift))
            .filter(|&old| here.iter().all(|t| t.old != old))
            .find(|&old| {
                self.cutter
                    .reuse(window, &self.previous.chunks[old])
                    .is_some()
            })?;
        Some(self.take(at, found))
    }

    /// Old chunk `old`, taken at `at`: later content most likely moved by as much.
    fn take(&mut self, at: u64, old: usize) -> ChunkRef {
        self.last_shift = i128::from(at) - i128::from(self.previous.starts[old]);
        self.previous.chunks[old]
    }
}

/// Chunks `source` (`len` bytes) exactly as the full pass would, reusing the chunks of
/// `previous` whose bytes are still there, in segments of `segment_len` on `workers` threads
/// (on the calling thread when `workers` is 1 or there is one segment). Also returns how many
/// bytes of old chunks were taken on their segment's chaining value, without hashing them.
/// `Ok(None)` when the source did not have `len` bytes (it changed while read).
pub(super) fn rechunk_segments<S: ReadAt + ?Sized>(
    source: &S,
    len: u64,
    previous: &Previous,
    segment_len: usize,
    workers: usize,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<(Chunked, u64)>> {
    let segments = segment_count(len, segment_len);
    let single = segments <= 1;
    let cutter = Cutter::new();
    let shifts = likely_shifts(previous, len);
    let mut stitcher = Stitcher {
        previous,
        cutter: &cutter,
        size_shift: previous.size_shift(len),
        last_shift: 0,
        next_start: 0,
        chunks: Vec::with_capacity(previous.chunks.len() + 16),
    };
    let mut wholes = Vec::with_capacity(segments);
    let mut reused = 0u64;
    let mut unhashed = 0u64;
    let analyse = |k: usize, buffer: Vec<u8>| {
        let segment = SegmentData::read(source, len, segment_len, k, buffer)?;
        let recorded = previous.segment_cvs.get(k);
        Ok(SegmentCheck::analyse(
            segment, single, recorded, previous, &shifts, &cutter,
        ))
    };
    let consume = |_: usize, check: SegmentCheck| {
        reused += stitcher.stitch(&check);
        unhashed += check.unhashed;
        wholes.push(check.whole);
        progress(check.segment.end - check.segment.start);
        Ok(check.segment.data)
    };
    let outcome = if workers > 1 && segments > 1 {
        for_each_segment(segments, workers, analyse, consume)
    } else {
        in_order(segments, analyse, consume)
    };
    match outcome {
        Ok(()) => {}
        Err(e) if is_length_changed(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    if segments == 0 && read_full_at(source, &mut [0u8; 1], 0)? != 0 {
        return Ok(None);
    }
    let (file_hash, segment_cvs) = match wholes.as_slice() {
        [] => (super::hash_bytes(b""), Vec::new()),
        [WholeHash::Root(hash)] => (*hash, Vec::new()),
        _ => {
            let subtrees: Vec<ChainingValue> = wholes
                .iter()
                .filter_map(|w| match w {
                    WholeHash::Subtree(cv) => Some(*cv),
                    WholeHash::Root(_) => None,
                })
                .collect();
            if subtrees.len() != wholes.len() {
                return Err(std::io::Error::other(
                    "internal error: a segment hashed as the whole file",
                ));
            }
            (root_hash(&subtrees, len, segment_len as u64), subtrees)
        }
    };
    tracing::trace!(
        len,
        reused,
        unhashed,
        chunks = stitcher.chunks.len(),
        "rechunked with the previous chunk list"
    );
    let chunked = Chunked {
        chunks: stitcher.chunks,
        file_hash,
        size: len,
        segment_cvs,
    };
    Ok(Some((chunked, unhashed)))
}

/// [`for_each_segment`] on the calling thread.
fn in_order<T>(
    segments: usize,
    analyse: impl Fn(usize, Vec<u8>) -> std::io::Result<T>,
    mut consume: impl FnMut(usize, T) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    for k in 0..segments {
        buffer = consume(k, analyse(k, buffer)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_same_chunks, noise, reference, segment_cvs, SMALL_SEGMENT};
    use super::super::{PARALLEL_MIN_LEN, SEGMENT_LEN};
    use super::*;
    use proptest::prelude::*;

    /// What [`super::super::rechunk_reader_with_progress`] does with `data`, with segments of
    /// `segment_len` on `workers` threads (and no minimum size).
    fn rechunk(data: &[u8], previous: &[ChunkRef], segment_len: usize, workers: usize) -> Chunked {
        rechunk_knowing(data, previous, &[], segment_len, workers).0
    }

    /// [`rechunk`] given the previous version's segment values `cvs`; also the bytes of old
    /// chunks taken on them. Checks the segment values given back, then drops them (so that the
    /// result compares with [`reference`], which has none).
    fn rechunk_knowing(
        data: &[u8],
        previous: &[ChunkRef],
        cvs: &[Hash],
        segment_len: usize,
        workers: usize,
    ) -> (Chunked, u64) {
        let Some(previous) = Previous::new(previous, cvs) else {
            return (reference(data), 0);
        };
        let mut progressed = 0;
        let (mut chunked, unhashed) = rechunk_segments(
            data,
            data.len() as u64,
            &previous,
            segment_len,
            workers,
            &mut |n| progressed += n,
        )
        .unwrap()
        .expect("a source that does not change");
        assert_eq!(progressed, data.len() as u64);
        assert_eq!(
            chunked.segment_cvs,
            segment_cvs(data, segment_len),
            "segment values"
        );
        chunked.segment_cvs.clear();
        (chunked, unhashed)
    }

    /// Rechunking `new` from the chunks of `old` gives what chunking `new` gives, with and
    /// without `old`'s segment values.
    fn assert_rechunks_exactly(old: &[u8], new: &[u8], what: &str) {
        let previous = reference(old).chunks;
        let expected = reference(new);
        for (segment_len, workers) in [(SMALL_SEGMENT, 1), (SMALL_SEGMENT, 2), (SEGMENT_LEN, 1)] {
            assert_same_chunks(
                &rechunk(new, &previous, segment_len, workers),
                &expected,
                &format!("{what}, segments of {segment_len} on {workers}"),
            );
            let cvs = segment_cvs(old, segment_len);
            assert_same_chunks(
                &rechunk_knowing(new, &previous, &cvs, segment_len, workers).0,
                &expected,
                &format!("{what}, segments of {segment_len} on {workers}, segment values known"),
            );
        }
    }

    #[test]
    fn unchanged_segments_spare_the_hashing_of_the_old_chunks_inside_them() {
        let s = SMALL_SEGMENT;
        let old = noise(12 * s + 777, 5);
        let previous = reference(&old).chunks;
        let edited = 6 * s + 100..6 * s + 4196;
        let mut new = old.clone();
        new[edited.clone()].fill(0x5A);
        let expected = reference(&new);
        // Every old chunk wholly inside a segment other than the edited one.
        let mut inside_unchanged = 0u64;
        let mut at = 0usize;
        for chunk in &previous {
            let end = at + chunk.len as usize;
            if at / s == (end - 1) / s && at / s != edited.start / s {
                inside_unchanged += u64::from(chunk.len);
            }
            at = end;
        }
        assert!(inside_unchanged > 4 * s as u64, "{inside_unchanged}");
        let unrelated = segment_cvs(&noise(old.len(), 6), s);
        for workers in [1, 2] {
            let what = format!("{workers} workers");
            let (chunked, unhashed) =
                rechunk_knowing(&new, &previous, &segment_cvs(&old, s), s, workers);
            assert_same_chunks(&chunked, &expected, &what);
            assert_eq!(unhashed, inside_unchanged, "{what}");
            let (chunked, unhashed) = rechunk_knowing(&new, &previous, &[], s, workers);
            assert_same_chunks(&chunked, &expected, &what);
            assert_eq!(unhashed, 0, "{what}: nothing to go by");
            let (chunked, unhashed) = rechunk_knowing(&new, &previous, &unrelated, s, workers);
            assert_same_chunks(&chunked, &expected, &what);
            assert_eq!(unhashed, 0, "{what}: another file's values");
        }
    }

    #[derive(Clone, Debug)]
    enum Content {
        Noise,
        /// Noise with runs of zeros, which are cut every `CHUNK_MAX` bytes from wherever the
        /// run starts.
        ZeroRuns,
        /// A short pattern repeated: cuts repeat with it, out of phase with any segment.
        Pattern,
        Zeros,
    }

    fn content(kind: &Content, len: usize, seed: u64) -> Vec<u8> {
        match kind {
            Content::Noise => noise(len, seed),
            Content::ZeroRuns => {
                let mut data = noise(len, seed);
                let run = (CHUNK_MAX as usize * 3 / 2).min(len / 3);
                for start in [len / 5, len * 3 / 5] {
                    data[start..start + run].fill(0);
                }
                data
            }
            Content::Pattern => {
                let pattern = noise(40_000 + (seed % 1000) as usize, seed);
                pattern.iter().copied().cycle().take(len).collect()
            }
            Content::Zeros => vec![0; len],
        }
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Overwrite { at: usize, len: usize, seed: u64 },
        Insert { at: usize, len: usize, seed: u64 },
        Delete { at: usize, len: usize },
        Append { len: usize, seed: u64 },
        Truncate { to: usize },
        Rewrite { seed: u64 },
    }

    /// Applies `edit` to `data`; offsets are taken modulo the data's length.
    fn apply(edit: &Edit, data: &mut Vec<u8>) {
        let clamp = |at: usize, data: &Vec<u8>| {
            if data.is_empty() {
                0
            } else {
                at % (data.len() + 1)
            }
        };
        match *edit {
            Edit::Overwrite { at, len, seed } => {
                let at = clamp(at, data);
                let end = (at + len).min(data.len());
                data[at..end].copy_from_slice(&noise(end - at, seed));
            }
            Edit::Insert { at, len, seed } => {
                let at = clamp(at, data);
                data.splice(at..at, noise(len, seed));
            }
            Edit::Delete { at, len } => {
                let at = clamp(at, data);
                let end = (at + len).min(data.len());
                data.drain(at..end);
            }
            Edit::Append { len, seed } => data.extend_from_slice(&noise(len, seed)),
            Edit::Truncate { to } => {
                let to = clamp(to, data);
                data.truncate(to);
            }
            Edit::Rewrite { seed } => *data = noise(data.len(), seed),
        }
    }

    fn edits() -> impl Strategy<Value = Edit> {
        let at = 0usize..4_000_000;
        let small = prop_oneof![1usize..200, 1usize..(2 * CHUNK_MAX as usize)];
        prop_oneof![
            (at.clone(), small.clone(), any::<u64>()).prop_map(|(at, len, seed)| Edit::Overwrite {
                at,
                len,
                seed
            }),
            (at.clone(), small.clone(), any::<u64>()).prop_map(|(at, len, seed)| Edit::Insert {
                at,
                len,
                seed
            }),
            (at.clone(), small.clone()).prop_map(|(at, len)| Edit::Delete { at, len }),
            (small, any::<u64>()).prop_map(|(len, seed)| Edit::Append { len, seed }),
            at.prop_map(|to| Edit::Truncate { to }),
            any::<u64>().prop_map(|seed| Edit::Rewrite { seed }),
        ]
    }

    fn contents() -> impl Strategy<Value = Content> {
        prop_oneof![
            4 => Just(Content::Noise),
            2 => Just(Content::ZeroRuns),
            1 => Just(Content::Pattern),
            1 => Just(Content::Zeros),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn rechunking_after_edits_is_chunking(
            kind in contents(),
            len in prop_oneof![0usize..(2 * CHUNK_MIN as usize), 0usize..3_000_000],
            seed: u64,
            edits in proptest::collection::vec(edits(), 1..3),
            workers in 1usize..4,
        ) {
            let old = content(&kind, len, seed);
            let mut new = old.clone();
            for edit in &edits {
                apply(edit, &mut new);
            }
            let previous = reference(&old).chunks;
            let expected = reference(&new);
            prop_assert_eq!(&rechunk(&new, &previous, SMALL_SEGMENT, workers), &expected);
            prop_assert_eq!(&rechunk(&new, &previous, SEGMENT_LEN, 1), &expected);
            let cvs = segment_cvs(&old, SMALL_SEGMENT);
            let (known, _) = rechunk_knowing(&new, &previous, &cvs, SMALL_SEGMENT, workers);
            prop_assert_eq!(&known, &expected);
        }

        #[test]
        fn a_previous_list_that_lies_changes_nothing(
            len in 0usize..2_000_000,
            seed: u64,
            lengths in proptest::collection::vec(1u32..CHUNK_MIN, 1..200),
            lie in 0usize..5,
        ) {
            let data = noise(len, seed);
            let expected = reference(&data);
            let previous: Vec<ChunkRef> = match lie {
                // Right lengths, wrong hashes.
                0 => expected.chunks.iter().map(|c| ChunkRef { hash: hash_bytes(&c.hash), len: c.len }).collect(),
                // Lengths from nowhere (below the smallest chunk, so that no cut check can be
                // fooled, see `hash_consistent_cuts_from_elsewhere_are_refused`), hashes of the
                // bytes they cover.
                1 => {
                    let mut at = 0usize;
                    lengths.iter().map(|&l| {
                        let end = (at + l as usize).min(data.len());
                        let chunk = ChunkRef { hash: hash_bytes(&data[at..end]), len: l };
                        at = end;
                        chunk
                    }).collect()
                }
                // The chunks of another file, much longer than this one.
                2 => reference(&noise(len * 3 + 5_000_000, seed ^ 1)).chunks,
                // The right chunks, then lengths that overflow or are no chunk at all.
                3 => {
                    let mut chunks = expected.chunks.clone();
                    chunks.push(ChunkRef { hash: [0; 32], len: u32::MAX });
                    chunks.push(ChunkRef { hash: [0; 32], len: 0 });
                    chunks
                }
                // The right chunks in another order.
                _ => expected.chunks.iter().rev().copied().collect(),
            };
            for (segment_len, workers) in [(SMALL_SEGMENT, 2), (SEGMENT_LEN, 1)] {
                prop_assert_eq!(&rechunk(&data, &previous, segment_len, workers), &expected);
            }
        }
    }

    use super::super::hash_bytes;

    #[test]
    fn the_cut_check_agrees_with_fastcdc_for_every_length_a_chunk_can_have() {
        let cutter = Cutter::new();
        let max = CHUNK_MAX as usize;
        let mut windows = Vec::new();
        for (i, len) in [
            1,
            CHUNK_MIN as usize - 1,
            CHUNK_MIN as usize,
            CHUNK_MIN as usize + 1,
            CHUNK_MIN as usize + 2,
            CHUNK_AVG as usize - 1,
            CHUNK_AVG as usize + 1,
            max - 1,
            max,
            max + 1,
            2 * max,
        ]
        .into_iter()
        .enumerate()
        {
            for seed in 0..3 {
                windows.push(noise(len, 100 * i as u64 + seed));
            }
        }
        // Windows that end right after a content cut, at an even and at an odd length.
        let data = noise(4 * max, 77);
        let mut at = 0;
        while at < 3 * max {
            let cut = cutter.chunk_len(&data[at..]);
            windows.push(data[at..at + cut + 1].to_vec());
            windows.push(data[at..at + cut + 2].to_vec());
            at += cut;
        }
        // Cuts right at the average size, where the masks change (found by search: the byte
        // at the cut decides).
        for (seed, at, byte) in [
            (219, CHUNK_AVG as usize, 2),
            (2, CHUNK_AVG as usize + 1, 196),
        ] {
            let mut window = noise(300_000, seed);
            window[at] = byte;
            assert_eq!(cutter.chunk_len(&window), at);
            windows.push(window);
        }
        for window in &windows {
            let cut = cutter.chunk_len(window);
            // Every length that the bytes of a chunk cut before can have: any up to the first
            // cut (no position before it matched), and one more after an even cut (a file's
            // last chunk, not scanned to its last position).
            let longest = if cut % 2 == 0 { cut + 1 } else { cut };
            for len in 1..=longest.min(window.len()) {
                assert_eq!(
                    cutter.cuts_at(window, len),
                    len == cut,
                    "window of {} bytes, cut at {cut}, asked {len}",
                    window.len()
                );
            }
        }
    }

    #[test]
    fn an_old_last_chunk_is_reused_only_where_fastcdc_cuts() {
        // Appending to a file whose last chunk ends one byte after a cut position that its own
        // scan never reached: taking the old last chunk as is would be wrong.
        let cutter = Cutter::new();
        let data = noise(3 * CHUNK_MAX as usize, 5);
        let first = cutter.chunk_len(&data);
        let mut seen_even = false;
        let mut at = 0;
        while at + CHUNK_MAX as usize <= data.len() {
            let cut = cutter.chunk_len(&data[at..]);
            seen_even |= cut % 2 == 0;
            let old = &data[..at + cut + 1];
            assert_rechunks_exactly(old, &data, &format!("cut at {}", at + cut));
            at += cut;
        }
        assert!(seen_even && first > 0);
    }

    #[test]
    fn an_old_last_chunk_that_ends_after_an_unscanned_cut_is_not_taken() {
        // A file's last chunk of odd length c + 1 whose scan stopped before position c, where
        // the gear hash matches (`cut` scans in pairs). Once the file grows, fastcdc cuts at c.
        // The byte after it is chosen so that position c + 1 matches too: a check of the last
        // position alone would take the old chunk. (Found by search: noise seed 31 has such a
        // cut 50189779 bytes in.)
        let (start, cut, byte) = (50_189_779, 83_700, 126);
        let mut new = noise(start + 300_000, 31).split_off(start);
        new[cut + 1] = byte;
        let old = &new[..cut + 1];
        let previous = reference(old).chunks;
        assert_eq!(previous.len(), 1);
        assert_eq!(reference(&new).chunks[0].len as usize, cut);
        let (gear, gear_ls) = get_gear_with_seed(0);
        let mask = Cutter::new().mask_l; // the cut is past the average size
        let mut hash = 0u64;
        for p in (cut / 2 - 31)..(cut / 2) {
            hash = (hash << 2).wrapping_add(gear_ls[usize::from(new[2 * p])]);
            hash = hash.wrapping_add(gear[usize::from(new[2 * p + 1])]);
        }
        hash = (hash << 2).wrapping_add(gear_ls[usize::from(new[cut])]);
        assert_eq!(hash & (mask << 1), 0, "position c matches");
        hash = hash.wrapping_add(gear[usize::from(new[cut + 1])]);
        assert_eq!(hash & mask, 0, "position c + 1 matches too");
        assert_rechunks_exactly(old, &new, "grown after an unscanned cut");
    }

    #[test]
    fn hash_consistent_cuts_from_elsewhere_are_refused() {
        // Chunks whose hashes are right but whose cuts fastcdc did not make (a chunker with
        // other sizes): the cut check refuses them (it cannot for a cut at CHUNK_MAX, or at the
        // end of the data: see the module's documentation).
        let data = noise(2_000_000, 40);
        let expected = reference(&data);
        for step in [
            CHUNK_MIN as usize,
            20_000,
            65_537,
            100_000,
            CHUNK_MAX as usize - 1,
        ] {
            let previous: Vec<ChunkRef> = data[..data.len() - 1]
                .chunks(step)
                .map(|c| ChunkRef {
                    hash: hash_bytes(c),
                    len: c.len() as u32,
                })
                .collect();
            for (segment_len, workers) in [(SMALL_SEGMENT, 2), (SEGMENT_LEN, 1)] {
                assert_same_chunks(
                    &rechunk(&data, &previous, segment_len, workers),
                    &expected,
                    &format!("cuts every {step} bytes"),
                );
            }
        }
    }

    #[test]
    fn single_edits_in_a_large_file_rechunk_exactly() {
        let s = SMALL_SEGMENT;
        let old = noise(9 * s + 12_345, 21);
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for at in [0, 1, s - 1, s, 4 * s + 17, old.len() - 10] {
            let mut over = old.clone();
            let end = (at + 4096).min(old.len());
            over[at..end].copy_from_slice(&noise(end - at, at as u64));
            cases.push((format!("4 KiB overwritten at {at}"), over));
            let mut ins = old.clone();
            ins.splice(at..at, noise(100, at as u64));
            cases.push((format!("100 bytes inserted at {at}"), ins));
            let mut del = old.clone();
            del.drain(at..(at + 100).min(old.len()));
            cases.push((format!("100 bytes deleted at {at}"), del));
        }
        let mut both = old.clone();
        both.splice(2 * s..2 * s, noise(300, 1));
        both.drain(6 * s..6 * s + 5000);
        cases.push(("an insert and a delete".to_string(), both));
        for (what, new) in cases {
            assert_rechunks_exactly(&old, &new, &what);
        }
    }

    #[test]
    fn around_the_parallel_size_the_real_file_path_rechunks_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large");
        let parallel = PARALLEL_MIN_LEN as usize;
        for (len, at) in [
            (parallel - 1, parallel / 2),
            (parallel + CHUNK_MAX as usize + 3, SEGMENT_LEN - 50),
        ] {
            let old = noise(len, len as u64);
            let previous = Chunked {
                segment_cvs: segment_cvs(&old, SEGMENT_LEN),
                ..reference(&old)
            };
            let mut inserted = old.clone();
            inserted.splice(at..at, noise(100, 3));
            let mut overwritten = old.clone();
            overwritten[at..at + 4096].fill(0xA5);
            for (what, new) in [("insert", inserted), ("overwrite", overwritten)] {
                std::fs::write(&path, &new).unwrap();
                let mut progressed = 0;
                let chunked = super::super::rechunk_reader_with_progress(
                    std::fs::File::open(&path).unwrap(),
                    &previous.chunks,
                    &previous.segment_cvs,
                    &mut |n| progressed += n,
                )
                .unwrap();
                assert_same_chunks(&chunked, &reference(&new), &format!("{what}, {len} bytes"));
                assert_eq!(
                    chunked.segment_cvs,
                    segment_cvs(&new, SEGMENT_LEN),
                    "{what}"
                );
                assert_eq!(progressed, new.len() as u64);
                assert_eq!(
                    super::super::rechunk_file(&path, &previous).unwrap(),
                    chunked
                );
            }
        }
    }

    #[test]
    fn a_source_of_another_length_gives_up() {
        let data = noise(3 * SMALL_SEGMENT + 10, 8);
        let chunks = reference(&data).chunks;
        let previous = Previous::new(&chunks, &[]).unwrap();
        let len = data.len() as u64;
        for claimed in [0, len - 1, len + 1] {
            for workers in [1, 2] {
                let outcome = rechunk_segments(
                    &data[..],
                    claimed,
                    &previous,
                    SMALL_SEGMENT,
                    workers,
                    &mut |_| {},
                )
                .unwrap();
                assert!(outcome.is_none(), "claimed {claimed}, {workers} workers");
            }
        }
    }
}
