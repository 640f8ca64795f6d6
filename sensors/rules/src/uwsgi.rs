//! uWSGI: the `uwsgi` executable (libpython loaded into it) and pyuwsgi (`/venv/bin/pyuwsgi`, a
//! console script). Workers are forks of the master with the same argv, unless process names
//! (`--procname*`, `--auto-procname`) replaced argv with titles like `uWSGI worker 1`, in which
//! case the options are gone and the title, the parent's title and the cwd are all there is.

use crate::argv::{self, Opt};
use crate::instrumentations::{count, matched, push_some};
use crate::launcher::{basename, is_python, launch};
use crate::process::{title, trimmed, ProcessMatch, ProcessView, Role};
use crate::service_name::{from_dir, from_file, from_module, from_title, pick};

const TECHNOLOGY: &str = "uwsgi";
const FALLBACK: (&str, &str) = (TECHNOLOGY, "technology");
/// The word uWSGI puts in its own process names.
const TITLE_WORD: &str = "uWSGI";

const PROCNAME: Opt = Opt::long(&["--procname"]);
const PROCNAME_PREFIX: Opt = Opt::long(&["--procname-prefix", "--procname-prefix-spaced"]);
const PROCNAME_MASTER: Opt = Opt::long(&["--procname-master"]);
const MODULE: Opt = Opt::both(&["--module", "--wsgi"], 'w');
const MOUNT: Opt = Opt::long(&["--mount"]);
const WSGI_FILE: Opt = Opt::long(&["--wsgi-file", "--file"]);
const INI: Opt = Opt::long(&["--ini"]);
const OTHER_CONFIG: Opt = Opt::long(&["--yaml", "--yml", "--json", "--js", "--xml", "--xmlconfig"]);
const VIRTUALENV: Opt = Opt::both(&["--virtualenv", "--venv", "--home", "--pyhome"], 'H');
const MASTER: Opt = Opt::both(&["--master"], 'M');
const EMPEROR: Opt = Opt::long(&["--emperor"]);
const PROCESSES: Opt = Opt::both(&["--processes", "--workers"], 'p');
const THREADS: Opt = Opt::long(&["--threads"]);
const ENABLE_THREADS: Opt = Opt::both(&["--enable-threads"], 'T');
const LAZY_APPS: Opt = Opt::long(&["--lazy-apps", "--lazy"]);
const GEVENT: Opt = Opt::long(&["--gevent"]);

/// Matches a uWSGI master, worker or standalone process; `None` for anything else (including
/// uWSGI's own routers and the emperor, which run no application).
pub fn match_process(p: &ProcessView<'_>) -> Option<ProcessMatch> {
    match launch(p.cmdline) {
        Some(l) if is_uwsgi_executable(l.program) && !l.by_interpreter => {
            from_options(p, l.args, TECHNOLOGY)
        }
        Some(l) if l.program == "pyuwsgi" => from_options(p, l.args, "pyuwsgi"),
        // The pyuwsgi wheel installs its console script under both names, so an interpreter
        // running `…/bin/uwsgi` (`/venv/bin/python /venv/bin/uwsgi`) is pyuwsgi; the C `uwsgi`
        // is an ELF executable no interpreter runs. A `uwsgi` script elsewhere is someone's own.
        Some(l) if l.program == TECHNOLOGY && is_console_script(p.cmdline, l.args) => {
            from_options(p, l.args, "pyuwsgi")
        }
        _ => from_process_title(p),
    }
}

/// The C executable under the names distributions give it: `uwsgi`, Debian's `uwsgi-core` (what
/// the `uwsgi` alternative points at) and its plugin-preloading `uwsgi_python3`, `uwsgi_python314`.
fn is_uwsgi_executable(program: &str) -> bool {
    program == TECHNOLOGY || program == "uwsgi-core" || program.starts_with("uwsgi_python")
}

/// The script the interpreter runs sits in a `bin/` directory (an installed console script).
fn is_console_script(cmdline: &[String], args: &[String]) -> bool {
    let argv = trimmed(cmdline);
    let script_at = argv.len().checked_sub(args.len() + 1);
    script_at
        .and_then(|i| argv.get(i))
        .is_some_and(|s| s.ends_with("/bin/uwsgi"))
}

