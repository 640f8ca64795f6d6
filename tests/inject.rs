//! The native injector against real interpreters and servers: every pyenv CPython 3.8–3.13 and Debian's
//! python3.11 in each wait state, gunicorn (sync, gthread; masters and workers), uWSGI 2.0.31, the
//! refusals, a stress run under load and SIGKILLs of the injector mid-injection.
//!
//! Only processes started here are ever injected into; each runs in its own process group that is
//! killed when the test ends. The full-size stress (200 injections) and kill test (100 trials) are
//! `#[ignore]`d and run by `bench/30-inject.sh`; `make test` runs smaller counts. Re-run by hand:
//!
//! ```sh
//! cargo test -p zerostep --test inject                                   # the suite (about a minute)
//! cargo test -p zerostep --test inject -- --ignored --nocapture kill_injector_full
//! cargo test -p zerostep --test inject -- --ignored --nocapture stress_full
//! cargo test --release -p zerostep --test inject -- --ignored --nocapture bench_stop_times
//! ```
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/inject").join(name)
}

/// Where a target's files are: a temp dir on the host, or one inside the sid root.
enum Files {
    Host(tempfile::TempDir),
    Sid(SidDir),
}

impl Files {
    fn path(&self) -> &Path {
        match self {
            Files::Host(d) => d.path(),
            Files::Sid(d) => d.path(),
        }
    }
    /// The directory as the target sees it.
    fn inside(&self) -> PathBuf {
        match self {
            Files::Host(d) => d.path().to_path_buf(),
            Files::Sid(d) => d.inside.clone(),
        }
    }
}

/// A started target with its output files.
struct Target {
    proc: Proc,
    dir: Files,
    port: Option<u16>,
}

impl Target {
    fn pid(&self) -> u32 {
        self.proc.pid()
    }
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default()
    }
    fn beats(&self) -> usize {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with("beat"))
            .count()
    }
    fn ran_file(&self) -> PathBuf {
        self.dir.path().join("ran")
    }
    /// The `ran` file as the target sees it (for the injected code).
    fn ran_inside(&self) -> PathBuf {
        self.dir.inside().join("ran")
    }
    fn ran_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.ran_file())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn start_target(python: &Path, scenario: &str) -> Target {
    let dir = Files::Host(tempfile::tempdir().expect("tempdir"));
    let mut cmd = Command::new(python);
    cmd.arg(fixture("target.py"));
    spawn_target(cmd, dir, &python.display().to_string(), scenario)
}

/// `python` (a path inside the sid root) chroot'ed into it, as `nobody`, with `extra` arguments
/// before the script.
fn start_sid_target(python: &str, extra: &[&str], scenario: &str) -> Target {
    let dir = SidDir::new();
    let script = dir.copy_in(&fixture("target.py"));
    let mut cmd = sid_command(python);
    cmd.args(extra).arg(script);
    spawn_target(cmd, Files::Sid(dir), python, scenario)
}

fn spawn_target(mut cmd: Command, dir: Files, python: &str, scenario: &str) -> Target {
    let port = (scenario == "accept").then(free_port);
    cmd.arg(scenario);
    if let Some(p) = port {
        cmd.arg(p.to_string());
    }
    cmd.stdout(std::fs::File::create(dir.path().join("out")).expect("out"));
    cmd.stderr(std::fs::File::create(dir.path().join("err")).expect("err"));
    let proc = Proc::spawn(&format!("{scenario} {python}"), &mut cmd);
    let t = Target { proc, dir, port };
    assert!(
        wait_until(Duration::from_secs(10), || t.beats() >= 1),
        "{scenario}: target never started: {}",
        t.stderr()
    );
    // Let the main thread settle into its wait.
    std::thread::sleep(Duration::from_millis(100));
    t
}

/// Runs `zerostep inject --json`; returns (exit code, parsed JSON).
fn inject_cli(pid: u32, code: &str, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(zerostep_bin())
        .args([
            "inject",
            "--json",
            "--pid",
            &pid.to_string(),
            "--code",
            code,
        ])
        .args(extra)
        .env(
            "ZEROSTEP_LOG",
            std::env::var("ZEROSTEP_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .output()
        .expect("run zerostep inject");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "zerostep inject --pid {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bad JSON {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Anonymous rwx mappings (the injector's scratch pages are the only ones these targets have).
fn rwx_anon_mappings(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1] == "rwxp"
        })
        .count()
}

/// Everything the issue demands of a target after an injection.
fn assert_clean(pid: u32, what: &str) {
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "{what}: pid {pid} is gone"
    );
    assert_eq!(status_field(pid, "TracerPid:"), "0", "{what}: still traced");
    assert_eq!(
        status_field(pid, "SigPnd:"),
        "0000000000000000",
        "{what}: pending thread signal"
    );
    assert_eq!(
        status_field(pid, "ShdPnd:"),
        "0000000000000000",
        "{what}: pending process signal"
    );
    assert_eq!(
        rwx_anon_mappings(pid),
        0,
        "{what}: scratch mapping left in /proc/{pid}/maps"
    );
}

