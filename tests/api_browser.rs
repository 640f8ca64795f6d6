//! The API's browser defences, from real pages in headless Chromium (Debian `chromium`): a user
//! logs in to the UI with the link `zerostep ui` prints and the UI loads its data; a page from
//! another port of the same host (another origin, the same site) then tries to detach through a
//! form post, a no-cors fetch and a CORS fetch, to read processes and to read the UI's session;
//! a DNS-rebinding name that resolves to the agent gets nothing. The page reports what it saw,
//! and the agent's `/metrics` says what it refused and why.
//!
//! The agent has no sensors and is scoped to this test's descendants. Re-run:
//! `cargo test -p zerostep --test api_browser`.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn chromium(profile: &Path, extra: &[&str], url: &str) -> String {
    let t = std::time::Instant::now();
    // A hung browser fails the test instead of blocking it (coreutils timeout).
    let out = Command::new("timeout")
        .args(["120", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // Lets the page's scripts run to completion before the DOM is printed (virtual time:
            // no wall-clock wait and nothing timing-dependent).
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .args(["--dump-dom", url])
        .output()
        .expect("chromium (Debian package `chromium`: make test-deps)");
    eprintln!("chromium {url}: {:?} in {:?}", out.status, t.elapsed());
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn refused(port: u16, token: &str, reason: &str) -> u64 {
    let (_, body) = http_get_auth(port, "/metrics", token).expect("metrics");
    let key = format!("zerostep_api_refused_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {key} in /metrics:\n{body}"))
}

const EVIL: &str = r#"<!doctype html><html><body>
<form id="f" method="POST" action="AGENT/api/v1/detach" enctype="text/plain" target="sink">
<input name='{"service":"victim","x":"' value='"}'></form>
<iframe name="sink"></iframe>
<script>
const A = "AGENT", out = [];
async function go() {
  document.getElementById("f").submit();
  try {
    await fetch(A + "/api/v1/detach", {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"}, body: '{"service":"victim"}'});
    out.push("nocors-sent");
  } catch (e) { out.push("nocors-error"); }
  try {
    const r = await fetch(A + "/api/v1/detach", {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: '{"service":"victim"}'});
    out.push("json-" + r.status);
  } catch (e) { out.push("json-blocked"); }
  try {
    const r = await fetch(A + "/api/v1/processes", {credentials: "include"});
    out.push("read-" + r.status + "-" + (await r.text()).length);
  } catch (e) { out.push("read-blocked"); }
  out.push("session-" + localStorage.getItem("zerostep_session"));
  document.body.setAttribute("data-result", out.join(","));
}
go();
</script></body></html>"#;

#[test]
fn pages_in_a_browser_cannot_command_or_read_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let sensors = dir.path().join("sensors");
    std::fs::create_dir(&sensors).expect("sensors");
    let state = dir.path().join("state");
    let config = dir.path().join("zerostep.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nsensors_dir = \"{}\"\n\
             [scope]\ndescendants_of = [{}]\n",
            state.display(),
            sensors.display(),
            std::process::id()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let _agent = Proc::spawn(
        "zerostep agent",
        Command::new(zerostep_bin())
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log),
    );
    assert!(
        wait_until(Duration::from_secs(30), || http_get(port, "/api/v1/health")
            .is_ok_and(|(s, _)| s == 200)),
        "agent did not come up"
    );
    let token = api_token(&state);
    let profile = dir.path().join("profile");

    // Logged in through the link `zerostep ui` prints: the UI itself loads.
    let link = Command::new(zerostep_bin())
        .args(["ui", "--config"])
        .arg(&config)
        .output()
        .expect("zerostep ui");
    let link = String::from_utf8_lossy(&link.stdout).trim().to_string();
    assert!(link.contains("/login#token="), "{link}");
    // (The map view renders its heading only once its data calls were answered.)
    let credential_refusals = refused(port, &token, "credential");
    let page = chromium(&profile, &[], &link);
    assert!(
        page.contains("<h2>Service map</h2>") && !page.contains("Could not load"),
        "the login link did not open the UI with its data:\n{page}"
    );
    assert_eq!(
        refused(port, &token, "credential"),
        credential_refusals,
        "the UI's data calls were refused"
    );

    // The attacker's page: another port on the same host is another origin but the same site.
    let site = dir.path().join("site");
    std::fs::create_dir(&site).expect("site");
    let agent_origin = format!("http://127.0.0.1:{port}");
    std::fs::write(site.join("evil.html"), EVIL.replace("AGENT", &agent_origin)).expect("page");
    let evil_port = free_port();
    let _evil = Proc::spawn(
        "attacker's web server",
        Command::new(DEBIAN_PYTHON)
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(evil_port.to_string())
            .current_dir(&site)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    assert!(wait_for_port(evil_port, Duration::from_secs(10)));
    let before: Vec<u64> = ["content_type", "origin", "host"]
        .iter()
        .map(|r| refused(port, &token, r))
        .collect();
    let dom = chromium(
        &profile,
        &[],
        &format!("http://127.0.0.1:{evil_port}/evil.html"),
    );
    let result = dom
        .split("data-result=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the page did not finish:\n{dom}"))
        .to_string();
    // The no-cors post goes out (the browser allows it) but is refused; the JSON one never leaves
    // (its preflight is refused, no CORS headers); the read's answer is not given to the page.
    // The UI's session lives in the agent origin's storage: another port cannot see it.
    assert!(
        result.contains("json-blocked")
            && result.contains("read-blocked")
            && result.contains("session-null"),
        "{result}"
    );
    let content_type = refused(port, &token, "content_type") - before[0];
    eprintln!("the page saw: {result}; refused as not JSON: {content_type}");
    assert!(
        content_type >= 3,
        "form post, no-cors post and preflight refused as not JSON: {content_type} ({result})"
    );

    // Still logged in afterwards (the session lasted across browser runs): the page above was
    // visited by a logged-in user.
    let ui = chromium(&profile, &[], &format!("{agent_origin}/"));
    assert!(
        ui.contains("<h2>Service map</h2>") && !ui.contains("Could not load"),
        "no longer logged in:\n{ui}"
    );

    // DNS rebinding: a name the attacker controls, resolving to the agent.
    let rebind = chromium(
        &profile,
        &["--host-resolver-rules=MAP rebind.example 127.0.0.1"],
        &format!("http://rebind.example:{port}/api/v1/processes"),
    );
    assert!(
        rebind.contains("does not name this agent") && !rebind.contains("\"pid\""),
        "{rebind}"
    );
    assert!(refused(port, &token, "host") > before[2]);
}
