//! Planned work for a simulation run: who publishes what and when, and the
//! self-describing payloads the checker verifies byte for byte.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::Rng;

/// Bytes of the tag at the start of every payload.
pub const TAG_LEN: usize = 8 + 4 + 4;

/// One planned publish.
#[derive(Debug, Clone)]
pub struct PlannedPublish {
    pub at: Instant,
    /// Index of the node (slot) that publishes.
    pub node: usize,
    /// Globally unique publisher id.
    pub publisher: u64,
    /// 0-based index in the publisher's stream.
    pub index: u32,
    pub size: usize,
}

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub publisher: u64,
    pub index: u32,
}

/// A payload of `size` bytes (at least the tag) whose filler depends on its tag.
pub fn payload(publisher: u64, index: u32, size: usize) -> Bytes {
    let size = size.max(TAG_LEN);
    let mut b = BytesMut::with_capacity(size);
    b.put_u64(publisher);
    b.put_u32(index);
    b.put_u32(size as u32);
    for i in TAG_LEN..size {
        b.put_u8(filler(publisher, index, i));
    }
    b.freeze()
}

/// Reads and verifies a payload; `None` if it is not one we made or was altered.
pub fn verify(p: &[u8]) -> Option<Tag> {
    if p.len() < TAG_LEN {
        return None;
    }
    let publisher = u64::from_be_bytes(p[0..8].try_into().ok()?);
    let index = u32::from_be_bytes(p[8..12].try_into().ok()?);
    let size = u32::from_be_bytes(p[12..16].try_into().ok()?) as usize;
    if size != p.len() {
        return None;
    }
    let intact = p[TAG_LEN..]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == filler(publisher, index, i + TAG_LEN));
    intact.then_some(Tag { publisher, index })
}

fn filler(publisher: u64, index: u32, at: usize) -> u8 {
    (publisher as u8)
        .wrapping_mul(31)
        .wrapping_add(index as u8)
        .wrapping_add(at as u8)
}

/// A random payload size: mostly small, some medium, a few larger than a datagram.
pub fn random_size(rng: &mut SmallRng, max_datagram: usize) -> usize {
    match rng.gen_range(0..100) {
        0..=79 => rng.gen_range(TAG_LEN..200),
        80..=94 => rng.gen_range(200..max_datagram / 2),
        _ => rng.gen_range(max_datagram + 1..3 * max_datagram),
    }
}

/// Plans `per_publisher` messages for each publisher, in bursts spread over `span`.
pub fn plan(
    rng: &mut SmallRng,
    start: Instant,
    span: Duration,
    publishers: &[(usize, u64)],
    per_publisher: u32,
    max_datagram: usize,
) -> Vec<PlannedPublish> {
    let mut out = Vec::new();
    for &(node, publisher) in publishers {
        let mut index = 0;
        while index < per_publisher {
            // Bursts of 1..=8 messages at one instant exercise batching.
            let burst = rng.gen_range(1..=8).min(per_publisher - index);
            let at = start + rng.gen_range(Duration::ZERO..=span);
            for _ in 0..burst {
                out.push(PlannedPublish {
                    at,
                    node,
                    publisher,
                    index,
                    size: random_size(rng, max_datagram),
                });
                index += 1;
            }
        }
    }
    // Per publisher, indexes must go out in order: sort each stream's times.
    out.sort_by_key(|p| (p.publisher, p.index));
    let mut by_pub: std::collections::BTreeMap<u64, Vec<Instant>> = Default::default();
    for p in &out {
        by_pub.entry(p.publisher).or_default().push(p.at);
    }
    for times in by_pub.values_mut() {
        times.sort();
        times.reverse();
    }
    for p in &mut out {
        if let Some(t) = by_pub.get_mut(&p.publisher).and_then(Vec::pop) {
            p.at = t;
        }
    }
    out.sort_by_key(|p| (p.at, p.publisher, p.index));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn payloads_verify_and_alterations_do_not() {
        let p = payload(7, 3, 100);
        assert_eq!(
            verify(&p),
            Some(Tag {
                publisher: 7,
                index: 3
            })
        );
        let mut v = p.to_vec();
        v[50] ^= 1;
        assert_eq!(verify(&v), None);
        assert_eq!(verify(&p[..99]), None);
    }

    #[test]
    fn plans_keep_each_publisher_in_order() {
        let mut rng = SmallRng::seed_from_u64(1);
        let t0 = Instant::now();
        let plan = plan(
            &mut rng,
            t0,
            Duration::from_secs(1),
            &[(0, 1), (1, 2)],
            50,
            1400,
        );
        assert_eq!(plan.len(), 100);
        for w in plan.windows(2) {
            assert!(w[0].at <= w[1].at);
            if w[0].publisher == w[1].publisher {
                assert!(w[0].index < w[1].index);
            }
        }
    }
}
