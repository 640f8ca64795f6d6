//! Processes in other pid, mount and network namespaces (made with `unshare`, as a container runtime
//! would): discovered, injected, and reaching the intake through an abstract socket the intake opens
//! inside the container's network namespace, with nothing written into the container's filesystem
//! (its /tmp is a private tmpfs that must stay empty).
//!
//! Needs root (unshare, setns, ptrace). Re-run: `cargo test -p zerostep --test containers`.
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use zerostep::discover::{Discovery, DiscoveryConfig, DiscoveryEvent, ProcessInfo};
use zerostep::inject::{inject, InjectOptions};
use zerostep::intake::{Intake, IntakeAddress, IntakeConfig, PeerRegistry};

const SLEEPER: &str = "import time\nwhile True: time.sleep(0.2)";

/// `program args…` as pid 1 of new pid, mount and network namespaces, with loopback up and a
/// private, empty /tmp.
fn container(name: &str, program: &str, args: &[&str]) -> Proc {
    let mut cmd = container_command();
    cmd.arg(program)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Proc::spawn(name, &mut cmd)
}

/// The first Python process discovery reports whose parent is `ppid`.
fn python_child(
    rx: &mut tokio::sync::mpsc::Receiver<DiscoveryEvent>,
    ppid: u32,
    timeout: Duration,
) -> Option<ProcessInfo> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match rx.try_recv() {
            Ok(DiscoveryEvent::Appeared(p)) if p.ppid == ppid => return Some(p),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

fn container_tmp(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/root/tmp"))
        .expect("container /tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

fn discovery() -> (Discovery, tokio::sync::mpsc::Receiver<DiscoveryEvent>) {
    let (d, mut rx) = Discovery::start(DiscoveryConfig::default()).expect("discovery");
    while !matches!(
        rx.blocking_recv(),
        Some(DiscoveryEvent::InitialScanDone) | None
    ) {}
    (d, rx)
}

#[test]
fn inject_cli_into_a_container_python() {
    let (_d, mut rx) = discovery();
    let c = container(
        "container-python",
        &pyenv_python("3.12.1").display().to_string(),
        &["-c", SLEEPER],
    );
    let p = python_child(&mut rx, c.pid(), Duration::from_secs(10))
        .expect("the container's python discovered");
    let ns = p.namespaces;
    assert!(ns.pid_differs && ns.mnt_differs && ns.net_differs, "{ns:?}");
    assert_eq!(p.python.as_ref().map(|r| r.version.as_str()), Some("3.12"));
    assert!(container_tmp(p.pid).is_empty());

    let out = Command::new(zerostep_bin())
        .args([
            "inject",
            "--pid",
            &p.pid.to_string(),
            "--json",
            "--code",
            "import sys; sys._zs_container_probe = 1",
        ])
        .output()
        .expect("zerostep inject");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "confirmed through the handshake socket inside the container's netns: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(report["confirmed"], true, "{report}");
    assert!(
        container_tmp(p.pid).is_empty(),
        "{:?}",
        container_tmp(p.pid)
    );
}

#[test]
fn gunicorn_in_a_container_reaches_the_intake() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = IntakeConfig::new(IntakeAddress::Path(dir.path().join("intake.sock")));
    cfg.tracer_config = serde_json::json!({"flush_interval": 0.05});
    let intake = {
        let _g = rt.enter();
        Intake::start(cfg, PeerRegistry::new()).expect("intake")
    };
    // The instrumentations come from the sensors' bundles, as the agent hands them out.
    let bundles = sensor_bundles();
    intake.set_bundle_source(std::sync::Arc::new(move |_pid| bundles.clone()));
    let (_d, mut rx) = discovery();

    // A host process shares the agent's namespaces: the main address.
    let host = Proc::spawn("host-sleep", Command::new("sleep").arg("30"));
    assert_eq!(
        intake.address_for(host.pid()).expect("host address"),
        *intake.address()
    );

    let port = free_port();
    // The app is copied out of the checkout: a checkout under /tmp is hidden by the container's /tmp.
    let app = outside_tmp_dir("zs-ctr-");
    std::fs::copy(
        repo_root().join("tests/tracer_fixtures/plain_app.py"),
        app.path().join("plain_app.py"),
    )
    .expect("copy app");
    let fixtures = app.path().to_path_buf();
    let c = container(
        "container-gunicorn",
        &venv_bin("tracer-312", "gunicorn").display().to_string(),
        &[
            "-b",
            &format!("127.0.0.1:{port}"),
            "-w",
            "1",
            "--timeout",
            "4",
            "--chdir",
            &fixtures.display().to_string(),
            "plain_app",
        ],
    );
    let master = python_child(&mut rx, c.pid(), Duration::from_secs(15)).expect("master");
    assert!(master.namespaces.net_differs && master.namespaces.pid_differs);
    let worker = python_child(&mut rx, master.pid, Duration::from_secs(15)).expect("worker");
    assert_eq!(worker.namespaces.net, master.namespaces.net);

    let address = intake
        .address_for(master.pid)
        .expect("address in the netns");
    assert!(matches!(address, IntakeAddress::Abstract(_)), "{address:?}");
    assert_eq!(intake.address_for(worker.pid).expect("same"), address);
    assert_eq!(intake.namespace_listeners(), 1);

    let opts = InjectOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    for pid in [master.pid, worker.pid] {
        intake.registry().allow(pid);
        let code = intake.bootstrap_code_for(pid).expect("bootstrap");
        let r = inject(pid, &code, &opts).expect("inject");
        assert!(r.raised.is_none() && r.confirmed, "{r:?}");
    }
    for pid in [master.pid, worker.pid] {
        assert!(
            rt.block_on(intake.wait_for_peer(pid, Duration::from_secs(15))),
            "tracer in {pid} connected: {:?} {:?}",
            intake.peers(),
            intake.stats()
        );
    }

    // A request made inside the container's network namespace.
    let netns = format!("--net=/proc/{}/ns/net", master.pid);
    let url = format!("http://127.0.0.1:{port}/container-hello");
    let ok = wait_until(Duration::from_secs(10), || {
        Command::new("nsenter")
            .args([netns.as_str(), "curl", "-sf", "-m", "5", url.as_str()])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(ok, "the server answers inside its netns");
    let q = intake.queue();
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        while let Some(b) = q.try_pop() {
            if b.spans
                .iter()
                .any(|s| format!("{s:?}").contains("/container-hello"))
            {
                found = Some(b.pid);
            }
        }
        found.is_some()
    });
    assert_eq!(found, Some(worker.pid), "span from the container's worker");
    assert!(
        container_tmp(master.pid).is_empty(),
        "nothing written in the container: {:?}",
        container_tmp(master.pid)
    );

    // The container goes away: its listener is closed.
    drop(c);
    assert!(
        wait_until(Duration::from_secs(20), || intake.namespace_listeners()
            == 0),
        "listener closed after the container exited"
    );
    let _g = rt.enter();
    drop(intake);
}
