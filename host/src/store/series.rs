//! Time series for charts: rate, errors and latency percentiles per bucket of one rollup tier,
//! for all services, one service or one endpoint, plus the latency histogram of the whole range.
//! Read from the rollup tables only (one range scan of one tier), never from spans.
use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::histogram::Histogram;
use super::query::TimeRange;
use super::rollup::TIERS;
use super::StoreError;

/// The finest tier with at most this many buckets in the range is used.
const MAX_POINTS: i64 = 360;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Bucket width in milliseconds (a minute, 10 minutes or an hour).
    pub step_ms: i64,
    /// One point per bucket from the range's start to its end, empty buckets included.
    pub points: Vec<SeriesPoint>,
    /// Latency distribution over the whole range (non-empty buckets).
    pub histogram: Vec<HistogramBucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// The bucket's start, unix milliseconds.
    pub t_ms: i64,
    pub count: u64,
    pub errors: u64,
    /// Per minute over the part of the bucket inside the range (the current bucket is not yet full).
    pub rate_per_min: f64,
    pub error_rate: f64,
    /// `None` for a bucket without requests (a gap in a chart, not a zero latency).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramBucket {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

/// What the series counts: requests to a traced service (or one endpoint), or calls into a
/// database or external system (the edges into it).
enum Source {
    Endpoints {
        service: Option<i64>,
        endpoints: Option<HashSet<i64>>,
    },
    CallsInto(i64),
}

pub fn series(
    conn: &Connection,
    range: &TimeRange,
    service: Option<&str>,
    endpoint: Option<&str>,
) -> Result<Series, StoreError> {
    let service_row: Option<(i64, String)> = match service {
        Some(name) => {
            let row = conn
                .prepare_cached("SELECT id, kind FROM services WHERE name = ?1")?
                .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some(r) => Some(r),
                None => return Ok(empty(range)),
            }
        }
        None => None,
    };
    let source = match (&service_row, endpoint) {
        (Some((id, kind)), None) if kind != "service" => Source::CallsInto(*id),
        (s, e) => {
            let service = s.as_ref().map(|(id, _)| *id);
            let endpoints = match e {
                Some(name) => {
                    let ids: HashSet<i64> = conn
                        .prepare_cached(
                            "SELECT id FROM endpoints WHERE name = ?1 AND (?2 IS NULL OR service_id = ?2)",
                        )?
                        .query_map(rusqlite::params![name, service], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    if ids.is_empty() {
                        return Ok(empty(range));
                    }
                    Some(ids)
                }
                None => None,
            };
            Source::Endpoints { service, endpoints }
        }
    };

    let tier = tier_for(range);
    let t = &TIERS[tier];
    let step_ms = t.minutes * 60_000;
    let first = range.from_ms.div_euclid(step_ms);
    let last = (range.to_ms - 1).div_euclid(step_ms);
    let n = (last - first + 1).max(0) as usize;
    let mut counts = vec![(0u64, 0u64); n];
    let mut hists: Vec<Histogram> = Vec::new();
    hists.resize_with(n, Histogram::default);
    let mut whole = Histogram::default();

    let (table, key_cols) = match source {
        Source::Endpoints { .. } => ("endpoint", "service_id, endpoint_id"),
        Source::CallsInto(_) => ("edge", "caller_id, callee_id"),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {col}, {key_cols}, count, errors, histogram FROM {table}_{suffix} \
         WHERE {col} BETWEEN ?1 AND ?2",
        col = t.column,
        suffix = t.suffix,
    ))?;
    let mut rows = stmt.query([first, last])?;
    while let Some(r) = rows.next()? {
        let (bucket, a, b): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let wanted = match &source {
            Source::Endpoints { service, endpoints } => {
                service.is_none_or(|s| s == a) && endpoints.as_ref().is_none_or(|e| e.contains(&b))
            }
            Source::CallsInto(id) => b == *id,
        };
        if !wanted {
            continue;
        }
        let Some(i) = usize::try_from(bucket - first).ok().filter(|&i| i < n) else {
            continue;
        };
        counts[i].0 += r.get::<_, i64>(3)?.max(0) as u64;
        counts[i].1 += r.get::<_, i64>(4)?.max(0) as u64;
        let blob = r.get_ref(5)?.as_blob().unwrap_or_default();
        hists[i].merge_encoded(blob);
    }
    let mut points = Vec::with_capacity(n);
    for (i, ((count, errors), h)) in counts.into_iter().zip(&hists).enumerate() {
        let t_ms = (first + i as i64) * step_ms;
        // Minutes of this bucket inside the range.
        let covered = (range.to_ms.min(t_ms + step_ms) - range.from_ms.max(t_ms)).max(1_000) as f64
            / 60_000.0;
        let q = |p: f64| (count > 0).then(|| h.quantile_ms(p));
        points.push(SeriesPoint {
            t_ms,
            count,
            errors,
            rate_per_min: count as f64 / covered,
            error_rate: if count == 0 {
                0.0
            } else {
                errors as f64 / count as f64
            },
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        });
        whole.merge(h);
    }
    Ok(Series {
        step_ms,
        points,
        histogram: whole
            .buckets_ms()
            .into_iter()
            .map(|(from_ms, to_ms, count)| HistogramBucket {
                from_ms,
                to_ms,
                count,
            })
            .collect(),
    })
}

fn tier_for(range: &TimeRange) -> usize {
    let minutes = (range.to_ms - range.from_ms).div_euclid(60_000).max(1);
    TIERS
        .iter()
        .position(|t| minutes / t.minutes <= MAX_POINTS)
        .unwrap_or(TIERS.len() - 1)
}

fn empty(range: &TimeRange) -> Series {
    Series {
        step_ms: TIERS[tier_for(range)].minutes * 60_000,
        points: Vec::new(),
        histogram: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_keeps_points_bounded() {
        let r = |minutes: i64| TimeRange {
            from_ms: 0,
            to_ms: minutes * 60_000,
        };
        assert_eq!(tier_for(&r(60)), 0);
        assert_eq!(tier_for(&r(360)), 0);
        assert_eq!(tier_for(&r(1440)), 1);
        assert_eq!(tier_for(&r(3 * 1440)), 2);
        assert_eq!(tier_for(&r(365 * 1440)), 2);
    }
}
