//! The in-process instrumentations a match turns on (names and settings are listed in the crate
//! docs). The tracer activates a library's instrumentation only once that library is imported, so
//! asking for all of them costs nothing in processes that do not use them.

use crate::process::{Instrumentation, ProcessMatch, Role};

/// Library instrumentations that take no settings yet.
const LIBRARIES: &[&str] = &[
    "flask",
    "django",
    "http-client",
    "dbapi",
    "sqlalchemy",
    "redis",
];

/// `server_settings` are the server-specific `wsgi-server` settings.
fn choose(
    server: &'static str,
    role: Role,
    service_name: &str,
    server_settings: Vec<(&'static str, String)>,
) -> Vec<Instrumentation> {
    let mut settings = vec![
        ("server", server.to_string()),
        ("role", role.as_str().to_string()),
        ("service.name", service_name.to_string()),
    ];
    settings.extend(server_settings);
    let mut out = vec![Instrumentation {
        name: "wsgi-server",
        settings,
    }];
    out.extend(LIBRARIES.iter().map(|name| Instrumentation {
        name,
        settings: Vec::new(),
    }));
    out
}

/// A match with its instrumentations; `name` is (service name, where it came from).
pub(crate) fn matched(
    technology: &'static str,
    role: Role,
    (service_name, source): (String, &'static str),
    server_settings: Vec<(&'static str, String)>,
) -> ProcessMatch {
    let instrumentations = choose(technology, role, &service_name, server_settings);
    ProcessMatch {
        technology,
        role,
        service_name,
        service_name_source: source,
        instrumentations,
        inject_children: false,
    }
}

/// Adds `(key, value)` when the value is known.
pub(crate) fn push_some(
    settings: &mut Vec<(&'static str, String)>,
    key: &'static str,
    value: Option<impl ToString>,
) {
    if let Some(v) = value {
        settings.push((key, v.to_string()));
    }
}

/// A positive count from an option value (`"4"`); anything else is unknown.
pub(crate) fn count(value: Option<&str>) -> Option<u32> {
    value
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
}
