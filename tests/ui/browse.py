#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol (stdlib only: a minimal WebSocket client)
through the pages of the zerostep UI, for tests/ui_browser.rs.

    browse.py CHROMIUM BASE_URL OUT_DIR PLAN.json

PLAN is a list of pages: {"name", "hash", "expect": [text, ...], "click": css selector or null,
"actions": [{"drag": selector, "from", "to", "then": js} | {"key", "keycode", "focus": selector,
"then": js} | {"click": selector, "then": js}], "width", "height"}. For each page it loads BASE_URL + hash, waits until the UI marks the view
ready and every expected text is on the page, optionally clicks, and writes OUT_DIR/<name>.png.
Prints one JSON object: {"pages": [{"name", "ok", "missing", "text", "url", "screenshot"}],
"console_errors": [...], "requests_off_host": [...]}. Exits 0 even when a page fails (the Rust
test asserts on the JSON); non-zero only when the browser cannot be driven at all.
"""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request


class WebSocket(object):
    """Just enough of RFC 6455 for the DevTools protocol: text frames, masking, fragments."""

    def __init__(self, url, timeout=30):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n") % (
                   u.path or "/", u.hostname, u.port, key)
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise IOError("websocket handshake: connection closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise IOError("websocket handshake refused: %r" % head[:200])

    def send(self, text):
        data = text.encode()
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(hdr + mask + masked)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise IOError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            op = b0 & 0x0F
            if op == 8:
                raise IOError("websocket closed by the browser")
            if op in (9, 10):  # ping/pong: Chromium does not ping; ignore
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode("utf-8", "replace")


class Browser(object):
    def __init__(self, chromium, width, height):
        self.profile = tempfile.mkdtemp(prefix="zs-chromium-")
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-dev-shm-usage", "--user-data-dir=" + self.profile,
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                "--window-size=%d,%d" % (width, height), "about:blank"]
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if self.proc.poll() is not None or time.time() > deadline:
                raise IOError("chromium did not start: " + self._log_tail())
            time.sleep(0.1)
        with open(port_file) as f:
            port = int(f.readline().strip())
        with urllib.request.urlopen("http://127.0.0.1:%d/json/version" % port, timeout=10) as r:
            ws_url = json.load(r)["webSocketDebuggerUrl"]
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _log_tail(self):
        try:
            with open(os.path.join(self.profile, "chromium.log"), "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def call(self, method, session=None, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise IOError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            self.events.append(m)

    def page(self, method, **params):
        return self.call(method, session=self.session, **params)

    def evaluate(self, expr):
        r = self.page("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise IOError("evaluate %s: %s" % (expr[:80], r["exceptionDetails"].get("text")))
        return r.get("result", {}).get("value")

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def wait_for(browser, expr, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if browser.evaluate(expr):
                return True
        except IOError:
            pass
        time.sleep(0.2)
    return False


def main():
    chromium, base, out_dir, plan_file = sys.argv[1:5]
    login = sys.argv[5] if len(sys.argv) > 5 else None
    with open(plan_file) as f:
        plan = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    host = urllib.parse.urlparse(base).netloc
    b = Browser(chromium, 1280, 800)
    result = {"pages": [], "console_errors": [], "requests_off_host": []}
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.page(domain + ".enable")
        if login:
            # The link `zerostep ui` prints: the login page trades the token for a session.
            b.page("Page.navigate", url=login)
            if not wait_for(b, "!!localStorage.getItem('zerostep_session')", 20):
                raise SystemExit("login through %s gave no session" % login.split("#")[0])
        for p in plan:
            b.page("Emulation.setDeviceMetricsOverride", width=p.get("width", 1280),
                   height=p.get("height", 800), deviceScaleFactor=1, mobile=False)
            b.evaluate("document.body && delete document.body.dataset.ready")
            b.page("Page.navigate", url=base + p["hash"])
            # Navigation between two hashes of one page does not reload it: the UI's router
            # marks each view ready when its data is on the page.
            expect = p.get("expect", [])
            check = ("document.body && document.body.dataset.ready && %s" % " && ".join(
                ["document.body.innerText.includes(%s)" % json.dumps(t) for t in expect] or ["true"]))
            ok = wait_for(b, check, p.get("timeout", 20))
            if ok and p.get("click"):
                clicked = b.evaluate("(() => { const e = document.querySelector(%s); if (!e) return false; "
                                     "e.dispatchEvent(new MouseEvent('click', {bubbles: true})); return true; })()"
                                     % json.dumps(p["click"]))
                ok = bool(clicked)
                after = p.get("expect_after_click", [])
                if ok and after:
                    ok = wait_for(b, " && ".join("document.body.innerText.includes(%s)" % json.dumps(t) for t in after), 15)
            # Interactions, each followed by a condition that must come true.
            failed = []
            for act in p.get("actions", []) if ok else []:
                if "drag" in act:
                    box = b.evaluate("(() => { const r = document.querySelector(%s).getBoundingClientRect(); "
                                     "return [r.left, r.top, r.width, r.height]; })()" % json.dumps(act["drag"]))
                    y = box[1] + box[3] / 2
                    x0, x1 = box[0] + box[2] * act["from"], box[0] + box[2] * act["to"]
                    b.page("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y)
                    b.page("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y, button="left", clickCount=1)
                    for i in range(1, 11):
                        b.page("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + (x1 - x0) * i / 10, y=y, button="left", buttons=1)
                    b.page("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y, button="left", clickCount=1)
                elif "key" in act:
                    b.evaluate("document.querySelector(%s).focus()" % json.dumps(act["focus"]))
                    b.page("Input.dispatchKeyEvent", type="keyDown", key=act["key"], code=act["key"],
                           windowsVirtualKeyCode=act.get("keycode", 0))
                    b.page("Input.dispatchKeyEvent", type="keyUp", key=act["key"], code=act["key"],
                           windowsVirtualKeyCode=act.get("keycode", 0))
                elif "click" in act:
                    # A real click at the element's centre (SVG links have no click()).
                    box = b.evaluate("(() => { const e = document.querySelector(%s); e.scrollIntoView({block: 'center'}); "
                                     "const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
                                     % json.dumps(act["click"]))
                    for kind in ("mousePressed", "mouseReleased"):
                        b.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)
                if not wait_for(b, act["then"], 15):
                    failed.append(act["then"])
            ok = ok and not failed
            time.sleep(p.get("settle", 0.5))
            text = b.evaluate("document.body.innerText") or ""
            missing = [t for t in expect + p.get("expect_after_click", []) if t not in text]
            shot = b.page("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            path = os.path.join(out_dir, p["name"] + ".png")
            with open(path, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            result["pages"].append({"name": p["name"], "ok": ok and not missing, "missing": missing + failed,
                                    "url": b.evaluate("location.href"), "text": text[:4000],
                                    "screenshot": path})
        # Drain what arrived after the last command.
        b.ws.sock.settimeout(0.5)
        try:
            while True:
                b.events.append(json.loads(b.ws.recv()))
        except (socket.timeout, IOError):
            pass
    finally:
        for m in b.events:
            method, params = m.get("method"), m.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                result["console_errors"].append("exception: %s %s" % (
                    d.get("text"), (d.get("exception") or {}).get("description", "")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result["console_errors"].append("console.%s: %s" % (params["type"], " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", []))))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                e = params["entry"]
                result["console_errors"].append("log: %s %s" % (e.get("text"), e.get("url", "")))
            elif method == "Network.requestWillBeSent":
                url = params.get("request", {}).get("url", "")
                u = urllib.parse.urlparse(url)
                if u.scheme in ("http", "https", "ws", "wss") and u.netloc != host:
                    result["requests_off_host"].append(url)
        b.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
