//! FIFO delivery: each origin's messages in sequence order, fragments joined.
//!
//! Reliability already releases each origin's stream in order, so FIFO
//! delivers a complete message at once; what it owns is reassembly: the
//! fragments of a large message arrive as consecutive sequence numbers and
//! are joined here, one partial message per origin at most. A message is
//! never joined beyond the largest this broker accepts, and all partial
//! messages together stay below a configured bound (see
//! `EngineConfig::max_message` and `reassembly_limit`).

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use ordo_wire::group::DataMsg;
use ordo_wire::{Origin, Seq};

use super::{delivered, event, Layer, Ready};
use crate::engine::topics::TopicCache;
use crate::engine::Event;

/// Why a fragmented message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReassemblyError {
    /// A fragment that does not continue its origin's partial message: the
    /// origin broke the protocol (the stream itself is reliable and ordered).
    #[error("fragment {index} of {count} at seq {seq} does not continue the partial message")]
    OutOfPlace { seq: Seq, index: u32, count: u32 },
    /// The message grows beyond the largest this broker accepts.
    #[error("message at seq {seq} exceeds the maximum message size of {max} bytes")]
    TooLarge { seq: Seq, max: usize },
    /// All partial messages together would exceed the reassembly bound.
    #[error("message at seq {seq} would take reassembly beyond its bound of {limit} bytes")]
    Full { seq: Seq, limit: usize },
}

#[derive(Debug)]
struct Partial {
    first: DataMsg,
    parts: Vec<Bytes>,
    count: u32,
    bytes: usize,
}

/// The FIFO layer and the reassembly every layer shares.
#[derive(Debug)]
pub(crate) struct Fifo {
    partial: BTreeMap<Origin, Partial>,
    partial_bytes: usize,
    /// Largest message joined.
    max_message: usize,
    /// Bound on `partial_bytes`.
    limit: usize,
    /// Planted bug: hold one message back and deliver it after the next.
    #[cfg(feature = "bug-injection")]
    reorder_bug: Option<BTreeMap<Origin, Ready>>,
}

impl Default for Fifo {
    fn default() -> Self {
        Fifo::new(
            crate::engine::config::DEFAULT_MAX_MESSAGE,
            crate::engine::config::DEFAULT_REASSEMBLY_LIMIT,
        )
    }
}

impl Fifo {
    /// Joins messages of up to `max_message` bytes, holding at most `limit`
    /// bytes of partial messages in all.
    pub(crate) fn new(max_message: usize, limit: usize) -> Self {
        Fifo {
            partial: BTreeMap::new(),
            partial_bytes: 0,
            max_message,
            limit,
            #[cfg(feature = "bug-injection")]
            reorder_bug: None,
        }
    }

