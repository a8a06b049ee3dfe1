//! The backend trait and the `.reg` file backend.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::changes::ChangeSet;
use crate::model::{Snapshot, Tree};
use crate::path::KeyPath;
use crate::regfile::{Encoding, RegFile};
use crate::{Error, Result};

/// Where registry keys live: the live Windows registry, or a `.reg` file standing in for it.
pub trait RegistryBackend: Send {
    /// The current state of the given root keys (a root that does not exist is `None`).
    fn read(&self, roots: &[KeyPath]) -> Result<Snapshot>;

    /// Applies every operation, or none of them. The caller has checked the scope
    /// ([`crate::apply_changes`] does both).
    fn apply(&mut self, changes: &ChangeSet) -> Result<()>;

    /// Blocks until one of `roots` may have changed, or `timeout` has passed; returns whether a
    /// change was signalled. Signals are hints: callers re-read and diff either way.
    fn wait_for_change(&self, roots: &[KeyPath], timeout: Duration) -> Result<bool>;

    /// Where the keys live, for messages ("registry file C:\lab\master.reg", "the live registry").
    fn describe(&self) -> String;
}

/// A `.reg` file standing in for the registry (the lab backend, and tests). Reads re-parse the
/// file every time, so edits made by others are seen; an apply rewrites the whole file through a
/// temporary file and a rename, in the file's own encoding, so it is never seen half-written.
#[derive(Debug, Clone)]
pub struct RegFileBackend {
    path: PathBuf,
}

impl RegFileBackend {
    /// A backend over an existing `.reg` file.
    pub fn open(path: impl Into<PathBuf>) -> Result<RegFileBackend> {
        let path = path.into();
        fs::metadata(&path)
            .map_err(|e| Error::io(format!("cannot open registry file {}", path.display()), e))?;
        Ok(RegFileBackend { path })
    }

    /// A backend over `path`, which is created as an empty registry (UTF-16LE, as regedit
    /// writes) when it does not exist yet.
    pub fn open_or_create(path: impl Into<PathBuf>) -> Result<RegFileBackend> {
        let path = path.into();
        if !path.exists() {
            write_atomically(&path, &RegFile::default().to_bytes(Encoding::Utf16Le))?;
        }
        RegFileBackend::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file as a tree, and the encoding it is stored in.
    pub fn load(&self) -> Result<(Tree, Encoding)> {
        let bytes = fs::read(&self.path).map_err(|e| {
            Error::io(
                format!("cannot read registry file {}", self.path.display()),
                e,
            )
        })?;
        let encoding = if bytes.starts_with(&[0xFF, 0xFE]) {
            Encoding::Utf16Le
        } else {
            Encoding::Utf8
        };
        let file = RegFile::parse(&bytes).map_err(|e| Error::InFile {
            path: self.path.clone(),
            source: Box::new(e),
        })?;
        Ok((file.to_tree(), encoding))
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }
}

impl RegistryBackend for RegFileBackend {
    fn read(&self, roots: &[KeyPath]) -> Result<Snapshot> {
        Ok(self.load()?.0.snapshot(roots))
    }

    fn apply(&mut self, changes: &ChangeSet) -> Result<()> {
        let (mut tree, encoding) = self.load()?;
        tree.apply(changes);
        write_atomically(&self.path, &RegFile::from_tree(&tree).to_bytes(encoding))
    }

    /// Polls the file's modification time and size every 100 ms.
    fn wait_for_change(&self, _roots: &[KeyPath], timeout: Duration) -> Result<bool> {
        let start = self.stamp();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100).min(timeout));
            if self.stamp() != start {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn describe(&self) -> String {
        format!("registry file {}", self.path.display())
    }
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, then renames it over
/// `path`: readers see the old file or the new one, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "registry.reg".into());
    let temp = dir.join(format!(".{name}.swrepl-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        sync_dir(&dir);
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&temp);
        Error::io(format!("cannot write {}", path.display()), e)
    })
}

/// Makes a rename durable on Unix (a no-op elsewhere, where directories cannot be opened).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}
