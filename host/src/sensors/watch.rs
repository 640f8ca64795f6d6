//! Keeps the registry in step with the sensors directory: file events (debounced, so a file still
//! being written is read once it settles) plus a periodic rescan in case an event was missed.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::registry::SensorRegistry;

/// How long a file must be quiet before it is loaded.
const SETTLE: Duration = Duration::from_millis(150);
const RESCAN: Duration = Duration::from_secs(10);

pub fn is_sensor_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

/// Brings the registry in line with the directory: loads new and changed files, drops removed ones.
pub fn sync_dir(registry: &SensorRegistry, dir: &Path) -> std::io::Result<()> {
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_sensor_file(&path) && path.is_file() {
            present.insert(path);
        }
    }
    for path in &present {
        registry.load_path(path);
    }
    for known in registry.sources() {
        if known.parent() == Some(dir) && !present.contains(&known) {
            registry.remove_path(&known);
        }
    }
    Ok(())
}

pub struct DirWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loads the directory now, then watches it until the returned handle is dropped.
pub fn watch_dir(registry: Arc<SensorRegistry>, dir: &Path) -> anyhow::Result<DirWatch> {
    let dir = std::fs::canonicalize(dir)?;
    sync_dir(&registry, &dir)?;
    let (tx, rx) = mpsc::channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                for p in event.paths {
                    let _ = tx.send(p);
                }
            }
            Err(err) => tracing::warn!(error = %err, "sensors directory watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new().name("sensor-watch".into()).spawn(move || {
        let mut pending: BTreeSet<PathBuf> = BTreeSet::new();
        let mut last_event = Instant::now();
        let mut last_scan = Instant::now();
        while !stop_flag.load(Ordering::Acquire) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(path) => {
                    if is_sensor_file(&path) {
                        pending.insert(path);
                        last_event = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !pending.is_empty() && last_event.elapsed() >= SETTLE {
                for path in std::mem::take(&mut pending) {
                    if path.is_file() {
                        registry.load_path(&path);
                    } else {
                        registry.remove_path(&path);
                    }
                }
            }
            if last_scan.elapsed() >= RESCAN {
                last_scan = Instant::now();
                if let Err(err) = sync_dir(&registry, &dir) {
                    tracing::warn!(dir = %dir.display(), error = %err, "sensors directory rescan failed");
                }
            }
        }
    })?;
    Ok(DirWatch {
        stop,
        thread: Some(thread),
        _watcher: watcher,
    })
}
