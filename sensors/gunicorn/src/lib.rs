//! The gunicorn sensor component: the rules of `zerostep_rules::gunicorn` behind the
//! `zerostep:sensor` contract.

mod bindings {
    // Generated code: some exported functions take many flattened arguments.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({ path: "../../wit", world: "sensor" });
}

zerostep_rules::sensor_component!(
    Gunicorn,
    "gunicorn",
    zerostep_rules::gunicorn::match_process
);
