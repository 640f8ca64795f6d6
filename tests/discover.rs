//! Discovery against real processes: pyenv CPython (shared libpython), Debian's python3.11 (API in
//! the executable), a non-Python process, a forking Python, a retitling Python (what setproctitle
//! does), exec from one interpreter into another, a reused pid, and the rescan-only mode.
//!
//! Every test starts its own `Discovery` and only looks at events for pids it started (other tests
//! run at the same time). Re-run:
//!
//! ```sh
//! cargo test -p zerostep --test discover
//! cargo test --release -p zerostep --test discover -- --ignored --nocapture bench_discovery_cost
//! ```
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use tokio::sync::mpsc::Receiver;
use zerostep::discover::{Discovery, DiscoveryConfig, DiscoveryEvent, LibPython, ProcessInfo};

const PYENV: &str = "3.12.1";

/// Sleeps forever in Python.
const SLEEPER: &str = "import time\nwhile True: time.sleep(0.2)";

struct Watch {
    discovery: Discovery,
    rx: Receiver<DiscoveryEvent>,
    seen: Vec<(u64, DiscoveryEvent)>,
    received: u64,
}

impl Watch {
    fn start(config: DiscoveryConfig) -> Watch {
        let (discovery, rx) = Discovery::start(config).expect("discovery starts");
        let mut w = Watch {
            discovery,
            rx,
            seen: Vec::new(),
            received: 0,
        };
        assert!(
            w.wait(Duration::from_secs(30), |e| matches!(
                e,
                DiscoveryEvent::InitialScanDone
            ))
            .is_some(),
            "no initial scan"
        );
        w
    }

    fn connector() -> Watch {
        let w = Watch::start(DiscoveryConfig::default());
        assert!(
            w.discovery.stats().connector_active,
            "the proc connector needs root"
        );
        w
    }

    /// The first event (already received or arriving within `timeout`) that `pred` accepts.
    fn wait(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&DiscoveryEvent) -> bool,
    ) -> Option<(u64, DiscoveryEvent)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.seen.iter().position(|(_, e)| pred(e)) {
                return Some(self.seen.remove(pos));
            }
            match self.rx.try_recv() {
                Ok(e) => self.push(e),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return None,
            }
        }
    }

    fn appeared(&mut self, pid: u32, timeout: Duration) -> Option<ProcessInfo> {
        self.info_event(pid, timeout, false)
    }

    fn changed(&mut self, pid: u32, timeout: Duration) -> Option<ProcessInfo> {
        self.info_event(pid, timeout, true)
    }

    /// The next `Appeared` (or `Changed`) of `pid`.
    fn info_event(&mut self, pid: u32, timeout: Duration, changed: bool) -> Option<ProcessInfo> {
        let pick = move |e: &DiscoveryEvent| match e {
            DiscoveryEvent::Appeared(p) if !changed => Some(p.clone()),
            DiscoveryEvent::Changed(p) if changed => Some(p.clone()),
            _ => None,
        };
        let (_, e) = self.wait(timeout, |e| pick(e).is_some_and(|p| p.pid == pid))?;
        pick(&e)
    }

    fn exited(&mut self, pid: u32, timeout: Duration) -> Option<u64> {
        match self.wait(
            timeout,
            |e| matches!(e, DiscoveryEvent::Exited { pid: p, .. } if *p == pid),
        ) {
            Some((_, DiscoveryEvent::Exited { start_time, .. })) => Some(start_time),
            _ => None,
        }
    }

    /// Keeps arrival order: the n-th event received gets n.
    fn push(&mut self, e: DiscoveryEvent) {
        self.received += 1;
        self.seen.push((self.received, e));
    }

    /// Everything received so far about `pid`.
    fn about(&mut self, pid: u32) -> Vec<DiscoveryEvent> {
        while let Ok(e) = self.rx.try_recv() {
            self.push(e);
        }
        self.seen
            .iter()
            .filter(|(_, e)| match e {
                DiscoveryEvent::Appeared(p) | DiscoveryEvent::Changed(p) => p.pid == pid,
                DiscoveryEvent::Exited { pid: p, .. } => *p == pid,
                DiscoveryEvent::InitialScanDone => false,
            })
            .map(|(_, e)| e.clone())
            .collect()
    }
}

