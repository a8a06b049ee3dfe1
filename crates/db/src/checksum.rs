//! Per-table checksums of Master vs Slave, in primary-key chunks so a large table is never
//! locked as a whole (the approach of pt-table-checksum). Each chunk is checksummed on the
//! Master, the Slave is given time to reach the Master's position (MASTER_POS_WAIT), then the
//! same chunk is checksummed on the Slave; a mismatch is re-tried once before it counts, so a
//! row changing during the check is not reported as a divergence.

use mysql_async::{Row, Value};
use serde::Serialize;

use crate::heartbeat::HEARTBEAT_SCHEMA;
use crate::plan::SYSTEM_SCHEMAS;
use crate::server::{quote, quote_ident, Server};
use crate::DbError;

/// How long the Slave may take to reach the Master's position before a chunk is compared anyway.
const POS_WAIT_SECONDS: u32 = 30;

/// The comparison of one table.
#[derive(Clone, Debug, Serialize)]
pub struct TableChecksum {
    /// `schema.table`.
    pub table: String,
    pub rows: u64,
    pub chunks: u64,
    pub matches: bool,
    /// Why it differs (empty when it matches).
    pub detail: String,
}

/// One chunk's fingerprint: row count and two 64-bit XORs of the rows' MD5 halves.
#[derive(Debug, PartialEq, Eq)]
struct ChunkSum {
    rows: u64,
    a: String,
    b: String,
}

/// Compares every user table except `swsystag` and swrepl's own schema.
///
/// `wait_for_slave`: let the Slave catch up to the Master's position before each chunk (pass
/// `false` when replication is known to be stopped, to avoid waiting in vain).
pub async fn compare_checksums(
    m: &mut Server,
    s: &mut Server,
    chunk_rows: u64,
    wait_for_slave: bool,
) -> Result<Vec<TableChecksum>, DbError> {
    let mut wait = wait_for_slave;
    let master_tables = list_tables(m).await?;
    let slave_tables = list_tables(s).await?;
    let mut out = Vec::new();
    for (schema, table) in &master_tables {
        let name = format!("{schema}.{table}");
        if !slave_tables.contains(&(schema.clone(), table.clone())) {
            out.push(TableChecksum {
                table: name,
                rows: 0,
                chunks: 0,
                matches: false,
                detail: "missing on the Slave".into(),
            });
            continue;
        }
        out.push(compare_table(m, s, schema, table, chunk_rows.max(1), &mut wait).await?);
    }
    for (schema, table) in slave_tables.iter().filter(|t| !master_tables.contains(t)) {
        out.push(TableChecksum {
            table: format!("{schema}.{table}"),
            rows: 0,
            chunks: 0,
            matches: false,
            detail: "exists only on the Slave".into(),
        });
    }
    Ok(out)
}

async fn list_tables(server: &mut Server) -> Result<Vec<(String, String)>, DbError> {
    let excluded = SYSTEM_SCHEMAS
        .iter()
        .chain(std::iter::once(&HEARTBEAT_SCHEMA))
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(",");
    server
        .rows(&format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE='BASE TABLE' AND TABLE_SCHEMA NOT IN ({excluded}) \
             AND LOWER(TABLE_NAME) <> 'swsystag' ORDER BY TABLE_SCHEMA, TABLE_NAME"
        ))
        .await
}

async fn compare_table(
    m: &mut Server,
    s: &mut Server,
    schema: &str,
    table: &str,
    chunk_rows: u64,
    wait: &mut bool,
) -> Result<TableChecksum, DbError> {
    let columns: Vec<String> = m
        .rows(&format!(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA={} AND TABLE_NAME={} ORDER BY ORDINAL_POSITION",
            quote(schema),
            quote(table)
        ))
        .await?;
    let pk: Vec<String> = m
        .rows(&format!(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA={} AND TABLE_NAME={} \
             AND CONSTRAINT_NAME='PRIMARY' ORDER BY ORDINAL_POSITION",
            quote(schema),
            quote(table)
        ))
        .await?;
    let full = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let sum_sql = chunk_sum_sql(&full, &columns);
    let pk_list = pk
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(",");
    let mut result = TableChecksum {
        table: format!("{schema}.{table}"),
        rows: 0,
        chunks: 0,
        matches: true,
        detail: String::new(),
    };
    let mut lower: Option<Vec<Value>> = None;
    loop {
        let upper = if pk.is_empty() {
            None
        } else {
            next_boundary(m, &full, &pk_list, lower.as_deref(), chunk_rows).await?
        };
        let (cond, params) = chunk_condition(&pk_list, lower.as_deref(), upper.as_deref());
        let sql = format!("{sum_sql}{cond}) x");
        result.chunks += 1;
        if let Some(rows) = compare_chunk(m, s, &sql, &params, wait).await? {
            result.rows += rows;
        } else {
            result.matches = false;
            result.detail = match (&lower, &upper) {
                (None, None) => "its rows differ".into(),
                _ => format!(
                    "rows differ in chunk {} (primary key {})",
                    result.chunks,
                    pk.join(",")
                ),
            };
            return Ok(result);
        }
        match upper {
            Some(u) => lower = Some(u),
            None => return Ok(result),
        }
    }
}

