//! The libraries sensor (`zerostep:sensor@0.2.0`): matches no process itself; it carries the
//! library instrumentations (Flask, Django, http.client, sqlite3, psycopg2, PyMySQL, redis-py,
//! SQLAlchemy) as one bundle of scope `every-process`, so the agent loads it into every traced
//! process whichever server sensor matched it.
//!
//! Why one sensor for the libraries and one per server: a server sensor knows a process model
//! (how to recognise master and workers, where the app is, how forks happen), a library is the
//! same under every server. Kept apart, a Flask fix ships without touching the servers, and a new
//! server sensor (ASGI, a test-only one) gets every library for free. One libraries sensor rather
//! than one per library: they share the DB-API span helpers and the ORM suppression context
//! variable (SQLAlchemy's span hides the driver's), which must be one module in the process.

mod bindings {
    // Generated code: some exported functions take many flattened arguments.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({ path: "../../wit/v0.2", world: "sensor", generate_all });
}

use zerostep_rules::component::BundleSpec;
use zerostep_rules::{ProcessMatch, ProcessView};

const BUNDLES: &[BundleSpec] = &[BundleSpec {
    name: "libraries",
    every_process: true,
    // Each instrumentation waits for its own library; the bundle itself is small and loads at once.
    triggers: &[],
    modules: &[
        ("frameworks", include_str!("../python/frameworks.py")),
        ("clients", include_str!("../python/clients.py")),
        ("db", include_str!("../python/db.py")),
        ("libraries", include_str!("../python/libraries.py")),
    ],
    entry: "libraries:instrumentations",
    tracer_api: ">=1.0,<2",
    settings: &[],
}];

/// Libraries do not make a process traceable by themselves: a server sensor must match it.
fn match_process(_process: &ProcessView<'_>) -> Option<ProcessMatch> {
    None
}

zerostep_rules::sensor_component!(Libraries, "libraries", match_process, BUNDLES);
