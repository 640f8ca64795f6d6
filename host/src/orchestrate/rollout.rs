//! Bundle changes reach running processes in two steps: one process per service first (the
//! canary), watched for a bounded time, then the rest. A canary that regresses — its tracer
//! refused the new bundle, one of its instrumentations' breakers tripped, or it disconnected —
//! rolls the sensor back by itself (`SensorRegistry::rollback_because`), which sends every
//! process the previous bundles again; the others never ran the bad version.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::Value;

use super::Core;
use crate::intake::Command;
use crate::sensors::Role;

/// Bundles that differ in one process: name → (its sensor, the version the sensors now give).
pub(super) type Changed = BTreeMap<String, (String, String)>;

pub(super) struct Rollout {
    /// pid → the breakers already tripped before (not a regression of this rollout).
    canaries: HashMap<u32, HashSet<String>>,
    rest: Vec<u32>,
    started: Instant,
    /// The bundles that changed: name → (its sensor, the version being rolled out).
    owners: Changed,
}

/// What a tracer's status says is loaded: bundle name → version (active ones).
pub(super) fn loaded_bundles(status: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(b)) = status.and_then(|s| s.get("bundles")) {
        for (name, v) in b {
            if v["state"] == "active" {
                out.insert(
                    name.clone(),
                    v["version"].as_str().unwrap_or("").to_string(),
                );
            }
        }
    }
    out
}

fn tripped(status: Option<&Value>) -> HashSet<String> {
    let mut out = HashSet::new();
    if let Some(Value::Object(i)) = status.and_then(|s| s.get("instrumentations")) {
        for (name, v) in i {
            if v["tripped"] == true {
                out.insert(name.clone());
            }
        }
    }
    out
}

impl Core {
    /// `changed`: traced, connected pids whose loaded bundles differ from what the sensors now
    /// say, with the sensors owning the differing bundles.
    pub(super) fn start_rollout(&mut self, changed: Vec<(u32, Changed)>) {
        // A change that is itself a rollback goes everywhere at once (nothing to watch for).
        let immediate = std::mem::take(&mut self.rolling_back);
        if changed.is_empty() {
            return;
        }
        let statuses: HashMap<u32, Option<Value>> = self
            .intake
            .peers()
            .into_iter()
            .map(|p| (p.pid, p.status))
            .collect();
        let mut owners = BTreeMap::new();
        // One canary per service: a process that serves requests (a worker, or standalone).
        let mut by_service: BTreeMap<String, Vec<(bool, u32)>> = BTreeMap::new();
        for (pid, o) in &changed {
            owners.extend(o.clone());
            let Some(t) = self.procs.get(pid) else {
                continue;
            };
            let Some((_, m)) = &t.matched else { continue };
            by_service
                .entry(m.service_name.clone())
                .or_default()
                .push((m.role == Role::Master, *pid));
        }
        let mut canaries = HashMap::new();
        for pids in by_service.values_mut() {
            pids.sort();
            if let Some((_, pid)) = pids.first() {
                let before = tripped(statuses.get(pid).and_then(Option::as_ref));
                canaries.insert(*pid, before);
            }
        }
        let rest: Vec<u32> = changed
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !canaries.contains_key(p))
            .collect();
        if immediate {
            for (pid, _) in &changed {
                self.send_bundles(*pid);
            }
            return;
        }
        for pid in canaries.keys() {
            self.send_bundles(*pid);
        }
        tracing::info!(canaries = ?canaries.keys().collect::<Vec<_>>(), rest = rest.len(), bundles = ?owners, "bundle rollout: canaries first");
        self.rollout = Some(Rollout {
            canaries,
            rest,
            started: Instant::now(),
            owners,
        });
    }

    pub(super) fn send_bundles(&self, pid: u32) {
        if let Err(e) = self.intake.send(pid, &Command::Bundles) {
            tracing::warn!(pid, error = %e, "bundles not sent");
        }
    }

    /// On every tick: once the canaries were watched long enough, the rest or a rollback.
    pub(super) fn advance_rollout(&mut self) {
        let Some(r) = &self.rollout else { return };
        let peers: HashMap<u32, Option<Value>> = self
            .intake
            .peers()
            .into_iter()
            .map(|p| (p.pid, p.status))
            .collect();
        let mut regression = None;
        let mut applied = true;
        for (pid, before) in &r.canaries {
            let alive = super::current_start_time(*pid).is_some();
            let Some(status) = peers.get(pid) else {
                if alive {
                    regression = Some(format!("canary pid {pid} lost its tracer"));
                }
                continue;
            };
            let status = status.as_ref();
            let bundles = status.and_then(|s| s.get("bundles"));
            for (name, (_, version)) in &r.owners {
                let v = bundles.and_then(|b| b.get(name));
                let refused = v.is_some_and(|v| {
                    (v["state"] == "refused" && v["version"] == version.as_str())
                        || v["reason"]
                            .as_str()
                            .is_some_and(|s| s.contains(&format!("version {version} refused")))
                });
                if refused {
                    regression = Some(format!(
                        "canary pid {pid}: bundle {name} {version}: {}",
                        v.and_then(|v| v["reason"].as_str()).unwrap_or("refused")
                    ));
                } else if !v.is_some_and(|v| v["version"] == version.as_str()) {
                    applied = false; // its status does not show the new version yet
                }
            }
            let now = tripped(status);
            if let Some(name) = now.difference(before).next() {
                regression = Some(format!("canary pid {pid}: the {name} breaker tripped"));
            }
        }
        if regression.is_none() && !applied && r.started.elapsed() > self.cfg.canary_watch * 5 {
            regression = Some("the canary did not report the new bundles in time".to_string());
        }
        if let Some(reason) = regression {
            let sensors: HashSet<String> = r.owners.values().map(|(s, _)| s.clone()).collect();
            self.rollout = None;
            for sensor in sensors {
                match self.sensors.rollback_because(&sensor, &reason) {
                    Ok((from, to)) => {
                        tracing::warn!(%sensor, %from, %to, %reason, "rolled back automatically");
                        self.rolling_back = true;
                    }
                    Err(e) => {
                        tracing::warn!(%sensor, %reason, error = %e, "regression, and no version to roll back to")
                    }
                }
            }
            return;
        }
        if !applied || r.started.elapsed() < self.cfg.canary_watch {
            return;
        }
        let rest = r.rest.clone();
        self.rollout = None;
        tracing::info!(
            processes = rest.len(),
            "bundle rollout: canaries healthy, the rest now"
        );
        for pid in rest {
            self.send_bundles(pid);
        }
    }
}
