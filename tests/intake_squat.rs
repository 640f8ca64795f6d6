//! Intake name squatting: while the agent is away, whoever binds its abstract socket name is
//! called by every tracer that reconnects. Here a root Python process (the worst case) is traced,
//! the agent's intake goes away, and squatters take the name — one as `nobody`, one as root
//! without the agent's key — and answer the tracer with commands that would run code (`load`,
//! `upgrade`). The tracer must call them (else the test proves nothing), run none of it, and
//! keep working: an agent started while the name is still taken listens on a fresh name, and the
//! next bootstrap moves the tracer there.
//!
//! The bootstrap is run in the target's `__main__` from a file, as the injector would run it
//! (tests/tracer.rs does the same). Re-run: `cargo test -p zerostep --test intake_squat`.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use zerostep::intake::auth::IntakeKey;
use zerostep::intake::{Intake, IntakeAddress, IntakeConfig, PeerRegistry, PeerRole};

/// The target: runs each new bootstrap file (`bootstrap.N.py`) in `__main__`, then idles; its
/// tracer's reporter thread keeps (re)connecting on its own.
const TARGET: &str = r#"
import os, sys, time, __main__
d = sys.argv[1]
n = 0
while True:
    p = os.path.join(d, "bootstrap.%d.py" % n)
    if os.path.exists(p):
        with open(p) as f:
            code = f.read()
        try:
            exec(compile(code, "<string>", "exec"), __main__.__dict__)
            print("bootstrap", n, "ran", flush=True)
        except BaseException as e:
            print("bootstrap", n, "raised", repr(e), flush=True)
        n += 1
    time.sleep(0.05)
"#;

/// A squatter: accepts on the name, logs each connection and what it was sent, and answers every
/// frame with a forged proof and the commands that carry code. The code would create `marker`.
const SQUATTER: &str = r#"
import json, socket, struct, sys, threading
name, marker = sys.argv[1], sys.argv[2]
evil = "open(%r, 'w').write('ran')\nVERSION = '6.6.6'\ndef install(*a):\n    return True\n" % marker
mods = [["_zerostep", evil]]
def send(c, obj):
    b = json.dumps(obj).encode()
    c.sendall(struct.pack(">I", len(b)) + b)
def serve(c):
    try:
        while True:
            head = c.recv(4, socket.MSG_WAITALL)
            if len(head) < 4:
                print("closed by tracer", flush=True)
                return
            (n,) = struct.unpack(">I", head)
            body = c.recv(n, socket.MSG_WAITALL)
            print("frame", body[:80], flush=True)
            send(c, {"v": 1, "t": "auth", "proof": "0" * 64})
            send(c, {"v": 1, "t": "load", "version": "6.6.6", "modules": mods, "config": {},
                     "proof": "0" * 64})
            send(c, {"v": 1, "t": "upgrade", "version": "6.6.6", "modules": mods, "config": {}})
    except OSError as e:
        print("closed", e, flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + name)
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    print("connection", flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

fn intake(rt: &tokio::runtime::Runtime, name: &str, key: &IntakeKey) -> Intake {
    let mut cfg = IntakeConfig::new(IntakeAddress::Abstract(name.to_string()));
    cfg.auth_key = Some(key.clone());
    cfg.tracer_config = serde_json::json!({"flush_interval": 0.05});
    let _g = rt.enter();
    Intake::start(cfg, PeerRegistry::new()).expect("intake")
}

fn traced_as_tracer(intake: &Intake, pid: u32) -> bool {
    intake
        .peers()
        .iter()
        .any(|p| p.pid == pid && p.role == Some(PeerRole::Tracer))
}

fn count(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(what))
        .count()
}

