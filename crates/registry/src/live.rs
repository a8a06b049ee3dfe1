//! The live Windows registry, through `windows-registry` (and `windows-sys` for change
//! notification).
//!
//! Values are read and written as type number + raw bytes (`RegEnumValueW` / `RegSetValueExW`),
//! so every type, unknown ones included, replicates losslessly. An apply runs inside one kernel
//! transaction (KTM: `RegCreateKeyTransactedW`/`RegOpenKeyTransactedW`): it is committed only when
//! every operation succeeded, so the keys are never left half-changed.
//!
//! Where KTM is missing (Wine has no `RegOpenKeyTransactedW`),
//! [`LiveRegistry::without_transactions`] applies the same operations one by one.
//!
//! Verified under Wine 8 (`crates/registry/tests/windows.rs`, run by `.ci/wine-test`): reading
//! every value type losslessly, applying changes without a transaction (set, delete values,
//! create and delete subtrees), `.reg` round trips, change notification. Not verifiable there:
//! the KTM transaction itself (Wine lacks the transacted calls), and notification timing.

use std::time::Duration;

use windows_registry::{
    Key, OpenOptions, Transaction, Type, CLASSES_ROOT, CURRENT_CONFIG, CURRENT_USER, LOCAL_MACHINE,
    USERS,
};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, WAIT_OBJECT_0};
use windows_sys::Win32::System::Registry::{
    RegNotifyChangeKeyValue, REG_NOTIFY_CHANGE_LAST_SET, REG_NOTIFY_CHANGE_NAME,
};
use windows_sys::Win32::System::Threading::{CreateEventW, WaitForSingleObject};

use crate::backend::RegistryBackend;
use crate::changes::{ChangeSet, Op};
use crate::model::{Key as ModelKey, Snapshot, Value};
use crate::path::KeyPath;
use crate::{Error, Result};

/// `HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)`: the key or value does not exist.
const NOT_FOUND: i32 = 0x8007_0002_u32 as i32;
/// The `DELETE` standard access right, needed on the parent to delete a subtree.
const DELETE: u32 = 0x0001_0000;
/// Deepest key the reader descends to (Windows' own limit is 512 levels).
const MAX_DEPTH: usize = swrepl_proto::registry::MAX_REGISTRY_DEPTH;

/// The registry of the machine swrepl runs on.
#[derive(Debug, Clone)]
pub struct LiveRegistry {
    transactions: bool,
}

impl Default for LiveRegistry {
    fn default() -> LiveRegistry {
        LiveRegistry::new()
    }
}

impl LiveRegistry {
    /// Applies each change set inside one kernel transaction (all-or-nothing).
    pub fn new() -> LiveRegistry {
        LiveRegistry { transactions: true }
    }

    /// Applies operations one by one, without a kernel transaction, for systems without KTM
    /// (Wine). An apply that fails midway leaves the operations before the failing one applied;
    /// the `.reg` archive [`crate::apply_changes`] writes first restores the previous state.
    pub fn without_transactions() -> LiveRegistry {
        LiveRegistry {
            transactions: false,
        }
    }
}

fn os_error(what: String, e: windows_registry::Result<()>) -> Error {
    match e {
        Ok(()) => Error::Os(what),
        Err(e) => Error::Os(format!("{what}: {e}")),
    }
}

fn is_not_found(e: &windows_result::Error) -> bool {
    e.code().0 == NOT_FOUND
}

/// The predefined key for the path's hive, and the rest of the path (empty for the hive itself).
fn split_hive(path: &KeyPath) -> (&'static Key, String) {
    let mut components = path.components();
    let hive = match components.next().unwrap_or_default() {
        "HKEY_CURRENT_USER" => CURRENT_USER,
        "HKEY_CLASSES_ROOT" => CLASSES_ROOT,
        "HKEY_USERS" => USERS,
        "HKEY_CURRENT_CONFIG" => CURRENT_CONFIG,
        _ => LOCAL_MACHINE,
    };
    (hive, components.collect::<Vec<_>>().join("\\"))
}

