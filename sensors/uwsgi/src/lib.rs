//! The uWSGI sensor component: the rules of `zerostep_rules::uwsgi` behind the
//! `zerostep:sensor` contract.

mod bindings {
    // Generated code: some exported functions take many flattened arguments.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({ path: "../../wit", world: "sensor" });
}

zerostep_rules::sensor_component!(Uwsgi, "uwsgi", zerostep_rules::uwsgi::match_process);
