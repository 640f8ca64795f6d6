//! The agent's state directory holds what no other user may read or change: the store (URLs, SQL,
//! headers of every trace), the API token, the intake key and the compiled-sensor cache with its
//! key. The agent runs with umask 077, so what it creates is 0600/0700; what an older version or
//! an operator left looser is tightened at start (logged), and the directory itself is 0700.
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Subdirectories whose files are tightened too (the sensors directory, possibly inside the state
/// directory, is not: its files are the operator's, checked by `sensors::trust`).
const PRIVATE_SUBDIRS: &[&str] = &["sensor-cache"];

/// Every file the process creates from now on is private to its user. Call before any thread.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates `dir` 0700 (or tightens it) and takes group and other access from the files in it
/// and its private subdirectories. Symlinks are left alone (never followed).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    tighten(dir)?;
    for f in std::fs::read_dir(dir)?.flatten() {
        let Ok(meta) = f.path().symlink_metadata() else {
            continue;
        };
        if meta.is_file() {
            tighten(&f.path())?;
        }
    }
    for sub in PRIVATE_SUBDIRS {
        let d = dir.join(sub);
        let Ok(meta) = d.symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        tighten(&d)?;
        for f in std::fs::read_dir(&d)?.flatten() {
            if f.path().symlink_metadata().is_ok_and(|m| m.is_file()) {
                tighten(&f.path())?;
            }
        }
    }
    Ok(())
}

/// Removes every group and other permission bit; logs what changed.
fn tighten(path: &Path) -> std::io::Result<()> {
    let meta = path.symlink_metadata()?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let new = mode & !0o077;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    tracing::info!(path = %path.display(), old = format!("{mode:o}"), new = format!("{new:o}"),
        "state: made private");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_state_directory_and_its_files_become_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("zerostep.db");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cache = dir.join("sensor-cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        let entry = cache.join("a.cwasm");
        std::fs::write(&entry, b"x").unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o664)).unwrap();
        let sensors = dir.join("sensors");
        std::fs::create_dir(&sensors).unwrap();
        std::fs::set_permissions(&sensors, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A symlink to a file elsewhere is not followed.
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&entry), 0o600);
        assert_eq!(
            mode(&sensors),
            0o755,
            "the operator's sensors directory is left"
        );
        assert_eq!(mode(&outside), 0o644, "the symlink was not followed");

        let fresh = root.path().join("a/b");
        prepare(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
