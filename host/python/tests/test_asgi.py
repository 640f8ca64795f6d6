"""The ASGI bundle's server spans, driven on asyncio without any server installed (the bundle's
server patches wait for uvicorn/hypercorn; its span code is exercised directly): concurrent
requests keep their own traces, errors, streaming, routes, non-HTTP scopes."""
import asyncio
import sys
import unittest

from test_tracer import FakeIntake, bootstrap_code, flush


def scope(path, traceparent=None):
    headers = [(b"host", b"shop.example:8443"), (b"user-agent", b"t")]
    if traceparent:
        headers.append((b"traceparent", traceparent.encode()))
    s = {"type": "http", "method": "GET", "path": path, "query_string": b"q=1", "scheme": "http",
         "http_version": "1.1", "headers": headers, "client": ("127.0.0.1", 5000),
         "server": ("127.0.0.1", 8443), "root_path": ""}
    return s


class Route(object):
    def __init__(self, path):
        self.path = path


async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}


class AsgiTest(unittest.TestCase):
    def setUp(self):
        self.intake = FakeIntake()
        exec(bootstrap_code(self.intake.path), {})
        self.zs = sys.modules["_zerostep"]
        st = self.zs._state
        self.srv = [i for i in st.insts if i.name == "uvicorn.h11"][0].server
        self.tracer = st.tracer

    def tearDown(self):
        self.zs.uninstall()
        self.intake.close()

    def run_requests(self, *requests):
        async def main():
            return await asyncio.gather(*requests, return_exceptions=True)
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    def request(self, app, sc):
        sent = []

        async def send(message):
            sent.append(message)

        async def go():
            await self.srv.wrap(app)(sc, receive, send)
            return sent
        return go()

    def test_concurrent_requests_never_cross(self):
        from _zerostep import trace

        async def app(sc, rcv, send):
            # Yields between every step, so the 40 requests interleave on the loop.
            sc["route"] = Route("/orders/{id}")
            for _ in range(3):
                await asyncio.sleep(0)
            child = self.tracer.start_child("work " + sc["path"], trace.INTERNAL, {})
            await asyncio.sleep(0.001)
            child.finish()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        tps = ["00-%032x-%016x-01" % (i + 1, i + 1) for i in range(40)]
        self.run_requests(*[self.request(app, scope("/orders/%d" % i, tps[i]))
                            for i in range(40)])
        flush()
        spans = self.intake.wait_spans(lambda s: len([x for x in self.intake.spans()
                                                      if x[4] == 1]) >= 40)
        servers = {s[9]["url.path"]: s for s in self.intake.spans() if s[4] == 1}
        works = {s[3][5:]: s for s in self.intake.spans() if s[3].startswith("work ")}
        self.assertEqual(len(servers), 40, spans)
        for i in range(40):
            srv = servers["/orders/%d" % i]
            self.assertEqual((srv[0], srv[2]), (i + 1, i + 1), "continues its own traceparent")
            self.assertEqual(srv[3], "GET /orders/{id}")
            self.assertEqual(srv[9]["http.route"], "/orders/{id}")
            w = works["/orders/%d" % i]
            self.assertEqual((w[0], w[2]), (srv[0], srv[1]), "child of its own request")
        self.assertIsNone(trace.current.get(), "nothing left in the caller's context")

    def test_an_exception_is_a_500_with_its_event_and_goes_through(self):
        async def app(sc, rcv, send):
            raise KeyError("missing thing")

        out = self.run_requests(self.request(app, scope("/boom")))
        self.assertIsInstance(out[0], KeyError, "the app's exception reaches the server")
        flush()
        s = self.intake.wait_spans(lambda s: s[4] == 1)[0]
        self.assertEqual(s[7], 2)
        self.assertEqual(s[9]["http.response.status_code"], 500)
        ev = s[10][0]
        self.assertEqual(ev[0], "exception")
        self.assertEqual(ev[2]["exception.type"], "KeyError")
        self.assertIn("missing thing", ev[2]["exception.message"])
        self.assertIn("test_asgi.py", ev[2]["exception.stacktrace"])

    def test_a_streamed_response_ends_at_its_last_byte(self):
        async def app(sc, rcv, send):
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-length", b"6")]})
            for _ in range(3):
                await asyncio.sleep(0.05)
                await send({"type": "http.response.body", "body": b"ab", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            await asyncio.sleep(0.3)  # after the last byte: not the request's time

        self.run_requests(self.request(app, scope("/s")))
        flush()
        s = self.intake.wait_spans(lambda s: s[4] == 1)[0]
        took = (s[6] - s[5]) / 1e9
        self.assertGreaterEqual(took, 0.14)
        self.assertLess(took, 0.3)
        self.assertEqual(s[9]["http.response.status_code"], 201)
        self.assertEqual(s[9]["http.response.body.size"], 6)
        self.assertEqual((s[9]["server.address"], s[9]["server.port"]), ("shop.example", 8443))

    def test_other_scopes_pass_through_untraced(self):
        seen = []

        async def app(sc, rcv, send):
            seen.append(sc["type"])

        sc = {"type": "lifespan"}
        self.run_requests(self.request(app, sc), self.request(app, {"type": "websocket"}))
        self.assertEqual(seen, ["lifespan", "websocket"])
        flush()
        self.assertEqual([s for s in self.intake.spans() if s[4] == 1], [])

    def test_the_wrapper_is_made_once_per_app(self):
        async def app(sc, rcv, send):
            pass
        self.assertIs(self.srv.wrap(app), self.srv.wrap(app))


if __name__ == "__main__":
    unittest.main()
