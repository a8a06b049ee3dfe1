//! Wire types for registry replication, and the checks a receiver runs on them.
//!
//! A registry state travels flat, as regedit writes it: a list of keys, each named by its full
//! path (`HKEY_LOCAL_MACHINE\Software\…`) with its values. Nesting is expressed by the paths, not
//! by recursive types, so decoding never recurses however hostile the peer.
//!
//! Values are carried losslessly: the registry type number (`REG_SZ` = 1, `REG_DWORD` = 4, …,
//! unknown numbers included) and the raw bytes exactly as `RegQueryValueExW` returns them.
//!
//! Which keys a receiver lets a peer write is policy, not protocol: the registry crate checks every
//! path against its configured list. This module checks only shape and limits.
//!
//! Every type here is append-only in the same way as [`crate::Message`].

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Longest key path, in bytes of UTF-8, hive name included.
pub const MAX_REGISTRY_PATH_LEN: usize = 8192;
/// Deepest key path, in components, hive included (Windows allows 512 levels).
pub const MAX_REGISTRY_DEPTH: usize = 512;
/// Longest key name component, in UTF-16 units (a Windows limit).
pub const MAX_REGISTRY_KEY_NAME_UNITS: usize = 255;
/// Longest value name, in UTF-16 units (a Windows limit).
pub const MAX_REGISTRY_VALUE_NAME_UNITS: usize = 16_383;
/// Largest value data accepted (1 MiB; Windows advises keeping values under 2 KiB).
pub const MAX_REGISTRY_DATA_LEN: usize = 1024 * 1024;
/// Most keys in one [`RegistrySnapshot`].
pub const MAX_REGISTRY_KEYS: usize = 10_000;
/// Most values in one [`RegistrySnapshot`], over all its keys.
pub const MAX_REGISTRY_VALUES: usize = 100_000;
/// Most operations in one [`RegistryChangeSet`].
pub const MAX_REGISTRY_OPS: usize = 100_000;

/// The root keys a path may start with, spelled as regedit spells them.
pub const REGISTRY_HIVES: [&str; 5] = [
    "HKEY_LOCAL_MACHINE",
    "HKEY_CURRENT_USER",
    "HKEY_CLASSES_ROOT",
    "HKEY_USERS",
    "HKEY_CURRENT_CONFIG",
];

/// One named value: registry type number and raw data bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RegistryValue {
    /// Value name; the empty string is the key's default value (regedit's `@`).
    pub name: String,
    /// Registry type number (`REG_NONE` 0, `REG_SZ` 1, `REG_EXPAND_SZ` 2, `REG_BINARY` 3,
    /// `REG_DWORD` 4, `REG_MULTI_SZ` 7, `REG_QWORD` 11, or any other number, kept as is).
    pub kind: u32,
    /// The data exactly as stored; strings are UTF-16LE including their terminator.
    pub data: Vec<u8>,
}

/// One key and its own values (not its subkeys: those are separate entries with longer paths).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RegistryKeyState {
    /// Full path, `\`-separated, starting with one of [`REGISTRY_HIVES`].
    pub path: String,
    pub values: Vec<RegistryValue>,
}

/// The state of a set of configured root keys.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrySnapshot {
    /// The configured root keys this snapshot covers (full paths).
    pub roots: Vec<String>,
    /// Every key that exists at or under a root, parents before children. A root that is not
    /// listed here does not exist on the speaker's side.
    pub keys: Vec<RegistryKeyState>,
}

/// One change to a registry. Applying a change whose target is already in the wanted state is a
/// no-op, so a change set can be applied twice safely.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RegistryOp {
    /// 0. Create the key (and any missing parents) if it does not exist.
    CreateKey { path: String },
    /// 1. Delete the key with all its values and subkeys, if it exists.
    DeleteKey { path: String },
    /// 2. Create or replace one value of the key (creating the key if needed).
    SetValue { key: String, value: RegistryValue },
    /// 3. Delete one value of the key, if it exists.
    DeleteValue { key: String, name: String },
}

/// An ordered list of changes, applied all-or-nothing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryChangeSet {
    pub ops: Vec<RegistryOp>,
}

