//! The topic registry: each topic's ordering and safe flag, declared
//! explicitly or created with the default ordering on first use.
//!
//! The registry mirrors the table the group agreed on: the driver carries a
//! new declaration through the engine's total order and applies what every
//! broker agreed ([`TopicRegistry::apply_agreed`]); a topic first used here
//! is created at once with the default ordering and declared the same way.
//!
//! The registry is bounded: a declaration or first use beyond `max_topics`
//! is refused ([`TopicError::Limit`]). A topic the group agreed on is always
//! applied (every broker must hold the same table), so the table can exceed
//! the bound by what other brokers admitted under theirs.

use std::collections::HashMap;
use std::sync::Arc;

use ordo_wire::client::TopicInfo;
use ordo_wire::Ordering;

/// Longest topic name or subscription pattern, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A topic's delivery settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    pub ordering: Ordering,
    /// Deliver nowhere until every member holds the message.
    pub safe: bool,
}

impl std::fmt::Display for TopicSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.safe {
            write!(f, "{} --safe", self.ordering)
        } else {
            write!(f, "{}", self.ordering)
        }
    }
}

/// A topic known to the registry; the name is shared with every delivery.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: Arc<str>,
    pub spec: TopicSpec,
}

/// The outcome of a successful declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// The topic did not exist here.
    New,
    /// The topic existed with the same settings; nothing changed.
    Existing,
}

/// Why a topic name or declaration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name breaks the naming rules; the message says which.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The topic exists with other settings.
    #[error("topic {name:?} is already declared {existing}; cannot redeclare it {requested}")]
    Conflict {
        name: String,
        existing: TopicSpec,
        requested: TopicSpec,
    },
    /// The registry holds as many topics as it may; no new one is created.
    #[error("this broker already knows {max} topics (--max-topics); no new topic is created")]
    Limit { max: usize },
}

/// Checks a topic name: non-empty `.`-separated tokens of printable
/// characters, no wildcards, at most [`MAX_NAME_LEN`] bytes.
pub fn validate_topic(name: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty; use dot-separated tokens like orders.eu");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 255 bytes");
    }
    for token in name.split('.') {
        if token.is_empty() {
            return bad("it has an empty token (leading, trailing or double '.')");
        }
        if token.contains(['*', '>']) {
            return bad("wildcards '*' and '>' belong in subscription patterns, not topic names");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it contains whitespace or control characters");
        }
    }
    Ok(())
}

/// Every topic this broker knows.
#[derive(Debug)]
pub struct TopicRegistry {
    topics: HashMap<Arc<str>, TopicSpec>,
    default_ordering: Ordering,
    max_topics: usize,
}

impl TopicRegistry {
    /// An empty registry; topics used before declaration get
    /// `default_ordering`; at most `max_topics` are created here.
    pub fn new(default_ordering: Ordering, max_topics: usize) -> Self {
        TopicRegistry {
            topics: HashMap::new(),
            default_ordering,
            max_topics,
        }
    }

    /// Refuses a new topic once the registry is full.
    pub fn check_room(&self) -> Result<(), TopicError> {
        if self.topics.len() >= self.max_topics {
            return Err(TopicError::Limit {
                max: self.max_topics,
            });
        }
        Ok(())
    }

    /// Declares a topic. Declaring it again with the same settings succeeds;
    /// anything else is a [`TopicError::Conflict`] naming both.
    pub fn declare(&mut self, name: &str, spec: TopicSpec) -> Result<Declared, TopicError> {
        validate_topic(name)?;
        match self.topics.get(name) {
            Some(existing) if *existing == spec => Ok(Declared::Existing),
            Some(existing) => Err(TopicError::Conflict {
                name: name.to_string(),
                existing: *existing,
                requested: spec,
            }),
            None => {
                self.check_room()?;
                self.topics.insert(Arc::from(name), spec);
                Ok(Declared::New)
            }
        }
    }

