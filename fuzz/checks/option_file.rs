//! The `option_file` property, shared by the fuzz target and the replay test in
//! `crates/db/src/ini.rs` (`fuzz_corpus_replays`). The editor is passed in as `edit`, so this
//! file needs nothing from `swrepl-db`.

/// The editor under test: `ini::edit_text` with `(key, value)` pairs as `IniLine`s.
pub type Edit<'a> = &'a dyn Fn(&str, &[(&str, &str)]) -> (String, Vec<String>);

/// Sections the server reads, as the editor knows them (`ini::SERVER_SECTIONS`).
const SERVER_SECTIONS: &[&str] = &["mysqld", "swsql", "swsqlserver", "mariadb", "server"];
const MULTI_VALUED: &str = "replicate-wild-ignore-table";

/// The lines `swrepl db setup` writes (crates/db/src/plan.rs); the fuzzer picks a subset.
const SETUP_LINES: &[(&str, &str)] = &[
    ("server-id", "2"),
    ("log-bin", "swrepl-bin"),
    ("binlog-format", "ROW"),
    ("read-only", "1"),
    ("relay-log-recovery", "1"),
    ("replicate-wild-ignore-table", "%.swsystag"),
    ("Server_Id", "2"),
];

fn normalize_key(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('_', "-")
}

/// The section a line opens, if it is a `[section]` header.
fn header(line: &str) -> Option<&str> {
    let t = line.trim();
    (t.len() >= 2 && t.starts_with('[') && t.ends_with(']')).then(|| t[1..t.len() - 1].trim())
}

fn is_server_section(name: &str) -> bool {
    SERVER_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Every `key=value` in a server section, in file order, as the server reads them (the last
/// value of a single-valued option wins), and every other line with its index.
fn read_as_server(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut options = Vec::new();
    let mut others = Vec::new();
    let mut in_server = false;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.trim_start().starts_with('[') {
            in_server = header(line).is_some_and(is_server_section);
            if !in_server {
                others.push(line.to_string());
            }
            continue;
        }
        let t = line.trim();
        let option = !(t.is_empty() || t.starts_with('#') || t.starts_with(';'));
        if in_server && option {
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            options.push((normalize_key(k), v.trim().to_string()));
        } else if !in_server {
            others.push(line.to_string());
        }
    }
    (options, others)
}

/// The `(u8, &str)` a fuzz input stands for, as `arbitrary` reads it: the first byte (0 when
/// empty), then the longest valid UTF-8 prefix of the rest.
pub fn split_input(bytes: &[u8]) -> (u8, &str) {
    let (pick, rest) = bytes.split_first().map_or((0, &[][..]), |(p, r)| (*p, r));
    let text = match std::str::from_utf8(rest) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default(),
    };
    (pick, text)
}

/// Any text as an option file, edited with any subset of the lines `swrepl db setup` writes:
/// no panic, idempotent, lines outside the server sections untouched, and afterwards the server
/// reads the wanted value of every option.
pub fn check(pick: u8, original: &str, edit: Edit) {
    let lines: Vec<(&str, &str)> = SETUP_LINES
        .iter()
        .enumerate()
        .filter(|(i, _)| pick & (1 << i) != 0)
        .map(|(_, line)| *line)
        .collect();
    let (edited, changed) = edit(original, &lines);
    let (again, changed_again) = edit(&edited, &lines);
    assert!(
        changed_again.is_empty() && again == edited,
        "not idempotent: a second edit changed {changed_again:?}"
    );
    if changed.is_empty() {
        return;
    }
    let (options, others) = read_as_server(&edited);
    for (key, value) in &lines {
        let key = normalize_key(key);
        let mut values = options.iter().filter(|(k, _)| *k == key).map(|(_, v)| v);
        if key == MULTI_VALUED {
            assert!(values.any(|v| v == value), "{key} lacks {value}");
        } else {
            assert_eq!(
                values.next_back(),
                Some(&value.to_string()),
                "the server reads another value of {key}"
            );
        }
    }
    let (_, others_before) = read_as_server(original);
    let kept: Vec<&String> = others.iter().filter(|l| !l.trim().is_empty()).collect();
    let before: Vec<&String> = others_before
        .iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(kept, before, "a line outside the server sections changed");
}
