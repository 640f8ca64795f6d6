//! Retention by age and by size, run by the writer between transactions. Deletes go in chunks,
//! each its own short transaction, and one pass does a bounded amount of work so ingest keeps
//! flowing (the queue absorbs the pause). Freed pages are reused by later inserts; when many pile
//! up, an incremental vacuum gives them back to the file system, so the file stays bounded.
use rusqlite::{params, Connection, OptionalExtension};

use super::StoreConfig;

/// Spans deleted per statement.
const CHUNK: i64 = 20_000;
/// Spans deleted per pass at most.
const PASS_LIMIT: i64 = 400_000;
/// Size retention aims this far below the limit so it does not run on every pass.
const SIZE_HEADROOM: f64 = 0.9;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_spans: u64,
    pub deleted_traces: u64,
    pub deleted_minutes: u64,
    /// Bytes in use by data (file size minus free pages) after the pass.
    pub used_bytes: u64,
    pub file_bytes: u64,
}

/// (bytes in use, bytes of the database file incl. free pages).
pub fn sizes(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok((
        ((pages - free) * page_size) as u64,
        (pages * page_size) as u64,
    ))
}

fn span_rowids(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row("SELECT min(id), max(id) FROM spans", [], |r| {
        Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
    })
}

/// Deletes spans with rowid ≤ `upto`, oldest first, within `budget`. Returns how many.
fn delete_spans_upto(conn: &Connection, upto: i64, budget: &mut i64) -> rusqlite::Result<u64> {
    let mut deleted = 0u64;
    while *budget > 0 {
        let Some((min, _)) = span_rowids(conn)? else {
            break;
        };
        if min > upto {
            break;
        }
        let end = upto.min(min + CHUNK.min(*budget) - 1);
        let n = conn.execute(
            "DELETE FROM spans WHERE id BETWEEN ?1 AND ?2",
            params![min, end],
        )?;
        deleted += n as u64;
        *budget -= (end - min + 1).max(1);
    }
    Ok(deleted)
}

/// Trace summaries and rollups older than `cutoff_ns` go, in chunks.
fn delete_summaries_before(conn: &Connection, cutoff_ns: i64) -> rusqlite::Result<(u64, u64)> {
    let mut traces = 0u64;
    loop {
        let n = conn.execute(
            "DELETE FROM traces WHERE trace_id IN
               (SELECT trace_id FROM traces WHERE start_ns < ?1 LIMIT ?2)",
            params![cutoff_ns, CHUNK],
        )?;
        traces += n as u64;
        if (n as i64) < CHUNK {
            break;
        }
    }
    let minute = cutoff_ns / 60_000_000_000;
    let mut minutes = 0u64;
    for table in ["endpoint_minutes", "edge_minutes"] {
        minutes +=
            conn.execute(&format!("DELETE FROM {table} WHERE minute < ?1"), [minute])? as u64;
    }
    Ok((traces, minutes))
}

pub fn run(
    conn: &Connection,
    config: &StoreConfig,
    now_ns: u64,
) -> rusqlite::Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let mut budget = PASS_LIMIT;

    // By age: the commit marks say up to which span rowid everything is older than the cutoff.
    let cutoff = now_ns.saturating_sub(config.retention_age.as_nanos() as u64) as i64;
    let old: Option<i64> = conn.query_row(
        "SELECT max(last_span_rowid) FROM commits WHERE at_ns < ?1",
        [cutoff],
        |r| r.get(0),
    )?;
    if let Some(upto) = old {
        report.deleted_spans += delete_spans_upto(conn, upto, &mut budget)?;
    }
    let (t, m) = delete_summaries_before(conn, cutoff)?;
    report.deleted_traces += t;
    report.deleted_minutes += m;

    // By size: drop the oldest share of spans that brings the data under the limit.
    let limit = config.retention_bytes as f64;
    loop {
        let (used, _) = sizes(conn)?;
        if (used as f64) <= limit || budget <= 0 {
            break;
        }
        let excess = 1.0 - limit * SIZE_HEADROOM / used as f64;
        match span_rowids(conn)? {
            Some((min, max)) => {
                let count = ((max - min + 1) as f64 * excess).ceil() as i64;
                let upto = min + count.clamp(1, CHUNK) - 1;
                report.deleted_spans += delete_spans_upto(conn, upto, &mut budget)?;
                // Summaries older than the oldest span left have nothing to show.
                let oldest: Option<i64> = conn
                    .query_row("SELECT start_ns FROM spans ORDER BY id LIMIT 1", [], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if let Some(oldest) = oldest {
                    let (t, _) = delete_summaries_traces_only(conn, oldest)?;
                    report.deleted_traces += t;
                }
            }
            None => {
                // Only rollups left: the oldest minute goes.
                let first: Option<i64> =
                    conn.query_row("SELECT min(minute) FROM endpoint_minutes", [], |r| r.get(0))?;
                let Some(first) = first else { break };
                let (t, m) = delete_summaries_before(conn, (first + 1) * 60_000_000_000)?;
                report.deleted_traces += t;
                report.deleted_minutes += m;
                if m == 0 {
                    break;
                }
                budget -= CHUNK;
            }
        }
    }
    conn.execute(
        "DELETE FROM commits WHERE last_span_rowid < (SELECT coalesce(min(id), 0) FROM spans)",
        [],
    )?;

    // Give free pages back once they are a sizeable share, so the file shrinks to the data.
    let (used, file) = sizes(conn)?;
    if file > used && (file - used) as f64 > 0.25 * file as f64 {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = ((file - used) as i64 / page_size).min(25_000);
        // Each step of this pragma frees one page: it must be run to completion.
        let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        // The file itself shrinks when the WAL is checkpointed.
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    }
    let (used, file) = sizes(conn)?;
    report.used_bytes = used;
    report.file_bytes = file;
    Ok(report)
}

fn delete_summaries_traces_only(conn: &Connection, before_ns: i64) -> rusqlite::Result<(u64, u64)> {
    let n = conn.execute(
        "DELETE FROM traces WHERE trace_id IN
           (SELECT trace_id FROM traces WHERE start_ns < ?1 AND end_ns < ?1 LIMIT ?2)",
        params![before_ns, CHUNK * 4],
    )?;
    Ok((n as u64, 0))
}
