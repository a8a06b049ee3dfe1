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

use blake3::hazmat::{hash_derive_key_context, ContextKey, HasherExt};

use crate::{EntryKind, FileEntry};

/// Bytes of one bucket digest on the wire.
pub const DIGEST_LEN: usize = 16;
/// Most bucket bits a summary may use: 65 536 buckets, a 1 MiB summary.
pub const MAX_SUMMARY_BITS: u8 = 16;
/// The receiver aims for about this many entries per bucket.
const ENTRIES_PER_BUCKET: u64 = 4;

const BUCKET_CONTEXT: &str = "swrepl 2026-11-26 tree summary bucket";
const ENTRY_CONTEXT: &str = "swrepl 2026-11-26 tree summary entry";

// The derive-key contexts' keys, derived once: a hasher built from one in place gives what
// `Hasher::new_derive_key` gives, without deriving the key again for every entry, and costs less
// than cloning a prepared hasher (a clone copies the hasher's 1.9 KB).
static BUCKET_KEY: LazyLock<ContextKey> = LazyLock::new(|| hash_derive_key_context(BUCKET_CONTEXT));
static ENTRY_KEY: LazyLock<ContextKey> = LazyLock::new(|| hash_derive_key_context(ENTRY_CONTEXT));

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
    bucket_in(bucket_head(path), bits)
}

/// The first four bytes (little endian) of the bucket hash of `path`: every bucket count's
/// bucket is a prefix of it (see [`bucket_in`]).
pub fn bucket_head(path: &str) -> u32 {
    // Lowercased through a small buffer, not a new string: the hash is the same whatever
    // pieces the input is fed in.
    let mut hasher = blake3::Hasher::new_from_context_key(&BUCKET_KEY);
    let mut buf = [0u8; 256];
    for piece in path.as_bytes().chunks(buf.len()) {
        let lower = &mut buf[..piece.len()];
        lower.copy_from_slice(piece);
        lower.make_ascii_lowercase();
        hasher.update(lower);
    }
    let hash = hasher.finalize();
    u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"))
}

