//! One connected server: what it is (flavour, version, ids, binlog), and the statements that
//! differ between MariaDB, MySQL before 8.0.22 and MySQL 8.0.22+ (SLAVE vs REPLICA vocabulary).

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use serde::Serialize;

use crate::{DbError, ServerUrl};

/// How long a connection attempt may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Which family of server this is; decides the replication vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// MariaDB (keeps the SHOW SLAVE STATUS column names).
    MariaDb,
    /// MySQL and its derivatives, SwSQL included.
    MySql,
}

/// A server version `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses the leading `X.Y.Z` of a `VERSION()` string such as `10.11.6-MariaDB-log`.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|p| p.parse::<u32>().ok());
        Some(Version(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

/// Facts about a server that decide what can be done to it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerInfo {
    /// The `VERSION()` string.
    pub version_text: String,
    pub version: Version,
    pub flavor: Flavor,
    /// `@@server_id`; 0 means "not set".
    pub server_id: u64,
    /// `@@log_bin`: the binary log is on.
    pub log_bin: bool,
    /// `@@binlog_format` (`ROW`, `MIXED`, `STATEMENT`), when the server has it.
    pub binlog_format: Option<String>,
    /// `@@read_only`.
    pub read_only: bool,
}

impl ServerInfo {
    /// Whether `SHOW REPLICA STATUS` / `START REPLICA` exist with `Replica_*`/`Source_*` names.
    pub fn uses_replica_words(&self) -> bool {
        self.flavor == Flavor::MySql && self.version >= Version(8, 0, 22)
    }

    /// Whether `CHANGE MASTER TO` is accepted. Very old SwSQL builds (MySQL 3.x) only take
    /// `master-*` options from the option file.
    pub fn accepts_change_master(&self) -> bool {
        self.flavor == Flavor::MariaDb || self.version >= Version(4, 0, 0)
    }

    /// Whether `MASTER_DELAY` (delayed replica) is available.
    pub fn supports_delay(&self) -> bool {
        match self.flavor {
            Flavor::MariaDb => self.version >= Version(10, 2, 3),
            Flavor::MySql => self.version >= Version(5, 6, 0),
        }
    }

    /// Whether row-based binary logging exists (MySQL 5.1+, every MariaDB).
    pub fn supports_row_format(&self) -> bool {
        self.flavor == Flavor::MariaDb || self.version >= Version(5, 1, 5)
    }

    /// Whether `replicate_wild_ignore_table` can be set at runtime.
    pub fn runtime_filters(&self) -> bool {
        match self.flavor {
            Flavor::MariaDb => self.version >= Version(10, 0, 0),
            Flavor::MySql => self.version >= Version(5, 7, 3),
        }
    }

    /// Whether `CREATE USER IF NOT EXISTS` is available.
    pub fn create_user_if_not_exists(&self) -> bool {
        match self.flavor {
            Flavor::MariaDb => self.version >= Version(10, 1, 3),
            Flavor::MySql => self.version >= Version(5, 7, 6),
        }
    }

    pub fn show_replica_status(&self) -> &'static str {
        if self.uses_replica_words() {
            "SHOW REPLICA STATUS"
        } else {
            "SHOW SLAVE STATUS"
        }
    }

    pub fn start_replica(&self) -> &'static str {
        if self.uses_replica_words() {
            "START REPLICA"
        } else {
            "START SLAVE"
        }
    }

    pub fn stop_replica(&self) -> &'static str {
        if self.uses_replica_words() {
            "STOP REPLICA"
        } else {
            "STOP SLAVE"
        }
    }

    pub fn reset_replica_all(&self) -> &'static str {
        if self.uses_replica_words() {
            "RESET REPLICA ALL"
        } else {
            "RESET SLAVE ALL"
        }
    }

    /// `CHANGE MASTER TO` or, on MySQL 8.0.23+, `CHANGE REPLICATION SOURCE TO`, with its option
    /// names prefix (`MASTER_` or `SOURCE_`).
    pub fn change_source(&self) -> (&'static str, &'static str) {
        if self.flavor == Flavor::MySql && self.version >= Version(8, 0, 23) {
            ("CHANGE REPLICATION SOURCE TO", "SOURCE_")
        } else {
            ("CHANGE MASTER TO", "MASTER_")
        }
    }

    pub fn show_master_status(&self) -> &'static str {
        if self.flavor == Flavor::MySql && self.version >= Version(8, 2, 0) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }
}

