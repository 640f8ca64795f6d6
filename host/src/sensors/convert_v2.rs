//! Crossing the boundary for what contract 0.2 adds: the match with its injection policy and
//! bundle choices, instrumentation bundles and declarative rules. Everything 0.2 shares with 0.1
//! (process info, span batches, patches) goes through `convert`.
use super::bindings::wit2;
use super::convert::{
    check_count_pub as check_count, check_match, check_settings, check_str_pub as check_str,
    checked_modules, is_dotted_identifier, role, to_wit_role, OutputError,
};
use super::limits::SandboxLimits;
use super::model::{
    Bundle, BundleScope, ChildPolicy, InjectionPolicy, Instrumentation, Match, PythonModule,
    RedactionRules, RouteTemplate, Rules, SamplingRule,
};

fn child(p: wit2::ChildPolicy) -> ChildPolicy {
    match p {
        wit2::ChildPolicy::Inherit => ChildPolicy::Inherit,
        wit2::ChildPolicy::Inject => ChildPolicy::Inject,
        wit2::ChildPolicy::Ignore => ChildPolicy::Ignore,
    }
}

fn to_wit_child(p: ChildPolicy) -> wit2::ChildPolicy {
    match p {
        ChildPolicy::Inherit => wit2::ChildPolicy::Inherit,
        ChildPolicy::Inject => wit2::ChildPolicy::Inject,
        ChildPolicy::Ignore => wit2::ChildPolicy::Ignore,
    }
}

pub fn process_match(m: wit2::ProcessMatch, limits: &SandboxLimits) -> Result<Match, OutputError> {
    let choices: Vec<_> = m
        .bundles
        .iter()
        .map(|b| (b.name.as_str(), b.settings.as_slice()))
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
            .bundles
            .into_iter()
            .map(|b| Instrumentation {
                name: b.name,
                settings: b.settings,
            })
            .collect(),
        injection: InjectionPolicy {
            inject: m.injection.inject,
            forked_children: child(m.injection.forked_children),
            spawned_children: child(m.injection.spawned_children),
        },
    })
}

pub fn to_wit_match(m: &Match) -> wit2::ProcessMatch {
    wit2::ProcessMatch {
        technology: m.technology.clone(),
        role: to_wit_role(m.role),
        service_name: m.service_name.clone(),
        service_name_source: m.service_name_source.clone(),
        injection: wit2::InjectionPolicy {
            inject: m.injection.inject,
            forked_children: to_wit_child(m.injection.forked_children),
            spawned_children: to_wit_child(m.injection.spawned_children),
        },
        bundles: m
            .instrumentations
            .iter()
            .map(|i| wit2::BundleChoice {
                name: i.name.clone(),
                settings: i.settings.clone(),
            })
            .collect(),
    }
}

/// A bundle name: short, lower-case letters, digits, `-` and `_` (it becomes part of a module
/// name in the process).
fn bundle_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

pub fn bundles(raw: Vec<wit2::Bundle>, limits: &SandboxLimits) -> Result<Vec<Bundle>, OutputError> {
    check_count("bundles", raw.len(), limits.max_bundles)?;
    let total: usize = raw
        .iter()
        .flat_map(|b| &b.modules)
        .map(|m| m.name.len() + m.source.len())
        .sum();
    if total > limits.max_modules_bytes {
        return Err(OutputError::TooLong {
            what: "bundles' source",
            len: total,
            max: limits.max_modules_bytes,
        });
    }
    let mut out: Vec<Bundle> = Vec::with_capacity(raw.len());
    for b in raw {
        if !bundle_name_ok(&b.name) {
            return Err(OutputError::ControlChars(
                "bundle name (allowed: a-z 0-9 - _, at most 64)",
            ));
        }
        if out.iter().any(|o| o.name == b.name) {
            return Err(OutputError::Invalid(
                "bundle names: two bundles have the same name",
            ));
        }
        check_str("bundle version", &b.version, 64)?;
        if b.version.is_empty() {
            return Err(OutputError::Empty("bundle version"));
        }
        check_count("bundle triggers", b.triggers.len(), limits.max_rules)?;
        if !b.triggers.iter().all(|t| is_dotted_identifier(t)) {
            return Err(OutputError::ControlChars(
                "bundle trigger (dotted module names only)",
            ));
        }
        let (module, function) = b.entry.split_once(':').unwrap_or((&b.entry, ""));
        if !is_dotted_identifier(module) || !is_dotted_identifier(function) {
            return Err(OutputError::ControlChars(
                "bundle entry (\"module:function\")",
            ));
        }
        if !b.modules.iter().any(|m| m.name == module) {
            return Err(OutputError::Invalid(
                "bundle entry: names no module of the bundle",
            ));
        }
        check_str("bundle tracer-api", &b.tracer_api, 64)?;
        check_settings(&b.settings, limits)?;
        let modules = checked_modules(
            b.modules
                .into_iter()
                .map(|m| PythonModule {
                    name: m.name,
                    source: m.source,
                })
                .collect(),
            limits,
        )?;
        out.push(Bundle {
            sensor: String::new(),
            name: b.name,
            version: b.version,
            scope: match b.scope {
                wit2::BundleScope::Matched => BundleScope::Matched,
                wit2::BundleScope::EveryProcess => BundleScope::EveryProcess,
            },
            triggers: b.triggers,
            modules,
            entry: b.entry,
            tracer_api: b.tracer_api,
            settings: b.settings,
        });
    }
    Ok(out)
}

