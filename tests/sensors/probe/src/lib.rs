//! A sensor of contract `zerostep:sensor@0.2.0` for a technology the agent has never heard of:
//! the test-only module `zs_probe_lib`. It matches no process; its one bundle (scope
//! `every-process`, triggered by `zs_probe_lib`) adds a `probe.run` span with attribute `x`.
//! Built twice by `make test-sensors`: `PROBE_X=1 PROBE_VERSION=1.0.0` and `PROBE_X=2 …2.0.0`.

wit_bindgen::generate!({ path: "../../../wit/v0.2", world: "sensor", generate_all });

use zerostep::sensor0_2_0::types::{BundleScope, PythonModule, RedactionRules};

const X: &str = match option_env!("PROBE_X") {
    Some(x) => x,
    None => "1",
};
const VERSION: &str = match option_env!("PROBE_VERSION") {
    Some(v) => v,
    None => "1.0.0",
};

struct Probe;

impl Guest for Probe {
    fn describe() -> SensorInfo {
        SensorInfo {
            name: "probe".into(),
            version: VERSION.into(),
            technologies: vec!["zs_probe_lib".into()],
            contract_version: "0.2.0".into(),
            attribute_keys: vec!["x".into()],
        }
    }

    fn match_process(_process: ProcessInfo) -> Option<ProcessMatch> {
        None
    }

    fn bundles() -> Vec<Bundle> {
        vec![Bundle {
            name: "probe".into(),
            version: VERSION.into(),
            scope: BundleScope::EveryProcess,
            triggers: vec!["zs_probe_lib".into()],
            modules: vec![PythonModule {
                name: "probe".into(),
                source: include_str!("../python/probe.py").replace("PROBE_X_VALUE", X),
            }],
            entry: "probe:instrumentations".into(),
            tracer_api: ">=1.0,<2".into(),
            settings: vec![],
        }]
    }

    fn rules() -> Rules {
        Rules {
            redaction: RedactionRules {
                secret_attributes: vec![],
                url_attributes: vec![],
                sql_attributes: vec![],
                sensitive_words: vec![],
            },
            routes: vec![],
            sampling: vec![],
        }
    }

    fn enrich(_matched: ProcessMatch, _batch: SpanBatch) -> Vec<SpanPatch> {
        Vec::new()
    }
}

export!(Probe);
