//! Shared by the end-to-end tests: where the real interpreters and test venvs are, and processes
//! that are killed by process group when the test ends, pass or fail. Never kill by name.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host crate has a parent")
        .to_path_buf()
}

pub fn zerostep_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zerostep"))
}

pub fn test_cache() -> PathBuf {
    std::env::var_os("ZEROSTEP_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/zerostep-test"))
}

/// A binary inside a test venv from tests/venvs.txt; panics with the fix if `make test-deps` has not run.
pub fn venv_bin(venv: &str, bin: &str) -> PathBuf {
    let p = test_cache().join("venvs").join(venv).join("bin").join(bin);
    assert!(
        p.exists(),
        "{} missing: run `make test-deps` (tests/venvs.txt)",
        p.display()
    );
    p
}

pub fn pyenv_root() -> PathBuf {
    Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".pyenv"))
}

/// The real interpreter binary of a pyenv version such as "3.12.1" (not the bash shim).
pub fn pyenv_python(version: &str) -> PathBuf {
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    pyenv_root()
        .join("versions")
        .join(version)
        .join("bin")
        .join(format!("python{minor}"))
}

/// Every pyenv CPython 3.8–3.13 found on this machine, as (version, binary).
pub fn pyenv_pythons() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir(pyenv_root().join("versions")) {
        for entry in dir.flatten() {
            let v = entry.file_name().to_string_lossy().to_string();
            let minor: Option<u32> = v
                .strip_prefix("3.")
                .and_then(|r| r.split('.').next()?.parse().ok());
            if matches!(minor, Some(8..=13)) {
                let bin = pyenv_python(&v);
                if bin.exists() {
                    found.push((v, bin));
                }
            }
        }
    }
    found.sort();
    found
}

pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// A child started in its own process group; dropping it kills exactly that group and reaps it.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal_group(&self, sig: i32) {
        // The group id is the child's pid (process_group(0)); negative pid targets the group.
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    /// SIGTERM to the group, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A plain HTTP/1.0 GET over loopback, returning (status, body). No client library on purpose: tests
/// must see exactly what the server sent.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A plain HTTP/1.0 request over loopback with extra header lines (a `Host` of
/// `127.0.0.1:PORT` unless one is given) and a body; returns (status, head, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((buf.as_str(), ""));
    Ok((status, head.to_string(), body.to_string()))
}

