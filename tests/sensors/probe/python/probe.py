"""The probe bundle: a child span `probe.run` around `zs_probe_lib.Worker.run` (a module that
exists only in the tests), with attribute `x` set to the value the sensor was built with."""
from _zerostep import patch, trace

X = PROBE_X_VALUE


class Probe(patch.Instrumentation):
    name = "probe"
    modules = ("zs_probe_lib",)

    def apply(self, modules):
        tracer = self.tracer
        inst = self

        def wrap(original):
            def run(worker, *args, **kwargs):
                span = None
                if trace.current.get() is not None and not inst.tripped:
                    try:
                        span = tracer.start_child("probe.run", trace.INTERNAL, {"x": X})
                    except Exception as e:
                        inst.fail(e)
                try:
                    return original(worker, *args, **kwargs)
                finally:
                    if span is not None:
                        span.finish()
            return run

        self.patch(modules["zs_probe_lib"].Worker, "run", wrap)


def instrumentations(api, settings):
    return [Probe(api.tracer, api.config)]