fn from_options(
    p: &ProcessView<'_>,
    args: &[String],
    launcher: &'static str,
) -> Option<ProcessMatch> {
    if argv::value(args, &EMPEROR).is_some() {
        return None;
    }
    let procname_master = argv::value(args, &PROCNAME_MASTER);
    let parent = title(p.parent_cmdline);
    let same_server = trimmed(p.parent_cmdline) == trimmed(p.cmdline)
        || parent
            .is_some_and(|t| Some(t) == procname_master || title_role(t) == Some(Role::Master));
    let config_ini = argv::value(args, &INI).or_else(|| bare_config(args, &[".ini"]));
    let config_other = argv::value(args, &OTHER_CONFIG)
        .or_else(|| bare_config(args, &[".yaml", ".yml", ".json", ".xml"]));
    let has_config = config_ini.is_some() || config_other.is_some();
    let role = if same_server {
        Role::Worker
    } else if argv::flag(args, &MASTER) || has_config {
        // A config file usually turns the master on, and the sensor cannot read it.
        Role::Master
    } else {
        Role::Standalone
    };
    let module = argv::value(args, &MODULE)
        .or_else(|| argv::value(args, &MOUNT).and_then(|m| m.split_once('=').map(|(_, app)| app)));
    let name = pick(
        [
            (
                argv::value(args, &PROCNAME_PREFIX).and_then(from_title),
                "procname",
            ),
            (
                argv::value(args, &PROCNAME).and_then(from_title),
                "procname",
            ),
            (
                procname_master.and_then(|n| from_title(strip_role_word(n))),
                "procname",
            ),
            (module.and_then(from_module), "--module"),
            (
                argv::value(args, &WSGI_FILE).and_then(from_file),
                "--wsgi-file",
            ),
            (config_ini.and_then(from_file), "--ini"),
            (config_other.and_then(from_file), "config"),
            (from_dir(p.cwd), "cwd"),
            (
                argv::value(args, &VIRTUALENV).and_then(from_dir),
                "virtualenv",
            ),
        ],
        FALLBACK,
    );
    let settings = server_settings(args, launcher, has_config);
    Some(matched(TECHNOLOGY, role, name, settings))
}

/// A process whose argv was replaced by a uWSGI process name. Only the `uwsgi` executable (or
/// Python, for pyuwsgi) can carry one; a custom name is accepted only from the `uwsgi` executable.
fn from_process_title(p: &ProcessView<'_>) -> Option<ProcessMatch> {
    let own = title(p.cmdline)?;
    let exe = basename(p.exe);
    let uwsgi_exe = exe.starts_with(TECHNOLOGY);
    if !(uwsgi_exe || is_python(exe)) {
        return None;
    }
    let parent = title(p.parent_cmdline);
    let role = match title_role(own) {
        Some(role) => role,
        None if own.contains(TITLE_WORD) || !uwsgi_exe => return None,
        // A custom --procname: workers carry their master's name.
        None if parent == Some(own) => Role::Worker,
        None => Role::Master,
    };
    let parent_name = parent
        .filter(|t| role == Role::Worker && *t != own)
        .and_then(title_name);
    let name = pick(
        [
            (title_name(own), "procname"),
            (parent_name, "procname"),
            (from_dir(p.cwd), "cwd"),
        ],
        FALLBACK,
    );
    let mut settings = vec![(
        "launcher",
        if uwsgi_exe { TECHNOLOGY } else { "pyuwsgi" }.to_string(),
    )];
    settings.push(("enable-threads", "unknown".to_string()));
    Some(matched(TECHNOLOGY, role, name, settings))
}

/// The role in a uWSGI process name: `[prefix]uWSGI master`, `[prefix]uWSGI worker 3`. Mules and
/// spoolers run application code, so they count as workers; routers and the emperor do not match.
fn title_role(t: &str) -> Option<Role> {
    let (_, rest) = t.rsplit_once(TITLE_WORD)?;
    match rest.split_whitespace().next()? {
        "master" => Some(Role::Master),
        "worker" | "mule" | "spooler" => Some(Role::Worker),
        _ => None,
    }
}

