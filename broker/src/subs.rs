//! Subscription matching: a trie over `.`-separated tokens, so a publish
//! walks at most one branch per literal token plus the `*`/`>` branches
//! instead of scanning every subscription.
//!
//! Patterns: `*` matches exactly one token, `>` (last token only) matches
//! one or more remaining tokens (`orders.>` matches `orders.eu` and
//! `orders.eu.paris`, not `orders`).

use std::collections::HashMap;

use crate::topics::MAX_NAME_LEN;

/// Identifies one inserted subscription, for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubKey(u64);

/// Why a subscription pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subscription pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// Checks a pattern: non-empty `.`-separated tokens, each a literal, `*`, or
/// (last only) `>`; at most [`MAX_NAME_LEN`] bytes.
pub fn validate_pattern(pattern: &str) -> Result<(), PatternError> {
    let bad = |reason| {
        Err(PatternError {
            pattern: pattern.to_string(),
            reason,
        })
    };
    if pattern.is_empty() {
        return bad("it is empty; subscribe to e.g. orders.* or orders.>");
    }
    if pattern.len() > MAX_NAME_LEN {
        return bad("it is longer than 255 bytes");
    }
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        match token {
            "" => return bad("it has an empty token (leading, trailing or double '.')"),
            "*" => {}
            ">" if tokens.peek().is_some() => {
                return bad("'>' matches the rest of the topic, so it may only be the last token")
            }
            ">" => {}
            t if t.contains(['*', '>']) => {
                return bad("a wildcard must be a whole token, like orders.* (not orders*)")
            }
            t if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return bad("it contains whitespace or control characters")
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Node<T> {
    literal: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Subscriptions whose pattern ends here with `>`.
    rest: Vec<(SubKey, T)>,
    /// Subscriptions whose pattern ends exactly here.
    here: Vec<(SubKey, T)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            rest: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.rest.is_empty()
            && self.here.is_empty()
    }

    fn walk<'a, F: FnMut(&T)>(&self, mut tokens: std::str::Split<'a, char>, f: &mut F) {
        let Some(token) = tokens.next() else {
            for (_, v) in &self.here {
                f(v);
            }
            return;
        };
        for (_, v) in &self.rest {
            f(v);
        }
        if let Some(child) = self.literal.get(token) {
            child.walk(tokens.clone(), f);
        }
        if let Some(child) = &self.star {
            child.walk(tokens, f);
        }
    }

    /// Removes `key` under the path `tokens`; returns its value.
    fn remove(&mut self, mut tokens: std::str::Split<'_, char>, key: SubKey) -> Option<T> {
        fn take<T>(v: &mut Vec<(SubKey, T)>, key: SubKey) -> Option<T> {
            let i = v.iter().position(|(k, _)| *k == key)?;
            Some(v.swap_remove(i).1)
        }
        match tokens.next() {
            None => take(&mut self.here, key),
            Some(">") => take(&mut self.rest, key),
            Some("*") => {
                let child = self.star.as_mut()?;
                let out = child.remove(tokens, key);
                if child.is_empty() {
                    self.star = None;
                }
                out
            }
            Some(lit) => {
                let child = self.literal.get_mut(lit)?;
                let out = child.remove(tokens, key);
                if child.is_empty() {
                    self.literal.remove(lit);
                }
                out
            }
        }
    }
}

/// Subscriptions indexed by pattern; `T` is what a match yields (e.g. the
/// connection and subscription id).
#[derive(Debug)]
pub struct SubTrie<T> {
    root: Node<T>,
    patterns: HashMap<SubKey, Box<str>>,
    next_key: u64,
    cache: MatchCache<T>,
}

/// Most topics whose matches [`SubTrie::matches`] keeps; when a new topic
/// finds the cache full, the cache starts over (counted in
/// [`SubTrie::match_cache_resets`]).
pub const MATCH_CACHE_TOPICS: usize = 4096;

