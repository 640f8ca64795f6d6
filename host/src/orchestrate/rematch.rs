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
        let connected: std::collections::HashSet<u32> =
            self.intake.peers().iter().map(|p| p.pid).collect();
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
                            if connected.contains(&pid) {
                                // Idempotent in the tracer: unchanged bundles stay as they are.
                                match self.intake.send(pid, &Command::Bundles) {
                                    Ok(()) => updated += 1,
                                    Err(e) => {
                                        tracing::warn!(pid, error = %e, "bundles not sent")
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        tracing::info!(
            reconsidered,
            detached,
            bundles_sent = updated,
            "sensors changed: processes re-evaluated"
        );
    }
}