    /// The topic a publish goes to, created with the default ordering (not
    /// safe) when it was never declared.
    pub fn resolve(&mut self, name: &str) -> Result<Topic, TopicError> {
        if let Some((k, spec)) = self.topics.get_key_value(name) {
            return Ok(Topic {
                name: Arc::clone(k),
                spec: *spec,
            });
        }
        validate_topic(name)?;
        self.check_room()?;
        let spec = TopicSpec {
            ordering: self.default_ordering,
            safe: false,
        };
        let name: Arc<str> = Arc::from(name);
        self.topics.insert(Arc::clone(&name), spec);
        Ok(Topic { name, spec })
    }

    /// Sets a topic as the group agreed it (overriding a local guess made
    /// before the agreement reached us).
    pub fn apply_agreed(&mut self, name: &str, spec: TopicSpec) {
        match self.topics.get_mut(name) {
            Some(s) => *s = spec,
            None => {
                self.topics.insert(Arc::from(name), spec);
            }
        }
    }

    /// The settings of a known topic.
    pub fn get(&self, name: &str) -> Option<TopicSpec> {
        self.topics.get(name).copied()
    }

    /// The topic table, sorted by name.
    pub fn list(&self) -> Vec<TopicInfo> {
        let mut v: Vec<TopicInfo> = self
            .topics
            .iter()
            .map(|(name, spec)| TopicInfo {
                name: name.to_string(),
                ordering: spec.ordering,
                safe: spec.safe,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// How many topics are known.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic is known.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FIFO: TopicSpec = TopicSpec {
        ordering: Ordering::Fifo,
        safe: false,
    };

    #[test]
    fn redeclaring_the_same_way_succeeds_otherwise_names_both() {
        let mut r = TopicRegistry::new(Ordering::Fifo, 100);
        assert_eq!(r.declare("orders", FIFO), Ok(Declared::New));
        assert_eq!(r.declare("orders", FIFO), Ok(Declared::Existing));
        let err = r
            .declare(
                "orders",
                TopicSpec {
                    ordering: Ordering::TotalIsis,
                    safe: true,
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic \"orders\" is already declared fifo; cannot redeclare it total-isis --safe"
        );
        assert_eq!(r.get("orders"), Some(FIFO));
    }

    #[test]
    fn first_use_creates_with_default_ordering() {
        let mut r = TopicRegistry::new(Ordering::Causal, 100);
        let t = r.resolve("a.b").unwrap();
        assert_eq!(t.spec.ordering, Ordering::Causal);
        assert!(r.declare("a.b", FIFO).is_err(), "used topic is now causal");
        let again = r.resolve("a.b").unwrap();
        assert!(
            Arc::ptr_eq(&t.name, &again.name),
            "names are shared, not copied"
        );
        assert_eq!(r.list().len(), 1);
    }

    #[test]
    fn no_topic_is_created_beyond_the_limit_but_agreed_ones_apply() {
        let mut r = TopicRegistry::new(Ordering::Fifo, 2);
        r.resolve("a").unwrap();
        r.declare("b", FIFO).unwrap();
        assert_eq!(r.resolve("c").unwrap_err(), TopicError::Limit { max: 2 });
        assert_eq!(
            r.declare("c", FIFO).unwrap_err(),
            TopicError::Limit { max: 2 }
        );
        // Known topics still resolve and redeclare.
        assert!(r.resolve("a").is_ok());
        assert_eq!(r.declare("b", FIFO), Ok(Declared::Existing));
        assert_eq!(r.len(), 2);
        r.apply_agreed("c", FIFO);
        assert_eq!(r.get("c"), Some(FIFO));
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a\tb"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic(&"x".repeat(256)).is_err());
        for good in ["a", "orders.eu.paris", "x-1_2", "ünïcode.ok"] {
            assert!(validate_topic(good).is_ok(), "{good:?}");
        }
        let mut r = TopicRegistry::new(Ordering::Fifo, 100);
        assert!(r.resolve("a..b").is_err());
        assert!(r.is_empty());
    }
}
