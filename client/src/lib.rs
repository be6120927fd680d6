//! Async Rust client for Ordo.
