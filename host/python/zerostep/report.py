"""The reporter: finished spans → framed batches over a non-blocking Unix socket to the agent.

Frame: 4-byte big-endian length, then compact JSON (the C-accelerated encoder) of an object with
"v" (schema version) and "t" (type). Nothing here ever blocks a request: sends are non-blocking,
what does not fit in the bounded out-buffer is dropped and counted, and a lost agent is retried
with backoff. The pid is checked on every flush: a forked child drops its parent's state and
connects as itself.
"""
import collections
import json
import marshal
import os
import _socket
import struct
import sys
import threading
import time

SCHEMA = 1
_pack_len = struct.Struct(">I").pack
_unpack_len = struct.Struct(">I").unpack_from
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False,
                          default=repr).encode
_loads = json.loads
_marshal_dumps = marshal.dumps
MAX_IN_FRAME = 16 << 20


def frame(obj):
    body = _dumps(obj).encode("utf-8", "replace")
    return _pack_len(len(body)) + body


def spans_frame(pid, dropped, items):
    """Spans go as marshal (a leading 0x01 says so): 4-5x cheaper to encode than JSON, and it is
    paid in the app's process. JSON when marshal refuses a value (a str subclass, say)."""
    try:
        body = b"\x01" + _marshal_dumps((pid, dropped, items), 4)
    except Exception:
        body = _dumps({"v": SCHEMA, "t": "spans", "pid": pid, "dropped": dropped,
                       "spans": items}).encode("utf-8", "replace")
    return _pack_len(len(body)) + body


def connect(address, timeout=None, uid=None):
    """A connected AF_UNIX stream socket. `address` starting with '@' is an abstract name. With
    `uid`, the listener must have been made by that user (SO_PEERCRED): an abstract name is first
    come, first served, and a squatter's socket is not the agent's."""
    # _socket, not socket: an app under gevent's monkey-patching must not turn ours cooperative.
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect("\0" + address[1:] if address.startswith("@") else address)
        if uid is not None:
            cred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            if struct.unpack("3i", cred)[1] != uid:
                raise PermissionError("the intake's listener is not the agent's user")
    except BaseException:
        s.close()
        raise
    return s


def agent_proof(secret, nonce, who="agent"):
    """What the agent answers a nonce with, or ("tracer") what the tracer shows it with
    (host/src/intake/auth.rs)."""
    import hashlib
    import hmac
    return hmac.new(secret.encode(), ("zerostep %s v1 %s" % (who, nonce)).encode(),
                    hashlib.sha256).hexdigest()


# A connection whose listener has not proved itself the agent within this long is dropped.
AUTH_TIMEOUT = 5.0


def read_frame(sock, max_len=MAX_IN_FRAME):
    """One frame from a blocking socket (the bootstrap's hand-shake)."""
    head = _recv_exact(sock, 4)
    (n,) = _unpack_len(head)
    if n > max_len:
        raise ValueError("frame too large")
    return _loads(_recv_exact(sock, n).decode("utf-8"))


def _recv_exact(sock, n):
    chunks = []
    while n:
        b = sock.recv(min(n, 1 << 20))
        if not b:
            raise EOFError("agent closed the connection")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


