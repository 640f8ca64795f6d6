//! `zerostep agent`: wires the stages together and runs until SIGINT/SIGTERM.
use anyhow::Result;

use crate::cli::AgentArgs;

pub fn run(_args: AgentArgs) -> Result<()> {
    anyhow::bail!("agent: not wired yet")
}
