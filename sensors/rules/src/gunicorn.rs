//! gunicorn: master and workers, from the command line or from setproctitle's titles
//! (`gunicorn: master [NAME]`, `gunicorn: worker [NAME]`, where NAME is `--name`, the config's
//! `proc_name`, or the app argument).

use crate::argv::{self, Opt};
use crate::instrumentations::{count, matched, push_some};
use crate::launcher::launch;
use crate::process::{title, ProcessMatch, ProcessView, Role};
use crate::service_name::{from_dir, from_file, from_module, pick};

const TECHNOLOGY: &str = "gunicorn";
const FALLBACK: (&str, &str) = (TECHNOLOGY, "technology");

const NAME: Opt = Opt::both(&["--name"], 'n');
const CONFIG: Opt = Opt::both(&["--config"], 'c');
const WORKER_CLASS: Opt = Opt::both(&["--worker-class"], 'k');
const WORKERS: Opt = Opt::both(&["--workers"], 'w');
const THREADS: Opt = Opt::long(&["--threads"]);
const PRELOAD: Opt = Opt::long(&["--preload"]);

/// gunicorn options (23.0 … 27.0) that take no value; every other option takes one. Needed to
/// tell the app argument from option values.
const FLAGS: &[&str] = &[
    "--capture-output",
    "--casefold-http-method",
    "--check-config",
    "--daemon",
    "--disable-redirect-access-to-syslog",
    "--do-handshake-on-connect",
    "--enable-backlog-metric",
    "--enable-stdio-inheritance",
    "--help",
    "--initgroups",
    "--log-syslog",
    "--no-control-socket",
    "--no-sendfile",
    "--permit-obsolete-folding",
    "--permit-unconventional-http-method",
    "--permit-unconventional-http-version",
    "--preload",
    "--print-config",
    "--proxy-protocol",
    "--reload",
    "--reuse-port",
    "--spew",
    "--strip-header-spaces",
    "--suppress-ragged-eofs",
    "--version",
    "-D",
    "-R",
    "-h",
    "-v",
];

/// Matches a gunicorn master or worker; `None` for anything else.
pub fn match_process(p: &ProcessView<'_>) -> Option<ProcessMatch> {
    if let Some((role, bracket)) = title(p.cmdline).and_then(parse_title) {
        return Some(from_process_title(p, role, bracket));
    }
    let launch = launch(p.cmdline)?;
    if !is_gunicorn_program(launch.program) {
        return None;
    }
    let args = launch.args;
    let same_server = crate::process::trimmed(p.parent_cmdline)
        == crate::process::trimmed(p.cmdline)
        || title(p.parent_cmdline)
            .and_then(parse_title)
            .is_some_and(|(r, _)| r == Role::Master);
    let role = if same_server {
        Role::Worker
    } else {
        Role::Master
    };
    let app = argv::positionals(args, |a| FLAGS.contains(&a))
        .into_iter()
        .rev()
        .find(|a| looks_like_app(a));
    let config = argv::value(args, &CONFIG).map(|c| match c.strip_prefix("python:") {
        Some(module) => from_module(module),
        None => from_file(c),
    });
    let name = pick(
        [
            (argv::value(args, &NAME).map(str::to_string), "--name"),
            (app.and_then(from_module), "module"),
            (config.flatten(), "config"),
            (from_dir(p.cwd), "cwd"),
        ],
        FALLBACK,
    );
    Some(matched(TECHNOLOGY, role, name, server_settings(args)))
}

/// `gunicorn`, `python -m gunicorn`, `python -m gunicorn.app.wsgiapp`, and the old
/// `gunicorn_django` / `gunicorn_paster` scripts.
fn is_gunicorn_program(program: &str) -> bool {
    // `gunicorn.py` would be someone's own script.
    program == TECHNOLOGY
        || program.strip_prefix(TECHNOLOGY).is_some_and(|rest| {
            (rest.starts_with('.') || rest.starts_with('_')) && !rest.ends_with(".py")
        })
}

/// `gunicorn: master [shop]` → (Master, "shop").
fn parse_title(t: &str) -> Option<(Role, &str)> {
    let rest = t.strip_prefix("gunicorn: ")?;
    let (role, rest) = rest.split_once(' ')?;
    let role = match role {
        "master" => Role::Master,
        "worker" => Role::Worker,
        _ => return None,
    };
    let bracket = rest.strip_prefix('[')?.split(']').next()?;
    Some((role, bracket.trim()))
}

/// The bracket holds the app argument (`shop.wsgi:application`) unless a name was configured.
fn from_process_title(p: &ProcessView<'_>, role: Role, bracket: &str) -> ProcessMatch {
    let from_bracket = if bracket.contains(':') {
        (from_module(bracket), "module")
    } else {
        (Some(bracket.to_string()), "proc-title")
    };
    let name = pick([from_bracket, (from_dir(p.cwd), "cwd")], FALLBACK);
    matched(TECHNOLOGY, role, name, Vec::new())
}

/// `myproj.wsgi:application`, `app`, `shop:create_app()`: starts like a Python identifier.
fn looks_like_app(arg: &str) -> bool {
    arg.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && !arg.contains('/')
}

