//! The bench payload header: who sent a message, its per-publisher sequence
//! number and when it was sent, stamped into the first bytes of the payload.
//!
//! Layout (little endian): magic u32 | run u32 | publisher u32 | flags u32 |
//! seq u64 | sent_us u64, then zero padding up to `--size`.

/// Bytes the header takes; `--size` must be at least this.
pub const HEADER_LEN: usize = 32;

/// "ORDB": marks a payload as one of ours.
const MAGIC: u32 = 0x4244_524f;

/// A readiness probe, sent before measuring; not counted.
pub const FLAG_PROBE: u32 = 1;
/// Sent during the warm-up; order-checked but not in rates or latencies.
pub const FLAG_WARMUP: u32 = 2;

/// What a publisher stamps into each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publisher's index in this run (0..`--pub`).
    pub publisher: u32,
    /// [`FLAG_PROBE`], [`FLAG_WARMUP`] or 0.
    pub flags: u32,
    /// Per-publisher sequence number, from 0, over warm-up and measured messages.
    pub seq: u64,
    /// Send time in µs on the shared clock (see [`crate::cmd::bench::now_us`]).
    pub sent_us: u64,
}

/// How a received payload reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// One of this run's messages.
    Ours(Stamp),
    /// Too short, another magic or another run: someone else's traffic on the topic.
    Foreign,
}

/// A payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp` for run `run`.
pub fn make(size: usize, run: u32, stamp: &Stamp) -> Vec<u8> {
    let mut buf = vec![0u8; size.max(HEADER_LEN)];
    write(&mut buf, run, stamp);
    buf
}

/// Writes the header into the first [`HEADER_LEN`] bytes of `buf`
/// (which the caller sized: at least [`HEADER_LEN`]).
pub fn write(buf: &mut [u8], run: u32, stamp: &Stamp) {
    if buf.len() < HEADER_LEN {
        return;
    }
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&run.to_le_bytes());
    buf[8..12].copy_from_slice(&stamp.publisher.to_le_bytes());
    buf[12..16].copy_from_slice(&stamp.flags.to_le_bytes());
    buf[16..24].copy_from_slice(&stamp.seq.to_le_bytes());
    buf[24..32].copy_from_slice(&stamp.sent_us.to_le_bytes());
}

/// Reads the header of a received payload, checking it belongs to run `run`.
pub fn parse(payload: &[u8], run: u32) -> Parsed {
    let Some(h) = payload.get(..HEADER_LEN) else {
        return Parsed::Foreign;
    };
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(0) != MAGIC || u32_at(4) != run {
        return Parsed::Foreign;
    }
    Parsed::Ours(Stamp {
        publisher: u32_at(8),
        flags: u32_at(12),
        seq: u64_at(16),
        sent_us: u64_at(24),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads_to_size() {
        let s = Stamp {
            publisher: 7,
            flags: FLAG_WARMUP,
            seq: 1 << 40,
            sent_us: 1_700_000_000_000_123,
        };
        let p = make(128, 42, &s);
        assert_eq!(p.len(), 128);
        assert!(p[HEADER_LEN..].iter().all(|b| *b == 0));
        assert_eq!(parse(&p, 42), Parsed::Ours(s));
    }

    #[test]
    fn other_runs_short_and_alien_payloads_are_foreign() {
        let s = Stamp {
            publisher: 0,
            flags: 0,
            seq: 1,
            sent_us: 2,
        };
        let p = make(HEADER_LEN, 1, &s);
        assert_eq!(parse(&p, 2), Parsed::Foreign);
        assert_eq!(parse(&p[..HEADER_LEN - 1], 1), Parsed::Foreign);
        assert_eq!(
            parse(b"hello, this is not a bench payload!!", 1),
            Parsed::Foreign
        );
        assert_eq!(parse(&p, 1), Parsed::Ours(s));
    }

    #[test]
    fn make_never_returns_less_than_a_header() {
        let s = Stamp {
            publisher: 1,
            flags: 0,
            seq: 0,
            sent_us: 0,
        };
        assert_eq!(make(3, 9, &s).len(), HEADER_LEN);
    }
}
