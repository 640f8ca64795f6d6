//! ASGI servers that run their own processes: `uvicorn APP [--workers N]` and `hypercorn APP
//! [--workers N]`. gunicorn with uvicorn's worker classes is gunicorn's (its sensor matches it);
//! the ASGI bundle is loaded into every traced process and instruments whichever ASGI server it
//! finds there.
//!
//! Their workers are *spawned* (`multiprocessing`'s spawn start method: a fresh interpreter run as
//! `python -c 'from multiprocessing.spawn import spawn_main; …' --multiprocessing-fork`), so a
//! tracer in the supervisor is never inherited: the match asks the host to inject every child.

use crate::argv::{self, Opt};
use crate::instrumentations::{count, matched, push_some};
use crate::launcher::launch;
use crate::process::{trimmed, ProcessMatch, ProcessView, Role};
use crate::service_name::{from_dir, from_module, pick};

const WORKERS: Opt = Opt::both(&["--workers"], 'w');
const APP_DIR: Opt = Opt::long(&["--app-dir"]);

/// Options of uvicorn (0.20 … 0.55) and hypercorn (0.14 … 0.18) that take no value.
const FLAGS: &[&str] = &[
    "--reload",
    "--use-colors",
    "--no-use-colors",
    "--access-log",
    "--no-access-log",
    "--proxy-headers",
    "--no-proxy-headers",
    "--server-header",
    "--no-server-header",
    "--date-header",
    "--no-date-header",
    "--factory",
    "--reset-contextvars",
    "--debug",
    "--help",
    "--version",
    "--quic-bind",
    "--insecure-bind",
    "--reload-include",
    "-d",
];

/// The `-c` program of a child that multiprocessing's spawn start method made.
const SPAWN_MAIN: &str = "from multiprocessing.spawn import spawn_main";

/// Matches a uvicorn or hypercorn process, or a worker one of them spawned.
pub fn match_process(p: &ProcessView<'_>) -> Option<ProcessMatch> {
    if is_spawned_child(p.cmdline) {
        let parent = server(p.parent_cmdline, p.cwd)?;
        return Some(matched(
            parent.technology,
            Role::Worker,
            parent.name,
            parent.settings,
        ));
    }
    let s = server(p.cmdline, p.cwd)?;
    let mut m = matched(s.technology, s.role, s.name, s.settings);
    // Spawned workers start with a fresh interpreter: nothing to inherit.
    m.inject_children = true;
    Some(m)
}

struct Server {
    technology: &'static str,
    role: Role,
    name: (String, &'static str),
    settings: Vec<(&'static str, String)>,
}

fn server(cmdline: &[String], cwd: &str) -> Option<Server> {
    let l = launch(cmdline)?;
    let technology = match l.program {
        "uvicorn" | "uvicorn.__main__" => "uvicorn",
        "hypercorn" | "hypercorn.__main__" => "hypercorn",
        _ => return None,
    };
    let workers = count(argv::value(l.args, &WORKERS));
    // uvicorn serves in its own process unless told to run workers; hypercorn runs one spawned
    // worker unless `--workers 0`.
    let supervises = match technology {
        "uvicorn" => workers.is_some_and(|n| n > 1),
        _ => argv::value(l.args, &WORKERS).map(str::trim) != Some("0"),
    };
    let app = argv::positionals(l.args, |a| FLAGS.contains(&a))
        .into_iter()
        .find(|a| a.contains(':') && !a.contains('/'));
    let name = pick(
        [
            (app.and_then(from_module), "module"),
            (argv::value(l.args, &APP_DIR).and_then(from_dir), "app-dir"),
            (from_dir(cwd), "cwd"),
        ],
        (technology, "technology"),
    );
    let mut settings = vec![("concurrency", "asyncio".to_string())];
    push_some(&mut settings, "workers", workers);
    Some(Server {
        technology,
        role: if supervises {
            Role::Master
        } else {
            Role::Standalone
        },
        name,
        settings,
    })
}

fn is_spawned_child(cmdline: &[String]) -> bool {
    let argv = trimmed(cmdline);
    argv.iter().any(|a| a == "--multiprocessing-fork")
        && argv
            .windows(2)
            .any(|w| w[0] == "-c" && w[1].starts_with(SPAWN_MAIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::test_support::run;

    const PY: &str = "/srv/venv/bin/python3.12";

    fn m(cmd: &[&str], parent: &[&str]) -> Option<ProcessMatch> {
        run(match_process, PY, cmd, parent, "/srv/shop")
    }

    #[test]
    fn uvicorn_alone_and_with_workers() {
        let alone = m(
            &[
                PY,
                "/srv/venv/bin/uvicorn",
                "shop.main:app",
                "--port",
                "8000",
            ],
            &["bash"],
        )
        .expect("uvicorn");
        assert_eq!(alone.technology, "uvicorn");
        assert_eq!(alone.role, Role::Standalone);
        assert_eq!(alone.service_name, "shop");
        assert!(alone.inject_children);

        let sup = m(
            &[PY, "-m", "uvicorn", "--workers", "4", "billing:app"],
            &["bash"],
        )
        .expect("m");
        assert_eq!(sup.role, Role::Master);
        assert_eq!(sup.service_name, "billing");
    }

    #[test]
    fn spawned_workers_take_their_supervisor_s_name() {
        let parent = [
            PY,
            "/srv/venv/bin/uvicorn",
            "orders.asgi:application",
            "--workers",
            "2",
        ];
        let child = [
            PY,
            "-c",
            "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
            "--multiprocessing-fork",
        ];
        let w = m(&child, &parent).expect("worker");
        assert_eq!((w.technology, w.role), ("uvicorn", Role::Worker));
        assert_eq!(w.service_name, "orders");
        // multiprocessing's resource tracker is a child too, and no server.
        let tracker = [
            PY,
            "-c",
            "from multiprocessing.resource_tracker import main;main(5)",
        ];
        assert!(m(&tracker, &parent).is_none());
        // A spawned child of something else is not ours.
        assert!(m(&child, &[PY, "celery", "worker"]).is_none());
    }

    #[test]
    fn hypercorn_supervises_unless_workers_zero() {
        let h = m(
            &[
                "/srv/venv/bin/hypercorn",
                "-b",
                "127.0.0.1:8000",
                "payments:app",
            ],
            &["sh"],
        )
        .expect("hypercorn");
        assert_eq!((h.technology, h.role), ("hypercorn", Role::Master));
        assert_eq!(h.service_name, "payments");
        let h0 = m(
            &["/srv/venv/bin/hypercorn", "--workers", "0", "web:app"],
            &["sh"],
        )
        .expect("h");
        assert_eq!(h0.role, Role::Standalone);
    }

    #[test]
    fn others_are_not_matched() {
        assert!(m(
            &[
                PY,
                "/srv/venv/bin/gunicorn",
                "-k",
                "uvicorn.workers.UvicornWorker",
                "a:app"
            ],
            &["sh"]
        )
        .is_none());
        assert!(m(&[PY, "uvicorn_helper.py"], &["sh"]).is_none());
        assert!(m(&[PY, "-c", "import uvicorn"], &["sh"]).is_none());
    }
}
