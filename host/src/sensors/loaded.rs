//! One loaded version of a sensor: its compiled component, a pool of instances, and the calls.
//! A trap drops the instance that trapped; the next call instantiates a fresh one from the cached
//! pre-instance (~20 µs), so one bad input never poisons later calls.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use wasmtime::Store;

use super::bindings::{v0_1, v0_2, Contract};
use super::convert::{self, KeyFilter, OutputError};
use super::convert_v2;
use super::engine::{LimitExceeded, SandboxEngine, SensorState};
use super::model::{Bundle, Match, PythonModule, Rules, SensorInfo};
use super::stats::{CallStats, Outcome};
use crate::discover::ProcessInfo;
use crate::span::Span;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("sensor trapped: {0}")]
    Trap(String),
    #[error("sensor stopped: {0}")]
    Limit(LimitExceeded),
    #[error("sensor answer refused: {0}")]
    Output(#[from] OutputError),
    #[error("could not instantiate sensor: {0}")]
    Instantiate(String),
}

impl CallError {
    fn from_wasmtime(err: wasmtime::Error) -> Self {
        if let Some(limit) = err.downcast_ref::<LimitExceeded>() {
            return CallError::Limit(*limit);
        }
        // The root cause names what happened (a trap code, a failed memory grow, a missing import
        // a panic reached); the wasm backtrace of anonymous functions helps nobody in a status line.
        let cause = err.root_cause().to_string();
        tracing::debug!(error = %format!("{err:#}"), "sensor trap detail");
        CallError::Trap(cause.lines().next().unwrap_or("unknown trap").to_string())
    }
}

/// A pre-instantiated component, bound with the module of its contract version.
#[derive(Clone)]
pub enum Pre {
    V0_1(v0_1::SensorPre<SensorState>),
    V0_2(v0_2::SensorPre<SensorState>),
}

impl Pre {
    pub fn contract(&self) -> Contract {
        match self {
            Pre::V0_1(_) => Contract::V0_1,
            Pre::V0_2(_) => Contract::V0_2,
        }
    }
}

enum Bound {
    V0_1(v0_1::Sensor),
    V0_2(v0_2::Sensor),
}

struct Instance {
    store: Store<SensorState>,
    sensor: Bound,
}

pub struct LoadedSensor {
    pub info: SensorInfo,
    pub source: PathBuf,
    pub sha256: String,
    pub loaded_at: std::time::SystemTime,
    /// 0.2: the bundles and rules it carries (asked once, at load); empty for 0.1.
    pub bundles: Vec<Bundle>,
    pub rules: Rules,
    engine: Arc<SandboxEngine>,
    pre: Pre,
    filter: KeyFilter,
    pool: Mutex<Vec<Instance>>,
    label: Arc<str>,
}

impl LoadedSensor {
    pub(super) fn new(
        engine: Arc<SandboxEngine>,
        pre: Pre,
        info: SensorInfo,
        source: PathBuf,
        sha256: String,
    ) -> Self {
        let label: Arc<str> = format!("{}@{}", info.name, info.version).into();
        Self {
            filter: KeyFilter::new(&info.attribute_keys),
            info,
            source,
            sha256,
            loaded_at: std::time::SystemTime::now(),
            bundles: Vec::new(),
            rules: Rules::default(),
            engine,
            pre,
            pool: Mutex::new(Vec::new()),
            label,
        }
    }

