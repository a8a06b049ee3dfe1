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
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // `root = "C:\Program Files\Hornbill"` (single backslashes) is the classic mistake on
        // Windows: TOML reads `\P` as an escape.
        let hint = if e.message().contains("escape") {
            " (write Windows paths in single quotes, root = 'C:\\Program Files\\Hornbill', or double each backslash)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!(
            "config file {} is not valid TOML{hint}",
            path.display()
        ))
    })?;
    match table.get(name) {
        None => Ok(None),
        Some(value) => value
            .clone()
            .try_into()
            .map(Some)
            .with_context(|| format!("config file {}: bad [{name}] table", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Send {
        root: std::path::PathBuf,
    }

    fn read(text: &str) -> anyhow::Result<Option<Send>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.toml");
        std::fs::write(&path, text).unwrap();
        section(&path, "send")
    }

    #[test]
    fn windows_paths_in_single_quotes_are_taken_verbatim() {
        let send = read("[send]\nroot = 'C:\\Program Files\\Hornbill'\n")
            .unwrap()
            .unwrap();
        assert_eq!(send.root.as_os_str(), r"C:\Program Files\Hornbill");
    }

    #[test]
    fn single_backslashes_in_double_quotes_get_a_hint() {
        let err = read("[send]\nroot = \"C:\\Program Files\\Hornbill\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("write Windows paths in single quotes"),
            "{err:#}"
        );
    }
}
