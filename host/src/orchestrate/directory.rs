//! Who each traced process is, for the pipeline: the sensor that matched it, its match, and its
//! resource. The orchestrator writes; the pipeline reads (one direction). Processes that exited
//! stay for a while, because their last spans arrive after the exit event.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::pipeline::Resource;
use crate::sensors::{Match, SensorRef};

#[derive(Debug)]
pub struct Attribution {
    pub sensor: SensorRef,
    pub matched: Match,
    pub resource: Arc<Resource>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<u32, Arc<Attribution>>,
    gone: HashMap<u32, (Instant, Arc<Attribution>)>,
}

#[derive(Clone, Default)]
pub struct ProcessDirectory {
    inner: Arc<RwLock<Inner>>,
}

const KEEP_EXITED: Duration = Duration::from_secs(120);

impl ProcessDirectory {
    pub fn insert(&self, pid: u32, a: Attribution) {
        let mut g = self.inner.write();
        g.gone.remove(&pid);
        g.live.insert(pid, Arc::new(a));
    }

    pub fn exited(&self, pid: u32) {
        let mut g = self.inner.write();
        if let Some(a) = g.live.remove(&pid) {
            g.gone.insert(pid, (Instant::now(), a));
        }
        let now = Instant::now();
        g.gone
            .retain(|_, (at, _)| now.duration_since(*at) < KEEP_EXITED);
    }

    /// The sending process's attribution, else that of the injected process it descends from
    /// (a worker forked from a traced master before discovery matched it), with its own pid.
    pub fn lookup(&self, pid: u32, root_pid: u32) -> Option<Arc<Attribution>> {
        let g = self.inner.read();
        let find = |p: u32| {
            g.live
                .get(&p)
                .or_else(|| g.gone.get(&p).map(|(_, a)| a))
                .cloned()
        };
        if let Some(a) = find(pid) {
            return Some(a);
        }
        let root = find(root_pid)?;
        let mut resource = (*root.resource).clone();
        resource.pid = pid;
        Some(Arc::new(Attribution {
            sensor: root.sensor.clone(),
            matched: root.matched.clone(),
            resource: Arc::new(resource),
        }))
    }
}
