// zerostep login: the token travels in the fragment (never sent to a server or written to a log)
// or the form, and is traded once for a session kept in this origin's localStorage (not shared
// with other ports of the host, as a cookie would be). The UI sends it as a bearer credential.
"use strict";

async function login(token) {
  const r = await fetch("/api/v1/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: token.trim() }),
  });
  if (r.ok) {
    localStorage.setItem("zerostep_session", (await r.json()).session);
    location.replace("/");
    return;
  }
  document.getElementById("err").textContent = r.status === 401 ? "Wrong token." : "Login failed: " + r.status;
}

const m = location.hash.match(/^#token=([0-9a-fA-F]+)$/);
if (m) {
  history.replaceState(null, "", "/login");
  login(m[1]);
}
document.getElementById("f").addEventListener("submit", (e) => {
  e.preventDefault();
  login(document.getElementById("t").value);
});
