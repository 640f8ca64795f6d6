//! Every sensor the agent has, by source file: the version that serves, the last good one kept
//! for quarantine, and why a file was refused. New versions become active by an atomic swap after
//! the canary; calls in flight keep the `Arc` of the version they started on.
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::canary::{self, CanaryError};
use super::loaded::{CallError, LoadedSensor};
use super::model::{Bundle, BundleScope, Match, PythonModule, Rules};
use super::stats::{CallStats, CallStatsSnapshot};
use super::SandboxEngine;
use crate::discover::ProcessInfo;
use crate::span::Span;

/// When failures of a serving version make it quarantined.
#[derive(Debug, Clone)]
pub struct QuarantinePolicy {
    pub failures: usize,
    pub window: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        Self {
            failures: 3,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorState {
    /// The newest accepted version serves.
    Active,
    /// The newest version failed while serving; the previous good version (if any) serves.
    Quarantined,
    /// No version of this file has passed the canary.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub sha256: String,
    pub reason: String,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionStatus {
    pub name: String,
    pub version: String,
    pub contract_version: String,
    pub sha256: String,
    pub technologies: Vec<String>,
    pub loaded_at_unix_ms: u64,
    /// Contract 0.2: the bundles this version carries.
    #[serde(default)]
    pub bundles: Vec<BundleStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleStatus {
    pub name: String,
    pub version: String,
    pub scope: BundleScope,
    pub triggers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensorStatus {
    /// The serving version's name, else the file stem.
    pub name: String,
    pub source: String,
    pub state: SensorState,
    /// The version that answers calls now (none: this file serves nothing).
    pub serving: Option<VersionStatus>,
    /// The version quarantined, when state is quarantined.
    pub quarantined: Option<Refusal>,
    /// The last file content refused by the canary (the serving version, if any, was kept).
    pub last_refused: Option<Refusal>,
    /// The last rollback (by the operator, or automatic after a regression in a canary process).
    #[serde(default)]
    pub rolled_back: Option<Refusal>,
    #[serde(flatten)]
    pub calls: CallStatsSnapshot,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct SlotState {
    state: SensorState,
    /// The version that served before the current one; restored on quarantine.
    previous: Option<Arc<LoadedSensor>>,
    quarantined: Option<Refusal>,
    quarantined_shas: Vec<String>,
    /// Contents an operator rolled back from: a rescan of the unchanged file does not bring
    /// them back (new content does).
    rolled_back_shas: Vec<String>,
    /// The last rollback: which version was left and why.
    rolled_back: Option<Refusal>,
    last_refused: Option<Refusal>,
    failures: VecDeque<Instant>,
}

struct Slot {
    source: PathBuf,
    active: ArcSwapOption<LoadedSensor>,
    stats: CallStats,
    state: Mutex<SlotState>,
}

/// Which sensor answered; enrichment of that process's spans goes to the same file's sensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SensorRef(pub PathBuf);

/// What happened to a file on (re)load.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    Activated {
        name: String,
        version: String,
    },
    Unchanged,
    /// Same content as a quarantined version: not tried again.
    StillQuarantined,
    Refused(String),
}

pub struct SensorRegistry {
    engine: Arc<SandboxEngine>,
    policy: QuarantinePolicy,
    slots: RwLock<BTreeMap<PathBuf, Arc<Slot>>>,
    /// Bumped whenever what serves changes (a version activated, quarantined or removed), so
    /// the orchestrator re-evaluates processes already seen.
    generation: std::sync::atomic::AtomicU64,
}

impl SensorRegistry {
    pub fn new(engine: Arc<SandboxEngine>, policy: QuarantinePolicy) -> Self {
        Self {
            engine,
            policy,
            slots: RwLock::new(BTreeMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Changes whenever the set of serving sensor versions changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn slot(&self, path: &Path) -> Arc<Slot> {
        if let Some(s) = self.slots.read().get(path) {
            return s.clone();
        }
        self.slots
            .write()
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(Slot {
                    source: path.to_path_buf(),
                    active: ArcSwapOption::empty(),
                    stats: CallStats::default(),
                    state: Mutex::new(SlotState {
                        state: SensorState::Failed,
                        previous: None,
                        quarantined: None,
                        quarantined_shas: Vec::new(),
                        rolled_back_shas: Vec::new(),
                        rolled_back: None,
                        last_refused: None,
                        failures: VecDeque::new(),
                    }),
                })
            })
            .clone()
    }

    /// Loads or reloads one file. The serving version changes only if the new one passes the canary.
    pub fn load_path(&self, path: &Path) -> LoadOutcome {
        let max = self.engine.limits().max_component_bytes;
        let bytes = match super::trust::read_trusted(path, max) {
            Ok(b) => b,
            Err(super::trust::Untrusted::Refused(reason)) => {
                return self.refuse_reason(path, String::new(), reason)
            }
            Err(super::trust::Untrusted::Io(err)) => {
                return self.refuse(
                    path,
                    String::new(),
                    CanaryError::Read {
                        path: path.display().to_string(),
                        source: err,
                    },
                )
            }
        };
        let sha = canary::sha256_hex(&bytes);
        let slot = self.slot(path);
        if slot.active.load().as_ref().is_some_and(|a| a.sha256 == sha) {
            return LoadOutcome::Unchanged;
        }
        {
            let st = slot.state.lock();
            if st.quarantined_shas.contains(&sha) {
                return LoadOutcome::StillQuarantined;
            }
            if st.last_refused.as_ref().is_some_and(|r| r.sha256 == sha)
                || st.rolled_back_shas.contains(&sha)
            {
                return LoadOutcome::Unchanged;
            }
        }
        let sensor = match canary::load_bytes(&self.engine, path, &bytes) {
            Ok(s) => s,
            Err(err) => return self.refuse(path, sha, err),
        };
        if let Some(other) = self.name_taken_by(&sensor.info.name, path) {
            let reason = format!(
                "sensor name `{}` is already served by {}",
                sensor.info.name,
                other.display()
            );
            return self.refuse_reason(path, sha, reason);
        }
        let (name, version) = (sensor.info.name.clone(), sensor.info.version.clone());
        let mut st = slot.state.lock();
        let old = slot.active.swap(Some(Arc::new(sensor)));
        if let Some(old) = old {
            // Keep the old version for quarantine fall-back only if it was healthy.
            if st.state == SensorState::Active {
                st.previous = Some(old);
            }
        }
        st.state = SensorState::Active;
        st.quarantined = None;
        st.failures.clear();
        st.last_refused = None;
        drop(st);
        self.changed();
        tracing::info!(sensor = %name, %version, source = %path.display(), sha256 = %&sha[..12], "sensor active");
        LoadOutcome::Activated { name, version }
    }

    fn name_taken_by(&self, name: &str, path: &Path) -> Option<PathBuf> {
        self.slots
            .read()
            .values()
            .filter(|s| s.source != path)
            .find(|s| {
                s.active
                    .load()
                    .as_ref()
                    .is_some_and(|a| a.info.name == name)
            })
            .map(|s| s.source.clone())
    }

    fn refuse(&self, path: &Path, sha: String, err: CanaryError) -> LoadOutcome {
        self.refuse_reason(path, sha, err.to_string())
    }

    fn refuse_reason(&self, path: &Path, sha256: String, reason: String) -> LoadOutcome {
        let slot = self.slot(path);
        let serving = slot
            .active
            .load()
            .as_ref()
            .map(|a| format!("{}@{}", a.info.name, a.info.version));
        let mut st = slot.state.lock();
        // The same refusal again (a rescan of a file that did not change) is not news.
        if st
            .last_refused
            .as_ref()
            .is_none_or(|r| r.reason != reason || r.sha256 != sha256)
        {
            tracing::warn!(source = %path.display(), %reason, serving = serving.as_deref().unwrap_or("nothing"), "sensor file refused");
        }
        st.last_refused = Some(Refusal {
            sha256,
            reason: reason.clone(),
            at_unix_ms: unix_ms(SystemTime::now()),
        });
        LoadOutcome::Refused(reason)
    }

    /// `zerostep sensors rollback NAME`: the version that served before the current one serves
    /// again (and its bundles go back into the processes). Returns (from, to) versions.
    pub fn rollback(&self, name: &str) -> Result<(String, String), RegistryError> {
        self.rollback_because(name, "rolled back by the operator")
    }

    /// A rollback with its reason (the orchestrator's, when a canary process regressed).
    pub fn rollback_because(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<(String, String), RegistryError> {
        let slot = self
            .slots
            .read()
            .values()
            .find(|s| {
                s.active
                    .load()
                    .as_ref()
                    .is_some_and(|a| a.info.name == name)
            })
            .cloned()
            .ok_or_else(|| RegistryError::NoSuchSensor(name.to_string()))?;
        let mut st = slot.state.lock();
        let previous = st
            .previous
            .take()
            .ok_or_else(|| RegistryError::NoPrevious(name.to_string()))?;
        let to = previous.info.version.clone();
        let Some(old) = slot.active.swap(Some(previous)) else {
            return Err(RegistryError::NotServing);
        };
        if st.rolled_back_shas.len() >= 16 {
            st.rolled_back_shas.remove(0);
        }
        st.rolled_back_shas.push(old.sha256.clone());
        st.rolled_back = Some(Refusal {
            sha256: old.sha256.clone(),
            reason: format!("{} {}: {reason}", old.info.name, old.info.version),
            at_unix_ms: unix_ms(SystemTime::now()),
        });
        st.state = SensorState::Active;
        st.failures.clear();
        drop(st);
        self.changed();
        let from = old.info.version.clone();
        tracing::info!(sensor = %name, %from, %to, "sensor rolled back");
        Ok((from, to))
    }

    /// The file is gone: its sensor stops serving (calls in flight finish).
    pub fn remove_path(&self, path: &Path) -> bool {
        let removed = self.slots.write().remove(path).is_some();
        if removed {
            self.changed();
            tracing::info!(source = %path.display(), "sensor removed");
        }
        removed
    }

    pub fn sources(&self) -> Vec<PathBuf> {
        self.slots.read().keys().cloned().collect()
    }

    fn record_failure(&self, slot: &Slot, failed: &Arc<LoadedSensor>, err: &CallError) {
        let mut st = slot.state.lock();
        // A failure of a version that no longer serves says nothing about the one that does.
        if !slot
            .active
            .load()
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, failed))
        {
            return;
        }
        let now = Instant::now();
        st.failures.push_back(now);
        while st
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            st.failures.pop_front();
        }
        tracing::warn!(sensor = %failed.info.name, version = %failed.info.version, error = %err, "sensor call failed");
        if st.failures.len() < self.policy.failures {
            return;
        }
        let reason = format!(
            "{} failures within {:?}; last: {err}",
            st.failures.len(),
            self.policy.window
        );
        let restored = st.previous.take();
        tracing::error!(
            sensor = %failed.info.name, version = %failed.info.version, %reason,
            restored = restored.as_ref().map(|r| r.info.version.as_str()).unwrap_or("none"),
            "sensor quarantined"
        );
        // Remember a few quarantined contents so a rescan does not retry them; bounded.
        if st.quarantined_shas.len() >= 16 {
            st.quarantined_shas.remove(0);
        }
        st.quarantined_shas.push(failed.sha256.clone());
        st.quarantined = Some(Refusal {
            sha256: failed.sha256.clone(),
            reason,
            at_unix_ms: unix_ms(SystemTime::now()),
        });
        st.state = SensorState::Quarantined;
        st.failures.clear();
        slot.active.store(restored);
        drop(st);
        self.changed();
    }

    fn active(&self) -> Vec<(Arc<Slot>, Arc<LoadedSensor>)> {
        let mut v: Vec<_> = self
            .slots
            .read()
            .values()
            .filter_map(|s| s.active.load_full().map(|a| (s.clone(), a)))
            .collect();
        v.sort_by(|a, b| a.1.info.name.cmp(&b.1.info.name));
        v
    }

    /// Asks every serving sensor, in name order; the first match wins.
    pub fn match_process(&self, process: &ProcessInfo) -> Option<(SensorRef, Match)> {
        for (slot, sensor) in self.active() {
            match sensor.match_process(&slot.stats, process) {
                Ok(Some(m)) => return Some((SensorRef(slot.source.clone()), m)),
                Ok(None) => {}
                Err(err) => self.record_failure(&slot, &sensor, &err),
            }
        }
        None
    }

    fn serving(&self, sensor: &SensorRef) -> Result<(Arc<Slot>, Arc<LoadedSensor>), RegistryError> {
        let slot = self
            .slots
            .read()
            .get(&sensor.0)
            .cloned()
            .ok_or(RegistryError::Gone)?;
        let active = slot.active.load_full().ok_or(RegistryError::NotServing)?;
        Ok((slot, active))
    }

    /// Enriches one process's spans with the sensor that matched it. Returns the version that did.
    pub fn enrich(
        &self,
        sensor: &SensorRef,
        matched: &Match,
        spans: &mut [Span],
    ) -> Result<String, RegistryError> {
        let (slot, active) = self.serving(sensor)?;
        match active.enrich(&slot.stats, matched, spans) {
            Ok(()) => Ok(active.info.version.clone()),
            Err(err) => {
                self.record_failure(&slot, &active, &err);
                Err(RegistryError::Call(err))
            }
        }
    }

    pub fn instrumentation(
        &self,
        sensor: &SensorRef,
        matched: &Match,
    ) -> Result<Vec<PythonModule>, RegistryError> {
        let (slot, active) = self.serving(sensor)?;
        active.instrumentation(&slot.stats, matched).map_err(|err| {
            self.record_failure(&slot, &active, &err);
            RegistryError::Call(err)
        })
    }

    /// The bundles a process matched by `sensor` with `matched` loads: the ones its match names
    /// (with the match's settings over the bundle's), then every serving sensor's
    /// `every-process` bundles. A 0.1 sensor has none.
    pub fn bundles_for(&self, sensor: &SensorRef, matched: &Match) -> Vec<Bundle> {
        let mut out = Vec::new();
        if let Ok((_, active)) = self.serving(sensor) {
            for choice in &matched.instrumentations {
                let Some(b) = active
                    .bundles
                    .iter()
                    .find(|b| b.name == choice.name && b.scope == BundleScope::Matched)
                else {
                    continue;
                };
                let mut b = b.clone();
                for (k, v) in &choice.settings {
                    match b.settings.iter_mut().find(|(bk, _)| bk == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => b.settings.push((k.clone(), v.clone())),
                    }
                }
                out.push(b);
            }
        }
        for (_, s) in self.active() {
            for b in s
                .bundles
                .iter()
                .filter(|b| b.scope == BundleScope::EveryProcess)
            {
                if !out.iter().any(|o| o.name == b.name) {
                    out.push(b.clone());
                }
            }
        }
        out
    }

    /// Every bundle of every serving sensor (tests and tools; processes get [`Self::bundles_for`]).
    pub fn all_bundles(&self) -> Vec<Bundle> {
        self.active()
            .into_iter()
            .flat_map(|(_, s)| s.bundles.clone())
            .collect()
    }

    /// Every serving sensor's declarative rules, by sensor name.
    pub fn rules(&self) -> Vec<(String, Rules)> {
        self.active()
            .into_iter()
            .map(|(_, s)| (s.info.name.clone(), s.rules.clone()))
            .collect()
    }

    /// The rules of the sensor behind `sensor`, if it serves.
    pub fn rules_of(&self, sensor: &SensorRef) -> Option<Rules> {
        self.serving(sensor).ok().map(|(_, a)| a.rules.clone())
    }

    pub fn status(&self) -> Vec<SensorStatus> {
        let mut out: Vec<SensorStatus> = self
            .slots
            .read()
            .values()
            .map(|slot| {
                let st = slot.state.lock();
                let serving = slot.active.load_full();
                SensorStatus {
                    name: serving
                        .as_ref()
                        .map(|s| s.info.name.clone())
                        .unwrap_or_else(|| {
                            slot.source
                                .file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        }),
                    source: slot.source.display().to_string(),
                    state: st.state,
                    serving: serving.as_ref().map(|s| VersionStatus {
                        name: s.info.name.clone(),
                        version: s.info.version.clone(),
                        contract_version: s.info.contract_version.clone(),
                        sha256: s.sha256.clone(),
                        technologies: s.info.technologies.clone(),
                        loaded_at_unix_ms: unix_ms(s.loaded_at),
                        bundles: s
                            .bundles
                            .iter()
                            .map(|b| BundleStatus {
                                name: b.name.clone(),
                                version: b.version.clone(),
                                scope: b.scope,
                                triggers: b.triggers.clone(),
                            })
                            .collect(),
                    }),
                    quarantined: st.quarantined.clone(),
                    last_refused: st.last_refused.clone(),
                    rolled_back: st.rolled_back.clone(),
                    calls: slot.stats.snapshot(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the sensor's file was removed")]
    Gone,
    #[error("no version of the sensor is serving (failed or quarantined)")]
    NotServing,
    #[error("no serving sensor is named `{0}`")]
    NoSuchSensor(String),
    #[error("sensor `{0}` has no previous version to return to")]
    NoPrevious(String),
    #[error(transparent)]
    Call(CallError),
}
