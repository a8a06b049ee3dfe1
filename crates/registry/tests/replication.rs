//! Snapshots, diff/apply, the file backend, the scope guard, the archive and the wire forms.

use std::fs;

use proptest::prelude::*;
use swrepl_proto::registry::{RegistryKeyState, RegistryOp, RegistrySnapshot, RegistryValue};
use swrepl_registry::wire::{
    from_wire_changes, from_wire_snapshot, to_wire_changes, to_wire_snapshot,
};
use swrepl_registry::{
    apply_changes, diff, ChangeSet, Encoding, Error, Key, KeyPath, Op, RegFile, RegFileBackend,
    RegistryBackend, Scope, Snapshot, Value, DEFAULT_KEYS,
};

fn roots() -> Vec<KeyPath> {
    DEFAULT_KEYS
        .iter()
        .map(|k| KeyPath::parse(k).unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------------
// Strategies

fn name_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range('a', 'z'),
        2 => proptest::char::range('A', 'Z'),
        2 => Just(' '),
        1 => prop::sample::select(vec!['"', '=', '[', ']', '@', ';', '-', '%', 'é', 'Ж', '☃', '😀', '_', '.']),
    ]
}

fn key_name() -> impl Strategy<Value = String> {
    prop::collection::vec(name_char(), 1..12).prop_map(|c| c.into_iter().collect())
}

fn value_name() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        6 => prop::collection::vec(prop_oneof![8 => name_char(), 1 => Just('\\'), 1 => Just('\n')], 1..16)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let text = prop::collection::vec(
        prop_oneof![9 => name_char(), 1 => Just('\\'), 1 => Just('\r')],
        0..30,
    )
    .prop_map(|c| c.into_iter().collect::<String>());
    prop_oneof![
        3 => text.clone().prop_map(|t| Value::string(&t)),
        1 => text.clone().prop_map(|t| Value::expand_string(&t)),
        1 => prop::collection::vec(text, 0..4).prop_map(|v| Value::multi_string(&v)),
        2 => any::<u32>().prop_map(Value::dword),
        1 => any::<u64>().prop_map(Value::qword),
        2 => prop::collection::vec(any::<u8>(), 0..120).prop_map(Value::binary),
        2 => (any::<u32>(), prop::collection::vec(any::<u8>(), 0..90)).prop_map(|(k, d)| Value::raw(k, d)),
    ]
}

