//! Every process collected from real servers by tests/fixtures/collect_cmdlines.py must match
//! (or not) exactly as its "expect" says, for the sensor of its technology, and must not match
//! the other sensor.

use std::path::PathBuf;

use serde_json::Value;
use zerostep_rules::{gunicorn, uwsgi, ProcessMatch, ProcessView};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/processes")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn describe(m: &Option<ProcessMatch>) -> Option<(String, String, String, String)> {
    m.as_ref().map(|m| {
        (
            m.technology.to_string(),
            m.role.as_str().to_string(),
            m.service_name.clone(),
            m.service_name_source.to_string(),
        )
    })
}

#[test]
fn real_processes_match_as_expected() {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 30,
        "expected the collected fixtures, found {}",
        files.len()
    );
    let (mut checked, mut failures) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable fixture");
        let fixture: Value = serde_json::from_str(&text).expect("valid JSON");
        for p in fixture["processes"].as_array().expect("processes") {
            let (cmdline, parent_cmdline) = (strings(&p["cmdline"]), strings(&p["parent_cmdline"]));
            let view = ProcessView {
                exe: p["exe"].as_str().unwrap_or(""),
                cmdline: &cmdline,
                cwd: p["cwd"].as_str().unwrap_or(""),
                parent_cmdline: &parent_cmdline,
            };
            let expect = &p["expect"];
            let want = expect.as_object().map(|e| {
                let f = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (
                    f("technology"),
                    f("role"),
                    f("service_name"),
                    f("service_name_source"),
                )
            });
            let (g, u) = (
                describe(&gunicorn::match_process(&view)),
                describe(&uwsgi::match_process(&view)),
            );
            let tech = want.as_ref().map(|w| w.0.as_str());
            let (got, other) = if tech == Some("uwsgi") {
                (u, g)
            } else {
                (g, u)
            };
            if got != want || other.is_some() {
                failures.push(format!(
                    "{} pid {}: {:?}\n  want {want:?}\n  got  {got:?} (other sensor: {other:?})",
                    file.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                    p["pid"],
                    cmdline
                ));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} processes wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Random command lines over the tokens the matchers look at: no panic, and a match always has
/// a non-empty service name.
#[test]
fn random_command_lines_never_panic() {
    const TOKENS: &[&str] = &[
        "",
        "-",
        "--",
        "-m",
        "-c",
        "-W",
        "-X",
        "-um",
        "-n",
        "-nX",
        "--name",
        "--name=",
        "-w",
        "-k",
        "--threads",
        "=",
        ":",
        "app:app",
        "a.b:c",
        "gunicorn",
        "uwsgi",
        "pyuwsgi",
        "python3.11",
        "/usr/bin/python3",
        "x.ini",
        "x.ini:",
        ":x",
        "--ini",
        "--procname-master",
        "--procname-prefix",
        "--mount",
        "/=",
        "uWSGI",
        "uWSGI master",
        "uWSGI worker 1",
        "gunicorn: master [",
        "gunicorn: worker [a:b]",
        "]",
        "[",
        "é",
        "/",
        "master",
        "4",
    ];
    let mut seed: u64 = 0xc0ffee;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let mut pick = |len: usize| -> Vec<String> {
        (0..len)
            .map(|_| TOKENS[next(TOKENS.len())].to_string())
            .collect()
    };
    for i in 0..20_000 {
        let (cmdline, parent_cmdline) = (pick(i % 7), pick(i % 3));
        let exe = ["/venv/bin/uwsgi", "/usr/bin/python3.11", "/bin/bash"][i % 3];
        let cwd = ["/", "", "/srv/app", "/srv/é/src"][i % 4];
        let view = ProcessView {
            exe,
            cmdline: &cmdline,
            cwd,
            parent_cmdline: &parent_cmdline,
        };
        for m in [gunicorn::match_process(&view), uwsgi::match_process(&view)]
            .into_iter()
            .flatten()
        {
            assert!(!m.service_name.is_empty(), "{cmdline:?} in {cwd:?}");
        }
    }
}
