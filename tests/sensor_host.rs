//! The sensor host against misbehaving sensors built by `make test-sensors` from the real contract
//! (tests/sensors/hostile), and the agent binary's directory watch and API.
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{free_port, wait_until, zerostep_bin, Proc};
use zerostep::discover::ProcessInfo;
use zerostep::sensors::{
    LoadOutcome, Match, QuarantinePolicy, Role, SandboxEngine, SandboxLimits, SensorRef,
    SensorRegistry, SensorState,
};
use zerostep::span::{AttrValue, Attribute, Span, SpanKind};

/// A component `make` built into `target/SUBDIR`; the message names the target that builds it.
fn built_wasm(subdir: &str, name: &str, make_target: &str) -> PathBuf {
    let p = support::repo_root()
        .join("target")
        .join(subdir)
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: run `make {make_target}`",
        p.display()
    );
    p
}

fn test_sensor(name: &str) -> PathBuf {
    built_wasm("test-sensors", name, "test-sensors")
}

fn registry() -> Arc<SensorRegistry> {
    let limits = SandboxLimits {
        cpu_per_call: Duration::from_millis(100),
        wall_per_call: Duration::from_millis(300),
        ..Default::default()
    };
    let engine = Arc::new(SandboxEngine::new(limits, None).expect("engine"));
    Arc::new(SensorRegistry::new(
        engine,
        QuarantinePolicy {
            failures: 3,
            window: Duration::from_secs(60),
        },
    ))
}

/// Puts `variant` at `dir/hostile.wasm` the way an operator would: write aside, then rename.
fn install(dir: &Path, variant: &str) -> PathBuf {
    let dest = dir.join("hostile.wasm");
    let tmp = dir.join(".hostile.wasm.tmp");
    std::fs::copy(test_sensor(variant), &tmp).expect("copy sensor");
    std::fs::rename(&tmp, &dest).expect("rename sensor");
    dest
}

fn any_match() -> Match {
    Match {
        technology: "test".into(),
        role: Role::Standalone,
        service_name: "svc".into(),
        service_name_source: "test".into(),
        instrumentations: vec![],
        injection: Default::default(),
    }
}

fn spans(n: usize, name: &str) -> Vec<Span> {
    (0..n)
        .map(|i| Span {
            trace_id: 1,
            span_id: i as u64 + 1,
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::Server,
            start_unix_nano: 1,
            end_unix_nano: 2,
            status: Default::default(),
            attributes: vec![Attribute::str("url.path", "/x")],
            events: vec![],
        })
        .collect()
}

fn served_by(spans: &[Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| match s.attr("test.sensor.version") {
            Some(AttrValue::Str(v)) => v.clone(),
            other => panic!("span not enriched: {other:?}"),
        })
        .collect()
}

fn status_of(reg: &SensorRegistry) -> zerostep::sensors::SensorStatus {
    let mut st = reg.status();
    assert_eq!(st.len(), 1, "{st:?}");
    st.remove(0)
}

#[test]
fn good_sensor_enriches_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let path = install(dir.path(), "well-behaved");
    assert_eq!(
        reg.load_path(&path),
        LoadOutcome::Activated {
            name: "hostile".into(),
            version: "1.0.0".into()
        }
    );
    assert_eq!(reg.load_path(&path), LoadOutcome::Unchanged);
    let mut batch = spans(5, "GET");
    let version = reg
        .enrich(&SensorRef(path.clone()), &any_match(), &mut batch)
        .expect("enrich");
    assert_eq!(version, "1.0.0");
    assert_eq!(served_by(&batch), vec!["1.0.0"; 5]);

    let process = ProcessInfo {
        pid: 7,
        cmdline: vec!["python".into(), "hostile-test".into()],
        ..Default::default()
    };
    let (sref, m) = reg
        .match_process(&process)
        .expect("matches its test process");
    assert_eq!(sref.0, path);
    assert_eq!(m.service_name, "hostile-1.0.0");
    assert!(reg
        .match_process(&ProcessInfo {
            pid: 8,
            cmdline: vec!["bash".into()],
            ..Default::default()
        })
        .is_none());

    let st = status_of(&reg);
    assert_eq!(st.state, SensorState::Active);
    assert_eq!(
        st.serving.as_ref().map(|v| v.version.as_str()),
        Some("1.0.0")
    );
    assert!(st.calls.calls >= 3, "{:?}", st.calls);
    assert_eq!(st.calls.errors, 0);
    assert!(st.calls.p99_us > 0.0);
}