fn key(depth: u32) -> impl Strategy<Value = Key> {
    let leaf = (
        key_name(),
        prop::collection::vec((value_name(), value()), 0..6),
    )
        .prop_map(|(name, values)| {
            let mut key = Key::new(&name);
            for (n, v) in values {
                key.set_value(&n, v);
            }
            key
        });
    leaf.prop_recursive(depth, 24, 4, |inner| {
        (inner.clone(), prop::collection::vec(inner, 0..4)).prop_map(|(mut key, subs)| {
            for sub in subs {
                key.insert_subkey(sub);
            }
            key
        })
    })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (prop::option::of(key(3)), prop::option::of(key(3))).prop_map(|(a, b)| {
        let r = roots();
        Snapshot::new(vec![(r[0].clone(), a), (r[1].clone(), b)])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_snapshot_survives_export_and_parse(snap in snapshot(), utf8 in any::<bool>()) {
        let encoding = if utf8 { Encoding::Utf8 } else { Encoding::Utf16Le };
        let bytes = RegFile::export(&snap).to_bytes(encoding);
        let back = RegFile::parse(&bytes).unwrap().to_tree().snapshot(&roots());
        prop_assert_eq!(back, snap);
    }

    #[test]
    fn applying_the_diff_gives_the_new_state(a in snapshot(), b in snapshot()) {
        let changes = diff(&a, &b);
        prop_assert_eq!(a.apply(&changes), b.clone());
        prop_assert!(diff(&b, &b).is_empty());
        // The wire form carries exactly the same change set.
        let wire = to_wire_changes(&changes);
        prop_assert_eq!(from_wire_changes(&wire).unwrap(), changes);
    }

    #[test]
    fn any_snapshot_survives_the_wire(snap in snapshot()) {
        let wire = to_wire_snapshot(&snap);
        prop_assert_eq!(from_wire_snapshot(&wire).unwrap(), snap);
    }

    #[test]
    fn restore_point_puts_back_the_old_state(a in snapshot(), b in snapshot()) {
        let restore = RegFile::parse(&RegFile::restore_point(&a).to_bytes(Encoding::Utf16Le)).unwrap();
        prop_assert_eq!(b.apply(&restore.to_changes()), a);
    }
}

// ------------------------------------------------------------------------------------------
// The file backend and the guarded apply

const MASTER: &str = "Windows Registry Editor Version 5.00\r\n\r\n\
[HKEY_LOCAL_MACHINE\\Software\\Hornbill\\Core Services\\Applications\\_Global\\HttpAliases]\r\n\
\"sw\"=\"C:\\\\Program Files\\\\Hornbill\\\\sw\"\r\n\
\"Port\"=dword:00000050\r\n\r\n\
[HKEY_LOCAL_MACHINE\\Software\\Hornbill\\Core Services\\Applications\\_Global\\HttpAliases\\sub]\r\n\
\"x\"=hex(7):61,00,00,00,00,00\r\n\r\n\
[HKEY_LOCAL_MACHINE\\Software\\Other]\r\n\
\"keep\"=\"me\"\r\n\r\n";

fn write_reg(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    RegFile::parse(text.as_bytes())
        .unwrap()
        .write(&path, Encoding::Utf16Le)
        .unwrap();
    path
}

#[test]
fn file_backend_replicates_master_to_slave_and_archives() {
    let dir = tempfile::tempdir().unwrap();
    let master = RegFileBackend::open(write_reg(dir.path(), "master.reg", MASTER)).unwrap();
    let slave_path = dir.path().join("slave.reg");
    let mut slave = RegFileBackend::open_or_create(&slave_path).unwrap();
    let scope = Scope::default_keys();
    let archive = dir.path().join("archive");

    let want = master.read(scope.roots()).unwrap();
    let have = slave.read(scope.roots()).unwrap();
    let outcome = apply_changes(&mut slave, &scope, &diff(&have, &want), Some(&archive)).unwrap();
    assert_eq!(slave.read(scope.roots()).unwrap(), want);
    // The key outside the scope was never copied.
    let (tree, encoding) = slave.load().unwrap();
    assert!(tree
        .get(&KeyPath::parse(r"HKLM\Software\Other").unwrap())
        .is_none());
    assert_eq!(encoding, Encoding::Utf16Le);
    // The archive holds the previous (empty) state, as a file that restores it.
    let archived = fs::read(outcome.archived.unwrap()).unwrap();
    let restore = RegFile::parse(&archived).unwrap();
    assert_eq!(want.apply(&restore.to_changes()), have);

    // Applying the same change set again changes nothing and archives nothing.
    let again = apply_changes(&mut slave, &scope, &diff(&have, &want), Some(&archive)).unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.archived, None);
    assert_eq!(fs::read_dir(&archive).unwrap().count(), 1);
}

#[test]
fn out_of_scope_change_is_refused_whole_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_reg(dir.path(), "slave.reg", MASTER);
    let before = fs::read(&path).unwrap();
    let mut slave = RegFileBackend::open(&path).unwrap();
    let scope = Scope::default_keys();
    let aliases = scope.roots()[0].clone();
    let forged = ChangeSet {
        ops: vec![
            Op::SetValue {
                key: aliases.clone(),
                name: "ok".into(),
                value: Value::dword(1),
            },
            Op::DeleteKey(KeyPath::parse(r"HKLM\Software\Other").unwrap()),
        ],
    };
    let archive = dir.path().join("archive");
    let err = apply_changes(&mut slave, &scope, &forged, Some(&archive)).unwrap_err();
    assert!(matches!(err, Error::OutOfScope { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(r"HKEY_LOCAL_MACHINE\Software\Other"),
        "{message}"
    );
    assert!(message.contains("nothing was applied"), "{message}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(!archive.exists());
    // A parent of a configured key is out of scope too.
    let parent = ChangeSet {
        ops: vec![Op::DeleteKey(aliases.parent().unwrap())],
    };
    assert!(apply_changes(&mut slave, &scope, &parent, None).is_err());
}

#[test]
fn a_malformed_registry_file_is_reported_with_its_name_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.reg");
    fs::write(
        &path,
        "Windows Registry Editor Version 5.00\r\n\r\n[HKLM\\A]\r\n\"x\"=hex:1g\r\n",
    )
    .unwrap();
    let backend = RegFileBackend::open(&path).unwrap();
    let err = backend.read(&roots()).unwrap_err().to_string();
    assert!(err.contains("bad.reg") && err.contains("line 4"), "{err}");
}

#[test]
fn file_backend_keeps_utf8_files_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.reg");
    fs::write(&path, MASTER).unwrap();
    let mut backend = RegFileBackend::open(&path).unwrap();
    let scope = Scope::default_keys();
    let change = ChangeSet {
        ops: vec![Op::DeleteValue {
            key: scope.roots()[0].clone(),
            name: "PORT".into(),
        }],
    };
    apply_changes(&mut backend, &scope, &change, None).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains("Port"), "{text}");
    assert!(text.contains("\"keep\"=\"me\""), "{text}");
}

#[test]
fn wait_for_change_sees_a_rewritten_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_reg(dir.path(), "m.reg", MASTER);
    let backend = RegFileBackend::open(&path).unwrap();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            // Rewrite until the waiter has had every chance to notice (a length change is
            // visible even where mtimes are coarse).
            for i in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let extra = format!("[HKEY_USERS\\x{i}]\r\n\r\n");
                fs::write(&path, format!("{MASTER}{extra}")).unwrap();
            }
        })
    };
    assert!(backend
        .wait_for_change(&roots(), std::time::Duration::from_secs(60))
        .unwrap());
    writer.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// Untrusted wire input

#[test]
fn hostile_wire_snapshots_are_refused() {
    let root = DEFAULT_KEYS[0].to_string();
    let value = RegistryValue {
        name: "a".into(),
        kind: 1,
        data: vec![0, 0],
    };
    let cases = [
        // A child before its parent.
        vec![RegistryKeyState {
            path: format!(r"{root}\a\b"),
            values: vec![],
        }],
        // A key outside the roots.
        vec![RegistryKeyState {
            path: r"HKEY_LOCAL_MACHINE\Software\Evil".into(),
            values: vec![],
        }],
        // The same key twice, differing only in case.
        vec![
            RegistryKeyState {
                path: root.clone(),
                values: vec![],
            },
            RegistryKeyState {
                path: root.to_uppercase(),
                values: vec![],
            },
        ],
        // The same value twice.
        vec![RegistryKeyState {
            path: root.clone(),
            values: vec![value.clone(), value],
        }],
    ];
    for keys in cases {
        let wire = RegistrySnapshot {
            roots: vec![root.clone()],
            keys,
        };
        assert!(
            matches!(from_wire_snapshot(&wire), Err(Error::Wire(_))),
            "{wire:?}"
        );
    }
    let bad_path = swrepl_proto::registry::RegistryChangeSet {
        ops: vec![RegistryOp::CreateKey {
            path: r"HKLM\Software".into(),
        }],
    };
    assert!(matches!(from_wire_changes(&bad_path), Err(Error::Wire(_))));
}
