//! File metadata (identity, attributes, times) and conversions between wire and OS paths.

use std::cmp::Ordering;
use std::fs::Metadata;
use std::num::NonZeroU64;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::Attributes;

/// Identity of a file on one machine: device and inode on Unix, volume serial and NTFS file
/// index on Windows. Survives renames, which is how renames are recognised.
///
/// Stored as the 128-bit number `device << 64 | file` ([`FileId::to_be_bytes`]), but held as two
/// 64-bit halves, the file's never 0 (no file system numbers a file 0: Unix leaves inode 0
/// unused, NTFS's record 0 is its own table). A `u128` would be aligned to 16 bytes, and an
/// `Option` of it 32 bytes long; this one is 16 bytes long either way, half of that. A scanned
/// entry holds one: 16 MB in a tree of a million entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    device: u64,
    file: NonZeroU64,
}

impl FileId {
    /// The identity of file `file` (inode, file index) on device `device` (volume); `None` for
    /// file 0, which identifies no file.
    pub const fn new(device: u64, file: u64) -> Option<FileId> {
        match NonZeroU64::new(file) {
            Some(file) => Some(FileId { device, file }),
            None => None,
        }
    }

    /// The identity of the 128-bit number `device << 64 | file` (`None` for file 0).
    pub fn from_u128(id: u128) -> Option<FileId> {
        // Truncation is the split: the high half is the device, the low half the file.
        FileId::new((id >> 64) as u64, id as u64)
    }

    /// The big-endian bytes of `device << 64 | file`: how the index stores it.
    pub fn to_be_bytes(self) -> [u8; 16] {
        u128::from(self).to_be_bytes()
    }

    /// The identity [`FileId::to_be_bytes`] gave `bytes` (`None` for file 0).
    pub fn from_be_bytes(bytes: [u8; 16]) -> Option<FileId> {
        FileId::from_u128(u128::from_be_bytes(bytes))
    }
}

impl From<FileId> for u128 {
    fn from(id: FileId) -> u128 {
        (u128::from(id.device) << 64) | u128::from(id.file.get())
    }
}

/// The identity of the file, directory or link at `path` (links are not followed on Unix), or
/// `None` when the file system cannot say.
pub fn file_id_of(path: &Path) -> Option<FileId> {
    platform::file_id_of(path)
}

/// The identity of the entry `meta` describes; `path` is where it was read (Windows needs to open
/// it, Unix has it in `meta` already).
pub fn file_id_from(path: &Path, meta: &Metadata) -> Option<FileId> {
    platform::file_id_from(path, meta)
}

/// Like [`file_id_from`] where building the entry's path costs something: `path` is called only
/// where the identity is not in `meta` (Windows).
pub(crate) fn file_id_with(meta: &Metadata, path: impl FnOnce() -> PathBuf) -> Option<FileId> {
    #[cfg(unix)]
    {
        let _ = path;
        platform::file_id_from(Path::new(""), meta)
    }
    #[cfg(not(unix))]
    {
        platform::file_id_from(&path(), meta)
    }
}

/// The attributes swrepl carries: `mode & 0o7777` on Unix; READONLY, HIDDEN, SYSTEM and ARCHIVE
/// on Windows.
pub fn attributes_of(meta: &Metadata) -> Attributes {
    platform::attributes_of(meta)
}

