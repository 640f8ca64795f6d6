//! Per-minute rollups (count, errors, duration sum, latency histogram) kept in memory for the
//! minutes still receiving spans and written in every transaction. A span for a minute no longer
//! in memory (late arrival, restart) first loads that minute's row, so counts are never reset.
use rustc_hash::FxHashMap as HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use super::histogram::Histogram;

/// (minute, first key column, second key column).
pub type RollupKey = (i64, i64, i64);

#[derive(Default)]
struct Acc {
    count: u64,
    errors: u64,
    duration_sum_ns: u64,
    histogram: Histogram,
    dirty: bool,
}

pub struct Rollups {
    select: String,
    replace: String,
    map: HashMap<RollupKey, Acc>,
}

impl Rollups {
    /// `table` has columns (minute, `a`, `b`, count, errors, duration_sum_ns, histogram).
    pub fn new(table: &str, a: &str, b: &str) -> Self {
        Self {
            select: format!(
                "SELECT count, errors, duration_sum_ns, histogram FROM {table} \
                 WHERE minute = ?1 AND {a} = ?2 AND {b} = ?3"
            ),
            replace: format!(
                "INSERT OR REPLACE INTO {table} \
                 (minute, {a}, {b}, count, errors, duration_sum_ns, histogram) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            map: HashMap::default(),
        }
    }

    pub fn record(
        &mut self,
        tx: &Transaction<'_>,
        key: RollupKey,
        duration_ns: u64,
        error: bool,
    ) -> rusqlite::Result<()> {
        let acc = match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut acc = Acc::default();
                let row = tx
                    .prepare_cached(&self.select)?
                    .query_row(params![key.0, key.1, key.2], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                        ))
                    })
                    .optional()?;
                if let Some((count, errors, sum, hist)) = row {
                    acc.count = count as u64;
                    acc.errors = errors as u64;
                    acc.duration_sum_ns = sum as u64;
                    acc.histogram.merge_encoded(&hist);
                }
                v.insert(acc)
            }
        };
        acc.count += 1;
        acc.errors += u64::from(error);
        acc.duration_sum_ns = acc.duration_sum_ns.saturating_add(duration_ns);
        acc.histogram.record(duration_ns);
        acc.dirty = true;
        Ok(())
    }

    /// Writes every minute changed since the last call.
    pub fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut stmt = tx.prepare_cached(&self.replace)?;
        for (key, acc) in self.map.iter_mut().filter(|(_, a)| a.dirty) {
            stmt.execute(params![
                key.0,
                key.1,
                key.2,
                acc.count as i64,
                acc.errors as i64,
                acc.duration_sum_ns.min(i64::MAX as u64) as i64,
                acc.histogram.encode(),
            ])?;
        }
        Ok(())
    }

    /// After a commit: everything is clean; minutes more than `keep` behind the newest one seen
    /// (by span time, so replayed or delayed data does not reload every row; but never past the
    /// clock, so one span from the future cannot evict the present) leave memory.
    pub fn committed(&mut self, keep: i64, now_minute: i64) {
        let newest = self
            .map
            .keys()
            .map(|k| k.0)
            .max()
            .unwrap_or(0)
            .min(now_minute);
        self.map.retain(|k, _| k.0 >= newest - keep);
        for acc in self.map.values_mut() {
            acc.dirty = false;
        }
    }

    /// After a failed transaction memory may hold counts that were never written: start over
    /// from what the database has.
    pub fn forget(&mut self) {
        self.map.clear();
    }
}