/// A live connection to one server, with what it is.
pub struct Server {
    pub url: ServerUrl,
    pub info: ServerInfo,
    conn: Conn,
}

impl Server {
    /// Connects and reads [`ServerInfo`].
    pub async fn connect(url: &ServerUrl) -> Result<Server, DbError> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(url.host.clone())
            .tcp_port(url.port)
            .user(Some(url.user.clone()))
            .pass(url.password().map(str::to_string))
            .prefer_socket(false)
            .stmt_cache_size(0);
        let fail = |reason: String| DbError::Connect {
            server: url.to_string(),
            reason,
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
            Err(_) => {
                return Err(fail(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(conn)) => conn,
        };
        let mut server = Server {
            url: url.clone(),
            info: ServerInfo {
                version_text: String::new(),
                version: Version(0, 0, 0),
                flavor: Flavor::MySql,
                server_id: 0,
                log_bin: false,
                binlog_format: None,
                read_only: false,
            },
            conn,
        };
        server.refresh_info().await?;
        Ok(server)
    }

    /// Re-reads the server's variables (after a change).
    pub async fn refresh_info(&mut self) -> Result<(), DbError> {
        let version_text: String = self.scalar("SELECT VERSION()").await?.unwrap_or_default();
        let flavor = if version_text.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        let version = Version::parse(&version_text).ok_or_else(|| DbError::Unsupported {
            server: self.url.to_string(),
            what: format!("cannot understand the server version {version_text:?}"),
        })?;
        let vars = self
            .variables(&["server_id", "log_bin", "binlog_format", "read_only"])
            .await?;
        self.info = ServerInfo {
            version_text,
            version,
            flavor,
            server_id: vars
                .get("server_id")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            log_bin: vars.get("log_bin").is_some_and(|v| is_on(v)),
            binlog_format: vars.get("binlog_format").map(|v| v.to_ascii_uppercase()),
            read_only: vars.get("read_only").is_some_and(|v| is_on(v)),
        };
        Ok(())
    }

    /// Global variables by name (those the server does not have are absent).
    pub async fn variables(&mut self, names: &[&str]) -> Result<HashMap<String, String>, DbError> {
        let list = names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<(String, Option<String>)> = self
            .rows(&format!(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.unwrap_or_default()))
            .collect())
    }

