//! The crate's error type: each variant says what happened and what the operator can do.

use std::path::PathBuf;

/// Everything that can stop a database replication operation.
///
/// Server names in messages are [`crate::ServerUrl`]s rendered with the password masked.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection URL could not be understood.
    #[error("bad server URL {url}: {reason} (expected mysql://USER[:PASSWORD]@HOST[:PORT])")]
    BadUrl { url: String, reason: String },

    /// The server could not be reached or refused the login.
    #[error("cannot connect to {server}: {reason}; check the host, port (SwSQL uses 5002), user and password")]
    Connect { server: String, reason: String },

    /// A statement failed on a reachable server.
    #[error("{server}: `{statement}` failed: {source}")]
    Query {
        server: String,
        statement: String,
        #[source]
        source: mysql_async::Error,
    },

    /// The Master is not writing a binary log, so nothing can replicate from it.
    #[error("the Master {server} has {what}; add these lines under [mysqld] in its option file (Swsql.ini or my.cnf) and restart it: {lines}")]
    MasterNotReady {
        server: String,
        what: String,
        lines: String,
    },

    /// Two servers share a server id; replication would silently drop events.
    #[error("the Master and the Slave both have server_id={id}; give the Slave a different id (`server-id=2` under [mysqld] in its option file) and restart it")]
    DuplicateServerId { id: u64 },

    /// The Slave already replicates from a server other than the given Master.
    #[error("the Slave {server} already replicates from {current}; if that is wrong, run `STOP SLAVE; RESET SLAVE ALL;` on it first (swrepl does not take over another replication set-up)")]
    ReplicatingElsewhere { server: String, current: String },

    /// The Slave is missing data the Master has, so starting replication at the Master's current
    /// position would fail on the first change to that data.
    #[error("the Slave {server} lacks databases the Master has ({missing}); bring its data over first with `swrepl db seed` (or the stop-and-copy of the Data folder) and run setup again")]
    SlaveNotSeeded { server: String, missing: String },

    /// A request that would weaken security or correctness was refused.
    #[error("refused: {0}")]
    Refused(String),

    /// A server lacks something swrepl needs.
    #[error("{server}: {what}")]
    Unsupported { server: String, what: String },

    /// A replication step did not finish in time.
    #[error("{0}")]
    Timeout(String),

    /// A local file (password file, option file, backup) could not be read or written.
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A helper program (mariadb-dump / mysqldump, mariadb / mysql) failed.
    #[error("{program}: {reason}")]
    Tool { program: String, reason: String },
}

impl DbError {
    pub(crate) fn file(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DbError::File {
            action,
            path: path.into(),
            source,
        }
    }
}
