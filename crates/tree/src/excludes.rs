//! Exclude globs, matched against root-relative wire paths.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{TreeError, DEFAULT_EXCLUDES, STATE_DIR_NAME};

/// A set of exclude globs.
///
/// Globs are relative to the root and matched against the whole relative path with `/` as the
/// separator: `*` does not cross a `/`, `**` does. So `*.tmp` excludes `.tmp` files at the top
/// level only and `**/*.tmp` excludes them everywhere; `Logs/**` excludes the content of `Logs`;
/// `**/cache` excludes every `cache` directory. Matching ignores case, as Windows does. A glob
/// that matches a directory excludes everything below it. `\` in a glob is read as a separator
/// (operators on Windows type paths that way), so it cannot escape special characters; use
/// `[*]` to match a literal `*`.
///
/// swrepl's own state directory ([`STATE_DIR_NAME`]) is always excluded.
#[derive(Clone, Debug)]
pub struct Excludes {
    globs: Vec<String>,
    set: GlobSet,
}

impl Excludes {
    /// Builds the set from the operator's `extra` globs, plus [`DEFAULT_EXCLUDES`] when
    /// `use_defaults` is true.
    pub fn new(extra: &[String], use_defaults: bool) -> Result<Excludes, TreeError> {
        let mut globs: Vec<String> = vec![STATE_DIR_NAME.to_string()];
        if use_defaults {
            globs.extend(DEFAULT_EXCLUDES.iter().map(|g| g.to_string()));
        }
        globs.extend(extra.iter().cloned());
        globs.dedup();

        let mut builder = GlobSetBuilder::new();
        for glob in &globs {
            let normalized = normalize(glob)?;
            builder.add(compile(glob, &normalized)?);
            if !normalized.ends_with("/**") {
                builder.add(compile(glob, &format!("{normalized}/**"))?);
            }
        }
        let set = builder.build().map_err(|e| TreeError::BadExclude {
            glob: globs.join(", "),
            reason: e.to_string(),
        })?;
        Ok(Excludes { globs, set })
    }

    /// True when `rel` (a `/`-separated path relative to the root) is excluded, either itself or
    /// because a directory above it is.
    pub fn is_excluded(&self, rel: &str) -> bool {
        self.set.is_match(rel)
    }

    /// The globs in effect, as given (the always-excluded state directory first).
    pub fn globs(&self) -> &[String] {
        &self.globs
    }
}

/// Turns an operator's glob into the form matched against wire paths: `/` separators, no leading
/// `/` or `./`, no trailing `/`.
fn normalize(glob: &str) -> Result<String, TreeError> {
    let mut g = glob.trim().replace('\\', "/");
    while let Some(rest) = g.strip_prefix("./") {
        g = rest.to_string();
    }
    let g = g.trim_start_matches('/').trim_end_matches('/').to_string();
    if g.is_empty() {
        return Err(TreeError::BadExclude {
            glob: glob.to_string(),
            reason: "the glob is empty (it would exclude nothing, or everything)".to_string(),
        });
    }
    Ok(g)
}

fn compile(original: &str, pattern: &str) -> Result<globset::Glob, TreeError> {
    GlobBuilder::new(pattern)
        .case_insensitive(true)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map_err(|e| TreeError::BadExclude {
            glob: original.to_string(),
            reason: e.kind().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(extra: &[&str], defaults: bool) -> Excludes {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Excludes::new(&extra, defaults).unwrap()
    }

    #[test]
    fn data_folder_excluded_in_any_spelling() {
        let e = ex(&[], true);
        for p in [
            "Core Services/SwSqlServer/data",
            "core services/swsqlserver/DATA",
            "CORE SERVICES/SWSQLSERVER/Data/swdata/x.MYD",
            "core services/swsqlserver/DATA/x.MYD",
        ] {
            assert!(e.is_excluded(p), "{p} should be excluded");
        }
        for p in [
            "Core Services",
            "Core Services/SwSqlServer",
            "Core Services/SwSqlServer/data2",
            "Core Services/SwSqlServer/database.ini",
            "Other/Core Services/SwSqlServer/data",
        ] {
            assert!(!e.is_excluded(p), "{p} should not be excluded");
        }
    }

    #[test]
    fn state_dir_always_excluded() {
        for defaults in [true, false] {
            let e = ex(&[], defaults);
            assert!(e.is_excluded(".swrepl"));
            assert!(e.is_excluded(".SWREPL/index.db"));
            assert!(!e.is_excluded("a/.swrepl2"));
        }
        assert!(!ex(&[], false).is_excluded("Core Services/SwSqlServer/data/x"));
    }

    #[test]
    fn globs_are_anchored_and_cover_content() {
        let e = ex(&["*.tmp", "Logs/**", "**/cache", "Windows\\Style"], false);
        assert!(e.is_excluded("a.TMP"));
        assert!(!e.is_excluded("dir/a.tmp"));
        assert!(e.is_excluded("logs/today.log"));
        assert!(e.is_excluded("x/y/Cache"));
        assert!(e.is_excluded("x/y/cache/z.bin"));
        assert!(e.is_excluded("windows/style/file"));
        assert!(!e.is_excluded("x/y/cached"));
    }

    #[test]
    fn bad_globs_are_refused() {
        assert!(matches!(
            Excludes::new(&["a[".to_string()], true),
            Err(TreeError::BadExclude { .. })
        ));
        assert!(matches!(
            Excludes::new(&["/".to_string()], true),
            Err(TreeError::BadExclude { .. })
        ));
    }
}
