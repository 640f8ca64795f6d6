//! The rules of the gunicorn and uWSGI sensors as plain Rust.
//!
//! The sensor components (`sensors/gunicorn`, `sensors/uwsgi`) are thin WIT glue around this crate;
//! the host also calls it natively (the sandboxed-vs-native enrichment benchmark). Nothing here
//! allocates for what it only reads: processes and spans come in as borrowed views.
//!
//! # Matching processes
//! [`gunicorn::match_process`] and [`uwsgi::match_process`] take a [`ProcessView`] and return a
//! [`ProcessMatch`] (technology, [`Role`], service name and where it came from, instrumentations)
//! or `None` for a process that is not theirs. Service-name sources, in order of preference:
//!
//! | technology | sources (`service_name_source`), in order |
//! |---|---|
//! | gunicorn | `--name` (`--name X`, `--name=X`, `-n X`, `-nX`); `proc-title` (a name in a setproctitle title `gunicorn: master [NAME]`); `module` (the app argument, or the title's `[module:variable]`: `myproj.wsgi:application` → `myproj`); `config` (`-c`/`--config` path, or `python:module`); `cwd` |
//! | uWSGI | `procname` (`--procname-prefix[-spaced]`, `--procname`, `--procname-master`, or a title they produced, also the parent's); `--module` (also `-w`, `--wsgi`, `--mount /=app`); `--wsgi-file` (also `--file`); `--ini` (also a bare `app.ini` argument); `config` (`--yaml`/`--json`/`--xml`); `cwd`; `virtualenv` (`-H`/`--home`/`--virtualenv`) |
//!
//! A source whose value is generic (`app`, `wsgi`, `main`, `src`, `/`, `/srv/app`, release
//! directories …) is skipped in favour of the next; paths are walked up to the nearest
//! non-generic directory (`/srv/shop/shop/wsgi.py` → `shop`). If every source is generic the first
//! generic one is used, then the technology name (source `technology`) — never "unknown".
//!
//! Roles: a process whose parent shows the same argv (or a master's title) is a worker. A gunicorn
//! root process is a master. A uWSGI root process is a master with `--master`/`-M` or a config
//! file (which usually sets it; the sensor cannot read it), otherwise standalone. Known limits:
//! a gunicorn master re-executed by `USR2` looks like a worker of the old master (without
//! setproctitle), and a uWSGI `--http` router process, forked with the same argv, looks like a
//! worker unless process names are on (`uWSGI http 1` does not match).

//! # Instrumentations and their settings
//! Every match asks for the same instrumentation names (the tracer turns on only those whose library
//! is imported): `wsgi-server`, `flask`, `django`, `http-client`, `dbapi`, `sqlalchemy`, `redis`.
//! Only `wsgi-server` carries settings, all `(key, value)` strings:
//!
//! | key | values | meaning |
//! |---|---|---|
//! | `server` | `gunicorn`, `uwsgi` | which server's hooks to use |
//! | `role` | `master`, `worker`, `standalone` | the process's role |
//! | `service.name` | string | the derived service name |
//! | `concurrency` | `process`, `threads`, `gevent`, `eventlet`, `asyncio` | how requests run concurrently in one process (context propagation) |
//! | `worker-class` | `sync`, `gthread`, `gevent`, `eventlet`, `tornado`, or the dotted class | gunicorn only; `gthread` when `--threads` > 1 with the sync class, as gunicorn does |
//! | `threads` | integer | gunicorn `--threads`, uWSGI `--threads`; absent when not given |
//! | `workers` | integer | gunicorn `-w`, uWSGI `-p`/`--processes`/`--workers`; absent when not given |
//! | `preload` | `true`, `false` | gunicorn `--preload` |
//! | `lazy-apps` | `true`, `false` | uWSGI `--lazy-apps` (or `--lazy`): the app loads after the fork |
//! | `enable-threads` | `true`, `false`, `unknown` | uWSGI `--enable-threads` (or `-T`, or implied by `--threads`); `unknown` when a config file may set it |
//! | `launcher` | `uwsgi`, `pyuwsgi` | uWSGI only: the C executable or the pyuwsgi module |
//!
//! # Sensor components
//! `sensors/gunicorn` and `sensors/uwsgi` are `wit_bindgen::generate!` plus one
//! [`sensor_component!`] invocation, which converts between the WIT types and these.
//!
//! # Enrichment
//! [`enrich::enrich_span`] / [`enrich::enrich_batch`] take borrowed spans and return
//! [`enrich::Patch`]es that mirror the WIT `span-patch`: only what changes. The attribute keys read
//! are [`ATTRIBUTE_KEYS`]. Enriching an already enriched span returns no patch (idempotent), and
//! the work per value is bounded. The rules: [`enrich::route`], [`enrich::sql`], [`enrich::redact`],
//! [`enrich::status`].

#![warn(missing_docs)]

mod argv;
pub mod asgi;
pub mod component;
pub mod enrich;
pub mod gunicorn;
mod instrumentations;
mod launcher;
mod process;
mod service_name;
pub mod uwsgi;

pub use enrich::ATTRIBUTE_KEYS;
pub use process::{Instrumentation, ProcessMatch, ProcessView, Role};
