//! Retention by age and by size, run by the writer between transactions. Trace parts (spans and
//! their summary) go oldest first by rowid (write order); entries and rollups by their start
//! time. Deletes go in chunks, each its own short transaction, and one pass does a bounded amount of work so ingest keeps
//! flowing (the queue absorbs the pause). Freed pages are reused by later inserts; when many pile
//! up, an incremental vacuum gives them back to the file system, so the file stays bounded.
use rusqlite::{params, Connection, OptionalExtension};

use super::rollup::TIERS;
use super::StoreConfig;

/// Part rows deleted per statement (a part is one trace's spans of one transaction).
const CHUNK: i64 = 5_000;
/// Part rows deleted per pass at most.
const PASS_LIMIT: i64 = 100_000;
/// Size retention aims this far below the limit so it does not run on every pass.
const SIZE_HEADROOM: f64 = 0.9;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_spans: u64,
    /// Trace parts (one trace's spans of one transaction).
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

fn part_rowids(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row("SELECT min(id), max(id) FROM parts", [], |r| {
        Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
    })
}

/// Deletes parts with rowid ≤ `upto`, oldest first, within `budget`. Returns (spans, parts).
fn delete_parts_upto(
    conn: &Connection,
    upto: i64,
    budget: &mut i64,
) -> rusqlite::Result<(u64, u64)> {
    let (mut spans, mut parts) = (0u64, 0u64);
    while *budget > 0 {
        let Some((min, _)) = part_rowids(conn)? else {
            break;
        };
        if min > upto {
            break;
        }
        let end = upto.min(min + CHUNK.min(*budget) - 1);
        let n: i64 = conn.query_row(
            "SELECT coalesce(sum(span_count), 0) FROM parts WHERE id BETWEEN ?1 AND ?2",
            params![min, end],
            |r| r.get(0),
        )?;
        parts += conn.execute(
            "DELETE FROM parts WHERE id BETWEEN ?1 AND ?2",
            params![min, end],
        )? as u64;
        spans += n as u64;
        *budget -= (end - min + 1).max(1);
    }
    Ok((spans, parts))
}

/// Entry rows older than `before_ns`, one endpoint (one key range) at a time.
fn delete_entries_before(conn: &Connection, before_ns: i64) -> rusqlite::Result<()> {
    let endpoints: Vec<i64> = conn
        .prepare_cached("SELECT id FROM endpoints")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut stmt =
        conn.prepare_cached("DELETE FROM entries WHERE endpoint_id = ?1 AND start_ns < ?2")?;
    for e in endpoints {
        stmt.execute(params![e, before_ns])?;
    }
    Ok(())
}

/// Entries and rollups older than `cutoff_ns` go. A rollup bucket goes once all of it is older.
/// Returns the minutes deleted.
fn delete_summaries_before(conn: &Connection, cutoff_ns: i64) -> rusqlite::Result<u64> {
    delete_entries_before(conn, cutoff_ns)?;
    let minute = cutoff_ns.div_euclid(60_000_000_000);
    let mut minutes = 0u64;
    for tier in &TIERS {
        let bucket = minute.div_euclid(tier.minutes);
        for kind in ["endpoint", "edge"] {
            let n = conn.execute(
                &format!(
                    "DELETE FROM {kind}_{} WHERE {} < ?1",
                    tier.suffix, tier.column
                ),
                [bucket],
            )?;
            if tier.minutes == 1 {
                minutes += n as u64;
            }
        }
    }
    Ok(minutes)
}

pub fn run(
    conn: &Connection,
    config: &StoreConfig,
    now_ns: u64,
) -> rusqlite::Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let mut budget = PASS_LIMIT;

    // By age: the commit marks say up to which part rowid everything is older than the cutoff.
    let cutoff = now_ns.saturating_sub(config.retention_age.as_nanos() as u64) as i64;
    let old: Option<i64> = conn.query_row(
        "SELECT max(last_part_rowid) FROM commits WHERE at_ns < ?1",
        [cutoff],
        |r| r.get(0),
    )?;
    if let Some(upto) = old {
        let (spans, parts) = delete_parts_upto(conn, upto, &mut budget)?;
        report.deleted_spans += spans;
        report.deleted_traces += parts;
    }
    report.deleted_minutes += delete_summaries_before(conn, cutoff)?;

    // By size: drop the oldest share of parts that brings the data under the limit.
    let limit = config.retention_bytes as f64;
    loop {
        let (used, _) = sizes(conn)?;
        if (used as f64) <= limit || budget <= 0 {
            break;
        }
        let excess = 1.0 - limit * SIZE_HEADROOM / used as f64;
        match part_rowids(conn)? {
            Some((min, max)) => {
                let count = ((max - min + 1) as f64 * excess).ceil() as i64;
                let upto = min + count.clamp(1, CHUNK) - 1;
                let (spans, parts) = delete_parts_upto(conn, upto, &mut budget)?;
                report.deleted_spans += spans;
                report.deleted_traces += parts;
                // Entries older than the oldest part left lead to nothing.
                let oldest: Option<i64> = conn
                    .query_row("SELECT start_ns FROM parts ORDER BY id LIMIT 1", [], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if let Some(oldest) = oldest {
                    delete_entries_before(conn, oldest)?;
                }
            }
            None => {
                // Only rollups left: the oldest minute goes.
                let first: Option<i64> =
                    conn.query_row("SELECT min(minute) FROM endpoint_minutes", [], |r| r.get(0))?;
                let Some(first) = first else { break };
                let m = delete_summaries_before(conn, (first + 1) * 60_000_000_000)?;
                report.deleted_minutes += m;
                if m == 0 {
                    break;
                }
                budget -= CHUNK;
            }
        }
    }
    conn.execute(
        "DELETE FROM commits WHERE last_part_rowid < (SELECT coalesce(min(id), 0) FROM parts)",
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