fn server_settings(args: &[String]) -> Vec<(&'static str, String)> {
    let threads = count(argv::value(args, &THREADS));
    let class = match argv::value(args, &WORKER_CLASS).map(worker_class) {
        // gunicorn itself switches the sync class to gthread when given threads.
        None | Some("sync") if threads.is_some_and(|t| t > 1) => "gthread",
        None => "sync",
        Some(c) => c,
    };
    let concurrency = match class {
        "sync" => "process",
        "gthread" => "threads",
        "gevent" => "gevent",
        "eventlet" => "eventlet",
        _ => "asyncio",
    };
    let mut s = vec![
        ("worker-class", class.to_string()),
        ("concurrency", concurrency.to_string()),
    ];
    push_some(&mut s, "threads", threads);
    push_some(&mut s, "workers", count(argv::value(args, &WORKERS)));
    s.push(("preload", argv::flag(args, &PRELOAD).to_string()));
    s
}

/// `egg:gunicorn#gevent`, `gunicorn.workers.ggevent.GeventWorker` → `gevent`; other classes as given.
fn worker_class(value: &str) -> &str {
    let v = value.trim();
    let short = v.strip_prefix("egg:gunicorn#").unwrap_or(v);
    match short {
        "gunicorn.workers.sync.SyncWorker" => "sync",
        "gunicorn.workers.gthread.ThreadWorker" => "gthread",
        "gunicorn.workers.ggevent.GeventWorker" | "gevent_wsgi" | "gevent_pywsgi" => "gevent",
        "gunicorn.workers.geventlet.EventletWorker" => "eventlet",
        "gunicorn.workers.gtornado.TornadoWorker" => "tornado",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::test_support::{check_names, check_settings, run as run_with};

    const PY: &str = "/usr/bin/python3.11";

    fn run(cmd: &[&str], parent: &[&str]) -> Option<ProcessMatch> {
        run_with(match_process, PY, cmd, parent, "/srv/a")
    }

    #[rustfmt::skip]
    #[test]
    fn service_names() {
        check_names(match_process, PY, &[
            (&["gunicorn", "--name", "shop", "app:app"], "/srv/x", "shop", "--name"),
            (&["gunicorn", "--name=shop", "app:app"], "/srv/x", "shop", "--name"),
            (&["gunicorn", "-nshop", "app:app"], "/srv/x", "shop", "--name"),
            (&["gunicorn", "-n", "shop", "app:app"], "/srv/x", "shop", "--name"),
            (&["/usr/bin/python3.11", "-m", "gunicorn", "-n", "shop", "app:app"], "/", "shop", "--name"),
            (&["python3.8", "/venv/bin/gunicorn", "app:app", "--name", "shop"], "/", "shop", "--name"),
            (&["gunicorn", "-b", "0.0.0.0:80", "myproj.wsgi:application"], "/", "myproj", "module"),
            (&["gunicorn", "--check-config", "shop:create_app()"], "/", "shop", "module"),
            (&["gunicorn", "-w", "4", "app:app"], "/srv/billing", "billing", "cwd"),
            (&["gunicorn", "-c", "/etc/gunicorn/payments.py", "app:app"], "/srv/billing", "payments", "config"),
            (&["gunicorn", "-c", "python:ledger.gunicorn_conf", "app:app"], "/", "ledger", "config"),
            (&["gunicorn", "--preload", "app:app"], "/", "app", "module"),
            (&["gunicorn"], "/", "gunicorn", "technology"),
        ]);
    }

    #[test]
    fn roles() {
        let cmd = ["/v/bin/python", "/v/bin/gunicorn", "app:app"];
        assert_eq!(run(&cmd, &["systemd"]).map(|m| m.role), Some(Role::Master));
        assert_eq!(run(&cmd, &cmd).map(|m| m.role), Some(Role::Worker));
        let t = run(
            &["gunicorn: worker [shop]", "", ""],
            &["gunicorn: master [shop]"],
        );
        let t = t.map(|m| (m.role, m.service_name, m.service_name_source));
        assert_eq!(t, Some((Role::Worker, "shop".to_string(), "proc-title")));
    }

    #[rustfmt::skip]
    #[test]
    fn not_gunicorn() {
        for cmd in [
            &["python3", "worker.py", "/var/log/gunicorn/access.log"][..],
            &["python3", "/srv/shop/gunicorn.py", "app:app"],
            &["/v/bin/uwsgi", "--module", "gunicorn"],
            &["python3", "-c", "import gunicorn"],
            &["gunicornc", "status"],
            &["celery", "-A", "gunicorn", "worker"],
            &["gunicorn: arbiter [x]"],
            &[],
        ] {
            assert!(run(cmd, &["bash"]).is_none(), "{cmd:?}");
        }
    }

    #[rustfmt::skip]
    #[test]
    fn worker_settings() {
        let m = run(&["gunicorn", "-k", "egg:gunicorn#gevent", "-w4", "app:app"], &["bash"]).expect("m");
        check_settings(&m, &[("worker-class", "gevent"), ("concurrency", "gevent"), ("workers", "4")]);
        let m = run(&["gunicorn", "--threads", "8", "app:app"], &["bash"]).expect("m");
        check_settings(&m, &[("worker-class", "gthread"), ("threads", "8"), ("preload", "false")]);
        let m = run(&["gunicorn", "--worker-class=uvicorn.workers.UvicornWorker", "app:app"], &["bash"]).expect("m");
        check_settings(&m, &[("concurrency", "asyncio"), ("server", "gunicorn"), ("role", "master")]);
    }
}