/// Modification time in nanoseconds since the Unix epoch (negative before it; 0 when the file
/// system does not record one).
pub fn mtime_ns(meta: &Metadata) -> i64 {
    let Ok(modified) = meta.modified() else {
        return 0;
    };
    match modified.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The OS path of wire path `rel` under `root`. `rel` is split on `/` only; callers that got `rel`
/// from a peer must have validated it (`swrepl_proto::validate_path`) first.
pub fn to_os_path(root: &Path, rel: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(rel.split('/').filter(|c| !c.is_empty()));
    path
}

/// The wire path of `path`, which must lie strictly below `root`. `None` for the root itself, for
/// paths outside it, and for names that are not valid Unicode.
pub fn to_wire_path(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// The order in which trees are listed: byte order with `/` sorting before every other byte, so
/// that paths compare component by component and a directory comes right before its content.
pub fn compare_paths(a: &str, b: &str) -> Ordering {
    fn key(byte: u8) -> u8 {
        if byte == b'/' {
            0
        } else {
            byte
        }
    }
    // Sibling paths share long prefixes: skip the common prefix eight bytes at a time, then only
    // the first differing byte (or the shorter length) decides.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let common = common_prefix_len(a, b);
    match (a.get(common), b.get(common)) {
        (Some(&x), Some(&y)) => key(x).cmp(&key(y)),
        (x, y) => x.is_some().cmp(&y.is_some()),
    }
}

/// The length of the longest common prefix of `a` and `b`.
fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let equal_words = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .take_while(|(x, y)| x == y)
        .count();
    let start = equal_words * 8;
    start
        + a[start..]
            .iter()
            .zip(&b[start..])
            .take_while(|(x, y)| x == y)
            .count()
}

/// True when `path` is `ancestor` or lies below it (`"a"` covers `"a/b"` but not `"ab"`).
pub fn is_same_or_below(path: &str, ancestor: &str) -> bool {
    match path.strip_prefix(ancestor) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// The wire form (`/`-separated) of the target of the link at wire path `link_rel`, when the target
/// is relative and, resolved from the link's directory, stays inside the root. Resolution is
/// lexical: the receiver never follows links, so what matters is where the name points.
pub(crate) fn link_target_inside(link_rel: &str, target: &Path) -> Option<String> {
    let mut resolved: Vec<&str> = link_rel.split('/').collect();
    resolved.pop(); // the link's own name
    let mut wire = Vec::new();
    for component in target.components() {
        match component {
            Component::Normal(name) => {
                let name = name.to_str()?;
                // A '\\' inside a Unix name cannot cross the wire (it is a Windows separator).
                if name.contains('\\') {
                    return None;
                }
                resolved.push(name);
                wire.push(name);
            }
            Component::ParentDir => {
                resolved.pop()?;
                wire.push("..");
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if wire.is_empty() {
        return None;
    }
    let wire = wire.join("/");
    // The receiver applies the protocol's stricter rule (`..` only at the start, since a link
    // in the middle could resolve anywhere): never describe a link it would refuse.
    swrepl_proto::check_link_target(link_rel, &wire).ok()?;
    Some(wire)
}

#[cfg(unix)]
mod platform {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    pub(super) fn file_id_of(path: &Path) -> Option<FileId> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        file_id_from(path, &meta)
    }

    pub(super) fn file_id_from(_path: &Path, meta: &Metadata) -> Option<FileId> {
        FileId::new(meta.dev(), meta.ino())
    }

    pub(super) fn attributes_of(meta: &Metadata) -> Attributes {
        Attributes {
            unix_mode: meta.permissions().mode() & 0o7777,
            windows: 0,
        }
    }
}

#[cfg(windows)]
mod platform {
    use super::*;
    use std::os::windows::fs::MetadataExt;

    /// READONLY | HIDDEN | SYSTEM | ARCHIVE.
    const CARRIED_ATTRIBUTES: u32 = 0x1 | 0x2 | 0x4 | 0x20;

    pub(super) fn file_id_of(path: &Path) -> Option<FileId> {
        match file_id::get_low_res_file_id(path).ok()? {
            file_id::FileId::LowRes {
                volume_serial_number,
                file_index,
            } => FileId::new(u64::from(volume_serial_number), file_index),
            file_id::FileId::Inode {
                device_id,
                inode_number,
            } => FileId::new(device_id, inode_number),
            file_id::FileId::HighRes { .. } => None,
        }
    }

    pub(super) fn file_id_from(path: &Path, meta: &Metadata) -> Option<FileId> {
        // Opening a link opens its target: a link's identity would be its target's, so links
        // get none (they are then never taken for a rename, only re-described).
        if meta.file_type().is_symlink() {
            return None;
        }
        file_id_of(path)
    }

    pub(super) fn attributes_of(meta: &Metadata) -> Attributes {
        Attributes {
            unix_mode: 0,
            windows: meta.file_attributes() & CARRIED_ATTRIBUTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_is_stored_as_the_same_128_bit_number() {
        // Indexes written when the id was a u128 hold its big-endian bytes: they stay valid.
        let number: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        let id = FileId::from_u128(number).unwrap();
        assert_eq!(
            Some(id),
            FileId::new(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210)
        );
        assert_eq!(id.to_be_bytes(), number.to_be_bytes());
        assert_eq!(FileId::from_be_bytes(number.to_be_bytes()), Some(id));
        assert_eq!(u128::from(id), number);
        // File 0 identifies nothing; device 0 is a device like any other.
        assert_eq!(FileId::from_u128(7 << 64), None);
        assert_eq!(u128::from(FileId::new(0, 1).unwrap()), 1);
        // What the representation is for: no room lost to alignment or to the `Option`.
        assert_eq!(std::mem::size_of::<Option<FileId>>(), 16);
        assert_eq!(std::mem::align_of::<FileId>(), 8);
    }

    #[test]
    fn path_order_puts_parents_before_children() {
        let mut paths = vec!["a.x", "a/b", "ab", "a", "a b", "a/b/c", "B", "a/a"];
        paths.sort_by(|a, b| compare_paths(a, b));
        assert_eq!(paths, ["B", "a", "a/a", "a/b", "a/b/c", "a b", "a.x", "ab"]);
    }

    proptest::proptest! {
        #[test]
        fn path_order_is_byte_order_with_slash_first(
            a in "[ab/.]{0,20}",
            b in "[ab/.]{0,20}",
            prefix in "[a-z/ ]{0,30}",
        ) {
            let reference = |x: &str, y: &str| {
                let key = |c: u8| if c == b'/' { 0 } else { c };
                x.bytes().map(key).cmp(y.bytes().map(key))
            };
            let (a, b) = (format!("{prefix}{a}"), format!("{prefix}{b}"));
            proptest::prop_assert_eq!(compare_paths(&a, &b), reference(&a, &b));
        }
    }

    #[test]
    fn below_is_component_wise() {
        assert!(is_same_or_below("a", "a"));
        assert!(is_same_or_below("a/b", "a"));
        assert!(!is_same_or_below("ab", "a"));
        assert!(!is_same_or_below("a", "a/b"));
    }

    #[test]
    fn wire_and_os_paths_round_trip() {
        let root = Path::new("/srv/root");
        let os = to_os_path(root, "Core Services/x.ini");
        assert_eq!(os, root.join("Core Services").join("x.ini"));
        assert_eq!(
            to_wire_path(root, &os).as_deref(),
            Some("Core Services/x.ini")
        );
        assert_eq!(to_wire_path(root, root), None);
        assert_eq!(to_wire_path(root, Path::new("/elsewhere/x")), None);
    }

    #[test]
    fn link_targets_must_stay_inside() {
        assert_eq!(
            link_target_inside("a/link", Path::new("../b/c")).as_deref(),
            Some("../b/c")
        );
        assert_eq!(
            link_target_inside("a/link", Path::new("./c")).as_deref(),
            Some("c")
        );
        assert_eq!(link_target_inside("link", Path::new("../outside")), None);
        assert_eq!(
            link_target_inside("a/link", Path::new("../../outside")),
            None
        );
        assert_eq!(link_target_inside("a/link", Path::new("/etc/passwd")), None);
        assert_eq!(link_target_inside("a/link", Path::new("")), None);
    }
}
