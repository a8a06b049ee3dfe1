//! Wire types for registry replication (placeholder: being written).
