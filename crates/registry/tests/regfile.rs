//! `.reg` parse/print round trips on realistic regedit exports, in both encodings.

use swrepl_registry::{kind, Encoding, Entry, KeyPath, Op, RegFile, Section, Value};

const UTF16_EXPORT: &[u8] = include_bytes!("fixtures/applications-utf16.reg");
const UTF8_PATCH: &[u8] = include_bytes!("fixtures/patch-utf8.reg");

const APPS: &str = r"HKEY_LOCAL_MACHINE\SOFTWARE\Hornbill\Core Services\Applications";

fn path(rest: &str) -> KeyPath {
    KeyPath::parse(&format!("{APPS}{rest}")).unwrap()
}

fn utf16_fixture_as_utf8() -> String {
    let units: Vec<u16> = UTF16_EXPORT[2..]
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

#[test]
fn regedit_utf16_export_is_regenerated_byte_for_byte() {
    let file = RegFile::parse(UTF16_EXPORT).unwrap();
    assert_eq!(file.sections.len(), 7);
    assert_eq!(file.to_bytes(Encoding::Utf16Le), UTF16_EXPORT);
}

#[test]
fn regedit_export_survives_the_trip_through_the_tree() {
    // Parsed into the key tree and written back, as the file backend does after an apply.
    let tree = RegFile::parse(UTF16_EXPORT).unwrap().to_tree();
    assert_eq!(
        RegFile::from_tree(&tree).to_bytes(Encoding::Utf16Le),
        UTF16_EXPORT
    );
}

#[test]
fn utf8_with_and_without_bom_and_lf_read_the_same() {
    let expected = RegFile::parse(UTF16_EXPORT).unwrap();
    let text = utf16_fixture_as_utf8();
    let with_bom = [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat();
    let lf_only = text.replace("\r\n", "\n");
    for bytes in [text.as_bytes(), &with_bom, lf_only.as_bytes()] {
        assert_eq!(RegFile::parse(bytes).unwrap(), expected);
    }
    assert_eq!(expected.to_bytes(Encoding::Utf8), text.as_bytes());
}

#[test]
fn every_value_type_is_decoded_exactly() {
    let tree = RegFile::parse(UTF16_EXPORT).unwrap().to_tree();
    let aliases = tree.get(&path(r"\_Global\HttpAliases")).unwrap();
    let get = |name: &str| {
        aliases
            .value(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };

    assert_eq!(
        get(""),
        Value::string(r"C:\Program Files\Hornbill\Core Services\html")
    );
    assert_eq!(
        get("QUOTE \"THIS\""),
        Value::string(r#"say "hello" \\server\share\ "#)
    );
    assert_eq!(get("unicode ünïcødé ☃"), Value::string("€ 😀 日本"));
    assert_eq!(get("MaxAge"), Value::dword(0xffff_ffff));
    assert_eq!(get("Limit"), Value::qword(100_000_000));
    assert_eq!(
        get("LogDir"),
        Value::expand_string(r"%ProgramFiles%\Hornbill\Supportworks Server\log")
    );
    assert_eq!(
        get("Hosts"),
        Value::multi_string(&["srv1", "srv2.example.com", "backup server with a long name"])
    );
    assert_eq!(
        get("Blob"),
        Value::binary((0..=255).step_by(3).collect::<Vec<u8>>())
    );
    assert_eq!(get("Empty binary"), Value::binary(vec![]));
    assert_eq!(get("Nothing"), Value::raw(kind::REG_NONE, vec![]));
    assert_eq!(
        get("None with data"),
        Value::raw(kind::REG_NONE, vec![1, 2])
    );
    assert_eq!(
        get("Custom type"),
        Value::raw(0x10_0000, (0..40).collect::<Vec<u8>>())
    );
    assert_eq!(
        get("No terminator"),
        Value::raw(kind::REG_SZ, vec![0x41, 0])
    );
    assert_eq!(get("Line break"), Value::string("a\r\nb"));
    assert_eq!(get("Short dword"), Value::raw(kind::REG_DWORD, vec![1, 2]));
    assert_eq!(
        get("Big endian"),
        Value::raw(kind::REG_DWORD_BIG_ENDIAN, vec![0, 0, 0, 42])
    );
    assert_eq!(aliases.values().len(), 18);
    // Value order is kept as stored.
    assert_eq!(aliases.values()[1].name, "portal");
    // Subkeys, including an empty one.
    let nested = aliases.subkey("NESTED").unwrap();
    assert_eq!(nested.value("x"), Some(&Value::string("")));
    assert!(nested.subkey("deeper").unwrap().values().is_empty());
}

#[test]
fn patch_with_deletions_comments_and_continuations() {
    let patch = RegFile::parse(UTF8_PATCH).unwrap();
    let aliases = path(r"\_Global\HttpAliases");
    let Section::Key { entries, .. } = &patch.sections[0] else {
        panic!("first section is not a key: {:?}", patch.sections[0]);
    };
    let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap().clone();
    assert_eq!(
        find("Blob"),
        Entry {
            name: "Blob".into(),
            value: None
        }
    );
    assert_eq!(find("Indented").value, Some(Value::dword(42)));
    assert_eq!(
        find("Wrapped").value,
        Some(Value::binary(vec![1, 2, 3, 4, 5, 6]))
    );
    assert_eq!(find("Upper").value, Some(Value::qword(255)));
    assert_eq!(find("").value, None);
    assert_eq!(
        patch.sections[1],
        Section::DeleteKey(aliases.child("Nested"))
    );

    let mut tree = RegFile::parse(UTF16_EXPORT).unwrap().to_tree();
    tree.apply(&patch.to_changes());
    let key = tree.get(&aliases).unwrap();
    // Case-insensitive: "PORTAL" replaced "portal", whose stored name keeps its case.
    assert_eq!(
        key.value("portal"),
        Some(&Value::string(r"D:\Hornbill\portal"))
    );
    assert_eq!(key.values()[0].name, "portal");
    assert!(key.value("Blob").is_none());
    assert!(key.value("").is_none());
    assert!(key.subkey("Nested").is_none());
    assert_eq!(
        key.subkey("new alias").unwrap().value("PATH"),
        Some(&Value::string(r"E:\new"))
    );
    // Untouched values are still there.
    assert_eq!(key.value("Hosts").map(|v| v.kind), Some(kind::REG_MULTI_SZ));
}

#[test]
fn patch_changes_are_in_file_order() {
    let changes = RegFile::parse(UTF8_PATCH).unwrap().to_changes();
    let aliases = path(r"\_Global\HttpAliases");
    assert_eq!(changes.ops[0], Op::CreateKey(aliases.clone()));
    assert_eq!(
        changes.ops[2],
        Op::DeleteValue {
            key: aliases.clone(),
            name: "Blob".into()
        }
    );
    assert!(changes
        .ops
        .contains(&Op::DeleteKey(aliases.child("Nested"))));
}

#[test]
fn a_broken_file_yields_an_error_naming_the_line_and_nothing_else() {
    let text = utf16_fixture_as_utf8().replace("dword:ffffffff", "dword:fffffffff");
    let err = RegFile::parse(text.as_bytes()).unwrap_err().to_string();
    let line = text.lines().position(|l| l.contains("fffffffff")).unwrap() + 1;
    assert_eq!(err, format!("line {line}: dword: needs 1 to 8 hex digits"));
}

#[test]
fn value_names_with_line_breaks_round_trip() {
    let key = KeyPath::parse(r"HKLM\Software\X").unwrap();
    let file = RegFile {
        sections: vec![Section::Key {
            path: key,
            entries: vec![Entry {
                name: "a\r\nb\"c\\".into(),
                value: Some(Value::string("ok")),
            }],
        }],
    };
    let text = file.to_text();
    assert!(text.contains(r#""a\r\nb\"c\\"="ok""#), "{text}");
    assert_eq!(RegFile::parse(text.as_bytes()).unwrap(), file);
}