fn python(name: &str, bin: &str, code: &str) -> Proc {
    Proc::spawn(name, Command::new(bin).args(["-c", code]))
}

fn pyenv() -> String {
    pyenv_python(PYENV).display().to_string()
}

fn start_time(pid: u32) -> u64 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map(|s| s.starttime)
        .expect("stat")
}

#[test]
fn pythons_appear_with_their_runtime_and_exit() {
    let mut w = Watch::connector();
    let before = w.discovery.stats();
    let t0 = Instant::now();
    let shared = python("pyenv-sleeper", &pyenv(), SLEEPER);
    let debian = python("debian-sleeper", DEBIAN_PYTHON, SLEEPER);
    let mut other = Proc::spawn("sleep", Command::new("sleep").arg("60"));

    let p = w
        .appeared(shared.pid(), Duration::from_secs(3))
        .expect("pyenv python appeared");
    println!("pyenv python appeared after {:?}", t0.elapsed());
    assert_eq!(p.python.as_ref().map(|r| r.version.as_str()), Some("3.12"));
    match &p.python.as_ref().expect("runtime").libpython {
        LibPython::Shared(path) => assert!(path.contains("libpython3.12"), "{path}"),
        other => panic!("pyenv 3.12 is --enable-shared: {other:?}"),
    }
    assert_eq!(p.start_time, start_time(shared.pid()));
    assert_eq!(p.ppid, std::process::id());
    assert_eq!(p.cmdline[0], pyenv());
    assert!(p.exe.ends_with("python3.12"), "{}", p.exe);
    assert!(!p.namespaces.is_foreign());
    assert!(!p.parent_cmdline.is_empty());

    let d = w
        .appeared(debian.pid(), Duration::from_secs(3))
        .expect("debian python appeared");
    let rt = d.python.expect("runtime");
    assert_eq!(rt.version, "3.11");
    assert_eq!(rt.libpython, LibPython::LinkedIntoExecutable);

    assert!(w.discovery.snapshot().iter().any(|p| p.pid == shared.pid()));
    // Not Python: never reported.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        w.about(other.pid()).is_empty(),
        "{:?}",
        w.about(other.pid())
    );
    other.stop(Duration::from_secs(1));

    let (pid, st) = (shared.pid(), p.start_time);
    drop(shared);
    assert_eq!(w.exited(pid, Duration::from_secs(3)), Some(st));
    assert!(!w.discovery.snapshot().iter().any(|p| p.pid == pid));
    let after = w.discovery.stats();
    println!("stats delta: {before:?} -> {after:?}");
    assert!(after.connector_events > before.connector_events);
}

#[test]
fn forked_child_inherits_the_runtime() {
    let mut w = Watch::connector();
    let parent = python(
        "forker",
        &pyenv(),
        "import os, time\ntime.sleep(0.5)\npid = os.fork()\nwhile True: time.sleep(0.2)",
    );
    let p = w
        .appeared(parent.pid(), Duration::from_secs(3))
        .expect("parent");
    let inherited_before = w.discovery.stats().inherited;
    let child = w
        .wait(
            Duration::from_secs(5),
            |e| matches!(e, DiscoveryEvent::Appeared(c) if c.ppid == parent.pid()),
        )
        .map(|(_, e)| e);
    let Some(DiscoveryEvent::Appeared(c)) = child else {
        panic!("child not reported: {:?}", w.seen);
    };
    assert_ne!(c.pid, parent.pid());
    assert_eq!(c.python, p.python);
    assert_eq!(c.parent_cmdline, p.cmdline);
    assert_eq!(c.start_time, start_time(c.pid));
    assert!(w.discovery.stats().inherited > inherited_before);
}

