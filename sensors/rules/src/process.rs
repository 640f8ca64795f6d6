//! What a sensor sees of a process, and what it answers.

/// A borrowed view of the facts the host discovered about one process (the WIT `process-info`).
#[derive(Debug, Clone, Copy)]
pub struct ProcessView<'a> {
    /// Target of `/proc/PID/exe`.
    pub exe: &'a str,
    /// argv as the process shows it now (process titles included).
    pub cmdline: &'a [String],
    /// Working directory.
    pub cwd: &'a str,
    /// The parent's argv as it shows it now.
    pub parent_cmdline: &'a [String],
}

/// The role of a matched process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Supervises workers and serves no request itself.
    Master,
    /// Forked by a master (or by a standalone uWSGI process) to serve requests.
    Worker,
    /// Serves requests by itself.
    Standalone,
}

impl Role {
    /// The lower-case name used in settings and fixtures.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
            Role::Standalone => "standalone",
        }
    }
}

/// One in-process instrumentation to turn on, with its settings (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrumentation {
    /// `wsgi-server`, `flask`, `django`, `http-client`, `dbapi`, `sqlalchemy`, `redis`.
    pub name: &'static str,
    /// (key, value) settings for the in-process tracer.
    pub settings: Vec<(&'static str, String)>,
}

/// A process a sensor knows (the WIT `process-match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMatch {
    /// `"gunicorn"` or `"uwsgi"`.
    pub technology: &'static str,
    /// Master, worker or standalone.
    pub role: Role,
    /// The service name to report.
    pub service_name: String,
    /// Where the name came from (crate docs list the values).
    pub service_name_source: &'static str,
    /// In-process instrumentations to turn on.
    pub instrumentations: Vec<Instrumentation>,
    /// Its children that look like workers are injected rather than left to inherit the tracer
    /// by fork (servers whose workers are spawned: a fresh interpreter inherits nothing).
    pub inject_children: bool,
}

/// argv without the empty strings that process titles leave behind (setproctitle pads the old
/// argv area with NULs, which split into empty arguments).
pub(crate) fn trimmed(cmdline: &[String]) -> &[String] {
    let end = cmdline
        .iter()
        .rposition(|a| !a.is_empty())
        .map_or(0, |i| i + 1);
    &cmdline[..end]
}

/// A process title is a single argument, possibly with spaces; returns it trimmed when argv looks
/// like one (one non-empty argument that is not a path to an executable).
pub(crate) fn title(cmdline: &[String]) -> Option<&str> {
    match trimmed(cmdline) {
        [one] => Some(one.trim()),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{ProcessMatch, ProcessView};

    pub type Matcher = fn(&ProcessView<'_>) -> Option<ProcessMatch>;

    pub fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    pub fn run(
        m: Matcher,
        exe: &str,
        cmd: &[&str],
        parent: &[&str],
        cwd: &str,
    ) -> Option<ProcessMatch> {
        let (cmdline, parent_cmdline) = (strings(cmd), strings(parent));
        m(&ProcessView {
            exe,
            cmdline: &cmdline,
            cwd,
            parent_cmdline: &parent_cmdline,
        })
    }

    /// Cases are (argv, cwd, service name, source); the parent is a shell.
    pub fn check_names(m: Matcher, exe: &str, cases: &[(&[&str], &str, &str, &str)]) {
        for (cmd, cwd, name, source) in cases {
            let got =
                run(m, exe, cmd, &["bash"], cwd).map(|m| (m.service_name, m.service_name_source));
            assert_eq!(got, Some((name.to_string(), *source)), "{cmd:?} in {cwd}");
        }
    }

    /// Cases are (setting key, value) of the `wsgi-server` instrumentation.
    pub fn check_settings(m: &ProcessMatch, cases: &[(&str, &str)]) {
        let settings = &m.instrumentations[0].settings;
        for (key, want) in cases {
            let got = settings
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            assert_eq!(got, Some(*want), "{key}");
        }
    }
}
