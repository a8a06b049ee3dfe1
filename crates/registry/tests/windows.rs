//! `LiveRegistry` against a real registry (Windows only; CI runs it under Wine with
//! `.ci/wine-test`).
//!
//! On Windows, changes are applied inside a KTM transaction. Wine lacks the transacted registry
//! calls (`RegOpenKeyTransactedW` aborts the process), so under Wine the same operations are
//! applied through `LiveRegistry::without_transactions`: the operations are verified there, the
//! transaction only on Windows.
//!
//! Each test works in its own key under `HKEY_CURRENT_USER\Software\swrepl-test` and deletes it
//! when done. Values are written with `windows-registry` directly (not through the backend under
//! test), so reading them back through `LiveRegistry` is an independent check of losslessness.
#![cfg(windows)]

use std::time::Duration;

use swrepl_registry::{
    apply_changes, diff, kind, snapshot, ChangeSet, Encoding, KeyPath, LiveRegistry, Op, RegFile,
    RegFileBackend, RegistryBackend, Scope, Snapshot, Value,
};
use windows_registry::{Type, CURRENT_USER};

const TEST_PARENT: &str = r"Software\swrepl-test";

/// A fresh key `HKCU\Software\swrepl-test\<name>-<pid>`, deleted (with its subtree) on drop.
struct TestKey {
    relative: String,
}

impl TestKey {
    fn new(name: &str) -> TestKey {
        let relative = format!(r"{TEST_PARENT}\{name}-{}", std::process::id());
        let _ = CURRENT_USER.remove_tree(&relative);
        CURRENT_USER.create(&relative).expect("create the test key");
        TestKey { relative }
    }

    fn path(&self) -> KeyPath {
        KeyPath::parse(&format!(r"HKEY_CURRENT_USER\{}", self.relative)).unwrap()
    }

