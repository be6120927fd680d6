//! Delivery layers: turn each origin's in-order stream of messages into
//! deliveries, in the order the topic's ordering requires.
//!
//! Reliability hands every message to [`Delivery::accept`] exactly once, in
//! its origin's sequence order. Each ordering gets its layer through
//! [`Layer`]; today every ordering is served FIFO, and the causal and total
//! layers (a later issue) slot into [`Delivery::layer_for`] without touching
//! reliability.

mod fifo;

use std::collections::VecDeque;
use std::sync::Arc;

use ordo_wire::group::DataMsg;
use ordo_wire::{CausalContext, Ordering, Origin, Seq};

use super::topics::TopicCache;
use super::{Delivered, Event};
pub(crate) use fifo::Fifo;

/// A complete message (fragments joined) in its origin's order.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) origin: Origin,
    /// The sequence number of its first fragment.
    pub(crate) seq: Seq,
    pub(crate) msg: DataMsg,
}

/// One ordering's delivery layer.
pub(crate) trait Layer {
    /// Takes a complete message; pushes whatever may now be delivered.
    fn accept(&mut self, ready: Ready, topics: &mut TopicCache, out: &mut VecDeque<Event>);
}

/// Every ordering's layer plus the shared reassembly in front of them.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    fifo: Fifo,
}

impl Delivery {
    /// Takes the next message (or fragment) of `origin`'s stream. Returns the
    /// number of messages delivered.
    pub(crate) fn accept(
        &mut self,
        origin: Origin,
        msg: DataMsg,
        topics: &mut TopicCache,
        out: &mut VecDeque<Event>,
    ) -> Result<usize, fifo::ReassemblyError> {
        let Some(ready) = self.fifo.reassemble(origin, msg)? else {
            return Ok(0);
        };
        let before = out.len();
        let layer = self.layer_for(ready.msg.ordering);
        layer.accept(ready, topics, out);
        Ok(out.len() - before)
    }

    /// Forgets a departed origin's partial messages.
    pub(crate) fn forget(&mut self, origin: Origin) {
        self.fifo.forget(origin);
    }

    /// Bytes of fragments waiting for the rest of their message.
    pub(crate) fn reassembly_bytes(&self) -> usize {
        self.fifo.partial_bytes()
    }

    #[cfg(feature = "bug-injection")]
    pub(crate) fn plant_reorder_bug(&mut self) {
        self.fifo.plant_reorder_bug();
    }

    fn layer_for(&mut self, ordering: Ordering) -> &mut dyn Layer {
        match ordering {
            // Causal and total layers are a later issue; until they exist
            // these topics get FIFO, which they also require.
            Ordering::Fifo | Ordering::Causal | Ordering::TotalIsis | Ordering::TotalSeq => {
                &mut self.fifo
            }
        }
    }
}

/// Builds the delivery a subscriber sees.
pub(crate) fn delivered(ready: Ready, topics: &mut TopicCache) -> Delivered {
    let Ready { origin, seq, msg } = ready;
    let context = if msg.ordering == Ordering::Causal {
        let mut ctx = msg.context;
        ctx.observe(origin, seq);
        ctx
    } else {
        CausalContext::new()
    };
    Delivered {
        topic: topics.name(&msg.topic),
        ordering: msg.ordering,
        publisher: msg.publisher,
        origin,
        seq,
        context,
        gseq: None,
        payload: msg.payload,
        published_at_us: msg.published_at_us,
    }
}

/// Wraps a delivery as an event.
pub(crate) fn event(d: Delivered) -> Event {
    Event::Deliver(Arc::new(d))
}