/// Opens `path` for reading; `Ok(None)` when it does not exist.
fn open_read(path: &KeyPath) -> Result<Option<Key>> {
    let (hive, rest) = split_hive(path);
    match hive.options().read().open(&rest) {
        Ok(key) => Ok(Some(key)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(os_error(format!("cannot open registry key {path}"), Err(e))),
    }
}

fn read_key(path: &KeyPath, key: &Key, depth: usize) -> Result<ModelKey> {
    let mut model = ModelKey::new(path.name());
    let values = key
        .values()
        .map_err(|e| os_error(format!("cannot list the values of {path}"), Err(e)))?;
    for (name, value) in values {
        model.set_value(&name, Value::raw(u32::from(value.ty()), value.to_vec()));
    }
    if depth >= MAX_DEPTH {
        return Ok(model);
    }
    let names: Vec<String> = key
        .keys()
        .map_err(|e| os_error(format!("cannot list the subkeys of {path}"), Err(e)))?
        .collect();
    for name in names {
        let child_path = path.child(&name);
        match key.options().read().open(&name) {
            Ok(child) => model.insert_subkey(read_key(&child_path, &child, depth + 1)?),
            // Deleted between listing and opening: it is simply not there any more.
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(os_error(
                    format!("cannot open registry key {child_path}"),
                    Err(e),
                ))
            }
        }
    }
    Ok(model)
}

/// Options to open a key below `hive` for reading and writing, inside `tx` when there is one.
fn writable<'a>(hive: &'a Key, tx: Option<&'a Transaction>) -> OpenOptions<'a> {
    let mut options = hive.options();
    options.read().write();
    if let Some(tx) = tx {
        options.transaction(tx);
    }
    options
}

