//! What the benches share: deterministic data and a scratch directory in tmpfs.

#![allow(dead_code)] // each bench uses its own part

use std::path::PathBuf;

/// Deterministic, incompressible bytes (splitmix64), so every run moves the same data.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A temporary directory named `swrepl-bench-<name>-…`, in `SWREPL_BENCH_DIR`, else in
/// `/dev/shm` (tmpfs: the shared disk is too noisy for timings), else the system's temp dir.
pub fn scratch_dir(name: &str) -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    let prefix = format!("swrepl-bench-{name}-");
    builder.prefix(&prefix);
    let base = std::env::var_os("SWREPL_BENCH_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()));
    match base {
        Some(base) => builder.tempdir_in(base),
        None => builder.tempdir(),
    }
    .expect("cannot create a temporary directory")
}
