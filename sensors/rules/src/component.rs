//! The WIT glue both sensor components share, as a macro: each component crate runs
//! `wit_bindgen::generate!` itself in a module named `bindings` (the generated types belong to
//! that crate), then invokes [`sensor_component!`](crate::sensor_component) to convert between
//! them and this crate's types.

/// The `zerostep:sensor` contract version these rules are written against.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// One instrumentation bundle as a sensor crate declares it: Python sources embedded with
/// `include_str!`. [`BundleSpec::version`] derives the bundle's version from its content, so a
/// changed source is a new version without anyone bumping a number.
pub struct BundleSpec {
    /// Unique within the sensor.
    pub name: &'static str,
    /// Loaded into every traced process (library instrumentations), not only matched ones.
    pub every_process: bool,
    /// Modules whose import triggers the bundle.
    pub triggers: &'static [&'static str],
    /// (module name inside the bundle, source), in dependency order.
    pub modules: &'static [(&'static str, &'static str)],
    /// `module:function`.
    pub entry: &'static str,
    /// Tracer API range, e.g. `>=1.0,<2`.
    pub tracer_api: &'static str,
    /// Default settings.
    pub settings: &'static [(&'static str, &'static str)],
}

impl BundleSpec {
    /// `base` (the crate version) plus a 64-bit FNV-1a hash of everything the bundle carries.
    pub fn version(&self, base: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes.iter().chain(&[0xff]) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(self.name.as_bytes());
        eat(self.entry.as_bytes());
        eat(self.tracer_api.as_bytes());
        for t in self.triggers {
            eat(t.as_bytes());
        }
        for (n, s) in self.modules {
            eat(n.as_bytes());
            eat(s.as_bytes());
        }
        for (k, v) in self.settings {
            eat(k.as_bytes());
            eat(v.as_bytes());
        }
        format!("{base}+{h:016x}")
    }
}