/// The API token of the agent whose state directory this is (the agent writes it at start).
pub fn api_token(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("api-token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}

/// GET with the agent's token, returning (status, body).
pub fn http_get_auth(port: u16, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    let bearer = format!("Bearer {token}");
    http_request(port, "GET", path, &[("Authorization", &bearer)], "").map(|(s, _, b)| (s, b))
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The direct children of `pid`, sorted (from /proc; empty once it has exited).
pub fn children(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// `program args…` as pid 1 of new pid, mount and network namespaces (what a container runtime
/// makes), with loopback up and a private, empty /tmp. Add the program, its arguments and stdio.
pub fn container_command() -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount",
        "--mount-proc",
        "--net",
        "sh",
        "-c",
        // A working directory under /tmp (a checkout there) is hidden by the new /tmp: then /.
        "ip link set lo up && mount -t tmpfs zs-container-tmp /tmp && { cd \"$PWD\" 2>/dev/null || cd /; } && exec \"$0\" \"$@\"",
    ]);
    cmd
}

/// The Debian sid root with CPython 3.14 and 3.15, gunicorn and uWSGI (tests/setup/30-sid-root.sh).
/// No test skips itself without it: a missing root is a failed set-up.
pub fn sid_root() -> PathBuf {
    let p = test_cache().join("sid-root");
    assert!(
        p.join(".zerostep-stamp").exists(),
        "{} missing: run `make test-deps` (tests/setup/30-sid-root.sh makes it)",
        p.display()
    );
    p
}

/// A directory for one test inside the sid root's /tmp, writable by the `nobody` its services run
/// as; `inside` is the same directory as a chroot'ed process sees it. Removed when dropped.
pub struct SidDir {
    tmp: tempfile::TempDir,
    pub inside: PathBuf,
}

impl SidDir {
    pub fn new() -> SidDir {
        use std::os::unix::fs::PermissionsExt;
        let root = sid_root();
        let tmp = tempfile::Builder::new()
            .prefix("zs-test-")
            .tempdir_in(root.join("tmp"))
            .expect("tempdir in the sid root");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let inside = Path::new("/").join(tmp.path().strip_prefix(&root).expect("under the root"));
        SidDir { tmp, inside }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Copies a file of the checkout into the directory (readable by all); returns its inside path.
    pub fn copy_in(&self, from: &Path) -> PathBuf {
        let name = from.file_name().expect("file name");
        std::fs::copy(from, self.path().join(name)).expect("copy into the sid root");
        self.inside.join(name)
    }
}

/// `program` run chroot'ed into the sid root as `nobody` (as a service chroot'ed by its init system
/// runs: its maps print host paths, its files are under the root).
pub fn sid_command(program: &str) -> Command {
    let mut cmd = Command::new("/usr/sbin/chroot");
    cmd.arg("--userspec=nobody:nogroup")
        .arg(sid_root())
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Entries of the sid root's /tmp that are not a test's own directory: whatever an injector or a
/// tracer would have written into the service's filesystem.
pub fn sid_tmp_strays() -> Vec<String> {
    std::fs::read_dir(sid_root().join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with("zs-test-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A temp dir outside /tmp and outside the checkout (which may itself live under /tmp), for files a
/// container must see: containers get a private, empty /tmp.
pub fn outside_tmp_dir(prefix: &str) -> tempfile::TempDir {
    let base = test_cache().join("scratch");
    std::fs::create_dir_all(&base).expect("scratch dir");
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("tempdir");
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    d
}

/// The bundles of the sensors `make sensors` built (gunicorn, uwsgi, libraries): the
/// instrumentations, for tests that run the intake without the agent.
pub fn sensor_bundles() -> Vec<zerostep::sensors::Bundle> {
    use zerostep::sensors::{QuarantinePolicy, SandboxEngine, SandboxLimits, SensorRegistry};
    let engine = std::sync::Arc::new(
        SandboxEngine::new(SandboxLimits::default(), None).expect("sandbox engine"),
    );
    let registry = SensorRegistry::new(engine, QuarantinePolicy::default());
    for name in ["gunicorn", "uwsgi", "libraries"] {
        let path = repo_root().join(format!("target/sensors/{name}.wasm"));
        assert!(
            path.exists(),
            "{} missing: run `make sensors`",
            path.display()
        );
        let outcome = registry.load_path(&path);
        assert!(
            matches!(outcome, zerostep::sensors::LoadOutcome::Activated { .. }),
            "{name}: {outcome:?}"
        );
    }
    let bundles = registry.all_bundles();
    assert_eq!(bundles.len(), 3, "one bundle per sensor");
    bundles
}

/// The user the end-to-end tests' services run as (nobody): they cannot reach pyenv's interpreters
/// under /root, nor anything of the agent's.
pub const SERVICE_USER: &str = "65534";

/// An app directory owned by the service's user (so the app could write there; the test then
/// checks that nothing did).
pub fn app_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).expect("app dir");
    for f in std::fs::read_dir(repo_root().join("tests/e2e_apps").join(name)).expect("app source") {
        let f = f.expect("app file").path();
        if f.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&f, d.join(f.file_name().expect("file name"))).expect("copy app");
        }
    }
    d
}

pub fn chown_nobody(path: &Path) {
    let st = Command::new("chown")
        .args(["-R", &format!("{SERVICE_USER}:{SERVICE_USER}")])
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success());
}

/// Runs a server as `nobody` with a minimal environment: nothing zerostep-related in it.
pub fn as_service_user(bin: &Path, dir: &Path, log: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={SERVICE_USER}"),
        &format!("--regid={SERVICE_USER}"),
        "--clear-groups",
        "--",
    ])
    .arg(bin)
    .current_dir(dir)
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("LANG", "C.UTF-8");
    let out = std::fs::File::create(log).expect("server log");
    c.stdout(out.try_clone().expect("dup")).stderr(out);
    c
}