/// Runs the squatter (as `user`, or root when None) until the tracer has called it `calls` times.
fn squat(dir: &Path, name: &str, user: Option<&str>, tag: &str) -> (Proc, std::path::PathBuf) {
    let log = dir.join(format!("squatter-{tag}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let marker = dir.join("marker");
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", u, "--regid", u, "--clear-groups", "--"]);
            c.arg(DEBIAN_PYTHON);
            c
        }
        None => Command::new(DEBIAN_PYTHON),
    };
    cmd.args(["-c", SQUATTER, name])
        .arg(&marker)
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    let p = Proc::spawn(&format!("squatter {tag}"), &mut cmd);
    assert!(
        wait_until(Duration::from_secs(10), || count(&log, "listening") == 1),
        "squatter {tag} did not bind: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (p, log)
}

#[test]
fn a_squatter_on_the_intake_name_gets_no_code_run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // The squatter as nobody writes its log through an inherited descriptor, and the marker
    // would be written by the (root) target: the directory needs no opening up.
    let name = format!("zerostep-squat-test-{}", std::process::id());
    let key = IntakeKey::random().expect("key");
    let a = intake(&rt, &name, &key);

    let target_log = dir.path().join("target.log");
    let out = std::fs::File::create(&target_log).expect("log");
    let mut target = Proc::spawn(
        "target",
        Command::new(DEBIAN_PYTHON)
            .args(["-c", TARGET])
            .arg(dir.path())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out),
    );
    let pid = target.pid();
    a.registry().allow(pid);
    std::fs::write(
        dir.path().join("bootstrap.0.py"),
        a.bootstrap_code_for(pid).expect("bootstrap"),
    )
    .expect("write bootstrap");
    // The bootstrap's connection becomes the tracer's.
    assert!(
        wait_until(Duration::from_secs(15), || a
            .peers()
            .iter()
            .any(|p| p.pid == pid && p.status.is_some())),
        "the tracer never connected: {}",
        std::fs::read_to_string(&target_log).unwrap_or_default()
    );

    // A restarted agent that gets its name back (same key, as from its state directory) is
    // accepted by the tracer's own reconnect, with no new bootstrap.
    drop(a);
    // The dropped intake's listener closes on its runtime thread, a moment later (a real restart
    // is a process exit, where the kernel frees the name at once): wait for the name to be free.
    let mut a2 = intake(&rt, &name, &key);
    let freed_by = Instant::now() + Duration::from_secs(5);
    while a2.address() != &IntakeAddress::Abstract(name.clone()) && Instant::now() < freed_by {
        drop(a2);
        std::thread::sleep(Duration::from_millis(50));
        a2 = intake(&rt, &name, &key);
    }
    assert_eq!(a2.address(), &IntakeAddress::Abstract(name.clone()));
    a2.registry().allow(pid);
    assert!(
        wait_until(Duration::from_secs(20), || traced_as_tracer(&a2, pid)),
        "the tracer did not reconnect to the restarted agent: {}",
        std::fs::read_to_string(&target_log).unwrap_or_default()
    );

    // The agent goes away again; the name is free for anyone.
    drop(a2);
    let marker = dir.path().join("marker");

    // 1. An unprivileged squatter: the tracer connects, sees the listener is not the agent's
    //    user, and hangs up before saying anything.
    let (mut nobody, log) = squat(dir.path(), &name, Some("65534"), "nobody");
    assert!(
        wait_until(Duration::from_secs(40), || count(&log, "connection") >= 1),
        "the tracer never called the squatter: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(count(&log, "frame"), 0, "the tracer said something to it");
    nobody.stop(Duration::from_secs(2));

    // 2. A squatter with the agent's uid but not its key: the tracer says hello (no spans), gets
    //    a forged proof and code, and hangs up.
    let (root_squatter, log) = squat(dir.path(), &name, None, "root");
    assert!(
        wait_until(Duration::from_secs(40), || count(&log, "closed by tracer")
            >= 1),
        "the tracer did not call and refuse the squatter: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let frames = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        frames
            .lines()
            .filter(|l| l.starts_with("frame"))
            .all(|l| l.contains("hello")),
        "the tracer sent more than its hello: {frames}"
    );
    assert!(
        !marker.exists(),
        "the squatter's code ran in the traced process"
    );
    assert!(target.is_alive(), "the target died");

    // 3. The agent comes back while the name is still taken: it does not exit but listens on a
    //    fresh name, and the next bootstrap moves the tracer there.
    let b = intake(&rt, &name, &key);
    let IntakeAddress::Abstract(fresh) = b.address().clone() else {
        panic!("abstract address expected");
    };
    assert_ne!(fresh, name, "took a fresh name");
    b.registry().allow(pid);
    std::fs::write(
        dir.path().join("bootstrap.1.py"),
        b.bootstrap_code_for(pid).expect("bootstrap"),
    )
    .expect("write bootstrap");
    assert!(
        wait_until(Duration::from_secs(15), || traced_as_tracer(&b, pid)),
        "the tracer did not move to the agent's fresh name: {}\n{}",
        std::fs::read_to_string(&target_log).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!marker.exists(), "the squatter's code ran");
    drop(root_squatter);

    let target_out = std::fs::read_to_string(&target_log).unwrap_or_default();
    assert!(
        !target_out.contains("raised"),
        "a bootstrap failed: {target_out}"
    );
    assert!(target.is_alive());
}