    /// Runs a statement that returns nothing.
    pub async fn exec(&mut self, sql: &str) -> Result<(), DbError> {
        tracing::debug!(server = %self.url, sql = %redact(sql), "exec");
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| self.query_error(sql, e))
    }

    /// Runs a prepared statement with parameters.
    pub async fn exec_with(&mut self, sql: &str, params: Vec<Value>) -> Result<(), DbError> {
        self.conn
            .exec_drop(sql, params)
            .await
            .map_err(|e| self.query_error(sql, e))
    }

    /// Runs a query and converts each row to `T`.
    pub async fn rows<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        sql: &str,
    ) -> Result<Vec<T>, DbError> {
        self.conn
            .query(sql)
            .await
            .map_err(|e| self.query_error(sql, e))
    }

    /// Runs a prepared query with parameters and converts each row to `T`.
    pub async fn rows_with<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<T>, DbError> {
        self.conn
            .exec(sql, params)
            .await
            .map_err(|e| self.query_error(sql, e))
    }

    /// The first column of the first row, if any.
    pub async fn scalar<T: mysql_async::prelude::FromValue + Send + 'static>(
        &mut self,
        sql: &str,
    ) -> Result<Option<T>, DbError> {
        let row: Option<Row> = self
            .conn
            .query_first(sql)
            .await
            .map_err(|e| self.query_error(sql, e))?;
        Ok(row.and_then(|r| {
            r.get_opt::<Option<T>, usize>(0)
                .and_then(Result::ok)
                .flatten()
        }))
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self.conn.disconnect().await;
    }

    fn query_error(&self, sql: &str, source: mysql_async::Error) -> DbError {
        DbError::Query {
            server: self.url.to_string(),
            statement: redact(sql),
            source,
        }
    }

    /// The replica status row, or `None` when the server is not configured as a replica.
    pub async fn replica_status(&mut self) -> Result<Option<ReplicaStatus>, DbError> {
        let sql = self.info.show_replica_status();
        let rows: Vec<Row> = self.rows(sql).await?;
        Ok(rows.into_iter().next().map(|r| ReplicaStatus::from_row(&r)))
    }

    /// The Master's current binary log file and position.
    pub async fn master_status(&mut self) -> Result<Option<BinlogPosition>, DbError> {
        let sql = self.info.show_master_status();
        let rows: Vec<Row> = self.rows(sql).await?;
        Ok(rows.first().and_then(|r| {
            let cols = columns(r);
            Some(BinlogPosition {
                file: cols.get("file")?.clone()?,
                position: cols.get("position")?.as_deref()?.parse().ok()?,
            })
        }))
    }
}

/// A position in the Master's binary log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BinlogPosition {
    pub file: String,
    pub position: u64,
}

/// The replica status, read by column name so MariaDB, MySQL 5.x and MySQL 8 all work.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaStatus {
    pub master_host: String,
    pub master_port: u16,
    pub master_user: String,
    pub io_running: bool,
    /// The raw IO thread state (`Yes`, `No`, `Connecting`).
    pub io_state: String,
    pub sql_running: bool,
    pub seconds_behind: Option<u64>,
    pub last_io_error: Option<String>,
    pub last_sql_error: Option<String>,
    /// Master binlog file/position the IO thread has read up to.
    pub read_position: Option<BinlogPosition>,
    /// Master binlog file/position the SQL thread has executed up to.
    pub exec_position: Option<BinlogPosition>,
    pub wild_ignore_tables: Vec<String>,
    pub master_server_id: Option<u64>,
    /// `SQL_Delay`: configured delay in seconds (0 when not delayed).
    pub sql_delay: u64,
}

impl ReplicaStatus {
    fn from_row(row: &Row) -> ReplicaStatus {
        let cols = columns(row);
        // Each field under its MariaDB / MySQL 5 name and its MySQL 8 name.
        let get = |names: &[&str]| -> Option<String> {
            names
                .iter()
                .find_map(|n| cols.get(&n.to_ascii_lowercase()).cloned().flatten())
                .filter(|v| !v.is_empty())
        };
        let num = |names: &[&str]| get(names).and_then(|v| v.parse::<u64>().ok());
        let position = |file: &[&str], pos: &[&str]| {
            Some(BinlogPosition {
                file: get(file)?,
                position: num(pos)?,
            })
        };
        let io_state = get(&["Slave_IO_Running", "Replica_IO_Running"]).unwrap_or_default();
        ReplicaStatus {
            master_host: get(&["Master_Host", "Source_Host"]).unwrap_or_default(),
            master_port: num(&["Master_Port", "Source_Port"]).unwrap_or(0) as u16,
            master_user: get(&["Master_User", "Source_User"]).unwrap_or_default(),
            io_running: io_state.eq_ignore_ascii_case("yes"),
            io_state,
            sql_running: get(&["Slave_SQL_Running", "Replica_SQL_Running"])
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            seconds_behind: num(&["Seconds_Behind_Master", "Seconds_Behind_Source"]),
            last_io_error: get(&["Last_IO_Error"]),
            last_sql_error: get(&["Last_SQL_Error"]),
            read_position: position(
                &["Master_Log_File", "Source_Log_File"],
                &["Read_Master_Log_Pos", "Read_Source_Log_Pos"],
            ),
            exec_position: position(
                &["Relay_Master_Log_File", "Relay_Source_Log_File"],
                &["Exec_Master_Log_Pos", "Exec_Source_Log_Pos"],
            ),
            wild_ignore_tables: get(&["Replicate_Wild_Ignore_Table"])
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            master_server_id: num(&["Master_Server_Id", "Source_Server_Id"]),
            sql_delay: num(&["SQL_Delay"]).unwrap_or(0),
        }
    }