/// Each misbehaviour passes the canary (it is triggered only by a span named "trigger"), becomes
/// active, fails while serving, and is quarantined with the previous version serving again.
fn quarantines_while_previous_serves(variant: &str, expect_in_reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let path = install(dir.path(), "well-behaved");
    assert!(matches!(
        reg.load_path(&path),
        LoadOutcome::Activated { .. }
    ));
    install(dir.path(), variant);
    assert_eq!(
        reg.load_path(&path),
        LoadOutcome::Activated {
            name: "hostile".into(),
            version: "9.9.9".into()
        }
    );
    let sref = SensorRef(path.clone());

    // One failure drops only the instance: the same version serves the next, normal batch.
    let err = reg
        .enrich(&sref, &any_match(), &mut spans(2, "trigger"))
        .expect_err("misbehaves");
    assert!(
        format!("{err}").contains(expect_in_reason),
        "{variant}: {err}"
    );
    let mut ok = spans(2, "GET");
    assert_eq!(
        reg.enrich(&sref, &any_match(), &mut ok)
            .expect("fresh instance serves"),
        "9.9.9"
    );

    let started = Instant::now();
    for _ in 0..2 {
        let _ = reg.enrich(&sref, &any_match(), &mut spans(2, "trigger"));
    }
    let st = status_of(&reg);
    assert_eq!(st.state, SensorState::Quarantined, "{variant}: {st:?}");
    let q = st.quarantined.as_ref().expect("quarantine reason");
    assert!(
        q.reason.contains(expect_in_reason),
        "{variant}: {}",
        q.reason
    );
    assert_eq!(
        st.serving.as_ref().map(|v| v.version.as_str()),
        Some("1.0.0"),
        "{variant}: previous version serves"
    );
    assert!(st.calls.traps + st.calls.errors >= 3);

    let mut batch = spans(3, "trigger");
    assert_eq!(
        reg.enrich(&sref, &any_match(), &mut batch)
            .expect("previous version serves"),
        "1.0.0"
    );
    assert_eq!(served_by(&batch), vec!["1.0.0"; 3]);
    // The quarantined content is not retried by a rescan.
    assert_eq!(reg.load_path(&path), LoadOutcome::StillQuarantined);
    eprintln!(
        "{variant}: quarantined after {:?}: {}",
        started.elapsed(),
        q.reason
    );
}

#[test]
fn infinite_loop_is_stopped_by_the_cpu_budget() {
    // CPU budget, or the wall-clock timeout first when this machine is busy.
    quarantines_while_previous_serves("infinite-loop", "per call exceeded");
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    quarantines_while_previous_serves("memory-bomb", "trapped");
}

#[test]
fn panic_traps_and_the_instance_is_replaced() {
    quarantines_while_previous_serves("panic", "trapped");
}

#[test]
fn huge_return_is_refused() {
    quarantines_while_previous_serves("huge-return", "over the limit");
}

