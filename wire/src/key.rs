//! The cluster key: MACs (keyed BLAKE3) that authenticate inter-broker frames.
//!
//! A key file holds one or more secrets, one a line. The first signs every
//! frame this broker sends; every one of them verifies, so a key is rotated
//! without downtime: add the new key second everywhere, move it first
//! everywhere, then drop the old one. Each secret is stretched into a 32-byte
//! BLAKE3 key with `derive_key("ordo cluster key v1", secret)`, so the raw
//! line is never used as a key itself and other uses of a secret cannot
//! collide with this one. Key material never appears in `Debug` output.

use std::fmt;

use crate::error::KeyError;

/// Bytes of the MAC trailer: the full BLAKE3 output (256 bits).
pub const MAC_LEN: usize = blake3::OUT_LEN;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The most keys one file may hold: a forged frame costs one hash per key.
pub const MAX_KEYS: usize = 8;

/// BLAKE3 `derive_key` context: names the protocol and this use of the secret.
const CONTEXT: &str = "ordo cluster key v1";

/// The keys of a cluster: the first signs, every one verifies.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    /// Never empty; at most [`MAX_KEYS`].
    keys: Vec<[u8; 32]>,
}

/// The signing half of a [`ClusterKey`], small enough to copy into a frame writer.
#[derive(Clone, Copy)]
pub(crate) struct SigningKey([u8; 32]);

impl ClusterKey {
    /// Parses a key file: one secret per non-empty line, surrounding
    /// whitespace trimmed, lines starting with `#` ignored, each secret at
    /// least [`MIN_SECRET_LEN`] bytes.
    pub fn parse(file: &[u8]) -> Result<ClusterKey, KeyError> {
        let mut secrets = Vec::new();
        for (i, line) in file.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            if line.len() < MIN_SECRET_LEN {
                return Err(KeyError::TooShort {
                    line: i + 1,
                    len: line.len(),
                    min: MIN_SECRET_LEN,
                });
            }
            secrets.push(line);
        }
        ClusterKey::from_secrets(secrets)
    }

    /// Builds the keys from secrets, the signing one first.
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<ClusterKey, KeyError> {
        let mut keys = Vec::new();
        for (i, s) in secrets.into_iter().enumerate() {
            if s.len() < MIN_SECRET_LEN {
                return Err(KeyError::TooShort {
                    line: i + 1,
                    len: s.len(),
                    min: MIN_SECRET_LEN,
                });
            }
            keys.push(blake3::derive_key(CONTEXT, s));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany {
                count: keys.len(),
                max: MAX_KEYS,
            });
        }
        Ok(ClusterKey { keys })
    }

    /// How many keys verify (the first of them signs).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a cluster key holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Short public identifiers of the keys, signing key first: 8 hex digits
    /// of a one-way hash of each, so operators can compare brokers' keys in
    /// logs without revealing them.
    pub fn ids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| {
                let h = blake3::keyed_hash(k, b"ordo key id");
                h.as_bytes()[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    }

    pub(crate) fn signing(&self) -> SigningKey {
        SigningKey(self.keys[0])
    }

    /// Whether `tag` is the MAC of `data` under any of the keys (each
    /// comparison in constant time).
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; MAC_LEN]>::try_from(tag) else {
            return false;
        };
        // `Hash == [u8; 32]` compares in constant time.
        self.keys.iter().any(|k| blake3::keyed_hash(k, data) == tag)
    }
}

impl SigningKey {
    /// The MAC of `data`.
    pub(crate) fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKey")
            .field("ids", &self.ids())
            .finish()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_parses_line_by_line() {
        let k = ClusterKey::parse(
            b"# rotation: new key second, then first\n\n  0123456789abcdef0123  \r\n#x\nfedcba9876543210fedc\n",
        )
        .unwrap();
        assert_eq!(k.len(), 2);
        let a = ClusterKey::from_secrets([&b"0123456789abcdef0123"[..]]).unwrap();
        assert_eq!(k.keys[0], a.keys[0], "whitespace and CR are trimmed");
        assert_ne!(k.keys[0], k.keys[1]);
    }

    #[test]
    fn short_empty_and_crowded_files_are_refused() {
        assert_eq!(
            ClusterKey::parse(b"# only a comment\n\n"),
            Err(KeyError::Empty)
        );
        assert_eq!(
            ClusterKey::parse(b"0123456789abcdef\nshort\n"),
            Err(KeyError::TooShort {
                line: 2,
                len: 5,
                min: MIN_SECRET_LEN
            })
        );
        let many = "0123456789abcdef\n".repeat(MAX_KEYS + 1);
        assert!(matches!(
            ClusterKey::parse(many.as_bytes()),
            Err(KeyError::TooMany { .. })
        ));
        // Exactly the minimum is fine.
        assert!(ClusterKey::parse(b"0123456789abcdef").is_ok());
    }

    #[test]
    fn the_first_key_signs_and_every_key_verifies() {
        let old = ClusterKey::parse(b"old-secret-0123456789").unwrap();
        let both = ClusterKey::parse(b"new-secret-0123456789\nold-secret-0123456789").unwrap();
        let new = ClusterKey::parse(b"new-secret-0123456789").unwrap();
        let data = b"frame";
        let by_old = old.signing().sign(data);
        let by_both = both.signing().sign(data);
        assert!(both.verify(data, &by_old), "the second key verifies");
        assert!(new.verify(data, &by_both), "the first key signs");
        assert!(!old.verify(data, &by_both));
        assert!(!old.verify(b"framf", &by_old));
        assert!(!old.verify(data, &by_old[..MAC_LEN - 1]));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = ClusterKey::parse(b"super-secret-value-1234").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("super"));
        assert_eq!(shown, format!("ClusterKey {{ ids: [{:?}] }}", k.ids()[0]));
        assert_eq!(k.ids()[0].len(), 8);
        assert_eq!(format!("{:?}", k.signing()), "SigningKey(..)");
    }
}
