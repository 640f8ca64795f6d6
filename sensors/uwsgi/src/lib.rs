//! The uWSGI sensor component: the rules of `zerostep_rules::uwsgi` behind the
//! `zerostep:sensor@0.2.0` contract, and the uWSGI bundle (python/) the tracer loads into every
//! uWSGI process it matched.

mod bindings {
    // Generated code: some exported functions take many flattened arguments.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({ path: "../../wit/v0.2", world: "sensor", generate_all });
}

use zerostep_rules::component::BundleSpec;

const BUNDLES: &[BundleSpec] = &[BundleSpec {
    name: "uwsgi",
    every_process: false,
    triggers: &["uwsgi"],
    modules: &[("server", include_str!("../python/server.py"))],
    entry: "server:instrumentations",
    tracer_api: ">=1.0,<2",
    settings: &[],
}];

zerostep_rules::sensor_component!(
    Uwsgi,
    "uwsgi",
    zerostep_rules::uwsgi::match_process,
    BUNDLES
);