fn limit(what: String) -> ProtoError {
    ProtoError::Limit(what)
}

fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Checks a full key path: a known hive, `\` separators, no empty component, no NUL, within the
/// length and depth limits. Hive names are compared case-insensitively, as Windows does.
pub fn validate_registry_path(path: &str) -> Result<(), ProtoError> {
    let bad = |why: &str| ProtoError::Malformed(format!("registry path {path:?}: {why}"));
    if path.len() > MAX_REGISTRY_PATH_LEN {
        return Err(limit(format!(
            "registry path longer than {MAX_REGISTRY_PATH_LEN} bytes"
        )));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    // A line break cannot be written to (or read back from) a `.reg` file.
    if path.contains(['\r', '\n']) {
        return Err(bad("contains a line break"));
    }
    let mut components = path.split('\\');
    let hive = components.next().unwrap_or_default();
    if !REGISTRY_HIVES.iter().any(|h| h.eq_ignore_ascii_case(hive)) {
        return Err(bad(
            "does not start with a registry hive such as HKEY_LOCAL_MACHINE",
        ));
    }
    let mut depth = 1;
    for component in components {
        depth += 1;
        if component.is_empty() {
            return Err(bad("has an empty component ('\\\\' or a trailing '\\')"));
        }
        if utf16_len(component) > MAX_REGISTRY_KEY_NAME_UNITS {
            return Err(limit(format!(
                "registry key name longer than {MAX_REGISTRY_KEY_NAME_UNITS} characters"
            )));
        }
    }
    if depth > MAX_REGISTRY_DEPTH {
        return Err(limit(format!(
            "registry path deeper than {MAX_REGISTRY_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Checks a value's name and data size.
pub fn validate_registry_value(value: &RegistryValue) -> Result<(), ProtoError> {
    validate_value_name(&value.name)?;
    if value.data.len() > MAX_REGISTRY_DATA_LEN {
        return Err(limit(format!(
            "registry value {:?} has {} bytes, over the limit of {MAX_REGISTRY_DATA_LEN}",
            value.name,
            value.data.len()
        )));
    }
    Ok(())
}

fn validate_value_name(name: &str) -> Result<(), ProtoError> {
    if name.contains('\0') {
        return Err(ProtoError::Malformed(format!(
            "registry value name {name:?} contains NUL"
        )));
    }
    if utf16_len(name) > MAX_REGISTRY_VALUE_NAME_UNITS {
        return Err(limit(format!(
            "registry value name longer than {MAX_REGISTRY_VALUE_NAME_UNITS} characters"
        )));
    }
    Ok(())
}

/// Checks every path and value of a snapshot, and its key and value counts.
pub fn validate_registry_snapshot(snapshot: &RegistrySnapshot) -> Result<(), ProtoError> {
    if snapshot.keys.len() + snapshot.roots.len() > MAX_REGISTRY_KEYS {
        return Err(limit(format!(
            "registry snapshot with more than {MAX_REGISTRY_KEYS} keys"
        )));
    }
    let mut values = 0usize;
    for key in &snapshot.keys {
        validate_registry_path(&key.path)?;
        values += key.values.len();
        if values > MAX_REGISTRY_VALUES {
            return Err(limit(format!(
                "registry snapshot with more than {MAX_REGISTRY_VALUES} values"
            )));
        }
        key.values.iter().try_for_each(validate_registry_value)?;
    }
    snapshot
        .roots
        .iter()
        .try_for_each(|path| validate_registry_path(path))
}

/// Checks every operation of a change set, and its length.
pub fn validate_registry_changes(changes: &RegistryChangeSet) -> Result<(), ProtoError> {
    if changes.ops.len() > MAX_REGISTRY_OPS {
        return Err(limit(format!(
            "registry change set with more than {MAX_REGISTRY_OPS} operations"
        )));
    }
    for op in &changes.ops {
        match op {
            RegistryOp::CreateKey { path } | RegistryOp::DeleteKey { path } => {
                validate_registry_path(path)?
            }
            RegistryOp::SetValue { key, value } => {
                validate_registry_path(key)?;
                validate_registry_value(value)?;
            }
            RegistryOp::DeleteValue { key, name } => {
                validate_registry_path(key)?;
                validate_value_name(name)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIASES: &str =
        r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases";

    #[test]
    fn accepts_real_paths_and_hive_case_variants() {
        validate_registry_path(ALIASES).unwrap();
        validate_registry_path(r"hkey_local_machine\Software").unwrap();
        validate_registry_path("HKEY_USERS").unwrap();
    }

    #[test]
    fn refuses_bad_paths() {
        for path in [
            "",
            r"HKLM\Software",
            r"Software\Hornbill",
            r"HKEY_LOCAL_MACHINE\",
            r"HKEY_LOCAL_MACHINE\\Software",
            "HKEY_LOCAL_MACHINE\\Soft\0ware",
            "HKEY_LOCAL_MACHINE\\Soft\nware",
            "HKEY_LOCAL_MACHINE\\Soft\rware",
            r"\HKEY_LOCAL_MACHINE\Software",
        ] {
            assert!(validate_registry_path(path).is_err(), "{path:?} accepted");
        }
        let long_name = format!(r"HKEY_LOCAL_MACHINE\{}", "a".repeat(256));
        assert!(matches!(
            validate_registry_path(&long_name),
            Err(ProtoError::Limit(_))
        ));
        let deep = format!("HKEY_LOCAL_MACHINE{}", r"\a".repeat(MAX_REGISTRY_DEPTH));
        assert!(matches!(
            validate_registry_path(&deep),
            Err(ProtoError::Limit(_))
        ));
    }

    #[test]
    fn refuses_oversized_values_and_nul_names() {
        let big = RegistryValue {
            name: "x".into(),
            kind: 3,
            data: vec![0; MAX_REGISTRY_DATA_LEN + 1],
        };
        assert!(validate_registry_value(&big).is_err());
        let nul = RegistryValue {
            name: "a\0b".into(),
            kind: 1,
            data: vec![0, 0],
        };
        assert!(validate_registry_value(&nul).is_err());
        let default = RegistryValue {
            name: String::new(),
            kind: 1,
            data: vec![0, 0],
        };
        validate_registry_value(&default).unwrap();
    }

    #[test]
    fn validates_change_sets_and_snapshots() {
        let good = RegistryChangeSet {
            ops: vec![
                RegistryOp::CreateKey {
                    path: ALIASES.into(),
                },
                RegistryOp::SetValue {
                    key: ALIASES.into(),
                    value: RegistryValue {
                        name: "sw".into(),
                        kind: 1,
                        data: vec![0x61, 0, 0, 0],
                    },
                },
                RegistryOp::DeleteValue {
                    key: ALIASES.into(),
                    name: "old".into(),
                },
                RegistryOp::DeleteKey {
                    path: format!(r"{ALIASES}\gone"),
                },
            ],
        };
        validate_registry_changes(&good).unwrap();
        let bad = RegistryChangeSet {
            ops: vec![RegistryOp::DeleteKey {
                path: "C:\\x".into(),
            }],
        };
        assert!(validate_registry_changes(&bad).is_err());

        let snapshot = RegistrySnapshot {
            roots: vec![
                ALIASES.into(),
                r"HKEY_LOCAL_MACHINE\Software\Missing".into(),
            ],
            keys: vec![RegistryKeyState {
                path: ALIASES.into(),
                values: vec![],
            }],
        };
        validate_registry_snapshot(&snapshot).unwrap();
        let bad = RegistrySnapshot {
            roots: vec!["nowhere".into()],
            keys: vec![],
        };
        assert!(validate_registry_snapshot(&bad).is_err());
    }

    #[test]
    fn postcard_round_trip() {
        let changes = RegistryChangeSet {
            ops: vec![RegistryOp::SetValue {
                key: ALIASES.into(),
                value: RegistryValue {
                    name: String::new(),
                    kind: 0xdead_beef,
                    data: vec![1, 2, 3],
                },
            }],
        };
        let bytes = postcard::to_stdvec(&changes).unwrap();
        let back: RegistryChangeSet = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, changes);
    }
}
