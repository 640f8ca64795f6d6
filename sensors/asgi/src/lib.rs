//! The ASGI sensor component (`zerostep:sensor@0.2.0`): matches uvicorn and hypercorn processes
//! and their spawned workers (`zerostep_rules::asgi`), and carries the ASGI bundle (python/),
//! loaded into every traced process: gunicorn's uvicorn workers are matched by the gunicorn
//! sensor, and the bundle instruments whichever ASGI server it finds imported.

mod bindings {
    // Generated code: some exported functions take many flattened arguments.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({ path: "../../wit/v0.2", world: "sensor", generate_all });
}

use zerostep_rules::component::BundleSpec;

const BUNDLES: &[BundleSpec] = &[BundleSpec {
    name: "asgi",
    every_process: true,
    triggers: &[
        "uvicorn.protocols.http.h11_impl",
        "uvicorn.protocols.http.httptools_impl",
        "hypercorn.app_wrappers",
    ],
    modules: &[("asgi", include_str!("../python/asgi.py"))],
    entry: "asgi:instrumentations",
    tracer_api: ">=1.0,<2",
    settings: &[],
}];

zerostep_rules::sensor_component!(Asgi, "asgi", zerostep_rules::asgi::match_process, BUNDLES);