/// The matches of recently delivered topics: topics repeat from message to
/// message (and usually come in runs), while the trie walk splits the topic
/// and hashes every token. Emptied by every insert and remove, so it never
/// answers with a stale set.
#[derive(Debug)]
struct MatchCache<T> {
    /// (topic, its matches), in insertion order.
    slots: Vec<(Box<str>, Vec<T>)>,
    index: HashMap<Box<str>, usize>,
    /// The slot of the last lookup: a run of one topic costs a string
    /// comparison per message, no hashing.
    last: usize,
    resets: u64,
}

impl<T> MatchCache<T> {
    fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.last = 0;
    }
}

impl<T> Default for SubTrie<T> {
    fn default() -> Self {
        SubTrie {
            root: Node::default(),
            patterns: HashMap::new(),
            next_key: 0,
            cache: MatchCache {
                slots: Vec::new(),
                index: HashMap::new(),
                last: 0,
                resets: 0,
            },
        }
    }
}

impl<T> SubTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        SubTrie::default()
    }

    /// Adds a subscription; the key removes it again.
    pub fn insert(&mut self, pattern: &str, value: T) -> Result<SubKey, PatternError> {
        validate_pattern(pattern)?;
        self.cache.clear();
        let key = SubKey(self.next_key);
        self.next_key += 1;
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            match token {
                ">" => {
                    // validate_pattern guarantees '>' is last.
                    node.rest.push((key, value));
                    self.patterns.insert(key, pattern.into());
                    return Ok(key);
                }
                "*" => node = node.star.get_or_insert_with(Box::default),
                lit => node = node.literal.entry(lit.into()).or_default(),
            }
        }
        node.here.push((key, value));
        self.patterns.insert(key, pattern.into());
        Ok(key)
    }

    /// Removes a subscription, returning its value (None if unknown).
    pub fn remove(&mut self, key: SubKey) -> Option<T> {
        let pattern = self.patterns.remove(&key)?;
        self.cache.clear();
        self.root.remove(pattern.split('.'), key)
    }

    /// Every subscription matching `topic` (as [`for_each_match`](Self::for_each_match)
    /// yields them), from a cache of the last [`MATCH_CACHE_TOPICS`] topics.
    pub fn matches(&mut self, topic: &str) -> &[T]
    where
        T: Clone,
    {
        let cache = &mut self.cache;
        let hit = cache
            .slots
            .get(cache.last)
            .is_some_and(|(t, _)| &**t == topic);
        if !hit {
            match cache.index.get(topic) {
                Some(&i) => cache.last = i,
                None => {
                    if cache.slots.len() >= MATCH_CACHE_TOPICS {
                        cache.clear();
                        cache.resets += 1;
                    }
                    let mut found = Vec::new();
                    self.root
                        .walk(topic.split('.'), &mut |v: &T| found.push(v.clone()));
                    cache.last = cache.slots.len();
                    cache.index.insert(topic.into(), cache.last);
                    cache.slots.push((topic.into(), found));
                }
            }
        }
        cache.slots.get(cache.last).map_or(&[], |(_, v)| v)
    }

    /// How often the match cache was full and started over.
    pub fn match_cache_resets(&self) -> u64 {
        self.cache.resets
    }

    /// Calls `f` once for every subscription matching `topic`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        self.root.walk(topic.split('.'), &mut f);
    }

    /// How many subscriptions are held.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obviously-correct matcher the trie is checked against.
    fn naive(pattern: &str, topic: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let t: Vec<&str> = topic.split('.').collect();
        for (i, tok) in p.iter().enumerate() {
            match *tok {
                ">" => return t.len() > i,
                "*" if i < t.len() => {}
                lit if i < t.len() && t[i] == lit => {}
                _ => return false,
            }
        }
        p.len() == t.len()
    }

    fn matches(trie: &SubTrie<u32>, topic: &str) -> Vec<u32> {
        let mut v = Vec::new();
        trie.for_each_match(topic, |x| v.push(*x));
        v.sort_unstable();
        v
    }

    #[test]
    fn wildcards_match_as_documented() {
        let mut t = SubTrie::new();
        t.insert("orders.*", 1).unwrap();
        t.insert("orders.>", 2).unwrap();
        t.insert("orders.eu", 3).unwrap();
        t.insert(">", 4).unwrap();
        t.insert("*.eu.*", 5).unwrap();
        assert_eq!(matches(&t, "orders.eu"), vec![1, 2, 3, 4]);
        assert_eq!(matches(&t, "orders.eu.paris"), vec![2, 4, 5]);
        assert_eq!(matches(&t, "orders"), vec![4]);
        assert_eq!(matches(&t, "trades.us"), vec![4]);
    }

    #[test]
    fn remove_prunes_and_forgets() {
        let mut t = SubTrie::new();
        let a = t.insert("a.*.c", 1).unwrap();
        let b = t.insert("a.>", 2).unwrap();
        assert_eq!(t.remove(a), Some(1));
        assert_eq!(t.remove(a), None);
        assert_eq!(matches(&t, "a.b.c"), vec![2]);
        assert_eq!(t.remove(b), Some(2));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn bad_patterns_are_refused() {
        let mut t = SubTrie::new();
        for bad in ["", "a.>.b", "a*", "a.b>", "a..b", ".", "a b"] {
            assert!(t.insert(bad, 0).is_err(), "{bad:?}");
        }
        assert!(t.is_empty());
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 1..5).prop_map(|v| v.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => token(), 1 => Just("*".to_string())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut v, rest)| {
                if rest {
                    v.push(">".into());
                }
                v.join(".")
            })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_matcher(
            patterns in prop::collection::vec(pattern(), 0..40),
            removed in prop::collection::vec(any::<bool>(), 40),
            topics in prop::collection::vec(topic(), 1..20),
        ) {
            let mut trie = SubTrie::new();
            let keys: Vec<SubKey> = patterns
                .iter()
                .enumerate()
                .map(|(i, p)| trie.insert(p, i as u32).unwrap())
                .collect();
            let mut live = vec![true; patterns.len()];
            for (i, key) in keys.iter().enumerate() {
                if removed[i] {
                    prop_assert_eq!(trie.remove(*key), Some(i as u32));
                    live[i] = false;
                }
            }
            for topic in &topics {
                let expected: Vec<u32> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| live[*i] && naive(p, topic))
                    .map(|(i, _)| i as u32)
                    .collect();
                prop_assert_eq!(matches(&trie, topic), expected, "topic {}", topic);
            }
        }

        /// Cached matches stay exact while subscriptions come and go
        /// between lookups (the cache must never answer with a stale set).
        #[test]
        fn cached_matches_follow_inserts_and_removes(
            ops in prop::collection::vec((pattern(), topic(), 0u8..3), 1..80),
        ) {
            let mut trie = SubTrie::new();
            let mut live: Vec<(SubKey, String, u32)> = Vec::new();
            for (i, (p, t, op)) in ops.into_iter().enumerate() {
                match op {
                    0 => live.push((trie.insert(&p, i as u32).unwrap(), p, i as u32)),
                    1 if !live.is_empty() => {
                        let (key, _, v) = live.remove(i % live.len());
                        prop_assert_eq!(trie.remove(key), Some(v));
                    }
                    _ => {}
                }
                for topic in [t.as_str(), "a.b", "a.b"] {
                    let mut got = trie.matches(topic).to_vec();
                    got.sort_unstable();
                    let mut want: Vec<u32> = live
                        .iter()
                        .filter(|(_, p, _)| naive(p, topic))
                        .map(|(_, _, v)| *v)
                        .collect();
                    want.sort_unstable();
                    prop_assert_eq!(got, want, "topic {}", topic);
                }
            }
        }
    }

    #[test]
    fn match_cache_is_bounded() {
        let mut trie = SubTrie::new();
        trie.insert("t.>", 1u32).unwrap();
        for i in 0..=MATCH_CACHE_TOPICS {
            assert_eq!(trie.matches(&format!("t.{i}")), &[1]);
        }
        assert_eq!(trie.match_cache_resets(), 1, "full once, then started over");
        assert!(trie.cache.slots.len() <= MATCH_CACHE_TOPICS);
        assert_eq!(trie.matches("t.0"), &[1]);
        assert_eq!(trie.matches("u.0"), &[] as &[u32]);
    }
}