    /// `host:port` of the server this replica reads from.
    pub fn source_address(&self) -> String {
        format!("{}:{}", self.master_host, self.master_port)
    }
}

/// A row's columns by lower-case name, values as text (NULL as `None`).
fn columns(row: &Row) -> HashMap<String, Option<String>> {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let value = match row.as_ref(i) {
                Some(Value::NULL) | None => None,
                Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(Value::Int(n)) => Some(n.to_string()),
                Some(Value::UInt(n)) => Some(n.to_string()),
                Some(other) => Some(other.as_sql(true).trim_matches('\'').to_string()),
            };
            (c.name_str().to_ascii_lowercase(), value)
        })
        .collect()
}

fn is_on(value: &str) -> bool {
    matches!(
        value.to_ascii_uppercase().as_str(),
        "ON" | "1" | "YES" | "TRUE"
    )
}

/// Hides passwords in a statement before it goes into a message, a log or a printed plan: the
/// quoted literal after `IDENTIFIED BY`, `PASSWORD(` or `…PASSWORD=` becomes `'***'`.
pub fn redact_for_display(sql: &str) -> String {
    let upper = sql.to_ascii_uppercase();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < sql.len() {
        let next = ["IDENTIFIED BY", "PASSWORD(", "PASSWORD="]
            .iter()
            .filter_map(|m| upper[i..].find(m).map(|at| (i + at, m.len())))
            .min();
        let Some((at, len)) = next else {
            out.push_str(&sql[i..]);
            break;
        };
        let after_marker = at + len;
        out.push_str(&sql[i..after_marker]);
        let rest = &sql[after_marker..];
        let skipped = rest.len() - rest.trim_start().len();
        match literal_len(&rest[skipped..]) {
            Some(lit) => {
                out.push_str(&rest[..skipped]);
                out.push_str("'***'");
                i = after_marker + skipped + lit;
            }
            None => i = after_marker,
        }
    }
    out
}

/// Length in bytes of the quoted literal at the start of `text`, if it starts with one.
fn literal_len(text: &str) -> Option<usize> {
    let quote_char = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote_char {
            return Some(i + 1);
        }
    }
    None
}

pub(crate) fn redact(sql: &str) -> String {
    redact_for_display(sql)
}

/// Quotes a string literal for SQL (single quotes, backslashes and quotes escaped).
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            Version::parse("10.11.6-MariaDB-0+deb12u1-log"),
            Some(Version(10, 11, 6))
        );
        assert_eq!(Version::parse("8.0.36"), Some(Version(8, 0, 36)));
        assert_eq!(Version::parse("3.23"), Some(Version(3, 23, 0)));
        assert_eq!(Version::parse("banana"), None);
    }

    #[test]
    fn redacts_passwords() {
        let s = redact("CHANGE MASTER TO MASTER_HOST='h', MASTER_PASSWORD='x\\'y', MASTER_PORT=1");
        assert_eq!(
            s,
            "CHANGE MASTER TO MASTER_HOST='h', MASTER_PASSWORD='***', MASTER_PORT=1"
        );
        assert_eq!(
            redact("ALTER USER 'u'@'h' IDENTIFIED BY 'pw'"),
            "ALTER USER 'u'@'h' IDENTIFIED BY '***'"
        );
        assert_eq!(
            redact("SET PASSWORD FOR x = PASSWORD('pw')"),
            "SET PASSWORD FOR x = PASSWORD('***')"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }
}
