//! zerostep: the agent's library. Modules in the order data flows through them (see the design):
//! discover → sensors (match) → inject → [traced process] → intake → pipeline → sinks.
pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod discover;
pub mod export;
pub mod inject;
pub mod intake;
pub mod orchestrate;
pub mod pipeline;
pub mod sensors;
pub mod span;
pub mod state_dir;
pub mod store;
