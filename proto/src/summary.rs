//! Tree summaries (protocol version 2): digests of the receiver's tree, bucket by bucket, so
//! that a full pass describes only the buckets where the two trees differ.
//!
//! Every entry falls into one of `2^bits` buckets by its path (ASCII-lowercased, so that names
//! differing only in case share a bucket). A bucket's digest is the sum, modulo 2^128, of the
//! digests of its entries; an entry's digest covers exactly what the receiver keeps of it (see
//! [`entry_digest`]). Equal digests mean equal buckets (up to a 2^-128 accident); a sum makes the
//! digest independent of the order entries are visited in, so either side can build it while
//! walking its tree in any order. SPEC.md section 6.3 gives the byte-exact definition.

use std::sync::LazyLock;

use crate::{EntryKind, FileEntry};

/// Bytes of one bucket digest on the wire.
pub const DIGEST_LEN: usize = 16;
/// Most bucket bits a summary may use: 65 536 buckets, a 1 MiB summary.
pub const MAX_SUMMARY_BITS: u8 = 16;
/// The receiver aims for about this many entries per bucket.
const ENTRIES_PER_BUCKET: u64 = 4;

const BUCKET_CONTEXT: &str = "swrepl 2026-11-26 tree summary bucket";
const ENTRY_CONTEXT: &str = "swrepl 2026-11-26 tree summary entry";

// Hashers with their derive-key context already absorbed: cloning one is cheaper than deriving
// the context key again for every entry, and gives the same output.
static BUCKET_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(BUCKET_CONTEXT));
static ENTRY_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(ENTRY_CONTEXT));

/// The bucket bits a receiver with `entries` entries uses: about four entries per bucket, at
/// most [`MAX_SUMMARY_BITS`].
pub fn summary_bits(entries: u64) -> u8 {
    let buckets = entries.div_ceil(ENTRIES_PER_BUCKET).max(1);
    let bits = u64::BITS - (buckets - 1).leading_zeros();
    bits.min(u32::from(MAX_SUMMARY_BITS)) as u8
}

/// The bucket of `path` among `2^bits`: the top `bits` bits of the first four bytes (little
/// endian) of blake3 in derive-key mode over the ASCII-lowercased path.
pub fn bucket_of(path: &str, bits: u8) -> usize {
    if bits == 0 {
        return 0;
    }
    let mut hasher = BUCKET_HASHER.clone();
    hasher.update(path.to_ascii_lowercase().as_bytes());
    let hash = hasher.finalize();
    let head = u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"));
    (head >> (32 - u32::from(bits.min(MAX_SUMMARY_BITS)))) as usize
}

/// The digest of one entry: blake3 in derive-key mode over what a receiver keeps of it, the
/// first 16 bytes read as a little-endian integer.
///
/// Covered: the exact path; the kind (a link's target); for files the size, the content hash,
/// the modification time and the Unix mode; for directories the Unix mode. Not covered: a
/// directory's or link's modification time (the receiver does not reproduce them) and Windows
/// attribute bits (which the file system may change on its own, e.g. ARCHIVE).
pub fn entry_digest(entry: &FileEntry) -> u128 {
    let mut hasher = ENTRY_HASHER.clone();
    hasher.update(&(entry.path.len() as u64).to_le_bytes());
    hasher.update(entry.path.as_bytes());
    match &entry.kind {
        EntryKind::File => {
            hasher.update(&[0]);
            hasher.update(&entry.size.to_le_bytes());
            hasher.update(&entry.file_hash);
            hasher.update(&entry.mtime_ns.to_le_bytes());
            hasher.update(&entry.attributes.unix_mode.to_le_bytes());
        }
        EntryKind::Dir => {
            hasher.update(&[1]);
            hasher.update(&entry.attributes.unix_mode.to_le_bytes());
        }
        EntryKind::Symlink { target } => {
            hasher.update(&[2]);
            hasher.update(&(target.len() as u64).to_le_bytes());
            hasher.update(target.as_bytes());
        }
    }
    let hash = hasher.finalize();
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Bucket digests of a tree, built entry by entry in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    bits: u8,
    sums: Vec<u128>,
}

impl TreeDigest {
    /// An empty tree's digest with `2^bits` buckets (`bits` is capped at [`MAX_SUMMARY_BITS`]).
    pub fn new(bits: u8) -> Self {
        let bits = bits.min(MAX_SUMMARY_BITS);
        TreeDigest {
            bits,
            sums: vec![0; 1 << bits],
        }
    }

