"""Never break the app, shown on test suites nobody here wrote: Flask's and requests' own tests, from
their sdists, run twice in the tracer-suites venv — without the tracer, and with it installed
in-process by the same bootstrap the injector runs (against a fake agent in another process). With
the tracer, every test runs inside a server span, so http.client/requests calls make client spans
and inject `traceparent`. The outcome counts must match.

  python tracer_suites.py CACHE_DIR
"""
import json
import os
import re
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUITES = [("flask", "3.1.3", ["tests"]), ("requests", "2.34.2", ["tests"])]
if os.environ.get("SUITES"):
    SUITES = [s for s in SUITES if s[0] in os.environ["SUITES"].split(",")]

RUNNER = r'''
import os, sys
mode = sys.argv[1]
args = sys.argv[2:]
plugins = []
if mode == "traced":
    sys.path.insert(0, os.environ["ZS_TESTS"])
    import test_tracer
    sys.path.pop(0)
    del sys.modules["test_tracer"]
    exec(test_tracer.bootstrap_code(os.environ["ZS_INTAKE"]), {})
    zs = sys.modules["_zerostep"]
    assert zs._state is not None, "tracer not installed"
    import pytest

    class ServerSpanPerTest(object):
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_call(self, item):
            st = sys.modules["_zerostep"]._state
            span = st.tracer.start_server("TEST", {"test": item.nodeid}, None, None)
            try:
                yield
            finally:
                st.tracer.end_server(span)
                st.reporter.request_end()

    plugins.append(ServerSpanPerTest())
import pytest
code = pytest.main(["-q", "-rfExX", "-p", "no:cacheprovider"] + args, plugins=plugins)
if mode == "traced":
    st = sys.modules["_zerostep"]._state
    st.reporter.flush()
    print("ZS-STATUS " + repr({"sent": st.reporter.sent, "dropped": st.reporter.dropped,
          "errors": {i.name: i.errors for i in st.insts if i.errors},
          "tripped": [i.name for i in st.insts if i.tripped]}))
sys.exit(int(code))
'''


def fetch(cache, name, version):
    d = os.path.join(cache, "sdists")
    os.makedirs(d, exist_ok=True)
    tgz = os.path.join(d, "%s-%s.tar.gz" % (name, version))
    if not os.path.exists(tgz):
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--no-binary", ":all:", "-d", d, "%s==%s" % (name, version)])
    src = os.path.join(d, "%s-%s" % (name, version))
    if not os.path.isdir(src):
        with tarfile.open(tgz) as t:
            t.extractall(d)
    return src


def summary(out):
    counts = {}
    for k, v in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|warnings?)", out):
        counts[v.rstrip("s") if v.startswith("error") else v] = int(k)
    return counts


def intake():
    code = ("import sys, time\nsys.path.insert(0, %r)\nimport test_tracer\n"
            "i = test_tracer.FakeIntake()\n"
            "i.frames = type('Sink', (), {'append': lambda self, f: None})()\n"
            "print(i.path, flush=True)\ntime.sleep(3600)\n"
            % os.path.join(ROOT, "host", "python", "tests"))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    return p, p.stdout.readline().decode().strip()


def main():
    cache = sys.argv[1]
    p, path = intake()
    try:
        env = dict(os.environ, ZS_INTAKE=path, ZS_TESTS=os.path.join(ROOT, "host", "python", "tests"),
                   PYTHONDONTWRITEBYTECODE="1")
        print("%-16s %-7s %s" % ("suite", "run", "outcome"))
        for name, version, args in SUITES:
            src = fetch(cache, name, version)
            results, outcomes = {}, {}
            for mode in ("bare", "traced"):
                r = subprocess.run([sys.executable, "-c", RUNNER, mode] + args, cwd=src, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
                out = r.stdout.decode("utf-8", "replace")
                last = [l for l in out.splitlines() if re.search(r"\d+ (passed|failed)", l)]
                status = [l for l in out.splitlines() if l.startswith("ZS-STATUS")]
                results[mode] = summary(last[-1] if last else "")
                print("%-16s %-7s %s %s" % (name + " " + version, mode, json.dumps(results[mode]),
                                            status[-1][10:] if status else ""))
                outcomes[mode] = sorted(l for l in out.splitlines()
                                        if l.startswith(("FAILED ", "ERROR ", "XFAIL ", "XPASS ")))
            for mode, other in (("bare", "traced"), ("traced", "bare")):
                for l in sorted(set(outcomes[mode]) - set(outcomes[other])):
                    print("    only %s: %s" % (mode, l[:160]))
            same = {k: v for k, v in results["bare"].items() if k != "warning"} == \
                {k: v for k, v in results["traced"].items() if k != "warning"}
            print("%-10s same results with and without the tracer: %s" % (name, "yes" if same else "NO"))
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    main()
