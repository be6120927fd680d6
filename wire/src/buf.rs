//! Checked primitive reads and writes shared by every codec.
//!
//! `Reader` walks a byte slice and returns `WireError::Truncated` instead of
//! panicking; lengths read from the wire are checked against what is left
//! before anything is allocated for them.

use bytes::{BufMut, Bytes};
use smallvec::SmallVec;

use crate::types::{CausalContext, Incarnation, NodeId, Origin, Seq};
use crate::WireError;

/// A cursor over bytes received from outside.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    consumed: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, consumed: 0 }
    }

    /// Bytes read so far, as an offset into the original slice.
    pub fn position(&self) -> usize {
        self.consumed
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { what });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        self.consumed += n;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A boolean encoded as 0 or 1; anything else is malformed.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::malformed(what, format!("boolean byte {v}"))),
        }
    }

    /// A count of items each at least `min_item` bytes long, checked against
    /// the bytes left so a forged count cannot make us allocate.
    pub fn count(&mut self, min_item: usize, what: &'static str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(WireError::Truncated { what });
        }
        Ok(n)
    }

    /// Length-prefixed (u32) bytes.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// Length-prefixed (u16) UTF-8 text.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let n = usize::from(self.u16(what)?);
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| WireError::malformed(what, "not UTF-8"))
    }

    /// Optional value behind a presence byte.
    pub fn opt<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        if self.bool(what)? {
            Ok(Some(f(self)?))
        } else {
            Ok(None)
        }
    }

    pub fn origin(&mut self) -> Result<Origin, WireError> {
        Ok(Origin {
            node: NodeId(self.u32("origin node")?),
            incarnation: Incarnation(self.u64("origin incarnation")?),
        })
    }

    pub fn causal_context(&mut self) -> Result<CausalContext, WireError> {
        let n = self.count(ORIGIN_LEN + 8, "causal context")?;
        if n == 0 {
            return Ok(CausalContext::new());
        }
        let mut entries = SmallVec::with_capacity(n);
        for _ in 0..n {
            let origin = self.origin()?;
            entries.push((origin, Seq(self.u64("causal seq")?)));
        }
        Ok(CausalContext::from_decoded(entries))
    }
}

/// Encoded size of an [`Origin`].
pub const ORIGIN_LEN: usize = 4 + 8;

/// Writes length-prefixed text. Text longer than `u16::MAX` bytes is cut at
/// a character boundary; callers validate names long before this.
pub fn put_str(out: &mut impl BufMut, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

/// Writes u32-length-prefixed bytes.
pub fn put_bytes(out: &mut impl BufMut, b: &Bytes) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

pub fn put_bool(out: &mut impl BufMut, v: bool) {
    out.put_u8(u8::from(v));
}

pub fn put_origin(out: &mut impl BufMut, o: Origin) {
    out.put_u32(o.node.0);
    out.put_u64(o.incarnation.0);
}

pub fn put_causal_context(out: &mut impl BufMut, ctx: &CausalContext) {
    out.put_u32(ctx.len() as u32);
    for &(origin, seq) in ctx.entries() {
        put_origin(out, origin);
        out.put_u64(seq.0);
    }
}

/// Encoded size of a causal context.
pub fn causal_context_len(ctx: &CausalContext) -> usize {
    4 + ctx.len() * (ORIGIN_LEN + 8)
}
