//! The web UI in a real browser: headless Chromium (Debian's `chromium`, tests/setup/10-apt.sh),
//! driven over its DevTools protocol by `tests/ui/browse.py` (stdlib only), against an agent fed
//! by real traced services: frontend (Flask on gunicorn) → inventory (uWSGI) → SQLite.
//!
//! A failure is injected two services deep: inventory's `items` is a view whose `qty` overflows
//! for item 13 (`abs(-9223372036854775808)` raises in SQLite), so GET /orders/13 fails in
//! inventory's database call, inventory answers 500 and the frontend 502. The trace view must
//! name the database call in inventory as the root cause, not the frontend's failing client span.
//!
//! Every page must load with no console error and no request leaving the host, and show the
//! expected services, endpoints and a trace. Screenshots: target/ui-screenshots/<page>.png.
//! Re-run: `cargo test -p zerostep --test ui_browser -- --nocapture`.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The agent's API token, once it has written it (the API needs a credential: tests/api_auth.rs).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn get(port: u16, path: &str) -> Option<Value> {
    let token = TOKEN.get().map(String::as_str).unwrap_or("");
    let (status, body) = http_get_auth(port, path, token).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn every_page_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `make test-deps` (tests/setup/10-apt.sh installs it)"
    );
    let root = tempfile::Builder::new()
        .prefix("zs-ui-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let frontend = app_dir(root.path(), "frontend");
    let inventory = app_dir(root.path(), "inventory");
    let st = Command::new(DEBIAN_PYTHON)
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute('create table items_t(id integer primary key, name text, qty integer)'); \
             c.executemany('insert into items_t values(?,?,?)', [(i,'item%d'%i,i*3) for i in range(1,100)]); \
             c.execute('create view items as select id, name, case when id = 13 \
                        then abs(-9223372036854775808) else qty end as qty from items_t'); \
             c.commit()",
        ])
        .arg(inventory.join("inventory.db"))
        .status()
        .expect("make db");
    assert!(st.success());
    chown_nobody(&frontend);
    chown_nobody(&inventory);

    let b_port = free_port();
    let mut cmd = as_service_user(
        &venv_bin("e2e", "uwsgi"),
        &inventory,
        &root.path().join("inventory.log"),
    );
    cmd.args([
        "--http-socket",
        &format!("127.0.0.1:{b_port}"),
        "--master",
        "--processes",
        "2",
        "--wsgi-file",
        "app.py",
        "--die-on-term",
    ]);
    let b = Proc::spawn("inventory (uWSGI)", &mut cmd);
    let a_port = free_port();
    let mut cmd = as_service_user(
        &venv_bin("e2e", "gunicorn"),
        &frontend,
        &root.path().join("frontend.log"),
    );
    cmd.args(["-w", "2", "-b", &format!("127.0.0.1:{a_port}"), "app:app"])
        .env("INVENTORY_URL", format!("http://127.0.0.1:{b_port}"));
    let a = Proc::spawn("frontend (gunicorn)", &mut cmd);
    assert!(
        wait_for_port(b_port, Duration::from_secs(20)),
        "inventory did not start"
    );
    assert!(
        wait_for_port(a_port, Duration::from_secs(20)),
        "frontend did not start"
    );

    // The agent, scoped to this test's descendants.
    let sensors = repo_root().join("target/sensors");
    assert!(
        sensors.join("gunicorn.wasm").exists(),
        "{} has no sensors: run `make sensors`",
        sensors.display()
    );
    let port = free_port();
    let config = root.path().join("zerostep.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nsensors_dir = \"{}\"\n\
             [scope]\ndescendants_of = [{}]\n",
            root.path().join("state").display(),
            sensors.display(),
            std::process::id()
        ),
    )
    .expect("config");
    let log = root.path().join("agent.log");
    let out = std::fs::File::create(&log).expect("agent log");
    let _agent = Proc::spawn(
        "zerostep agent",
        Command::new(zerostep_bin())
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || !api_token(
            &root.path().join("state")
        )
        .is_empty()),
        "agent did not write its token:\n{}",
        agent_log()
    );
    let _ = TOKEN.set(api_token(&root.path().join("state")));
    // The browser logs in as an operator would: through the link `zerostep ui` prints.
    let link = Command::new(zerostep_bin())
        .args(["ui", "--config"])
        .arg(&config)
        .output()
        .expect("zerostep ui");
    let link = String::from_utf8_lossy(&link.stdout).trim().to_string();
    assert!(link.contains("/login#token="), "{link}");
    let pids: Vec<u32> = [a.pid(), b.pid()]
        .into_iter()
        .flat_map(|p| std::iter::once(p).chain(children(p)))
        .collect();
    let all_traced = || {
        let procs = get(port, "/api/v1/processes").unwrap_or_default();
        pids.iter().all(|pid| {
            procs.as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["pid"].as_u64() == Some(u64::from(*pid))
                        && p["state"].as_str().is_some_and(|s| s.starts_with("traced"))
                })
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(90), all_traced),
        "services not traced: {:?}\n{}",
        get(port, "/api/v1/processes"),
        agent_log()
    );

    // Traffic: good orders, the injected failure (13), and an unknown item (404 in inventory).
    for round in 0..3 {
        for i in 1..=10 {
            assert_eq!(
                http_get(a_port, &format!("/orders/{i}")).expect("GET").0,
                200
            );
        }
        // uWSGI may close the connection on the app's exception (then requests raises in the
        // frontend: 500) or answer 500 (then the frontend aborts with 502).
        let status = http_get(a_port, "/orders/13").expect("GET").0;
        assert!(matches!(status, 500 | 502), "round {round}: {status}");
        assert_eq!(http_get(a_port, "/orders/500").expect("GET").0, 502);
    }

    // The failing trace of /orders/13, found by attribute through the API.
    let mut failing: Option<Value> = None;
    let found = wait_until(Duration::from_secs(30), || {
        let list = get(
            port,
            "/api/v1/traces?status=error&attr=url.path%3D%2Forders%2F13&limit=5",
        )
        .unwrap_or_default();
        let Some(id) = list
            .as_array()
            .and_then(|l| l.first())
            .map(|t| t["trace_id"].clone())
        else {
            return false;
        };
        let id = id.as_str().unwrap_or_default().to_string();
        failing = get(port, &format!("/api/v1/traces/{id}"));
        failing.as_ref().is_some_and(|t| {
            t["spans"].as_array().map_or(0, Vec::len) >= 4 && !t["analysis"]["error"].is_null()
        })
    });
    assert!(
        found,
        "no complete failing trace of /orders/13\n{}",
        agent_log()
    );
    let failing = failing.unwrap_or_default();
    let origin = &failing["analysis"]["error"];
    assert_eq!(origin["service"], "inventory", "{origin:#}");
    let origin_span = failing["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["span_id"] == origin["span_id"]))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        origin_span["kind"], "client",
        "the database call: {origin_span:#}"
    );
    assert!(
        origin["reason"]
            .as_str()
            .is_some_and(|r| r.contains("overflow")),
        "{origin:#}"
    );
    assert!(
        origin["path"].as_array().map_or(0, Vec::len) >= 3,
        "path from the frontend down: {origin:#}"
    );
    let trace_id = failing["trace_id"].as_str().unwrap_or_default().to_string();

    // The pages, in the browser.
    let shots = repo_root().join("target/ui-screenshots");
    let plan = serde_json::json!([
        {"name": "map", "hash": "#/map", "expect": ["Service map", "frontend", "inventory", "/min"]},
        // An edge of the map opens the traces that crossed it.
        {"name": "edge-traces", "hash": "#/map?range=3600000", "expect": ["Service map"],
         "actions": [{"click": "a.edge-link text", "then": "location.hash.includes('caller=frontend') && document.body.innerText.includes('Calls from frontend into inventory') && document.querySelectorAll('tbody tr').length > 0"}]},
        {"name": "endpoints", "hash": "#/endpoints?service=frontend",
         "expect": ["Endpoints over time", "Requests per minute", "Latency", "/orders/<int:order_id>"]},
        {"name": "endpoints-inventory", "hash": "#/endpoints?service=inventory",
         "expect": ["Endpoints over time", "Error rate", "Latency distribution"],
         "actions": [
            // Sorting by a column header.
            {"click": "th.sortable:nth-child(2)", "then": "document.querySelector('th.sortable:nth-child(2)').getAttribute('aria-sort') !== 'none'"},
            // Dragging across a chart zooms to that range: it lands in the URL.
            {"drag": ".chart .u-over", "from": 0.5, "to": 0.999,
             "then": "/[?&]from=\\d+/.test(location.hash) && /[?&]to=\\d+/.test(location.hash) && document.body.innerText.includes('Back to live range')"}]},
        {"name": "endpoint", "hash": "#/endpoints?service=frontend&endpoint=GET%20%2Forders%2F%3Cint%3Aorder_id%3E",
         "expect": ["Endpoints over time", "window before", "Latency distribution"]},
        {"name": "traces", "hash": "#/traces?service=frontend",
         "expect": ["Trace duration over time", "frontend", "error"]},
        {"name": "traces-by-attribute", "hash": "#/traces?attr=url.path%3D%2Forders%2F13",
         "expect": ["Traces", "error", "frontend"]},
        {"name": "trace", "hash": format!("#/trace/{trace_id}"),
         "expect": ["Root cause", "inventory", "overflow", "Critical path", "app.py\", line"]},
        {"name": "trace-collapsed", "hash": format!("#/trace/{trace_id}?collapsed"),
         "expect": ["Root cause"],
         "actions": [
            // Keyboard: ← on the root row collapses it, → expands it again.
            {"key": "ArrowLeft", "keycode": 37, "focus": ".waterfall .row",
             "then": "document.querySelectorAll('.waterfall .row').length === 1"},
            {"key": "ArrowRight", "keycode": 39, "focus": ".waterfall .row",
             "then": "document.querySelectorAll('.waterfall .row').length === 4"},
            {"click": ".waterfall .row .twisty", "then": "document.querySelectorAll('.waterfall .row').length === 1"}]},
        {"name": "processes", "hash": "#/processes", "expect": ["Processes", "frontend", "inventory", "traced"],
         // Live: the view renders itself again (every 10 s) without a reload.
         "actions": [{"then": "(window.zsFirst = window.zsFirst || document.body.dataset.ready) && document.body.dataset.ready !== window.zsFirst && document.body.innerText.includes('frontend')"}]},
        {"name": "sensors", "hash": "#/sensors", "expect": ["Sensors", "gunicorn", "uwsgi"]},
        {"name": "map-narrow", "hash": "#/map", "expect": ["Service map", "frontend"], "width": 480, "height": 800},
    ]);
    let plan_file = root.path().join("plan.json");
    std::fs::write(&plan_file, plan.to_string()).expect("plan");
    let out = Command::new("python3")
        .arg(repo_root().join("tests/ui/browse.py"))
        .arg(CHROMIUM)
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&shots)
        .arg(&plan_file)
        .arg(&link)
        .output()
        .expect("run browse.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browse.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(&stdout).expect("browse.py JSON");
    let pages = result["pages"].as_array().cloned().unwrap_or_default();
    assert_eq!(pages.len(), plan.as_array().map_or(0, Vec::len));
    for p in &pages {
        eprintln!("{}: {}", p["name"], p["screenshot"]);
        assert!(
            p["ok"] == true,
            "page {} not as expected (missing {}): {}\n{}",
            p["name"],
            p["missing"],
            p["url"],
            p["text"]
        );
    }
    assert_eq!(
        result["console_errors"],
        serde_json::json!([]),
        "console errors"
    );
    assert_eq!(
        result["requests_off_host"],
        serde_json::json!([]),
        "requests off the host"
    );
}
