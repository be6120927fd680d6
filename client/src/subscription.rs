//! Subscriptions as streams of delivered messages and discontinuity events.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use ordo_wire::client::Delivery;
use ordo_wire::{CausalContext, GlobalSeq, Ordering, Origin, Seq, ViewId};
use tokio::sync::mpsc;

use crate::connection::{ByteBudget, Queued, Shared};
use crate::error::Error;
use crate::Client;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message on a matching topic.
    Message(Message),
    /// Messages may be missing here: the broker moved between views
    /// (DESIGN.md "Views").
    Discontinuity(Discontinuity),
}

/// A delivered message and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// The topic's ordering.
    pub ordering: Ordering,
    /// The bytes as published.
    pub payload: Bytes,
    /// The publishing connection's id at the origin broker.
    pub publisher: u64,
    /// The broker (and its incarnation) the message was published through.
    pub origin: Origin,
    /// The origin broker's sequence number for this message, per incarnation.
    pub seq: Seq,
    /// The causal context after this message; empty on non-causal topics.
    pub context: CausalContext,
    /// The message's position in its topic's total order; total topics only.
    pub gseq: Option<GlobalSeq>,
}

impl Message {
    pub(crate) fn from_delivery(d: Delivery) -> Message {
        Message {
            topic: d.topic,
            ordering: d.ordering,
            payload: d.payload,
            publisher: d.publisher,
            origin: d.origin,
            seq: d.seq,
            context: d.context,
            gseq: d.gseq,
        }
    }
}

/// The broker changed views and messages between them may be missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discontinuity {
    /// The view the subscription was in.
    pub from_view: ViewId,
    /// The view it is in now.
    pub to_view: ViewId,
    /// The broker's explanation.
    pub reason: String,
}

/// A confirmed subscription: a [`Stream`] of [`Event`]s.
///
/// The stream ends after yielding one `Err` when the connection fails, or
/// with `None` after [`Client::close`]. Dropping it unsubscribes. Events wait
/// in a channel bounded in events and in payload bytes
/// ([`crate::ClientOptions::subscription_capacity`] and
/// [`crate::ClientOptions::subscription_bytes`]); when it is full the
/// connection stops reading the socket, so a subscriber that does not keep up is eventually disconnected
/// by the broker as a slow consumer rather than growing this process.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) sid: u64,
    pub(crate) pattern: String,
    pub(crate) rx: mpsc::Receiver<Queued>,
    /// The payload bytes waiting in `rx`, given back as events are taken.
    pub(crate) bytes: Arc<ByteBudget>,
    pub(crate) shared: Arc<Shared>,
    /// Keeps the connection open while the subscription lives.
    pub(crate) client: Client,
    /// Set once the broker was told (or must not be told) to unsubscribe.
    pub(crate) unsubscribed: bool,
    /// Set once the stream has ended.
    pub(crate) done: bool,
}

impl Subscription {
    /// The pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The subscription's id on this connection.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// The next event if one is already queued, without waiting; `None`
    /// when nothing is (the end of the stream, too, is reported by the
    /// [`Stream`]). Lets a consumer drain a burst in one wake-up.
    pub fn try_next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let q = self.rx.try_recv().ok()?;
        self.bytes.release(q.bytes);
        Some(q.event)
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(q)) => {
                this.bytes.release(q.bytes);
                Poll::Ready(Some(Ok(q.event)))
            }
            Poll::Ready(None) => {
                // The connection dropped our sender: it has ended. Say why once.
                this.done = true;
                match this.shared.closed() {
                    Some(Error::Closed) | None => Poll::Ready(None),
                    Some(e) => Poll::Ready(Some(Err(e))),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.unsubscribed {
            let req = self.client.next_id();
            self.shared.remove_subscription(self.sid, Some(req));
        }
    }
}
