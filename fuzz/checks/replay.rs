//! Replaying fuzz inputs in normal tests (`cargo nextest run --workspace`): every file kept for a
//! target — its committed seeds (`fuzz/seeds/<target>`), the local corpus (`fuzz/corpus/<target>`)
//! and crash inputs (`fuzz/artifacts/<target>`), the last two when present — goes through the
//! same check the fuzz target runs. Included with `#[path]` by each replay test.

use std::path::{Path, PathBuf};

/// The `fuzz/` directory, from the manifest directory of the crate whose test runs.
pub fn fuzz_dir(manifest_dir: &str, up: usize) -> PathBuf {
    let mut dir = PathBuf::from(manifest_dir);
    for _ in 0..up {
        dir.pop();
    }
    dir.join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every kept input of `target`; panics naming the first input that fails.
/// Returns how many inputs were replayed. The committed seeds must exist, so the test cannot
/// pass by finding nothing.
pub fn replay(fuzz: &Path, target: &str, check: impl Fn(&[u8])) -> usize {
    let seeds = files_in(&fuzz.join("seeds").join(target));
    assert!(
        !seeds.is_empty(),
        "no seeds in {}",
        fuzz.join("seeds").join(target).display()
    );
    let mut inputs = seeds;
    inputs.extend(files_in(&fuzz.join("corpus").join(target)));
    inputs.extend(files_in(&fuzz.join("artifacts").join(target)));
    for input in &inputs {
        let bytes = std::fs::read(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz input {} fails: {message}", input.display());
        }
    }
    inputs.len()
}
