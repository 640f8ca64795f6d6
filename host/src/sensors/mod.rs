//! The sandboxed sensor host.
pub mod cli;
