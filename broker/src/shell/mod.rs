//! The I/O shell: sockets, the engine driver task, and what moves work between them.

pub mod driver;
pub mod transport;
