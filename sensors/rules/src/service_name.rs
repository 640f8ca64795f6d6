//! Service names from what a command line shows: module paths, file paths, directories, titles.
//! What an SRE wants to see is the project's name, so generic parts (`app`, `wsgi.py`, `src/`,
//! `/srv`, release directories) are skipped.

use crate::launcher::basename;

/// Names that say nothing about which service this is.
const GENERIC: &[&str] = &[
    "",
    "__init__",
    "__main__",
    "api",
    "app",
    "application",
    "apps",
    "apps-available",
    "apps-enabled",
    "asgi",
    "bin",
    "code",
    "conf",
    "config",
    "current",
    "data",
    "default",
    "deploy",
    "env",
    "etc",
    "home",
    "html",
    "index",
    "init",
    "lib",
    "local",
    "main",
    "manage",
    "opt",
    "prod",
    "production",
    "project",
    "pyuwsgi",
    "python",
    "release",
    "releases",
    "root",
    "run",
    "serve",
    "server",
    "service",
    "services",
    "settings",
    "site",
    "sites-enabled",
    "source",
    "src",
    "srv",
    "staging",
    "start",
    "tmp",
    "gunicorn",
    "usr",
    "uwsgi",
    "var",
    "vassals",
    "venv",
    ".venv",
    "web",
    "webapp",
    "website",
    "work",
    "workspace",
    "wsgi",
    "www",
];

/// How far up a path to look for a non-generic directory.
const MAX_DIR_LEVELS: usize = 4;

pub(crate) fn is_generic(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    GENERIC.contains(&lower.as_str())
        || name
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// Picks the first non-generic candidate, else the first candidate at all, else the fallback.
pub(crate) fn pick(
    candidates: impl IntoIterator<Item = (Option<String>, &'static str)>,
    fallback: (&'static str, &'static str),
) -> (String, &'static str) {
    let mut first_generic = None;
    for (name, source) in candidates {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        if !is_generic(&name) {
            return (name, source);
        }
        first_generic.get_or_insert((name, source));
    }
    first_generic.unwrap_or_else(|| (fallback.0.to_string(), fallback.1))
}

/// `myproj.wsgi:application` → `myproj`; `src.billing.main:app` → `billing`; `app:app` → `app`.
pub(crate) fn from_module(spec: &str) -> Option<String> {
    let module = spec.split(':').next().unwrap_or(spec).trim();
    let mut parts = module.split('.').filter(|p| !p.is_empty());
    let first = parts.clone().next()?;
    Some(parts.find(|p| !is_generic(p)).unwrap_or(first).to_string())
}

/// `/etc/gunicorn/payments.conf.py` → `payments`; `/srv/shop/shop/wsgi.py` → `shop`;
/// `/etc/uwsgi/orders.ini:prod` → `orders`.
pub(crate) fn from_file(path: &str) -> Option<String> {
    let path = strip_section(path);
    let stem = file_stem(basename(path));
    if !is_generic(stem) {
        return Some(stem.to_string());
    }
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    from_dir(dir).or_else(|| Some(stem.to_string()))
}

/// The nearest non-generic directory name: `/srv/shop/current` → `shop`; `/` → `None`.
pub(crate) fn from_dir(path: &str) -> Option<String> {
    let parts = path.rsplit('/').filter(|p| !p.is_empty() && *p != ".");
    let last = parts.clone().next()?;
    Some(
        parts
            .take(MAX_DIR_LEVELS)
            .find(|p| !is_generic(p))
            .unwrap_or(last)
            .to_string(),
    )
}

/// A name written into a process title: trims separators such as the `-` of a `checkout-` prefix.
pub(crate) fn from_title(text: &str) -> Option<String> {
    let name = text.trim_matches(|c: char| {
        c.is_whitespace() || matches!(c, '-' | '_' | ':' | '.' | '[' | ']')
    });
    (!name.is_empty()).then(|| name.to_string())
}

/// uWSGI allows `file.ini:section`; a colon in a directory name stays.
fn strip_section(path: &str) -> &str {
    match path.rsplit_once(':') {
        Some((file, section)) if !section.contains('/') && file.contains('.') => file,
        _ => path,
    }
}

fn file_stem(name: &str) -> &str {
    const EXTENSIONS: &[&str] = &[
        ".py", ".conf", ".ini", ".yaml", ".yml", ".json", ".js", ".xml", ".cfg", ".toml",
    ];
    let mut stem = name;
    while let Some(s) = EXTENSIONS.iter().find_map(|e| stem.strip_suffix(e)) {
        stem = s;
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules() {
        assert_eq!(
            from_module("myproj.wsgi:application").as_deref(),
            Some("myproj")
        );
        assert_eq!(
            from_module("src.billing.main:app").as_deref(),
            Some("billing")
        );
        assert_eq!(from_module("app:app").as_deref(), Some("app"));
        assert_eq!(from_module("shop:create_app()").as_deref(), Some("shop"));
        assert_eq!(from_module(":x"), None);
    }

    #[test]
    fn files() {
        assert_eq!(
            from_file("/etc/gunicorn/payments.conf.py").as_deref(),
            Some("payments")
        );
        assert_eq!(from_file("/srv/shop/shop/wsgi.py").as_deref(), Some("shop"));
        assert_eq!(
            from_file("/etc/uwsgi/orders.ini:prod").as_deref(),
            Some("orders")
        );
        assert_eq!(
            from_file("/srv/cart/releases/20240101/conf/gunicorn.conf.py").as_deref(),
            Some("cart")
        );
        assert_eq!(from_file("uwsgi.ini").as_deref(), Some("uwsgi"));
    }

    #[test]
    fn dirs() {
        assert_eq!(from_dir("/srv/shop/current").as_deref(), Some("shop"));
        assert_eq!(
            from_dir("/home/deploy/billing-api/").as_deref(),
            Some("billing-api")
        );
        assert_eq!(from_dir("/"), None);
        assert_eq!(from_dir("/srv/app").as_deref(), Some("app"));
        assert_eq!(from_dir("/srv/münchen").as_deref(), Some("münchen"));
    }

    #[test]
    fn picking() {
        let c = vec![
            (None, "--name"),
            (Some("app".to_string()), "module"),
            (Some("shop".to_string()), "cwd"),
        ];
        assert_eq!(
            pick(c, ("gunicorn", "technology")),
            ("shop".to_string(), "cwd")
        );
        let c = vec![(Some("app".to_string()), "module"), (None, "cwd")];
        assert_eq!(
            pick(c, ("gunicorn", "technology")),
            ("app".to_string(), "module")
        );
        assert_eq!(
            pick(vec![], ("gunicorn", "technology")),
            ("gunicorn".to_string(), "technology")
        );
    }
}