/// What setproctitle does: overwrite the argv area in place, and set comm with prctl.
const RETITLE: &str = r#"
import ctypes, time
time.sleep(0.5)
f = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
start, end = int(f[45]), int(f[46])
title = b"zerostep-retitled"
buf = title + b"\0" * (end - start - len(title))
ctypes.memmove(start, buf, len(buf))
ctypes.CDLL(None).prctl(15, b"zs-retitled", 0, 0, 0)
while True: time.sleep(0.2)
"#;

#[test]
fn retitled_process_is_changed() {
    let rescan_only = DiscoveryConfig {
        use_connector: false,
        rescan_interval: Duration::from_millis(300),
        ..Default::default()
    };
    // Through the connector's comm event, and through rescans alone.
    for config in [DiscoveryConfig::default(), rescan_only] {
        let mut w = Watch::start(config);
        let p = python("retitle", &pyenv(), RETITLE);
        w.appeared(p.pid(), Duration::from_secs(3))
            .expect("appeared");
        let c = w
            .changed(p.pid(), Duration::from_secs(8))
            .expect("retitle seen");
        assert_eq!(c.cmdline[0], "zerostep-retitled", "{:?}", c.cmdline);
        assert_eq!(c.python.as_ref().map(|r| r.version.as_str()), Some("3.12"));
    }
}

#[test]
fn exec_into_another_python_is_exit_then_appear() {
    let mut w = Watch::connector();
    let code = format!(
        "import os, time\ntime.sleep(0.5)\nos.execv({DEBIAN_PYTHON:?}, [{DEBIAN_PYTHON:?}, '-c', {SLEEPER:?}])"
    );
    let p = python("execer", &pyenv(), &code);
    let first = w
        .appeared(p.pid(), Duration::from_secs(3))
        .expect("first image");
    assert_eq!(
        first.python.as_ref().map(|r| r.version.as_str()),
        Some("3.12")
    );
    assert_eq!(
        w.exited(p.pid(), Duration::from_secs(5)),
        Some(first.start_time)
    );
    // Under CPU load the tracker has been seen to report the first image once more (an extra
    // Exited + Appeared before the real exec; open, see the issue note): wait for the new image.
    let pid = p.pid();
    let (_, second) = w
        .wait(Duration::from_secs(8), |e| {
            matches!(e, DiscoveryEvent::Appeared(i)
                if i.pid == pid && i.python.as_ref().is_some_and(|r| r.version == "3.11"))
        })
        .unwrap_or_else(|| panic!("second image: {:#?}", w.about(pid)));
    let DiscoveryEvent::Appeared(second) = second else {
        unreachable!("matched Appeared")
    };
    assert_eq!(
        second.start_time, first.start_time,
        "same process, new image"
    );
}

#[test]
fn rescan_only_finds_processes_and_forks() {
    let mut w = Watch::start(DiscoveryConfig {
        use_connector: false,
        rescan_interval: Duration::from_millis(300),
        ..Default::default()
    });
    assert!(!w.discovery.stats().connector_active);
    let parent = python(
        "rescan-forker",
        &pyenv(),
        "import os, time\ntime.sleep(1)\nos.fork()\nwhile True: time.sleep(0.2)",
    );
    let p = w
        .appeared(parent.pid(), Duration::from_secs(5))
        .expect("found by rescan");
    assert_eq!(p.python.as_ref().map(|r| r.version.as_str()), Some("3.12"));
    let child = w.wait(
        Duration::from_secs(5),
        |e| matches!(e, DiscoveryEvent::Appeared(c) if c.ppid == parent.pid()),
    );
    assert!(child.is_some(), "fork found by rescan");
    assert!(w.discovery.stats().inherited >= 1);
    let pid = parent.pid();
    drop(parent);
    assert!(w.exited(pid, Duration::from_secs(5)).is_some());
    let s = w.discovery.stats();
    assert_eq!(s.connector_events, 0);
    assert!(s.rescans >= 3, "{s:?}");
}

