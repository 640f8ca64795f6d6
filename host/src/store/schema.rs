//! The database layout, created on first open and checked on every later one (`user_version`).
//!
//! Spans are not rows. The writer groups the spans of one trace that arrive in one transaction
//! (usually the whole trace, or one process's share of it) into a trace part: one row with the
//! part's summary and a compact binary encoding of its spans (`chunk`). Parts are only ever
//! appended, never updated: no per-span index, and no read-modify-write of a trace summary at a
//! random place in a B-tree. Random inserts and their page splits and page writes were most of the
//! writer's CPU. A trace is the union of its parts, merged when read.
//!
//! - `parts`: rowid order is write order, which retention relies on (oldest first).
//!   - `parts_by_trace` (`trace_key`, 64 bits of the trace id; the row's `trace_id` decides): all
//!     parts of one trace, for the waterfall and the merged summary. 8-byte integer keys keep this
//!     one random-order index small and cheap to insert into.
//!   - `parts_by_start` (with error and end, so the filters are checked in the index and a row is
//!     read only for a match), and `parts_with_errors` (partial, small): the unfiltered trace
//!     list, newest first. Status and duration filters apply to a part (the root's part spans the
//!     trace); "ok" is checked again on the merged trace.
//! - `entries`: one narrow row per entry span (a request a service handled), keyed by endpoint
//!   then start time: the trace search by service (its endpoints' rows, merged) or endpoint, with
//!   status and duration of that request, reads it in key order. The key includes the span id,
//!   so a request delivered twice is counted once.
//! - rollups per minute, 10 minutes and hour (`*_minutes`, `*_10min`, `*_hours`), keyed by
//!   bucket first, so a time range is one range scan per tier; a range reads whole hours from the
//!   hourly tables and only its ends from the finer ones.
//! - `commits` maps part rowids to the time they were written: age retention deletes parts by
//!   rowid range without an index on the time they were written.
//! - `attribute_keys`: dictionary of attribute names (chunks store ids, not names).
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::StoreError;

/// 2: spans stored in per-trace chunks (1 stored one row per span).
pub const SCHEMA_VERSION: i64 = 2;

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
CREATE TABLE parts (
    id INTEGER PRIMARY KEY,
    trace_key INTEGER NOT NULL,
    trace_id BLOB NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    error INTEGER NOT NULL,
    root_service_id INTEGER NOT NULL,
    root_rank INTEGER NOT NULL,
    root_name TEXT NOT NULL,
    span_count INTEGER NOT NULL,
    services BLOB NOT NULL,
    spans BLOB NOT NULL
);
CREATE INDEX parts_by_trace ON parts (trace_key);
CREATE INDEX parts_by_start ON parts (start_ns, error, end_ns);
CREATE INDEX parts_with_errors ON parts (start_ns) WHERE error = 1;
CREATE TABLE entries (
    endpoint_id INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    span_id INTEGER NOT NULL,
    status INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    trace_id BLOB NOT NULL,
    PRIMARY KEY (endpoint_id, start_ns, span_id)
) WITHOUT ROWID;
CREATE TABLE attribute_keys (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE commits (
    last_part_rowid INTEGER PRIMARY KEY,
    at_ns INTEGER NOT NULL
);
";

/// One rollup table per family and tier (`endpoint_minutes`, `edge_hours`, ...), made from
/// `rollup::TIERS` so the tables and the code that fills them cannot disagree.
fn rollup_tables() -> String {
    let families = [
        ("endpoint", "service_id", "endpoint_id"),
        ("edge", "caller_id", "callee_id"),
    ];
    let mut ddl = String::new();
    for (family, a, b) in families {
        for tier in &super::rollup::TIERS {
            let (suffix, bucket) = (tier.suffix, tier.column);
            ddl.push_str(&format!(
                "CREATE TABLE {family}_{suffix} (
    {bucket} INTEGER NOT NULL,
    {a} INTEGER NOT NULL,
    {b} INTEGER NOT NULL,
    count INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    duration_sum_ns INTEGER NOT NULL,
    histogram BLOB NOT NULL,
    PRIMARY KEY ({bucket}, {a}, {b})
) WITHOUT ROWID;
"
            ));
        }
    }
    ddl
}

/// The layout version a database file was written with (0: a new, empty file).
pub fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Moves a database of an older layout aside, with its WAL and shared-memory files, as
/// `zerostep.v<version>.db` (or `.v<version>.<n>.db` when that exists). The caller has closed
/// every connection to it. Returns the new path.
pub fn move_aside(path: &Path, version: i64) -> Result<PathBuf, StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("zerostep");
    let target = (0..)
        .map(|n| match n {
            0 => dir.join(format!("{stem}.v{version}.db")),
            n => dir.join(format!("{stem}.v{version}.{n}.db")),
        })
        .find(|p| !p.exists() && !side_file(p, "-wal").exists())
        .unwrap_or_else(|| unreachable!("an unused name exists"));
    // The WAL first: a main file moved without its WAL would lose the last commits.
    for suffix in ["-wal", "-shm"] {
        let from = side_file(path, suffix);
        if from.exists() {
            let to = side_file(&target, suffix);
            std::fs::rename(&from, &to).map_err(|source| StoreError::MoveAside {
                from,
                to,
                source,
            })?;
        }
    }
    std::fs::rename(path, &target).map_err(|source| StoreError::MoveAside {
        from: path.to_path_buf(),
        to: target.clone(),
        source,
    })?;
    Ok(target)
}

fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Settings for the one writer connection. `auto_vacuum` only takes effect before the first table
/// exists, so a new file gets it here and keeps it.
pub fn prepare_writer(conn: &Connection) -> Result<(), StoreError> {
    let version = version(conn)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version != 0 && version != SCHEMA_VERSION {
        // Older layouts are moved aside by `Store::open` before this is called.
        return Err(StoreError::OlderSchema {
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
         PRAGMA cache_size = -16384;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 8192;",
    )?;
    if version == 0 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(CREATE)?;
        tx.execute_batch(&rollup_tables())?;
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
