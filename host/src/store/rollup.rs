//! Rollups (count, errors, duration sum, latency histogram) per minute, per 10 minutes and per
//! hour, kept in memory for the buckets still receiving spans and written in every transaction.
//! All tiers are written from the same spans (rather than hours compacted from minutes later), so they always
//! agree and an hour is queryable as soon as it is written. A span for a bucket no longer in
//! memory (late arrival, restart) first loads that bucket's row, so counts are never reset.
//!
//! A range query reads whole hours from the hourly table and the partial hours at its ends from
//! the finer tiers ([`cover`]): a day is at most ~55 rows per key instead of 1,440, and the last
//! hour at most ~24 instead of 60.
use rustc_hash::FxHashMap as HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use super::histogram::Histogram;

/// A rollup tier: table suffix, bucket column, minutes per bucket, buckets kept in memory behind
/// the newest. Finest first.
pub struct Tier {
    pub suffix: &'static str,
    pub column: &'static str,
    pub minutes: i64,
    keep: i64,
}

pub const TIERS: [Tier; 3] = [
    Tier {
        suffix: "minutes",
        column: "minute",
        minutes: 1,
        keep: 3,
    },
    Tier {
        suffix: "10min",
        column: "ten_minute",
        minutes: 10,
        keep: 1,
    },
    Tier {
        suffix: "hours",
        column: "hour",
        minutes: 60,
        keep: 1,
    },
];

/// Covers the inclusive minute range `[m0, m1]` with the coarsest buckets that fit entirely
/// inside it: (tier index, first bucket, last bucket), inclusive. Together they count every
/// minute of the range exactly once.
pub fn cover(m0: i64, m1: i64) -> Vec<(usize, i64, i64)> {
    let mut out = Vec::new();
    cover_into(TIERS.len() - 1, m0, m1, &mut out);
    out
}

fn cover_into(tier: usize, m0: i64, m1: i64, out: &mut Vec<(usize, i64, i64)>) {
    if m0 > m1 {
        return;
    }
    let size = TIERS[tier].minutes;
    let first = m0.div_euclid(size) + i64::from(m0.rem_euclid(size) != 0);
    let last = (m1 + 1).div_euclid(size) - 1;
    if tier == 0 || first > last {
        if tier == 0 {
            out.push((0, m0, m1));
        } else {
            cover_into(tier - 1, m0, m1, out);
        }
        return;
    }
    cover_into(tier - 1, m0, first * size - 1, out);
    out.push((tier, first, last));
    cover_into(tier - 1, (last + 1) * size, m1, out);
}

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

struct Level {
    minutes: i64,
    keep: i64,
    select: String,
    replace: String,
    /// Keyed by (bucket, a, b).
    map: HashMap<RollupKey, Acc>,
}

/// One kind of rollup (endpoints or edges) in every tier.
pub struct Rollups {
    levels: Vec<Level>,
}

