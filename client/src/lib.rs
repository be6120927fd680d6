//! Async Rust client for Ordo: connect to a broker, declare topics, publish
//! (optionally confirmed), and subscribe to wildcard patterns as a `Stream`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordo_client::Error> {
//! use futures_util::StreamExt;
//! use ordo_client::{Client, ClientOptions, Event, Ordering};
//!
//! let client = Client::connect("127.0.0.1:7411", ClientOptions::default()).await?;
//! client.declare("ticks", Ordering::Fifo, false).await?;
//! let mut sub = client.subscribe("ticks").await?;
//! client.publish_confirmed("ticks", "tick 1").await?;
//! if let Some(Ok(Event::Message(m))) = sub.next().await {
//!     println!("{} from {}", String::from_utf8_lossy(&m.payload), m.origin);
//! }
//! # Ok(()) }
//! ```
//!
//! Causal topics: the client merges the causal context of every delivery it
//! receives and attaches it to its next publish, so "received m1, then
//! published m2" orders m2 after m1 even across brokers (DESIGN.md "Causal").
//!
//! Back-pressure: each subscription buffers a bounded number of events and
//! payload bytes ([`ClientOptions`]). When one is full the connection stops
//! reading the socket, so the broker's slow-consumer policy applies instead
//! of this process growing. Answers travel on the same socket behind
//! deliveries: a task that awaits an answer (`publish_confirmed`, `declare`,
//! `flush`) while it is also the only reader of a subscription that may
//! fill should read that subscription from another task, or the answer
//! waits until [`ClientOptions::request_timeout`] turns it into
//! [`Error::Timeout`].
//!
//! TLS: set [`ClientOptions::tls`] to a [`TlsOptions`] naming the CA that
//! signed the broker's certificate (and a client certificate for a broker
//! that requires one); the broker must listen with `--tls-cert`.

mod client;
mod connection;
mod error;
mod subscription;
mod tls;

pub use client::{Client, ClientOptions, ClientStats, Confirmation, ServerInfo};
pub use error::Error;
pub use ordo_wire::client::{
    ClusterView, ErrorCode, Limits, MembershipState, TopicInfo, ViewStatus,
};
pub use ordo_wire::{CausalContext, GlobalSeq, Incarnation, NodeId, Ordering, Origin, Seq, ViewId};
pub use subscription::{Discontinuity, Event, Message, Subscription};
pub use tls::TlsOptions;