    /// Adds one unit of `origin`'s stream; returns a message once complete.
    pub(crate) fn reassemble(
        &mut self,
        origin: Origin,
        msg: DataMsg,
    ) -> Result<Option<Ready>, ReassemblyError> {
        let Some(frag) = msg.fragment else {
            if self.partial.contains_key(&origin) {
                self.forget(origin);
                return Err(ReassemblyError::OutOfPlace {
                    seq: msg.seq,
                    index: 0,
                    count: 1,
                });
            }
            return Ok(Some(Ready {
                origin,
                seq: msg.seq,
                msg,
            }));
        };
        let bad = ReassemblyError::OutOfPlace {
            seq: msg.seq,
            index: frag.index,
            count: frag.count,
        };
        if frag.index == 0 {
            if self.partial.contains_key(&origin) {
                self.forget(origin);
                return Err(bad);
            }
            // The rest of the message is dropped with it: its fragments
            // find no partial and are refused as out of place.
            self.check_room(msg.seq, 0, msg.payload.len())?;
            self.partial_bytes += msg.payload.len();
            self.partial.insert(
                origin,
                Partial {
                    bytes: msg.payload.len(),
                    parts: vec![msg.payload.clone()],
                    count: frag.count,
                    first: msg,
                },
            );
            return Ok(None);
        }
        let Some(p) = self.partial.get_mut(&origin) else {
            return Err(bad);
        };
        if p.count != frag.count || p.parts.len() != frag.index as usize {
            self.forget(origin);
            return Err(bad);
        }
        let (first_seq, have) = (p.first.seq, p.bytes);
        if let Err(e) = self.check_room(first_seq, have, msg.payload.len()) {
            self.forget(origin);
            return Err(e);
        }
        let Some(p) = self.partial.get_mut(&origin) else {
            return Err(bad);
        };
        p.parts.push(msg.payload);
        p.bytes += p.parts.last().map_or(0, Bytes::len);
        self.partial_bytes += p.parts.last().map_or(0, Bytes::len);
        if p.parts.len() < p.count as usize {
            return Ok(None);
        }
        let Some(p) = self.partial.remove(&origin) else {
            return Ok(None);
        };
        self.partial_bytes -= p.bytes;
        let mut whole = BytesMut::with_capacity(p.bytes);
        for part in &p.parts {
            whole.extend_from_slice(part);
        }
        let mut first = p.first;
        first.payload = whole.freeze();
        first.fragment = None;
        Ok(Some(Ready {
            origin,
            seq: first.seq,
            msg: first,
        }))
    }

    /// Whether a whole (unfragmented) message of `origin` would be delivered
    /// as it is: no partial message of `origin` waits (else it is out of
    /// place) and no planted bug holds messages back.
    pub(crate) fn passes_through(&self, origin: Origin) -> bool {
        #[cfg(feature = "bug-injection")]
        if self.reorder_bug.is_some() {
            return false;
        }
        self.partial.is_empty() || !self.partial.contains_key(&origin)
    }

