//! The gunicorn sensor component: the rules of `zerostep_rules::gunicorn` behind the
//! `zerostep:sensor@0.2.0` contract, and the gunicorn bundle (python/) the tracer loads into every
//! gunicorn process it matched.

mod bindings {
    // Generated code: some exported functions take many flattened arguments.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({ path: "../../wit/v0.2", world: "sensor", generate_all });
}

use zerostep_rules::component::BundleSpec;

const BUNDLES: &[BundleSpec] = &[BundleSpec {
    name: "gunicorn",
    every_process: false,
    // Every module the bundle patches: a worker module's import starts before (and ends after)
    // that of gunicorn.workers.base, which it imports, so it must be watched from the start.
    triggers: &[
        "gunicorn.workers.base",
        "gunicorn.workers.sync",
        "gunicorn.workers.gthread",
        "gunicorn.workers.base_async",
        "gunicorn.arbiter",
    ],
    modules: &[("server", include_str!("../python/server.py"))],
    entry: "server:instrumentations",
    tracer_api: ">=1.0,<2",
    settings: &[],
}];

zerostep_rules::sensor_component!(
    Gunicorn,
    "gunicorn",
    zerostep_rules::gunicorn::match_process,
    BUNDLES
);
