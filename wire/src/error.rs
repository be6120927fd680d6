//! The one error type of the wire crate.

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
}

impl WireError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        WireError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
