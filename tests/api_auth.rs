//! Who may command the agent, against the real binary over loopback: the API token file is
//! root-only, state-changing routes need the token (or a UI session made from it), read-only ones
//! too unless the configuration opens them on loopback, the `Host` header must name the agent
//! (DNS rebinding), and cross-site requests (form posts, foreign origins) change nothing. An
//! unprivileged user (`nobody`, through `setpriv`) can neither read the token nor detach.
//!
//! The agents here have no sensors (they match nothing) and are scoped to this test's descendants.
//! Re-run: `cargo test -p zerostep --test api_auth -- --test-threads=2`.
mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const NOBODY: &str = "65534";

struct Agent {
    _proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(api_section: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let sensors = dir.path().join("sensors");
        std::fs::create_dir(&sensors).expect("sensors dir");
        let config = dir.path().join("zerostep.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nsensors_dir = \"{}\"\n\
                 [scope]\ndescendants_of = [{}]\n[api]\n{api_section}\n",
                dir.path().join("state").display(),
                sensors.display(),
                std::process::id()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let proc = Proc::spawn(
            "zerostep agent",
            Command::new(zerostep_bin())
                .args(["agent", "--config"])
                .arg(&config)
                .stdout(log.try_clone().expect("dup"))
                .stderr(log),
        );
        let agent = Agent {
            _proc: proc,
            port,
            dir,
        };
        assert!(
            wait_until(Duration::from_secs(30), || http_get(port, "/api/v1/health")
                .is_ok_and(|(s, _)| s == 200)),
            "agent did not come up:\n{}",
            std::fs::read_to_string(agent.dir.path().join("agent.log")).unwrap_or_default()
        );
        agent
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn token(&self) -> String {
        api_token(&self.state())
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("zerostep.toml")
    }

    /// (status, head, body) of a request with these headers.
    fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        http_request(self.port, method, path, headers, body).expect("request")
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token())
    }
}

const DETACH_NOTHING: &str = r#"{"service":"no-such-service"}"#;