/// Files the canary refuses: the serving version stays, the reason is visible.
fn refused_keeps_previous(bytes: &[u8], expect_in_reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let path = install(dir.path(), "well-behaved");
    assert!(matches!(
        reg.load_path(&path),
        LoadOutcome::Activated { .. }
    ));
    std::fs::write(&path, bytes).unwrap();
    match reg.load_path(&path) {
        LoadOutcome::Refused(reason) => assert!(reason.contains(expect_in_reason), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let st = status_of(&reg);
    assert_eq!(st.state, SensorState::Active);
    assert_eq!(
        st.serving.as_ref().map(|v| v.version.as_str()),
        Some("1.0.0")
    );
    let refused = st.last_refused.expect("refusal visible");
    assert!(
        refused.reason.contains(expect_in_reason),
        "{}",
        refused.reason
    );
    let mut batch = spans(1, "GET");
    assert_eq!(
        reg.enrich(&SensorRef(path), &any_match(), &mut batch)
            .unwrap(),
        "1.0.0"
    );
}

#[test]
fn wrong_contract_version_is_refused() {
    refused_keeps_previous(
        &std::fs::read(test_sensor("wrong-contract")).unwrap(),
        "built for contract 9.0.0",
    );
}

#[test]
fn core_module_is_refused() {
    let core = wat::parse_str(r#"(module (func (export "describe")))"#).unwrap();
    refused_keeps_previous(&core, "core WebAssembly module, not a component");
}

#[test]
fn truncated_file_is_refused() {
    let full = std::fs::read(test_sensor("well-behaved")).unwrap();
    refused_keeps_previous(&full[..full.len() / 3], "does not compile");
}

#[test]
fn garbage_is_refused() {
    refused_keeps_previous(b"#!/bin/sh\necho not wasm\n", "not a WebAssembly file");
}

#[test]
fn component_of_another_world_is_refused() {
    let other =
        wat::parse_str(r#"(component (core module $m) (core instance (instantiate $m)))"#).unwrap();
    refused_keeps_previous(&other, "does not implement the sensor world");
}

#[test]
fn filesystem_import_is_refused() {
    let fs =
        wat::parse_str(r#"(component (import "wasi:filesystem/types@0.2.0" (instance)))"#).unwrap();
    refused_keeps_previous(&fs, "imports `wasi:filesystem/types@0.2.0`");
}

#[test]
fn first_file_that_fails_is_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let path = dir.path().join("broken.wasm");
    std::fs::write(&path, b"\0asm\x0d\0\x01\0garbage").unwrap();
    assert!(matches!(reg.load_path(&path), LoadOutcome::Refused(_)));
    let st = status_of(&reg);
    assert_eq!(st.state, SensorState::Failed);
    assert!(st.serving.is_none());
    assert!(reg
        .enrich(&SensorRef(path), &any_match(), &mut spans(1, "GET"))
        .is_err());
}

/// Two threads enrich continuously while the file is replaced back and forth: no call fails, and
/// every batch is served wholly by one version.
#[test]
fn hot_swap_under_load_fails_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let path = dir.path().join("hostile.wasm");
    std::fs::copy(test_sensor("versioned-1.0.0"), &path).unwrap();
    assert!(matches!(
        reg.load_path(&path),
        LoadOutcome::Activated { .. }
    ));
    let sref = SensorRef(path.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (reg, sref, stop, calls) = (reg.clone(), sref.clone(), stop.clone(), calls.clone());
        workers.push(std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, u64>::new();
            while !stop.load(Ordering::Relaxed) {
                let mut batch = spans(8, "GET");
                let version = reg
                    .enrich(&sref, &any_match(), &mut batch)
                    .expect("no call fails during a swap");
                let by = served_by(&batch);
                assert!(
                    by.iter().all(|v| *v == version),
                    "one batch, one version: {by:?}"
                );
                *seen.entry(version).or_default() += 1;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        let v = if i % 2 == 0 {
            "versioned-2.0.0"
        } else {
            "versioned-1.0.0"
        };
        let tmp = dir.path().join(".swap.tmp");
        std::fs::copy(test_sensor(v), &tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(
            matches!(reg.load_path(&path), LoadOutcome::Activated { .. }),
            "swap {i}"
        );
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);
    let mut total = std::collections::BTreeMap::<String, u64>::new();
    for w in workers {
        for (v, n) in w.join().expect("worker thread") {
            *total.entry(v).or_default() += n;
        }
    }
    eprintln!("calls per version during swaps: {total:?}");
    assert!(
        total.get("1.0.0").copied().unwrap_or(0) > 0
            && total.get("2.0.0").copied().unwrap_or(0) > 0,
        "{total:?}"
    );
    assert_eq!(status_of(&reg).calls.errors, 0);
}

#[test]
fn compiled_cache_is_used_and_a_tampered_entry_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let sensor = test_sensor("well-behaved");
    {
        let engine = Arc::new(SandboxEngine::new(SandboxLimits::default(), Some(&cache)).unwrap());
        zerostep::sensors::canary::load(&engine, &sensor).expect("loads");
    }
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "one compiled entry: {entries:?}");
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    let engine = Arc::new(SandboxEngine::new(SandboxLimits::default(), Some(&cache)).unwrap());
    let loaded = zerostep::sensors::canary::load(&engine, &sensor)
        .expect("recompiles instead of loading tampered code");
    assert_eq!(loaded.info.version, "1.0.0");
    assert_ne!(
        std::fs::read(&entries[0]).unwrap(),
        bytes,
        "the tampered entry was replaced"
    );
}

fn api_sensors(port: u16, state: &std::path::Path) -> Option<serde_json::Value> {
    let (status, body) =
        support::http_get_auth(port, "/api/v1/sensors", &support::api_token(state)).ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

fn serving_version(v: &serde_json::Value) -> Option<String> {
    v.as_array()?
        .first()?
        .get("serving")?
        .get("version")?
        .as_str()
        .map(str::to_string)
}

/// The real binary: loads at start, picks up a replaced file within a second, survives hostile
/// files, and forgets a removed one.
#[test]
fn agent_watches_the_sensors_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sensors = dir.path().join("sensors");
    std::fs::create_dir(&sensors).unwrap();
    install(&sensors, "well-behaved");
    let port = free_port();
    let state = dir.path().join("state");
    let mut agent = Proc::spawn(
        "agent",
        std::process::Command::new(zerostep_bin())
            .args(["agent", "--sensors-dir"])
            .arg(&sensors)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &format!("127.0.0.1:{port}")]),
    );
    assert!(
        support::wait_for_port(port, Duration::from_secs(20)),
        "agent API up"
    );
    assert!(wait_until(Duration::from_secs(5), || api_sensors(
        port, &state
    )
    .and_then(|v| serving_version(&v))
    .as_deref()
        == Some("1.0.0")));

    for (variant, version) in [("versioned-2.0.0", "2.0.0"), ("versioned-1.0.0", "1.0.0")] {
        let t = Instant::now();
        install(&sensors, variant);
        assert!(
            wait_until(Duration::from_secs(3), || api_sensors(port, &state)
                .and_then(|v| serving_version(&v))
                .as_deref()
                == Some(version)),
            "{variant} active"
        );
        let took = t.elapsed();
        eprintln!("{variant}: active {took:?} after the rename");
        assert!(
            took < Duration::from_secs(2),
            "replaced file active in about a second, took {took:?}"
        );
    }

    // A file the canary refuses: the agent stays up, 1.0.0 keeps serving, the reason is in the API.
    install(&sensors, "wrong-contract");
    assert!(wait_until(Duration::from_secs(3), || {
        api_sensors(port, &state)
            .and_then(|v| {
                v[0]["last_refused"]["reason"]
                    .as_str()
                    .map(|r| r.contains("9.0.0"))
            })
            .unwrap_or(false)
    }));
    assert_eq!(
        api_sensors(port, &state)
            .and_then(|v| serving_version(&v))
            .as_deref(),
        Some("1.0.0")
    );

    // `zerostep sensors list` talks to it.
    let out = std::process::Command::new(zerostep_bin())
        .args(["sensors", "list", "--agent", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(state.join("api-token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("hostile")
            && text.contains("active")
            && text.contains("9.0.0"),
        "{text}"
    );

    std::fs::remove_file(sensors.join("hostile.wasm")).unwrap();
    assert!(wait_until(Duration::from_secs(3), || api_sensors(
        port, &state
    )
    .and_then(|v| v.as_array().map(Vec::is_empty))
        == Some(true)));
    assert!(agent.is_alive(), "agent survived everything");
}

#[test]
fn check_command_exit_codes() {
    let ok = std::process::Command::new(zerostep_bin())
        .args(["sensors", "check"])
        .arg(test_sensor("well-behaved"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok: hostile 1.0.0"));
    let bad = std::process::Command::new(zerostep_bin())
        .args(["sensors", "check"])
        .arg(test_sensor("wrong-contract"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("built for contract 9.0.0"));
}

/// The built gunicorn and uWSGI components, through the sandbox, against every process collected
/// from real servers (tests/fixtures/processes): the same verdicts as the rules compiled natively.
#[test]
fn real_sensors_match_collected_processes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    for s in ["gunicorn", "uwsgi"] {
        let built = built_wasm("sensors", s, "sensors");
        let path = dir.path().join(format!("{s}.wasm"));
        std::fs::copy(&built, &path).unwrap();
        assert!(
            matches!(reg.load_path(&path), LoadOutcome::Activated { .. }),
            "{s}"
        );
    }
    let fixtures = support::repo_root().join("tests/fixtures/processes");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        for p in fixture["processes"].as_array().unwrap() {
            let info: ProcessInfo = serde_json::from_value(p.clone()).unwrap();
            let got = reg.match_process(&info).map(|(_, m)| m);
            let expect = &p["expect"];
            let where_ = format!("{} pid {}", entry.path().display(), info.pid);
            if expect.is_null() {
                assert!(got.is_none(), "{where_}: matched {got:?}");
            } else {
                let m = got.unwrap_or_else(|| panic!("{where_}: no match"));
                assert_eq!(
                    m.technology,
                    expect["technology"].as_str().unwrap(),
                    "{where_}"
                );
                assert_eq!(
                    format!("{:?}", m.role).to_lowercase(),
                    expect["role"].as_str().unwrap(),
                    "{where_}"
                );
                assert_eq!(
                    m.service_name,
                    expect["service_name"].as_str().unwrap(),
                    "{where_}"
                );
                assert_eq!(
                    m.service_name_source,
                    expect["service_name_source"].as_str().unwrap(),
                    "{where_}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} fixture processes");
    assert!(reg.status().iter().all(|s| s.calls.errors == 0));
}

/// A sensor decides what gets injected as root: a file another user could have written, or one in
/// a directory another user can add to, is refused with the reason (as `zerostep sensors list`
/// shows it), and loads once fixed.
#[test]
fn sensor_files_others_can_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let file = install(dir.path(), "well-behaved");
    for (mode, dir_mode, why) in [
        (0o666, 0o755, "writable by every user"),
        (0o664, 0o755, "writable by its group"),
        (0o644, 0o777, "the sensors directory"),
    ] {
        chmod(&file, mode);
        chmod(dir.path(), dir_mode);
        let out = reg.load_path(&file);
        assert!(
            matches!(&out, LoadOutcome::Refused(r) if r.contains(why)),
            "{mode:o}/{dir_mode:o}: {out:?}"
        );
        let st = status_of(&reg);
        assert!(st.serving.is_none(), "{mode:o}: it serves");
        assert!(
            st.last_refused
                .as_ref()
                .is_some_and(|r| r.reason.contains(why)),
            "{:?}",
            st.last_refused
        );
    }
    std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
    chmod(dir.path(), 0o755);
    assert!(matches!(reg.load_path(&file), LoadOutcome::Refused(r) if r.contains("uid 65534")));
    std::os::unix::fs::chown(&file, Some(0), None).expect("chown");
    assert!(
        matches!(reg.load_path(&file), LoadOutcome::Activated { .. }),
        "loads once only root can write it"
    );
}

/// A sink that keeps what it gets, for the redaction test.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<Span>>);

impl zerostep::pipeline::Sink for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }
    fn submit(&self, batch: Arc<zerostep::pipeline::EnrichedBatch>) {
        self.0.lock().unwrap().extend(batch.spans.iter().cloned());
    }
    fn stats(&self) -> zerostep::pipeline::SinkStats {
        Default::default()
    }
}

/// Secrets of every kind the baseline knows, on spans named "trigger" (the hostile sensor
/// misbehaves on those).
fn secret_spans(n: u64) -> Vec<Span> {
    let base = Span {
        trace_id: 7,
        span_id: n * 10,
        parent_span_id: None,
        name: "trigger".into(),
        kind: SpanKind::Server,
        start_unix_nano: 1,
        end_unix_nano: 2,
        status: Default::default(),
        attributes: vec![
            Attribute::str(
                "url.full",
                "https://alice:s3cr3tpw@api.example/cb?access_token=tok9z",
            ),
            Attribute::str("url.query", "page=1&api_key=apik3y"),
            Attribute::str("http.request.header.authorization", "Bearer b3arer"),
        ],
        events: vec![],
    };
    let db = Span {
        span_id: n * 10 + 1,
        parent_span_id: Some(n * 10),
        kind: SpanKind::Client,
        attributes: vec![
            Attribute::str("db.system", "postgresql"),
            Attribute::str(
                "db.query.text",
                "UPDATE users SET pw = 'hunter22' WHERE id = 31337",
            ),
        ],
        ..base.clone()
    };
    vec![base, db]
}

const SECRETS: &[&str] = &["s3cr3tpw", "tok9z", "apik3y", "b3arer", "hunter22", "31337"];

#[test]
fn redaction_fails_closed_when_the_sensor_fails_or_is_gone() {
    use zerostep::intake::{SpanBatch, SpanQueue};
    use zerostep::orchestrate::{Attribution, ProcessDirectory};
    use zerostep::pipeline::{Pipeline, Resource, Sink};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = install(dir.path(), "panic");
    let reg = Arc::new(SensorRegistry::new(
        Arc::new(SandboxEngine::new(SandboxLimits::default(), None).expect("engine")),
        // Never quarantined here: every batch fails in the sensor itself.
        QuarantinePolicy {
            failures: 1000,
            window: Duration::from_secs(60),
        },
    ));
    assert!(matches!(
        reg.load_path(&path),
        LoadOutcome::Activated { .. }
    ));
    let directory = ProcessDirectory::default();
    directory.insert(
        4242,
        Attribution {
            sensor: SensorRef(path.clone()),
            matched: any_match(),
            resource: Arc::new(Resource {
                service_name: "svc".into(),
                host_name: "h".into(),
                pid: 4242,
                executable: String::new(),
                command_line: String::new(),
                runtime_version: String::new(),
                technology: "test".into(),
                role: "standalone".into(),
                tracer_version: String::new(),
            }),
        },
    );
    let queue = SpanQueue::new(64);
    let sink = Arc::new(Collect::default());
    let sinks: Vec<Arc<dyn Sink>> = vec![sink.clone()];
    let pipeline = Pipeline::start(
        queue.clone(),
        directory,
        reg.clone(),
        sinks,
        rt.handle().clone(),
    )
    .expect("pipeline");
    let push = |n: u64| {
        queue.push(SpanBatch {
            pid: 4242,
            root_pid: 4242,
            spans: secret_spans(n),
            dropped_in_process: 0,
            received_at: std::time::SystemTime::now(),
            tracer_version: None,
        })
    };
    // 1. The sensor panics on these spans; 2. the sensor's file is gone (no sensor serves).
    push(1);
    assert!(
        wait_until(Duration::from_secs(10), || sink.0.lock().unwrap().len()
            >= 2),
        "spans of a failed enrichment still reach the sinks"
    );
    assert!(pipeline.stats().enrich_failures >= 1);
    assert!(reg.remove_path(&path));
    push(2);
    assert!(
        wait_until(Duration::from_secs(10), || sink.0.lock().unwrap().len()
            >= 4),
        "spans with no serving sensor still reach the sinks"
    );
    let stored = format!("{:?}", sink.0.lock().unwrap());
    for secret in SECRETS {
        assert!(
            !stored.contains(secret),
            "{secret} reached a sink: {stored}"
        );
    }
    // What is not secret is kept, so the baseline did not just blank everything.
    assert!(
        stored.contains("api.example") && stored.contains("page=1"),
        "{stored}"
    );
    assert_eq!(pipeline.stats().redacted_natively, 4);
}
