//! Subscriptions as streams of delivered messages and discontinuity events.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use ordo_wire::client::Delivery;
use ordo_wire::{CausalContext, GlobalSeq, Ordering, Origin, Seq, ViewId};
use tokio::sync::mpsc;

use crate::connection::{Budget, Queued, Shared};
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
/// (in batches, one per read of the socket) in a channel bounded in events and in payload bytes
/// ([`crate::ClientOptions::subscription_capacity`] and
/// [`crate::ClientOptions::subscription_bytes`]); when it is full the
/// connection stops reading the socket, so a subscriber that does not keep up is eventually disconnected
/// by the broker as a slow consumer rather than growing this process.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) sid: u64,
    pub(crate) pattern: String,
    pub(crate) rx: mpsc::Receiver<Queued>,
    /// The batch being handed out (taken off `rx`).
    pub(crate) current: std::vec::IntoIter<Event>,
    /// What `current` holds of the budgets (events, bytes), given back with
    /// its last event.
    pub(crate) held: (usize, usize),
    /// The events waiting in `rx` and `current`.
    pub(crate) events: Arc<Budget>,
    /// The payload bytes waiting in `rx` and `current`.
    pub(crate) bytes: Arc<Budget>,
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
        if let Some(e) = self.next_buffered() {
            return Some(e);
        }
        let q = self.rx.try_recv().ok()?;
        self.start_batch(q)
    }

    /// The next event of the current batch; the batch's budget is given
    /// back with its last event.
    fn next_buffered(&mut self) -> Option<Event> {
        let e = self.current.next()?;
        if self.current.len() == 0 {
            let (events, bytes) = std::mem::take(&mut self.held);
            self.events.release(events);
            self.bytes.release(bytes);
        }
        Some(e)
    }

    /// Makes `q` the current batch and takes its first event.
    fn start_batch(&mut self, q: Queued) -> Option<Event> {
        self.current = q.events.into_iter();
        self.held = (q.count, q.bytes);
        if self.current.len() == 0 {
            // Never sent empty; give the charge back all the same.
            let (events, bytes) = std::mem::take(&mut self.held);
            self.events.release(events);
            self.bytes.release(bytes);
        }
        self.next_buffered()
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(e) = this.next_buffered() {
            return Poll::Ready(Some(Ok(e)));
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(q)) => {
                    if let Some(e) = this.start_batch(q) {
                        return Poll::Ready(Some(Ok(e)));
                    }
                }
                Poll::Ready(None) => {
                    // The connection dropped our sender: it has ended. Say why once.
                    this.done = true;
                    return match this.shared.closed() {
                        Some(Error::Closed) | None => Poll::Ready(None),
                        Some(e) => Poll::Ready(Some(Err(e))),
                    };
                }
                Poll::Pending => return Poll::Pending,
            }
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
