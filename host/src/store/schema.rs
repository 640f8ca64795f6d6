//! The database layout, created on first open and checked on every later one (`user_version`).
//!
//! Why each index exists:
//! - `spans_by_trace` (unique): one trace's spans for the waterfall, and duplicate span ids are
//!   ignored on insert.
//! - `entries_by_service` / `entries_by_endpoint`: partial, entry spans only (those with an
//!   endpoint), carrying status and duration so a filtered trace search reads the index alone.
//! - `traces_by_start`, and `traces_with_errors` (partial, small): the unfiltered trace list.
//! - rollups are keyed by minute first, so a time range is one range scan.
//! - `commits` maps span rowids to the time they were written: age retention deletes spans by
//!   rowid range without an index on their start time.
use rusqlite::Connection;

use super::StoreError;

pub const SCHEMA_VERSION: i64 = 1;

const CREATE: &str = "
CREATE TABLE services (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL DEFAULT 'service',
    technology TEXT NOT NULL DEFAULT '',
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    pids TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE endpoints (
    id INTEGER PRIMARY KEY,
    service_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (service_id, name)
);
CREATE TABLE spans (
    id INTEGER PRIMARY KEY,
    trace_id BLOB NOT NULL,
    span_id INTEGER NOT NULL,
    parent_id INTEGER,
    service_id INTEGER NOT NULL,
    endpoint_id INTEGER,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    status INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    detail BLOB NOT NULL
);
CREATE UNIQUE INDEX spans_by_trace ON spans (trace_id, span_id);
CREATE INDEX entries_by_service ON spans (service_id, start_ns, status, duration_ns)
    WHERE endpoint_id IS NOT NULL;
CREATE INDEX entries_by_endpoint ON spans (endpoint_id, start_ns, status, duration_ns)
    WHERE endpoint_id IS NOT NULL;
CREATE TABLE traces (
    trace_id BLOB PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    root_service_id INTEGER NOT NULL,
    root_name TEXT NOT NULL,
    root_rank INTEGER NOT NULL,
    span_count INTEGER NOT NULL,
    error INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX traces_by_start ON traces (start_ns, error, end_ns);
CREATE INDEX traces_with_errors ON traces (start_ns) WHERE error = 1;
CREATE TABLE endpoint_minutes (
    minute INTEGER NOT NULL,
    service_id INTEGER NOT NULL,
    endpoint_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    duration_sum_ns INTEGER NOT NULL,
    histogram BLOB NOT NULL,
    PRIMARY KEY (minute, service_id, endpoint_id)
) WITHOUT ROWID;
CREATE TABLE edge_minutes (
    minute INTEGER NOT NULL,
    caller_id INTEGER NOT NULL,
    callee_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    duration_sum_ns INTEGER NOT NULL,
    histogram BLOB NOT NULL,
    PRIMARY KEY (minute, caller_id, callee_id)
) WITHOUT ROWID;
CREATE TABLE attribute_keys (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE commits (
    last_span_rowid INTEGER PRIMARY KEY,
    at_ns INTEGER NOT NULL
);
";

/// Settings for the one writer connection. `auto_vacuum` only takes effect before the first table
/// exists, so a new file gets it here and keeps it.
pub fn prepare_writer(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if tables != 0 {
            return Err(StoreError::NotOurs);
        }
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -131072;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 8192;",
    )?;
    if version == 0 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(CREATE)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(())
}

/// Settings for a read-only query connection.
pub fn prepare_reader(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -32768;")?;
    Ok(())
}
