//! # swrepl-db — SwSQL/MySQL/MariaDB binlog replication for swrepl
//!
//! Owns everything swrepl does to the two database servers (the Master and the warm-standby
//! Slave, SwSQL on port 5002): it plans, sets up, seeds, checks and promotes MySQL-protocol
//! binlog replication, always through [`mysql_async`] (no hand-written protocol). Table
//! `swsystag` never replicates (`replicate-wild-ignore-table=%.swsystag`).
//!
//! Public API:
//! - [`ServerUrl`] — `mysql://USER[:PASSWORD]@HOST[:PORT]` (port 5002 by default); prints with
//!   the password masked. [`read_password_file`].
//! - [`ReplicationConfig`] — both servers, the least-privilege replication account, optional
//!   delay and option-file paths.
//! - [`plan()`] → ([`Plan`], [`Survey`]): what setup would do, changing nothing; [`Plan::render`].
//! - [`setup()`] → [`SetupReport`]: refuses with one [`DbError`] when a blocker exists (nothing
//!   changed), else runs the plan; idempotent.
//! - [`seed()`] → [`SeedReport`]: consistent online dump into the Slave, then replication from
//!   the dump's position; progress through a callback.
//! - [`check()`] → [`CheckReport`]: one verdict (threads, errors, lag, heartbeat, filter,
//!   server ids, read_only, optional chunked checksums).
//! - [`replica_lag()`] → [`LagReport`] and [`promote()`]: for the switch-over.
//! - [`run_heartbeat()`] / [`write_heartbeat()`]: the Master-side heartbeat writer for services.
//! - [`apply_ini_lines()`]: option-file edits with a timestamped backup.

mod check;
mod checksum;
mod error;
mod heartbeat;
mod ini;
mod plan;
mod seed;
mod server;
mod setup;
mod url;

pub use check::{check, promote, replica_lag, CheckOptions, CheckReport, LagReport};
pub use checksum::TableChecksum;
pub use error::DbError;
pub use heartbeat::{run_heartbeat, write_heartbeat, HEARTBEAT_SCHEMA};
pub use ini::{apply_ini_lines, IniEdit, IniLine};
pub use plan::{build_plan, Plan, ReplicationConfig, Step, Survey, Target, SWSYSTAG_FILTER};
pub use seed::{seed, SeedOptions, SeedProgress, SeedReport};
pub use server::{BinlogPosition, Flavor, ReplicaStatus, Server, ServerInfo, Version};
pub use setup::{plan, setup, SetupReport};
pub use url::{read_password_file, ServerUrl, DEFAULT_PORT};
