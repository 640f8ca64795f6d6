//! Crossing the sandbox boundary: host types into the contract's types, and the sensor's answers
//! back into host types, validated against the limits. Nothing a sensor returns is trusted.
use std::collections::HashSet;

use super::bindings::wit;
use super::limits::SandboxLimits;
use super::model::{Instrumentation, Match, PythonModule, Role, SensorInfo};
use crate::discover::{LibPython, ProcessInfo};
use crate::span::{AttrValue, Attribute, Event, Span, SpanKind, Status, StatusCode};

/// A sensor's answer broke the contract or the limits.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OutputError {
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what}: {count} entries, over the limit of {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("patch for span index {index} but the batch has {len} spans")]
    BadIndex { index: u32, len: usize },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} contains control characters")]
    ControlChars(&'static str),
}

fn check_str(what: &'static str, s: &str, max: usize) -> Result<(), OutputError> {
    if s.len() > max {
        return Err(OutputError::TooLong { what, len: s.len(), max });
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
    for (what, s) in [("sensor name", &i.name), ("sensor version", &i.version), ("contract version", &i.contract_version)] {
        check_str(what, s, 128)?;
    }
    if i.name.is_empty() {
        return Err(OutputError::Empty("sensor name"));
    }
    if !i.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(OutputError::ControlChars("sensor name (allowed: ASCII letters, digits, - _ .)"));
    }
    check_count("technologies", i.technologies.len(), 32)?;
    check_count("attribute keys", i.attribute_keys.len(), 256)?;
    for s in i.technologies.iter().chain(&i.attribute_keys) {
        check_str("technology or attribute key", s, limits.max_string_bytes.min(256))?;
    }
    Ok(SensorInfo {
        name: i.name,
        version: i.version,
        technologies: i.technologies,
        contract_version: i.contract_version,
        attribute_keys: i.attribute_keys,
    })
}

pub fn process_match(m: wit::ProcessMatch, limits: &SandboxLimits) -> Result<Match, OutputError> {
    check_str("technology", &m.technology, 64)?;
    check_str("service name", &m.service_name, limits.max_service_name_bytes)?;
    check_str("service name source", &m.service_name_source, 64)?;
    if m.service_name.trim().is_empty() {
        return Err(OutputError::Empty("service name"));
    }
    if m.service_name.chars().any(char::is_control) {
        return Err(OutputError::ControlChars("service name"));
    }
    check_count("instrumentations", m.instrumentations.len(), limits.max_instrumentations)?;
    for i in &m.instrumentations {
        check_str("instrumentation name", &i.name, 64)?;
        check_count("instrumentation settings", i.settings.len(), limits.max_instrumentations)?;
        for (k, v) in &i.settings {
            check_str("setting key", k, 128)?;
            check_str("setting value", v, 4096)?;
        }
    }
    Ok(Match {
        technology: m.technology,
        role: match m.role {
            wit::ProcessRole::Master => Role::Master,
            wit::ProcessRole::Worker => Role::Worker,
            wit::ProcessRole::Standalone => Role::Standalone,
        },
        service_name: m.service_name,
        service_name_source: m.service_name_source,
        instrumentations: m
            .instrumentations
            .into_iter()
            .map(|i| Instrumentation { name: i.name, settings: i.settings })
            .collect(),
    })
}

pub fn to_wit_match(m: &Match) -> wit::ProcessMatch {
    wit::ProcessMatch {
        technology: m.technology.clone(),
        role: match m.role {
            Role::Master => wit::ProcessRole::Master,
            Role::Worker => wit::ProcessRole::Worker,
            Role::Standalone => wit::ProcessRole::Standalone,
        },
        service_name: m.service_name.clone(),
        service_name_source: m.service_name_source.clone(),
        instrumentations: m
            .instrumentations
            .iter()
            .map(|i| wit::InstrumentationChoice { name: i.name.clone(), settings: i.settings.clone() })
            .collect(),
    }
}