impl Rollups {
    /// Tables `{prefix}_{tier suffix}` with columns (bucket, `a`, `b`, count, errors,
    /// duration_sum_ns, histogram).
    pub fn new(prefix: &str, a: &str, b: &str) -> Self {
        let levels = TIERS
            .iter()
            .map(|t| {
                let (table, col) = (format!("{prefix}_{}", t.suffix), t.column);
                Level {
                    minutes: t.minutes,
                    keep: t.keep,
                    select: format!(
                        "SELECT count, errors, duration_sum_ns, histogram FROM {table} \
                         WHERE {col} = ?1 AND {a} = ?2 AND {b} = ?3"
                    ),
                    replace: format!(
                        "INSERT OR REPLACE INTO {table} \
                         ({col}, {a}, {b}, count, errors, duration_sum_ns, histogram) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ),
                    map: HashMap::default(),
                }
            })
            .collect();
        Self { levels }
    }

    /// Counts one span; `key.0` is its minute.
    pub fn record(
        &mut self,
        tx: &Transaction<'_>,
        key: RollupKey,
        duration_ns: u64,
        error: bool,
    ) -> rusqlite::Result<()> {
        for level in &mut self.levels {
            let key = (key.0.div_euclid(level.minutes), key.1, key.2);
            let acc = match level.map.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(load(tx, &level.select, key)?)
                }
            };
            acc.count += 1;
            acc.errors += u64::from(error);
            acc.duration_sum_ns = acc.duration_sum_ns.saturating_add(duration_ns);
            acc.histogram.record(duration_ns);
            acc.dirty = true;
        }
        Ok(())
    }

    /// Writes every bucket changed since the last call.
    pub fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut encoded = Vec::new();
        for level in &mut self.levels {
            let mut stmt = tx.prepare_cached(&level.replace)?;
            for (key, acc) in level.map.iter_mut().filter(|(_, a)| a.dirty) {
                acc.histogram.encode_into(&mut encoded);
                stmt.execute(params![
                    key.0,
                    key.1,
                    key.2,
                    acc.count as i64,
                    acc.errors as i64,
                    acc.duration_sum_ns.min(i64::MAX as u64) as i64,
                    &encoded[..],
                ])?;
            }
        }
        Ok(())
    }

    /// After a commit: everything is clean; buckets more than the tier's `keep` behind the
    /// newest one seen (by span time, so replayed or delayed data does not reload every row; but
    /// never past the clock, so one span from the future cannot evict the present) leave memory.
    pub fn committed(&mut self, now_minute: i64) {
        for level in &mut self.levels {
            let newest = level
                .map
                .keys()
                .map(|k| k.0)
                .max()
                .unwrap_or(0)
                .min(now_minute.div_euclid(level.minutes));
            let keep = level.keep;
            level.map.retain(|k, _| k.0 >= newest - keep);
            for acc in level.map.values_mut() {
                acc.dirty = false;
            }
        }
    }

    /// After a failed transaction memory may hold counts that were never written: start over
    /// from what the database has.
    pub fn forget(&mut self) {
        for level in &mut self.levels {
            level.map.clear();
        }
    }
}

fn load(tx: &Transaction<'_>, select: &str, key: RollupKey) -> rusqlite::Result<Acc> {
    let mut acc = Acc::default();
    let mut stmt = tx.prepare_cached(select)?;
    let row = stmt
        .query_row(params![key.0, key.1, key.2], |r| {
            acc.histogram
                .merge_encoded(r.get_ref(3)?.as_blob().unwrap_or_default());
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    if let Some((count, errors, sum)) = row {
        acc.count = count as u64;
        acc.errors = errors as u64;
        acc.duration_sum_ns = sum as u64;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes_of(parts: &[(usize, i64, i64)]) -> Vec<i64> {
        let mut out: Vec<i64> = parts
            .iter()
            .flat_map(|&(t, a, b)| {
                let m = TIERS[t].minutes;
                (a * m..(b + 1) * m).collect::<Vec<_>>()
            })
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn cover_counts_every_minute_once_with_whole_hours() {
        for (m0, m1) in [
            (0, 0),
            (0, 59),
            (0, 60),
            (1, 58),
            (59, 120),
            (61, 61 + 60 * 24 + 7),
            (-150, 10),
            (27_000_000, 27_000_000 + 1440),
        ] {
            let parts = cover(m0, m1);
            assert_eq!(
                minutes_of(&parts),
                (m0..=m1).collect::<Vec<_>>(),
                "{m0}..={m1}"
            );
            let minute_rows: i64 = parts
                .iter()
                .filter(|p| p.0 == 0)
                .map(|p| p.2 - p.1 + 1)
                .sum();
            assert!(minute_rows <= 18, "{m0}..={m1}: {parts:?}");
        }
        assert_eq!(cover(59, 120), vec![(0, 59, 59), (2, 1, 1), (0, 120, 120)]);
        assert_eq!(
            cover(15, 131),
            vec![
                (0, 15, 19),
                (1, 2, 5),
                (2, 1, 1),
                (1, 12, 12),
                (0, 130, 131)
            ]
        );
    }
}
