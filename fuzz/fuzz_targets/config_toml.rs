//! Any text as swrepl's TOML config file, read the way every command reads it: the real
//! `section` function of `crates/core/config.rs` (included with `#[path]`, since a fuzz crate
//! cannot depend on a binary), for every table, into a generic `toml::Table` and into the
//! library types the tables are read into (`[switchover]`, `[services]`), then through the
//! library parsers their values reach (command templates, service sets, registry key paths).
//! Nothing may panic.
//!
//! The binary's own `[send]`, `[receive]` and `[db]` structs are plain `serde` structs of
//! strings, numbers and paths; what a hostile value can reach beyond serde is the parsers
//! called here (`registry_keys` → `KeyPath::parse`).
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use swrepl_registry::KeyPath;
use swrepl_switchover::{ServicesConfig, SwitchoverConfig};

#[path = "../../crates/core/config.rs"]
mod config;

const TABLES: &[&str] = &[
    "send",
    "receive",
    "db",
    "services",
    "switchover",
    "registry",
];

/// One file per fuzzing process, rewritten for every input (`section` reads a path).
fn config_path() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fn read_services(path: &std::path::Path) {
    if let Ok(Some(services)) = config::section::<ServicesConfig>(path, "services") {
        let _ = services.service_set();
        let _ = services.command_timeout();
        let _ = services.backend();
    }
}

fn read_switchover(path: &std::path::Path) {
    if let Ok(Some(settings)) = config::section::<SwitchoverConfig>(path, "switchover") {
        let _ = settings.status_path();
        let _ = settings.max_db_lag();
        let _ = settings.start_wait();
        let _ = settings.hooks();
    }
}

fn read_registry_keys(path: &std::path::Path) {
    for side in ["send", "receive"] {
        let Ok(Some(table)) = config::section::<toml::Table>(path, side) else {
            continue;
        };
        let keys = table.get("registry_keys").and_then(|v| v.as_array());
        for key in keys.into_iter().flatten().filter_map(|v| v.as_str()) {
            let _ = KeyPath::parse(key);
        }
    }
}

fuzz_target!(|text: &[u8]| {
    let path = config_path().join("swrepl.toml");
    let mut file = std::fs::File::create(&path).expect("config file");
    file.write_all(text).expect("write config");
    drop(file);
    for name in TABLES {
        let _ = config::section::<toml::Table>(&path, name);
    }
    read_services(&path);
    read_switchover(&path);
    read_registry_keys(&path);
});