pub fn python_modules(mods: Vec<wit::PythonModule>, limits: &SandboxLimits) -> Result<Vec<PythonModule>, OutputError> {
    check_count("python modules", mods.len(), limits.max_modules)?;
    let total: usize = mods.iter().map(|m| m.source.len() + m.name.len()).sum();
    if total > limits.max_modules_bytes {
        return Err(OutputError::TooLong { what: "python modules' source", len: total, max: limits.max_modules_bytes });
    }
    for m in &mods {
        if m.name.is_empty() || !m.name.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            return Err(OutputError::ControlChars("python module name (dotted identifiers only)"));
        }
    }
    Ok(mods.into_iter().map(|m| PythonModule { name: m.name, source: m.source }).collect())
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

    fn attributes(&self, attrs: &[Attribute]) -> Vec<wit::Attribute> {
        attrs.iter().filter(|a| self.wants(&a.key)).map(to_wit_attribute).collect()
    }
}

fn to_wit_attribute(a: &Attribute) -> wit::Attribute {
    wit::Attribute {
        key: a.key.clone(),
        value: match &a.value {
            AttrValue::Str(s) => wit::AttributeValue::Str(s.clone()),
            AttrValue::Int(i) => wit::AttributeValue::Int(*i),
            AttrValue::Double(d) => wit::AttributeValue::Double(*d),
            AttrValue::Bool(b) => wit::AttributeValue::Boolean(*b),
            AttrValue::StrArray(v) => wit::AttributeValue::StrArray(v.clone()),
        },
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

fn to_wit_status(s: &Status) -> wit::SpanStatus {
    wit::SpanStatus {
        code: match s.code {
            StatusCode::Unset => wit::StatusCode::Unset,
            StatusCode::Ok => wit::StatusCode::Ok,
            StatusCode::Error => wit::StatusCode::Error,
        },
        message: s.message.clone(),
    }
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

fn to_wit_event(e: &Event, filter: &KeyFilter) -> wit::SpanEvent {
    wit::SpanEvent { name: e.name.clone(), time_unix_nano: e.time_unix_nano, attributes: filter.attributes(&e.attributes) }
}

pub fn to_wit_span(s: &Span, filter: &KeyFilter) -> wit::Span {
    wit::Span {
        trace_id: ((s.trace_id >> 64) as u64, s.trace_id as u64),
        span_id: s.span_id,
        parent_span_id: s.parent_span_id,
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Internal => wit::SpanKind::Internal,
            SpanKind::Server => wit::SpanKind::Server,
            SpanKind::Client => wit::SpanKind::Client,
            SpanKind::Producer => wit::SpanKind::Producer,
            SpanKind::Consumer => wit::SpanKind::Consumer,
        },
        start_unix_nano: s.start_unix_nano,
        end_unix_nano: s.end_unix_nano,
        status: to_wit_status(&s.status),
        attributes: filter.attributes(&s.attributes),
        events: s.events.iter().map(|e| to_wit_event(e, filter)).collect(),
    }
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
pub fn patches(raw: Vec<wit::SpanPatch>, batch_len: usize, limits: &SandboxLimits) -> Result<Vec<Patch>, OutputError> {
    check_count("patches", raw.len(), batch_len)?;
    raw.into_iter()
        .map(|p| {
            if p.index as usize >= batch_len {
                return Err(OutputError::BadIndex { index: p.index, len: batch_len });
            }
            if let Some(name) = &p.name {
                check_str("span name", name, 1024)?;
            }
            check_count("attributes set by one patch", p.set_attributes.len(), limits.max_attributes_per_patch)?;
            check_count("attributes removed by one patch", p.remove_attributes.len(), limits.max_attributes_per_patch)?;
            Ok(Patch {
                index: p.index as usize,
                name: p.name,
                status: p.status.map(|s| from_wit_status(s, limits)).transpose()?,
                set: p.set_attributes.into_iter().map(|a| from_wit_attribute(a, limits)).collect::<Result<_, _>>()?,
                remove: p.remove_attributes,
            })
        })
        .collect()
}

pub fn apply(patches: Vec<Patch>, spans: &mut [Span]) {
    for p in patches {
        let Some(span) = spans.get_mut(p.index) else { continue };
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