    /// Whether `add` more bytes fit a message holding `have` and the bound.
    fn check_room(&self, seq: Seq, have: usize, add: usize) -> Result<(), ReassemblyError> {
        if have.saturating_add(add) > self.max_message {
            return Err(ReassemblyError::TooLarge {
                seq,
                max: self.max_message,
            });
        }
        if self.partial_bytes.saturating_add(add) > self.limit {
            return Err(ReassemblyError::Full {
                seq,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Drops an origin's partial message (it left the view).
    pub(crate) fn forget(&mut self, origin: Origin) {
        if let Some(p) = self.partial.remove(&origin) {
            self.partial_bytes -= p.bytes;
        }
    }

    /// Bytes of fragments waiting.
    pub(crate) fn partial_bytes(&self) -> usize {
        self.partial_bytes
    }

    #[cfg(feature = "bug-injection")]
    pub(crate) fn plant_reorder_bug(&mut self) {
        self.reorder_bug = Some(BTreeMap::new());
    }
}

impl Layer for Fifo {
    fn accept(&mut self, ready: Ready, topics: &mut TopicCache, out: &mut VecDeque<Event>) {
        #[cfg(feature = "bug-injection")]
        if let Some(held) = &mut self.reorder_bug {
            // Swap every pair of consecutive messages of an origin.
            match held.remove(&ready.origin) {
                None => {
                    held.insert(ready.origin, ready);
                    return;
                }
                Some(earlier) => {
                    out.push_back(event(delivered(ready, topics)));
                    out.push_back(event(delivered(earlier, topics)));
                    return;
                }
            }
        }
        out.push_back(event(delivered(ready, topics)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ordo_wire::group::Fragment;
    use ordo_wire::{CausalContext, Ordering};

    fn unit(seq: u64, frag: Option<(u32, u32)>, payload: &'static [u8]) -> DataMsg {
        DataMsg {
            seq: Seq(seq),
            topic: Bytes::from_static(b"t"),
            ordering: Ordering::Fifo,
            safe: false,
            publisher: 9,
            context: CausalContext::new(),
            published_at_us: 0,
            fragment: frag.map(|(index, count)| Fragment { index, count }),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn fragments_are_joined_in_order() {
        let o = Origin::default();
        let mut f = Fifo::default();
        assert!(f
            .reassemble(o, unit(4, Some((0, 3)), b"ab"))
            .unwrap()
            .is_none());
        assert!(f
            .reassemble(o, unit(5, Some((1, 3)), b"cd"))
            .unwrap()
            .is_none());
        assert_eq!(f.partial_bytes(), 4);
        let r = f
            .reassemble(o, unit(6, Some((2, 3)), b"e"))
            .unwrap()
            .unwrap();
        assert_eq!(r.seq, Seq(4));
        assert_eq!(&r.msg.payload[..], b"abcde");
        assert_eq!(f.partial_bytes(), 0);
        assert!(f.reassemble(o, unit(7, None, b"x")).unwrap().is_some());
    }

    #[test]
    fn a_message_beyond_the_maximum_size_is_refused_and_its_rest_dropped() {
        let o = Origin::default();
        let mut f = Fifo::new(5, 100);
        assert!(f
            .reassemble(o, unit(1, Some((0, 4)), b"ab"))
            .unwrap()
            .is_none());
        assert!(f
            .reassemble(o, unit(2, Some((1, 4)), b"cd"))
            .unwrap()
            .is_none());
        assert!(matches!(
            f.reassemble(o, unit(3, Some((2, 4)), b"ef")),
            Err(ReassemblyError::TooLarge {
                seq: Seq(1),
                max: 5
            })
        ));
        assert_eq!(f.partial_bytes(), 0);
        // The last fragment finds no partial message.
        assert!(matches!(
            f.reassemble(o, unit(4, Some((3, 4)), b"g")),
            Err(ReassemblyError::OutOfPlace { .. })
        ));
        // A first fragment alone beyond the maximum.
        assert!(f.reassemble(o, unit(5, Some((0, 2)), b"abcdef")).is_err());
        // Small messages still pass.
        let r = f.reassemble(o, unit(6, Some((0, 2)), b"ab")).unwrap();
        assert!(r.is_none());
        let r = f
            .reassemble(o, unit(7, Some((1, 2)), b"c"))
            .unwrap()
            .unwrap();
        assert_eq!(&r.msg.payload[..], b"abc");
    }

    #[test]
    fn partial_messages_together_stay_below_the_bound() {
        let mut f = Fifo::new(100, 6);
        let o = |n: u32| Origin {
            node: ordo_wire::NodeId(n),
            incarnation: ordo_wire::Incarnation(1),
        };
        // Fragment counts come from the wire: a huge one allocates nothing.
        assert!(f
            .reassemble(o(1), unit(1, Some((0, u32::MAX)), b"abcd"))
            .unwrap()
            .is_none());
        assert!(matches!(
            f.reassemble(o(2), unit(1, Some((0, 2)), b"xyz")),
            Err(ReassemblyError::Full { limit: 6, .. })
        ));
        assert!(f
            .reassemble(o(2), unit(1, Some((0, 2)), b"xy"))
            .unwrap()
            .is_none());
        assert_eq!(f.partial_bytes(), 6);
        assert!(f
            .reassemble(o(1), unit(2, Some((1, u32::MAX)), b"e"))
            .is_err());
        assert_eq!(f.partial_bytes(), 2);
    }

    #[test]
    fn a_fragment_out_of_place_is_an_error_not_a_panic() {
        let o = Origin::default();
        let mut f = Fifo::default();
        assert!(f.reassemble(o, unit(1, Some((1, 3)), b"x")).is_err());
        assert!(f
            .reassemble(o, unit(2, Some((0, 3)), b"x"))
            .unwrap()
            .is_none());
        assert!(f.reassemble(o, unit(3, None, b"y")).is_err());
        assert_eq!(f.partial_bytes(), 0);
    }
}
