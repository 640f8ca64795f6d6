"""Bundles in the tracer core: triggers, the tracer-API range, bundles that fail, and replacing a
bundle in place (`bundles` command) with the same process and connection. A test-only library
(`zs_probe_lib`, written to a temp dir) stands for a technology the agent has never heard of."""
import os
import sys
import tempfile
import time
import unittest

from test_tracer import FakeIntake, bootstrap_code, bundles, call, flush, hello_app

PROBE_LIB = '''
class Worker(object):
    def run(self, n):
        return n * 2
'''

# The probe bundle: a child span around Worker.run with attribute x=VALUE.
PROBE_BUNDLE = '''
from _zerostep import patch, trace


class Probe(patch.Instrumentation):
    name = "probe"
    modules = ("zs_probe_lib",)

    def apply(self, modules):
        tracer = self.tracer

        def wrap(original):
            def run(worker, n):
                if trace.current.get() is None:
                    return original(worker, n)
                span = tracer.start_child("probe.run", trace.INTERNAL, {"x": VALUE})
                try:
                    return original(worker, n)
                finally:
                    span.finish()
            return run

        self.patch(modules["zs_probe_lib"].Worker, "run", wrap)


def instrumentations(api, settings):
    return [Probe(api.tracer, api.config)]
'''


def probe_bundle(value, version=None, tracer_api=">=1.0,<2", source=None):
    src = source if source is not None else PROBE_BUNDLE.replace("VALUE", str(value))
    return {"name": "probe", "version": version or "v%s" % value, "triggers": ["zs_probe_lib"],
            "modules": [["probe", src]], "entry": "probe:instrumentations",
            "tracer_api": tracer_api, "settings": {}}


class BundleTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zs-probe-")
        with open(os.path.join(self.dir, "zs_probe_lib.py"), "w") as f:
            f.write(PROBE_LIB)
        sys.path.insert(0, self.dir)
        sys.modules.pop("zs_probe_lib", None)
        self.intake = FakeIntake()
        exec(bootstrap_code(self.intake.path), {})
        self.zs = sys.modules["_zerostep"]
        st = self.zs._state
        self.srv = [i for i in st.insts if i.name == "gunicorn"][0].server

    def tearDown(self):
        m = sys.modules.get("_zerostep")
        if m is not None:
            m.uninstall()
        self.intake.close()
        sys.path.remove(self.dir)
        sys.modules.pop("zs_probe_lib", None)

    def set_bundles(self, extra):
        self.zs._on_command({"t": "bundles", "bundles": bundles() + extra})

    def bundle(self, name):
        return [b for b in self.zs._state.bundles if b.name == name][0]

    def request(self, path):
        import zs_probe_lib

        def app(environ, start_response):
            zs_probe_lib.Worker().run(21)
            return hello_app(environ, start_response)

        self.assertEqual(call(lambda e, s: self.srv.call(app, e, s), path), ("200 OK", b"hi"))
        flush()

    def probe_spans(self, path):
        server = self.intake.wait_spans(lambda s: s[9].get("url.path") == path)
        self.assertEqual(len(server), 1, path)
        self.intake.wait_spans(lambda s: s[3] == "probe.run" and s[2] == server[0][1])
        return [s for s in self.intake.spans() if s[3] == "probe.run" and s[2] == server[0][1]]

    def test_a_bundle_waits_for_its_trigger_then_instruments(self):
        self.set_bundles([probe_bundle(1)])
        self.assertEqual(self.bundle("probe").state, "waiting")
        import zs_probe_lib  # noqa: F401  (the trigger)
        self.assertEqual(self.bundle("probe").state, "active")
        self.request("/v1")
        spans = self.probe_spans("/v1")
        self.assertEqual([s[9]["x"] for s in spans], [1])

    def test_a_new_version_replaces_the_old_in_place(self):
        import zs_probe_lib
        original = zs_probe_lib.Worker.__dict__["run"]
        self.set_bundles([probe_bundle(1)])
        sock = self.zs._state.reporter.sock
        self.request("/one")
        self.assertEqual([s[9]["x"] for s in self.probe_spans("/one")], [1])
        self.set_bundles([probe_bundle(2)])
        self.assertIs(self.zs._state.reporter.sock, sock, "same connection")
        self.request("/two")
        self.assertEqual([s[9]["x"] for s in self.probe_spans("/two")], [2], "one span, x=2")
        # Back (a rollback is the old version sent again).
        self.set_bundles([probe_bundle(1)])
        self.request("/back")
        self.assertEqual([s[9]["x"] for s in self.probe_spans("/back")], [1])
        # Removed: the class is as it was.
        self.set_bundles([])
        self.assertIs(zs_probe_lib.Worker.__dict__["run"], original)
        self.assertFalse([k for k in sys.modules if k.startswith("_zerostep.bundles.probe")])

    def test_upgrades_under_load_leave_no_call_untraced_or_traced_twice(self):
        import threading
        import zs_probe_lib
        self.set_bundles([probe_bundle(1)])
        stop = threading.Event()
        paths = []

        def load():
            n = 0
            while not stop.is_set():
                n += 1
                paths.append("/load-%d" % n)
                self.request_no_flush(paths[-1])
                # Bounded to a few thousand requests a second: the tracer's buffer (4096 spans,
                # flushed every 0.2 s) drops what does not fit, by design, and an unthrottled loop on
                # a fast machine outruns it; this test is about upgrades, not about that bound.
                time.sleep(0.0002)

        t = threading.Thread(target=load)
        t.start()
        try:
            for v in range(2, 22):
                self.set_bundles([probe_bundle(v % 2 + 1, version="v%d" % v)])
                time.sleep(0.005)
        finally:
            stop.set()
            t.join()
        flush()
        self.intake.wait_spans(lambda s: s[9].get("url.path") == paths[-1])
        spans = self.intake.spans()
        servers = {s[1]: s[9]["url.path"] for s in spans if s[9].get("url.path", "").startswith("/load-")}
        probes = {}
        for s in spans:
            if s[3] == "probe.run":
                probes[s[2]] = probes.get(s[2], 0) + 1
        self.assertGreater(len(servers), 20)
        self.assertEqual(self.zs._state.reporter.dropped, 0, "the load outran the buffer")
        self.assertEqual(len(servers), len(paths), "every request has its server span")
        counts = [probes.get(sid, 0) for sid in servers]
        self.assertEqual(set(counts), {1}, "exactly one probe span per request")
        self.assertNotIn("__zerostep_patch__", dir(zs_probe_lib.Worker.__dict__["run"].__zerostep_original__))

    def request_no_flush(self, path):
        import zs_probe_lib

        def app(environ, start_response):
            zs_probe_lib.Worker().run(21)
            return hello_app(environ, start_response)

        call(lambda e, s: self.srv.call(app, e, s), path)

    def test_a_refused_new_version_leaves_the_old_one_serving(self):
        import zs_probe_lib  # noqa: F401  (the trigger)
        self.set_bundles([probe_bundle(1)])
        self.set_bundles([probe_bundle(2, source="raise ImportError('broken v2')\n")])
        b = self.bundle("probe")
        self.assertEqual((b.version, b.state), ("v1", "active"))
        self.assertIn("broken v2", b.reason)
        self.request("/kept")
        self.assertEqual([s[9]["x"] for s in self.probe_spans("/kept")], [1])

    def test_unchanged_bundles_are_kept_not_reloaded(self):
        self.set_bundles([probe_bundle(1)])
        lib = self.bundle("libraries")
        self.set_bundles([probe_bundle(2)])
        self.assertIs(self.bundle("libraries"), lib)

    def test_a_bundle_needing_another_tracer_api_is_refused(self):
        import zs_probe_lib
        self.set_bundles([probe_bundle(1, tracer_api=">=2.0")])
        b = self.bundle("probe")
        self.assertEqual(b.state, "refused")
        self.assertIn("needs tracer API >=2.0", b.reason)
        self.assertEqual(zs_probe_lib.Worker().run(2), 4)
        status = self.zs._state.status()["bundles"]["probe"]
        self.assertEqual(status["state"], "refused")

    def test_a_bundle_that_raises_at_import_is_refused_and_the_rest_serve(self):
        import zs_probe_lib
        self.set_bundles([probe_bundle(1, source="raise SystemExit('bad bundle')\n")])
        b = self.bundle("probe")
        self.assertEqual(b.state, "refused")
        self.assertIn("SystemExit", b.reason)
        self.assertFalse([k for k in sys.modules if k.startswith("_zerostep.bundles.probe")])
        self.assertEqual(zs_probe_lib.Worker().run(2), 4)
        self.request("/still")
        self.assertEqual(len(self.intake.wait_spans(lambda s: s[9].get("url.path") == "/still")), 1)

    def test_a_bundle_patching_a_missing_attribute_fails_alone(self):
        import zs_probe_lib
        src = PROBE_BUNDLE.replace("VALUE", "1").replace('Worker, "run"', 'Worker, "nope"')
        self.set_bundles([probe_bundle(1, source=src)])
        inst = [i for i in self.zs._state.insts if i.name == "probe"][0]
        self.assertFalse(inst.applied)
        self.assertIn("nope", inst.last_error)
        self.assertNotIn("nope", zs_probe_lib.Worker.__dict__)
        self.assertEqual(zs_probe_lib.Worker().run(2), 4)


if __name__ == "__main__":
    unittest.main()
