//! Ordo's broker: the sans-IO group engine, the I/O shell around it, and
//! (behind the `sim` feature) the deterministic simulator.
//!
//! Layout follows DESIGN.md: `engine/` is the protocol core (membership,
//! reliability, delivery layers); `server/` serves clients over TCP;
//! `shell/` owns sockets and drives the engine; `metrics` and `http` expose
//! it to operators.

pub mod config;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod server;
pub mod shell;
#[cfg(feature = "sim")]
pub mod sim;
pub mod subs;
pub mod testkit;
pub mod topics;
