//! FIFO delivery: each origin's messages in sequence order, fragments joined.
//!
//! Reliability already releases each origin's stream in order, so FIFO
//! delivers a complete message at once; what it owns is reassembly: the
//! fragments of a large message arrive as consecutive sequence numbers and
//! are joined here, one partial message per origin at most.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use ordo_wire::group::DataMsg;
use ordo_wire::{Origin, Seq};

use super::{delivered, event, Layer, Ready};
use crate::engine::topics::TopicCache;
use crate::engine::Event;

/// A fragment that does not continue its origin's partial message: the
/// origin broke the protocol (the stream itself is reliable and ordered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fragment {index} of {count} at seq {seq} does not continue the partial message")]
pub(crate) struct ReassemblyError {
    pub(crate) seq: Seq,
    pub(crate) index: u32,
    pub(crate) count: u32,
}

#[derive(Debug)]
struct Partial {
    first: DataMsg,
    parts: Vec<Bytes>,
    count: u32,
    bytes: usize,
}

/// The FIFO layer and the reassembly every layer shares.
#[derive(Debug, Default)]
pub(crate) struct Fifo {
    partial: BTreeMap<Origin, Partial>,
    partial_bytes: usize,
    /// Planted bug: hold one message back and deliver it after the next.
    #[cfg(feature = "bug-injection")]
    reorder_bug: Option<BTreeMap<Origin, Ready>>,
}

impl Fifo {
    /// Adds one unit of `origin`'s stream; returns a message once complete.
    pub(crate) fn reassemble(
        &mut self,
        origin: Origin,
        msg: DataMsg,
    ) -> Result<Option<Ready>, ReassemblyError> {
        let Some(frag) = msg.fragment else {
            if self.partial.contains_key(&origin) {
                self.forget(origin);
                return Err(ReassemblyError {
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
        let bad = ReassemblyError {
            seq: msg.seq,
            index: frag.index,
            count: frag.count,
        };
        if frag.index == 0 {
            if self.partial.contains_key(&origin) {
                self.forget(origin);
                return Err(bad);
            }
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