fn apply_op(tx: Option<&Transaction>, op: &Op) -> windows_registry::Result<()> {
    match op {
        Op::CreateKey(path) => {
            let (hive, rest) = split_hive(path);
            writable(hive, tx).create().open(&rest)?;
            Ok(())
        }
        Op::DeleteKey(path) => {
            let Some(parent) = path.parent() else {
                return Ok(()); // a hive cannot be deleted; the scope never allows one anyway
            };
            let (hive, rest) = split_hive(&parent);
            let parent_key = match writable(hive, tx).access(DELETE).open(&rest) {
                Ok(key) => key,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            match parent_key.remove_tree(path.name()) {
                Err(e) if is_not_found(&e) => Ok(()),
                other => other,
            }
        }
        Op::SetValue { key, name, value } => {
            let (hive, rest) = split_hive(key);
            let key = writable(hive, tx).create().open(&rest)?;
            // `Type::Other(n)` writes type number `n` as is. Using it for every type (not
            // `Type::String` for 1) keeps string data that lacks a terminator exact, where the
            // crate would debug-assert a terminator.
            let guarded = GuardedData::new(&value.data);
            key.set_bytes(name, Type::Other(value.kind), guarded.data())
        }
        Op::DeleteValue { key, name } => {
            let (hive, rest) = split_hive(key);
            let key = match writable(hive, tx).open(&rest) {
                Ok(key) => key,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            match key.remove_value(name) {
                Err(e) if is_not_found(&e) => Ok(()),
                other => other,
            }
        }
    }
}

/// Value data laid out so that `RegSetValueExW` stores exactly its bytes:
/// - for a string type whose data lacks its terminator, `RegSetValueExW` looks at the character
///   just past the buffer and, when it is 0, stores it too ("the caller forgot to count the
///   terminator"; NT does this, and Wine copies it). The copy is followed by two non-zero bytes,
///   so nothing is added, and nothing past our allocation is read;
/// - empty data gets a real pointer: an empty `Vec`'s is dangling (0x1), which Wine refuses with
///   ERROR_NOACCESS even for zero bytes.
struct GuardedData {
    buffer: Vec<u8>,
    len: usize,
}

impl GuardedData {
    fn new(data: &[u8]) -> GuardedData {
        let mut buffer = Vec::with_capacity(data.len() + 2);
        buffer.extend_from_slice(data);
        buffer.extend_from_slice(&[0xff, 0xff]);
        GuardedData {
            buffer,
            len: data.len(),
        }
    }

    fn data(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

/// Closes an event handle on drop.
struct Event(HANDLE);

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateEventW and is closed exactly once.
        unsafe { CloseHandle(self.0) };
    }
}

/// The deepest existing key at or above `path`, opened for reading (which includes KEY_NOTIFY).
fn nearest_existing(path: &KeyPath) -> Result<Option<Key>> {
    let mut current = Some(path.clone());
    while let Some(candidate) = current {
        if candidate.depth() < 2 {
            return Ok(None); // never watch a whole hive
        }
        if let Some(key) = open_read(&candidate)? {
            return Ok(Some(key));
        }
        current = candidate.parent();
    }
    Ok(None)
}

impl RegistryBackend for LiveRegistry {
    fn read(&self, roots: &[KeyPath]) -> Result<Snapshot> {
        let mut out = Vec::with_capacity(roots.len());
        for root in roots {
            let key = match open_read(root)? {
                Some(key) => Some(read_key(root, &key, root.depth())?),
                None => None,
            };
            out.push((root.clone(), key));
        }
        Ok(Snapshot::new(out))
    }

    fn apply(&mut self, changes: &ChangeSet) -> Result<()> {
        if !self.transactions {
            for (done, op) in changes.ops.iter().enumerate() {
                apply_op(None, op).map_err(|e| {
                    os_error(
                        format!(
                            "cannot apply `{op}` ({done} of {} operations were applied before it)",
                            changes.ops.len()
                        ),
                        Err(e),
                    )
                })?;
            }
            return Ok(());
        }
        let tx = Transaction::new().map_err(|e| {
            os_error(
                "cannot start a registry transaction (is the Kernel Transaction Manager available?)"
                    .into(),
                Err(e),
            )
        })?;
        for op in &changes.ops {
            // On error the transaction is dropped uncommitted: Windows rolls everything back.
            apply_op(Some(&tx), op).map_err(|e| {
                os_error(format!("cannot apply `{op}`; nothing was changed"), Err(e))
            })?;
        }
        tx.commit().map_err(|e| {
            os_error(
                "cannot commit the registry transaction; nothing was changed".into(),
                Err(e),
            )
        })
    }

    /// Waits on `RegNotifyChangeKeyValue` over each root's subtree (or, for a root that does not
    /// exist yet, over its nearest existing parent, so its creation is noticed).
    fn wait_for_change(&self, roots: &[KeyPath], timeout: Duration) -> Result<bool> {
        // SAFETY: plain Win32 call; null attributes and name are allowed.
        let handle = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        if handle.is_null() {
            return Err(Error::Os(format!(
                "cannot create an event for registry notification: {}",
                std::io::Error::last_os_error()
            )));
        }
        let event = Event(handle);
        let mut watched = Vec::new();
        for root in roots {
            if let Some(key) = nearest_existing(root)? {
                let filter = REG_NOTIFY_CHANGE_NAME | REG_NOTIFY_CHANGE_LAST_SET;
                // SAFETY: the key handle and the event stay open until after the wait below.
                let rc = unsafe { RegNotifyChangeKeyValue(key.as_raw(), 1, filter, event.0, 1) };
                if rc != 0 {
                    return Err(Error::Os(format!(
                        "cannot watch registry key {root}: {}",
                        std::io::Error::from_raw_os_error(rc as i32)
                    )));
                }
                watched.push(key);
            }
        }
        if watched.is_empty() {
            std::thread::sleep(timeout);
            return Ok(false);
        }
        let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX - 1);
        // SAFETY: the event handle is valid for the duration of the wait.
        let rc = unsafe { WaitForSingleObject(event.0, millis) };
        drop(watched);
        Ok(rc == WAIT_OBJECT_0)
    }

    fn describe(&self) -> String {
        "the live registry".into()
    }
}
