//! How a server was launched: its own executable, a console script run by a Python interpreter
//! (`/venv/bin/python3.11 /venv/bin/gunicorn ...`, which is what a shebang produces), or
//! `python -m module`.

use crate::process::trimmed;

/// The program a command line runs, and the arguments it gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Launch<'a> {
    /// Script or executable base name (`gunicorn`, `run.py`), or the module of `python -m`.
    pub program: &'a str,
    pub args: &'a [String],
    /// Run by a Python interpreter (script or `-m`), not as its own executable.
    pub by_interpreter: bool,
}

pub(crate) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `python`, `python3`, `python3.11`, `python3.13t`, `python3.8d`, `pypy3`…
pub(crate) fn is_python(path: &str) -> bool {
    let b = basename(path);
    let Some(rest) = b.strip_prefix("python").or_else(|| b.strip_prefix("pypy")) else {
        return false;
    };
    let version_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    // Debian ships `python3.14-pie` beside the non-PIE `python3.14`.
    let flags = rest[version_end..]
        .strip_suffix("-pie")
        .unwrap_or(&rest[version_end..]);
    flags.chars().all(|c| matches!(c, 'd' | 'm' | 'u' | 't'))
}

/// Finds the program and its arguments; `None` for `python -c …`, `python -` or a bare interpreter.
pub(crate) fn launch(cmdline: &[String]) -> Option<Launch<'_>> {
    let argv = trimmed(cmdline);
    let first = argv.first()?;
    if !is_python(first) {
        return Some(Launch {
            program: basename(first),
            args: &argv[1..],
            by_interpreter: false,
        });
    }
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        let Some(cluster) = arg.strip_prefix('-') else {
            return Some(Launch {
                program: basename(arg),
                args: &argv[i + 1..],
                by_interpreter: true,
            });
        };
        if cluster.is_empty() {
            return None;
        }
        if cluster.starts_with('-') {
            // The only long interpreter option that takes a value.
            i += if cluster == "-check-hash-based-pycs" {
                2
            } else {
                1
            };
            continue;
        }
        for (pos, c) in cluster.char_indices() {
            let rest = &cluster[pos + c.len_utf8()..];
            match c {
                'c' => return None,
                'm' if rest.is_empty() => {
                    let module = argv.get(i + 1)?;
                    return Some(Launch {
                        program: module,
                        args: &argv[i + 2..],
                        by_interpreter: true,
                    });
                }
                'm' => {
                    return Some(Launch {
                        program: rest,
                        args: &argv[i + 1..],
                        by_interpreter: true,
                    })
                }
                'W' | 'X' => {
                    if rest.is_empty() {
                        i += 1;
                    }
                    break;
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::process::test_support::strings as v;

    fn program(s: &[&str]) -> Option<(String, usize)> {
        let argv = v(s);
        launch(&argv).map(|l| (l.program.to_string(), l.args.len()))
    }

    #[test]
    fn interpreters() {
        for p in [
            "python",
            "python3",
            "/usr/bin/python3.11",
            "/venv/bin/python3.13",
            "python3.13t",
            "pypy3",
        ] {
            assert!(is_python(p), "{p}");
        }
        for p in [
            "pythonista",
            "/usr/bin/gunicorn",
            "ipython",
            "python3.11-config",
        ] {
            assert!(!is_python(p), "{p}");
        }
    }

    #[test]
    fn launches() {
        assert_eq!(
            program(&["/v/bin/python", "/v/bin/gunicorn", "a:b"]),
            Some(("gunicorn".into(), 1))
        );
        assert_eq!(
            program(&["python3.8", "-m", "gunicorn", "a:b"]),
            Some(("gunicorn".into(), 1))
        );
        assert_eq!(
            program(&["python3", "-u", "-X", "dev", "-mgunicorn", "a:b"]),
            Some(("gunicorn".into(), 1))
        );
        assert_eq!(
            program(&["python3", "-Bum", "gunicorn"]),
            Some(("gunicorn".into(), 0))
        );
        assert_eq!(
            program(&["python3", "-W", "ignore", "run.py"]),
            Some(("run.py".into(), 0))
        );
        assert_eq!(
            program(&["/usr/local/bin/uwsgi", "--ini", "x"]),
            Some(("uwsgi".into(), 2))
        );
        assert_eq!(program(&["python3", "-c", "import gunicorn"]), None);
        assert_eq!(program(&["python3"]), None);
        assert_eq!(program(&[]), None);
    }
}