#[test]
fn the_token_is_root_only_and_required() {
    let a = Agent::start("");
    let token_file = a.state().join("api-token");
    let meta = std::fs::metadata(&token_file).expect("the agent made its token file");
    assert_eq!(meta.mode() & 0o777, 0o600, "token file mode");
    assert_eq!(meta.uid(), 0, "token file owner");
    assert_eq!(a.token().len(), 64);

    assert_eq!(a.req("GET", "/api/v1/health", &[], "").0, 200);
    let bearer = a.bearer();
    let json = ("Content-Type", "application/json");
    for path in [
        "/api/v1/processes",
        "/api/v1/sensors",
        "/api/v1/traces",
        "/metrics",
    ] {
        let (s, head, _) = a.req("GET", path, &[], "");
        assert_eq!(s, 401, "{path} without a token");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let wrong = format!("Bearer {}", "0".repeat(64));
        assert_eq!(
            a.req("GET", path, &[("Authorization", &wrong)], "").0,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            a.req("GET", path, &[("Authorization", &bearer)], "").0,
            200,
            "{path} with the token"
        );
    }
    // The UI's static files hold no data and are served to anyone (their data calls are not).
    for path in ["/", "/ui/app.js", "/login", "/login.js"] {
        let (s, head, _) = a.req("GET", path, &[], "");
        assert_eq!(s, 200, "{path}");
        assert!(head.contains("script-src 'self'"), "{path}: {head}");
    }

    assert_eq!(
        a.req("POST", "/api/v1/detach", &[json], DETACH_NOTHING).0,
        401
    );
    let wrong = format!("Bearer {}", "f".repeat(64));
    assert_eq!(
        a.req(
            "POST",
            "/api/v1/detach",
            &[json, ("Authorization", &wrong)],
            DETACH_NOTHING
        )
        .0,
        401
    );
    let (s, _, body) = a.req(
        "POST",
        "/api/v1/detach",
        &[json, ("Authorization", &bearer)],
        DETACH_NOTHING,
    );
    assert_eq!((s, body.as_str()), (200, r#"{"detached":[]}"#));

    // Root's CLI finds the address and the token through the agent's configuration.
    for args in [
        &["detach", "--service", "no-such-service"][..],
        &["ps"][..],
        &["sensors", "list"][..],
    ] {
        let out = Command::new(zerostep_bin())
            .args(args)
            .arg("--config")
            .arg(a.config())
            .output()
            .expect("cli");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let out = Command::new(zerostep_bin())
        .args(["ui", "--config"])
        .arg(a.config())
        .output()
        .expect("cli");
    let link = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        link.trim(),
        format!("http://127.0.0.1:{}/login#token={}", a.port, a.token())
    );

    // A restarted agent keeps its token.
    let token = a.token();
    let port = a.port;
    let dir = a.dir;
    drop(a._proc);
    let log = std::fs::File::create(dir.path().join("agent2.log")).expect("log");
    let _again = Proc::spawn(
        "zerostep agent",
        Command::new(zerostep_bin())
            .args(["agent", "--config"])
            .arg(dir.path().join("zerostep.toml"))
            .stdout(log.try_clone().expect("dup"))
            .stderr(log),
    );
    assert!(wait_until(Duration::from_secs(30), || http_get_auth(
        port,
        "/api/v1/processes",
        &token
    )
    .is_ok_and(|(s, _)| s == 200)));
}

/// Runs `program args` as nobody (no groups), returning (success, stdout + stderr).
fn as_nobody(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .env_remove("ZEROSTEP_TOKEN_FILE")
        .output()
        .expect("setpriv (util-linux)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_unprivileged_user_cannot_read_the_token_or_detach() {
    let a = Agent::start("");
    // Only the file's own mode protects it here: the directories on the way are opened up.
    for d in [a.dir.path().to_path_buf(), a.state()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // The CLI from a directory nobody may enter (the checkout may be anywhere, /root included).
    let bin_dir = a.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).expect("bin dir");
    let cli = bin_dir.join("zerostep");
    std::fs::copy(zerostep_bin(), &cli).expect("copy the binary");
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let token_file = a.state().join("api-token");
    let token_file = token_file.to_str().expect("utf-8 path");

    let (ok, out) = as_nobody(Path::new("/bin/cat"), &[token_file]);
    assert!(
        !ok && out.contains("Permission denied"),
        "nobody read the token: {out}"
    );

    let agent = format!("127.0.0.1:{}", a.port);
    for args in [vec!["detach", "--service", "no-such-service"], vec!["ps"]] {
        let mut full = args.clone();
        full.extend(["--agent", agent.as_str(), "--token-file", token_file]);
        let (ok, out) = as_nobody(&cli, &full);
        assert!(
            !ok && out.contains("wants its API token") && out.contains("Permission denied"),
            "{args:?} as nobody: {out}"
        );
    }
    // Nor with a hand-made request (Python from Debian, as nobody).
    let script = format!(
        "import urllib.request, urllib.error\n\
         r = urllib.request.Request('http://127.0.0.1:{}/api/v1/detach', data=b'{DETACH_NOTHING}',\n\
             headers={{'Content-Type': 'application/json'}})\n\
         try:\n    urllib.request.urlopen(r, timeout=10); print('accepted')\n\
         except urllib.error.HTTPError as e:\n    print('status', e.code)\n",
        a.port
    );
    let (ok, out) = as_nobody(Path::new(DEBIAN_PYTHON), &["-c", &script]);
    assert!(ok && out.trim() == "status 401", "{out}");
}

/// A request written by hand, for headers `http_request` always adds.
fn raw(port: u16, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_host_header_must_name_the_agent() {
    let a = Agent::start("");
    let bearer = a.bearer();
    let auth = ("Authorization", bearer.as_str());
    for host in [
        format!("127.0.0.1:{}", a.port),
        format!("localhost:{}", a.port),
        "127.0.0.1".to_string(),
    ] {
        assert_eq!(
            a.req("GET", "/api/v1/processes", &[auth, ("Host", &host)], "")
                .0,
            200,
            "{host}"
        );
    }
    // What a DNS-rebinding page sends: its own name, with the agent's port.
    for host in [
        format!("attacker.example:{}", a.port),
        format!("127.0.0.1.nip.io:{}", a.port),
        format!("10.9.8.7:{}", a.port),
        "127.0.0.1:1".to_string(),
        String::new(),
    ] {
        let (s, _, body) = a.req("GET", "/api/v1/processes", &[auth, ("Host", &host)], "");
        assert_eq!(s, 421, "{host:?}: {body}");
        let (s, _, _) = a.req(
            "POST",
            "/api/v1/detach",
            &[auth, ("Host", &host), ("Content-Type", "application/json")],
            DETACH_NOTHING,
        );
        assert_eq!(s, 421, "detach with {host:?}");
        // Even the open routes: a rebinding page learns nothing.
        assert_eq!(
            a.req("GET", "/login", &[("Host", &host)], "").0,
            421,
            "{host:?}"
        );
    }
    let no_host = raw(
        a.port,
        &format!("GET /api/v1/processes HTTP/1.0\r\nAuthorization: {bearer}\r\n\r\n"),
    );
    assert!(no_host.starts_with("HTTP/1.0 421"), "{no_host}");
}

#[test]
fn cross_site_requests_change_nothing() {
    let a = Agent::start("");
    let bearer = a.bearer();
    let auth = ("Authorization", bearer.as_str());
    // A form on another site can post these without a CORS preflight: all refused, even with a
    // valid credential.
    for ct in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut h = vec![auth];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        let (s, _, body) = a.req("POST", "/api/v1/detach", &h, DETACH_NOTHING);
        assert_eq!(s, 415, "{ct:?}: {body}");
    }
    let json = ("Content-Type", "application/json");
    let evil = ("Origin", "http://attacker.example");
    assert_eq!(
        a.req(
            "POST",
            "/api/v1/detach",
            &[auth, json, evil],
            DETACH_NOTHING
        )
        .0,
        403
    );
    let own = format!("http://127.0.0.1:{}", a.port);
    assert_eq!(
        a.req(
            "POST",
            "/api/v1/detach",
            &[auth, json, ("Origin", &own)],
            DETACH_NOTHING
        )
        .0,
        200
    );
    // No CORS anywhere: a preflight is not approved and no response lets another origin read.
    let (s, head, _) = a.req(
        "OPTIONS",
        "/api/v1/detach",
        &[
            evil,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        "",
    );
    assert!(!(200..300).contains(&s), "preflight answered {s}");
    let (_, head2, _) = a.req("GET", "/api/v1/processes", &[auth, evil], "");
    for h in [&head, &head2] {
        assert!(
            !h.to_ascii_lowercase().contains("access-control-"),
            "CORS header sent: {h}"
        );
        assert!(
            h.to_ascii_lowercase().contains("x-frame-options: deny"),
            "{h}"
        );
    }
    // A body bigger than any route takes is refused before it is buffered.
    let big = format!(r#"{{"service":"{}"}}"#, "x".repeat(100 * 1024));
    assert_eq!(a.req("POST", "/api/v1/detach", &[auth, json], &big).0, 413);

    // The UI's session: made from the token, not the token, not a cookie, and under the same
    // rules as the token.
    let (s, _, _) = a.req(
        "POST",
        "/api/v1/session",
        &[json],
        &format!(r#"{{"token":"{}"}}"#, "0".repeat(64)),
    );
    assert_eq!(s, 401, "a wrong token makes no session");
    let (s, _, _) = a.req(
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={}", a.token()),
    );
    assert_eq!(s, 415, "no session from a form post");
    let (s, head, body) = a.req(
        "POST",
        "/api/v1/session",
        &[json],
        &format!(r#"{{"token":"{}"}}"#, a.token()),
    );
    assert_eq!(s, 200, "{head}");
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    let session: serde_json::Value = serde_json::from_str(&body).expect("json");
    let session = session["session"].as_str().expect("a session").to_string();
    assert!(session.len() == 64 && session != a.token());
    // A cookie is never a credential (cookies go to every port of the host).
    let cookie = format!("zerostep_session={session}");
    assert_eq!(
        a.req("GET", "/api/v1/processes", &[("Cookie", &cookie)], "")
            .0,
        401
    );
    let sb = format!("Bearer {session}");
    let c = ("Authorization", sb.as_str());
    assert_eq!(a.req("GET", "/api/v1/processes", &[c], "").0, 200);
    assert_eq!(
        a.req(
            "POST",
            "/api/v1/detach",
            &[c, ("Content-Type", "text/plain")],
            DETACH_NOTHING
        )
        .0,
        415
    );
    assert_eq!(
        a.req("POST", "/api/v1/detach", &[c, json, evil], DETACH_NOTHING)
            .0,
        403
    );
    assert_eq!(
        a.req("POST", "/api/v1/detach", &[c, json], DETACH_NOTHING)
            .0,
        200
    );
}

#[test]
fn reads_open_on_loopback_only_when_configured() {
    let a = Agent::start("open_reads_on_loopback = true");
    assert_eq!(a.req("GET", "/api/v1/processes", &[], "").0, 200);
    assert_eq!(a.req("GET", "/metrics", &[], "").0, 200);
    assert_eq!(a.req("GET", "/", &[], "").0, 200);
    // Changing anything still takes the token.
    let json = ("Content-Type", "application/json");
    assert_eq!(
        a.req("POST", "/api/v1/detach", &[json], DETACH_NOTHING).0,
        401
    );
    let bearer = a.bearer();
    assert_eq!(
        a.req(
            "POST",
            "/api/v1/detach",
            &[json, ("Authorization", &bearer)],
            DETACH_NOTHING
        )
        .0,
        200
    );
    // And the Host check still applies.
    assert_eq!(
        a.req(
            "GET",
            "/api/v1/processes",
            &[("Host", &format!("attacker.example:{}", a.port))],
            ""
        )
        .0,
        421
    );
}

/// While the agent is down anyone may listen on its port: root's CLI must not send that listener
/// the token, nor `zerostep ui` print a link carrying it.
#[test]
fn the_cli_sends_the_token_only_to_the_agents_user() {
    let a = Agent::start("");
    let token_file = a.state().join("api-token");
    let port = free_port();
    let log = a.dir.path().join("squatter.log");
    let out = std::fs::File::create(&log).expect("log");
    let script = format!(
        "import socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(8); print('listening', flush=True)\n\
         while True:\n    c, _ = s.accept(); print(c.recv(65536), flush=True)\n    \
         c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\n[]'); c.close()\n"
    );
    let _squatter = Proc::spawn(
        "squatter",
        Command::new("setpriv")
            .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
            .args([DEBIAN_PYTHON, "-c", &script])
            .stdout(out.try_clone().expect("dup"))
            .stderr(out),
    );
    assert!(wait_for_port(port, Duration::from_secs(10)));
    for args in [&["ps"][..], &["detach", "--service", "x"][..], &["ui"][..]] {
        let out = Command::new(zerostep_bin())
            .args(args)
            .args(["--agent", &format!("127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(&token_file)
            .output()
            .expect("cli");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("uid 65534") && out.stdout.is_empty(),
            "{args:?}: {out:?}"
        );
    }
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !seen.contains(&a.token()),
        "the squatter got the token: {seen}"
    );
    // The real agent's listener is root's: the same CLI sends it the token.
    let out = Command::new(zerostep_bin())
        .args(["ps", "--agent", &format!("127.0.0.1:{}", a.port)])
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
}