/// Implements and exports the `sensor` world for one technology. Invoke at the root of a
/// component crate whose bindings are generated in a module named `bindings`:
///
/// ```ignore
/// mod bindings {
///     #![allow(clippy::too_many_arguments)] // generated code
///     wit_bindgen::generate!({ path: "../../wit/v0.2", world: "sensor", generate_all });
/// }
/// zerostep_rules::sensor_component!(Gunicorn, "gunicorn", zerostep_rules::gunicorn::match_process, BUNDLES);
/// ```
#[macro_export]
macro_rules! sensor_component {
    ($sensor:ident, $name:literal, $match_process:path, $bundles:expr) => {
        struct $sensor;

        mod glue {
            use super::bindings::zerostep::sensor0_1_0::types as wit;
            use super::bindings::zerostep::sensor0_2_0::types as wit2;
            use $crate::enrich::{OwnedValue, Patch, SpanKind, StatusCode, Value};

            pub fn view(p: &super::bindings::ProcessInfo) -> $crate::ProcessView<'_> {
                $crate::ProcessView { exe: &p.exe, cmdline: &p.cmdline, cwd: &p.cwd, parent_cmdline: &p.parent_cmdline }
            }

            /// The match names one bundle, the technology's own, with the server's settings
            /// (libraries come from the libraries sensor, loaded into every traced process).
            pub fn process_match(m: $crate::ProcessMatch) -> super::bindings::ProcessMatch {
                let settings = m
                    .instrumentations
                    .into_iter()
                    .find(|i| i.name == "wsgi-server")
                    .map(|i| i.settings.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                    .unwrap_or_default();
                super::bindings::ProcessMatch {
                    technology: m.technology.to_string(),
                    role: match m.role {
                        $crate::Role::Master => wit::ProcessRole::Master,
                        $crate::Role::Worker => wit::ProcessRole::Worker,
                        $crate::Role::Standalone => wit::ProcessRole::Standalone,
                    },
                    service_name: m.service_name,
                    service_name_source: m.service_name_source.to_string(),
                    injection: wit2::InjectionPolicy {
                        inject: true,
                        forked_children: if m.inject_children {
                            wit2::ChildPolicy::Inject
                        } else {
                            wit2::ChildPolicy::Inherit
                        },
                        spawned_children: wit2::ChildPolicy::Inject,
                    },
                    bundles: vec![wit2::BundleChoice { name: $name.to_string(), settings }],
                }
            }

            pub fn bundles(specs: &[$crate::component::BundleSpec]) -> Vec<wit2::Bundle> {
                specs
                    .iter()
                    .map(|b| wit2::Bundle {
                        name: b.name.to_string(),
                        version: b.version(env!("CARGO_PKG_VERSION")),
                        scope: if b.every_process {
                            wit2::BundleScope::EveryProcess
                        } else {
                            wit2::BundleScope::Matched
                        },
                        triggers: b.triggers.iter().map(|t| t.to_string()).collect(),
                        modules: b
                            .modules
                            .iter()
                            .map(|(n, s)| wit2::PythonModule { name: n.to_string(), source: s.to_string() })
                            .collect(),
                        entry: b.entry.to_string(),
                        tracer_api: b.tracer_api.to_string(),
                        settings: b.settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    })
                    .collect()
            }

            /// Borrowed views into one `span-batch`. Out-of-range references (a host bug) read as
            /// empty rather than panicking.
            pub struct Batch<'a> {
                batch: &'a super::bindings::SpanBatch,
                /// String arrays, materialised once per batch (rare: header values), by attribute.
                arrays: Vec<Option<Vec<String>>>,
            }

            impl<'a> Batch<'a> {
                pub fn new(batch: &'a super::bindings::SpanBatch) -> Self {
                    let mut this = Batch { batch, arrays: Vec::new() };
                    if batch.attributes.iter().any(|a| matches!(a.value, wit::ValueRef::StrArray(_))) {
                        this.arrays = batch
                            .attributes
                            .iter()
                            .map(|a| match &a.value {
                                wit::ValueRef::StrArray(refs) => {
                                    Some(refs.iter().map(|r| this.text(*r).to_string()).collect())
                                }
                                _ => None,
                            })
                            .collect();
                    }
                    this
                }

                pub fn text(&self, r: wit::TextRef) -> &'a str {
                    let start = r.offset as usize;
                    self.batch.text.get(start..start.saturating_add(r.len as usize)).unwrap_or("")
                }

                pub fn attributes(&self, r: wit::Range) -> impl Iterator<Item = (&'a str, Value<'_>)> + '_ {
                    let start = r.first as usize;
                    let end = start.saturating_add(r.count as usize);
                    let attrs = self.batch.attributes.get(start..end).unwrap_or(&[]);
                    attrs.iter().enumerate().filter_map(move |(i, a)| {
                        let key = self.batch.keys.get(a.key as usize)?;
                        let value = match &a.value {
                            wit::ValueRef::Str(t) => Value::Str(self.text(*t)),
                            wit::ValueRef::Int(i) => Value::Int(*i),
                            wit::ValueRef::Double(d) => Value::Double(*d),
                            wit::ValueRef::Boolean(b) => Value::Bool(*b),
                            wit::ValueRef::StrArray(_) => {
                                Value::StrArray(self.arrays.get(start + i)?.as_deref().unwrap_or(&[]))
                            }
                        };
                        Some((key.as_str(), value))
                    })
                }
            }

            fn owned(v: OwnedValue) -> wit::AttributeValue {
                match v {
                    OwnedValue::Str(s) => wit::AttributeValue::Str(s),
                    OwnedValue::Int(i) => wit::AttributeValue::Int(i),
                    OwnedValue::Double(d) => wit::AttributeValue::Double(d),
                    OwnedValue::Bool(b) => wit::AttributeValue::Boolean(b),
                    OwnedValue::StrArray(a) => wit::AttributeValue::StrArray(a),
                }
            }

            pub fn kind(k: wit::SpanKind) -> SpanKind {
                match k {
                    wit::SpanKind::Internal => SpanKind::Internal,
                    wit::SpanKind::Server => SpanKind::Server,
                    wit::SpanKind::Client => SpanKind::Client,
                    wit::SpanKind::Producer => SpanKind::Producer,
                    wit::SpanKind::Consumer => SpanKind::Consumer,
                }
            }

            pub fn status(c: wit::StatusCode) -> StatusCode {
                match c {
                    wit::StatusCode::Unset => StatusCode::Unset,
                    wit::StatusCode::Ok => StatusCode::Ok,
                    wit::StatusCode::Error => StatusCode::Error,
                }
            }

            pub fn patch(p: Patch) -> super::bindings::SpanPatch {
                super::bindings::SpanPatch {
                    index: p.index,
                    name: p.name,
                    status: p.status.map(|s| wit::SpanStatus {
                        code: match s.code {
                            StatusCode::Unset => wit::StatusCode::Unset,
                            StatusCode::Ok => wit::StatusCode::Ok,
                            StatusCode::Error => wit::StatusCode::Error,
                        },
                        message: s.message,
                    }),
                    set_attributes: p
                        .set_attributes
                        .into_iter()
                        .map(|(key, v)| wit::Attribute { key: key.to_string(), value: owned(v) })
                        .collect(),
                    remove_attributes: p.remove_attributes.into_iter().map(str::to_string).collect(),
                }
            }
        }

        impl bindings::Guest for $sensor {
            fn describe() -> bindings::SensorInfo {
                bindings::SensorInfo {
                    name: $name.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    technologies: vec![$name.to_string()],
                    contract_version: $crate::component::CONTRACT_VERSION.to_string(),
                    attribute_keys: $crate::ATTRIBUTE_KEYS.iter().map(|k| k.to_string()).collect(),
                }
            }

            fn match_process(process: bindings::ProcessInfo) -> Option<bindings::ProcessMatch> {
                let matched = $match_process(&glue::view(&process))?;
                bindings::zerostep::sensor0_1_0::host::log(
                    bindings::zerostep::sensor0_1_0::types::LogLevel::Debug,
                    &format!(
                        "pid {}: {} {} '{}' from {}",
                        process.pid,
                        matched.technology,
                        matched.role.as_str(),
                        matched.service_name,
                        matched.service_name_source
                    ),
                );
                Some(glue::process_match(matched))
            }

            fn bundles() -> Vec<bindings::Bundle> {
                glue::bundles($bundles)
            }

            fn rules() -> bindings::Rules {
                $crate::component::rules_of!(bindings)
            }

            fn enrich(_matched: bindings::ProcessMatch, batch: bindings::SpanBatch) -> Vec<bindings::SpanPatch> {
                let view = glue::Batch::new(&batch);
                batch
                    .spans
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        $crate::enrich::enrich_span(
                            u32::try_from(i).ok()?,
                            view.text(s.name),
                            glue::kind(s.kind),
                            glue::status(s.status_code),
                            view.attributes(s.attributes),
                        )
                    })
                    .map(glue::patch)
                    .collect()
            }
        }

        bindings::export!($sensor with_types_in bindings);
    };
}

/// The declarative rules every sensor built on this crate ships: the keys its redaction reads,
/// so the host redacts them natively too when the sensor cannot.
#[macro_export]
#[doc(hidden)]
macro_rules! rules_of {
    ($bindings:ident) => {{
        use $bindings::zerostep::sensor0_2_0::types as wit2;
        wit2::Rules {
            redaction: wit2::RedactionRules {
                secret_attributes: Vec::new(),
                url_attributes: vec!["url.full".into(), "http.url".into()],
                sql_attributes: vec!["db.query.text".into(), "db.statement".into()],
                sensitive_words: Vec::new(),
            },
            routes: Vec::new(),
            sampling: Vec::new(),
        }
    }};
}
pub use rules_of;