/// The service part of a process name: the prefix before `uWSGI …`, or a custom name without a
/// trailing `master` / `worker N`.
fn title_name(t: &str) -> Option<String> {
    match t.rsplit_once(TITLE_WORD) {
        Some((prefix, _)) => from_title(prefix),
        None => from_title(strip_role_word(t)),
    }
}

/// `inventory-master` → `inventory-`; `shop worker 2` → `shop `.
fn strip_role_word(name: &str) -> &str {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_whitespace());
    ["master", "worker"]
        .iter()
        .find_map(|w| trimmed.strip_suffix(w))
        .unwrap_or(name)
}

/// `uwsgi app.ini`: uWSGI loads arguments left after the options as config files, by extension.
fn bare_config<'a>(args: &'a [String], extensions: &[&str]) -> Option<&'a str> {
    args.iter().map(String::as_str).find(|a| {
        let file = a.split(':').next().unwrap_or(a);
        !a.starts_with('-') && extensions.iter().any(|e| file.ends_with(e))
    })
}

fn server_settings(
    args: &[String],
    launcher: &'static str,
    has_config: bool,
) -> Vec<(&'static str, String)> {
    let threads = count(argv::value(args, &THREADS));
    let gevent = count(argv::value(args, &GEVENT));
    // uWSGI turns threads on by itself when given --threads.
    let enable_threads = if argv::flag(args, &ENABLE_THREADS) || threads.is_some() {
        "true"
    } else if has_config {
        "unknown"
    } else {
        "false"
    };
    let concurrency = match (gevent, threads) {
        (Some(_), _) => "gevent",
        (None, Some(t)) if t > 1 => "threads",
        _ => "process",
    };
    let mut s = vec![
        ("launcher", launcher.to_string()),
        ("concurrency", concurrency.to_string()),
    ];
    push_some(&mut s, "threads", threads);
    push_some(&mut s, "workers", count(argv::value(args, &PROCESSES)));
    s.push(("master", (argv::flag(args, &MASTER)).to_string()));
    s.push(("lazy-apps", argv::flag(args, &LAZY_APPS).to_string()));
    s.push(("enable-threads", enable_threads.to_string()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::test_support::{check_names, check_settings, run as run_with};

    const EXE: &str = "/venv/bin/uwsgi";

    fn run(cmd: &[&str], parent: &[&str]) -> Option<ProcessMatch> {
        run_with(match_process, EXE, cmd, parent, "/srv/x")
    }

    fn summary(m: Option<ProcessMatch>) -> Option<(Role, String, &'static str)> {
        m.map(|m| (m.role, m.service_name, m.service_name_source))
    }

    #[rustfmt::skip]
    #[test]
    fn service_names() {
        check_names(match_process, EXE, &[
            (&["uwsgi", "--module", "shop.wsgi:application"], "/", "shop", "--module"),
            (&["uwsgi", "-w", "shop.wsgi"], "/", "shop", "--module"),
            (&["uwsgi", "--wsgi=shop.wsgi"], "/", "shop", "--module"),
            (&["uwsgi", "--mount", "/=cart.app:app"], "/", "cart", "--module"),
            (&["uwsgi", "--wsgi-file", "/srv/cart/app.py"], "/", "cart", "--wsgi-file"),
            (&["uwsgi", "--ini", "/etc/uwsgi/apps-enabled/orders.ini:prod"], "/", "orders", "--ini"),
            (&["uwsgi", "/etc/uwsgi/orders.ini"], "/", "orders", "--ini"),
            (&["uwsgi", "--yaml", "/etc/uwsgi/orders.yaml"], "/", "orders", "config"),
            (&["uwsgi", "--procname-prefix-spaced", "pay", "-w", "shop.wsgi"], "/", "pay", "procname"),
            (&["uwsgi", "--procname=ledger", "-w", "shop.wsgi"], "/", "ledger", "procname"),
            (&["uwsgi", "--wsgi-file", "app.py"], "/srv/billing", "billing", "cwd"),
            (&["uwsgi", "-H", "/srv/ledger/venv", "--wsgi-file", "app.py"], "/", "ledger", "virtualenv"),
            (&["uwsgi", "--wsgi-file", "app.py"], "/", "app", "--wsgi-file"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn roles() {
        let cmd = ["uwsgi", "--master", "-w", "shop.wsgi"];
        assert_eq!(run(&cmd, &["bash"]).map(|m| m.role), Some(Role::Master));
        assert_eq!(run(&cmd, &cmd).map(|m| m.role), Some(Role::Worker));
        assert_eq!(run(&["uwsgi", "-w", "shop.wsgi"], &["bash"]).map(|m| m.role), Some(Role::Standalone));
        assert_eq!(run(&["uwsgi", "--ini", "x.ini"], &["bash"]).map(|m| m.role), Some(Role::Master));
        assert_eq!(summary(run(&["ledger"], &["ledger"])), Some((Role::Worker, "ledger".into(), "procname")));
        assert_eq!(summary(run(&["uWSGI worker 3"], &["inventory-master"])), Some((Role::Worker, "inventory".into(), "procname")));
        assert_eq!(summary(run(&["uWSGI master"], &["bash"])), Some((Role::Master, "x".into(), "cwd")));
        assert_eq!(summary(run(&["shop uWSGI mule 1"], &["shop uWSGI master"])), Some((Role::Worker, "shop".into(), "procname")));
    }

    #[rustfmt::skip]
    #[test]
    fn not_uwsgi() {
        let py = "/usr/bin/python3.11";
        assert!(run(&["uWSGI http 1"], &["uWSGI master"]).is_none());
        assert!(run(&["uwsgi", "--emperor", "/etc/uwsgi/vassals"], &["bash"]).is_none());
        for (exe, cmd) in [
            (py, &["python3", "worker.py", "/etc/uwsgi/apps.ini"][..]),
            (py, &["python3", "/srv/shop/uwsgi.py"]),
            (py, &["python3", "/srv/shop/uwsgi"]),
            (py, &["gunicorn: master [app:app]"]),
            (py, &["ledger"]),
            ("/usr/bin/bash", &["uWSGI master"]),
            (py, &["/v/bin/python", "/v/bin/gunicorn", "-w", "x"]),
        ] {
            assert!(run_with(match_process, exe, cmd, &["bash"], "/").is_none(), "{cmd:?}");
        }
    }

    /// Debian runs the C executable as `uwsgi-core` or `uwsgi_python3` (with its python3 plugin).
    #[test]
    fn debian_executable_names() {
        for exe in ["uwsgi-core", "/usr/bin/uwsgi_python3", "uwsgi_python314"] {
            let m = run(
                &[
                    exe,
                    "--plugin",
                    "python3",
                    "--master",
                    "--wsgi-file",
                    "app.py",
                ],
                &["bash"],
            );
            assert_eq!(m.map(|m| m.role), Some(Role::Master), "{exe}");
        }
        assert!(run(&["uwsgi-coreutils", "--master"], &["bash"]).is_none());
    }

    #[rustfmt::skip]
    #[test]
    fn settings() {
        let m = run(&["uwsgi", "--lazy-apps", "--threads", "4", "-p", "2", "-M", "-w", "a"], &["bash"]).expect("m");
        check_settings(&m, &[
            ("lazy-apps", "true"), ("enable-threads", "true"), ("threads", "4"), ("workers", "2"),
            ("master", "true"), ("concurrency", "threads"), ("launcher", "uwsgi"),
        ]);
        let m = run_with(match_process, "/usr/bin/python3.10", &["/v/bin/python", "/v/bin/pyuwsgi", "-w", "a"], &["bash"], "/");
        check_settings(&m.expect("pyuwsgi"), &[("launcher", "pyuwsgi"), ("enable-threads", "false")]);
        let m = run_with(match_process, "/usr/bin/python3.11", &["/v/bin/python", "/v/bin/uwsgi", "--wsgi-file", "app.py"], &["bash"], "/srv/inventory");
        check_settings(&m.expect("pyuwsgi's `uwsgi` script"), &[("launcher", "pyuwsgi")]);
        let m = run_with(match_process, "/usr/bin/python3.11", &["python", "uwsgi.py"], &["bash"], "/srv/x");
        assert!(m.is_none(), "a script named uwsgi.py is not uWSGI");
        let m = run(&["uwsgi", "--ini", "a.ini", "--gevent", "100"], &["bash"]).expect("m");
        check_settings(&m, &[("enable-threads", "unknown"), ("concurrency", "gevent")]);
    }
}
