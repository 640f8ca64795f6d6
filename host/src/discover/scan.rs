//! TEMPORARY: a plain /proc rescan feeding the orchestrator, until the discovery module with the
//! proc connector lands.
use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{python_runtime, ProcessInfo};
use crate::orchestrate::ProcessEvent;

pub fn start(every: Duration, tx: mpsc::Sender<ProcessEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut known: HashMap<u32, (u64, Vec<String>, bool)> = HashMap::new();
        let every = every.min(Duration::from_millis(300));
        loop {
            let found = tokio::task::spawn_blocking(scan).await.unwrap_or_default();
            let mut seen = HashMap::new();
            for info in found {
                let key = (info.start_time, info.cmdline.clone(), info.python.is_some());
                let ev = match known.get(&info.pid) {
                    None => Some(ProcessEvent::Appeared(info.clone())),
                    Some(k) if *k != key => Some(ProcessEvent::Changed(info.clone())),
                    _ => None,
                };
                seen.insert(info.pid, key);
                if let Some(ev) = ev {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            for (pid, (st, _, _)) in &known {
                if !seen.contains_key(pid) {
                    let _ = tx
                        .send(ProcessEvent::Exited {
                            pid: *pid,
                            start_time: *st,
                        })
                        .await;
                }
            }
            known = seen;
            tokio::time::sleep(every).await;
        }
    })
}

fn scan() -> Vec<ProcessInfo> {
    let me = std::process::id();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in all.flatten() {
        let pid = p.pid as u32;
        if pid == me {
            continue;
        }
        let Ok(stat) = p.stat() else { continue };
        let Ok(cmdline) = p.cmdline() else { continue };
        if cmdline.is_empty() {
            continue;
        }
        let python = python_runtime::detect(pid)
            .ok()
            .flatten()
            .map(|r| r.to_runtime());
        let parent_cmdline = procfs::process::Process::new(stat.ppid)
            .and_then(|pp| pp.cmdline())
            .unwrap_or_default();
        out.push(ProcessInfo {
            pid,
            start_time: stat.starttime,
            ppid: stat.ppid as u32,
            uid: p.uid().unwrap_or(0),
            exe: p.exe().map(|e| e.display().to_string()).unwrap_or_default(),
            cmdline,
            cwd: p.cwd().map(|e| e.display().to_string()).unwrap_or_default(),
            python,
            parent_cmdline,
            extra: Vec::new(),
        });
    }
    out
}
