//! The in-process tracer's generic core, embedded at build time from host/python/, and the bootstrap
//! the injector runs in a target to fetch it. The instrumentations are not here: they come from
//! sensors as bundles (`config.bundles` of the load message, see [`super::BundleSource`]).
use serde_json::Value;

/// The tracer's version, as `_zerostep.VERSION` says; a bootstrap that finds a different one
/// installed upgrades it in place.
pub const TRACER_VERSION: &str = "0.2.0";

/// (module name, source), the package first and then in dependency order: the bootstrap executes
/// them in this order. The Python unit tests (host/python/tests) keep the same list.
pub const MODULES: &[(&str, &str)] = &[
    (
        "_zerostep",
        include_str!("../../python/zerostep/__init__.py"),
    ),
    (
        "_zerostep.trace",
        include_str!("../../python/zerostep/trace.py"),
    ),
    (
        "_zerostep.patch",
        include_str!("../../python/zerostep/patch.py"),
    ),
    (
        "_zerostep.report",
        include_str!("../../python/zerostep/report.py"),
    ),
    (
        "_zerostep.wsgi",
        include_str!("../../python/zerostep/wsgi.py"),
    ),
    (
        "_zerostep.bundles",
        include_str!("../../python/zerostep/bundles.py"),
    ),
];

const BOOTSTRAP: &str = include_str!("../../python/bootstrap.py");

/// Every released tracer version and the sha256 of its code ([`code_digest`]): a process whose
/// tracer reports another version is upgraded in place at hello, so changed code must come with a
/// new version. The test below fails when the code changed and its version did not: bump
/// `TRACER_VERSION` (and `VERSION` in host/python/zerostep/__init__.py) and add a line.
#[cfg(test)]
const RELEASED: &[(&str, &str)] = &[
    (
        "0.1.0",
        "580d872135d44b3614771d11b96933ead5b7c06d3b92f5389b0139eb0ae9b0a6",
    ),
    (
        "0.2.0",
        "ff00a7e9ee8885d68a34be3373f5d3971ea91f262712e7465385894e9bcad4d4",
    ),
];

/// sha256 over each module's name and source (NUL-separated, in order), then the bootstrap.
#[cfg(test)]
fn code_digest() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, src) in MODULES {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(src.as_bytes());
        h.update([0]);
    }
    h.update(b"bootstrap\0");
    h.update(BOOTSTRAP.as_bytes());
    hex::encode(h.finalize())
}

/// The code to hand to `PyRun_SimpleString` in the target. `address` is the intake's address as
/// [`super::IntakeAddress::bootstrap_param`] renders it (a path, or `@name` for an abstract socket).
///
/// The bootstrap runs inside `exec` with its own globals and under `try/except BaseException`, so
/// it defines no name in `__main__` and never makes `PyRun_SimpleString` return -1 (which, from a
/// pending call, would turn the running request into a 500).
pub fn bootstrap_code(address: &str, connect_timeout_secs: f64) -> String {
    format!(
        "try:\n    {}\nexcept BaseException:\n    pass\n",
        bootstrap_statement(address, connect_timeout_secs, "", &Value::Null)
    )
}

/// The same bootstrap for the injector, whose own wrapper already contains every exception and
/// reports it back (`InjectReport::raised`): without the local `except`, a bootstrap that could
/// not reach the intake says why instead of failing silently. `auth` is what the tracer checks
/// the agent with (`super::auth`): `{"secret", "root": [pid, start], "uid"}`.
pub fn bootstrap_for_injector(
    address: &str,
    connect_timeout_secs: f64,
    run_id: &str,
    auth: &Value,
) -> String {
    format!(
        "{}\n",
        bootstrap_statement(address, connect_timeout_secs, run_id, auth)
    )
}

fn bootstrap_statement(
    address: &str,
    connect_timeout_secs: f64,
    run_id: &str,
    auth: &Value,
) -> String {
    let params = serde_json::json!({"address": address, "timeout": connect_timeout_secs,
        "run": run_id, "auth": auth})
    .to_string();
    // A JSON string literal is also a valid Python string literal.
    let src = Value::String(BOOTSTRAP.to_string()).to_string();
    let params = Value::String(params).to_string();
    format!(
        "exec(compile({src}, '<zerostep-bootstrap>', 'exec'), \
         {{'PARAMS': __import__('json').loads({params})}})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_code_changes_come_with_a_new_version() {
        let digest = code_digest();
        let released = RELEASED.iter().find(|(v, _)| *v == TRACER_VERSION);
        match released {
            Some((_, d)) => assert_eq!(
                *d, digest,
                "the tracer's code changed but TRACER_VERSION is still {TRACER_VERSION}: bump it \
                 (and VERSION in host/python/zerostep/__init__.py) and add (version, \"{digest}\") \
                 to RELEASED"
            ),
            None => panic!(
                "tracer version {TRACER_VERSION} is not in RELEASED: add \
                 (\"{TRACER_VERSION}\", \"{digest}\")"
            ),
        }
        let mut versions: Vec<_> = RELEASED.iter().map(|r| r.0).collect();
        versions.dedup();
        assert_eq!(versions.len(), RELEASED.len(), "a version released twice");
        assert!(
            RELEASED.iter().filter(|r| r.1 == digest).count() == 1,
            "the same code under two versions"
        );
    }

    #[test]
    fn bootstrap_is_small_and_versions_agree() {
        let code = bootstrap_code("@zerostep-test", 2.0);
        // Two pages of scratch at most (the auth checks made it outgrow one).
        assert!(code.len() < 8192, "bootstrap is {} bytes", code.len());
        assert!(MODULES[0]
            .1
            .contains(&format!("VERSION = \"{TRACER_VERSION}\"")));
    }
}
