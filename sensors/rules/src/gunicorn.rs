//! gunicorn: master and workers, from the command line or from setproctitle's titles
//! (`gunicorn: master [NAME]`, `gunicorn: worker [NAME]`, where NAME is `--name`, the config's
//! `proc_name`, or the app argument).

use crate::argv::{self, Opt};
use crate::instrumentations::{choose, count, push_some};
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
    let (service_name, source) = pick(
        [
            (argv::value(args, &NAME).map(str::to_string), "--name"),
            (app.and_then(from_module), "module"),
            (config.flatten(), "config"),
            (from_dir(p.cwd), "cwd"),
        ],
        FALLBACK,
    );
    let instrumentations = choose(TECHNOLOGY, role, &service_name, server_settings(args));
    Some(ProcessMatch {
        technology: TECHNOLOGY,
        role,
        service_name,
        service_name_source: source,
        instrumentations,
    })
}

/// `gunicorn`, `python -m gunicorn`, `python -m gunicorn.app.wsgiapp`, and the old
/// `gunicorn_django` / `gunicorn_paster` scripts.
fn is_gunicorn_program(program: &str) -> bool {
    program == TECHNOLOGY
        || program
            .strip_prefix(TECHNOLOGY)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'))
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
    let (service_name, source) = pick([from_bracket, (from_dir(p.cwd), "cwd")], FALLBACK);
    let instrumentations = choose(TECHNOLOGY, role, &service_name, Vec::new());
    ProcessMatch {
        technology: TECHNOLOGY,
        role,
        service_name,
        service_name_source: source,
        instrumentations,
    }
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

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn run(cmd: &[&str], parent: &[&str], cwd: &str) -> Option<ProcessMatch> {
        let (cmdline, parent_cmdline) = (v(cmd), v(parent));
        match_process(&ProcessView {
            exe: "/usr/bin/python3.11",
            cmdline: &cmdline,
            cwd,
            parent_cmdline: &parent_cmdline,
        })
    }

    fn name(cmd: &[&str], cwd: &str) -> (String, &'static str) {
        let m = run(cmd, &["bash"], cwd).expect("matches");
        (m.service_name, m.service_name_source)
    }

    fn setting(m: &ProcessMatch, key: &str) -> Option<String> {
        m.instrumentations[0]
            .settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn name_spellings() {
        for cmd in [
            &["gunicorn", "--name", "shop", "app:app"][..],
            &["gunicorn", "--name=shop", "app:app"],
            &["gunicorn", "-nshop", "app:app"],
            &["gunicorn", "-n", "shop", "app:app"],
            &[
                "/usr/bin/python3.11",
                "-m",
                "gunicorn",
                "-n",
                "shop",
                "app:app",
            ],
            &[
                "python3.8",
                "/venv/bin/gunicorn",
                "app:app",
                "--name",
                "shop",
            ],
        ] {
            assert_eq!(
                name(cmd, "/srv/x"),
                ("shop".to_string(), "--name"),
                "{cmd:?}"
            );
        }
    }

    #[test]
    fn name_sources_in_order() {
        assert_eq!(
            name(
                &["gunicorn", "-b", "0.0.0.0:80", "myproj.wsgi:application"],
                "/"
            ),
            ("myproj".into(), "module")
        );
        assert_eq!(
            name(&["gunicorn", "-w", "4", "app:app"], "/srv/billing"),
            ("billing".into(), "cwd")
        );
        assert_eq!(
            name(
                &["gunicorn", "-c", "/etc/gunicorn/payments.py", "app:app"],
                "/srv/billing"
            ),
            ("payments".into(), "config")
        );
        assert_eq!(
            name(
                &["gunicorn", "-c", "python:ledger.gunicorn_conf", "app:app"],
                "/"
            ),
            ("ledger".into(), "config")
        );
        assert_eq!(
            name(&["gunicorn", "--preload", "app:app"], "/"),
            ("app".into(), "module")
        );
        assert_eq!(name(&["gunicorn"], "/"), ("gunicorn".into(), "technology"));
        assert_eq!(
            name(&["gunicorn", "--check-config", "shop:create_app()"], "/"),
            ("shop".into(), "module")
        );
    }

    #[test]
    fn roles() {
        let cmd = ["/v/bin/python", "/v/bin/gunicorn", "app:app"];
        assert_eq!(
            run(&cmd, &["systemd"], "/srv/a").map(|m| m.role),
            Some(Role::Master)
        );
        assert_eq!(
            run(&cmd, &cmd, "/srv/a").map(|m| m.role),
            Some(Role::Worker)
        );
        let t = run(
            &["gunicorn: worker [shop]", "", ""],
            &["gunicorn: master [shop]"],
            "/srv/a",
        )
        .expect("title");
        assert_eq!(
            (t.role, t.service_name.as_str(), t.service_name_source),
            (Role::Worker, "shop", "proc-title")
        );
    }

    #[test]
    fn not_gunicorn() {
        for cmd in [
            &["python3", "worker.py", "/var/log/gunicorn/access.log"][..],
            &["/v/bin/uwsgi", "--module", "gunicorn"],
            &["python3", "-c", "import gunicorn"],
            &["gunicornc", "status"],
            &["celery", "-A", "gunicorn", "worker"],
            &["gunicorn: arbiter [x]"],
            &[],
        ] {
            assert!(run(cmd, &["bash"], "/").is_none(), "{cmd:?}");
        }
    }

    #[test]
    fn worker_settings() {
        let m = run(
            &["gunicorn", "-k", "egg:gunicorn#gevent", "-w4", "app:app"],
            &["bash"],
            "/",
        )
        .expect("m");
        assert_eq!(setting(&m, "worker-class").as_deref(), Some("gevent"));
        assert_eq!(setting(&m, "concurrency").as_deref(), Some("gevent"));
        assert_eq!(setting(&m, "workers").as_deref(), Some("4"));
        let m = run(&["gunicorn", "--threads", "8", "app:app"], &["bash"], "/").expect("m");
        assert_eq!(setting(&m, "worker-class").as_deref(), Some("gthread"));
        assert_eq!(setting(&m, "threads").as_deref(), Some("8"));
        let m = run(
            &[
                "gunicorn",
                "--worker-class=uvicorn.workers.UvicornWorker",
                "app:app",
            ],
            &["bash"],
            "/",
        )
        .expect("m");
        assert_eq!(setting(&m, "concurrency").as_deref(), Some("asyncio"));
    }
}
