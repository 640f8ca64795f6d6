//! Command-line option scanning shared by the gunicorn and uWSGI rules: `--opt value`,
//! `--opt=value`, `-o value` and `-ovalue`.

/// How one option is spelled: its long names (with the leading `--`) and short letter.
pub(crate) struct Opt {
    pub long: &'static [&'static str],
    pub short: Option<char>,
}

impl Opt {
    pub const fn long(long: &'static [&'static str]) -> Self {
        Opt { long, short: None }
    }
    pub const fn both(long: &'static [&'static str], short: char) -> Self {
        Opt {
            long,
            short: Some(short),
        }
    }
}

/// uWSGI also accepts `--wsgi_file`; gunicorn never has underscores, so normalising is safe.
fn long_name_matches(arg_name: &str, wanted: &str) -> bool {
    arg_name.len() == wanted.len()
        && arg_name
            .bytes()
            .zip(wanted.bytes())
            .all(|(a, w)| a == w || (a == b'_' && w == b'-'))
}

/// Where one option occurs in `args`: its value (inline or the next argument) if it has one.
enum Hit<'a> {
    Inline(&'a str),
    Next,
}

fn hit<'a>(arg: &'a str, opt: &Opt) -> Option<Hit<'a>> {
    if let Some(rest) = arg.strip_prefix("--") {
        let (name, inline) = match rest.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        let matches = opt.long.iter().any(|l| long_name_matches(name, &l[2..]));
        return matches.then_some(match inline {
            Some(v) => Hit::Inline(v),
            None => Hit::Next,
        });
    }
    let short = opt.short?;
    let mut chars = arg.strip_prefix('-')?.chars();
    if chars.next()? != short {
        return None;
    }
    let rest = chars.as_str();
    Some(if rest.is_empty() {
        Hit::Next
    } else {
        Hit::Inline(rest)
    })
}

/// The value of the last occurrence of a value-taking option (later options override earlier
/// ones in both servers).
pub(crate) fn value<'a>(args: &'a [String], opt: &Opt) -> Option<&'a str> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" {
            break;
        }
        match hit(arg, opt) {
            Some(Hit::Inline(v)) => found = Some(v),
            Some(Hit::Next) => {
                if let Some(v) = args.get(i + 1) {
                    found = Some(v.as_str());
                    i += 1;
                }
            }
            None => {}
        }
        i += 1;
    }
    found
}

/// Whether a flag is on: present, and not given an explicit false value (`--master=false`).
pub(crate) fn flag(args: &[String], opt: &Opt) -> bool {
    let mut on = false;
    for arg in args {
        if arg == "--" {
            break;
        }
        match hit(arg, opt) {
            Some(Hit::Inline(v)) if arg.starts_with("--") => on = !is_false(v),
            Some(Hit::Next) => on = true,
            // `-Mx` is not `-M`; short flags with glued letters are not ours to guess.
            _ => {}
        }
    }
    on
}

fn is_false(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "false" | "0" | "no" | "off"
    )
}

/// Positional arguments, skipping the values of options that take one. `is_flag` says which
/// options take none (only the long or short spelling, without `=value`).
pub(crate) fn positionals(args: &[String], is_flag: impl Fn(&str) -> bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" {
            out.extend(args[i + 1..].iter().map(String::as_str));
            break;
        }
        if arg.starts_with("--") {
            if !arg.contains('=') && !is_flag(arg) {
                i += 1;
            }
        } else if arg.len() == 2 && arg.starts_with('-') {
            if !is_flag(arg) {
                i += 1;
            }
        } else if !arg.starts_with('-') || arg == "-" {
            out.push(arg);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::process::test_support::strings as v;

    const NAME: Opt = Opt::both(&["--name"], 'n');

    #[test]
    fn all_spellings_of_a_value() {
        for args in [
            v(&["--name", "X"]),
            v(&["--name=X"]),
            v(&["-nX"]),
            v(&["-n", "X"]),
            v(&["--name", "Y", "-n", "X"]),
        ] {
            assert_eq!(value(&args, &NAME), Some("X"), "{args:?}");
        }
        assert_eq!(value(&v(&["--names", "X"]), &NAME), None);
        assert_eq!(value(&v(&["--name"]), &NAME), None);
        assert_eq!(value(&v(&["--", "--name", "X"]), &NAME), None);
    }

    #[test]
    fn underscores_in_long_names() {
        let opt = Opt::long(&["--wsgi-file"]);
        assert_eq!(value(&v(&["--wsgi_file", "a.py"]), &opt), Some("a.py"));
    }

    #[test]
    fn flags() {
        let m = Opt::both(&["--master"], 'M');
        assert!(flag(&v(&["--master"]), &m));
        assert!(flag(&v(&["-M"]), &m));
        assert!(!flag(&v(&["--master=false"]), &m));
        assert!(!flag(&v(&["--masterx"]), &m));
    }

    #[test]
    fn positionals_skip_option_values() {
        let args = v(&[
            "-b",
            "127.0.0.1:8000",
            "--preload",
            "app:app",
            "--workers=2",
            "-k",
            "gthread",
        ]);
        assert_eq!(positionals(&args, |a| a == "--preload"), vec!["app:app"]);
    }
}
