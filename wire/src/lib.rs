//! Every byte format Ordo speaks: the client protocol over TCP and the
//! inter-broker multicast frames. Pure encode/decode over `bytes`; no I/O.
//!
//! Decoders never panic and never allocate more than the limits they are
//! given: a length is checked before anything is reserved for it.

pub mod buf;
pub mod client;
mod error;
pub mod group;
pub mod key;
pub mod types;

pub use error::{KeyError, WireError};
pub use types::{
    CausalContext, GlobalSeq, Incarnation, NodeId, Ordering, Origin, ParseOrderingError, Seq,
    ViewId,
};
