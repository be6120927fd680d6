//! Unit tests of the engine as a whole: two or three engines wired by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]