/// A stranger on the intake: connects, says hello as a tracer would, sends a span batch.
const STRANGER: &str = r#"
import json, socket, struct, sys
name, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\0" + name)
hello = {"v": 1, "t": "hello", "role": "tracer", "pid": 1, "python": "3", "version": "0.1.0"}
if mode == "forged":
    hello.update(nonce="ab" * 16, tag="0" * 64)
spans = {"v": 1, "t": "spans", "pid": 1, "dropped": 0,
         "spans": [[1, 2, 0, "GET /forged", 1, 10, 20, 0, "", {}, []]]}
try:
    for m in (hello, spans):
        b = json.dumps(m).encode()
        s.sendall(struct.pack(">I", len(b)) + b)
    print("answer", len(s.recv(100)), flush=True)
except OSError as e:
    print("closed", e, flush=True)
"#;

/// Only the injected may send spans: a process of an injected tree that connects by itself
/// (without the bootstrap's secret, or with a forged tag) is cut off and counted; a process that
/// holds the bootstrap is served, and so is its tracer's reconnect.
#[test]
fn a_process_without_the_bootstrap_secret_cannot_send_spans() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("zerostep-stranger-test-{}", std::process::id());
    let key = IntakeKey::random().expect("key");
    let intake = intake(&rt, &name, &key);
    // This test process is the injected root: its children are "its workers".
    let me = std::process::id();
    intake.registry().allow(me);
    let code = intake.bootstrap_code_for(me).expect("bootstrap");

    for (i, mode) in ["plain", "forged"].iter().enumerate() {
        let out = Command::new(DEBIAN_PYTHON)
            .args(["-c", STRANGER, &name, mode])
            .output()
            .expect("stranger");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("answer 0") || said.contains("closed"),
            "{mode}: {said}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || intake
                .stats()
                .cut_off_unauthenticated
                == i as u64 + 1),
            "{mode}: {:?}",
            intake.stats()
        );
    }
    assert!(
        intake.queue().try_pop().is_none(),
        "a stranger's spans got through"
    );

    // A child that runs the bootstrap holds the secret: served, its tracer connected.
    std::fs::write(dir.path().join("bootstrap.0.py"), code).expect("write bootstrap");
    let log = dir.path().join("target.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Proc::spawn(
        "target",
        Command::new(DEBIAN_PYTHON)
            .args(["-c", TARGET])
            .arg(dir.path())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out),
    );
    let pid = child.pid();
    assert!(
        wait_until(Duration::from_secs(15), || intake
            .peers()
            .iter()
            .any(|p| p.pid == pid && p.status.is_some())),
        "the bootstrapped child was not served: {:?}\n{}",
        intake.stats(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(intake.stats().cut_off_unauthenticated, 2);
    assert!(child.is_alive());
}
