//! The archive: where the receiver keeps every file it replaces or deletes, so that a mistake
//! replicated from the Master can still be undone on the Slave.
//!
//! Layout: `<archive>/<UTC timestamp>/<relative path>`, e.g.
//! `archive/20261126T054012Z/Supportworks Server/html/index.php`. A second version of the same
//! path archived within the same second gets a `~N` suffix.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::Dir;

/// The archive directory, opened once; moves into it are rename-based where the volume allows.
pub struct Archive {
    dir: Dir,
    path: PathBuf,
    retention: Option<Duration>,
}

impl Archive {
    /// Opens (creating if needed) the archive at `path`.
    pub fn open(path: &Path, retention: Option<Duration>) -> io::Result<Archive> {
        std::fs::create_dir_all(path)?;
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Archive {
            dir,
            path: path.to_path_buf(),
            retention,
        })
    }

    /// The archive's location, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh archive location for `rel`, its parent directories created.
    fn slot(&self, rel: &str) -> io::Result<PathBuf> {
        let stamp = utc_stamp(SystemTime::now());
        let base = Path::new(&stamp).join(rel);
        let mut candidate = base.clone();
        let mut n = 1;
        while self.dir.symlink_metadata(&candidate).is_ok() {
            candidate = PathBuf::from(format!("{}~{n}", base.display()));
            n += 1;
        }
        if let Some(parent) = candidate.parent() {
            self.dir.create_dir_all(parent)?;
        }
        Ok(candidate)
    }

    /// Moves `rel` (a file, link or whole directory tree) out of `root` into the archive.
    /// Falls back to copy-then-remove when the archive is on another volume.
    pub fn move_in(&self, root: &Dir, rel: &str) -> io::Result<PathBuf> {
        let slot = self.slot(rel)?;
        match root.rename(rel, &self.dir, &slot) {
            Ok(()) => Ok(slot),
            Err(e) if is_cross_device(&e) => {
                copy_tree(root, Path::new(rel), &self.dir, &slot)?;
                remove_any(root, rel)?;
                Ok(slot)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps a copy of the file `rel` (about to be replaced) in the archive: a hard link when the
    /// archive shares the volume, else a copy. The file stays in place.
    pub fn keep_copy(&self, root: &Dir, rel: &str) -> io::Result<PathBuf> {
        let slot = self.slot(rel)?;
        if root.hard_link(rel, &self.dir, &slot).is_err() {
            root.copy(rel, &self.dir, &slot)?;
        }
        Ok(slot)
    }

    /// Removes archive generations older than the retention period; returns how many went.
    pub fn expire(&self) -> io::Result<usize> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = utc_stamp(SystemTime::now() - retention);
        let mut removed = 0;
        for entry in self.dir.entries()? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Stamps sort lexically in time order; anything else is not ours to remove.
            if name.len() == 16 && name.ends_with('Z') && name < cutoff {
                self.dir.remove_dir_all(&name)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn is_cross_device(e: &io::Error) -> bool {
    // EXDEV on Unix, ERROR_NOT_SAME_DEVICE (17) on Windows.
    e.kind() == io::ErrorKind::CrossesDevices
        || e.raw_os_error() == Some(if cfg!(windows) { 17 } else { 18 })
}

/// Removes a file, link or directory tree.
pub(crate) fn remove_any(root: &Dir, rel: &str) -> io::Result<()> {
    let meta = root.symlink_metadata(rel)?;
    if meta.is_dir() {
        root.remove_dir_all(rel)
    } else {
        root.remove_file(rel)
    }
}

fn copy_tree(from: &Dir, src: &Path, to: &Dir, dst: &Path) -> io::Result<()> {
    let meta = from.symlink_metadata(src)?;
    if meta.is_dir() {
        to.create_dir_all(dst)?;
        for entry in from.read_dir(src)? {
            let name = entry?.file_name();
            copy_tree(from, &src.join(&name), to, &dst.join(&name))?;
        }
        Ok(())
    } else if meta.is_symlink() {
        // Links are recreated from their text; nothing to follow.
        let target = from.read_link_contents(src)?;
        #[cfg(unix)]
        {
            to.symlink_contents(target, dst)
        }
        #[cfg(not(unix))]
        {
            let _ = target;
            Ok(())
        }
    } else {
        from.copy(src, to, dst).map(|_| ())
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC: sortable, and legal in file names on every OS.
pub fn utc_stamp(t: SystemTime) -> String {
    let t = t.max(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_sortable() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_671_612); // 2026-11-26 05:40:12 UTC
        assert_eq!(utc_stamp(t), "20261126T054012Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
    }

    #[test]
    fn move_in_keeps_relative_path_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let root_path = tmp.path().join("root");
        std::fs::create_dir_all(root_path.join("a/b")).unwrap();
        std::fs::write(root_path.join("a/b/f.txt"), b"one").unwrap();
        let root = Dir::open_ambient_dir(&root_path, cap_std::ambient_authority()).unwrap();
        let archive = Archive::open(&tmp.path().join("archive"), None).unwrap();

        let first = archive.move_in(&root, "a/b/f.txt").unwrap();
        std::fs::write(root_path.join("a/b/f.txt"), b"two").unwrap();
        let second = archive.move_in(&root, "a/b/f.txt").unwrap();

        assert!(first.ends_with("a/b/f.txt"));
        assert_ne!(first, second);
        assert_eq!(std::fs::read(archive.path().join(&first)).unwrap(), b"one");
        assert_eq!(std::fs::read(archive.path().join(&second)).unwrap(), b"two");
        assert!(!root_path.join("a/b/f.txt").exists());
    }
}
