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

#[path = "../checks/option_file.rs"]
#[allow(dead_code)] // `split_input` is for the replay test
mod option_file;

/// Stand-in for `swrepl_db::DbError`, whose file-error constructor is the only part `ini.rs`
/// uses (for the file I/O this target never reaches).
#[derive(Debug)]
pub struct DbError;

impl DbError {
    fn file(_action: &'static str, _path: impl Into<PathBuf>, _source: std::io::Error) -> Self {
        DbError
    }
}

fn edit(original: &str, lines: &[(&str, &str)]) -> (String, Vec<String>) {
    let lines: Vec<ini::IniLine> = lines
        .iter()
        .map(|(k, v)| ini::IniLine::new(k, *v))
        .collect();
    ini::edit_text(original, &lines)
}

fuzz_target!(|input: (u8, &str)| option_file::check(input.0, input.1, &edit));