    /// Reads the digests of a `TreeSummary`; `None` when the length does not match `bits`
    /// (which [`crate::validate_message`] refuses before this is reached).
    pub fn from_wire(bits: u8, digests: &[u8]) -> Option<Self> {
        if bits > MAX_SUMMARY_BITS || digests.len() != DIGEST_LEN << bits {
            return None;
        }
        let sums = digests
            .chunks_exact(DIGEST_LEN)
            .map(|d| u128::from_le_bytes(d.try_into().expect("16 bytes")))
            .collect();
        Some(TreeDigest { bits, sums })
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Adds one entry to its bucket.
    pub fn add(&mut self, entry: &FileEntry) {
        self.add_to(bucket_of(&entry.path, self.bits), entry);
    }

    /// Adds one entry to `bucket`, which must be `bucket_of(&entry.path, self.bits())` (for a
    /// caller that needs the bucket itself too).
    pub fn add_to(&mut self, bucket: usize, entry: &FileEntry) {
        self.sums[bucket] = self.sums[bucket].wrapping_add(entry_digest(entry));
    }

    /// The digests as a `TreeSummary` carries them: 16 bytes per bucket, little endian.
    pub fn to_wire(&self) -> Vec<u8> {
        self.sums.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// The buckets where `self` and `other` (same bits) agree; `None` when the bits differ.
    pub fn unchanged_buckets(&self, other: &TreeDigest) -> Option<BucketSet> {
        if self.bits != other.bits {
            return None;
        }
        let mut set = BucketSet::empty(self.bits);
        for (bucket, (a, b)) in self.sums.iter().zip(&other.sums).enumerate() {
            if a == b {
                set.insert(bucket);
            }
        }
        Some(set)
    }
}

/// A set of buckets, as a bitmap (bit `i % 8` of byte `i / 8` is bucket `i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSet {
    bits: u8,
    bitmap: Vec<u8>,
}

/// Bytes of a bitmap of `2^bits` buckets.
pub fn bitmap_len(bits: u8) -> usize {
    (1usize << bits.min(MAX_SUMMARY_BITS)).div_ceil(8)
}

impl BucketSet {
    /// No bucket of `2^bits`.
    pub fn empty(bits: u8) -> Self {
        let bits = bits.min(MAX_SUMMARY_BITS);
        BucketSet {
            bits,
            bitmap: vec![0; bitmap_len(bits)],
        }
    }

    /// Reads a `PassSkips` bitmap; `None` when its length does not match `bits`.
    pub fn from_wire(bits: u8, bitmap: Vec<u8>) -> Option<Self> {
        (bits <= MAX_SUMMARY_BITS && bitmap.len() == bitmap_len(bits))
            .then_some(BucketSet { bits, bitmap })
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    pub fn as_wire(&self) -> &[u8] {
        &self.bitmap
    }

    pub fn insert(&mut self, bucket: usize) {
        self.bitmap[bucket / 8] |= 1 << (bucket % 8);
    }

    pub fn contains(&self, bucket: usize) -> bool {
        bucket < 1 << self.bits && self.bitmap[bucket / 8] & (1 << (bucket % 8)) != 0
    }

    /// Whether `path`'s bucket is in the set.
    pub fn contains_path(&self, path: &str) -> bool {
        self.contains(bucket_of(path, self.bits))
    }

    /// Buckets in the set.
    pub fn len(&self) -> usize {
        let all = 1usize << self.bits;
        (0..all).filter(|b| self.contains(*b)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.bitmap.iter().all(|b| *b == 0)
    }

    /// Buckets in all.
    pub fn capacity(&self) -> usize {
        1 << self.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attributes, ChunkRef};

    fn file(path: &str, content: u8) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            size: 10,
            mtime_ns: 1_700_000_000_000_000_000,
            attributes: Attributes {
                unix_mode: 0o644,
                windows: 0,
            },
            chunks: vec![ChunkRef {
                hash: [content; 32],
                len: 10,
            }],
            file_hash: [content; 32],
        }
    }

    #[test]
    fn bits_aim_at_four_entries_per_bucket_within_limits() {
        assert_eq!(summary_bits(0), 0);
        assert_eq!(summary_bits(4), 0);
        assert_eq!(summary_bits(5), 1);
        assert_eq!(summary_bits(20_242), 13);
        assert_eq!(summary_bits(u64::MAX), MAX_SUMMARY_BITS);
    }

    #[test]
    fn buckets_ignore_ascii_case_and_stay_in_range() {
        for bits in 0..=MAX_SUMMARY_BITS {
            let b = bucket_of("Dir/File.TXT", bits);
            assert_eq!(b, bucket_of("dir/file.txt", bits));
            assert!(b < 1 << bits);
        }
    }

    #[test]
    fn digests_do_not_depend_on_order_and_see_every_kept_field() {
        let (a, b) = (file("a", 1), file("b", 2));
        let mut one = TreeDigest::new(3);
        one.add(&a);
        one.add(&b);
        let mut two = TreeDigest::new(3);
        two.add(&b);
        two.add(&a);
        assert_eq!(one, two);
        let base = entry_digest(&a);
        let mut changed = a.clone();
        changed.mtime_ns += 1;
        assert_ne!(entry_digest(&changed), base);
        let mut changed = a.clone();
        changed.attributes.unix_mode = 0o600;
        assert_ne!(entry_digest(&changed), base);
        let mut changed = a.clone();
        changed.path = "A".into();
        assert_ne!(entry_digest(&changed), base, "a case-only rename must show");
        let mut changed = a.clone();
        changed.attributes.windows = 0x20;
        assert_eq!(
            entry_digest(&changed),
            base,
            "Windows attribute bits are not covered"
        );
    }

    #[test]
    fn unchanged_buckets_are_exactly_the_equal_ones() {
        let mut sender = TreeDigest::new(4);
        let mut receiver = TreeDigest::new(4);
        for i in 0..40 {
            let entry = file(&format!("f{i}"), i as u8);
            sender.add(&entry);
            if i != 7 {
                receiver.add(&entry);
            }
        }
        let same = sender.unchanged_buckets(&receiver).expect("same bits");
        assert_eq!(same.capacity(), 16);
        assert_eq!(same.len(), 15);
        assert!(!same.contains_path("f7"));
        let wire = TreeDigest::from_wire(4, &receiver.to_wire()).expect("valid length");
        assert_eq!(wire, receiver);
        assert!(TreeDigest::from_wire(4, &[0; 15]).is_none());
        assert!(TreeDigest::new(3).unchanged_buckets(&receiver).is_none());
        assert!(BucketSet::from_wire(4, same.as_wire().to_vec()).is_some());
        assert!(BucketSet::from_wire(4, vec![0; 3]).is_none());
    }
}
