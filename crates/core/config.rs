//! The TOML configuration file: one table per command (`[send]`, `[receive]`, `[db]`,
//! `[services]`, `[switchover]`, `[registry]`, …). Flags given on the command line override it.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads table `name` of the config file at `path` into `T`; `Ok(None)` when the file has no such
/// table. Unknown keys are errors (`#[serde(deny_unknown_fields)]` on `T`), so typos are caught.
#[allow(dead_code)] // used as commands gain config support
pub fn section<T: DeserializeOwned>(path: &Path, name: &str) -> anyhow::Result<Option<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    match table.get(name) {
        None => Ok(None),
        Some(value) => value
            .clone()
            .try_into()
            .map(Some)
            .with_context(|| format!("config file {}: bad [{name}] table", path.display())),
    }
}
