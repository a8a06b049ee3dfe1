//! What replication calls: the configured scope, snapshots, and the guarded apply (scope check,
//! archive of the previous state, all-or-nothing apply).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::RegistryBackend;
use crate::changes::{diff, ChangeSet};
use crate::model::Snapshot;
use crate::path::KeyPath;
use crate::regfile::{Encoding, RegFile};
use crate::{Error, Result};

/// The keys Supportworks keeps its HTTP aliases in (the runbook's "Replicating Registry Keys").
pub const DEFAULT_KEYS: [&str; 2] = [
    r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases",
    r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\Supportworks Server\HttpAliases",
];

/// [`DEFAULT_KEYS`] as paths.
pub fn default_roots() -> Vec<KeyPath> {
    DEFAULT_KEYS
        .iter()
        .filter_map(|k| KeyPath::parse(k).ok())
        .collect()
}

/// The configured root keys: the only keys (with their subkeys) replication may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    roots: Vec<KeyPath>,
}

impl Scope {
    /// A scope over `roots` (duplicates, compared case-insensitively, are dropped).
    pub fn new(roots: Vec<KeyPath>) -> Scope {
        let mut unique: Vec<KeyPath> = Vec::with_capacity(roots.len());
        for root in roots {
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        Scope { roots: unique }
    }

    /// The scope of [`DEFAULT_KEYS`].
    pub fn default_keys() -> Scope {
        Scope::new(default_roots())
    }

    pub fn roots(&self) -> &[KeyPath] {
        &self.roots
    }

    /// Whether `path` is a configured key or lies below one.
    pub fn allows(&self, path: &KeyPath) -> bool {
        self.roots.iter().any(|root| path.is_within(root))
    }

    /// Refuses the whole change set if any operation writes outside the configured keys.
    pub fn check(&self, changes: &ChangeSet) -> Result<()> {
        match changes.ops.iter().find(|op| !self.allows(op.key())) {
            None => Ok(()),
            Some(op) => Err(Error::OutOfScope {
                path: op.key().to_string(),
                allowed: self
                    .roots
                    .iter()
                    .map(KeyPath::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }
}

/// The current state of the scope's keys.
pub fn snapshot(backend: &dyn RegistryBackend, scope: &Scope) -> Result<Snapshot> {
    backend.read(scope.roots())
}

/// What [`apply_changes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The operations that changed something (the requested ones minus no-ops).
    pub applied: ChangeSet,
    /// The `.reg` file holding the keys' previous state, when an archive was asked for and
    /// something changed.
    pub archived: Option<PathBuf>,
}

/// Applies `changes` to the scope's keys, all-or-nothing:
/// 1. refuses the whole set if any operation touches a key outside `scope`;
/// 2. reads the current state and works out which operations change something (none → done);
/// 3. saves the current state to `archive_dir` (when given) as a `.reg` file that restores it;
/// 4. applies the effective operations through the backend.
pub fn apply_changes(
    backend: &mut dyn RegistryBackend,
    scope: &Scope,
    changes: &ChangeSet,
    archive_dir: Option<&Path>,
) -> Result<ApplyOutcome> {
    scope.check(changes)?;
    let before = backend.read(scope.roots())?;
    let after = before.apply(changes);
    let effective = diff(&before, &after);
    if effective.is_empty() {
        tracing::debug!("registry already up to date; nothing to apply");
        return Ok(ApplyOutcome {
            applied: effective,
            archived: None,
        });
    }
    let archived = archive_dir
        .map(|dir| archive_snapshot(dir, &before))
        .transpose()?;
    backend.apply(&effective)?;
    tracing::info!(
        changes = effective.len(),
        archive = %archived.as_ref().map_or("none".into(), |p| p.display().to_string()),
        "registry changes applied to {}",
        backend.describe()
    );
    Ok(ApplyOutcome {
        applied: effective,
        archived,
    })
}

/// Saves `snapshot` in `dir` (created if needed) as `registry-<UTC time>.reg`, a regedit file that
/// restores the keys exactly when imported (it deletes each root, then recreates what existed).
/// Returns the file's path.
pub fn archive_snapshot(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| {
        Error::io(
            format!("cannot create archive directory {}", dir.display()),
            e,
        )
    })?;
    let bytes = RegFile::restore_point(snapshot).to_bytes(Encoding::Utf16Le);
    let stem = format!("registry-{}", utc_stamp(SystemTime::now()));
    for attempt in 0..1000 {
        let name = match attempt {
            0 => format!("{stem}.reg"),
            n => format!("{stem}-{n}.reg"),
        };
        let path = dir.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(&bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| {
                        Error::io(format!("cannot write archive {}", path.display()), e)
                    })?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("cannot create archive {}", path.display()),
                    e,
                ))
            }
        }
    }
    Err(Error::io(
        format!("cannot create an archive file in {}", dir.display()),
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

/// `YYYYMMDDTHHMMSS.mmmZ` in UTC, sortable and valid in Windows file names.
fn utc_stamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time.max(UNIX_EPOCH))
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29 23:59:59.123
        assert_eq!(utc_stamp(t), "20240229T235959.123Z");
    }

    #[test]
    fn scope_allows_roots_and_below_only() {
        let scope = Scope::default_keys();
        let root = &scope.roots()[0];
        assert!(scope.allows(root));
        assert!(scope.allows(&root.child("sub")));
        assert!(!scope.allows(&root.parent().unwrap()));
        let lower = KeyPath::parse(&DEFAULT_KEYS[1].to_lowercase()).unwrap();
        assert!(scope.allows(&lower));
    }
}
