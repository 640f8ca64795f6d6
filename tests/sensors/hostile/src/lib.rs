//! A sensor that misbehaves on purpose, one way per cargo feature, built by the test suite from the
//! real contract. Without any misbehaving feature it is a correct, minimal sensor.
#![allow(clippy::all)]

wit_bindgen::generate!({ path: "../../../wit/v0.1", world: "sensor" });

use zerostep::sensor::types::ProcessRole;

struct Hostile;

fn version() -> String {
    option_env!("HOSTILE_VERSION")
        .unwrap_or("1.0.0")
        .to_string()
}

impl Guest for Hostile {
    fn describe() -> SensorInfo {
        SensorInfo {
            name: "hostile".into(),
            version: version(),
            technologies: vec!["test".into()],
            contract_version: if cfg!(feature = "wrong-contract") {
                "9.0.0".into()
            } else {
                "0.1.0".into()
            },
            attribute_keys: vec![],
        }
    }

    fn match_process(process: ProcessInfo) -> Option<ProcessMatch> {
        zerostep::sensor::host::log(
            zerostep::sensor::types::LogLevel::Debug,
            "match-process called",
        );
        process
            .cmdline
            .iter()
            .any(|a| a == "hostile-test")
            .then(|| ProcessMatch {
                technology: "test".into(),
                role: ProcessRole::Standalone,
                service_name: format!("hostile-{}", version()),
                service_name_source: "test".into(),
                instrumentations: vec![],
            })
    }

    fn instrumentation(_matched: ProcessMatch) -> Vec<PythonModule> {
        vec![]
    }

    fn enrich(_matched: ProcessMatch, batch: SpanBatch) -> Vec<SpanPatch> {
        let spans = &batch.spans;
        // The markers below make a misbehaviour trigger only on a span named "trigger", so that the
        // canary (which uses its own sample spans) passes and the failure shows at serving time.
        let name = |s: &zerostep::sensor::types::Span| {
            let start = s.name.offset as usize;
            batch
                .text
                .get(start..start + s.name.len as usize)
                .unwrap_or("")
        };
        let triggered = spans.iter().any(|s| name(s) == "trigger");
        if cfg!(feature = "infinite-loop") && triggered {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        if cfg!(feature = "memory-bomb") && triggered {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if cfg!(feature = "panic") && triggered {
            panic!("hostile sensor panics on purpose");
        }
        if cfg!(feature = "huge-return") && triggered {
            return (0..5_000u32)
                .map(|i| SpanPatch {
                    index: 0,
                    name: Some(format!("span-{i}")),
                    status: None,
                    set_attributes: vec![],
                    remove_attributes: vec![],
                })
                .collect();
        }
        if cfg!(feature = "slow-enrich") {
            // Burns CPU for a while on every call: hot-swap tests use it to keep calls in flight.
            let mut x: u64 = 0;
            for i in 0..200_000u64 {
                x = std::hint::black_box(x ^ i);
            }
        }
        // Well-behaved: tag every span with the version that served it.
        spans
            .iter()
            .enumerate()
            .map(|(i, _)| SpanPatch {
                index: i as u32,
                name: None,
                status: None,
                set_attributes: vec![zerostep::sensor::types::Attribute {
                    key: "test.sensor.version".into(),
                    value: zerostep::sensor::types::AttributeValue::Str(version()),
                }],
                remove_attributes: vec![],
            })
            .collect()
    }
}

export!(Hostile);