/// The mode each scenario must get; `threads` may catch its main thread taking the GIL back after a
/// wait (a completed futex call), where only the pending call is safe.
fn expect_mode(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "busy" | "gil" => &["pending"],
        "threads" => &["direct", "pending"],
        _ => &["direct"],
    }
}

fn tcp_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = String::new();
    s.read_to_string(&mut b).is_ok() && b == "ok"
}

const SCENARIOS: &[&str] = &[
    "select", "epoll", "sleep", "accept", "busy", "gil", "threads",
];

fn run_scenarios(python: &Path) -> Vec<(String, String, u64)> {
    let start = |scenario: &str| start_target(python, scenario);
    scenarios_with(&python.display().to_string(), &start)
}

/// Every scenario with a CPython of the sid root (chroot'ed, as `nobody`); nothing may appear in
/// the root's /tmp but the test's own directories.
fn run_sid_scenarios(python: &str) -> Vec<(String, String, u64)> {
    let start = |scenario: &str| start_sid_target(python, &[], scenario);
    let stops = scenarios_with(&format!("sid {python}"), &start);
    assert_eq!(
        sid_tmp_strays(),
        Vec::<String>::new(),
        "written into the root"
    );
    stops
}

fn scenarios_with(label: &str, start: &dyn Fn(&str) -> Target) -> Vec<(String, String, u64)> {
    let mut stops = Vec::new();
    for scenario in SCENARIOS {
        let t = start(scenario);
        let pid = t.pid();
        let what = format!("{label} {scenario}");
        let code = format!(
            "import os\nwith open({:?}, 'a') as f:\n    f.write('ran %d\\n' % os.getpid())\n",
            t.ran_inside()
        );
        let (rc, v) = inject_cli(pid, &code, &[]);
        assert_eq!(rc, 0, "{what}: {v}");
        // A waiting thread wakes every 200 ms to beat; an interrupt landing in that moment finds
        // it running Python and rightly goes the pending way, which the report must say.
        let caught_awake = v["mode"] == "pending" && v["thread_state"] == "running user code";
        assert!(
            expect_mode(scenario).contains(&v["mode"].as_str().unwrap_or("")) || caught_awake,
            "{what}: {v}"
        );
        assert_eq!(v["confirmed"], true, "{what}: {v}");
        assert_eq!(v["runs"], 1, "{what}: {v}");
        assert_eq!(v["scratch_released"], true, "{what}: {v}");
        assert_eq!(
            t.ran_lines(),
            vec![format!("ran {pid}")],
            "{what}: ran exactly once in the target"
        );
        // The same injection again: recognised, not run twice.
        let (rc, v2) = inject_cli(pid, &code, &[]);
        assert_eq!(rc, 0, "{what}: {v2}");
        assert_eq!(v2["already_present"], true, "{what}: {v2}");
        assert_eq!(
            t.ran_lines().len(),
            1,
            "{what}: second injection ran the code again"
        );
        // Keeps working.
        let before = t.beats();
        if let Some(port) = t.port {
            for _ in 0..3 {
                assert!(tcp_ok(port), "{what}: stopped serving");
            }
        }
        assert!(
            wait_until(Duration::from_secs(5), || t.beats() > before + 1),
            "{what}: no progress after injection"
        );
        assert_clean(pid, &what);
        assert_eq!(t.stderr(), "", "{what}: target wrote errors");
        stops.push((
            scenario.to_string(),
            v["mode"].as_str().unwrap_or("").to_string(),
            v["stop_time"].as_u64().unwrap_or(0),
        ));
    }
    stops
}

fn pyenv(version: &str) -> PathBuf {
    let p = pyenv_python(version);
    assert!(p.exists(), "{} missing (pyenv {version})", p.display());
    p
}

#[test]
fn cpython_3_8() {
    run_scenarios(&pyenv("3.8.18"));
}
#[test]
fn cpython_3_9() {
    run_scenarios(&pyenv("3.9.18"));
}
#[test]
fn cpython_3_10() {
    run_scenarios(&pyenv("3.10.13"));
}
#[test]
fn cpython_3_11() {
    run_scenarios(&pyenv("3.11.7"));
}
#[test]
fn cpython_3_12() {
    run_scenarios(&pyenv("3.12.1"));
}
#[test]
fn cpython_3_13() {
    run_scenarios(&pyenv("3.13.0"));
}
#[test]
fn debian_python_3_11_stripped_non_pie() {
    run_scenarios(Path::new(DEBIAN_PYTHON));
}
// CPython 3.14 and 3.15 as Debian sid ships them: `pythonX.Y` is the non-PIE build (package
// `-nopie`), `pythonX.Y-pie` the PIE one; libpython linked into the executable in both.
#[test]
fn cpython_3_14_sid_chroot() {
    run_sid_scenarios("/usr/bin/python3.14");
}
#[test]
fn cpython_3_14_sid_chroot_pie() {
    run_sid_scenarios("/usr/bin/python3.14-pie");
}
#[test]
fn cpython_3_15_sid_chroot() {
    run_sid_scenarios("/usr/bin/python3.15");
}
#[test]
fn cpython_3_15_sid_chroot_pie() {
    run_sid_scenarios("/usr/bin/python3.15-pie");
}

