//! The Python text actually handed to `PyRun_SimpleString`, and the handshake that proves it ran.
//!
//! The wrapper runs the caller's code once per process — an idempotency registry on `sys` keyed by a
//! hash of the code — catches every `BaseException` (a pending call that fails would turn the request
//! being served into a 500), and then sends `NONCE PID STATUS` as one datagram to an abstract Unix
//! socket the injector bound for this injection. Nothing is written to the target's filesystem, and
//! the only names it touches in `__main__` are removed again.
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The attribute on `sys` holding `{code_key: nonce}` for every code already run in this process.
pub const REGISTRY_ATTR: &str = "_zerostep_injected";

/// What the wrapper reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The code ran now.
    Ran,
    /// The same code had already run in this process; it was not run again.
    AlreadyPresent,
    /// The code raised; the message names the exception.
    Raised(String),
}

/// Stable key of a piece of code: the same code injected twice is recognised.
pub fn code_key(code: &str) -> String {
    hex::encode(&Sha256::digest(code.as_bytes())[..12])
}

/// The wrapper text for `code`, reporting to the abstract socket `socket_name` with `nonce`.
pub fn render(code: &str, nonce: &str, socket_name: &str) -> String {
    format!(
        r#"def __zerostep_inject():
    import sys
    key = "{key}"
    status = "ran"
    try:
        reg = sys.__dict__.get("{reg}")
        if reg is None:
            reg = {{}}
            setattr(sys, "{reg}", reg)
        if key in reg:
            status = "already"
        else:
            reg[key] = "{nonce}"
            try:
                src = bytes.fromhex("{hex}").decode("utf-8")
                exec(compile(src, "<zerostep-inject>", "exec"), {{"__name__": "__zerostep_inject__"}})
            except BaseException:
                reg.pop(key, None)
                raise
    except BaseException as e:
        status = "raised " + type(e).__name__ + ": " + str(e)[:300]
    try:
        import _socket, os
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            s.sendto(("{nonce} %d %s" % (os.getpid(), status)).encode("utf-8", "replace"), "\x00{sock}")
        finally:
            s.close()
    except BaseException:
        pass
try:
    __zerostep_inject()
finally:
    del __zerostep_inject
"#,
        key = code_key(code),
        reg = REGISTRY_ATTR,
        nonce = nonce,
        hex = hex::encode(code.as_bytes()),
        sock = socket_name,
    )
}

/// The injector's end of the handshake: an abstract datagram socket unique to one injection.
pub struct Handshake {
    sock: UnixDatagram,
    pub name: String,
    pub nonce: String,
    /// Reports received so far (pid, outcome).
    pub received: Vec<(u32, Outcome)>,
}

impl Handshake {
    /// A handshake socket `target_pid` can reach: bound inside its network namespace when that
    /// differs from the injector's (a container), since abstract names are per namespace.
    pub fn for_target(target_pid: u32) -> std::io::Result<Handshake> {
        use crate::discover::namespaces;
        let theirs = namespaces::ns_inode(target_pid, "net");
        if theirs == 0 || theirs == namespaces::agent_net() {
            return Handshake::new();
        }
        namespaces::in_netns_of(target_pid, Handshake::new)
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    pub fn new() -> std::io::Result<Handshake> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
        let nonce = hex::encode(&raw[..8]);
        let name = format!(
            "zerostep-inject-{}-{}",
            std::process::id(),
            hex::encode(&raw[8..])
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let sock = UnixDatagram::bind_addr(&addr)?;
        Ok(Handshake {
            sock,
            name,
            nonce,
            received: Vec::new(),
        })
    }

    /// Collects reports until one arrived or `deadline` passed; returns the first outcome.
    pub fn wait(&mut self, deadline: Instant) -> Option<Outcome> {
        if let Some((_, o)) = self.received.first() {
            return Some(o.clone());
        }
        let mut buf = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // One non-blocking look: the datagram may have arrived just now.
                let _ = self.sock.set_nonblocking(true);
                self.drain(&mut buf);
                let _ = self.sock.set_nonblocking(false);
                return self.received.first().map(|(_, o)| o.clone());
            }
            let _ = self
                .sock
                .set_read_timeout(Some(left.max(Duration::from_micros(100))));
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    self.accept(&buf[..n]);
                    if let Some((_, o)) = self.received.first() {
                        return Some(o.clone());
                    }
                }
                Err(_) => continue,
            }
        }
    }

    /// Reads whatever else arrived (a second report would mean the code ran twice).
    pub fn drain_now(&mut self) {
        let mut buf = [0u8; 1024];
        let _ = self.sock.set_nonblocking(true);
        self.drain(&mut buf);
        let _ = self.sock.set_nonblocking(false);
    }

    fn drain(&mut self, buf: &mut [u8]) {
        while let Ok(n) = self.sock.recv(buf) {
            let msg = buf[..n].to_vec();
            self.accept(&msg);
        }
    }

    fn accept(&mut self, msg: &[u8]) {
        if let Some(r) = parse_report(&String::from_utf8_lossy(msg), &self.nonce) {
            self.received.push(r);
        }
    }
}

/// `NONCE PID STATUS`; anything with another nonce is ignored (a stray or forged datagram).
pub fn parse_report(msg: &str, nonce: &str) -> Option<(u32, Outcome)> {
    let mut parts = msg.splitn(3, ' ');
    if parts.next()? != nonce {
        return None;
    }
    let pid = parts.next()?.parse().ok()?;
    let status = parts.next()?;
    let outcome = match status {
        "ran" => Outcome::Ran,
        "already" => Outcome::AlreadyPresent,
        other => Outcome::Raised(other.strip_prefix("raised ").unwrap_or(other).to_string()),
    };
    Some((pid, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_and_foreign_nonces_are_ignored() {
        assert_eq!(parse_report("abc 42 ran", "abc"), Some((42, Outcome::Ran)));
        assert_eq!(
            parse_report("abc 42 already", "abc"),
            Some((42, Outcome::AlreadyPresent))
        );
        assert_eq!(
            parse_report("abc 7 raised ValueError: x y", "abc"),
            Some((7, Outcome::Raised("ValueError: x y".into())))
        );
        assert_eq!(parse_report("xyz 42 ran", "abc"), None);
    }

    #[test]
    fn wrapper_embeds_code_as_hex() {
        let w = render("print('\"hi\"')", "n0nce", "sock");
        assert!(w.contains(&hex::encode("print('\"hi\"')")));
        assert!(w.contains("\\x00sock"));
        assert_eq!(code_key("a"), code_key("a"));
        assert_ne!(code_key("a"), code_key("b"));
    }

    #[test]
    fn handshake_receives_its_own_nonce() {
        let mut h = Handshake::new().unwrap();
        let peer = UnixDatagram::unbound().unwrap();
        let addr = SocketAddr::from_abstract_name(h.name.as_bytes()).unwrap();
        peer.send_to_addr(b"other 1 ran", &addr).unwrap();
        peer.send_to_addr(format!("{} 9 ran", h.nonce).as_bytes(), &addr)
            .unwrap();
        let got = h.wait(Instant::now() + Duration::from_secs(2));
        assert_eq!(got, Some(Outcome::Ran));
        assert_eq!(h.received, vec![(9, Outcome::Ran)]);
    }
}
