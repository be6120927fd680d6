//! The error types of the wire crate: undecodable bytes, and refused cluster keys.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame announces a length above the configured maximum; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// The bytes end before the structure they describe does.
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    /// A field holds a value the protocol does not define.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    Version { got: u16, supported: u16 },
    /// The frame kind byte is unknown.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// Bytes remain after a complete frame body.
    #[error("{0} trailing bytes after frame body")]
    Trailing(usize),
    /// The datagram's checksum does not match its contents.
    #[error("checksum mismatch")]
    Checksum,
    /// This broker has a cluster key and the frame carries no MAC.
    #[error("frame carries no MAC but this broker requires the cluster key")]
    MacMissing,
    /// The frame carries a MAC and this broker has no cluster key to check it.
    #[error("frame carries a MAC but this broker has no cluster key")]
    MacUnexpected,
    /// The frame's MAC matches none of the cluster keys: forged, signed with
    /// another key, or damaged in transit.
    #[error("MAC matches none of the cluster keys")]
    BadMac,
}

/// Why a cluster key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Every line is empty or a `#` comment.
    #[error("the cluster key file holds no key (every line is empty or a # comment)")]
    Empty,
    /// A secret is shorter than the minimum.
    #[error("the key on line {line} is {len} bytes; each key must be at least {min} bytes (for example 64 hex digits from `openssl rand -hex 32`)")]
    TooShort { line: usize, len: usize, min: usize },
    /// More keys than a rotation needs.
    #[error("the cluster key file holds {count} keys; at most {max} are allowed (one signs, the rest are kept only while rotating)")]
    TooMany { count: usize, max: usize },
}

impl WireError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        WireError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
