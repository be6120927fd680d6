//! Interned topic names, so neither publishing nor receiving allocates a
//! topic string per message.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

/// Most names kept; the cache is emptied when full (it is only a cache).
const MAX_TOPICS: usize = 4096;

/// Two-way cache between a topic's `Arc<str>` and its wire bytes.
#[derive(Debug, Default)]
pub(crate) struct TopicCache {
    by_name: BTreeMap<Arc<str>, Bytes>,
    by_bytes: BTreeMap<Bytes, Arc<str>>,
    /// The name `name` returned last: consecutive messages mostly share a
    /// topic, and comparing a few bytes is cheaper than a map lookup.
    last: Option<(Bytes, Arc<str>)>,
}

impl TopicCache {
    /// Wire bytes for a name a client published on.
    pub(crate) fn bytes(&mut self, name: &Arc<str>) -> Bytes {
        if let Some(b) = self.by_name.get(name.as_ref()) {
            return b.clone();
        }
        let b = Bytes::copy_from_slice(name.as_bytes());
        self.insert(name.clone(), b.clone());
        b
    }

    /// The interned wire bytes of a known topic, for the decoder (see
    /// `Frame::decode_with`): unlike a slice of the datagram, their reference
    /// count is touched by this thread only. `None` for a topic not seen yet.
    pub(crate) fn interned(&mut self, raw: &[u8]) -> Option<Bytes> {
        if raw.is_empty() {
            return Some(Bytes::new());
        }
        if let Some((b, _)) = &self.last {
            if b[..] == *raw {
                return Some(b.clone());
            }
        }
        let (b, n) = self.by_bytes.get_key_value(raw)?;
        self.last = Some((b.clone(), n.clone()));
        Some(b.clone())
    }

    /// The name for wire bytes (UTF-8 was checked by the decoder).
    pub(crate) fn name(&mut self, bytes: &Bytes) -> Arc<str> {
        if let Some((b, n)) = &self.last {
            if b[..] == bytes[..] {
                return n.clone();
            }
        }
        let name = match self.by_bytes.get_key_value(bytes.as_ref()) {
            Some((b, n)) => {
                // The map's own key, not `bytes`: keeping `bytes` would pin
                // the whole received datagram it was sliced from.
                self.last = Some((b.clone(), n.clone()));
                return n.clone();
            }
            None => Arc::<str>::from(String::from_utf8_lossy(bytes).as_ref()),
        };
        let b = Bytes::copy_from_slice(name.as_bytes());
        self.insert(name.clone(), b.clone());
        self.last = Some((b, name.clone()));
        name
    }

    fn insert(&mut self, name: Arc<str>, bytes: Bytes) {
        if self.by_name.len() >= MAX_TOPICS {
            self.by_name.clear();
            self.by_bytes.clear();
        }
        self.by_bytes.insert(bytes.clone(), name.clone());
        self.by_name.insert(name, bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bytes_share_one_entry() {
        let mut c = TopicCache::default();
        let t: Arc<str> = Arc::from("orders.eu");
        let b = c.bytes(&t);
        assert_eq!(&b[..], b"orders.eu");
        let n = c.name(&Bytes::from_static(b"orders.eu"));
        assert!(Arc::ptr_eq(&n, &t));
    }

    #[test]
    fn last_name_is_reused_and_replaced() {
        let mut c = TopicCache::default();
        let a = c.name(&Bytes::from_static(b"a"));
        let a2 = c.name(&Bytes::from_static(b"a"));
        assert!(Arc::ptr_eq(&a, &a2));
        let b = c.name(&Bytes::from_static(b"b"));
        assert_eq!(&*b, "b");
        let a3 = c.name(&Bytes::from_static(b"a"));
        assert!(Arc::ptr_eq(&a, &a3));
        assert_eq!(&*c.name(&Bytes::from_static(b"b")), "b");
    }

    #[test]
    fn interned_bytes_are_the_cache_copy() {
        let mut c = TopicCache::default();
        assert_eq!(c.interned(b""), Some(Bytes::new()));
        assert_eq!(c.interned(b"x"), None);
        c.name(&Bytes::from_static(b"x"));
        c.name(&Bytes::from_static(b"y"));
        let x = c.interned(b"x").unwrap();
        assert_eq!(&x[..], b"x");
        assert_eq!(&c.interned(b"x").unwrap()[..], b"x");
        assert_eq!(&c.interned(b"y").unwrap()[..], b"y");
        assert_eq!(c.interned(b"z"), None);
    }
}
