use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

pub fn check(_file: &Path) -> Result<ExitCode> {
    anyhow::bail!("not yet")
}

pub fn list(_agent: SocketAddr, _json: bool) -> Result<ExitCode> {
    anyhow::bail!("not yet")
}
