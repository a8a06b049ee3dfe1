//! Limits every implementation enforces on what it receives.

/// Bytes in a frame's length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest frame body accepted (16 MiB): an `Upsert` of a file of about 25 GiB at the average chunk size.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// Largest chunk a `ChunkData` may carry (1 MiB; swrepl's chunker cuts at most 256 KiB).
pub const MAX_CHUNK_LEN: u32 = 1024 * 1024;
/// Longest path, in bytes of UTF-8.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component, in bytes of UTF-8.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most chunks in one entry.
pub const MAX_CHUNKS_PER_ENTRY: usize = 400_000;
/// Longest free-text field (reasons, messages, software names).
pub const MAX_TEXT_LEN: usize = 4096;