class Reporter(object):
    def __init__(self, address, sock, config, on_command):
        self.address = address
        self.max_spans = int(config.get("max_buffered_spans", 4096))
        self.max_out = int(config.get("max_out_bytes", 4 << 20))
        self.batch = int(config.get("batch_spans", 256))
        self.interval = float(config.get("flush_interval", 0.2))
        self.on_command = on_command
        self.spans = collections.deque()
        self.dropped = 0
        self.sent = 0
        self.out = bytearray()
        self.inbuf = bytearray()
        self.pid = os.getpid()
        self.sock = None
        self.next_connect = 0.0
        self.backoff = 0.25
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()
        self.thread = None
        self.wake = threading.Event()
        self.thread_wanted = False
        self.stopping = False
        self.threads_ok = True
        self.status_fn = None
        self.pending_status = True
        # A process that forks from C without Python's fork hooks (a uWSGI master) must never run
        # our thread: a fork while it holds the GIL leaves the child waiting for that GIL forever.
        self.no_thread_pid = 0
        # {"secret", "root", "uid"} from the bootstrap: until the listener answers our nonce,
        # nothing it sends is acted on and no span is sent to it.
        self.auth = dict(config.get("auth") or {})
        self.authed = True
        self.nonce = None
        self.auth_deadline = 0.0
        if sock is not None:
            self._adopt(sock)  # the bootstrap's, already proven

    # -- hot path ---------------------------------------------------------------------------------

    def add(self, span):
        q = self.spans
        if len(q) >= self.max_spans:
            self.dropped += 1
            return
        q.append(span)

    def request_end(self):
        """Called as each request finishes: flush when due, or always when no thread flushes."""
        if self.thread_wanted:
            self.thread_wanted = False
            self.start_thread()
        if (len(self.spans) >= self.batch or not self.threads_ok or self.thread is None
                or time.monotonic() - self.last_flush >= self.interval):
            self.flush()

    # -- flushing ---------------------------------------------------------------------------------

    def flush(self):
        lock = self.lock  # after_fork() replaces it while we hold this one
        if not lock.acquire(False):
            return
        try:
            self._flush_locked()
        except Exception:
            pass
        finally:
            lock.release()

    def _flush_locked(self):
        self.last_flush = time.monotonic()
        if os.getpid() != self.pid:
            self.after_fork()
        if self.sock is None and not self._reconnect():
            self._drain_to_drop()
            return
        if not self.authed:
            # Only our hello goes out; spans wait (bounded by max_buffered_spans) for the proof.
            self._send()
            self._receive()
            if not self.authed and self.sock is not None and (
                    time.monotonic() > self.auth_deadline):
                self._lost()
            if not self.authed:
                return
        q = self.spans
        while q:
            items = []
            pop = q.popleft
            try:
                for _ in range(self.batch):
                    items.append(pop().wire())
            except IndexError:
                pass
            if not items:
                break
            data = spans_frame(self.pid, self.dropped, items)
            if len(self.out) + len(data) > self.max_out:
                self.dropped += len(items)
                continue
            self.out += data
            self.sent += len(items)
        if self.pending_status and self.status_fn is not None:
            self.pending_status = False
            try:
                self.out += frame(dict(self.status_fn(), v=SCHEMA, t="status", pid=self.pid,
                                       dropped=self.dropped))
            except Exception:
                pass
        self._send()
        self._receive()

    def _drain_to_drop(self):
        n = len(self.spans)
        if n:
            self.spans.clear()
            self.dropped += n

    def _send(self):
        s = self.sock
        while self.out and s is not None:
            try:
                n = s.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost()
                return
            del self.out[:n]

    def _receive(self):
        s = self.sock
        if s is None:
            return
        while True:
            try:
                b = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._lost()
                return
            if not b:
                self._lost()
                return
            self.inbuf += b
            if len(self.inbuf) > MAX_IN_FRAME + 4:
                self._lost()
                return
        buf = self.inbuf
        while len(buf) >= 4:
            (n,) = _unpack_len(buf)
            if len(buf) < 4 + n:
                break
            body = bytes(buf[4:4 + n])
            del buf[:4 + n]
            try:
                cmd = _loads(body.decode("utf-8"))
            except Exception:
                continue
            if not self.authed:
                if not self._proof_ok(cmd):
                    self._lost()
                    return
                self.authed = True
                self.backoff = 0.25
                self.pending_status = True
                continue
            try:
                self.on_command(cmd)
            except Exception:
                pass

    # -- connection ------------------------------------------------------------------------------

    def _adopt(self, sock):
        sock.setblocking(False)
        self.sock = sock
        if self.authed:  # else once the proof arrived: a listener that fails it is retried slowly
            self.backoff = 0.25

    def _close_socket(self):
        s, self.sock = self.sock, None
        if s is not None:
            try:
                s.close()
            except Exception:
                pass

    def _lost(self):
        self._close_socket()
        self.out = bytearray()
        self.inbuf = bytearray()
        self.next_connect = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, 30.0)

    def _proof_ok(self, cmd):
        try:
            import hmac
            return (isinstance(cmd, dict) and cmd.get("t") == "auth" and hmac.compare_digest(
                agent_proof(self.auth["secret"], self.nonce), str(cmd.get("proof"))))
        except Exception:
            return False

    def _reconnect(self):
        if time.monotonic() < self.next_connect:
            return False
        try:
            s = connect(self.address, timeout=0.05, uid=self.auth.get("uid"))
        except Exception:
            self.next_connect = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 30.0)
            return False
        hello = {"v": SCHEMA, "t": "hello", "role": "tracer", "pid": self.pid,
                 "python": sys.version.split()[0], "version": _version()}
        self.authed = not self.auth.get("secret")
        if not self.authed:
            self.nonce = os.urandom(16).hex()
            self.auth_deadline = time.monotonic() + AUTH_TIMEOUT
            hello["nonce"] = self.nonce
            hello["root"] = self.auth.get("root")
            hello["tag"] = agent_proof(self.auth["secret"], self.nonce, "tracer")
        self._adopt(s)
        self.out += frame(hello)
        self.pending_status = True
        return True

    def retarget(self, address, auth):
        """A new agent address and secret (an agent that restarted on a fresh name, or a process
        injected again as its own root): the next flush connects there."""
        if not self.lock.acquire(True, 1.0):
            return
        try:
            self.address = address
            self.auth = dict(auth or {})
            self._close_socket()
            self.out = bytearray()
            self.inbuf = bytearray()
            self.next_connect = 0.0
            self.backoff = 0.25
        finally:
            self.lock.release()
        self.wake.set()

    def after_fork(self):
        """In a child: the parent's socket, buffers and spans are the parent's to send."""
        old = self.sock
        self.sock = None
        if old is not None:
            try:
                # close(), never shutdown(): the parent still uses the same connection.
                old.close()
            except Exception:
                pass
        self.pid = os.getpid()
        self.spans = collections.deque()
        self.out = bytearray()
        self.inbuf = bytearray()
        self.dropped = 0
        self.next_connect = 0.0
        self.backoff = 0.25
        self.lock = threading.Lock()
        self.thread = None
        self.wake = threading.Event()
        self.start_thread()

    # -- background thread ----------------------------------------------------------------------

    def start_thread(self):
        if self.thread is not None or self.stopping or self.no_thread_pid == os.getpid():
            return
        try:
            t = threading.Thread(target=self._run, name="zerostep-reporter", daemon=True)
            self.thread = t
            t.start()
        except Exception:
            self.thread = None
            self.threads_ok = False

    def _run(self):
        me = threading.current_thread()
        wake = self.wake
        while not self.stopping and self.thread is me:
            wake.wait(self.interval)
            if self.stopping or self.thread is not me or self.pid != os.getpid():
                return
            self.flush()

    def forbid_thread(self):
        """No background thread in this process (forks in the child are unaffected): it forks
        from C, where no before-fork hook can stop the thread. Flushes then happen per request."""
        self.no_thread_pid = os.getpid()
        self.pause_for_fork()

    def pause_for_fork(self):
        """Before os.fork(): our thread exits, so CPython 3.12+ does not warn the app about forking a
        multi-threaded process, and no lock is copied into the child mid-flight."""
        t = self.thread
        if t is None:
            return
        before = _os_threads()
        self.thread = None
        self.wake.set()
        try:
            t.join(0.2)
            # join() returns before the OS thread is gone, and the warning counts OS threads.
            deadline = time.monotonic() + 0.02
            while before and _os_threads() >= before and time.monotonic() < deadline:
                time.sleep(0.0005)
        except Exception:
            pass
        self.wake = threading.Event()

    def resume_after_fork(self):
        # 3.13+ checks for threads after the after-fork hooks ran: a thread restarted here would
        # trigger the warning anyway, so there the next request_end() restarts it — the next
        # request, or a gunicorn master's next loop (Arbiter.murder_workers calls it).
        if _LAZY_RESTART:
            self.thread_wanted = True
        elif self.thread is None and not self.stopping:
            self.start_thread()

    def stop(self, final_flush=True):
        self.stopping = True
        self.wake.set()
        if final_flush:
            self.flush()
        self._close_socket()


_LAZY_RESTART = sys.version_info >= (3, 13)


def _os_threads():
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[17])
    except Exception:
        return 0


def _version():
    m = sys.modules.get("_zerostep")
    return getattr(m, "VERSION", "?")