    fn instantiate(&self) -> Result<Instance, CallError> {
        let mut store = self.engine.new_store(self.label.clone());
        store.data_mut().begin_call();
        store.set_epoch_deadline(1);
        let _guard = self.engine.enter_call();
        let sensor = match &self.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Bound::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Bound::V0_2),
        }
        .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        Ok(Instance { store, sensor })
    }

    /// Runs one call on a pooled instance; an instance that fails in any way is not reused.
    fn call<R>(
        &self,
        stats: &CallStats,
        f: impl FnOnce(&Bound, &mut Store<SensorState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let started = Instant::now();
        let pooled = self.pool.lock().pop();
        let mut inst = match pooled.map(Ok).unwrap_or_else(|| self.instantiate()) {
            Ok(i) => i,
            Err(e) => {
                stats.record(started.elapsed(), Outcome::Trap);
                return Err(e);
            }
        };
        inst.store.data_mut().begin_call();
        inst.store.set_epoch_deadline(1);
        let result = {
            let _guard = self.engine.enter_call();
            f(&inst.sensor, &mut inst.store)
        };
        match result {
            Ok(r) => {
                stats.record(started.elapsed(), Outcome::Ok);
                let mut pool = self.pool.lock();
                if pool.len() < self.engine.limits().pool_size {
                    pool.push(inst);
                }
                Ok(r)
            }
            Err(e) => {
                stats.record(started.elapsed(), Outcome::Trap);
                Err(CallError::from_wasmtime(e))
            }
        }
    }

    /// Validates an answer; an invalid one counts as an error of this call.
    fn validated<R, T>(
        &self,
        stats: &CallStats,
        raw: Result<R, CallError>,
        f: impl FnOnce(R) -> Result<T, OutputError>,
    ) -> Result<T, CallError> {
        let raw = raw?;
        f(raw).map_err(|e| {
            stats.mark_refused();
            CallError::Output(e)
        })
    }

    pub fn contract(&self) -> Contract {
        self.pre.contract()
    }

    pub fn describe(&self, stats: &CallStats) -> Result<SensorInfo, CallError> {
        let raw = self.call(stats, |s, st| match s {
            Bound::V0_1(s) => s.call_describe(st),
            Bound::V0_2(s) => s.call_describe(st),
        });
        self.validated(stats, raw, |i| {
            convert::sensor_info(i, self.engine.limits())
        })
    }

    pub fn match_process(
        &self,
        stats: &CallStats,
        process: &ProcessInfo,
    ) -> Result<Option<Match>, CallError> {
        let arg = convert::process_info(process);
        let limits = self.engine.limits();
        match &self.pre {
            Pre::V0_1(_) => {
                let raw = self.call(stats, |s, st| match s {
                    Bound::V0_1(s) => s.call_match_process(st, &arg),
                    Bound::V0_2(_) => Err(mismatch()),
                });
                self.validated(stats, raw, |m| {
                    m.map(|m| convert::process_match(m, limits)).transpose()
                })
            }
            Pre::V0_2(_) => {
                let raw = self.call(stats, |s, st| match s {
                    Bound::V0_2(s) => s.call_match_process(st, &arg),
                    Bound::V0_1(_) => Err(mismatch()),
                });
                self.validated(stats, raw, |m| {
                    m.map(|m| convert_v2::process_match(m, limits)).transpose()
                })
            }
        }
    }

    /// 0.1's extra Python modules for a match; a 0.2 sensor carries bundles instead (none here).
    pub fn instrumentation(
        &self,
        stats: &CallStats,
        matched: &Match,
    ) -> Result<Vec<PythonModule>, CallError> {
        if let Pre::V0_2(_) = self.pre {
            return Ok(Vec::new());
        }
        let arg = convert::to_wit_match(matched);
        let raw = self.call(stats, |s, st| match s {
            Bound::V0_1(s) => s.call_instrumentation(st, &arg),
            Bound::V0_2(_) => Err(mismatch()),
        });
        self.validated(stats, raw, |m| {
            convert::python_modules(m, self.engine.limits())
        })
    }

    /// 0.2: the bundles and rules, asked once (the canary stores them on the sensor).
    pub fn bundles_and_rules(&self, stats: &CallStats) -> Result<(Vec<Bundle>, Rules), CallError> {
        if let Pre::V0_1(_) = self.pre {
            return Ok((Vec::new(), Rules::default()));
        }
        let limits = self.engine.limits();
        let raw = self.call(stats, |s, st| match s {
            Bound::V0_2(s) => s.call_bundles(st),
            Bound::V0_1(_) => Err(mismatch()),
        });
        let bundles = self.validated(stats, raw, |b| convert_v2::bundles(b, limits))?;
        let raw = self.call(stats, |s, st| match s {
            Bound::V0_2(s) => s.call_rules(st),
            Bound::V0_1(_) => Err(mismatch()),
        });
        let rules = self.validated(stats, raw, |r| convert_v2::rules(r, limits))?;
        Ok((bundles, rules))
    }

    /// Enriches `spans` in place, in calls of at most `max_batch` spans and `max_batch_text_bytes`
    /// of text (a huge batch must not push a sensor over its memory cap). Each call's patches are
    /// applied whole or not at all.
    pub fn enrich(
        &self,
        stats: &CallStats,
        matched: &Match,
        spans: &mut [Span],
    ) -> Result<(), CallError> {
        let (wit_match, wit_match2) = match self.pre {
            Pre::V0_1(_) => (Some(convert::to_wit_match(matched)), None),
            Pre::V0_2(_) => (None, Some(convert_v2::to_wit_match(matched))),
        };
        let limits = self.engine.limits();
        let mut rest = spans;
        while !rest.is_empty() {
            let n = chunk_len(rest, limits.max_batch.max(1), limits.max_batch_text_bytes);
            let (chunk, tail) = rest.split_at_mut(n);
            let batch = convert::to_wit_batch(chunk, &self.filter);
            let raw = self.call(stats, |s, st| match (s, &wit_match, &wit_match2) {
                (Bound::V0_1(s), Some(m), _) => s.call_enrich(st, m, &batch),
                (Bound::V0_2(s), _, Some(m)) => s.call_enrich(st, m, &batch),
                _ => Err(mismatch()),
            });
            let patches =
                self.validated(stats, raw, |p| convert::patches(p, chunk.len(), limits))?;
            convert::apply(patches, chunk);
            rest = tail;
        }
        Ok(())
    }
}

/// A pooled instance always has its sensor's contract version; this is for the type system.
fn mismatch() -> wasmtime::Error {
    wasmtime::Error::msg("sensor instance of another contract version")
}

/// How many spans from the front of `spans` go into one call: at least one.
fn chunk_len(spans: &[Span], max_spans: usize, max_bytes: usize) -> usize {
    let mut bytes = 0;
    for (i, s) in spans.iter().take(max_spans).enumerate() {
        bytes += convert::text_bytes(s);
        if bytes > max_bytes && i > 0 {
            return i;
        }
    }
    spans.len().min(max_spans)
}