/// A pid that ends and is handed to a new process between two rescans is two processes: the old
/// one exits, the new one appears, told apart by start time.
#[test]
fn reused_pid_is_a_new_process() {
    let mut w = Watch::start(DiscoveryConfig {
        use_connector: false,
        rescan_interval: Duration::from_secs(2),
        ..Default::default()
    });
    let mut old = python("reuse-old", &pyenv(), SLEEPER);
    let pid = old.pid();
    let first = w.appeared(pid, Duration::from_secs(5)).expect("old");
    old.stop(Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(30));
    // Ask the kernel for the same pid again (other builders fork too, so retry a few times). A
    // Python helper writes ns_last_pid and forks at once: a std::process spawn from this
    // multi-threaded test process did not land on the cursor.
    let helper = format!(
        "import subprocess, sys\n\
         for _ in range(50):\n\
         \x20   open('/proc/sys/kernel/ns_last_pid', 'w').write('{}')\n\
         \x20   p = subprocess.Popen([{:?}, '-c', {SLEEPER:?}])\n\
         \x20   if p.pid == {pid}: break\n\
         \x20   p.kill(); p.wait()\n\
         print(p.pid, flush=True)\n\
         p.wait()",
        pid - 1,
        pyenv(),
    );
    let out = tempfile::NamedTempFile::new().expect("tempfile");
    let _new = Proc::spawn(
        "reuse-new",
        Command::new(pyenv())
            .args(["-c", &helper])
            .stdout(out.reopen().expect("reopen")),
    );
    let mut got = String::new();
    wait_until(Duration::from_secs(10), || {
        got = std::fs::read_to_string(out.path()).unwrap_or_default();
        !got.is_empty()
    });
    if got.trim() != pid.to_string() {
        println!("could not get pid {pid} again (got {got:?}); skipped");
        return;
    }
    let (n_exit, _) = w
        .wait(Duration::from_secs(6), |e| {
            *e == DiscoveryEvent::Exited {
                pid,
                start_time: first.start_time,
            }
        })
        .expect("the old process exited");
    let (n_new, second) = w
        .wait(
            Duration::from_secs(6),
            |e| matches!(e, DiscoveryEvent::Appeared(p) if p.pid == pid),
        )
        .expect("the new process appeared");
    let DiscoveryEvent::Appeared(second) = second else {
        unreachable!()
    };
    assert!(second.start_time > first.start_time);
    assert!(n_exit < n_new, "exit of the old one first");
}