// ---- servers ----

struct Server {
    proc: Proc,
    dir: Files,
    port: u16,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
    fn master(&self) -> u32 {
        self.proc.pid()
    }
    fn workers(&self) -> Vec<u32> {
        children(self.master())
    }
}

fn start_gunicorn(worker_class: &str, workers: usize) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut cmd = Command::new(venv_bin("inject-gunicorn", "gunicorn"));
    cmd.current_dir(fixture(""))
        .args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "-w",
            &workers.to_string(),
            "-k",
            worker_class,
        ])
        .args(["--threads", "4", "--log-level", "info", "app:application"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let proc = Proc::spawn(&format!("gunicorn {worker_class}"), &mut cmd);
    let s = Server {
        proc,
        dir: Files::Host(dir),
        port,
    };
    s.ready(workers)
}

/// gunicorn from Debian sid's package, run by `python` of the sid root, chroot'ed, as `nobody`.
fn start_sid_gunicorn(python: &str, worker_class: &str, workers: usize) -> Server {
    let dir = SidDir::new();
    dir.copy_in(&fixture("app.py"));
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut cmd = sid_command(python);
    // gunicorn 26 keeps a control socket under $HOME: the service's own file, in its own dir.
    cmd.env("HOME", &dir.inside)
        .args(["-m", "gunicorn", "--chdir"])
        .arg(&dir.inside)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["-w", &workers.to_string(), "-k", worker_class])
        .args(["--threads", "4", "--log-level", "info", "app:application"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let proc = Proc::spawn(&format!("sid gunicorn {python} {worker_class}"), &mut cmd);
    let s = Server {
        proc,
        dir: Files::Sid(dir),
        port,
    };
    s.ready(workers)
}

/// uWSGI from Debian sid (`uwsgi-core` with the `python3` plugin, which `dlopen`s libpython3.14),
/// chroot'ed, as `nobody`.
fn start_sid_uwsgi(processes: usize, lazy_apps: bool) -> Server {
    let dir = SidDir::new();
    let app = dir.copy_in(&fixture("app.py"));
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut cmd = sid_command("/usr/bin/uwsgi-core");
    cmd.args(["--plugin", "python3", "--http-socket"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--master", "--processes", &processes.to_string()])
        .arg("--wsgi-file")
        .arg(app)
        .args(["--die-on-term", "--disable-logging"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if lazy_apps {
        cmd.arg("--lazy-apps");
    }
    let proc = Proc::spawn("sid uwsgi", &mut cmd);
    let s = Server {
        proc,
        dir: Files::Sid(dir),
        port,
    };
    s.ready(processes)
}

impl Server {
    /// Waits until it listens and has its `workers`.
    fn ready(self, workers: usize) -> Server {
        let s = self;
        assert!(
            wait_for_port(s.port, Duration::from_secs(20)),
            "{} did not listen: {}",
            s.proc.name,
            s.log()
        );
        assert!(
            wait_until(Duration::from_secs(10), || s.workers().len() == workers),
            "workers: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        s
    }
}

fn start_uwsgi(processes: usize) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut cmd = Command::new(venv_bin("inject-uwsgi", "uwsgi"));
    cmd.current_dir(fixture(""))
        .args([
            "--http-socket",
            &format!("127.0.0.1:{port}"),
            "--master",
            "--processes",
            &processes.to_string(),
        ])
        .args([
            "--wsgi-file",
            "app.py",
            "--die-on-term",
            "--disable-logging",
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let proc = Proc::spawn("uwsgi", &mut cmd);
    let s = Server {
        proc,
        dir: Files::Host(dir),
        port,
    };
    s.ready(processes)
}

fn serves(port: u16, n: usize) -> usize {
    (0..n)
        .filter(|_| matches!(http_get(port, "/"), Ok((200, _))))
        .count()
}

const BAD_LOG_WORDS: &[&str] = &[
    "Traceback",
    "SIGSEGV",
    "WORKER TIMEOUT",
    "was sent",
    "exited with code",
    "DAMN",
];

fn assert_log_clean(log: &str, what: &str) {
    for w in BAD_LOG_WORDS {
        assert!(!log.contains(w), "{what}: log contains {w:?}:\n{log}");
    }
}

fn inject_into_server(s: &Server, what: &str) {
    let workers = s.workers();
    let mut targets = vec![s.master()];
    targets.extend(&workers);
    for pid in targets {
        let code = format!("import sys\nsys._zerostep_test_{pid} = True\n");
        let (rc, v) = inject_cli(pid, &code, &[]);
        assert_eq!(rc, 0, "{what} pid {pid}: {v}");
        assert_eq!(v["confirmed"], true, "{what} pid {pid}: {v}");
        assert_eq!(v["runs"], 1, "{what} pid {pid}: {v}");
        assert_eq!(
            serves(s.port, 5),
            5,
            "{what}: failed requests after injecting pid {pid}"
        );
        assert_clean(pid, &format!("{what} pid {pid}"));
    }
    assert_eq!(s.workers(), workers, "{what}: workers were replaced");
    assert_eq!(serves(s.port, 20), 20, "{what}");
    assert_log_clean(&s.log(), what);
}

#[test]
fn gunicorn_sync_master_and_workers() {
    let s = start_gunicorn("sync", 2);
    inject_into_server(&s, "gunicorn sync");
}

#[test]
fn gunicorn_gthread_master_and_workers() {
    let s = start_gunicorn("gthread", 2);
    inject_into_server(&s, "gunicorn gthread");
}

#[test]
fn uwsgi_master_and_workers() {
    let s = start_uwsgi(2);
    inject_into_server(&s, "uwsgi");
}

#[test]
fn sid_gunicorn_3_14_sync_and_gthread() {
    for class in ["sync", "gthread"] {
        let s = start_sid_gunicorn("/usr/bin/python3.14", class, 2);
        inject_into_server(&s, &format!("sid gunicorn 3.14 {class}"));
    }
    assert_eq!(
        sid_tmp_strays(),
        Vec::<String>::new(),
        "written into the root"
    );
}

#[test]
fn sid_gunicorn_3_15_sync_and_gthread() {
    for class in ["sync", "gthread"] {
        let s = start_sid_gunicorn("/usr/bin/python3.15", class, 2);
        inject_into_server(&s, &format!("sid gunicorn 3.15 {class}"));
    }
    assert_eq!(
        sid_tmp_strays(),
        Vec::<String>::new(),
        "written into the root"
    );
}

/// The python3 plugin `dlopen`s libpython3.14.so (not linked into uWSGI), with and without
/// `--lazy-apps` (the app loaded in each worker after the fork).
#[test]
fn sid_uwsgi_plugin_3_14() {
    for lazy in [false, true] {
        let s = start_sid_uwsgi(2, lazy);
        inject_into_server(&s, &format!("sid uwsgi python3 plugin, lazy-apps {lazy}"));
    }
    assert_eq!(
        sid_tmp_strays(),
        Vec::<String>::new(),
        "written into the root"
    );
}

// ---- refusals: clear message, exit status 4, nothing touched ----

fn assert_refused(pid: u32, needle: &str) {
    let (rc, v) = inject_cli(pid, "import sys", &[]);
    assert_eq!(rc, 4, "{v}");
    assert_eq!(v["refused"], true, "{v}");
    let msg = v["error"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    assert_eq!(rwx_anon_mappings(pid), 0);
    assert_eq!(status_field(pid, "TracerPid:"), "0");
}

#[test]
fn refuses_what_it_must() {
    // Not CPython.
    let mut sleep = Command::new("sleep");
    sleep.arg("30");
    let p = Proc::spawn("sleep", &mut sleep);
    std::thread::sleep(Duration::from_millis(50));
    assert_refused(p.pid(), "not a CPython process");

    // Unsupported version (pyenv 3.7 exists on these machines).
    let py37 = pyenv_python("3.7.16");
    if py37.exists() {
        let t = start_target(&py37, "select");
        assert_refused(t.pid(), "3.7");
    }

    // Opted out.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(pyenv("3.12.1"));
    cmd.args(["-c", "import time\nwhile True: time.sleep(1)"])
        .env("ZEROSTEP_DISABLE", "1");
    let _ = &dir;
    let opted = Proc::spawn("opted-out", &mut cmd);
    std::thread::sleep(Duration::from_millis(200));
    assert_refused(opted.pid(), "opted out");

    // Already traced: this test process seizes it from a helper thread (detached when the thread ends).
    let t = start_target(&pyenv("3.12.1"), "select");
    let pid = t.pid() as i32;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
    let tracer = std::thread::spawn(move || {
        // SAFETY: PTRACE_SEIZE of our own child, no pointers involved.
        let ok = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) } == 0;
        let _ = ready_tx.send(ok);
        let _ = rx.recv();
    });
    assert!(ready_rx.recv().unwrap_or(false), "test could not seize");
    let (rc, v) = inject_cli(t.pid(), "import sys", &[]);
    assert_eq!(rc, 4, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("already traced"),
        "{v}"
    );
    drop(tx);
    let _ = tracer.join();
    assert!(wait_until(Duration::from_secs(2), || status_field(
        t.pid(),
        "TracerPid:"
    ) == "0"));
    let before = t.beats();
    assert!(wait_until(Duration::from_secs(3), || t.beats() > before));

    // No permission: an unprivileged user cannot touch a root process.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(zerostep_bin())
        .args([
            "inject",
            "--json",
            "--pid",
            &t.pid().to_string(),
            "--code",
            "import sys",
        ])
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.is_empty() {
        // The binary is not reachable for an unprivileged user (e.g. a checkout under /root).
        eprintln!(
            "skipping the permission case: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert_eq!(out.status.code(), Some(4), "{stdout}");
        assert!(stdout.contains("permission"), "{stdout}");
    }
    assert_clean(t.pid(), "after refusals");
}

/// The binary a process runs is what its maps point at, whatever happened to the path since: a
/// venv's symlinked interpreter, and an interpreter deleted and replaced on disk under the running
/// process (a package upgrade) — here by a different CPython, which a path-following injector
/// would read symbols from.
#[test]
fn symlinked_venv_and_replaced_binary_resolve_to_what_runs() {
    let venv = start_sid_target("/opt/zerostep/venv-314/bin/python", &[], "select");
    let (rc, v) = inject_cli(venv.pid(), "import sys\nsys._zs_venv = 1\n", &[]);
    assert_eq!((rc, v["confirmed"].as_bool()), (0, Some(true)), "venv: {v}");

    let dir = SidDir::new();
    let bin = dir.path().join("python3.14");
    std::fs::copy(sid_root().join("usr/bin/python3.14"), &bin).expect("copy python");
    let mut cmd = sid_command(&dir.inside.join("python3.14").display().to_string());
    let replaced = spawn_target(
        {
            cmd.arg(dir.copy_in(&fixture("target.py")));
            cmd
        },
        Files::Sid(dir),
        "copied python3.14",
        "select",
    );
    std::fs::remove_file(&bin).expect("delete the running binary");
    std::fs::copy(sid_root().join("usr/bin/python3.15"), &bin).expect("replace it");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", replaced.pid())).unwrap();
    assert!(maps.contains("python3.14 (deleted)"), "{maps}");
    let (rc, v) = inject_cli(replaced.pid(), "import sys\nsys._zs_replaced = 1\n", &[]);
    assert_eq!(rc, 0, "replaced binary: {v}");
    assert_eq!(v["confirmed"], true, "{v}");
    assert_eq!(v["python"], "3.14", "{v}");
    assert_clean(replaced.pid(), "replaced binary");
    assert_eq!(
        sid_tmp_strays(),
        Vec::<String>::new(),
        "written into the root"
    );
}

/// Hides a variable from `/proc/PID/environ` by overwriting its name in the target's environment
/// block (our own test process), so that only the interpreter's own setting can tell.
fn hide_env_var(pid: u32, name: &str) {
    use std::io::{Seek, SeekFrom, Write};
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 50 and 51 of stat (env_start, env_end); `after` starts at field 3.
    let (start, end) = (f[47], f[48]);
    let mut mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("mem");
    let mut block = vec![0u8; (end - start) as usize];
    mem.seek(SeekFrom::Start(start)).expect("seek");
    mem.read_exact(&mut block).expect("read environ");
    let at = block
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("variable in environ");
    mem.seek(SeekFrom::Start(start + at as u64)).expect("seek");
    mem.write_all(b"X").expect("write environ");
    let now = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(!now.windows(name.len()).any(|w| w == name.as_bytes()));
}

/// CPython 3.14+ lets an operator turn remote code off (`-X disable_remote_debug`,
/// `PYTHON_DISABLE_REMOTE_DEBUG`): such a process is refused with that reason, seen from its start
/// options and, when those are not visible, from the interpreter's own setting.
#[test]
fn refuses_3_14_and_3_15_with_remote_debug_disabled() {
    const IDLE: &str = "import time\nwhile True: time.sleep(0.2)";
    for py in ["/usr/bin/python3.14", "/usr/bin/python3.15"] {
        let mut cmd = sid_command(py);
        cmd.args(["-c", IDLE])
            .env("PYTHON_DISABLE_REMOTE_DEBUG", "1");
        let by_env = Proc::spawn("remote debug off (env)", &mut cmd);
        let mut cmd = sid_command(py);
        cmd.args(["-X", "disable_remote_debug", "-c", IDLE]);
        let by_flag = Proc::spawn("remote debug off (-X)", &mut cmd);
        std::thread::sleep(Duration::from_millis(400));
        assert_refused(by_env.pid(), "PYTHON_DISABLE_REMOTE_DEBUG");
        assert_refused(by_flag.pid(), "disable_remote_debug");
        hide_env_var(by_env.pid(), "PYTHON_DISABLE_REMOTE_DEBUG");
        assert_refused(by_env.pid(), "remote_debug setting is off");
        assert_clean(by_env.pid(), py);
        assert_clean(by_flag.pid(), py);
    }
}

/// Real-time signals (which `nix::Signal` cannot even name) sent while the injector holds the thread
/// at every step are all delivered: none swallowed, none duplicated.
#[test]
fn signals_arriving_mid_injection_are_passed_through() {
    let t = start_target(&pyenv("3.12.1"), "signals");
    let pid = t.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let sender = std::thread::spawn(move || {
        let sig = libc::SIGRTMIN();
        let mut sent = 0usize;
        while !flag.load(Ordering::Relaxed) {
            // SAFETY: kill(2) on our own child with a signal it handles.
            if unsafe { libc::kill(pid as i32, sig) } == 0 {
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    let injected = 4;
    let mut t = t;
    for i in 0..injected {
        let code = format!("import sys\nsys._zs_sig = {i}\n");
        let (rc, v) = inject_cli(pid, &code, &["--step-delay-us", "1000"]);
        assert_eq!(
            rc,
            0,
            "{v}; target exit {:?} stderr: {}, status: {}, tasks: {:?}, maps lines: {}",
            t.proc.child.try_wait(),
            t.stderr(),
            std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count())
                .unwrap_or(0),
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .unwrap_or_default()
                .lines()
                .count()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap_or(0);
    let counted = || {
        t.stdout()
            .lines()
            .last()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || counted() == sent),
        "{injected} injections: counted {} of {sent} signals",
        counted()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counted(), sent, "a signal was delivered twice");
    println!("signals: {sent} SIGRTMIN sent during {injected} injections, all delivered once");
    assert_clean(pid, "signals");
}

#[test]
fn process_exiting_mid_injection_is_a_clean_error() {
    let t = start_target(&pyenv("3.12.1"), "select");
    let (rc, v) = inject_cli(t.pid(), "import os\nos._exit(7)", &[]);
    assert_eq!(rc, 1, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("exited"), "{v}");
}

#[test]
fn raised_exceptions_are_caught_and_reported() {
    let t = start_target(&pyenv("3.11.7"), "busy");
    let (rc, v) = inject_cli(t.pid(), "raise ValueError('boom')", &[]);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["mode"], "pending");
    assert!(
        v["raised"]
            .as_str()
            .unwrap_or("")
            .contains("ValueError: boom"),
        "{v}"
    );
    let before = t.beats();
    assert!(wait_until(Duration::from_secs(3), || t.beats() > before));
    assert_eq!(
        t.stderr(),
        "",
        "the exception must not reach the target's stderr"
    );
    assert_clean(t.pid(), "after a raising injection");
}

// ---- stress and kill ----

/// A client hammering the server from `threads` threads; counts (ok, failed).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(port, "/") {
                            Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            handles,
            started: Instant::now(),
        }
    }

    fn finish(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        let ok = self.ok.load(Ordering::Relaxed);
        (
            ok,
            self.failed.load(Ordering::Relaxed),
            ok as f64 / self.started.elapsed().as_secs_f64(),
        )
    }
}

fn stress(injections: usize) {
    let s = start_gunicorn("sync", 4);
    let workers = s.workers();
    let load = Load::start(s.port, 4);
    let mut modes: BTreeMap<String, usize> = BTreeMap::new();
    let mut stops: Vec<u64> = Vec::new();
    for i in 0..injections {
        let pid = workers[i % workers.len()];
        let code =
            format!("import sys\nsys._zs_stress = getattr(sys, '_zs_stress', 0) + 1  # {i}\n");
        let (rc, v) = inject_cli(pid, &code, &[]);
        assert_eq!(rc, 0, "injection {i} into {pid}: {v}");
        assert_eq!(v["runs"], 1, "injection {i}: {v}");
        *modes
            .entry(v["mode"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        stops.push(v["stop_time"].as_u64().unwrap_or(0));
    }
    let (ok, failed, rate) = load.finish();
    stops.sort();
    println!(
        "stress: {injections} injections {modes:?}, stop p50 {} us max {} us; requests ok {ok} failed {failed} ({rate:.0} req/s)",
        stops[stops.len() / 2],
        stops[stops.len() - 1]
    );
    assert_eq!(failed, 0, "failed requests during injections");
    assert_eq!(s.workers(), workers, "workers were replaced");
    for pid in &workers {
        assert_clean(*pid, "after stress");
    }
    assert_log_clean(&s.log(), "stress");
}

#[test]
fn stress_small() {
    stress(30);
}

#[test]
#[ignore = "full-size stress (200 injections); run by bench/30-inject.sh"]
fn stress_full() {
    stress(200);
}

/// SIGKILL the injector at random moments while it has the worker stopped or hijacked, and check the
/// worker survives every time. The kill lands after the injector has seized the thread (TracerPid set),
/// after a random delay within the widened window (`--step-delay-us`) or inside the injected call.
/// Like `wait_until`, at ~100 µs granularity: a seize lasts only milliseconds.
fn poll_fast(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

fn kill_trials(trials: usize) {
    let s = start_gunicorn("sync", 1);
    let worker = s.workers()[0];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let mut landed_while_traced = 0;
    let mut seized_seen = 0;
    for trial in 0..trials {
        let step_delay = [0u64, 300, 2000][rnd(3) as usize];
        let sleep_ms = rnd(20);
        let code = format!(
            "import time\ntime.sleep({})  # trial {trial}\n",
            sleep_ms as f64 / 1000.0
        );
        let mut child = Command::new(zerostep_bin())
            .args([
                "inject",
                "--json",
                "--pid",
                &worker.to_string(),
                "--code",
                &code,
            ])
            .args(["--step-delay-us", &step_delay.to_string()])
            .env("ZEROSTEP_LOG", "off")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn injector");
        let injector = child.id().to_string();
        let seized = poll_fast(Duration::from_secs(5), || {
            status_field(worker, "TracerPid:") == injector
        });
        let window_us = 8 * step_delay + sleep_ms * 1000 + 1000;
        std::thread::sleep(Duration::from_micros(rnd(window_us)));
        if status_field(worker, "TracerPid:") == injector {
            landed_while_traced += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        seized_seen += usize::from(seized);
        assert!(
            wait_until(Duration::from_secs(3), || status_field(
                worker,
                "TracerPid:"
            ) == "0"),
            "trial {trial}: still traced"
        );
        assert_eq!(
            serves(s.port, 2),
            2,
            "trial {trial}: worker stopped serving"
        );
        assert_eq!(
            s.workers(),
            vec![worker],
            "trial {trial}: worker replaced (crashed?)"
        );
    }
    // Pages of killed injections are swept by the next injection or `--cleanup`.
    let out = Command::new(zerostep_bin())
        .args(["inject", "--cleanup", "--pid", &worker.to_string()])
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("kill test: {trials} trials, seize observed in {seized_seen}, {landed_while_traced} kills landed while the worker was seized; worker {worker} alive and serving after every one");
    assert!(seized_seen > 0, "the injector never seized the worker");
    assert_eq!(serves(s.port, 20), 20);
    assert_clean(worker, "after kill trials");
    assert_log_clean(&s.log(), "kill test");
}

#[test]
fn kill_injector_small() {
    kill_trials(15);
}

#[test]
#[ignore = "full-size kill test (100 trials); run by bench/30-inject.sh"]
fn kill_injector_full() {
    kill_trials(100);
}

// ---- benchmark (run by bench/30-inject.sh in release mode) ----

/// Watches `TracerPid` of `pid` from a thread and records how long each tracing episode lasted: the
/// same outside view of "how long was the target held" for zerostep and for gdb.
struct TracedWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Duration>>,
}

impl TracedWatch {
    fn start(pid: u32) -> TracedWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut episodes = Vec::new();
            let mut since: Option<Instant> = None;
            let mut last_seen = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let traced = status_field(pid, "TracerPid:") != "0";
                let now = Instant::now();
                match (traced, since) {
                    (true, None) => since = Some(now),
                    (false, Some(s)) => {
                        episodes.push(last_seen.duration_since(s));
                        since = None;
                    }
                    _ => {}
                }
                if traced {
                    last_seen = now;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            episodes
        });
        TracedWatch { stop, handle }
    }

    fn finish(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn pct(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (p(0.5), p(0.99), v[v.len() - 1])
}

fn lib_inject(pid: u32, code: &str) -> zerostep::inject::InjectReport {
    zerostep::inject::inject(pid, code, &zerostep::inject::InjectOptions::default())
        .unwrap_or_else(|e| panic!("inject into {pid}: {e}"))
}

fn row(label: &str, mode: &str, ms: &mut [f64]) -> String {
    let (p50, p99, max) = pct(ms);
    format!(
        "| {label} | {mode} | {} | {p50:.3} | {p99:.3} | {max:.3} |",
        ms.len()
    )
}

#[test]
#[ignore = "benchmark; run by bench/30-inject.sh (release build)"]
fn bench_stop_times() {
    let n: usize = std::env::var("INJECT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let n_gdb: usize = std::env::var("INJECT_BENCH_GDB_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rows = vec![
        "| target | mode | n | p50 ms | p99 ms | max ms |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];

    // Idle gunicorn sync worker: zerostep direct, then gdb on the same worker.
    let s = start_gunicorn("sync", 2);
    let worker = s.workers()[0];
    let watch = TracedWatch::start(worker);
    let mut own = Vec::new();
    for i in 0..n {
        let r = lib_inject(worker, &format!("import sys\nsys._zs_bench = {i}\n"));
        assert_eq!(
            r.mode,
            zerostep::inject::InjectMode::Direct,
            "idle worker should get the direct call"
        );
        own.push(r.stop_time.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut own_outside: Vec<f64> = watch
        .finish()
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    rows.push(row(
        "gunicorn 23 sync worker, idle (py3.12)",
        "zerostep direct (self-reported)",
        &mut own,
    ));
    rows.push(row(
        "gunicorn 23 sync worker, idle (py3.12)",
        "zerostep direct (TracerPid window)",
        &mut own_outside,
    ));

    let gdb = which("gdb");
    let mut gdb_outside = Vec::new();
    let mut gdb_wall = Vec::new();
    if let Some(gdb) = &gdb {
        let watch = TracedWatch::start(worker);
        for i in 0..n_gdb {
            let t = Instant::now();
            let out = Command::new(gdb)
                .args(["-batch", "--readnever", "-nx", "-p", &worker.to_string()])
                .args(["-ex", "call (int)PyGILState_Ensure()"])
                .args([
                    "-ex",
                    &format!("call (int)PyRun_SimpleString(\"import sys; sys._gdb_bench = {i}\")"),
                ])
                .args(["-ex", "call (void)PyGILState_Release($1)"])
                .output()
                .expect("gdb");
            if !out.status.success() {
                // Seen with gdb 13 on kernel 6.18: "Couldn't write extended state status".
                println!(
                    "gdb could not inject here, no gdb figures: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                break;
            }
            gdb_wall.push(t.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(50));
        }
        gdb_outside = watch
            .finish()
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        rows.push(row(
            "gunicorn 23 sync worker, idle (py3.12)",
            "gdb -batch --readnever (TracerPid window)",
            &mut gdb_outside,
        ));
        rows.push(row(
            "gunicorn 23 sync worker, idle (py3.12)",
            "gdb -batch --readnever (wall)",
            &mut gdb_wall,
        ));
    }
    assert_eq!(serves(s.port, 20), 20);
    assert_log_clean(&s.log(), "bench");
    drop(s);

    // Per interpreter: direct (idle in select) and pending (busy loop).
    let mut pythons: Vec<(String, PathBuf)> = pyenv_pythons();
    pythons.push(("debian 3.11".into(), PathBuf::from(DEBIAN_PYTHON)));
    let per = (n / 4).max(10);
    for (label, py) in &pythons {
        for (scenario, mode) in [("select", "direct"), ("busy", "pending")] {
            let t = start_target(py, scenario);
            let mut ms = Vec::new();
            for i in 0..per {
                let r = lib_inject(t.pid(), &format!("import sys\nsys._zs_bench = {i}\n"));
                ms.push(r.stop_time.as_secs_f64() * 1e3);
            }
            rows.push(row(&format!("python {label}, {scenario}"), mode, &mut ms));
        }
    }
    // CPython 3.14 and 3.15 from the sid root (chroot'ed, as nobody), the same two cases.
    for py in [
        "/usr/bin/python3.14",
        "/usr/bin/python3.14-pie",
        "/usr/bin/python3.15",
        "/usr/bin/python3.15-pie",
    ] {
        for (scenario, mode) in [("select", "direct"), ("busy", "pending")] {
            let t = start_sid_target(py, &[], scenario);
            let mut ms = Vec::new();
            for i in 0..per {
                let r = lib_inject(t.pid(), &format!("import sys\nsys._zs_bench = {i}\n"));
                ms.push(r.stop_time.as_secs_f64() * 1e3);
            }
            rows.push(row(&format!("sid {py}, {scenario}"), mode, &mut ms));
        }
    }
    println!("\n{}\n", rows.join("\n"));
    if gdb.is_some() {
        let (own50, own99, _) = pct(&mut own_outside);
        let (gdb50, gdb99, _) = pct(&mut gdb_outside);
        println!(
            "gdb / zerostep direct, TracerPid window: p50 {:.0}x, p99 {:.0}x",
            gdb50 / own50.max(1e-3),
            gdb99 / own99.max(1e-3)
        );
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// The agent sees a process within milliseconds of its exec, before `Py_Initialize` has finished:
/// injecting then must be refused as not ready (or not yet CPython), never crash the target, and
/// succeed once the interpreter is up.
fn inject_from_exec(python: &Path) {
    let make = || {
        let mut c = Command::new(python);
        c.args(["-c", "import time\nwhile True: time.sleep(0.05)"]);
        c
    };
    inject_from_exec_with(&python.display().to_string(), &make);
}

fn inject_from_exec_with(label: &str, make: &dyn Fn() -> Command) {
    let opts = zerostep::inject::InjectOptions {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    for round in 0..5 {
        let mut p = Proc::spawn("starting python", &mut make());
        let pid = p.pid();
        let begun = Instant::now();
        let mut early = BTreeMap::<String, u32>::new();
        let report = loop {
            match zerostep::inject::inject(pid, "pass", &opts) {
                Ok(r) => break r,
                Err(e @ zerostep::inject::InjectError::NotReady { .. })
                | Err(e @ zerostep::inject::InjectError::NotCPython { .. }) => {
                    let kind = format!("{e}").split(':').next().unwrap_or("").to_string();
                    *early.entry(kind).or_default() += 1;
                }
                Err(e) => panic!("{label}: round {round}: unexpected {e}"),
            }
            assert!(
                p.is_alive(),
                "{label}: the target died during start-up injection"
            );
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "never became ready"
            );
        };
        let report = if report.confirmed {
            report
        } else {
            // Seen on 3.13 under heavy load: a pending call scheduled in the first moments after
            // `initialized` is set did not run within the timeout. The agent retries such an
            // injection after its pending grace; so does this test, once (the wrapper's marker
            // makes a late first run and the retry run the code once between them).
            eprintln!("{label} round {round}: pending call not confirmed, retrying: {report:?}");
            zerostep::inject::inject(pid, "pass", &opts)
                .unwrap_or_else(|e| panic!("{label}: retry after an unconfirmed pending call: {e}"))
        };
        assert!(report.confirmed, "{report:?}");
        assert!(p.is_alive());
        eprintln!(
            "{label} round {round}: ready after {:?}, early refusals {early:?}",
            begun.elapsed()
        );
    }
}

#[test]
fn injecting_during_interpreter_startup_waits_for_it() {
    for v in ["3.8.18", "3.11.7", "3.13.0"] {
        inject_from_exec(&pyenv(v));
    }
    inject_from_exec(Path::new(DEBIAN_PYTHON));
    for py in ["/usr/bin/python3.14", "/usr/bin/python3.15-pie"] {
        let make = || {
            let mut c = sid_command(py);
            c.args(["-c", "import time\nwhile True: time.sleep(0.05)"]);
            c
        };
        inject_from_exec_with(&format!("sid {py}"), &make);
    }
}
