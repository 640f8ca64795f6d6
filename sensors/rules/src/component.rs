//! The WIT glue both sensor components share, as a macro: each component crate runs
//! `wit_bindgen::generate!` itself in a module named `bindings` (the generated types belong to
//! that crate), then invokes [`sensor_component!`](crate::sensor_component) to convert between
//! them and this crate's types.

/// The `zerostep:sensor` contract version these rules are written against.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// Implements and exports the `sensor` world for one technology. Invoke at the root of a
/// component crate whose bindings are generated in a module named `bindings`:
///
/// ```ignore
/// mod bindings {
///     #![allow(clippy::too_many_arguments)] // generated code
///     wit_bindgen::generate!({ path: "../../wit", world: "sensor" });
/// }
/// zerostep_rules::sensor_component!(Gunicorn, "gunicorn", zerostep_rules::gunicorn::match_process);
/// ```
#[macro_export]
macro_rules! sensor_component {
    ($sensor:ident, $name:literal, $match_process:path) => {
        struct $sensor;

        mod glue {
            use super::bindings::zerostep::sensor::types as wit;
            use $crate::enrich::{OwnedValue, Patch, SpanKind, StatusCode, Value};

            pub fn view(p: &super::bindings::ProcessInfo) -> $crate::ProcessView<'_> {
                $crate::ProcessView { exe: &p.exe, cmdline: &p.cmdline, cwd: &p.cwd, parent_cmdline: &p.parent_cmdline }
            }

            pub fn process_match(m: $crate::ProcessMatch) -> super::bindings::ProcessMatch {
                super::bindings::ProcessMatch {
                    technology: m.technology.to_string(),
                    role: match m.role {
                        $crate::Role::Master => wit::ProcessRole::Master,
                        $crate::Role::Worker => wit::ProcessRole::Worker,
                        $crate::Role::Standalone => wit::ProcessRole::Standalone,
                    },
                    service_name: m.service_name,
                    service_name_source: m.service_name_source.to_string(),
                    instrumentations: m
                        .instrumentations
                        .into_iter()
                        .map(|i| wit::InstrumentationChoice {
                            name: i.name.to_string(),
                            settings: i.settings.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        })
                        .collect(),
                }
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
                bindings::zerostep::sensor::host::log(
                    bindings::zerostep::sensor::types::LogLevel::Debug,
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

            fn instrumentation(_matched: bindings::ProcessMatch) -> Vec<bindings::PythonModule> {
                Vec::new()
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