/// `SELECT COUNT(*), XOR of MD5 halves FROM (SELECT MD5(row) AS h FROM t` — the caller appends
/// the chunk's WHERE clause and `) x`.
fn chunk_sum_sql(full: &str, columns: &[String]) -> String {
    let cols = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>();
    let nulls = cols
        .iter()
        .map(|c| format!("ISNULL({c})"))
        .collect::<Vec<_>>()
        .join(",");
    let row = format!("CONCAT_WS('#',{},CONCAT({nulls}))", cols.join(","));
    format!(
        "SELECT COUNT(*), CAST(COALESCE(BIT_XOR(CAST(CONV(LEFT(h,16),16,10) AS UNSIGNED)),0) AS CHAR), \
         CAST(COALESCE(BIT_XOR(CAST(CONV(RIGHT(h,16),16,10) AS UNSIGNED)),0) AS CHAR) \
         FROM (SELECT MD5({row}) AS h FROM {full}"
    )
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

fn chunk_condition(
    pk_list: &str,
    lower: Option<&[Value]>,
    upper: Option<&[Value]>,
) -> (String, Vec<Value>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if let Some(l) = lower {
        conds.push(format!("({pk_list}) > ({})", placeholders(l.len())));
        params.extend_from_slice(l);
    }
    if let Some(u) = upper {
        conds.push(format!("({pk_list}) <= ({})", placeholders(u.len())));
        params.extend_from_slice(u);
    }
    if conds.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE {}", conds.join(" AND ")), params)
    }
}

/// The primary key of the last row of the next chunk, or `None` when the rest fits in one chunk.
async fn next_boundary(
    m: &mut Server,
    full: &str,
    pk_list: &str,
    lower: Option<&[Value]>,
    chunk_rows: u64,
) -> Result<Option<Vec<Value>>, DbError> {
    let (cond, params) = chunk_condition(pk_list, lower, None);
    let sql = format!(
        "SELECT {pk_list} FROM {full}{cond} ORDER BY {pk_list} LIMIT 1 OFFSET {}",
        chunk_rows - 1
    );
    let rows: Vec<Row> = m.rows_with(&sql, params).await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let values = row.unwrap();
    // If this boundary is also the table's last row, the open-ended chunk covers it.
    Ok(Some(values))
}

/// Compares one chunk; `Some(rows)` when it matches (after one retry), `None` when it differs.
async fn compare_chunk(
    m: &mut Server,
    s: &mut Server,
    sql: &str,
    params: &[Value],
    wait: &mut bool,
) -> Result<Option<u64>, DbError> {
    for _attempt in 0..2 {
        let on_master = chunk_sum(m, sql, params).await?;
        if *wait && !wait_for_master_position(m, s).await? {
            // The Slave is not applying: stop waiting for it for the rest of this check.
            *wait = false;
        }
        let on_slave = chunk_sum(s, sql, params).await?;
        if on_master == on_slave {
            return Ok(Some(on_master.rows));
        }
    }
    Ok(None)
}

async fn chunk_sum(server: &mut Server, sql: &str, params: &[Value]) -> Result<ChunkSum, DbError> {
    let rows: Vec<(u64, String, String)> = server.rows_with(sql, params.to_vec()).await?;
    let (rows, a, b) = rows
        .into_iter()
        .next()
        .unwrap_or((0, "0".into(), "0".into()));
    Ok(ChunkSum { rows, a, b })
}

/// Lets the Slave's SQL thread reach the Master's current position (bounded wait); `false` when
/// it did not (timeout, or the SQL thread is stopped).
async fn wait_for_master_position(m: &mut Server, s: &mut Server) -> Result<bool, DbError> {
    let Some(pos) = m.master_status().await? else {
        return Ok(false);
    };
    let function = if s.info.uses_replica_words() {
        "SOURCE_POS_WAIT"
    } else {
        "MASTER_POS_WAIT"
    };
    let reached: Option<i64> = s
        .scalar(&format!(
            "SELECT {function}({}, {}, {POS_WAIT_SECONDS})",
            quote(&pos.file),
            pos.position
        ))
        .await?;
    Ok(reached.is_some_and(|n| n >= 0))
}
