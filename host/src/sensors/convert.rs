//! Crossing the sandbox boundary: host types into the contract's types, and the sensor's answers
//! back into host types, validated against the limits. Nothing a sensor returns is trusted.
// FxHash: keys are looked up once per attribute on the hot path; a batch's keys are few and
// bounded, so even deliberately colliding ones cost little.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::bindings::wit;
use super::limits::SandboxLimits;
use super::model::{Instrumentation, Match, PythonModule, Role, SensorInfo};
use crate::discover::{LibPython, ProcessInfo};
use crate::span::{AttrValue, Attribute, Span, SpanKind, Status, StatusCode};

/// A sensor's answer broke the contract or the limits.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OutputError {
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {count} entries, over the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("patch for span index {index} but the batch has {len} spans")]
    BadIndex { index: u32, len: usize },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} contains control characters")]
    ControlChars(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

fn check_str(what: &'static str, s: &str, max: usize) -> Result<(), OutputError> {
    if s.len() > max {
        return Err(OutputError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), OutputError> {
    if count > max {
        return Err(OutputError::TooMany { what, count, max });
    }
    Ok(())
}

pub fn process_info(p: &ProcessInfo) -> wit::ProcessInfo {
    wit::ProcessInfo {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
        cwd: p.cwd.clone(),
        python: p.python.as_ref().map(|py| wit::PythonRuntime {
            version: py.version.clone(),
            libpython: match &py.libpython {
                LibPython::Shared(path) => wit::Libpython::Shared(path.clone()),
                LibPython::LinkedIntoExecutable => wit::Libpython::LinkedIntoExecutable,
            },
        }),
        parent_cmdline: p.parent_cmdline.clone(),
        extra: p.extra.clone(),
    }
}

pub fn sensor_info(i: wit::SensorInfo, limits: &SandboxLimits) -> Result<SensorInfo, OutputError> {
    for (what, s) in [
        ("sensor name", &i.name),
        ("sensor version", &i.version),
        ("contract version", &i.contract_version),
    ] {
        check_str(what, s, 128)?;
    }
    if i.name.is_empty() {
        return Err(OutputError::Empty("sensor name"));
    }
    if !i
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(OutputError::ControlChars(
            "sensor name (allowed: ASCII letters, digits, - _ .)",
        ));
    }
    check_count("technologies", i.technologies.len(), 32)?;
    check_count("attribute keys", i.attribute_keys.len(), 256)?;
    for s in i.technologies.iter().chain(&i.attribute_keys) {
        check_str(
            "technology or attribute key",
            s,
            limits.max_string_bytes.min(256),
        )?;
    }
    Ok(SensorInfo {
        name: i.name,
        version: i.version,
        technologies: i.technologies,
        contract_version: i.contract_version,
        attribute_keys: i.attribute_keys,
    })
}

/// The checks every contract version's match gets: names bounded and printable, choices bounded.
pub(super) fn check_match(
    technology: &str,
    service_name: &str,
    service_name_source: &str,
    choices: &[(&str, &[(String, String)])],
    limits: &SandboxLimits,
) -> Result<(), OutputError> {
    check_str("technology", technology, 64)?;
    check_str("service name", service_name, limits.max_service_name_bytes)?;
    check_str("service name source", service_name_source, 64)?;
    if service_name.trim().is_empty() {
        return Err(OutputError::Empty("service name"));
    }
    if service_name.chars().any(char::is_control) {
        return Err(OutputError::ControlChars("service name"));
    }
    check_count(
        "instrumentations",
        choices.len(),
        limits.max_instrumentations,
    )?;
    for (name, settings) in choices {
        check_str("instrumentation name", name, 64)?;
        check_settings(settings, limits)?;
    }
    Ok(())
}

pub(super) fn check_settings(
    settings: &[(String, String)],
    limits: &SandboxLimits,
) -> Result<(), OutputError> {
    check_count(
        "instrumentation settings",
        settings.len(),
        limits.max_instrumentations,
    )?;
    for (k, v) in settings {
        check_str("setting key", k, 128)?;
        check_str("setting value", v, 4096)?;
    }
    Ok(())
}

pub(super) fn role(r: wit::ProcessRole) -> Role {
    match r {
        wit::ProcessRole::Master => Role::Master,
        wit::ProcessRole::Worker => Role::Worker,
        wit::ProcessRole::Standalone => Role::Standalone,
    }
}

pub(super) fn to_wit_role(r: Role) -> wit::ProcessRole {
    match r {
        Role::Master => wit::ProcessRole::Master,
        Role::Worker => wit::ProcessRole::Worker,
        Role::Standalone => wit::ProcessRole::Standalone,
    }
}

pub fn process_match(m: wit::ProcessMatch, limits: &SandboxLimits) -> Result<Match, OutputError> {
    let choices: Vec<_> = m
        .instrumentations
        .iter()
        .map(|i| (i.name.as_str(), i.settings.as_slice()))
        .collect();
    check_match(
        &m.technology,
        &m.service_name,
        &m.service_name_source,
        &choices,
        limits,
    )?;
    Ok(Match {
        technology: m.technology,
        role: role(m.role),
        service_name: m.service_name,
        service_name_source: m.service_name_source,
        instrumentations: m
            .instrumentations
            .into_iter()
            .map(|i| Instrumentation {
                name: i.name,
                settings: i.settings,
            })
            .collect(),
        injection: Default::default(),
    })
}

pub fn to_wit_match(m: &Match) -> wit::ProcessMatch {
    wit::ProcessMatch {
        technology: m.technology.clone(),
        role: to_wit_role(m.role),
        service_name: m.service_name.clone(),
        service_name_source: m.service_name_source.clone(),
        instrumentations: m
            .instrumentations
            .iter()
            .map(|i| wit::InstrumentationChoice {
                name: i.name.clone(),
                settings: i.settings.clone(),
            })
            .collect(),
    }
}

pub fn python_modules(
    mods: Vec<wit::PythonModule>,
    limits: &SandboxLimits,
) -> Result<Vec<PythonModule>, OutputError> {
    checked_modules(
        mods.into_iter()
            .map(|m| PythonModule {
                name: m.name,
                source: m.source,
            })
            .collect(),
        limits,
    )
}

/// Python modules within the limits, each named by a dotted identifier.
pub(super) fn checked_modules(
    mods: Vec<PythonModule>,
    limits: &SandboxLimits,
) -> Result<Vec<PythonModule>, OutputError> {
    check_count("python modules", mods.len(), limits.max_modules)?;
    let total: usize = mods.iter().map(|m| m.source.len() + m.name.len()).sum();
    if total > limits.max_modules_bytes {
        return Err(OutputError::TooLong {
            what: "python modules' source",
            len: total,
            max: limits.max_modules_bytes,
        });
    }
    for m in &mods {
        if !is_dotted_identifier(&m.name) {
            return Err(OutputError::ControlChars(
                "python module name (dotted identifiers only)",
            ));
        }
    }
    Ok(mods)
}

pub(super) fn is_dotted_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

pub(super) fn check_str_pub(what: &'static str, s: &str, max: usize) -> Result<(), OutputError> {
    check_str(what, s, max)
}

pub(super) fn check_count_pub(
    what: &'static str,
    count: usize,
    max: usize,
) -> Result<(), OutputError> {
    check_count(what, count, max)
}

/// Which attributes cross into the sandbox: those the sensor declared, or all.
pub struct KeyFilter(Option<HashSet<String>>);

impl KeyFilter {
    pub fn new(keys: &[String]) -> Self {
        Self((!keys.is_empty()).then(|| keys.iter().cloned().collect()))
    }

    fn wants(&self, key: &str) -> bool {
        self.0.as_ref().is_none_or(|k| k.contains(key))
    }
}

/// A string value longer than this is not shown to sensors at all (the span keeps it as it is):
/// it could not be processed within a call's budget anyway.
pub const MAX_VALUE_INTO_SANDBOX: usize = 1 << 20;

/// Bytes of text a span adds to a batch (an upper bound of what `to_wit_batch` copies).
pub fn text_bytes(s: &Span) -> usize {
    fn value_len(v: &AttrValue) -> usize {
        match v {
            AttrValue::Str(s) => s.len(),
            AttrValue::StrArray(a) => a.iter().map(String::len).sum(),
            _ => 0,
        }
    }
    let attrs = |a: &[Attribute]| a.iter().map(|a| value_len(&a.value)).sum::<usize>();
    s.name.len()
        + s.status.message.len()
        + attrs(&s.attributes)
        + s.events
            .iter()
            .map(|e| e.name.len() + attrs(&e.attributes))
            .sum::<usize>()
}

/// Builds the contract's `span-batch`: keys interned once, all other strings in one text buffer,
/// attributes and events in batch-wide lists. The caller bounds the batch's text (see `text_bytes`)
/// well below 4 GiB, so offsets fit in `u32`.
pub fn to_wit_batch(spans: &[Span], filter: &KeyFilter) -> wit::SpanBatch {
    let batch = wit::SpanBatch {
        keys: Vec::new(),
        text: String::new(),
        attributes: Vec::new(),
        events: Vec::new(),
        spans: Vec::new(),
    };
    let mut b = BatchBuilder {
        filter,
        keys: HashMap::default(),
        batch,
    };
    b.batch.spans = spans.iter().map(|s| b.span(s)).collect();
    b.batch
}

struct BatchBuilder<'a> {
    filter: &'a KeyFilter,
    keys: HashMap<&'a str, u32>,
    batch: wit::SpanBatch,
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'a> BatchBuilder<'a> {
    fn text(&mut self, s: &str) -> wit::TextRef {
        let offset = count_u32(self.batch.text.len());
        self.batch.text.push_str(s);
        wit::TextRef {
            offset,
            len: count_u32(s.len()),
        }
    }

    fn key(&mut self, key: &'a str) -> u32 {
        if let Some(&i) = self.keys.get(key) {
            return i;
        }
        let i = count_u32(self.batch.keys.len());
        self.batch.keys.push(key.to_string());
        self.keys.insert(key, i);
        i
    }

    fn attributes(&mut self, attrs: &'a [Attribute]) -> wit::Range {
        let first = count_u32(self.batch.attributes.len());
        for a in attrs.iter().filter(|a| self.filter.wants(&a.key)) {
            let value = match &a.value {
                AttrValue::Str(s) if s.len() > MAX_VALUE_INTO_SANDBOX => continue,
                AttrValue::Str(s) => wit::ValueRef::Str(self.text(s)),
                AttrValue::Int(i) => wit::ValueRef::Int(*i),
                AttrValue::Double(d) => wit::ValueRef::Double(*d),
                AttrValue::Bool(b) => wit::ValueRef::Boolean(*b),
                AttrValue::StrArray(v) => {
                    wit::ValueRef::StrArray(v.iter().map(|s| self.text(s)).collect())
                }
            };
            let key = self.key(&a.key);
            self.batch.attributes.push(wit::AttributeRef { key, value });
        }
        wit::Range {
            first,
            count: count_u32(self.batch.attributes.len()) - first,
        }
    }

    fn span(&mut self, s: &'a Span) -> wit::Span {
        let name = self.text(&s.name);
        let status_message = self.text(&s.status.message);
        let attributes = self.attributes(&s.attributes);
        let first_event = count_u32(self.batch.events.len());
        for e in &s.events {
            let event = wit::EventRef {
                name: self.text(&e.name),
                time_unix_nano: e.time_unix_nano,
                attributes: self.attributes(&e.attributes),
            };
            self.batch.events.push(event);
        }
        wit::Span {
            trace_id: ((s.trace_id >> 64) as u64, s.trace_id as u64),
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            name,
            kind: match s.kind {
                SpanKind::Internal => wit::SpanKind::Internal,
                SpanKind::Server => wit::SpanKind::Server,
                SpanKind::Client => wit::SpanKind::Client,
                SpanKind::Producer => wit::SpanKind::Producer,
                SpanKind::Consumer => wit::SpanKind::Consumer,
            },
            start_unix_nano: s.start_unix_nano,
            end_unix_nano: s.end_unix_nano,
            status_code: match s.status.code {
                StatusCode::Unset => wit::StatusCode::Unset,
                StatusCode::Ok => wit::StatusCode::Ok,
                StatusCode::Error => wit::StatusCode::Error,
            },
            status_message,
            attributes,
            events: wit::Range {
                first: first_event,
                count: count_u32(self.batch.events.len()) - first_event,
            },
        }
    }
}

fn from_wit_attribute(a: wit::Attribute, limits: &SandboxLimits) -> Result<Attribute, OutputError> {
    check_str("attribute key", &a.key, 256)?;
    let value = match a.value {
        wit::AttributeValue::Str(s) => {
            check_str("attribute value", &s, limits.max_string_bytes)?;
            AttrValue::Str(s)
        }
        wit::AttributeValue::Int(i) => AttrValue::Int(i),
        wit::AttributeValue::Double(d) => AttrValue::Double(d),
        wit::AttributeValue::Boolean(b) => AttrValue::Bool(b),
        wit::AttributeValue::StrArray(v) => {
            check_count("attribute array", v.len(), 128)?;
            for s in &v {
                check_str("attribute array value", s, limits.max_string_bytes)?;
            }
            AttrValue::StrArray(v)
        }
    };
    Ok(Attribute { key: a.key, value })
}

fn from_wit_status(s: wit::SpanStatus, limits: &SandboxLimits) -> Result<Status, OutputError> {
    check_str("status message", &s.message, limits.max_string_bytes)?;
    Ok(Status {
        code: match s.code {
            wit::StatusCode::Unset => StatusCode::Unset,
            wit::StatusCode::Ok => StatusCode::Ok,
            wit::StatusCode::Error => StatusCode::Error,
        },
        message: s.message,
    })
}

/// A validated edit to one span.
#[derive(Debug)]
pub struct Patch {
    index: usize,
    name: Option<String>,
    status: Option<Status>,
    set: Vec<Attribute>,
    remove: Vec<String>,
}

/// Validates every patch before any is applied: a batch is enriched entirely or not at all.
pub fn patches(
    raw: Vec<wit::SpanPatch>,
    batch_len: usize,
    limits: &SandboxLimits,
) -> Result<Vec<Patch>, OutputError> {
    check_count("patches", raw.len(), batch_len)?;
    raw.into_iter()
        .map(|p| {
            if p.index as usize >= batch_len {
                return Err(OutputError::BadIndex {
                    index: p.index,
                    len: batch_len,
                });
            }
            if let Some(name) = &p.name {
                check_str("span name", name, 1024)?;
            }
            check_count(
                "attributes set by one patch",
                p.set_attributes.len(),
                limits.max_attributes_per_patch,
            )?;
            check_count(
                "attributes removed by one patch",
                p.remove_attributes.len(),
                limits.max_attributes_per_patch,
            )?;
            Ok(Patch {
                index: p.index as usize,
                name: p.name,
                status: p.status.map(|s| from_wit_status(s, limits)).transpose()?,
                set: p
                    .set_attributes
                    .into_iter()
                    .map(|a| from_wit_attribute(a, limits))
                    .collect::<Result<_, _>>()?,
                remove: p.remove_attributes,
            })
        })
        .collect()
}

pub fn apply(patches: Vec<Patch>, spans: &mut [Span]) {
    for p in patches {
        let Some(span) = spans.get_mut(p.index) else {
            continue;
        };
        if let Some(name) = p.name {
            span.name = name;
        }
        if let Some(status) = p.status {
            span.status = status;
        }
        if !p.remove.is_empty() {
            span.attributes.retain(|a| !p.remove.contains(&a.key));
        }
        for a in p.set {
            span.set_attr(a);
        }
    }
}
