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

    /// The name for wire bytes (UTF-8 was checked by the decoder).
    pub(crate) fn name(&mut self, bytes: &Bytes) -> Arc<str> {
        if let Some(n) = self.by_bytes.get(bytes.as_ref()) {
            return n.clone();
        }
        let name: Arc<str> = Arc::from(String::from_utf8_lossy(bytes).as_ref());
        self.insert(name.clone(), Bytes::copy_from_slice(name.as_bytes()));
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
}
