//! Any text as a server's option file (Swsql.ini, my.cnf), edited with the lines `swrepl db setup`
//! writes: the editor must not panic, must be idempotent, must leave every line outside the
//! server sections alone, and afterwards the server must read the wanted value of every option.
//!
//! The editor is `crates/db/src/ini.rs`, included here with `#[path]`: depending on `swrepl-db`
//! would drag `mysql_async` and `tokio` (140 crates) into every fuzz build for a pure text edit.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/db/src/ini.rs"]
#[allow(dead_code)]
mod ini;

/// Stand-in for `swrepl_db::DbError`, whose file-error constructor is the only part `ini.rs`
/// uses (for the file I/O this target never reaches).
#[derive(Debug)]
pub struct DbError;

impl DbError {
    fn file(_action: &'static str, _path: impl Into<PathBuf>, _source: std::io::Error) -> Self {
        DbError
    }
}

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

fuzz_target!(|input: (u8, &str)| {
    let (pick, original) = input;
    let lines: Vec<ini::IniLine> = SETUP_LINES
        .iter()
        .enumerate()
        .filter(|(i, _)| pick & (1 << i) != 0)
        .map(|(_, (k, v))| ini::IniLine::new(k, *v))
        .collect();
    let (edited, changed) = ini::edit_text(original, &lines);
    let (again, changed_again) = ini::edit_text(&edited, &lines);
    assert!(
        changed_again.is_empty() && again == edited,
        "not idempotent: a second edit changed {changed_again:?}"
    );
    if changed.is_empty() {
        return;
    }
    let (options, others) = read_as_server(&edited);
    for line in &lines {
        let key = normalize_key(&line.key);
        let mut values = options.iter().filter(|(k, _)| *k == key).map(|(_, v)| v);
        if key == MULTI_VALUED {
            assert!(
                values.any(|v| *v == line.value),
                "{key} lacks {}",
                line.value
            );
        } else {
            assert_eq!(
                values.last(),
                Some(&line.value),
                "the server reads another value of {key}"
            );
        }
    }
    let (_, others_before) = read_as_server(original);
    let kept: Vec<&String> = others.iter().filter(|l| !l.trim().is_empty()).collect();
    let before: Vec<&String> = others_before.iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(kept, before, "a line outside the server sections changed");
});