/// uWSGI is its own executable with libpython loaded, and forks its workers right after: the master
/// and every worker are reported, by what is mapped and not by the executable's name.
#[test]
fn uwsgi_master_and_workers_appear() {
    let mut w = Watch::connector();
    let port = free_port();
    let master = Proc::spawn(
        "uwsgi",
        Command::new(venv_bin("inject-uwsgi", "uwsgi"))
            .current_dir(repo_root().join("tests/fixtures/inject"))
            .args([
                "--http-socket",
                &format!("127.0.0.1:{port}"),
                "--master",
                "--processes",
                "2",
                "--wsgi-file",
                "app.py",
                "--die-on-term",
                "--disable-logging",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let m = w
        .appeared(master.pid(), Duration::from_secs(10))
        .expect("uwsgi master");
    assert!(m.exe.ends_with("uwsgi"), "{}", m.exe);
    assert!(matches!(
        m.python.as_ref().map(|r| &r.libpython),
        Some(LibPython::Shared(_))
    ));
    for _ in 0..2 {
        let worker = w.wait(
            Duration::from_secs(10),
            |e| matches!(e, DiscoveryEvent::Appeared(p) if p.ppid == master.pid()),
        );
        let Some((_, DiscoveryEvent::Appeared(worker))) = worker else {
            panic!("uwsgi worker not reported: {:?}", w.about(master.pid()));
        };
        assert_eq!(worker.python, m.python);
    }
}

/// A kernel buffer far too small for a fork burst: the kernel drops connector events (ENOBUFS),
/// discovery rescans, and ends up knowing exactly the live Python processes all the same.
#[test]
fn connector_overrun_is_repaired_by_a_rescan() {
    let mut w = Watch::start(DiscoveryConfig {
        connector_buffer_bytes: 1,
        ..Default::default()
    });
    let burst = python(
        "fork-burst",
        &pyenv(),
        "import os, time\n\
         time.sleep(0.5)\n\
         kids = []\n\
         for _ in range(1500):\n\
         \x20   pid = os.fork()\n\
         \x20   if pid == 0: os._exit(0)\n\
         \x20   kids.append(pid)\n\
         for k in kids: os.waitpid(k, 0)\n\
         print('done', flush=True)\n\
         while True: time.sleep(0.2)",
    );
    w.appeared(burst.pid(), Duration::from_secs(3))
        .expect("burst parent");
    // Started during the burst: found by events or by the repair rescan.
    std::thread::sleep(Duration::from_millis(600));
    let late = python("late-sleeper", &pyenv(), SLEEPER);
    w.appeared(late.pid(), Duration::from_secs(8))
        .expect("a process started during the burst");
    let only_live = wait_until(Duration::from_secs(15), || {
        let _ = w.about(0);
        w.discovery
            .snapshot()
            .iter()
            .filter(|p| p.ppid == burst.pid())
            .all(|p| std::path::Path::new(&format!("/proc/{}", p.pid)).exists())
    });
    let s = w.discovery.stats();
    println!("overrun test: {s:?}");
    assert!(only_live, "every burst child reported exited: {s:?}");
}

/// Costs with many idle processes: discovery thread CPU and maps reads per rescan on a steady host.
#[test]
#[ignore]
fn bench_discovery_cost() {
    let n_sleep = 300;
    let n_py = 20;
    let mut procs = Vec::new();
    for i in 0..n_sleep {
        procs.push(Proc::spawn(
            &format!("sleep{i}"),
            Command::new("sleep").arg("120"),
        ));
    }
    for i in 0..n_py {
        procs.push(python(&format!("py{i}"), &pyenv(), SLEEPER));
    }
    std::thread::sleep(Duration::from_secs(1));
    for (label, use_connector) in [("connector+rescan", true), ("rescan-only", false)] {
        let interval = Duration::from_secs(1);
        let mut w = Watch::start(DiscoveryConfig {
            use_connector,
            rescan_interval: interval,
            ..Default::default()
        });
        let s0 = w.discovery.stats();
        let cpu0 = discover_thread_cpu();
        let secs = 20;
        std::thread::sleep(Duration::from_secs(secs));
        let s1 = w.discovery.stats();
        let cpu1 = discover_thread_cpu();
        let _ = w.about(0);
        let procs_total = procfs::process::all_processes()
            .map(|a| a.count())
            .unwrap_or(0);
        println!(
            "{label}: host processes {procs_total}, python tracked {}, initial scan {} us; over {secs} s: \
             rescans {}, last rescan {} us, new processes examined {}, maps reads {} ({:.2}/rescan), connector events {}, \
             discovery thread CPU {:.1} ms ({:.3} % of one core)",
            s1.tracked_python,
            s0.last_rescan_us,
            s1.rescans - s0.rescans,
            s1.last_rescan_us,
            s1.examined - s0.examined,
            s1.maps_reads - s0.maps_reads,
            (s1.maps_reads - s0.maps_reads) as f64 / (s1.rescans - s0.rescans).max(1) as f64,
            s1.connector_events - s0.connector_events,
            (cpu1 - cpu0) * 1000.0,
            (cpu1 - cpu0) / secs as f64 * 100.0,
        );
    }
}

/// CPU seconds of this process's `zerostep-discover` threads (all of them, live ones).
fn discover_thread_cpu() -> f64 {
    let me = procfs::process::Process::myself().expect("self");
    let tps = procfs::ticks_per_second() as f64;
    me.tasks()
        .expect("tasks")
        .flatten()
        .filter_map(|t| t.stat().ok())
        .filter(|s| s.comm.starts_with("zerostep-discov"))
        .map(|s| (s.utime + s.stime) as f64 / tps)
        .sum()
}
