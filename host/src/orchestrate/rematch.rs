//! Processes already seen, re-evaluated when the serving sensors change (a sensor added, replaced,
//! quarantined or removed): a process no sensor matched is considered again (so a sensor dropped
//! after its process started traces it), a traced process whose sensor no longer matches it is
//! detached cleanly (it keeps serving, untraced), and every traced process is sent its current
//! bundles (the tracer loads new and changed ones in place and keeps the unchanged).
use crate::intake::Command;

use super::{Attribution, Core, State};

/// Why a process was not traced: no sensor (then) recognised it.
pub(super) const NO_SENSOR_MATCHED: &str = "no sensor matched";
/// A traced process whose sensor went away or stopped recognising it.
pub(super) const SENSOR_GONE: &str = "its sensor no longer matches it (detached)";

impl Core {
    /// Runs on the orchestrator's tick; cheap when nothing changed.
    pub(super) fn rematch_if_sensors_changed(&mut self) {
        let generation = self.sensors.generation();
        if generation == self.sensors_generation {
            return;
        }
        self.sensors_generation = generation;
        self.rematch();
    }

    fn rematch(&mut self) {
        let peers = self.intake.peers();
        let connected: std::collections::HashSet<u32> = peers.iter().map(|p| p.pid).collect();
        let loaded: std::collections::HashMap<u32, _> = peers
            .iter()
            .map(|p| (p.pid, super::rollout::loaded_bundles(p.status.as_ref())))
            .collect();
        let mut changed = Vec::new();
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        let (mut reconsidered, mut detached, mut updated) = (0, 0, 0);
        for pid in pids {
            let Some(t) = self.procs.get(&pid) else {
                continue;
            };
            match &t.state {
                State::Excluded(r) if r == NO_SENSOR_MATCHED || r == SENSOR_GONE => {
                    let info = t.info.clone();
                    self.procs.remove(&pid);
                    self.consider(info);
                    reconsidered += 1;
                }
                State::Excluded(_) | State::Seen => {}
                _ => {
                    let now = self.sensors.match_process(&t.info);
                    let Some(t) = self.procs.get_mut(&pid) else {
                        continue;
                    };
                    match now {
                        None => {
                            t.state = State::Excluded(SENSOR_GONE.into());
                            t.due = None;
                            t.matched = None;
                            if connected.contains(&pid) {
                                if let Err(e) = self.intake.send(pid, &Command::Detach) {
                                    tracing::warn!(pid, error = %e, "detach not sent");
                                }
                            }
                            detached += 1;
                        }
                        Some((sensor, m)) => {
                            let want = connected
                                .contains(&pid)
                                .then(|| self.sensors.bundles_for(&sensor, &m));
                            if t.matched.as_ref() != Some(&(sensor.clone(), m.clone())) {
                                self.directory.insert(
                                    pid,
                                    Attribution {
                                        sensor: sensor.clone(),
                                        resource: std::sync::Arc::new(super::resource(
                                            &t.info,
                                            &m,
                                            &self.cfg.host_name,
                                        )),
                                        matched: m.clone(),
                                    },
                                );
                                t.matched = Some((sensor, m));
                            }
                            if let Some(want) = want {
                                // What the sensors now say against what the tracer runs; the
                                // differing bundles' sensors, for a rollback.
                                let have = loaded.get(&pid).cloned().unwrap_or_default();
                                let mut owners = std::collections::BTreeMap::new();
                                for b in &want {
                                    if have.get(&b.name) != Some(&b.version) {
                                        owners.insert(
                                            b.name.clone(),
                                            (b.sensor.clone(), b.version.clone()),
                                        );
                                    }
                                }
                                let removed =
                                    have.keys().any(|n| !want.iter().any(|b| &b.name == n));
                                if !owners.is_empty() || removed {
                                    changed.push((pid, owners));
                                    updated += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        self.start_rollout(changed);
        tracing::info!(
            reconsidered,
            detached,
            bundles_changed = updated,
            "sensors changed: processes re-evaluated"
        );
    }
}
