//! The API token: 32 random bytes, hex, in `STATE_DIR/api-token`, readable by root only. The
//! agent makes it at first start and keeps it across restarts; the CLI reads it when run as root.
//! Anyone who can read the file can command the agent, so a file another user could read or
//! replace is not trusted: it is replaced by a new token (and the old one stops working).
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const TOKEN_FILE: &str = "api-token";
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the API token {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("writing the API token {0}: {1}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("the API token {0} is not {n} hex digits", n = TOKEN_BYTES * 2)]
    Malformed(PathBuf),
    #[error("no randomness for the API token: {0}")]
    Random(String),
}

pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// The token of the agent whose state directory this is, made (0600, owned by the agent's user)
/// when absent or untrustworthy.
pub fn load_or_create(state_dir: &Path) -> Result<String, TokenError> {
    let path = token_path(state_dir);
    match check_existing(&path) {
        Ok(Some(token)) => return Ok(token),
        Ok(None) => {}
        Err(why) => tracing::warn!(file = %path.display(), %why, "replacing the API token"),
    }
    let mut raw = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = hex::encode(raw);
    let tmp = state_dir.join(format!(".{TOKEN_FILE}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        // rename replaces whatever is at `path` (a symlink included) without following it.
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TokenError::Write(path.clone(), e)
    })?;
    tracing::info!(file = %path.display(), "made a new API token");
    Ok(token)
}

/// `Ok(None)`: no file. `Err(why)`: a file that must not be trusted.
fn check_existing(path: &Path) -> Result<Option<String>, String> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it without following links: {e}")),
    };
    let meta = f.metadata().map_err(|e| e.to_string())?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != euid {
        return Err(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:o} lets other users read or write it",
            meta.mode() & 0o777
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut { f }, &mut text).map_err(|e| e.to_string())?;
    parse(text.trim())
        .map(Some)
        .ok_or_else(|| "malformed".to_string())
}

fn parse(text: &str) -> Option<String> {
    (text.len() == TOKEN_BYTES * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// The CLI's read: the token in `path`, or why not (typically: not root).
pub fn read(path: &Path) -> Result<String, TokenError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| TokenError::Read(path.to_path_buf(), e))?;
    parse(text.trim()).ok_or_else(|| TokenError::Malformed(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_root_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create(dir.path()).unwrap();
        let meta = std::fs::metadata(token_path(dir.path())).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(t1.len(), 64);
        assert_eq!(
            load_or_create(dir.path()).unwrap(),
            t1,
            "kept across starts"
        );
        assert_eq!(read(&token_path(dir.path())).unwrap(), t1);
        assert_ne!(
            load_or_create(tempfile::tempdir().unwrap().path()).unwrap(),
            t1
        );
    }

    #[test]
    fn an_untrustworthy_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        let t1 = load_or_create(dir.path()).unwrap();
        // Readable by others: the token may have leaked.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t2 = load_or_create(dir.path()).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "the new one is root-only"
        );
        // A symlink to a file someone else chose: replaced, the target untouched.
        let other = dir.path().join("other");
        std::fs::write(&other, format!("{}\n", "a".repeat(64))).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        let t3 = load_or_create(dir.path()).unwrap();
        assert_ne!(t3, "a".repeat(64));
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&other).unwrap().trim(),
            "a".repeat(64)
        );
        // Garbage: replaced.
        std::fs::write(&path, "short").unwrap();
        let t4 = load_or_create(dir.path()).unwrap();
        assert_eq!(read(&path).unwrap(), t4);
    }
}