fn keys(what: &'static str, v: &[String], limits: &SandboxLimits) -> Result<(), OutputError> {
    check_count(what, v.len(), limits.max_rules)?;
    for k in v {
        check_str(what, k, 256)?;
        if k.is_empty() || k.chars().any(char::is_control) {
            return Err(OutputError::ControlChars(what));
        }
    }
    Ok(())
}

pub fn rules(r: wit2::Rules, limits: &SandboxLimits) -> Result<Rules, OutputError> {
    let red = r.redaction;
    keys("secret attributes", &red.secret_attributes, limits)?;
    keys("url attributes", &red.url_attributes, limits)?;
    keys("sql attributes", &red.sql_attributes, limits)?;
    keys("sensitive words", &red.sensitive_words, limits)?;
    check_count("route templates", r.routes.len(), limits.max_rules)?;
    for t in &r.routes {
        check_str("route pattern", &t.pattern, 1024)?;
        check_str("route template", &t.template, 1024)?;
        if !t.pattern.starts_with('/') || !t.template.starts_with('/') {
            return Err(OutputError::Invalid(
                "route template: pattern and template must start with /",
            ));
        }
    }
    check_count("sampling rules", r.sampling.len(), limits.max_rules)?;
    for s in &r.sampling {
        check_str(
            "sampling service",
            &s.service,
            limits.max_service_name_bytes,
        )?;
        if !(0.0..=1.0).contains(&s.rate) {
            return Err(OutputError::Invalid("sampling rate: not within 0.0..=1.0"));
        }
    }
    Ok(Rules {
        redaction: RedactionRules {
            secret_attributes: red.secret_attributes,
            url_attributes: red.url_attributes,
            sql_attributes: red.sql_attributes,
            sensitive_words: red
                .sensitive_words
                .into_iter()
                .map(|w| w.to_ascii_lowercase())
                .collect(),
        },
        routes: r
            .routes
            .into_iter()
            .map(|t| RouteTemplate {
                pattern: t.pattern,
                template: t.template,
            })
            .collect(),
        sampling: r
            .sampling
            .into_iter()
            .map(|s| SamplingRule {
                service: s.service,
                rate: s.rate,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(name: &str, entry: &str) -> wit2::Bundle {
        wit2::Bundle {
            name: name.into(),
            version: "1".into(),
            scope: wit2::BundleScope::Matched,
            triggers: vec!["flask.ctx".into()],
            modules: vec![wit2::PythonModule {
                name: "main".into(),
                source: "def go(api, settings):\n    return []\n".into(),
            }],
            entry: entry.into(),
            tracer_api: ">=1.0,<2".into(),
            settings: vec![],
        }
    }

    #[test]
    fn a_valid_bundle_crosses_unchanged() {
        let b = bundles(vec![bundle("web", "main:go")], &SandboxLimits::default()).unwrap();
        assert_eq!(b[0].name, "web");
        assert_eq!(b[0].entry, "main:go");
        assert_eq!(b[0].triggers, ["flask.ctx"]);
    }

    #[test]
    fn bad_bundles_are_refused_with_a_reason() {
        let limits = SandboxLimits::default();
        for (b, why) in [
            (vec![bundle("Web", "main:go")], "bundle name"),
            (vec![bundle("web", "other:go")], "names no module"),
            (vec![bundle("web", "main")], "bundle entry"),
            (
                vec![bundle("web", "main:go"), bundle("web", "main:go")],
                "same name",
            ),
            (
                {
                    let mut b = bundle("web", "main:go");
                    b.triggers = vec!["../etc".into()];
                    vec![b]
                },
                "trigger",
            ),
            (
                {
                    let mut b = bundle("web", "main:go");
                    b.modules[0].source = "x".repeat(limits.max_modules_bytes + 1);
                    vec![b]
                },
                "over the limit",
            ),
        ] {
            let err = bundles(b, &limits).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn rules_are_bounded_and_checked() {
        let limits = SandboxLimits::default();
        let rules_with = |rate: f64, pattern: &str| wit2::Rules {
            redaction: wit2::RedactionRules {
                secret_attributes: vec!["app.card".into()],
                url_attributes: vec![],
                sql_attributes: vec![],
                sensitive_words: vec!["PIN".into()],
            },
            routes: vec![wit2::RouteTemplate {
                pattern: pattern.into(),
                template: "/a/{id}".into(),
            }],
            sampling: vec![wit2::SamplingRule {
                service: "*".into(),
                rate,
            }],
        };
        let ok = rules(rules_with(0.5, "/a/*"), &limits).unwrap();
        assert_eq!(ok.redaction.sensitive_words, ["pin"]);
        assert!(rules(rules_with(1.5, "/a/*"), &limits).is_err());
        assert!(rules(rules_with(f64::NAN, "/a/*"), &limits).is_err());
        assert!(rules(rules_with(0.5, "a/*"), &limits).is_err());
    }
}
