//! Whose sensor files the agent runs. A sensor decides which processes get code injected (as root)
//! and sees every span, so a file that a user other than the agent's could have written, or that
//! sits in a directory such a user could add files to, is refused with the reason (shown by
//! `zerostep sensors list`). The checks are made on the opened file, so what is read is what was
//! checked; the read stops past the size limit.
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug)]
pub enum Untrusted {
    Io(std::io::Error),
    /// Why it is refused, for the operator.
    Refused(String),
}

/// Owned by root or by the agent's user, and writable by nobody else.
fn refusal(what: &str, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let euid = nix::unistd::geteuid().as_raw();
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != euid {
        return Some(format!(
            "{what} {} is owned by uid {}, not root: refused (chown root)",
            path.display(),
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "{what} {} is writable by {} (mode {mode:o}): refused (chmod go-w)",
            path.display(),
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ));
    }
    None
}

/// The bytes of a sensor file the agent may run, at most `max_bytes + 1` of them (the canary
/// reports a file over the limit).
pub fn read_trusted(path: &Path, max_bytes: usize) -> Result<Vec<u8>, Untrusted> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let dir_meta = std::fs::metadata(dir).map_err(Untrusted::Io)?;
    if let Some(r) = refusal("the sensors directory", dir, &dir_meta) {
        return Err(Untrusted::Refused(r));
    }
    let f = std::fs::File::open(path).map_err(Untrusted::Io)?;
    let meta = f.metadata().map_err(Untrusted::Io)?;
    if !meta.is_file() {
        return Err(Untrusted::Refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if let Some(r) = refusal("the sensor file", path, &meta) {
        return Err(Untrusted::Refused(r));
    }
    let mut bytes = Vec::new();
    f.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(Untrusted::Io)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn writable_by_others_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.wasm");
        std::fs::write(&f, b"abc").unwrap();
        chmod(&f, 0o644);
        chmod(dir.path(), 0o755);
        assert_eq!(read_trusted(&f, 10).unwrap(), b"abc");
        assert_eq!(
            read_trusted(&f, 1).unwrap().len(),
            2,
            "stops past the limit"
        );

        chmod(&f, 0o666);
        let Err(Untrusted::Refused(r)) = read_trusted(&f, 10) else {
            panic!("a world-writable file was read");
        };
        assert!(r.contains("every user") && r.contains("s.wasm"), "{r}");
        chmod(&f, 0o664);
        let Err(Untrusted::Refused(r)) = read_trusted(&f, 10) else {
            panic!("a group-writable file was read");
        };
        assert!(r.contains("its group"), "{r}");
        chmod(&f, 0o644);

        chmod(dir.path(), 0o1777);
        let Err(Untrusted::Refused(r)) = read_trusted(&f, 10) else {
            panic!("a file in a world-writable directory was read");
        };
        assert!(r.contains("sensors directory"), "{r}");
        chmod(dir.path(), 0o700);

        // Owned by another user.
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let Err(Untrusted::Refused(r)) = read_trusted(&f, 10) else {
            panic!("another user's file was read");
        };
        assert!(r.contains("uid 65534"), "{r}");
    }
}
