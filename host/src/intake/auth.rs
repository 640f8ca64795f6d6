//! How a tracer knows it is talking to this agent and not to whoever bound the intake's name
//! while the agent was away (an abstract socket name is first come, first served).
//!
//! Each injected process gets, in its bootstrap text, a secret only the agent can derive:
//! `HMAC(key, "<root pid> <root start time>")` under a root-only key in the state directory, so
//! a restarted agent knows the secrets of tracers injected before, and one process's secret (its
//! owner can read its memory) says nothing about another's. On every connect the tracer sends a
//! fresh nonce and accepts nothing (no `load`, no `upgrade`, no command) until the agent answers
//! `HMAC(secret, "zerostep agent v1 " + nonce)`; it also checks that the listener's uid
//! (`SO_PEERCRED`) is the agent's as seen from its user namespace. The agent answers only for a
//! root that is the peer itself or one of its ancestors with the same start time, so a traced
//! process cannot have it sign for an unrelated one (a relay through a squatted name).
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY_FILE: &str = "intake.key";
const KEY_BYTES: usize = 32;
/// How far up the process tree a tracer's root may be (as the peer registry walks).
const MAX_ANCESTRY: usize = 16;

/// The agent's intake key. Debug never shows it.
#[derive(Clone)]
pub struct IntakeKey([u8; KEY_BYTES]);

impl std::fmt::Debug for IntakeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntakeKey(..)")
    }
}

impl IntakeKey {
    /// A key for this intake only (tests, or an agent without a state directory).
    pub fn random() -> std::io::Result<IntakeKey> {
        let mut k = [0u8; KEY_BYTES];
        getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(IntakeKey(k))
    }

    /// `STATE_DIR/intake.key`, made 0600 when absent; a file another user could read or that is
    /// not ours is replaced (tracers injected under the old key then re-bootstrap).
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<IntakeKey> {
        let path = state_dir.join(KEY_FILE);
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            let meta = f.metadata()?;
            let trusted = meta.is_file()
                && meta.uid() == nix::unistd::geteuid().as_raw()
                && meta.mode() & 0o077 == 0;
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut { f }, &mut raw)?;
            if trusted && raw.len() == KEY_BYTES {
                let mut k = [0u8; KEY_BYTES];
                k.copy_from_slice(&raw);
                return Ok(IntakeKey(k));
            }
            tracing::warn!(file = %path.display(), "intake key not trusted (owner, mode or size); making a new one");
        }
        let key = IntakeKey::random()?;
        let tmp = state_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&key.0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(key)
    }

    /// The secret handed to the process tree rooted at (`pid`, `start_time`), hex.
    pub fn secret(&self, pid: u32, start_time: u64) -> String {
        hmac_hex(
            &self.0,
            format!("zerostep intake secret v1 {pid} {start_time}").as_bytes(),
        )
    }
}

/// What a tracer sends with its nonce to show it holds the secret of its root.
pub fn tracer_tag(secret: &str, nonce: &str) -> String {
    hmac_hex(
        secret.as_bytes(),
        format!("zerostep tracer v1 {nonce}").as_bytes(),
    )
}

/// Equal without an early exit.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The agent's answer to a tracer's nonce.
pub fn proof(secret: &str, nonce: &str) -> String {
    hmac_hex(
        secret.as_bytes(),
        format!("zerostep agent v1 {nonce}").as_bytes(),
    )
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            hex::encode(m.finalize().into_bytes())
        }
        // HMAC accepts keys of any length; never reached, and an empty proof never verifies.
        Err(_) => String::new(),
    }
}

/// (pid, start time) of a process, as the bootstrap's `root` carries it.
pub fn process_root(pid: u32) -> Option<(u32, u64)> {
    Some((pid, stat(pid)?.1))
}

/// Whether `root` is `peer` itself or one of its ancestors, with the same start time.
pub fn is_self_or_ancestor(peer: u32, root: (u32, u64)) -> bool {
    let mut cur = peer;
    for _ in 0..MAX_ANCESTRY {
        let Some((ppid, start)) = stat(cur) else {
            return false;
        };
        if cur == root.0 {
            return start == root.1;
        }
        if ppid <= 1 {
            return false;
        }
        cur = ppid;
    }
    false
}

fn stat(pid: u32) -> Option<(u32, u64)> {
    let st = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some((u32::try_from(st.ppid).ok()?, st.starttime))
}

/// The uid `uid` (of the agent's user namespace) has inside `pid`'s user namespace: what the
/// tracer's `SO_PEERCRED` check will see for the agent's listener. Unmapped: the overflow uid.
pub fn uid_seen_by(pid: u32, uid: u32) -> u32 {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
    for line in map.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [inside, outside, count] = f[..] {
            let u = u64::from(uid);
            if u >= outside && u < outside.saturating_add(count) {
                if let Ok(v) = u32::try_from(inside + (u - outside)) {
                    return v;
                }
            }
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_per_root_and_stable_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = IntakeKey::load_or_create(dir.path()).unwrap();
        let k2 = IntakeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(
            k1.secret(10, 5),
            k2.secret(10, 5),
            "same key across restarts"
        );
        assert_ne!(k1.secret(10, 5), k1.secret(10, 6));
        assert_ne!(k1.secret(10, 5), k1.secret(11, 5));
        assert_ne!(IntakeKey::random().unwrap().secret(10, 5), k1.secret(10, 5));
        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_ne!(proof("s", "n1"), proof("s", "n2"));
        assert_ne!(format!("{k1:?}"), format!("{:?}", k1.0));
    }

    #[test]
    fn roots_must_be_self_or_ancestors() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mine = process_root(me).unwrap();
        assert!(is_self_or_ancestor(me, mine));
        assert!(is_self_or_ancestor(child.id(), mine));
        assert!(!is_self_or_ancestor(me, process_root(child.id()).unwrap()));
        assert!(!is_self_or_ancestor(me, (mine.0, mine.1 + 1)), "start time");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(uid_seen_by(me, 0), 0, "same user namespace");
    }
}
