"""Test harness, standing in for `zerostep inject` until it lands: runs the bootstrap file named by
ZS_BOOTSTRAP_FILE in __main__'s namespace, as PyRun_SimpleString would. Lives in the test's temp dir,
never in the app's directory. ZS_INJECT says where: "master" (before workers fork), "worker" (in an
already-forked worker), "import" (uWSGI --import, in the master)."""
import os


def inject():
    import __main__
    with open(os.environ["ZS_BOOTSTRAP_FILE"]) as f:
        code = f.read()
    exec(compile(code, "<string>", "exec"), __main__.__dict__)


# gunicorn config hooks (this file is also gunicorn's -c config).
def when_ready(server):
    if os.environ.get("ZS_INJECT") == "master":
        inject()


def post_worker_init(worker):
    if os.environ.get("ZS_INJECT") == "worker":
        inject()


if os.environ.get("ZS_INJECT") == "import":
    inject()
