"""Idle cost of OTLP export: the release agent with nothing to trace, without export and with
OTLP/HTTP and OTLP/gRPC over TLS configured (system roots loaded at start), RSS and CPU after
IDLE_SECS. Run by bench/60-otlp.sh; needs root (the agent's discovery) and the sensors
(`make sensors`, or SENSORS_DIR). Prints numbers; no pass/fail.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target", "release", "zerostep")
SENSORS = os.environ.get("SENSORS_DIR", os.path.join(ROOT, "target", "sensors"))
IDLE_SECS = float(os.environ.get("IDLE_SECS", "20"))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def usage(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    with open("/proc/%d/status" % pid) as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    return cpu, rss


def thread_cpu(pid, name):
    """CPU seconds of the process's threads called `name`."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        if comm == name:
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def healthy(port):
    try:
        return urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health" % port, timeout=1).status == 200
    except OSError:
        return False


def run(name, otlp):
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        cfg = os.path.join(work, "zerostep.toml")
        with open(cfg, "w") as f:
            f.write('listen = "127.0.0.1:%d"\nstate_dir = "%s"\nsensors_dir = "%s"\n'
                    "[scope]\ndescendants_of = [%d]\n%s"
                    % (port, os.path.join(work, "state"), SENSORS, os.getpid(), otlp))
        log = open(os.path.join(work, "agent.log"), "w")
        p = subprocess.Popen([AGENT, "agent", "--config", cfg], stdout=log, stderr=log,
                             start_new_session=True)
        try:
            end = time.time() + 30
            while not healthy(port):
                if time.time() > end or p.poll() is not None:
                    log.close()
                    sys.exit("agent did not start: " + open(os.path.join(work, "agent.log")).read())
                time.sleep(0.1)
            # Past the start (sensors are compiled then, the state directory being new).
            time.sleep(5)
            c0, _ = usage(p.pid)
            e0 = thread_cpu(p.pid, "otlp-export")
            time.sleep(IDLE_SECS)
            c1, rss = usage(p.pid)
            e1 = thread_cpu(p.pid, "otlp-export")
            print("| %s | %.1f | %.2f | %.2f |" % (name, rss, 100 * (c1 - c0) / IDLE_SECS,
                                                 100 * (e1 - e0) / IDLE_SECS))
        finally:
            os.killpg(p.pid, 15)
            p.wait(10)


def main():
    print("\n| idle agent, %gs | RSS MB | CPU %% | exporter thread CPU %% |" % IDLE_SECS)
    print("|---|---|---|---|")
    run("no export", "")
    # Nothing listens there: an idle exporter never connects, so this is its resting cost.
    dead = free_port()
    run("OTLP/HTTP over TLS", '[otlp]\nendpoint = "https://127.0.0.1:%d"\n' % dead)
    run("OTLP/gRPC over TLS", '[otlp]\nendpoint = "https://127.0.0.1:%d"\nprotocol = "grpc"\n' % dead)


if __name__ == "__main__":
    main()
