"""`http.route` from the frameworks that route (Flask, Django)."""
from _zerostep import patch, wsgi


class Flask(patch.Instrumentation):
    name = "flask"
    modules = ("flask.ctx",)

    def apply(self, modules):
        inst = self

        def wrap(original):
            def match_request(ctx, *a, **kw):
                result = original(ctx, *a, **kw)
                try:
                    rule = getattr(ctx.request, "url_rule", None)
                    if rule is not None:
                        wsgi.set_route(rule.rule)
                except Exception as e:
                    inst.fail(e)
                return result
            return match_request

        self.patch(modules["flask.ctx"].RequestContext, "match_request", wrap)


class Django(patch.Instrumentation):
    name = "django"
    modules = ("django.core.handlers.base",)

    def apply(self, modules):
        inst = self
        handler = modules["django.core.handlers.base"].BaseHandler
        if "resolve_request" not in handler.__dict__:  # Django < 3.1
            return

        def wrap(original):
            def resolve_request(h, request, *a, **kw):
                match = original(h, request, *a, **kw)
                try:
                    route = getattr(match, "route", None)
                    if route:
                        wsgi.set_route("/" + route.lstrip("^").rstrip("$"))
                except Exception as e:
                    inst.fail(e)
                return match
            return resolve_request

        self.patch(handler, "resolve_request", wrap)