    fn open(&self, sub: &str) -> windows_registry::Key {
        let path = match sub {
            "" => self.relative.clone(),
            sub => format!(r"{}\{sub}", self.relative),
        };
        CURRENT_USER
            .options()
            .read()
            .write()
            .create()
            .open(&path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"))
    }

    /// Type number and raw bytes of a value, read with windows-registry directly.
    fn raw(&self, sub: &str, name: &str) -> Option<(u32, Vec<u8>)> {
        let value = self.open(sub).get_value(name).ok()?;
        Some((u32::from(value.ty()), value.to_vec()))
    }

    fn scope(&self) -> Scope {
        Scope::new(vec![self.path()])
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = CURRENT_USER.remove_tree(&self.relative);
    }
}

fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// One value of each of the seven common types, plus the awkward cases: the unnamed default
/// value, an unknown type number, big-endian DWORD, a string without its terminator, empty data.
fn sample_values() -> Vec<(&'static str, u32, Vec<u8>)> {
    let mut multi = utf16z("first");
    multi.extend(utf16z("second"));
    multi.extend([0, 0]);
    vec![
        ("", kind::REG_SZ, utf16z("default value")),
        ("none", kind::REG_NONE, vec![1, 2, 3]),
        ("sz", kind::REG_SZ, utf16z(r"C:\Program Files\Hornbill é€")),
        ("expand", kind::REG_EXPAND_SZ, utf16z(r"%SystemRoot%\x")),
        ("binary", kind::REG_BINARY, vec![0, 0xff, 0x10, 0x80]),
        (
            "dword",
            kind::REG_DWORD,
            0xdead_beef_u32.to_le_bytes().to_vec(),
        ),
        ("multi", kind::REG_MULTI_SZ, multi),
        ("qword", kind::REG_QWORD, u64::MAX.to_le_bytes().to_vec()),
        ("big-endian", kind::REG_DWORD_BIG_ENDIAN, vec![0, 0, 0, 7]),
        ("unknown type", 0x1234, vec![9, 8, 7]),
        ("unterminated", kind::REG_SZ, vec![b'a', 0, b'b', 0]),
        ("empty binary", kind::REG_BINARY, vec![]),
    ]
}

fn write_samples(key: &TestKey, sub: &str) {
    let handle = key.open(sub);
    for (name, ty, data) in sample_values() {
        // RegSetValueExW stores a string's missing terminator when the character after the
        // buffer is 0, and Wine refuses an empty Vec's dangling pointer: guard both, as
        // LiveRegistry does.
        let len = data.len();
        let mut guarded = data;
        guarded.extend([0xff, 0xff]);
        handle
            .set_bytes(name, Type::Other(ty), &guarded[..len])
            .unwrap_or_else(|e| panic!("set {name:?}: {e}"));
    }
}

fn read(key: &TestKey) -> Snapshot {
    live_registry().read(&[key.path()]).expect("read")
}

/// Wine creates `HKCU\Software\Wine` in every prefix; Windows has no such key.
fn running_under_wine() -> bool {
    CURRENT_USER.open(r"Software\Wine").is_ok()
}

/// The backend under test: transactional on Windows, operation by operation under Wine.
fn live_registry() -> LiveRegistry {
    if running_under_wine() {
        LiveRegistry::without_transactions()
    } else {
        LiveRegistry::new()
    }
}

#[test]
fn every_value_type_reads_back_losslessly() {
    let key = TestKey::new("types");
    write_samples(&key, "");
    write_samples(&key, r"sub\deeper");

    let snap = read(&key);
    let root = snap.root(&key.path()).expect("the test key exists");
    for (name, ty, data) in sample_values() {
        let value = root.value(name).unwrap_or_else(|| panic!("value {name:?}"));
        assert_eq!((value.kind, &value.data), (ty, &data), "value {name:?}");
        let deeper = root
            .subkey("sub")
            .and_then(|k| k.subkey("deeper"))
            .and_then(|k| k.value(name))
            .unwrap_or_else(|| panic!("sub\\deeper value {name:?}"));
        assert_eq!((deeper.kind, &deeper.data), (ty, &data), "deeper {name:?}");
    }
    assert_eq!(root.values().len(), sample_values().len());
}

#[test]
fn a_key_that_does_not_exist_reads_as_absent() {
    let key = TestKey::new("absent");
    let missing = key.path().child("not there");
    let snap = live_registry()
        .read(std::slice::from_ref(&missing))
        .unwrap();
    assert!(snap.root(&missing).is_none());
}

#[test]
fn applied_changes_land_in_the_registry_exactly() {
    let key = TestKey::new("apply");
    write_samples(&key, "");
    key.open(r"old\child")
        .set_u32("keep", 1)
        .expect("create a subtree");
    let scope = key.scope();
    let mut live = live_registry();
    let before = snapshot(&live, &scope).unwrap();

    // The wanted state: one value changed (and its type), one deleted, one added in a new
    // subkey, and the old subtree deleted.
    let mut wanted = before.to_tree();
    let root = wanted.get_mut(&key.path()).unwrap();
    root.set_value("dword", Value::qword(42));
    // The two cases RegSetValueExW would not store exactly without care.
    root.set_value(
        "no terminator",
        Value::raw(kind::REG_EXPAND_SZ, vec![b'x', 0]),
    );
    root.set_value("empty", Value::raw(kind::REG_MULTI_SZ, Vec::new()));
    assert!(root.remove_value("binary"));
    root.remove_subkey("old").expect("old subtree");
    wanted
        .create(&key.path().child("new"))
        .set_value("alias", Value::string("http://slave/sw"));
    let changes = diff(&before, &wanted.snapshot(scope.roots()));
    let archive = tempfile::tempdir().unwrap();

    let outcome = apply_changes(&mut live, &scope, &changes, Some(archive.path())).unwrap();

    assert_eq!(outcome.applied, changes);
    assert_eq!(
        key.raw("", "dword"),
        Some((kind::REG_QWORD, 42u64.to_le_bytes().to_vec()))
    );
    assert_eq!(key.raw("", "binary"), None);
    assert_eq!(
        key.raw("", "no terminator"),
        Some((kind::REG_EXPAND_SZ, vec![b'x', 0]))
    );
    assert_eq!(key.raw("", "empty"), Some((kind::REG_MULTI_SZ, vec![])));
    assert_eq!(
        key.raw("new", "alias"),
        Some((kind::REG_SZ, utf16z("http://slave/sw")))
    );
    assert!(
        CURRENT_USER.open(format!(r"{}\old", key.relative)).is_err(),
        "the old subtree is gone"
    );
    assert_eq!(read(&key), wanted.snapshot(scope.roots()));

    // The archive restores the state before the apply.
    let archived = outcome.archived.expect("an archive was written");
    let restore = RegFile::parse(&std::fs::read(&archived).unwrap()).unwrap();
    assert_eq!(
        restore.to_tree().snapshot(scope.roots()),
        before,
        "archive {}",
        archived.display()
    );
}

#[test]
fn deleting_values_and_subkeys() {
    let key = TestKey::new("delete");
    write_samples(&key, "");
    write_samples(&key, r"a\b\c");
    let mut live = live_registry();
    let changes = ChangeSet {
        ops: vec![
            Op::DeleteValue {
                key: key.path(),
                name: "sz".into(),
            },
            Op::DeleteValue {
                key: key.path(),
                name: String::new(),
            },
            Op::DeleteKey(key.path().child("a")),
        ],
    };
    apply_changes(&mut live, &key.scope(), &changes, None).unwrap();
    assert_eq!(key.raw("", "sz"), None);
    assert_eq!(key.raw("", ""), None);
    assert!(key.raw("", "qword").is_some(), "other values are kept");
    let snap = read(&key);
    let root = snap.root(&key.path()).unwrap();
    assert!(root.subkey("a").is_none());
    assert_eq!(root.values().len(), sample_values().len() - 2);
}

#[test]
fn changes_outside_the_scope_are_refused_and_nothing_is_written() {
    let key = TestKey::new("scope");
    let elsewhere = KeyPath::parse(&format!(
        r"HKEY_CURRENT_USER\{TEST_PARENT}\outside-{}",
        std::process::id()
    ))
    .unwrap();
    let changes = ChangeSet {
        ops: vec![
            Op::SetValue {
                key: key.path(),
                name: "inside".into(),
                value: Value::dword(1),
            },
            Op::SetValue {
                key: elsewhere.clone(),
                name: "x".into(),
                value: Value::dword(1),
            },
        ],
    };
    let err = apply_changes(&mut live_registry(), &key.scope(), &changes, None).unwrap_err();
    assert!(
        err.to_string().contains("not one of the replicated keys"),
        "{err}"
    );
    assert_eq!(key.raw("", "inside"), None);
    assert!(live_registry()
        .read(std::slice::from_ref(&elsewhere))
        .unwrap()
        .root(&elsewhere)
        .is_none());
}

/// Master (live registry) → `.reg` file (the Slave in the lab) and back: what replication does
/// when one side is a file.
#[test]
fn live_keys_round_trip_through_a_reg_file() {
    let key = TestKey::new("regfile");
    write_samples(&key, "");
    write_samples(&key, "child");
    let scope = key.scope();
    let mut live = live_registry();
    let dir = tempfile::tempdir().unwrap();
    let reg_path = dir.path().join("slave.reg");

    // Live → file: export, then the file reads back as the same snapshot.
    let live_snap = snapshot(&live, &scope).unwrap();
    RegFile::export(&live_snap)
        .write(&reg_path, Encoding::Utf16Le)
        .unwrap();
    let mut file = RegFileBackend::open(&reg_path).unwrap();
    assert_eq!(snapshot(&file, &scope).unwrap(), live_snap);

    // A change on the live side replicates into the file as a diff.
    key.open("child")
        .set_string("added", "by the Master")
        .unwrap();
    key.open("").remove_value("qword").unwrap();
    let changed = snapshot(&live, &scope).unwrap();
    let to_file = diff(&snapshot(&file, &scope).unwrap(), &changed);
    assert_eq!(to_file.len(), 2, "{to_file:?}");
    apply_changes(&mut file, &scope, &to_file, None).unwrap();
    assert_eq!(snapshot(&file, &scope).unwrap(), changed);

    // And back: the file is edited, the difference is applied to the live registry.
    let mut tree = file.load().unwrap().0;
    tree.get_mut(&key.path())
        .unwrap()
        .set_value("from file", Value::multi_string(&["a", "b"]));
    tree.remove(&key.path().child("child"));
    RegFile::from_tree(&tree)
        .write(&reg_path, Encoding::Utf16Le)
        .unwrap();
    let from_file = snapshot(&file, &scope).unwrap();
    let to_live = diff(&snapshot(&live, &scope).unwrap(), &from_file);
    apply_changes(&mut live, &scope, &to_live, None).unwrap();
    assert_eq!(snapshot(&live, &scope).unwrap(), from_file);
    assert!(key.raw("", "from file").is_some());
}

#[test]
fn a_change_is_signalled() {
    let key = TestKey::new("notify");
    let live = live_registry();
    let roots = [key.path()];
    let writer = {
        let relative = key.relative.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            CURRENT_USER
                .options()
                .write()
                .open(&relative)
                .unwrap()
                .set_u32("poke", 1)
                .unwrap();
        })
    };
    // A signal is a hint: callers re-read either way, so what matters is that a change is seen
    // well within the timeout (and the read shows it).
    let signalled = live
        .wait_for_change(&roots, Duration::from_secs(30))
        .unwrap();
    writer.join().unwrap();
    assert!(
        signalled,
        "RegNotifyChangeKeyValue did not signal the change"
    );
    assert!(key.raw("", "poke").is_some());
}