/// The bucket among `2^bits` of a path whose [`bucket_head`] is `head`.
pub fn bucket_in(head: u32, bits: u8) -> usize {
    if bits == 0 {
        return 0;
    }
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
    // The input is gathered in one buffer and hashed with as few calls as possible: a dozen
    // small updates cost about as much as the compression itself.
    let mut input = HashInput::new(&ENTRY_KEY);
    input.put(&(entry.path.len() as u64).to_le_bytes());
    input.put(entry.path.as_bytes());
    match &entry.kind {
        EntryKind::File => {
            input.put(&[0]);
            input.put(&entry.size.to_le_bytes());
            input.put(&entry.file_hash);
            input.put(&entry.mtime_ns.to_le_bytes());
            input.put(&entry.attributes.unix_mode.to_le_bytes());
        }
        EntryKind::Dir => {
            input.put(&[1]);
            input.put(&entry.attributes.unix_mode.to_le_bytes());
        }
        EntryKind::Symlink { target } => {
            input.put(&[2]);
            input.put(&(target.len() as u64).to_le_bytes());
            input.put(target.as_bytes());
        }
    }
    let hash = input.finish();
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// A hasher's input collected in a stack buffer and handed over in large pieces.
struct HashInput {
    hasher: blake3::Hasher,
    buf: [u8; 512],
    len: usize,
}

impl HashInput {
    fn new(context_key: &ContextKey) -> Self {
        HashInput {
            hasher: blake3::Hasher::new_from_context_key(context_key),
            buf: [0; 512],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.hasher.update(&self.buf[..self.len]);
            self.len = 0;
            if bytes.len() > self.buf.len() {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn finish(mut self) -> blake3::Hash {
        self.hasher.update(&self.buf[..self.len]);
        self.hasher.finalize()
    }
}

/// What a tree summary needs of one entry, whatever the number of buckets: computed once per
/// scan (on every core, by the crate that walks trees), then summed for the bucket bits the
/// receiver picks. 20 bytes: a sender holds one per entry of its tree (20 MB at 1 M entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryKey {
    /// [`bucket_head`] of the entry's path.
    pub bucket_head: u32,
    /// [`entry_digest`] of the entry, as 32-bit words (a `u128` field would align the key to 16
    /// bytes and make it 32 bytes long).
    digest: [u32; 4],
}

impl EntryKey {
    pub fn of(entry: &FileEntry) -> Self {
        let digest = entry_digest(entry);
        EntryKey {
            bucket_head: bucket_head(&entry.path),
            digest: std::array::from_fn(|i| (digest >> (32 * i)) as u32),
        }
    }

    /// [`entry_digest`] of the entry.
    pub fn digest(&self) -> u128 {
        self.digest
            .iter()
            .rev()
            .fold(0u128, |acc, &word| (acc << 32) | u128::from(word))
    }

    /// The entry's bucket among `2^bits`.
    pub fn bucket(&self, bits: u8) -> usize {
        bucket_in(self.bucket_head, bits)
    }
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

    /// The digests of the entries whose keys are `keys`.
    pub fn from_keys(bits: u8, keys: &[EntryKey]) -> Self {
        let mut digest = TreeDigest::new(bits);
        for key in keys {
            digest.add_key(key);
        }
        digest
    }

    /// Adds one entry to its bucket.
    pub fn add(&mut self, entry: &FileEntry) {
        self.add_to(bucket_of(&entry.path, self.bits), entry);
    }

    /// Adds one entry, by its key, to its bucket.
    pub fn add_key(&mut self, key: &EntryKey) {
        let bucket = key.bucket(self.bits);
        self.sums[bucket] = self.sums[bucket].wrapping_add(key.digest());
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

    /// The definitions of SPEC.md section 6.3, written as plainly as possible: the faster
    /// functions above must give exactly these.
    fn spec_bucket(path: &str, bits: u8) -> usize {
        if bits == 0 {
            return 0;
        }
        let mut hasher = blake3::Hasher::new_derive_key(BUCKET_CONTEXT);
        hasher.update(path.to_ascii_lowercase().as_bytes());
        let head = u32::from_le_bytes(hasher.finalize().as_bytes()[..4].try_into().unwrap());
        (head >> (32 - u32::from(bits))) as usize
    }

    fn spec_digest(entry: &FileEntry) -> u128 {
        let mut input = Vec::new();
        input.extend_from_slice(&(entry.path.len() as u64).to_le_bytes());
        input.extend_from_slice(entry.path.as_bytes());
        match &entry.kind {
            EntryKind::File => {
                input.push(0);
                input.extend_from_slice(&entry.size.to_le_bytes());
                input.extend_from_slice(&entry.file_hash);
                input.extend_from_slice(&entry.mtime_ns.to_le_bytes());
                input.extend_from_slice(&entry.attributes.unix_mode.to_le_bytes());
            }
            EntryKind::Dir => {
                input.push(1);
                input.extend_from_slice(&entry.attributes.unix_mode.to_le_bytes());
            }
            EntryKind::Symlink { target } => {
                input.push(2);
                input.extend_from_slice(&(target.len() as u64).to_le_bytes());
                input.extend_from_slice(target.as_bytes());
            }
        }
        let hash = blake3::derive_key(ENTRY_CONTEXT, &input);
        u128::from_le_bytes(hash[..16].try_into().unwrap())
    }

    /// Entries of every kind with paths and targets of many lengths (around the buffer sizes
    /// too), mixed case and non-ASCII names.
    fn varied_entries() -> Vec<FileEntry> {
        let mut entries = Vec::new();
        for len in [
            1, 2, 55, 63, 64, 65, 200, 255, 256, 257, 440, 511, 512, 513, 1500, 4000,
        ] {
            let name: String = "AbÇd/".chars().cycle().take(len).collect();
            let mut f = file(&name, len as u8);
            f.size = len as u64 * 1000;
            f.mtime_ns = -(len as i64);
            entries.push(f.clone());
            let mut d = f.clone();
            d.kind = EntryKind::Dir;
            d.attributes.unix_mode = 0o40755;
            entries.push(d);
            let mut l = f;
            l.kind = EntryKind::Symlink {
                target: "../Tärget/".repeat(len / 5 + 1),
            };
            entries.push(l);
        }
        entries
    }

    #[test]
    fn keys_and_digests_follow_the_spec_for_every_length_and_kind() {
        for entry in varied_entries() {
            assert_eq!(
                entry_digest(&entry),
                spec_digest(&entry),
                "{:?}",
                entry.path
            );
            let key = EntryKey::of(&entry);
            assert_eq!(key.digest(), spec_digest(&entry));
            for bits in 0..=MAX_SUMMARY_BITS {
                let bucket = spec_bucket(&entry.path, bits);
                assert_eq!(bucket_of(&entry.path, bits), bucket, "{:?}", entry.path);
                assert_eq!(key.bucket(bits), bucket);
            }
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
